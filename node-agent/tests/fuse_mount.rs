//! Real FUSE mounts (run as root): every byte through the mount equals the source,
//! cached reads and restarts make no source requests, upstream changes show after the
//! metadata TTL, passthrough serves fully cached files, and the CLI mounts and unmounts.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use strata_agent::config::CacheSettings;
use strata_agent::fs::{MountOptions, mount};

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

fn walk(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                let rel = e
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
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

fn mb_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

fn timed_read(path: &Path) -> (Vec<u8>, Duration) {
    let t = Instant::now();
    let v = std::fs::read(path).unwrap();
    (v, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn passthrough_serves_cached_files_at_local_speed() {
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
    let (cold, cold_t) = tokio::task::spawn_blocking(move || timed_read(&f))
        .await
        .unwrap();
    assert!(cold == data);
    // Second open: fully cached, so passthrough.
    let f = file.clone();
    let (warm, warm_t) = tokio::task::spawn_blocking(move || timed_read(&f))
        .await
        .unwrap();
    assert!(warm == data);
    assert!(
        handle.passthrough_counts().0 >= 1,
        "{:?}",
        handle.passthrough_counts()
    );
    let stat = view.stat(&p("/big.bin")).await.unwrap();
    let local = view
        .cache()
        .data_file(stat.version.as_ref().unwrap())
        .unwrap();
    let (_, local_t) = tokio::task::spawn_blocking(move || timed_read(&local))
        .await
        .unwrap();
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
    eprintln!(
        "64 MiB: cold {:.0} MB/s, warm passthrough {:.0} MB/s, local file {:.0} MB/s",
        mb_per_s(data.len(), cold_t),
        mb_per_s(data.len(), warm_t),
        mb_per_s(data.len(), local_t)
    );
    handle.unmount().unwrap();
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

#[allow(dead_code)]
fn unused(_: PathBuf) {}
