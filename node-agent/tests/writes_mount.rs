//! Writable datasets through a real FUSE mount over a real S3 server (moto): what a
//! writer does lands on the node at once and reaches the bucket whole; a read-only
//! dataset refuses every write with EROFS.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use strata_agent::config::{CacheSettings, WriteMode};
use strata_agent::fuse::{MountOptions, mount};

/// Every object under `prefix` of the bucket, by key relative to it, with its content.
async fn bucket(s3: &S3Server, name: &str, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let store = s3.store(name);
    let metas: Vec<_> = store
        .list(Some(&object_store::path::Path::from(prefix)))
        .try_collect()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for m in metas {
        let data = store.get(&m.location).await.unwrap().bytes().await.unwrap();
        let key = m
            .location
            .as_ref()
            .strip_prefix(prefix)
            .unwrap()
            .trim_start_matches('/');
        out.insert(key.to_string(), data.to_vec());
    }
    out
}

fn errno_of(r: std::io::Result<impl Sized>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn posix_writes_land_at_once_and_reach_the_bucket_whole() {
    require_fuse();
    let s3 = S3Server::start();
    s3.create_bucket("writable");
    s3.upload(
        "writable",
        &[
            ("ds/old.txt".to_string(), b"hello".to_vec()),
            ("ds/keep/a.bin".to_string(), content(7, 3 * MIB + 5)),
            ("ds/move-me".to_string(), content(8, 1000)),
        ],
    )
    .await;
    let cache_dir = tempdir();
    let mnt = tempdir();
    let mut source = s3.source("s3", "s3://writable/ds/", "/");
    source.write_mode = WriteMode::WriteBack;
    let cfg = dataset(
        "writable",
        vec![source],
        CacheSettings {
            metadata_ttl: Duration::from_secs(300),
            ..one_mib_blocks()
        },
    );
    let agent = agent(cache_dir.path(), 64 << 20, 1 << 30).await;
    let view = agent.add_dataset(cfg).await.unwrap();
    let _handle = mount(view.clone(), mnt.path(), MountOptions::default()).unwrap();
    let root = mnt.path().to_path_buf();
    let big = content(9, 20 * MIB + 123);
    let big2 = big.clone();
    blocking(move || {
        let r = |p: &str| root.join(p);
        // Create and write, read back at once.
        std::fs::write(r("new.txt"), b"fresh").unwrap();
        assert_eq!(std::fs::read(r("new.txt")).unwrap(), b"fresh");
        // Append to an object that was only at the source (copy-up).
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(r("old.txt"))
            .unwrap();
        f.write_all(b", world").unwrap();
        drop(f);
        assert_eq!(std::fs::read(r("old.txt")).unwrap(), b"hello, world");
        // Write at an offset, past the end (a hole reads as zeros), truncate.
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(r("sparse"))
            .unwrap();
        f.write_all_at(b"end", 10).unwrap();
        f.write_all_at(b"ab", 0).unwrap();
        f.sync_all().unwrap();
        let mut got = Vec::new();
        (&f).seek(SeekFrom::Start(0)).unwrap();
        (&f).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"ab\0\0\0\0\0\0\0\0end");
        f.set_len(5).unwrap();
        drop(f);
        assert_eq!(std::fs::read(r("sparse")).unwrap(), b"ab\0\0\0");
        // A large file: multipart upload.
        std::fs::write(r("big.bin"), &big2).unwrap();
        // Directories, rename (local and source files), unlink.
        std::fs::create_dir(r("dir")).unwrap();
        std::fs::create_dir(r("dir/sub")).unwrap();
        std::fs::write(r("dir/sub/x"), b"x").unwrap();
        std::fs::rename(r("dir/sub/x"), r("dir/y")).unwrap();
        std::fs::rename(r("move-me"), r("dir/moved")).unwrap();
        std::fs::remove_dir(r("dir/sub")).unwrap();
        std::fs::create_dir(r("empty")).unwrap();
        std::fs::remove_dir(r("empty")).unwrap();
        std::fs::remove_file(r("new.txt")).unwrap();
        assert_eq!(errno_of(std::fs::remove_dir(r("dir"))), libc::ENOTEMPTY);
        assert_eq!(errno_of(std::fs::rename(r("keep"), r("kept"))), libc::EXDEV);
        assert_eq!(errno_of(std::fs::read(r("new.txt"))), libc::ENOENT);
        assert_eq!(std::fs::read(r("dir/moved")).unwrap(), content(8, 1000));
        let mut names: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["big.bin", "dir", "keep", "old.txt", "sparse"]);
    })
    .await;
    let writes = view.writes().unwrap().clone();
    assert!(
        writes.drain(Duration::from_secs(60)).await,
        "uploads did not finish"
    );
    let at_source = bucket(&s3, "writable", "ds").await;
    let expected: BTreeMap<String, Vec<u8>> = [
        ("old.txt", b"hello, world".to_vec()),
        ("keep/a.bin", content(7, 3 * MIB + 5)),
        ("sparse", b"ab\0\0\0".to_vec()),
        ("big.bin", big.clone()),
        ("dir/y", b"x".to_vec()),
        ("dir/moved", content(8, 1000)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(
        at_source.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (k, v) in &expected {
        assert!(at_source[k] == *v, "{k}: content at the source differs");
    }
    let usage = writes.usage();
    assert_eq!((usage.pending_files, usage.pending_bytes), (0, 0));
    assert!(usage.uploaded_files >= 5, "{usage:?}");
    assert_eq!(usage.failures, 0, "{usage:?}");
    // After the uploads the mount still shows the same files (now from the source).
    let root = mnt.path().to_path_buf();
    let seen = blocking(move || walk(&root)).await;
    assert_eq!(seen, expected);
    assert!(
        !Path::new(&writes.dir().join("files"))
            .read_dir()
            .unwrap()
            .any(|_| true),
        "staging files left after upload"
    );

    // open(O_TRUNC) empties the writer's file, but nothing reaches the source before it is
    // closed: the source keeps the old content, never an empty version no writer closed.
    let file = mnt.path().join("old.txt");
    let held = blocking(move || {
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(file)
            .unwrap()
    })
    .await;
    assert!(writes.drain(Duration::from_secs(60)).await);
    let at_source = bucket(&s3, "writable", "ds").await;
    assert_eq!(
        at_source["old.txt"], b"hello, world",
        "an O_TRUNC open reached the source before its close"
    );
    blocking(move || {
        let mut held = held;
        held.write_all(b"rewritten").unwrap();
    })
    .await;
    assert!(writes.drain(Duration::from_secs(60)).await);
    assert_eq!(bucket(&s3, "writable", "ds").await["old.txt"], b"rewritten");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_dataset_refuses_every_write_with_erofs() {
    require_fuse();
    let s3 = S3Server::start();
    s3.create_bucket("readonly");
    s3.upload("readonly", &[("f".to_string(), b"data".to_vec())])
        .await;
    let cache_dir = tempdir();
    let mnt = tempdir();
    let cfg = dataset(
        "readonly",
        vec![s3.source("s3", "s3://readonly/", "/")],
        one_mib_blocks(),
    );
    let agent = agent(cache_dir.path(), 64 << 20, 1 << 30).await;
    let view = agent.add_dataset(cfg).await.unwrap();
    assert!(view.writes().is_none());
    let _handle = mount(view, mnt.path(), MountOptions::default()).unwrap();
    let root = mnt.path().to_path_buf();
    blocking(move || {
        let r = |p: &str| root.join(p);
        let erofs = libc::EROFS;
        assert_eq!(errno_of(std::fs::write(r("new"), b"x")), erofs);
        assert_eq!(
            errno_of(std::fs::OpenOptions::new().append(true).open(r("f"))),
            erofs
        );
        assert_eq!(
            errno_of(
                std::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(r("f"))
            ),
            erofs
        );
        assert_eq!(errno_of(std::fs::remove_file(r("f"))), erofs);
        assert_eq!(errno_of(std::fs::create_dir(r("d"))), erofs);
        assert_eq!(errno_of(std::fs::rename(r("f"), r("g"))), erofs);
        assert_eq!(
            nix::unistd::truncate(&r("f"), 0),
            Err(nix::errno::Errno::EROFS)
        );
        assert_eq!(std::fs::read(r("f")).unwrap(), b"data");
    })
    .await;
    let objects = bucket(&s3, "readonly", "").await;
    assert_eq!(objects.len(), 1);
}
