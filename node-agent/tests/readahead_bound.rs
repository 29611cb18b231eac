//! The readahead budget (`--readahead-total`) holds under load: 16 readers of large files
//! through a real FUSE mount over a real S3 server (moto) never have more than the budget
//! of blocks fetched ahead or kept after reading, sampled from the `strata_readahead_bytes`
//! gauge while they read, and every byte they read equals the source (run as root).

mod common;

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use strata_agent::agent::{Agent, AgentConfig};
use strata_agent::config::CacheSettings;
use strata_agent::fuse::{MountOptions, mount};

const READERS: u64 = 16;
const FILE_BYTES: usize = 32 * MIB;
/// The budget: less than what 16 readers would hold without it (each one's window of at
/// least a block plus the two blocks it keeps after reading, 1 MiB blocks), so it is the
/// budget that keeps them under, not the per-reader share.
const TOTAL: u64 = 32 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_readers_stay_within_the_readahead_budget() {
    require_fuse();
    let s3 = S3Server::start();
    s3.create_bucket("big");
    let files: Vec<(String, Vec<u8>)> = (0..READERS)
        .map(|i| (format!("ds/f{i:02}.bin"), content(500 + i, FILE_BYTES)))
        .collect();
    s3.upload("big", &files).await;
    let cache_dir = tempdir();
    let mnt = tempdir();
    let mut config = AgentConfig::new(cache_dir.path(), 64 << 20, 1 << 30);
    config.readahead_per_file_bytes = 16 << 20;
    config.readahead_total_bytes = TOTAL;
    let agent = Agent::new(config).await.unwrap();
    let view = agent
        .add_dataset(dataset(
            "big",
            vec![s3.source("s3", "s3://big/ds/", "/")],
            CacheSettings {
                metadata_ttl: Duration::from_secs(300),
                ..one_mib_blocks()
            },
        ))
        .await
        .unwrap();
    let handle = mount(view.clone(), mnt.path(), MountOptions::default()).unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (metrics, done) = (agent.metrics().clone(), done.clone());
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !done.load(Ordering::Relaxed) {
                samples.push(metrics.readahead_bytes());
                std::thread::sleep(Duration::from_millis(1));
            }
            samples
        })
    };
    let started = Instant::now();
    let readers: Vec<_> = files
        .iter()
        .map(|(key, expected)| {
            let path = mnt.path().join(key.trim_start_matches("ds/"));
            let expected = expected.clone();
            std::thread::spawn(move || {
                let mut f = std::fs::File::open(&path).unwrap();
                let mut got = Vec::with_capacity(expected.len());
                let mut buf = vec![0u8; 256 << 10];
                loop {
                    let n = f.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                assert!(
                    got == expected,
                    "{}: content differs ({} of {} bytes read)",
                    path.display(),
                    got.len(),
                    expected.len()
                );
            })
        })
        .collect();
    let read = tokio::task::spawn_blocking(move || {
        readers
            .into_iter()
            .map(|r| r.join().is_ok())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let samples = sampler.join().unwrap();
    assert!(read.iter().all(|ok| *ok), "a reader failed: {read:?}");

    let peak = samples.iter().copied().max().unwrap_or(0);
    let busy = samples.iter().filter(|s| **s > 0).count();
    eprintln!(
        "{READERS} readers x {} MiB in {elapsed:?}: {} samples, {busy} with readahead held, \
         peak {:.1} MiB of a {} MiB budget",
        FILE_BYTES / MIB,
        samples.len(),
        peak as f64 / MIB as f64,
        TOTAL >> 20
    );
    assert!(samples.len() > 100, "too few samples: {}", samples.len());
    assert!(
        peak <= TOTAL,
        "readahead held {peak} bytes, over its budget of {TOTAL}"
    );
    // The budget was used, not idle: readahead ran during the reads.
    assert!(peak >= TOTAL / 4, "readahead peaked at only {peak} bytes");
    // Held to the budget, readers fetch no block twice.
    let requests = view.request_counts();
    eprintln!("source requests: {requests:?}");
    assert_eq!(requests.bytes, READERS * FILE_BYTES as u64);

    // Every file closed: the budget comes back whole once the last fetches have landed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.metrics().readahead_bytes() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} bytes of readahead still held after every file was closed",
            agent.metrics().readahead_bytes()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.unmount().unwrap();
}
