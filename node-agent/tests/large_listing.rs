//! A large directory through the real FUSE mount over a real S3 server (moto, behind a
//! counting proxy): `ls | wc -l` counts every object; the directory is listed once, page
//! by page, and entries reach readdir before the last page is in; the agent's memory
//! grows by at most [`BYTES_PER_ENTRY`] per cached entry plus [`RSS_SLACK`] (sampled while
//! `ls` runs; docs/agent.md, "Metadata cache"); a missing name in the listed directory is
//! answered without a request. That a second stat of a missing path within the TTL makes
//! no request is asserted in `metadata_cache.rs`.
//!
//! The issue's 200,000 objects are the ignored test: moto takes each object in a few ms
//! and reads its whole bucket for every page of a listing; on the shared 2-core machine
//! 200,000 objects took 31 min to upload and 500 s to list (docs/BENCHMARKS.md, list-huge).
//! `make test` runs 5,000 (five pages).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use strata_agent::config::CacheSettings;
use strata_agent::fuse::{MountOptions, mount};
use strata_testkit::proxy::CountingProxy;

/// Keys per LIST page the agent asks S3 for.
const PAGE: usize = 1000;
/// The issue's bound on agent memory per cached directory entry.
const BYTES_PER_ENTRY: u64 = 200;
/// What else the agent may hold while it lists (a page in flight, connection and FUSE
/// buffers, allocator slack).
const RSS_SLACK: u64 = 16 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_thousand_objects_in_one_prefix() {
    large_listing(5_000, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "moto needs ~40 min for 200,000 objects; run by hand with --ignored --nocapture"]
async fn two_hundred_thousand_objects_in_one_prefix() {
    large_listing(200_000, false).await;
}

/// Hands the allocator's free memory back to the kernel, so that memory the upload freed
/// cannot be reused by the listing unseen.
#[allow(unsafe_code)]
fn return_free_memory() {
    // SAFETY: malloc_trim only returns free pages of glibc's heaps; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS in /proc/self/status")
        * 1024
}

/// `ls DIR | wc -l` while another thread samples this process's RSS: the count and the
/// highest RSS seen.
fn ls_count_sampling_rss(dir: &Path) -> (usize, u64) {
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(rss_bytes()));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"ls "$1" | wc -l"#)
        .arg("ls")
        .arg(dir)
        .output()
        .expect("ls | wc -l");
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert!(out.status.success(), "{out:?}");
    let count = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (count, peak.load(Ordering::Relaxed).max(rss_bytes()))
}

async fn large_listing(objects: usize, check_streaming: bool) {
    require_fuse();
    let s3 = S3Server::start();
    s3.create_bucket("large");
    let started = Instant::now();
    let files: Vec<(String, Vec<u8>)> = (0..objects)
        .map(|i| (format!("ds/big/obj-{i:07}"), Vec::new()))
        .collect();
    s3.upload("large", &files).await;
    drop(files);
    eprintln!("uploaded {objects} objects in {:?}", started.elapsed());

    let proxy = CountingProxy::start(&format!("127.0.0.1:{}", s3.port));
    let mut source = s3.source("s3", "s3://large/ds/", "/");
    source.endpoint = Some(proxy.endpoint());
    let cache_dir = tempdir();
    let mnt = tempdir();
    let agent = agent(cache_dir.path(), 16 << 20, 256 << 20).await;
    let view = agent
        .add_dataset(dataset(
            "large",
            vec![source],
            CacheSettings {
                metadata_ttl: Duration::from_secs(3600),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let handle = mount(view.clone(), mnt.path(), MountOptions::default()).unwrap();
    let big: PathBuf = mnt.path().join("big");
    let pages = objects.div_ceil(PAGE) as u64;

    // Cold: the upload's freed memory goes back first, so it cannot hide the listing's.
    return_free_memory();
    let baseline = rss_bytes();
    let before = proxy.requests();
    let started = Instant::now();
    let (count, peak) = {
        let big = big.clone();
        tokio::task::spawn_blocking(move || ls_count_sampling_rss(&big))
            .await
            .unwrap()
    };
    let cold = started.elapsed();
    let requests = proxy.requests() - before;
    let grown = peak.saturating_sub(baseline);
    eprintln!(
        "cold ls of {objects} entries: {cold:?}, {requests} requests ({pages} pages), RSS {} MiB -> peak {} MiB: {:.0} bytes per entry",
        baseline >> 20,
        peak >> 20,
        grown as f64 / objects as f64
    );
    assert_eq!(count, objects, "ls | wc -l");
    // The stat of the directory (a HEAD and a LIST of one key), then each page once: the
    // directory is never listed whole twice.
    assert!(
        requests <= pages + 2,
        "{requests} requests for {pages} pages"
    );
    let bound = BYTES_PER_ENTRY * objects as u64 + RSS_SLACK;
    assert!(
        grown <= bound,
        "RSS grew {grown} bytes while listing {objects} entries (bound {bound})"
    );
    let listing = view.list(&p("/big")).await.unwrap();
    let held = listing.heap_bytes() as f64 / objects as f64;
    eprintln!("the cached listing holds {held:.1} bytes per entry on the heap");
    assert!(held <= BYTES_PER_ENTRY as f64, "{held} bytes per entry");

    // Warm: the same count from the metadata cache, and a missing name (twice) answered by
    // the listing: no request at all.
    let before = proxy.requests();
    let started = Instant::now();
    let (count, _) = {
        let big = big.clone();
        tokio::task::spawn_blocking(move || ls_count_sampling_rss(&big))
            .await
            .unwrap()
    };
    eprintln!("warm ls: {:?}", started.elapsed());
    assert_eq!(count, objects);
    for _ in 0..2 {
        let err = std::fs::metadata(big.join("obj-missing")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
    // The inode numbers plain readdir shows (the last entries: the first come with their
    // attributes) are the ones a stat of the same names gives.
    {
        use std::os::unix::fs::{DirEntryExt, MetadataExt};
        let entries: Vec<_> = std::fs::read_dir(&big)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        for e in &entries[entries.len() - 3..] {
            assert_eq!(e.ino(), std::fs::metadata(e.path()).unwrap().ino(), "{e:?}");
        }
    }
    assert_eq!(
        proxy.requests(),
        before,
        "a warm listing or a missing name in it reached the server"
    );

    if check_streaming {
        // Listed again from the source: the first entries reach readdir while later
        // pages are still on their way.
        view.invalidate(&p("/big/obj-0000000"));
        let before = proxy.requests();
        let proxy = Arc::new(proxy);
        let (first, count) = {
            let (big, proxy) = (big.clone(), proxy.clone());
            tokio::task::spawn_blocking(move || {
                let mut entries = std::fs::read_dir(&big).unwrap();
                entries.next().unwrap().unwrap();
                let at_first = proxy.requests() - before;
                (at_first, 1 + entries.count())
            })
            .await
            .unwrap()
        };
        assert_eq!(count, objects);
        assert!(
            first < pages,
            "the first entry came after {first} of {pages} pages"
        );
        eprintln!("streamed: the first entry came after {first} of {pages} pages");
    }
    handle.unmount().unwrap();
}
