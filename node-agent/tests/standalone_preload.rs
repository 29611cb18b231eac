//! `strata-agent preload` without a daemon: fills a cache directory that a later mount or
//! `serve` on the same directory serves without going to the source.

use std::path::Path;
use std::process::{Command, Output};

fn preload(config: &Path, cache: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata-agent"))
        .arg("preload")
        .arg("--dataset-config")
        .arg(config)
        .arg("--cache-dir")
        .arg(cache)
        .args(["--memory", "16Mi", "--disk", "256Mi"])
        .args(extra)
        .env("STRATA_LOG", "warn")
        .output()
        .expect("running strata-agent preload")
}

/// Bytes in the disk tier's object files.
fn cached_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            total += cached_bytes(&entry.path());
        } else if entry.path().extension().is_some_and(|e| e == "data") {
            // Sparse files: count what is allocated, not the apparent size.
            total += std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
        }
    }
    total
}

#[test]
fn preload_fills_the_cache_with_the_matching_files_and_honours_concurrency() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(src.join("train/a")).unwrap();
    std::fs::create_dir_all(src.join("labels")).unwrap();
    let sizes = [
        ("train/a/big.bin", 9 << 20),
        ("train/small.bin", 1000),
        ("train/empty", 0),
    ];
    for (i, (rel, len)) in sizes.iter().enumerate() {
        let bytes: Vec<u8> = (0..*len).map(|j: usize| (j * 31 + i) as u8).collect();
        std::fs::write(src.join(rel), bytes).unwrap();
    }
    std::fs::write(src.join("labels/not-matched.txt"), vec![7u8; 4096]).unwrap();
    let config = work.path().join("dataset.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "name": "standalone-preload",
            "sources": [{"name": "local", "uri": src.to_str().unwrap(), "mountPath": "/"}]
        })
        .to_string(),
    )
    .unwrap();
    let cache = work.path().join("cache");

    let refused = preload(&config, &cache, &["--concurrency", "0", "/train/**"]);
    assert!(!refused.status.success(), "concurrency 0 must be refused");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("--concurrency"),
        "the error names the flag: {err}"
    );

    let out = preload(&config, &cache, &["--concurrency", "2", "/train/**"]);
    assert!(
        out.status.success(),
        "preload failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let want: u64 = sizes.iter().map(|(_, n)| *n as u64).sum();
    assert_eq!(report["files"], 3, "{report}");
    assert_eq!(report["bytes"], want, "{report}");
    assert_eq!(
        report["failed"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );
    // What was reported is on disk (block-rounded allocation), and the unmatched file is not.
    let on_disk = cached_bytes(&cache);
    assert!(
        on_disk >= want && on_disk < want + (1 << 20),
        "{on_disk} bytes on disk for {want} preloaded"
    );
}
