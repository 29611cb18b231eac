//! A policy's `tiers` reach the cache: a dataset limited to [Memory] writes nothing under the
//! cache directory and still serves its second read from memory; one limited to [SSD] never
//! holds a block in memory, however often a block is read.

mod common;

use std::path::Path;

use common::*;
use strata_agent::config::{CacheSettings, TierKind};

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
    let view = agent
        .add_dataset(dataset(
            "mem",
            vec![local_source("l", src.path(), "/")],
            tiers(vec![TierKind::Memory]),
        ))
        .await
        .unwrap();
    for (name, bytes) in &files {
        let got = view
            .read(&p(&format!("/{name}")), 0, bytes.len() as u64)
            .await;
        assert!(got.unwrap() == *bytes, "{name}");
    }
    assert_eq!(
        files_under(cache_dir.path()),
        before,
        "a [Memory] dataset wrote under the cache directory"
    );
    let usage = view.cache().usage();
    assert_eq!(usage.memory_bytes, 3 * (2 * MIB as u64 + 1000));
    // Served again from memory: no request reaches the source.
    let requests = view.request_counts().gets;
    for (name, bytes) in &files {
        let got = view
            .read(&p(&format!("/{name}")), 0, bytes.len() as u64)
            .await;
        assert!(got.unwrap() == *bytes, "{name}");
    }
    assert_eq!(view.request_counts().gets, requests);
}

#[tokio::test]
async fn a_disk_only_dataset_never_holds_a_block_in_memory() {
    let src = tempdir();
    let files = source_tree(src.path());
    let cache_dir = tempdir();
    let agent = agent(cache_dir.path(), 64 << 20, 1 << 30).await;
    let view = agent
        .add_dataset(dataset(
            "ssd",
            vec![local_source("l", src.path(), "/")],
            tiers(vec![TierKind::Ssd]),
        ))
        .await
        .unwrap();
    // Three reads: a block read twice from disk is normally promoted to memory.
    for _ in 0..3 {
        for (name, bytes) in &files {
            let got = view
                .read(&p(&format!("/{name}")), 0, bytes.len() as u64)
                .await;
            assert!(got.unwrap() == *bytes, "{name}");
        }
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
    let view = agent
        .add_dataset(dataset(
            "both",
            vec![local_source("l", src.path(), "/")],
            one_mib_blocks(),
        ))
        .await
        .unwrap();
    for _ in 0..3 {
        for (name, bytes) in &files {
            let got = view
                .read(&p(&format!("/{name}")), 0, bytes.len() as u64)
                .await;
            assert!(got.unwrap() == *bytes, "{name}");
        }
    }
    assert!(view.cache().usage().memory_bytes > 0);
}
