//! Security of what a dataset can reach: a local source's symlinks that lead outside the
//! source directory are not followed (engine API, preload globs, and a real FUSE mount),
//! and one dataset's reads cannot evict another dataset's pinned blocks.

mod common;

use std::path::Path;

use common::*;
use strata_agent::config::CacheSettings;
use strata_agent::fuse::{MountOptions, mount};

const SECRET: &[u8] = b"node secret: outside the dataset";

/// A source directory with an ordinary file, a link inside the source (allowed), and links
/// to a file and a directory outside it, absolute and relative.
fn source_with_escaping_links(root: &Path) -> tempfile::TempDir {
    let outside = tempdir();
    std::fs::write(outside.path().join("secret.txt"), SECRET).unwrap();
    std::fs::create_dir(outside.path().join("dir")).unwrap();
    std::fs::write(outside.path().join("dir/deep.txt"), SECRET).unwrap();
    let src = root.join("src");
    write_tree(
        &src,
        &[
            ("data/ok.txt".into(), b"inside".to_vec()),
            ("data/other.txt".into(), b"also inside".to_vec()),
        ],
    );
    use std::os::unix::fs::symlink;
    symlink(outside.path().join("secret.txt"), src.join("abs-file")).unwrap();
    symlink(outside.path().join("dir"), src.join("abs-dir")).unwrap();
    symlink("/", src.join("node-root")).unwrap();
    // Relative: src/../<outside>; computed from the real layout so it escapes for real.
    let rel = pathdiff(&src.join("data"), &outside.path().join("secret.txt"));
    symlink(&rel, src.join("data/rel-file")).unwrap();
    symlink("../../", src.join("data/up-up")).unwrap();
    // Inside the source: still followed.
    symlink("data/ok.txt", src.join("inner-link")).unwrap();
    outside
}

/// A relative path from directory `from` to `to` (both absolute).
fn pathdiff(from: &Path, to: &Path) -> std::path::PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = std::path::PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c.as_os_str());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_source_symlinks_do_not_leave_the_source() {
    let root = tempdir();
    let _outside = source_with_escaping_links(root.path());
    let cache_dir = tempdir();
    let agent = agent(cache_dir.path(), 16 << 20, 64 << 20).await;
    let view = agent
        .add_dataset(dataset(
            "links",
            vec![local_source("l", &root.path().join("src"), "/")],
            CacheSettings::default(),
        ))
        .await
        .unwrap();

    // Listing shows the inside entries only.
    let names = |l: &strata_agent::dataset::DirListing| {
        l.entries().into_iter().map(|e| e.name).collect::<Vec<_>>()
    };
    let top = names(&view.list(&p("/")).await.unwrap());
    assert!(top.contains(&"data".to_string()), "{top:?}");
    assert!(top.contains(&"inner-link".to_string()), "{top:?}");
    for bad in ["abs-file", "abs-dir", "node-root"] {
        assert!(!top.contains(&bad.to_string()), "{bad} listed: {top:?}");
    }
    let data = names(&view.list(&p("/data")).await.unwrap());
    assert_eq!(data, vec!["ok.txt".to_string(), "other.txt".to_string()]);

    // Asked for by path, they do not exist.
    for bad in [
        "/abs-file",
        "/abs-dir/deep.txt",
        "/node-root/etc/passwd",
        "/data/rel-file",
        "/data/up-up/etc/hostname",
    ] {
        let err = view.read(&p(bad), 0, 1 << 20).await;
        assert!(
            err.is_err(),
            "{bad} was readable: {:?}",
            err.map(|b| b.len())
        );
        assert!(view.stat(&p(bad)).await.is_err(), "{bad} has a stat");
    }
    // A link that stays inside still works.
    assert_eq!(
        &view.read(&p("/inner-link"), 0, 100).await.unwrap()[..],
        b"inside"
    );

    // A preload of everything fetches only the inside files and does not walk the node.
    let report = view.preload(&["/**".to_string()], |_| {}).await.unwrap();
    assert_eq!(report.files, 3, "{report:?}");
    assert_eq!(report.bytes, 6 + 11 + 6, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fuse_mount_does_not_follow_symlinks_out_of_a_local_source() {
    require_fuse();
    let root = tempdir();
    let _outside = source_with_escaping_links(root.path());
    let cache_dir = tempdir();
    let mnt = tempdir();
    let agent = agent(cache_dir.path(), 16 << 20, 64 << 20).await;
    let view = agent
        .add_dataset(dataset(
            "links-fuse",
            vec![local_source("l", &root.path().join("src"), "/")],
            CacheSettings::default(),
        ))
        .await
        .unwrap();
    let handle = mount(view, mnt.path(), MountOptions::default()).unwrap();
    let m = mnt.path().to_path_buf();
    let result = tokio::task::spawn_blocking(move || {
        let mut top: Vec<String> = std::fs::read_dir(&m)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        let mut problems = Vec::new();
        for bad in [
            "abs-file",
            "abs-dir/deep.txt",
            "node-root/etc/passwd",
            "data/rel-file",
            "data/up-up/etc/hostname",
        ] {
            match std::fs::read(m.join(bad)) {
                Ok(bytes) => problems.push(format!("{bad}: read {} bytes", bytes.len())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => problems.push(format!("{bad}: {e} (expected not found)")),
            }
        }
        // No symlink appears at all: the mount shows files and directories only.
        let inner = std::fs::read(m.join("inner-link")).unwrap();
        (top, problems, inner)
    })
    .await
    .unwrap();
    handle.unmount().unwrap();
    let (top, problems, inner) = result;
    assert_eq!(top, vec!["data", "inner-link"]);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(inner, b"inside");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_with_a_quota_cannot_evict_anothers_pinned_blocks() {
    let src = tempdir();
    let files: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| (format!("f{i:02}"), content(i, MIB)))
        .collect();
    write_tree(src.path(), &files);
    let cache_dir = tempdir();
    // One shared node cache of 1 MiB memory and 6 MiB disk.
    let agent = agent(cache_dir.path(), MIB as u64, 6 * MIB as u64).await;
    let pinned = agent
        .add_dataset(dataset(
            "tenant-a",
            vec![local_source("l", src.path(), "/")],
            CacheSettings {
                block_size: MIB as u64,
                pins: vec![strata_agent::config::PinRule::paths(["/f0[0-2]"])],
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let noisy = agent
        .add_dataset(dataset(
            "tenant-b",
            vec![local_source("l", src.path(), "/")],
            CacheSettings {
                block_size: MIB as u64,
                quota: Some(2 * MIB as u64),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    for (k, _) in &files[..3] {
        pinned.read(&p(k), 0, u64::MAX).await.unwrap();
    }
    assert_eq!(pinned.usage().pinned_bytes, 3 * MIB as u64);
    let before = pinned.request_counts();
    // Tenant B reads four times its quota, twice over.
    for _ in 0..2 {
        for (k, v) in &files {
            assert_eq!(&noisy.read(&p(k), 0, u64::MAX).await.unwrap()[..], &v[..]);
        }
    }
    assert!(
        noisy.usage().cached_bytes <= 2 * MIB as u64,
        "{:?}",
        noisy.usage()
    );
    // A's pinned files are still served from the cache: no source request at all.
    for (k, v) in &files[..3] {
        assert_eq!(&pinned.read(&p(k), 0, u64::MAX).await.unwrap()[..], &v[..]);
    }
    let after = pinned.request_counts();
    assert_eq!(
        after.gets, before.gets,
        "tenant A's pinned blocks were evicted"
    );
    assert_eq!(pinned.usage().cached_bytes, 3 * MIB as u64);
}
