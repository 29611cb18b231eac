//! Real FUSE mounts (run as root): every byte through the mount equals the source,
//! cached reads and restarts make no source requests, upstream changes show after the
//! metadata TTL, passthrough serves fully cached files, and the CLI mounts and unmounts.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use strata_agent::config::CacheSettings;
use strata_agent::fuse::{MountOptions, mount};

const BLOCK: usize = 4 * MIB;

/// 1,000+ files: boundary sizes around the 4 MiB block, multi-block, empty, 1 byte,
/// nested directories and awkward names.
fn generated_files() -> Vec<(String, Vec<u8>)> {
    let mut files = vec![
        ("edge/empty".to_string(), vec![]),
        ("edge/one-byte".to_string(), content(1, 1)),
        ("edge/block-minus-1".to_string(), content(2, BLOCK - 1)),
        ("edge/block".to_string(), content(3, BLOCK)),
        ("edge/block-plus-1".to_string(), content(4, BLOCK + 1)),
        (
            "edge/multi-block".to_string(),
            content(5, 2 * BLOCK + 12345),
        ),
    ];
    let awkward = [
        "with space.txt",
        "ünïcödé-名前.bin",
        "hash#mark",
        "percent%sign",
        "amp&equals=",
        "quote'single",
        "paren (1).txt",
        "comma,semi;colon:",
        "at@bang!tilde~",
        "..dots..",
        ".hidden",
        "-leading-dash",
        "emoji-🚀",
    ];
    for (i, name) in awkward.iter().enumerate() {
        files.push((
            format!("awkward dir/{name}"),
            content(100 + i as u64, 10 + i * 7),
        ));
    }
    for i in 0..1000u64 {
        let size = ((i * 7919) % 20_000) as usize;
        files.push((
            format!("nested/d{}/e{}/file-{i:04}.dat", i % 10, i % 7),
            content(1000 + i, size),
        ));
    }
    files
}

fn read_all_by_path(root: &Path, files: &[(String, Vec<u8>)]) {
    for (k, v) in files {
        let got = std::fs::read(root.join(k)).unwrap_or_else(|e| panic!("{k}: {e}"));
        assert!(
            got == *v,
            "{k}: content differs ({} vs {} bytes)",
            got.len(),
            v.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_files_from_s3_through_fuse() {
    require_fuse();
    let s3 = S3Server::start();
    s3.create_bucket("fuse-data");
    let files = generated_files();
    assert!(files.len() >= 1000);
    s3.upload(
        "fuse-data",
        &files
            .iter()
            .map(|(k, v)| (format!("ds/{k}"), v.clone()))
            .collect::<Vec<_>>(),
    )
    .await;
    let cache_dir = tempdir();
    let mnt = tempdir();
    let cfg = dataset(
        "fuse",
        vec![s3.source("s3", "s3://fuse-data/ds/", "/")],
        CacheSettings {
            metadata_ttl: Duration::from_secs(300),
            ..Default::default()
        },
    );
    let expected: BTreeMap<String, Vec<u8>> = files.iter().cloned().collect();
    {
        let agent = agent(cache_dir.path(), 64 << 20, 1 << 30).await;
        let view = agent.add_dataset(cfg.clone()).await.unwrap();
        let handle = mount(view.clone(), mnt.path(), MountOptions::default()).unwrap();
        let root = mnt.path().to_path_buf();
        let started = Instant::now();
        let got = tokio::task::spawn_blocking(move || walk(&root))
            .await
            .unwrap();
        eprintln!("cold walk of {} files: {:?}", got.len(), started.elapsed());
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>()
        );
        for (k, v) in &expected {
            assert!(got[k] == *v, "{k}: content differs");
        }
        let cold = view.request_counts();
        // Second full read: nothing reaches the source (the kernel page cache or the
        // agent's tiers serve it; fully cached files open in passthrough mode).
        let root = mnt.path().to_path_buf();
        let f = files.clone();
        tokio::task::spawn_blocking(move || read_all_by_path(&root, &f))
            .await
            .unwrap();
        assert_eq!(
            view.request_counts(),
            cold,
            "second read reached the source"
        );
        let (pt_ok, pt_refused) = handle.passthrough_counts();
        eprintln!("passthrough opens: {pt_ok} ok, {pt_refused} refused");
        assert!(pt_ok > 0, "no file was opened in passthrough mode");
        assert_eq!(pt_refused, 0);
        // Directories have no time in an object store: they show the mount's, not 1970.
        let dir_mtime = std::fs::metadata(mnt.path().join("edge"))
            .unwrap()
            .modified()
            .unwrap();
        assert!(
            dir_mtime > std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(86_400 * 365 * 50),
            "directory mtime {dir_mtime:?}"
        );
        // Read-only: writes are refused.
        let err = std::fs::write(mnt.path().join("edge/one-byte"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        handle.unmount().unwrap();
    }
    // Restart on the same cache dir: every file by path, no request at all.
    let agent = agent(cache_dir.path(), 64 << 20, 1 << 30).await;
    let view = agent.add_dataset(cfg).await.unwrap();
    let handle = mount(view.clone(), mnt.path(), MountOptions::default()).unwrap();
    let root = mnt.path().to_path_buf();
    let f: Vec<_> = files
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .cloned()
        .collect();
    tokio::task::spawn_blocking(move || read_all_by_path(&root, &f))
        .await
        .unwrap();
    assert_eq!(
        view.request_counts().total(),
        0,
        "{:?}",
        view.request_counts()
    );
    handle.unmount().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_change_shows_after_metadata_ttl() {
    require_fuse();
    let src = tempdir();
    write_tree(src.path(), &[("dir/f.txt".into(), b"old content".to_vec())]);
    let cache_dir = tempdir();
    let mnt = tempdir();
    let agent = agent(cache_dir.path(), 16 << 20, 1 << 30).await;
    let view = agent
        .add_dataset(dataset(
            "change",
            vec![local_source("l", src.path(), "/")],
            CacheSettings {
                metadata_ttl: Duration::from_secs(1),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let handle = mount(view, mnt.path(), MountOptions::default()).unwrap();
    let file = mnt.path().join("dir/f.txt");
    let f2 = file.clone();
    let first = tokio::task::spawn_blocking(move || std::fs::read(&f2).unwrap())
        .await
        .unwrap();
    assert_eq!(first, b"old content");
    std::fs::write(src.path().join("dir/f.txt"), b"new, longer content").unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let f2 = file.clone();
    let second = tokio::task::spawn_blocking(move || std::fs::read(&f2).unwrap())
        .await
        .unwrap();
    assert_eq!(second, b"new, longer content");
    // A new file appears in listings after the TTL.
    std::fs::write(src.path().join("dir/g.txt"), b"g").unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let dir = mnt.path().join("dir");
    let names = tokio::task::spawn_blocking(move || {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    })
    .await
    .unwrap();
    assert_eq!(names, ["f.txt", "g.txt"]);
    handle.unmount().unwrap();
}

/// The kernel keeps an answer only as long as it is valid in the agent: a stat answered
/// from a listing the agent fetched most of a TTL ago must not stay in the kernel for a
/// whole TTL more. Before, the kernel got the whole TTL with every answer, and a change
/// upstream showed up to twice the TTL late.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_answer_aged_in_the_agent_is_not_kept_a_whole_ttl_by_the_kernel() {
    require_fuse();
    const TTL: Duration = Duration::from_secs(2);
    let src = tempdir();
    write_tree(src.path(), &[("dir/f.txt".into(), b"old".to_vec())]);
    let cache_dir = tempdir();
    let mnt = tempdir();
    let agent = agent(cache_dir.path(), 16 << 20, 1 << 30).await;
    let view = agent
        .add_dataset(dataset(
            "aged",
            vec![local_source("l", src.path(), "/")],
            CacheSettings {
                metadata_ttl: TTL,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let handle = mount(view.clone(), mnt.path(), MountOptions::default()).unwrap();
    // The agent lists the directory (another reader of the dataset, say); the object then
    // changes upstream.
    let listed = Instant::now();
    view.list(&p("/dir")).await.unwrap();
    std::fs::write(src.path().join("dir/f.txt"), b"new and longer").unwrap();
    let file = mnt.path().join("dir/f.txt");
    let size = |f: PathBuf| async move {
        tokio::task::spawn_blocking(move || std::fs::metadata(f).unwrap().len())
            .await
            .unwrap()
    };
    // Late in the listing's life, the kernel looks the file up: the answer comes from the
    // listing, still valid.
    tokio::time::sleep(TTL * 3 / 4).await;
    let early = size(file.clone()).await;
    if listed.elapsed() < TTL {
        assert_eq!(early, 3, "a valid cached answer was not used");
    }
    // Once the listing's TTL has passed, the kernel must ask again and see the change.
    tokio::time::sleep_until((listed + TTL + Duration::from_millis(300)).into()).await;
    assert_eq!(
        size(file.clone()).await,
        14,
        "the kernel kept an answer past its TTL in the agent"
    );
    handle.unmount().unwrap();
}

/// A directory read over many calls while its listing is refreshed in between (an object
/// added upstream and the metadata TTL passed) shows each entry exactly once: an open
/// directory keeps the listing its first read took. Before, the later calls continued by
/// offset in the new listing, and the entry at the seam showed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_directory_read_across_a_listing_refresh_shows_each_entry_once() {
    require_fuse();
    let src = tempdir();
    let files: Vec<(String, Vec<u8>)> =
        (0..2000).map(|i| (format!("d/f{i:05}"), vec![1])).collect();
    write_tree(src.path(), &files);
    let cache_dir = tempdir();
    let mnt = tempdir();
    let agent = agent(cache_dir.path(), 0, 1 << 30).await;
    let view = agent
        .add_dataset(dataset(
            "dirs",
            vec![local_source("l", src.path(), "/")],
            CacheSettings {
                metadata_ttl: Duration::from_millis(500),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let handle = mount(view, mnt.path(), MountOptions::default()).unwrap();
    let dir = mnt.path().join("d");
    let upstream = src.path().join("d/a-new");
    let names = tokio::task::spawn_blocking(move || {
        let name = |e: std::io::Result<std::fs::DirEntry>| {
            e.unwrap().file_name().to_string_lossy().into_owned()
        };
        let mut open = std::fs::read_dir(&dir).unwrap();
        let mut names: Vec<String> = open.by_ref().take(10).map(name).collect();
        // Sorts before every entry already read; another listing after the TTL sees it.
        std::fs::write(&upstream, b"x").unwrap();
        std::thread::sleep(Duration::from_millis(700));
        let fresh: Vec<String> = std::fs::read_dir(&dir).unwrap().map(name).collect();
        assert!(
            fresh.iter().any(|n| n == "a-new"),
            "the listing was not refreshed"
        );
        names.extend(open.map(name));
        names
    })
    .await
    .unwrap();
    let unique: std::collections::BTreeSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "an entry showed twice");
    assert_eq!(names.len(), files.len(), "entries missing");
    handle.unmount().unwrap();
}

/// The kernel's FORGETs empty the inode table: after a walk over 2,000 files, dropping
/// the kernel's dentries and inodes brings the mount's inode count (statfs `f_files`)
/// back down, and every file is still found and read right afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forgotten_inodes_leave_the_table() {
    require_fuse();
    let src = tempdir();
    let files: Vec<(String, Vec<u8>)> = (0..2000)
        .map(|i| (format!("d{}/f{i}.txt", i % 10), format!("{i}").into_bytes()))
        .collect();
    write_tree(src.path(), &files);
    let cache_dir = tempdir();
    let mnt = tempdir();
    let agent = agent(cache_dir.path(), 16 << 20, 1 << 30).await;
    let view = agent
        .add_dataset(dataset(
            "forget",
            vec![local_source("l", src.path(), "/")],
            CacheSettings::default(),
        ))
        .await
        .unwrap();
    let handle = mount(view, mnt.path(), MountOptions::default()).unwrap();
    let inodes = |p: &Path| nix::sys::statvfs::statvfs(p).unwrap().files();
    let root = mnt.path().to_path_buf();
    let walked = tokio::task::spawn_blocking(move || walk(&root).len())
        .await
        .unwrap();
    assert_eq!(walked, 2000);
    let after_walk = inodes(mnt.path());
    assert!(after_walk >= 2000, "{after_walk} inodes after the walk");
    // Drop dentries and inodes: the kernel sends FORGET for every lookup it held.
    std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while inodes(mnt.path()) > 100 {
        assert!(
            Instant::now() < deadline,
            "{} inodes still held after the kernel dropped its caches",
            inodes(mnt.path())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (name, want) in files.iter().step_by(97) {
        assert_eq!(
            &std::fs::read(mnt.path().join(name)).unwrap(),
            want,
            "{name}"
        );
    }
    handle.unmount().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn passthrough_serves_cached_files_without_reaching_the_agent() {
    require_fuse();
    let src = tempdir();
    let data = content(42, 64 * MIB);
    write_tree(src.path(), &[("big.bin".into(), data.clone())]);
    let cache_dir = tempdir();
    let mnt = tempdir();
    let agent = agent(cache_dir.path(), 0, 1 << 30).await;
    let view = agent
        .add_dataset(dataset(
            "pt",
            vec![local_source("l", src.path(), "/")],
            CacheSettings::default(),
        ))
        .await
        .unwrap();
    let handle = mount(view.clone(), mnt.path(), MountOptions::default()).unwrap();
    let file = mnt.path().join("big.bin");
    let f = file.clone();
    let cold = tokio::task::spawn_blocking(move || std::fs::read(&f).unwrap())
        .await
        .unwrap();
    assert!(cold == data);
    assert!(
        handle.reads_served() > 0,
        "the cold read went through the agent"
    );
    // `df` on the mount shows the cache: its size, and the cached bytes as used.
    let vfs = nix::sys::statvfs::statvfs(mnt.path()).unwrap();
    let used = (vfs.blocks() - vfs.blocks_free()) * vfs.fragment_size();
    assert_eq!(vfs.blocks() * vfs.fragment_size(), 1 << 30);
    assert_eq!(used, 64 * MIB as u64, "df's used bytes");
    // Second open: fully cached, so passthrough: the kernel reads the cache file itself and
    // not one read reaches the agent. The page cache is dropped first, so the bytes come from
    // the backing file, not from pages the cold read left.
    let reads_before = handle.reads_served();
    drop_page_cache();
    let f = file.clone();
    let warm = tokio::task::spawn_blocking(move || std::fs::read(&f).unwrap())
        .await
        .unwrap();
    assert!(warm == data);
    assert_eq!(
        handle.reads_served(),
        reads_before,
        "a passthrough file's reads reached the agent"
    );
    assert!(
        handle.passthrough_counts().0 >= 1,
        "{:?}",
        handle.passthrough_counts()
    );
    // Several opens at once share one backing file.
    let f = file.clone();
    let concurrent = tokio::task::spawn_blocking(move || {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let f = f.clone();
                std::thread::spawn(move || std::fs::read(f).unwrap())
            })
            .collect();
        handles
            .into_iter()
            .all(|h| h.join().unwrap().len() == 64 * MIB)
    })
    .await
    .unwrap();
    assert!(concurrent);
    assert_eq!(handle.reads_served(), reads_before, "concurrent opens");
    handle.unmount().unwrap();
}

/// A mounted local directory holding `f.bin`, to be changed upstream by a test.
struct ChangingFile {
    handle: strata_agent::fuse::MountHandle,
    /// `f.bin` in the mount.
    file: PathBuf,
    /// `f.bin` in the source directory.
    upstream: PathBuf,
    _agent: std::sync::Arc<strata_agent::agent::Agent>,
    _dirs: [tempfile::TempDir; 3],
}

/// `f.bin` = `data` in a local directory, mounted with 1 MiB blocks and a one-second
/// metadata TTL.
async fn mount_changing_file(name: &str, data: &[u8], options: MountOptions) -> ChangingFile {
    let src = tempdir();
    write_tree(src.path(), &[("f.bin".into(), data.to_vec())]);
    let cache_dir = tempdir();
    let mnt = tempdir();
    let agent = agent(cache_dir.path(), 0, 1 << 30).await;
    let view = agent
        .add_dataset(dataset(
            name,
            vec![local_source("l", src.path(), "/")],
            CacheSettings {
                metadata_ttl: Duration::from_secs(1),
                ..one_mib_blocks()
            },
        ))
        .await
        .unwrap();
    ChangingFile {
        handle: mount(view, mnt.path(), options).unwrap(),
        file: mnt.path().join("f.bin"),
        upstream: src.path().join("f.bin"),
        _agent: agent,
        _dirs: [src, cache_dir, mnt],
    }
}

/// A file open in passthrough mode on its old version while the object changes upstream:
/// once the metadata TTL has passed, a new open gets the new version (it opens, and
/// reads the new bytes), and the handle still open reads the old version whole. The
/// kernel keeps one backing file per inode and refuses any other kind of open of it, so
/// before, the new open failed with EIO until the old handle was closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_version_opens_while_the_old_one_is_open_in_passthrough() {
    require_fuse();
    let old = content(60, 3 * MIB);
    let new = content(61, 3 * MIB);
    let mounted = mount_changing_file("versions", &old, MountOptions::default()).await;
    let (file, upstream) = (mounted.file.clone(), mounted.upstream.clone());
    let (old_read, new_read, old_again) = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        assert!(std::fs::read(&file).unwrap() == old, "cold read");
        // Fully cached now: this open is a passthrough one, held across the change.
        let mut held = std::fs::File::open(&file).unwrap();
        let mut first = vec![0u8; MIB];
        held.read_exact(&mut first).unwrap();
        std::fs::write(&upstream, &new).unwrap();
        std::thread::sleep(Duration::from_millis(1300));
        let new_read = std::fs::read(&file).expect("opening the new version");
        let mut rest = Vec::new();
        held.read_to_end(&mut rest).unwrap();
        first.extend(rest);
        (first, new_read, std::fs::read(&file).unwrap())
    })
    .await
    .unwrap();
    assert!(
        mounted.handle.passthrough_counts().0 >= 1,
        "{:?}",
        mounted.handle.passthrough_counts()
    );
    assert!(
        old_read == content(60, 3 * MIB),
        "the open handle's bytes changed"
    );
    assert!(
        new_read == content(61, 3 * MIB),
        "the new open read old bytes"
    );
    assert!(old_again == content(61, 3 * MIB));
    mounted.handle.unmount().unwrap();
}

/// The same without passthrough: a handle open on the old version keeps reading it while
/// new opens read the new version, and the two never share the kernel's page cache.
/// Before, both versions were cached under one inode, so the old handle's reads filled
/// pages that a later open of the new version was told to keep, and it read old bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn versions_open_at_once_do_not_share_the_page_cache() {
    require_fuse();
    let options = MountOptions {
        passthrough: false,
        ..Default::default()
    };
    let mounted = mount_changing_file("pages", &content(62, 3 * MIB), options).await;
    let (file, upstream) = (mounted.file.clone(), mounted.upstream.clone());
    let (old_read, later_read) = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        // Cached whole, then opened and read in part on the old version.
        assert!(std::fs::read(&file).unwrap() == content(62, 3 * MIB));
        let mut old = std::fs::File::open(&file).unwrap();
        let mut old_read = vec![0u8; MIB];
        old.read_exact(&mut old_read).unwrap();
        std::fs::write(&upstream, content(63, 3 * MIB)).unwrap();
        std::thread::sleep(Duration::from_millis(1300));
        let mut new = std::fs::File::open(&file).unwrap();
        let mut first = vec![0u8; MIB];
        new.read_exact(&mut first).unwrap();
        assert!(
            first[..] == content(63, MIB)[..],
            "the new open read old bytes"
        );
        // The old handle reads on (filling the page cache of its inode)...
        old.read_to_end(&mut old_read).unwrap();
        // ...and a later open of the new version reads only new bytes.
        (old_read, std::fs::read(&file).unwrap())
    })
    .await
    .unwrap();
    assert!(
        old_read == content(62, 3 * MIB),
        "the old handle's bytes changed"
    );
    assert!(
        later_read == content(63, 3 * MIB),
        "a later open read old bytes"
    );
    mounted.handle.unmount().unwrap();
}

fn is_mounted(p: &Path) -> bool {
    let canonical = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(canonical.to_str().unwrap()))
}

#[test]
fn cli_mounts_in_the_foreground_and_unmounts_on_sigterm() {
    require_fuse();
    let bin = env!("CARGO_BIN_EXE_strata-agent");
    let src = tempdir();
    let files = vec![
        ("a.txt".to_string(), b"hello".to_vec()),
        ("sub/b.bin".to_string(), content(3, 5 * MIB)),
    ];
    write_tree(src.path(), &files);
    let cache_dir = tempdir();
    let mnt = tempdir();
    // Missing mount point: clear error, non-zero exit.
    let out = std::process::Command::new(bin)
        .args([
            "mount",
            src.path().to_str().unwrap(),
            "/nonexistent/strata-mnt",
            "--cache-dir",
        ])
        .arg(cache_dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/strata-mnt") && stderr.contains("does not exist"),
        "{stderr}"
    );

    let mut child = std::process::Command::new(bin)
        .args(["mount", src.path().to_str().unwrap()])
        .arg(mnt.path())
        .args(["--cache-dir"])
        .arg(cache_dir.path())
        .args([
            "--memory",
            "64Mi",
            "--disk",
            "1Gi",
            "--block-size",
            "1Mi",
            "--metadata-ttl",
            "30s",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_mounted(mnt.path()) {
        assert!(Instant::now() < deadline, "not mounted in time");
        assert!(child.try_wait().unwrap().is_none(), "agent exited early");
        std::thread::sleep(Duration::from_millis(50));
    }
    read_all_by_path(mnt.path(), &files);
    // Busy mount point: a second agent refuses it.
    let out = std::process::Command::new(bin)
        .args(["mount", src.path().to_str().unwrap()])
        .arg(mnt.path())
        .arg("--cache-dir")
        .arg(cache_dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("busy"), "{stderr}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!is_mounted(mnt.path()), "still mounted after SIGTERM");
}

/// Starts `strata-agent mount SRC MNT` and waits until it is mounted.
fn spawn_cli_mount(src: &Path, mnt: &Path, cache_dir: &Path) -> std::process::Child {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_strata-agent"))
        .args(["mount", src.to_str().unwrap()])
        .arg(mnt)
        .arg("--cache-dir")
        .arg(cache_dir)
        .args(["--memory", "64Mi", "--disk", "1Gi"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_mounted(mnt) {
        assert!(Instant::now() < deadline, "not mounted in time");
        assert!(child.try_wait().unwrap().is_none(), "agent exited early");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Ctrl-C while a file under the mount point is open: the agent still exits cleanly and
/// leaves no dead mount behind ("Transport endpoint is not connected"); the directory
/// can be listed and mounted again at once.
#[test]
fn cli_unmounts_a_busy_mount_point_on_sigint() {
    require_fuse();
    let src = tempdir();
    let files = vec![("a.txt".to_string(), b"hello".to_vec())];
    write_tree(src.path(), &files);
    let cache_dir = tempdir();
    let mnt = tempdir();
    let mut child = spawn_cli_mount(src.path(), mnt.path(), cache_dir.path());
    let held = std::fs::File::open(mnt.path().join("a.txt")).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "agent did not exit after SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(!is_mounted(mnt.path()), "still mounted: {stderr}");
    std::fs::read_dir(mnt.path()).expect("the mount point is usable again");
    drop(held);

    let mut again = spawn_cli_mount(src.path(), mnt.path(), cache_dir.path());
    read_all_by_path(mnt.path(), &files);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(again.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(again.wait().unwrap().success());
    assert!(!is_mounted(mnt.path()));
}

#[allow(dead_code)]
fn unused(_: PathBuf) {}
