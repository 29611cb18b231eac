//! Engine tests against a real S3 server (moto on loopback) and local directories,
//! counting the requests that reach the sources.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use strata_agent::config::{CacheSettings, PinRule};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_read_through_then_cached_then_restart_without_source() {
    let s3 = S3Server::start();
    s3.create_bucket("data");
    let files: Vec<(String, Vec<u8>)> = vec![
        ("train/a.bin".into(), content(1, 3 * MIB + 5)),
        ("train/b.bin".into(), content(2, 17)),
        ("empty".into(), vec![]),
    ];
    s3.upload("data", &files).await;
    let cache_dir = tempdir();
    let cfg = dataset(
        "s3",
        vec![s3.source("s3", "s3://data/", "/")],
        one_mib_blocks(),
    );
    {
        let agent = agent(cache_dir.path(), 64 << 20, 1 << 30).await;
        let view = agent.add_dataset(cfg.clone()).await.unwrap();
        for (k, v) in &files {
            let got = view.read(&p(k), 0, u64::MAX).await.unwrap();
            assert_eq!(&got[..], &v[..], "{k}");
        }
        // Unaligned read across a block boundary.
        let got = view
            .read(&p("train/a.bin"), MIB as u64 - 3, 10)
            .await
            .unwrap();
        assert_eq!(&got[..], &files[0].1[MIB - 3..MIB + 7]);
        let cold = view.request_counts();
        assert_eq!(cold.gets, 5, "4 blocks of a.bin + 1 of b.bin: {cold:?}");
        for (k, v) in &files {
            let got = view.read(&p(k), 0, u64::MAX).await.unwrap();
            assert_eq!(&got[..], &v[..], "{k}");
        }
        assert_eq!(
            view.request_counts(),
            cold,
            "a second read must not reach the source"
        );
        let usage = view.usage();
        assert_eq!(usage.cached_bytes, (3 * MIB + 5 + 17) as u64);
        assert_eq!(usage.cached_files, 2);
        assert!(usage.hits >= 5, "{usage:?}");
        let listing = view.list(&p("/train")).await.unwrap();
        let names: Vec<_> = listing.entries().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["a.bin", "b.bin"]);
    }
    // A new agent on the same cache dir serves what was cached without any request.
    let agent = agent(cache_dir.path(), 64 << 20, 1 << 30).await;
    let view = agent.add_dataset(cfg).await.unwrap();
    for (k, v) in files.iter().filter(|(_, v)| !v.is_empty()) {
        let got = view.read(&p(k), 0, u64::MAX).await.unwrap();
        assert_eq!(&got[..], &v[..], "{k}");
    }
    assert_eq!(
        view.request_counts().total(),
        0,
        "{:?}",
        view.request_counts()
    );
    drop(s3);
    // Even with the server gone.
    let got = view.read(&p("train/a.bin"), 0, u64::MAX).await.unwrap();
    assert_eq!(&got[..], &files[0].1[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changed_object_is_served_fresh_after_metadata_ttl() {
    let s3 = S3Server::start();
    s3.create_bucket("chg");
    s3.upload("chg", &[("f.txt".into(), b"version one".to_vec())])
        .await;
    let cache_dir = tempdir();
    let agent = agent(cache_dir.path(), 16 << 20, 1 << 30).await;
    let view = agent
        .add_dataset(dataset(
            "chg",
            vec![s3.source("s3", "s3://chg", "/")],
            CacheSettings {
                metadata_ttl: Duration::from_millis(800),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        &view.read(&p("/f.txt"), 0, 100).await.unwrap()[..],
        b"version one"
    );
    s3.upload("chg", &[("f.txt".into(), b"version two, longer".to_vec())])
        .await;
    // Within the TTL the cached version is served.
    assert_eq!(
        &view.read(&p("/f.txt"), 0, 100).await.unwrap()[..],
        b"version one"
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        &view.read(&p("/f.txt"), 0, 100).await.unwrap()[..],
        b"version two, longer"
    );
    // Deleted upstream: gone after the TTL too (negative entries expire like others).
    s3.store("chg")
        .delete(&object_store::path::Path::from("f.txt"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    let err = view.stat(&p("/f.txt")).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    s3.upload("chg", &[("f.txt".into(), b"back".to_vec())])
        .await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(&view.read(&p("/f.txt"), 0, 100).await.unwrap()[..], b"back");
}

use object_store::ObjectStoreExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_readers_of_a_cold_block_share_one_fetch() {
    let s3 = S3Server::start();
    s3.create_bucket("single-flight");
    let data = content(9, 2 * MIB);
    s3.upload("single-flight", &[("big".into(), data.clone())])
        .await;
    let cache_dir = tempdir();
    let agent = agent(cache_dir.path(), 16 << 20, 1 << 30).await;
    let view = agent
        .add_dataset(dataset(
            "single-flight",
            vec![s3.source("s3", "s3://single-flight", "/")],
            CacheSettings::default(),
        ))
        .await
        .unwrap();
    view.stat(&p("/big")).await.unwrap();
    let before = view.request_counts();
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let view = view.clone();
        tasks.push(tokio::spawn(async move {
            view.read(&p("/big"), i * 1000, 4096).await.unwrap()
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let got = t.await.unwrap();
        assert_eq!(&got[..], &data[i * 1000..i * 1000 + 4096]);
    }
    let after = view.request_counts();
    assert_eq!(after.gets - before.gets, 1, "{before:?} -> {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupted_block_is_detected_refetched_and_never_returned() {
    let src = tempdir();
    let data = content(5, 3 * MIB);
    write_tree(src.path(), &[("f.bin".into(), data.clone())]);
    let cache_dir = tempdir();
    // No memory tier, so every read goes to the disk tier.
    let agent = agent(cache_dir.path(), 0, 1 << 30).await;
    let view = agent
        .add_dataset(dataset(
            "corrupt",
            vec![local_source("local", src.path(), "/")],
            one_mib_blocks(),
        ))
        .await
        .unwrap();
    assert_eq!(
        &view.read(&p("/f.bin"), 0, u64::MAX).await.unwrap()[..],
        &data[..]
    );
    let gets = view.request_counts().gets;
    assert_eq!(gets, 3);
    let stat = view.stat(&p("/f.bin")).await.unwrap();
    let file = view
        .cache()
        .data_file(stat.version.as_ref().unwrap())
        .unwrap();
    // Flip bytes in the middle block on disk.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.write_all_at(b"garbage!", MIB as u64 + 100).unwrap();
    }
    let got = view.read(&p("/f.bin"), 0, u64::MAX).await.unwrap();
    assert_eq!(&got[..], &data[..], "corrupted bytes were returned");
    assert_eq!(
        view.request_counts().gets,
        gets + 1,
        "only the bad block is refetched"
    );
    let metrics = agent.metrics().encode();
    assert!(
        metrics.contains("strata_checksum_failures_total 1"),
        "{metrics}"
    );
    // The refetched block was written back correctly.
    assert_eq!(
        &view.read(&p("/f.bin"), 0, u64::MAX).await.unwrap()[..],
        &data[..]
    );
    assert_eq!(view.request_counts().gets, gets + 1);
    // A fully cached file handed out for passthrough is verified first.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.write_all_at(b"garbage!", 10).unwrap();
    }
    let agent2 = common::agent(cache_dir.path(), 0, 1 << 30).await;
    let view2 = agent2.add_dataset(view.config().clone()).await.unwrap();
    let stat2 = view2.stat(&p("/f.bin")).await.unwrap();
    assert!(
        view2.cached_file(&stat2).await.is_none(),
        "a corrupt file was offered for passthrough"
    );
    assert_eq!(
        &view2.read(&p("/f.bin"), 0, u64::MAX).await.unwrap()[..],
        &data[..]
    );
    assert!(view2.cached_file(&stat2).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eviction_under_a_small_quota_keeps_pinned_data() {
    for eviction in [
        strata_agent::config::EvictionKind::Lru,
        strata_agent::config::EvictionKind::S3Fifo,
    ] {
        let src = tempdir();
        let mut files = vec![("pinned/keep.bin".to_string(), content(100, 2 * MIB))];
        for i in 0..10 {
            files.push((format!("other/{i}.bin"), content(i, MIB)));
        }
        write_tree(src.path(), &files);
        let cache_dir = tempdir();
        let agent = agent(cache_dir.path(), 0, 1 << 30).await;
        let view = agent
            .add_dataset(dataset(
                "quota",
                vec![local_source("local", src.path(), "/")],
                CacheSettings {
                    block_size: MIB as u64,
                    quota: Some(5 * MIB as u64),
                    eviction,
                    pins: vec!["/pinned/**".into()],
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
        for (k, v) in &files {
            assert_eq!(&view.read(&p(k), 0, u64::MAX).await.unwrap()[..], &v[..]);
        }
        let usage = view.usage();
        assert!(
            usage.cached_bytes <= 5 * MIB as u64,
            "{eviction:?} {usage:?}"
        );
        assert_eq!(usage.pinned_bytes, 2 * MIB as u64, "{eviction:?} {usage:?}");
        let before = view.request_counts().gets;
        assert_eq!(
            &view
                .read(&p("/pinned/keep.bin"), 0, u64::MAX)
                .await
                .unwrap()[..],
            &files[0].1[..]
        );
        assert_eq!(
            view.request_counts().gets,
            before,
            "{eviction:?}: pinned data was evicted"
        );
        // A pin Job adds at run time the glob its policy configures: one pin in force.
        assert!(!view.pin("/pinned/**".into()).unwrap(), "{eviction:?}");
        assert_eq!(view.pins(), [PinRule::from("/pinned/**")], "{eviction:?}");
        // Unpinned, it competes like everything else.
        view.unpin(&[]).unwrap();
        let metrics = agent.metrics().encode();
        assert!(
            metrics.contains("strata_cache_evictions_total{tier=\"disk\"}"),
            "{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_dataset_cannot_evict_anothers_pinned_data() {
    let src = tempdir();
    let files: Vec<(String, Vec<u8>)> =
        (0..8).map(|i| (format!("f{i}"), content(i, MIB))).collect();
    write_tree(src.path(), &files);
    let cache_dir = tempdir();
    // The node disk holds 4 MiB in all.
    let agent = agent(cache_dir.path(), 0, 4 * MIB as u64).await;
    let settings = |pins: Vec<String>| CacheSettings {
        block_size: MIB as u64,
        pins: pins.iter().map(|p| p.as_str().into()).collect(),
        ..Default::default()
    };
    let a = agent
        .add_dataset(dataset(
            "a",
            vec![local_source("l", src.path(), "/")],
            settings(vec!["/f[01]".into()]),
        ))
        .await
        .unwrap();
    let b = agent
        .add_dataset(dataset(
            "b",
            vec![local_source("l", src.path(), "/")],
            settings(vec![]),
        ))
        .await
        .unwrap();
    for (k, _) in &files[..2] {
        a.read(&p(k), 0, u64::MAX).await.unwrap();
    }
    for (k, v) in &files {
        assert_eq!(&b.read(&p(k), 0, u64::MAX).await.unwrap()[..], &v[..]);
    }
    assert_eq!(a.usage().cached_bytes, 2 * MIB as u64);
    assert!(b.usage().cached_bytes <= 2 * MIB as u64);
    assert!(agent.block_cache().disk_used() <= 4 * MIB as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_ttl_drops_blocks_nobody_read() {
    let src = tempdir();
    write_tree(
        src.path(),
        &[
            ("x".into(), content(1, 1000)),
            ("keep/y".into(), content(2, 1000)),
        ],
    );
    let cache_dir = tempdir();
    let agent = agent(cache_dir.path(), 0, 1 << 30).await;
    let view = agent
        .add_dataset(dataset(
            "ttl",
            vec![local_source("l", src.path(), "/")],
            CacheSettings {
                data_ttl: Some(Duration::from_secs(1)),
                pins: vec!["/keep/**".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    view.read(&p("/x"), 0, 10).await.unwrap();
    view.read(&p("/keep/y"), 0, 10).await.unwrap();
    assert_eq!(view.usage().cached_files, 2);
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let usage = view.usage();
    assert_eq!(usage.cached_files, 1, "{usage:?}");
    assert_eq!(usage.pinned_bytes, 1000);
}

/// A block read from the memory tier counts as read for the data TTL: its disk copy is
/// not dropped while it is in use (before, only reads from disk counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_ttl_keeps_blocks_read_from_memory() {
    let src = tempdir();
    write_tree(src.path(), &[("x".into(), content(3, 1000))]);
    let cache_dir = tempdir();
    let agent = agent(cache_dir.path(), 16 << 20, 1 << 30).await;
    let view = agent
        .add_dataset(dataset(
            "ttl-memory",
            vec![local_source("l", src.path(), "/")],
            CacheSettings {
                data_ttl: Some(Duration::from_secs(2)),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    view.read(&p("/x"), 0, 10).await.unwrap();
    // Read every half second for five seconds, well past the TTL: from disk at first,
    // then from memory once promoted.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        view.read(&p("/x"), 0, 10).await.unwrap();
    }
    let usage = view.usage();
    assert_eq!(usage.cached_files, 1, "{usage:?}");
    assert_eq!(
        view.request_counts().gets,
        1,
        "dropped while in use, and fetched again"
    );
}

/// Making room for a block can evict the last other block of the same file. The new
/// block is still indexed and counted once: it is served from the cache afterwards, and
/// the disk tier's usage is what it holds (before, it went into a file entry already
/// dropped from the index: counted against the quota for good, never served).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn evicting_a_files_last_block_to_store_another_keeps_the_file() {
    let src = tempdir();
    let files = vec![
        ("a.bin".to_string(), content(4, 2 * MIB)),
        ("b.bin".to_string(), content(5, 2 * MIB)),
    ];
    write_tree(src.path(), &files);
    let cache_dir = tempdir();
    let agent = agent(cache_dir.path(), 0, 3 * MIB as u64).await;
    let view = agent
        .add_dataset(dataset(
            "refill",
            vec![local_source("l", src.path(), "/")],
            CacheSettings {
                eviction: strata_agent::config::EvictionKind::Lru,
                ..one_mib_blocks()
            },
        ))
        .await
        .unwrap();
    view.read(&p("/a.bin"), 0, 10).await.unwrap();
    view.read(&p("/b.bin"), 0, 2 * MIB as u64).await.unwrap();
    // Full: a's block 0 is the least recently used, and goes to make room for a's block 1.
    let mib = MIB as u64;
    let got = view.read(&p("/a.bin"), mib, 10).await.unwrap();
    assert_eq!(&got[..], &files[0].1[MIB..MIB + 10]);
    let gets = view.request_counts().gets;
    let got = view.read(&p("/a.bin"), mib, 10).await.unwrap();
    assert_eq!(&got[..], &files[0].1[MIB..MIB + 10]);
    assert_eq!(
        view.request_counts().gets,
        gets,
        "a's block 1 was not cached"
    );
    let usage = view.usage();
    assert_eq!(usage.cached_files, 2, "{usage:?}");
    assert_eq!(usage.cached_bytes, 3 * mib, "{usage:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_disk_degrades_to_read_through() {
    // A real full file system: a 2 MiB tmpfs as the cache directory.
    common::require_fuse();
    let cache_dir = tempdir();
    nix::mount::mount(
        Some("tmpfs"),
        cache_dir.path(),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=2m"),
    )
    .expect("mount tmpfs (needs root)");
    let src = tempdir();
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("f{i}"), content(i, 3 * MIB)))
        .collect();
    write_tree(src.path(), &files);
    let result = async {
        let agent = agent(cache_dir.path(), 0, 1 << 30).await;
        let view = agent
            .add_dataset(dataset(
                "full",
                vec![local_source("l", src.path(), "/")],
                one_mib_blocks(),
            ))
            .await
            .unwrap();
        for _ in 0..2 {
            for (k, v) in &files {
                assert_eq!(
                    &view.read(&p(k), 0, u64::MAX).await.unwrap()[..],
                    &v[..],
                    "{k}"
                );
            }
        }
        agent.metrics().encode()
    }
    .await;
    nix::mount::umount(cache_dir.path()).unwrap();
    assert!(
        !result.contains("strata_disk_write_errors_total 0"),
        "{result}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_sources_form_one_namespace() {
    let s3 = S3Server::start();
    s3.create_bucket("multi");
    s3.upload(
        "multi",
        &[
            ("prefix/in-s3.txt".into(), b"from s3".to_vec()),
            ("outside.txt".into(), b"no".to_vec()),
        ],
    )
    .await;
    let local = tempdir();
    write_tree(
        local.path(),
        &[("sub/in-local.txt".into(), b"from disk".to_vec())],
    );
    let cache_dir = tempdir();
    let agent = agent(cache_dir.path(), 16 << 20, 1 << 30).await;
    let view = agent
        .add_dataset(dataset(
            "multi",
            vec![
                s3.source("remote", "s3://multi/prefix/", "/cloud/s3"),
                local_source("nfs", local.path(), "/onprem"),
            ],
            CacheSettings::default(),
        ))
        .await
        .unwrap();
    let root: Vec<_> = view
        .list(&p("/"))
        .await
        .unwrap()
        .entries()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(root, ["cloud", "onprem"]);
    let cloud: Vec<_> = view
        .list(&p("/cloud"))
        .await
        .unwrap()
        .entries()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(cloud, ["s3"]);
    assert_eq!(
        &view.read(&p("/cloud/s3/in-s3.txt"), 0, 100).await.unwrap()[..],
        b"from s3"
    );
    assert_eq!(
        &view
            .read(&p("/onprem/sub/in-local.txt"), 0, 100)
            .await
            .unwrap()[..],
        b"from disk"
    );
    assert!(
        view.stat(&p("/cloud/s3/outside.txt"))
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert!(
        view.stat(&p("/cloud/nothing"))
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert!(view.stat(&p("/onprem/sub")).await.unwrap().is_dir());
    assert!(view.list(&p("/onprem/sub/in-local.txt")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn source_errors_name_the_source_and_leak_no_secret() {
    let s3 = S3Server::start();
    let cache_dir = tempdir();
    let agent = agent(cache_dir.path(), 16 << 20, 1 << 30).await;
    // Missing bucket.
    let mut src = s3.source("missing-bucket", "s3://no-such-bucket/", "/");
    src.credentials.as_mut().unwrap().secret_access_key = Some("TOPSECRETVALUE".into());
    let view = agent
        .add_dataset(dataset("e1", vec![src], CacheSettings::default()))
        .await
        .unwrap();
    let err = view.check_sources().await.unwrap_err().to_string();
    assert!(
        err.contains("missing-bucket") && err.contains("s3://no-such-bucket"),
        "{err}"
    );
    assert!(
        !err.contains("TOPSECRETVALUE") && !err.contains("Signature="),
        "{err}"
    );
    // Unreachable endpoint.
    let mut src = s3.source("dead-endpoint", "s3://b/", "/");
    src.endpoint = Some(format!("http://127.0.0.1:{}", free_port()));
    src.max_retries = Some(0);
    let view = agent
        .add_dataset(dataset("e2", vec![src], CacheSettings::default()))
        .await
        .unwrap();
    let err = view.check_sources().await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("dead-endpoint") && msg.contains("reachable"),
        "{msg}"
    );
    // Unknown scheme, refused when the dataset is added.
    let err = agent
        .add_dataset(dataset(
            "e3",
            vec![strata_agent::config::SourceConfig {
                name: "odd".into(),
                uri: "ftp://x/y".into(),
                ..Default::default()
            }],
            CacheSettings::default(),
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("odd") && err.contains("unknown scheme"),
        "{err}"
    );
    // Paths that escape are refused before any source sees them.
    let local = tempdir();
    let view = agent
        .add_dataset(dataset(
            "e4",
            vec![local_source("l", local.path(), "/")],
            CacheSettings::default(),
        ))
        .await
        .unwrap();
    for bad in ["/../etc/passwd", "/%2e%2e/etc", "a\0b"] {
        assert!(
            strata_agent::path::DatasetPath::parse(bad).is_err(),
            "{bad}"
        );
    }
    assert!(view.request_counts().total() == 0);
}

/// Reads a whole file front to back in `chunk`-byte reads, as a sequential reader does.
async fn read_in_order(reader: &strata_agent::dataset::FileReader, chunk: u64) -> Vec<u8> {
    let size = reader.stat().size;
    let mut got = Vec::new();
    while (got.len() as u64) < size {
        let off = got.len() as u64;
        let data = reader.read(off, chunk).await.unwrap();
        assert!(!data.is_empty(), "short read at {off}");
        got.extend_from_slice(&data);
    }
    got
}

/// Reads `chunk` bytes at each of `offsets` in turn and checks them against `data`.
async fn read_checked(
    reader: &strata_agent::dataset::FileReader,
    data: &[u8],
    offsets: impl IntoIterator<Item = u64>,
    chunk: u64,
) {
    for off in offsets {
        let got = reader.read(off, chunk).await.unwrap();
        assert!(
            got[..] == data[off as usize..][..chunk as usize],
            "bytes differ at {off}"
        );
    }
}

/// A dataset over a local directory holding `files`, with 1 MiB blocks, a disk tier and
/// no memory tier (a block read again comes from the disk tier).
struct LocalDataset {
    view: Arc<strata_agent::dataset::DatasetView>,
    _agent: Arc<strata_agent::agent::Agent>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn local_dataset(name: &str, files: &[(String, Vec<u8>)]) -> LocalDataset {
    let src = tempdir();
    write_tree(src.path(), files);
    let cache_dir = tempdir();
    let agent = agent(cache_dir.path(), 0, 1 << 30).await;
    let view = agent
        .add_dataset(dataset(
            name,
            vec![local_source("l", src.path(), "/")],
            one_mib_blocks(),
        ))
        .await
        .unwrap();
    LocalDataset {
        view,
        _agent: agent,
        _dirs: (src, cache_dir),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sequential_reads_trigger_parallel_readahead() {
    let data = content(77, 12 * MIB);
    let ds = local_dataset("ra", &[("seq.bin".into(), data.clone())]).await;
    let view = &ds.view;
    let reader = view.open(&p("/seq.bin")).await.unwrap();
    let before = strata_agent::dataset::READAHEAD_BLOCKS.load(std::sync::atomic::Ordering::Relaxed);
    let got = read_in_order(&reader, 128 * 1024).await;
    assert_eq!(got, data);
    let ahead =
        strata_agent::dataset::READAHEAD_BLOCKS.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(ahead >= 8, "only {ahead} blocks read ahead");
    // Each block fetched exactly once, readahead or not.
    assert_eq!(view.request_counts().gets, 12);
}

/// Files read in order at once share the readahead budget: each counts as a sequential
/// reader while it reads in order and stops counting when it seeks or is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sequential_readers_share_the_readahead_budget() {
    let files: Vec<(String, Vec<u8>)> = vec![
        ("a.bin".into(), content(41, 40 * MIB)),
        ("b.bin".into(), content(42, 40 * MIB)),
    ];
    let ds = local_dataset("share", &files).await;
    let view = &ds.view;
    let a = view.open(&p("/a.bin")).await.unwrap();
    let b = view.open(&p("/b.bin")).await.unwrap();
    assert_eq!(view.sequential_readers(), 0);
    for off in [0, 256 * 1024] {
        assert_eq!(
            a.read(off, 256 * 1024).await.unwrap(),
            files[0].1[off as usize..][..256 * 1024]
        );
        assert_eq!(
            b.read(off, 256 * 1024).await.unwrap(),
            files[1].1[off as usize..][..256 * 1024]
        );
    }
    assert_eq!(view.sequential_readers(), 2);
    // A jump (further than the kernel's reads could be reordered) is not sequential: `a`
    // stops counting until it reads in order again.
    let far = 30 * MIB as u64;
    assert_eq!(
        a.read(far, 10).await.unwrap(),
        files[0].1[far as usize..][..10]
    );
    assert_eq!(view.sequential_readers(), 1);
    assert_eq!(
        a.read(far + 10, 10).await.unwrap(),
        files[0].1[far as usize + 10..][..10]
    );
    assert_eq!(view.sequential_readers(), 2);
    drop(b);
    assert_eq!(view.sequential_readers(), 1);
    drop(a);
    assert_eq!(view.sequential_readers(), 0);
}

/// The kernel sends reads two at a time, and the read for the end of a block often comes
/// after the first read of the next block: the reader still holds the earlier block and
/// answers it without going to a tier again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_read_of_the_previous_block_is_served_by_the_reader() {
    let data = content(43, 4 * MIB);
    let ds = local_dataset("late", &[("f.bin".into(), data.clone())]).await;
    let view = &ds.view;
    let reader = view.open(&p("/f.bin")).await.unwrap();
    let (head, tail) = (MIB as u64 - 512 * 1024, MIB as u64 - 256 * 1024);
    for off in [0, 256 * 1024, head] {
        reader.read(off, 256 * 1024).await.unwrap();
    }
    // The next block's first read overtakes the previous block's last one.
    let next = reader.read(MIB as u64, 256 * 1024).await.unwrap();
    assert_eq!(next, data[MIB..][..256 * 1024]);
    let hits = view.usage().hits;
    let late = reader.read(tail, 256 * 1024).await.unwrap();
    assert_eq!(late, data[tail as usize..][..256 * 1024]);
    assert_eq!(
        view.usage().hits,
        hits,
        "the late read went to a cache tier for a block the reader had just served"
    );
}

/// With a large kernel readahead (`read_ahead_kb` of a few MiB), the kernel has several MiB
/// of reads in flight and the FUSE threads take them in any order. Such a reader is still
/// reading in order: its readahead keeps going and every block reaches it from its own
/// fetch, never read back from a cache tier (before, a read 8 MiB ahead reset the reader,
/// and each block was read again from the disk tier for every kernel request in it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_reordered_by_a_large_kernel_readahead_stay_sequential() {
    let data = content(45, 40 * MIB);
    let ds = local_dataset("reorder", &[("f.bin".into(), data.clone())]).await;
    let view = &ds.view;
    let reader = view.open(&p("/f.bin")).await.unwrap();
    let (window, chunk) = (8 * MIB as u64, 512 * 1024);
    for start in (0..data.len() as u64).step_by(window as usize) {
        // The worst order: the furthest read of each window first.
        let offsets: Vec<u64> = (start..start + window).step_by(chunk as usize).collect();
        read_checked(&reader, &data, offsets.into_iter().rev(), chunk).await;
    }
    assert_eq!(
        view.usage().hits,
        0,
        "blocks were read back from a cache tier instead of reaching the reader from its fetch"
    );
}

/// A file read in ranges by several readers (as a split of a large file is): one reader's
/// readahead runs past the end of its range into blocks the next reader has already
/// cached. Those are not read back from disk a window ahead of it, only a few blocks
/// ahead once it gets there, so a reader that stops at its range's end loads at most four
/// of them (before: all twelve). If they are evicted before the reader gets there, its
/// readahead fetches them again in one request, not a block at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readahead_leaves_blocks_a_tier_holds_until_the_reader_nears_them() {
    let s3 = S3Server::start();
    s3.create_bucket("data");
    let data = content(46, 24 * MIB);
    s3.upload("data", &[("f.bin".into(), data.clone())]).await;
    let cache_dir = tempdir();
    let agent = agent(cache_dir.path(), 0, 1 << 30).await;
    let view = agent
        .add_dataset(dataset(
            "ranges",
            vec![s3.source("s3", "s3://data/", "/")],
            one_mib_blocks(),
        ))
        .await
        .unwrap();
    let half = 12 * MIB as u64;
    let chunk = 256 * 1024;
    let second = view.open(&p("/f.bin")).await.unwrap();
    for off in (half..2 * half).step_by(chunk as usize) {
        second.read(off, chunk).await.unwrap();
    }
    drop(second);
    let gets = view.request_counts().gets;
    let hits = view.usage().hits;
    let first = view.open(&p("/f.bin")).await.unwrap();
    read_checked(&first, &data, (0..half).step_by(chunk as usize), chunk).await;
    let loaded = view.usage().hits - hits;
    assert!(
        loaded <= 4,
        "{loaded} blocks past the reader's range were read back from disk"
    );
    // Reading on into the cached half: the right bytes, from the cache, not the source.
    let gets_first_half = view.request_counts().gets;
    assert!(
        gets_first_half > gets,
        "the first half came from the source"
    );
    let three_quarters = half + half / 2;
    read_checked(
        &first,
        &data,
        (half..three_quarters).step_by(chunk as usize),
        chunk,
    )
    .await;
    assert_eq!(view.request_counts().gets, gets_first_half);
    // The cache is dropped under the reader. The next four blocks were already loaded
    // (once their loads have finished); the last two come back from the source with one
    // request (before: one each).
    wait_for(Duration::from_secs(10), || view.fetches_in_flight() == 0).await;
    view.drop_cache();
    read_checked(
        &first,
        &data,
        (three_quarters..2 * half).step_by(chunk as usize),
        chunk,
    )
    .await;
    assert_eq!(
        view.request_counts().gets - gets_first_half,
        1,
        "evicted blocks were fetched again one request each"
    );
}

/// A readahead fetch that failed is not the answer for good: the read that needs the
/// block fetches it again itself. Here the object changes upstream while the reader's
/// readahead fetches the next block (the store refuses the old version: 412), then the
/// same bytes are put back (same ETag). Before, that reader got the stored error for the
/// block until it seeked away or closed the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_readahead_fetch_is_retried_by_the_read_that_needs_the_block() {
    let s3 = S3Server::start();
    s3.create_bucket("data");
    let data = content(47, 40 * MIB);
    let file = vec![("f.bin".to_string(), data.clone())];
    s3.upload("data", &file).await;
    let cache_dir = tempdir();
    let agent = agent(cache_dir.path(), 0, 1 << 30).await;
    let view = agent
        .add_dataset(dataset(
            "flaky",
            vec![s3.source("s3", "s3://data/", "/")],
            one_mib_blocks(),
        ))
        .await
        .unwrap();
    let reader = view.open(&p("/f.bin")).await.unwrap();
    let chunk = 256 * 1024;
    // Far from the start, so not in order yet: nothing is read ahead.
    let start = 20 * MIB as u64;
    read_checked(&reader, &data, [start], chunk).await;
    s3.upload("data", &[("f.bin".into(), content(48, 40 * MIB))])
        .await;
    // In order now: readahead fetches the next block, and the store refuses it.
    read_checked(&reader, &data, [start + chunk], chunk).await;
    wait_for(Duration::from_secs(10), || {
        view.take_source_error().is_some()
    })
    .await;
    s3.upload("data", &file).await;
    read_checked(
        &reader,
        &data,
        (start + MIB as u64..start + 4 * MIB as u64).step_by(chunk as usize),
        chunk,
    )
    .await;
}

/// Once a reader's window is full, reads inside the block it just served are answered at
/// once (`read_held`, what the FUSE thread tries first) with the same bytes as `read`;
/// anything else is left to `read`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_in_the_block_just_served_are_answered_at_once() {
    let data = content(44, 8 * MIB);
    let ds = local_dataset("held", &[("f.bin".into(), data.clone())]).await;
    let view = &ds.view;
    let reader = view.open(&p("/f.bin")).await.unwrap();
    let chunk = 128 * 1024;
    assert!(reader.read_held(0, chunk).is_none(), "nothing served yet");
    let mut off = 0;
    let mut held = 0;
    while off < data.len() as u64 {
        let got = match reader.read_held(off, chunk) {
            Some(got) => {
                held += 1;
                got
            }
            None => reader.read(off, chunk).await.unwrap(),
        };
        assert!(
            got[..] == data[off as usize..][..chunk as usize],
            "bytes differ at {off}"
        );
        off += chunk;
    }
    // 64 reads: the window fills within the first block, then 7 of every 8 reads are held.
    assert!(held >= 48, "only {held} of 64 reads answered at once");
    // A read in another block, or one that jumps, is not answered from the held block.
    let last_block = 7 * MIB as u64;
    assert!(reader.read_held(last_block - chunk, chunk).is_none());
    assert!(reader.read_held(0, chunk).is_none());
    assert!(reader.read_held(last_block, chunk).is_some());
}

/// Readahead and preload fetch runs of adjacent blocks with one ranged GET each (up to
/// 16 MiB), cut into blocks as the bytes arrive; blocks a tier already holds split a run
/// instead of being fetched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adjacent_blocks_are_fetched_with_one_request() {
    let s3 = S3Server::start();
    s3.create_bucket("data");
    let files: Vec<(String, Vec<u8>)> = vec![
        ("seq.bin".into(), content(31, 48 * MIB + 3)),
        ("pre.bin".into(), content(32, 40 * MIB)),
    ];
    s3.upload("data", &files).await;
    let cache_dir = tempdir();
    let cfg = dataset(
        "spans",
        vec![s3.source("s3", "s3://data/", "/")],
        one_mib_blocks(),
    );
    let agent = agent(cache_dir.path(), 0, 1 << 30).await;
    let view = agent.add_dataset(cfg.clone()).await.unwrap();

    // A sequential reader: 49 blocks, far fewer requests.
    let reader = view.open(&p("/seq.bin")).await.unwrap();
    let got = read_in_order(&reader, 256 * 1024).await;
    assert!(got == files[0].1, "bytes differ from the source");
    let seq = view.request_counts();
    assert!(
        seq.gets * 2 < 49,
        "{} GETs for 49 blocks read in order: adjacent blocks were not fetched together",
        seq.gets
    );
    assert_eq!(
        seq.bytes,
        files[0].1.len() as u64,
        "every byte fetched once"
    );

    // Preload after one block in the middle was read: the cached block splits the first
    // 16-block request in two, the other requests are whole.
    let before = view.request_counts().gets;
    let middle = view.read(&p("/pre.bin"), 5 * MIB as u64, 10).await.unwrap();
    assert_eq!(&middle[..], &files[1].1[5 * MIB..5 * MIB + 10]);
    assert_eq!(view.request_counts().gets, before + 1);
    let report = view
        .preload(&["/pre.bin".to_string()], |_| {})
        .await
        .unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(
        view.request_counts().gets,
        before + 1 + 4,
        "blocks 0-4, 6-15, 16-31 and 32-39: one request each"
    );
    let gets = view.request_counts().gets;
    let all = view.read(&p("/pre.bin"), 0, u64::MAX).await.unwrap();
    assert!(
        all[..] == files[1].1[..],
        "preloaded bytes differ from the source"
    );
    assert_eq!(
        view.request_counts().gets,
        gets,
        "preloaded blocks fetched again"
    );

    // The blocks of one GET are written side by side; every one of them is on disk and
    // in the object's index: a restarted agent serves both files without a request.
    drop((view, agent));
    let restarted = common::agent(cache_dir.path(), 0, 1 << 30).await;
    let view = restarted.add_dataset(cfg).await.unwrap();
    for (k, v) in &files {
        let got = view.read(&p(k), 0, u64::MAX).await.unwrap();
        assert!(got[..] == v[..], "{k}: bytes differ after a restart");
    }
    assert_eq!(
        view.request_counts().total(),
        0,
        "blocks written together were lost from the index: {:?}",
        view.request_counts()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preload_pin_and_usage() {
    let src = tempdir();
    let files: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| {
            (
                format!("d{}/f{i}.bin", i % 3),
                content(i, 1000 + i as usize),
            )
        })
        .collect();
    write_tree(src.path(), &files);
    let cache_dir = tempdir();
    let agent = agent(cache_dir.path(), 0, 1 << 30).await;
    let view = agent
        .add_dataset(dataset(
            "pre",
            vec![local_source("l", src.path(), "/")],
            CacheSettings::default(),
        ))
        .await
        .unwrap();
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let c = calls.clone();
    let report = view
        .preload(&["/d1/**".to_string()], move |p| c.lock().unwrap().push(p))
        .await
        .unwrap();
    let d1: Vec<_> = files.iter().filter(|(k, _)| k.starts_with("d1/")).collect();
    assert_eq!(report.files, d1.len() as u64);
    assert_eq!(
        report.bytes,
        d1.iter().map(|(_, v)| v.len() as u64).sum::<u64>()
    );
    assert!(report.failed.is_empty());
    let last = *calls.lock().unwrap().last().unwrap();
    assert_eq!(last.files_done, last.files_total);
    let gets = view.request_counts().gets;
    for (k, v) in &d1 {
        assert_eq!(&view.read(&p(k), 0, u64::MAX).await.unwrap()[..], &v[..]);
    }
    assert_eq!(
        view.request_counts().gets,
        gets,
        "preloaded files were fetched again"
    );
    view.pin("/d1/**".into()).unwrap();
    assert_eq!(view.usage().pinned_bytes, report.bytes);
    view.unpin(&["/d1/**".to_string()]).unwrap();
    assert_eq!(view.usage().pinned_bytes, 0);
    let (bytes, count) = view.scan().await.unwrap();
    assert_eq!(count, 20);
    assert_eq!(view.usage().total_bytes, Some(bytes));
    view.drop_cache();
    assert_eq!(view.usage().cached_bytes, 0);
}

/// A dataset removed while a preload of it runs: the preload stops with an error that
/// says so, and the node's disk total no longer holds any of the dataset's bytes. Before,
/// the preload went on fetching the whole dataset into a cache nobody served from, and
/// each block it stored after the removal stayed in the node's total for good (counted
/// again when the dataset came back), shrinking the disk tier of every other dataset.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_a_dataset_stops_its_preload_and_gives_its_disk_space_back() {
    const FILE: usize = 64 * 1024;
    let s3 = S3Server::start();
    s3.create_bucket("data");
    let files: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| (format!("f{i:03}"), content(i, FILE)))
        .collect();
    s3.upload("data", &files).await;
    let cache_dir = tempdir();
    let agent = agent(cache_dir.path(), 0, 1 << 30).await;
    let cfg = dataset(
        "removed",
        vec![s3.source("s3", "s3://data/", "/")],
        CacheSettings::default(),
    );
    let view = agent.add_dataset(cfg.clone()).await.unwrap();
    let (started, started_rx) = tokio::sync::oneshot::channel();
    let started = std::sync::Mutex::new(Some(started));
    let preload = tokio::spawn({
        let view = view.clone();
        async move {
            view.preload_with(&["/**".to_string()], 2, move |p| {
                if p.files_done >= 5
                    && let Some(tx) = started.lock().unwrap().take()
                {
                    let _ = tx.send(());
                }
            })
            .await
        }
    });
    started_rx.await.unwrap();
    agent
        .remove_dataset("test", "removed", false)
        .await
        .unwrap();
    let err = preload
        .await
        .unwrap()
        .expect_err("the preload went on after its dataset was removed");
    assert!(
        err.to_string().contains("test/removed was removed"),
        "{err}"
    );
    wait_for(Duration::from_secs(10), || view.fetches_in_flight() == 0).await;
    assert_eq!(
        agent.block_cache().disk_used(),
        0,
        "bytes of a removed dataset still count on the node"
    );
    assert!(
        view.request_counts().gets < files.len() as u64,
        "every file was fetched: {:?}",
        view.request_counts()
    );
    // Back again, it counts what is on disk, once.
    let view = agent.add_dataset(cfg).await.unwrap();
    let cached = view.usage().cached_bytes;
    assert!(cached >= 5 * FILE as u64, "{cached}");
    assert_eq!(agent.block_cache().disk_used(), cached);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocks_read_again_from_disk_are_promoted_to_memory() {
    let src = tempdir();
    let data = content(8, 100_000);
    write_tree(src.path(), &[("hot".into(), data.clone())]);
    let cache_dir = tempdir();
    let agent = agent(cache_dir.path(), 16 << 20, 1 << 30).await;
    let view = agent
        .add_dataset(dataset(
            "promo",
            vec![local_source("l", src.path(), "/")],
            CacheSettings::default(),
        ))
        .await
        .unwrap();
    let hits = |tier: &str| -> u64 {
        let text = agent.metrics().encode();
        let prefix = format!("strata_cache_hits_total{{tier=\"{tier}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.parse().unwrap())
            .unwrap_or(0)
    };
    // Fetched once: on disk only.
    view.read(&p("/hot"), 0, u64::MAX).await.unwrap();
    assert_eq!(view.usage().memory_bytes, 0);
    // Read twice from disk: promoted.
    view.read(&p("/hot"), 0, u64::MAX).await.unwrap();
    view.read(&p("/hot"), 0, u64::MAX).await.unwrap();
    assert_eq!(hits("disk"), 2);
    assert_eq!(view.usage().memory_bytes, 100_000);
    let got = view.read(&p("/hot"), 0, u64::MAX).await.unwrap();
    assert_eq!(&got[..], &data[..]);
    assert_eq!(hits("memory"), 1);
    assert_eq!(view.request_counts().gets, 1);
}

/// A data loader reading small files of a shard whole: after the trigger count the rest
/// of the directory is fetched in the background, within the byte limit, and reading it
/// then costs no request. Off (0), nothing is fetched ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_reads_of_small_files_prefetch_their_directory() {
    let src = tempdir();
    let mut files: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| (format!("shard-0/{i:03}.bin"), content(i, 1000 + i as usize)))
        .collect();
    // Not small (more than one block) or elsewhere: never prefetched.
    files.push(("shard-0/big.bin".into(), content(90, 2 * MIB + 1)));
    files.push(("shard-1/000.bin".into(), content(91, 500)));
    write_tree(src.path(), &files);
    let settings = one_mib_blocks();
    let read_whole = |view: Arc<strata_agent::dataset::DatasetView>, path: String| async move {
        let reader = view.open(&p(&path)).await.unwrap();
        let size = reader.stat().size;
        let mut off = 0;
        while off < size {
            off += reader.read(off, 4096).await.unwrap().len() as u64;
        }
    };

    for (trigger, expect_prefetch) in [(3u32, true), (0, false)] {
        let cache_dir = tempdir();
        let mut config = strata_agent::agent::AgentConfig::new(cache_dir.path(), 0, 1 << 30);
        config.directory_prefetch_files = trigger;
        let agent = strata_agent::agent::Agent::new(config).await.unwrap();
        let view = agent
            .add_dataset(dataset(
                "loader",
                vec![local_source("l", src.path(), "/")],
                settings.clone(),
            ))
            .await
            .unwrap();
        for f in ["shard-0/007.bin", "shard-0/003.bin"] {
            read_whole(view.clone(), f.to_string()).await;
        }
        assert_eq!(view.request_counts().gets, 2, "one GET per file read");
        // The third whole read reaches the trigger (when on).
        read_whole(view.clone(), "shard-0/015.bin".to_string()).await;
        if expect_prefetch {
            // The other 17 small files of shard-0 arrive in the background.
            wait_for(Duration::from_secs(10), || view.request_counts().gets == 20).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(
                view.request_counts().gets,
                20,
                "big.bin and shard-1 are not prefetched"
            );
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(view.request_counts().gets, 3, "prefetch is off");
        }
        // Every byte still equals the source; prefetched files cost no request.
        for (name, want) in files.iter().filter(|(n, _)| n.starts_with("shard-0/0")) {
            let reader = view.open(&p(name)).await.unwrap();
            let got = reader.read(0, u64::MAX).await.unwrap();
            assert_eq!(&got[..], &want[..], "{name}");
        }
        assert_eq!(
            view.request_counts().gets,
            20,
            "each small file of shard-0 fetched exactly once"
        );
    }
}

async fn wait_for(limit: Duration, ok: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A failed read from a source is kept for the node report (once), a "not found" is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_source_requests_are_kept_for_the_node_report() {
    let cache_dir = tempdir();
    let agent = agent(cache_dir.path(), 16 << 20, 1 << 30).await;
    let src = tempdir();
    write_tree(src.path(), &[("a.txt".into(), b"a".to_vec())]);
    let local = agent
        .add_dataset(dataset(
            "fine",
            vec![local_source("l", src.path(), "/")],
            CacheSettings::default(),
        ))
        .await
        .unwrap();
    assert!(local.stat(&p("/missing")).await.unwrap_err().is_not_found());
    assert_eq!(local.take_source_error(), None, "not found is an answer");

    let s3 = S3Server::start();
    let mut dead = s3.source("dead-endpoint", "s3://b/", "/");
    dead.endpoint = Some(format!("http://127.0.0.1:{}", free_port()));
    dead.max_retries = Some(0);
    let view = agent
        .add_dataset(dataset("down", vec![dead], CacheSettings::default()))
        .await
        .unwrap();
    view.stat(&p("/x.bin")).await.unwrap_err();
    let (message, _) = view.take_source_error().expect("the failure is kept");
    assert!(message.contains("dead-endpoint"), "{message}");
    assert_eq!(view.take_source_error(), None, "taken once");
}

/// Physical start of each extent of `file`, in logical order (FIEMAP via `filefrag -v`), or
/// None where the file system or the tool cannot say.
fn physical_extents(file: &std::path::Path) -> Option<Vec<(u64, u64)>> {
    let out = std::process::Command::new("filefrag")
        .arg("-v")
        .arg(file)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let extents: Vec<(u64, u64)> = text
        .lines()
        .filter_map(|l| {
            // "   0:        0..    3071:    9392128..   9395199:   3072: ..."
            let cols: Vec<&str> = l.split(':').map(str::trim).collect();
            let logical = cols.get(1)?.split("..").next()?.trim().parse().ok()?;
            let physical = cols.get(2)?.split("..").next()?.trim().parse().ok()?;
            Some((logical, physical))
        })
        .collect();
    (out.status.success() && !extents.is_empty()).then_some(extents)
}

/// Blocks fetched in parallel land in any order; space allocated ahead for them keeps the
/// cached file in file order on disk (so a passthrough read of it is sequential for the
/// disk), holds the right bytes, is given back for a block that never arrives, and is not
/// taken when the tier has no room.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocks_landing_out_of_order_lie_in_file_order() {
    let src = tempdir();
    let data = content(11, 8 * MIB);
    let partial = content(12, 4 * MIB);
    write_tree(
        src.path(),
        &[
            ("f.bin".into(), data.clone()),
            ("g.bin".into(), partial.clone()),
        ],
    );
    let cache_dir = tempdir();
    let agent = agent(cache_dir.path(), 0, 1 << 30).await;
    let settings = one_mib_blocks();
    let view = agent
        .add_dataset(dataset(
            "layout",
            vec![local_source("local", src.path(), "/")],
            settings.clone(),
        ))
        .await
        .unwrap();
    let cache = view.cache().clone();
    let stat = view.stat(&p("/f.bin")).await.unwrap();
    let version = stat.version.clone().unwrap();
    cache.preallocate(&version, &stat.path, stat.mtime, 0..8);
    let file = cache
        .data_file(&version)
        .expect("a data file for the object");
    let allocated = |f: &std::path::Path| {
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(f).unwrap()) * 512
    };
    assert_eq!(allocated(&file), 8 * MIB as u64, "space taken ahead");
    for i in (0..8u64).rev() {
        let b = bytes::Bytes::copy_from_slice(&data[i as usize * MIB..(i as usize + 1) * MIB]);
        cache.put(&version, &stat.path, stat.mtime, i, b);
    }
    match physical_extents(&file) {
        Some(extents) => assert!(
            extents.windows(2).all(|w| w[1].1 > w[0].1),
            "blocks written last-first must still lie in file order: {extents:?}"
        ),
        None => eprintln!("filefrag cannot map {}: layout not checked", file.display()),
    }
    let gets = view.request_counts().gets;
    assert_eq!(
        &view.read(&p("/f.bin"), 0, u64::MAX).await.unwrap()[..],
        &data[..]
    );
    assert_eq!(view.request_counts().gets, gets, "served from the cache");

    // A block that never arrives gives its space back.
    let stat = view.stat(&p("/g.bin")).await.unwrap();
    let version = stat.version.clone().unwrap();
    cache.preallocate(&version, &stat.path, stat.mtime, 0..4);
    for i in 0..3u64 {
        let b = bytes::Bytes::copy_from_slice(&partial[i as usize * MIB..(i as usize + 1) * MIB]);
        cache.put(&version, &stat.path, stat.mtime, i, b);
    }
    cache.release_unwritten(&version, 3);
    let file = cache.data_file(&version).unwrap();
    assert_eq!(
        allocated(&file),
        3 * MIB as u64,
        "the missing block's space is back"
    );

    // No room in the tier: nothing is taken ahead.
    let small_dir = tempdir();
    let small = common::agent(small_dir.path(), 0, 2 * MIB as u64).await;
    let small_view = small
        .add_dataset(dataset(
            "layout-small",
            vec![local_source("local", src.path(), "/")],
            settings,
        ))
        .await
        .unwrap();
    let stat = small_view.stat(&p("/f.bin")).await.unwrap();
    let version = stat.version.clone().unwrap();
    small_view
        .cache()
        .preallocate(&version, &stat.path, stat.mtime, 0..8);
    let taken = small_view
        .cache()
        .data_file(&version)
        .map(|f| allocated(&f))
        .unwrap_or(0);
    assert_eq!(taken, 0, "8 MiB taken ahead in a 2 MiB tier");
}

/// Space taken ahead for blocks that never arrived, because the agent stopped first, is
/// given back when a restarted agent rebuilds its index: the disk then holds what the
/// index counts. Before, it stayed allocated, counted nowhere, until the whole object
/// left the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn space_taken_ahead_for_blocks_that_never_came_is_freed_on_restart() {
    let src = tempdir();
    let data = content(13, 4 * MIB);
    write_tree(src.path(), &[("f.bin".into(), data.clone())]);
    let cache_dir = tempdir();
    let cfg = dataset(
        "ahead",
        vec![local_source("local", src.path(), "/")],
        one_mib_blocks(),
    );
    let allocated = |f: &std::path::Path| {
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(f).unwrap()) * 512
    };
    let file = {
        let agent = agent(cache_dir.path(), 0, 1 << 30).await;
        let view = agent.add_dataset(cfg.clone()).await.unwrap();
        let cache = view.cache().clone();
        let stat = view.stat(&p("/f.bin")).await.unwrap();
        let version = stat.version.clone().unwrap();
        cache.preallocate(&version, &stat.path, stat.mtime, 0..4);
        let first = bytes::Bytes::copy_from_slice(&data[..MIB]);
        cache.put(&version, &stat.path, stat.mtime, 0, first);
        let file = cache.data_file(&version).unwrap();
        assert_eq!(allocated(&file), 4 * MIB as u64, "space taken ahead");
        file
        // The agent stops here, with blocks 1 to 3 never fetched.
    };
    let agent = agent(cache_dir.path(), 0, 1 << 30).await;
    let view = agent.add_dataset(cfg).await.unwrap();
    assert_eq!(view.usage().cached_bytes, MIB as u64);
    assert_eq!(
        allocated(&file),
        MIB as u64,
        "the disk holds more than the index counts"
    );
    assert_eq!(
        &view.read(&p("/f.bin"), 0, u64::MAX).await.unwrap()[..],
        &data[..]
    );
}

/// A dataset whose configuration changes keeps serving the newest version it has seen.
/// The replacing view used to take every version on disk as known for one TTL, as a
/// restarted agent does, and so went back to an older cached version of a file changed
/// upstream since.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_configuration_change_does_not_bring_back_an_older_cached_version() {
    let src = tempdir();
    write_tree(src.path(), &[("f.txt".into(), b"version one".to_vec())]);
    let cache_dir = tempdir();
    let agent = agent(cache_dir.path(), 0, 1 << 30).await;
    let mut cfg = dataset(
        "reconfigured",
        vec![local_source("l", src.path(), "/")],
        CacheSettings {
            metadata_ttl: Duration::from_secs(600),
            ..Default::default()
        },
    );
    let view = agent.add_dataset(cfg.clone()).await.unwrap();
    assert_eq!(
        &view.read(&p("/f.txt"), 0, u64::MAX).await.unwrap()[..],
        b"version one"
    );
    std::fs::write(src.path().join("f.txt"), b"version two, longer").unwrap();
    view.invalidate(&p("/f.txt"));
    assert_eq!(view.stat(&p("/f.txt")).await.unwrap().size, 19);
    // Any change, here the quota: the cache is kept, the view is replaced.
    cfg.cache.quota = Some(1 << 29);
    let view = agent.add_dataset(cfg).await.unwrap();
    assert_eq!(
        view.stat(&p("/f.txt")).await.unwrap().size,
        19,
        "the older cached version came back"
    );
    assert_eq!(
        &view.read(&p("/f.txt"), 0, u64::MAX).await.unwrap()[..],
        b"version two, longer"
    );
}

/// A dataset re-created with another block size while the memory tier holds its blocks
/// reads the right bytes: memory blocks of the old size used to be found under the same
/// index.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_block_size_does_not_reuse_memory_blocks_of_the_old_one() {
    let src = tempdir();
    let data = content(21, 5 * MIB);
    write_tree(src.path(), &[("f.bin".into(), data.clone())]);
    let cache_dir = tempdir();
    // No disk tier: every block read stays in memory.
    let agent = agent(cache_dir.path(), 256 << 20, 0).await;
    let mut cfg = dataset(
        "resized",
        vec![local_source("l", src.path(), "/")],
        one_mib_blocks(),
    );
    let view = agent.add_dataset(cfg.clone()).await.unwrap();
    assert!(view.read(&p("/f.bin"), 0, u64::MAX).await.unwrap()[..] == data[..]);
    cfg.cache.block_size = 2 * MIB as u64;
    let view = agent.add_dataset(cfg).await.unwrap();
    for (offset, len) in [(0, 5 * MIB), (2 * MIB + 7, MIB), (4 * MIB, MIB)] {
        let got = view
            .read(&p("/f.bin"), offset as u64, len as u64)
            .await
            .unwrap();
        assert!(
            got[..] == data[offset..offset + len],
            "wrong bytes at {offset}"
        );
    }
}

/// A stat answered from a listing due for refresh refreshes that listing in the
/// background, so hot paths keep being answered without waiting for the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stat_answered_from_a_listing_due_for_refresh_refreshes_it() {
    let src = tempdir();
    write_tree(src.path(), &[("d/a".into(), b"a".to_vec())]);
    let cache_dir = tempdir();
    let agent = agent(cache_dir.path(), 0, 1 << 30).await;
    let view = agent
        .add_dataset(dataset(
            "relist",
            vec![local_source("l", src.path(), "/")],
            CacheSettings {
                metadata_ttl: Duration::from_secs(2),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    view.list(&p("/d")).await.unwrap();
    let lists = view.request_counts().lists;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    view.stat(&p("/d/a")).await.unwrap();
    wait_for(Duration::from_secs(5), || {
        view.request_counts().lists > lists
    })
    .await;
}

/// A configuration change (here the quota) while a source is down: the replacing view
/// serves the cached files as the old one did, without asking the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_configuration_change_serves_cached_files_while_the_source_is_down() {
    let s3 = S3Server::start();
    s3.create_bucket("data");
    let files: Vec<(String, Vec<u8>)> = vec![("d/a.bin".into(), content(31, 2 * MIB + 3))];
    s3.upload("data", &files).await;
    let cache_dir = tempdir();
    let agent = agent(cache_dir.path(), 0, 1 << 30).await;
    let mut cfg = dataset(
        "down",
        vec![s3.source("s3", "s3://data/", "/")],
        one_mib_blocks(),
    );
    let view = agent.add_dataset(cfg.clone()).await.unwrap();
    assert!(view.read(&p("/d/a.bin"), 0, u64::MAX).await.unwrap()[..] == files[0].1[..]);
    drop(s3);
    cfg.cache.quota = Some(1 << 29);
    let view = agent.add_dataset(cfg).await.unwrap();
    let got = view.read(&p("/d/a.bin"), 0, u64::MAX).await.unwrap();
    assert!(got[..] == files[0].1[..]);
    assert_eq!(view.request_counts().total(), 0);
}
