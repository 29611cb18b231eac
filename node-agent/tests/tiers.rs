//! A policy's `tiers` reach the cache: a dataset limited to [Memory] writes nothing under the
//! cache directory and still serves its second read from memory; one limited to [SSD] never
//! holds a block in memory, however often a block is read; `strata-agent mount --tiers` sets
//! the same choice for a standalone mount.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use strata_agent::agent::Agent;
use strata_agent::config::{CacheSettings, TierKind};
use strata_agent::dataset::DatasetView;

/// Regular files under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn tiers(tiers: Vec<TierKind>) -> CacheSettings {
    CacheSettings {
        tiers,
        ..one_mib_blocks()
    }
}

const FILES: [&str; 3] = ["/a.bin", "/b.bin", "/c.bin"];

/// A dataset over the local directory `dir`.
async fn local_dataset(
    agent: &Agent,
    name: &str,
    dir: &Path,
    settings: CacheSettings,
) -> Arc<DatasetView> {
    agent
        .add_dataset(dataset(name, vec![local_source("l", dir, "/")], settings))
        .await
        .unwrap()
}

/// Reads every file whole through the view and checks its bytes.
async fn read_all(view: &Arc<DatasetView>, files: &[(String, Vec<u8>)]) {
    for (name, bytes) in files {
        let got = view
            .read(&p(&format!("/{name}")), 0, bytes.len() as u64)
            .await;
        assert!(got.unwrap() == *bytes, "{name}");
    }
}

fn source_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let files: Vec<(String, Vec<u8>)> = FILES
        .iter()
        .enumerate()
        .map(|(i, f)| (f[1..].to_string(), content(i as u64, 2 * MIB + 1000)))
        .collect();
    write_tree(dir, &files);
    files
}

#[tokio::test]
async fn a_memory_only_dataset_writes_nothing_to_disk() {
    let src = tempdir();
    let files = source_tree(src.path());
    let cache_dir = tempdir();
    let agent = agent(cache_dir.path(), 64 << 20, 1 << 30).await;
    let before = files_under(cache_dir.path());
    let view = local_dataset(&agent, "mem", src.path(), tiers(vec![TierKind::Memory])).await;
    read_all(&view, &files).await;
    assert_eq!(
        files_under(cache_dir.path()),
        before,
        "a [Memory] dataset wrote under the cache directory"
    );
    let usage = view.cache().usage();
    assert_eq!(usage.memory_bytes, 3 * (2 * MIB as u64 + 1000));
    // Served again from memory: no request reaches the source.
    let requests = view.request_counts().gets;
    read_all(&view, &files).await;
    assert_eq!(view.request_counts().gets, requests);
}

#[tokio::test]
async fn a_disk_only_dataset_never_holds_a_block_in_memory() {
    let src = tempdir();
    let files = source_tree(src.path());
    let cache_dir = tempdir();
    let agent = agent(cache_dir.path(), 64 << 20, 1 << 30).await;
    let view = local_dataset(&agent, "ssd", src.path(), tiers(vec![TierKind::Ssd])).await;
    // Three reads: a block read twice from disk is normally promoted to memory.
    for _ in 0..3 {
        read_all(&view, &files).await;
    }
    let usage = view.cache().usage();
    assert_eq!(
        usage.memory_bytes, 0,
        "an [SSD] dataset held blocks in memory"
    );
    assert_eq!(usage.disk_bytes, 3 * (2 * MIB as u64 + 1000));
}

#[tokio::test]
async fn both_tiers_by_default_promote_twice_read_blocks() {
    let src = tempdir();
    let files = source_tree(src.path());
    let cache_dir = tempdir();
    let agent = agent(cache_dir.path(), 64 << 20, 1 << 30).await;
    let view = local_dataset(&agent, "both", src.path(), one_mib_blocks()).await;
    for _ in 0..3 {
        read_all(&view, &files).await;
    }
    assert!(view.cache().usage().memory_bytes > 0);
}

/// Two datasets with memory shares (their quotas) on one node: one streaming through far
/// more than its share evicts its own blocks, and the other's hot set stays in memory.
#[tokio::test]
async fn datasets_with_memory_shares_cannot_push_each_other_out() {
    let (hot_src, stream_src) = (tempdir(), tempdir());
    let hot_files = source_tree(hot_src.path());
    let stream_files: Vec<(String, Vec<u8>)> = (0..10u64)
        .map(|i| (format!("s{i}.bin"), content(100 + i, 2 * MIB)))
        .collect();
    write_tree(stream_src.path(), &stream_files);
    let cache_dir = tempdir();
    // 16 MiB of memory on the node; each dataset may hold 8 MiB of it.
    let agent = agent(cache_dir.path(), 16 * MIB as u64, 1 << 30).await;
    let share = |name: &str, dir: &Path| {
        dataset(
            name,
            vec![local_source("l", dir, "/")],
            CacheSettings {
                quota: Some(8 * MIB as u64),
                eviction: strata_agent::config::EvictionKind::Lru,
                ..tiers(vec![TierKind::Memory])
            },
        )
    };
    let hot = agent
        .add_dataset(share("hot", hot_src.path()))
        .await
        .unwrap();
    let stream = agent
        .add_dataset(share("stream", stream_src.path()))
        .await
        .unwrap();
    read_all(&hot, &hot_files).await;
    let hot_bytes = hot.cache().usage().memory_bytes;
    assert_eq!(hot_bytes, 3 * (2 * MIB as u64 + 1000));
    read_all(&stream, &stream_files).await;
    assert!(stream.cache().usage().memory_bytes <= 8 * MIB as u64);
    assert_eq!(
        hot.cache().usage().memory_bytes,
        hot_bytes,
        "the streaming dataset pushed the other's blocks out of memory"
    );
    let requests = hot.request_counts().gets;
    read_all(&hot, &hot_files).await;
    assert_eq!(
        hot.request_counts().gets,
        requests,
        "the hot set was refetched"
    );
}

/// `strata-agent mount --tiers Memory`: the flag reaches the dataset; reads through the mount
/// are served and nothing is written under the cache directory, and the agent says at exit
/// that it held the data in memory. A bad value is refused naming the flag.
#[test]
fn the_mount_flag_tiers_memory_writes_nothing_under_the_cache_dir() {
    require_fuse();
    let bin = env!("CARGO_BIN_EXE_strata-agent");
    let src = tempdir();
    let files = source_tree(src.path());
    let (cache_dir, mnt) = (tempdir(), tempdir());
    let mount = |tiers: &str| {
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["mount", src.path().to_str().unwrap()])
            .arg(mnt.path())
            .arg("--cache-dir")
            .arg(cache_dir.path())
            .args(["--block-size", "1Mi", "--tiers", tiers])
            .env("STRATA_LOG", "warn")
            .stderr(std::process::Stdio::piped());
        cmd
    };
    let out = mount("Memory,Tape").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--tiers") && stderr.contains("\"Tape\""),
        "{stderr}"
    );

    let mut child = mount("Memory").spawn().unwrap();
    let mounted = || {
        let point = mnt.path().canonicalize().unwrap();
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(1) == point.to_str())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !mounted() {
        assert!(std::time::Instant::now() < deadline, "not mounted in time");
        assert!(child.try_wait().unwrap().is_none(), "agent exited early");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for (name, bytes) in &files {
        assert!(
            std::fs::read(mnt.path().join(name)).unwrap() == *bytes,
            "{name}"
        );
    }
    let written = files_under(cache_dir.path());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        written,
        Vec::<String>::new(),
        "--tiers Memory wrote to disk"
    );
    let held = 3 * (2 * MIB + 1000);
    assert!(
        stderr.contains(&format!(
            "0 bytes on disk in 0 files and {held} bytes in memory"
        )),
        "{stderr}"
    );
}
