//! Every metric docs/metrics.md documents appears in the agent's exposition, and a workload
//! through a real FUSE mount over a real S3 server moves each one it should (run as root).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use object_store::ObjectStoreExt;
use strata_agent::config::{CacheSettings, WriteMode};
use strata_agent::fuse::{MountOptions, mount};

/// The metric names of the table in docs/metrics.md.
fn documented() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md"))
        .expect("docs/metrics.md");
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `strata_"))
        .filter_map(|l| l.split('`').next())
        .map(|name| format!("strata_{name}"))
        .collect()
}

/// Sum of every sample of `name` (any labels) whose labels contain `with`.
fn sum(exposition: &str, name: &str, with: &str) -> Option<f64> {
    let mut found = None;
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let metric = series.split('{').next().unwrap_or(series);
        if metric == name && series.contains(with) {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_documented_metric_is_exposed_and_a_workload_moves_it() {
    require_fuse();
    let s3 = S3Server::start();
    s3.create_bucket("metrics");
    let mut files: Vec<(String, Vec<u8>)> = vec![("ds/big.bin".into(), content(1, 6 * MIB + 77))];
    for i in 0..10u64 {
        files.push((format!("ds/small/f{i:02}"), content(10 + i, 10_000)));
    }
    s3.upload("metrics", &files).await;
    let cache_dir = tempdir();
    let mnt = tempdir();
    // A disk tier smaller than big.bin: reading it twice must evict.
    let agent = agent(cache_dir.path(), 2 * MIB as u64, 4 * MIB as u64).await;
    // `serve`'s volume mounts register their gauges and counter as `serve` does.
    let mount_root = tempdir();
    let registry =
        strata_agent::mounts::MountRegistry::new(mount_root.path(), MountOptions::default())
            .unwrap();
    registry.register_metrics(agent.metrics());
    // Writable, so that the write journal's metrics are registered and moved too.
    let mut source = s3.source("s3", "s3://metrics/ds/", "/");
    source.write_mode = WriteMode::WriteBack;
    let view = agent
        .add_dataset(dataset(
            "metrics",
            vec![source],
            CacheSettings {
                metadata_ttl: Duration::from_secs(300),
                ..one_mib_blocks()
            },
        ))
        .await
        .unwrap();
    let handle = mount(view, mnt.path(), MountOptions::default()).unwrap();
    let root = mnt.path().to_path_buf();
    // Four small files read whole start a directory prefetch of the others.
    let dir = root.clone();
    tokio::task::spawn_blocking(move || {
        for i in 0..4 {
            std::fs::read(dir.join(format!("small/f{i:02}"))).unwrap();
        }
    })
    .await
    .unwrap();
    for _ in 0..100 {
        let text = agent.metrics().encode();
        if sum(&text, "strata_directory_prefetch_files_total", "").unwrap_or(0.0) > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::task::spawn_blocking(move || {
        // A fully cached file opens in passthrough mode.
        drop_page_cache();
        std::fs::read(root.join("small/f00")).unwrap();
        // Cold, then again from the tiers (page cache dropped so the agent serves it).
        std::fs::read(root.join("big.bin")).unwrap();
        drop_page_cache();
        std::fs::read(root.join("big.bin")).unwrap();
        // A new file, uploaded once it is closed.
        std::fs::write(root.join("written.bin"), content(99, 100_000)).unwrap();
    })
    .await
    .unwrap();
    for _ in 0..300 {
        let text = agent.metrics().encode();
        if sum(&text, "strata_write_uploaded_files_total", "").unwrap_or(0.0) > 0.0
            && sum(&text, "strata_write_pending_files", "") == Some(0.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let written = s3
        .store("metrics")
        .get(&object_store::path::Path::from("ds/written.bin"))
        .await
        .expect("the written file at the source")
        .bytes()
        .await
        .unwrap();
    assert!(
        written == content(99, 100_000),
        "the written file's content at the source"
    );
    // Every file is closed (the kernel releases them a moment after close): the readahead
    // budget comes back whole once their last fetches have landed.
    for _ in 0..100 {
        if agent.metrics().readahead_bytes() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = agent.metrics().encode();
    handle.unmount().unwrap();

    let documented = documented();
    assert!(documented.len() >= 14, "{documented:?}");
    let mut missing = Vec::new();
    for name in &documented {
        let base = name.trim_end_matches("_total");
        let exposed = text.lines().any(|l| {
            let series = l.split(['{', ' ']).next().unwrap_or_default();
            series == name || series == format!("{base}_count") || series == format!("{base}_sum")
        });
        if !exposed {
            missing.push(name.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "documented but not exposed: {missing:?}\n{text}"
    );

    let moved: BTreeMap<&str, (&str, &str)> = BTreeMap::from([
        ("hits", ("strata_cache_hits_total", "")),
        ("misses", ("strata_cache_misses_total", "")),
        ("evictions", ("strata_cache_evictions_total", "")),
        ("source bytes", ("strata_source_read_bytes_total", "")),
        (
            "block bytes from the source",
            ("strata_block_bytes_total", "origin=\"source\""),
        ),
        ("cluster of one", ("strata_cluster_members", "")),
        (
            "source GETs",
            ("strata_source_requests_total", "op=\"get\""),
        ),
        ("fetches", ("strata_fetch_duration_seconds_count", "")),
        ("reads", ("strata_read_duration_seconds_count", "")),
        ("cached bytes", ("strata_cached_bytes", "")),
        (
            "prefetched files",
            ("strata_directory_prefetch_files_total", ""),
        ),
        ("uploaded files", ("strata_write_uploaded_files_total", "")),
        ("uploaded bytes", ("strata_write_uploaded_bytes_total", "")),
        (
            "passthrough opens",
            ("strata_passthrough_opens_total", "result=\"ok\""),
        ),
    ]);
    for (what, (name, with)) in moved {
        let value = sum(&text, name, with).unwrap_or(0.0);
        assert!(value > 0.0, "{what}: {name}{{{with}}} is {value}\n{text}");
    }
    for name in [
        "strata_fetches_in_flight",
        "strata_disk_write_errors_total",
        "strata_checksum_failures_total",
        "strata_readahead_bytes",
        "strata_write_pending_files",
        "strata_write_pending_bytes",
        "strata_write_oldest_pending_seconds",
        "strata_write_failures_total",
        "strata_write_conflicts_total",
    ] {
        assert_eq!(
            sum(&text, name, ""),
            Some(0.0),
            "{name} after a clean workload"
        );
    }
}
