//! Ephemeral caches (issue 25) with a real `strata-agent serve` (in process, with
//! `--ephemeral-cache-dir`), a real S3 server (moto) and its FUSE volumes (run as root):
//! a dataset whose policy's persistence is Ephemeral reads the same, keeps its blocks on
//! the ephemeral tier only, and leaves nothing there once the dataset is deleted or the
//! agent stops; a node without the tier refuses it, and so does a WriteBack source.

use std::path::{Path, PathBuf};

use strata_testkit::agent::{TestAgent, TestAgentOptions};
use strata_testkit::data::content;
use strata_testkit::fuse::require_fuse;
use strata_testkit::s3::S3Server;

const MIB: usize = 1 << 20;

/// Regular files under `dir` (none when it is missing).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn dataset(s3: &S3Server, ephemeral: bool, write_mode: Option<&str>) -> serde_json::Value {
    let mut source = serde_json::to_value(s3.source("s3", "s3://burst/ds/", "/")).unwrap();
    if let Some(mode) = write_mode {
        source["writeMode"] = mode.into();
    }
    serde_json::json!({
        "sources": [source],
        "cache": {"blockSize": 1048576, "metadataTtl": "5m", "ephemeral": ephemeral},
    })
}

/// Mounts the dataset as volume `vol`, reads every file through it and checks the bytes.
async fn read_all(agent: &TestAgent, vol: &str, files: &[(String, Vec<u8>)]) {
    let v = agent
        .local()
        .acquire_volume("ml", "burst", vol, None)
        .await
        .expect("acquire a volume");
    let mount = v.mount_path.clone();
    let files = files.to_vec();
    tokio::task::spawn_blocking(move || {
        for (name, bytes) in &files {
            let got = std::fs::read(mount.join(name)).unwrap();
            assert!(got == *bytes, "{name} differs through the mount");
        }
    })
    .await
    .unwrap();
    agent.local().release_volume(vol).await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ephemeral_cache_leaves_nothing_behind_its_dataset_or_its_agent() {
    require_fuse();
    let s3 = S3Server::start();
    s3.create_bucket("burst");
    let files: Vec<(String, Vec<u8>)> = vec![
        ("a.bin".into(), content(1, 3 * MIB + 7)),
        ("dir/b.bin".into(), content(2, MIB)),
        ("dir/small.txt".into(), content(3, 100)),
    ];
    let uploads: Vec<_> = files
        .iter()
        .map(|(k, v)| (format!("ds/{k}"), v.clone()))
        .collect();
    s3.upload("burst", &uploads).await;

    let agent = TestAgent::start_opts(TestAgentOptions {
        ephemeral: true,
        ..Default::default()
    })
    .await;
    let ephemeral = agent.dir.path().join("ephemeral");
    let persistent = agent.dir.path().join("cache");
    let api = agent.local();

    // WriteBack would keep unsent writes on a node that may go: refused, naming the field.
    let err = api
        .put_dataset("ml", "burst", &dataset(&s3, true, Some("WriteBack")))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sources[0].writeMode") && err.contains("ephemeral"),
        "{err}"
    );

    api.put_dataset("ml", "burst", &dataset(&s3, true, None))
        .await
        .expect("PUT an ephemeral dataset");
    read_all(&agent, "vol-a", &files).await;
    // Read again from the cache: the same bytes.
    read_all(&agent, "vol-b", &files).await;
    let held = files_under(&ephemeral);
    assert!(
        !held.is_empty(),
        "the blocks are on the ephemeral tier: {ephemeral:?} is empty"
    );
    let elsewhere: Vec<_> = files_under(&persistent.join("datasets"));
    assert!(
        elsewhere.is_empty(),
        "nothing of it on the persistent tier: {elsewhere:?}"
    );

    // The dataset goes: so does everything it had on the ephemeral tier.
    api.delete_dataset("ml", "burst").await.expect("delete");
    let left = files_under(&ephemeral);
    assert!(left.is_empty(), "left after the dataset went: {left:?}");

    // Cached again, then the agent stops: nothing left either.
    api.put_dataset("ml", "burst", &dataset(&s3, true, None))
        .await
        .expect("PUT again");
    read_all(&agent, "vol-c", &files).await;
    assert!(!files_under(&ephemeral).is_empty());
    let dir = agent.stop().await;
    let left = files_under(&dir.path().join("ephemeral"));
    assert!(left.is_empty(), "left after the agent stopped: {left:?}");

    // A node without an ephemeral tier refuses such a dataset and says how to get one.
    let plain = TestAgent::start().await;
    let err = plain
        .local()
        .put_dataset("ml", "burst", &dataset(&s3, true, None))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no ephemeral disk tier") && err.contains("node.cache.ephemeral.size"),
        "{err}"
    );
    plain.stop().await;
}
