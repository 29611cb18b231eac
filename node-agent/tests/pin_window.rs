//! `modifiedWithin` is a rolling window: the agent pins (and fetches, without any read) the
//! files modified inside it, a file that ages out becomes evictable and is evicted when the
//! cache fills, a file that appears later is fetched at the next re-evaluation, and the
//! pins (the configured rules and one added at run time) hold across an agent restart.
//!
//! The source is a local directory, whose files' modification times the test sets: the
//! agent sees them as it sees an object store's Last-Modified.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use strata_agent::agent::Agent;
use strata_agent::config::{CacheSettings, DatasetConfig, EvictionKind, PinRule};
use strata_agent::dataset::DatasetView;

const DAY: Duration = Duration::from_secs(86400);
const WINDOW: Duration = Duration::from_secs(14 * 86400);
/// How long after the test starts the "edge" file leaves the window.
const EDGE_AGES_OUT_AFTER: Duration = Duration::from_secs(6);

fn write_file(dir: &Path, name: &str, seed: u64, modified: SystemTime) -> Vec<u8> {
    let bytes = content(seed, 2 * MIB + 100);
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    bytes
}

fn config(src: &Path) -> DatasetConfig {
    dataset(
        "logs",
        vec![local_source("l", src, "/")],
        CacheSettings {
            // Re-evaluated every second; the quota holds 4 of the 2 MiB files.
            metadata_ttl: Duration::from_secs(1),
            quota: Some(9 * MIB as u64),
            eviction: EvictionKind::Lru,
            pins: vec![PinRule {
                paths: vec!["/logs/**".into()],
                modified_within: Some(WINDOW),
            }],
            ..one_mib_blocks()
        },
    )
}

/// Files the rule pins on this node now, as the usage API reports them.
fn pinned_files(view: &DatasetView) -> u64 {
    view.usage()
        .pins
        .iter()
        .find(|p| p.from_policy)
        .map_or(0, |p| p.files)
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Source GETs a whole read of `path` takes (0 when it is cached).
async fn gets_to_read(view: &Arc<DatasetView>, path: &str, want: &[u8]) -> u64 {
    let before = view.request_counts().gets;
    let got = view.read(&p(path), 0, want.len() as u64).await.unwrap();
    assert!(got == want, "{path}: wrong bytes");
    view.request_counts().gets - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_window_pins_new_files_and_lets_old_ones_go() {
    let src = tempdir();
    let cache_dir = tempdir();
    let now = SystemTime::now();
    let old = write_file(src.path(), "logs/old.bin", 1, now - 30 * DAY);
    let recent = write_file(src.path(), "logs/recent.bin", 2, now - DAY);
    let edge = write_file(
        src.path(),
        "logs/edge.bin",
        3,
        now - WINDOW + EDGE_AGES_OUT_AFTER,
    );
    let fillers: Vec<Vec<u8>> = (0..5)
        .map(|i| write_file(src.path(), &format!("other/{i}.bin"), 10 + i, now))
        .collect();

    let agent = agent(cache_dir.path(), 0, 1 << 30).await;
    let view = agent.add_dataset(config(src.path())).await.unwrap();

    // Nothing was read: the agent fetched the two files inside the window by itself.
    wait_for(
        "the files inside the window",
        Duration::from_secs(20),
        || pinned_files(&view) == 2,
    )
    .await;
    assert_eq!(gets_to_read(&view, "/logs/recent.bin", &recent).await, 0);
    assert_eq!(gets_to_read(&view, "/logs/edge.bin", &edge).await, 0);

    // A file that appears later is fetched at the next re-evaluation.
    let new = write_file(src.path(), "logs/new.bin", 4, SystemTime::now());
    wait_for("the new file", Duration::from_secs(20), || {
        pinned_files(&view) == 3
    })
    .await;

    // A run-time pin (kept across restarts) on a file outside every window.
    view.pin("/other/0.bin".into()).unwrap();
    assert!(gets_to_read(&view, "/other/0.bin", &fillers[0]).await > 0);

    // The edge file ages out: unpinned at the next re-evaluation, then evicted when the
    // cache fills; the files still inside the window stay.
    let aged_out = now + EDGE_AGES_OUT_AFTER + Duration::from_millis(500);
    if let Ok(wait) = aged_out.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    wait_for("the edge file to age out", Duration::from_secs(20), || {
        pinned_files(&view) == 2
    })
    .await;
    assert!(gets_to_read(&view, "/logs/old.bin", &old).await > 0);
    for (i, bytes) in fillers.iter().enumerate().skip(1) {
        gets_to_read(&view, &format!("/other/{i}.bin"), bytes).await;
    }
    assert_eq!(gets_to_read(&view, "/logs/recent.bin", &recent).await, 0);
    assert_eq!(gets_to_read(&view, "/logs/new.bin", &new).await, 0);
    assert_eq!(gets_to_read(&view, "/other/0.bin", &fillers[0]).await, 0);
    assert!(
        gets_to_read(&view, "/logs/edge.bin", &edge).await > 0,
        "the file that aged out of the window was not evicted by a full cache"
    );

    // Restart on the same cache directory: both kinds of pins are in force again.
    drop(view);
    drop(agent);
    let agent: Arc<Agent> = common::agent(cache_dir.path(), 0, 1 << 30).await;
    let view = agent.add_dataset(config(src.path())).await.unwrap();
    let rules: Vec<PinRule> = view.pins();
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert_eq!(rules[1], PinRule::paths(["/other/0.bin"]));
    for (i, bytes) in fillers.iter().enumerate().skip(1) {
        gets_to_read(&view, &format!("/other/{i}.bin"), bytes).await;
    }
    assert_eq!(gets_to_read(&view, "/logs/recent.bin", &recent).await, 0);
    assert_eq!(gets_to_read(&view, "/logs/new.bin", &new).await, 0);
    assert_eq!(gets_to_read(&view, "/other/0.bin", &fillers[0]).await, 0);
}
