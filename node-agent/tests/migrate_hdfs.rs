//! Migration of 1,000 objects from a real HDFS (MiniDFSCluster) to a real S3 server
//! (moto) with `strata_engine::migrate::copy_tree`, the copy `strata-agent migrate` runs:
//! killed twice (the copy dropped mid-flight, as a SIGKILL leaves the stores) and run
//! again each time, every object ends at the target with the source's bytes, none is
//! copied again except those in flight at a kill, and the last run reaches 100%.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use strata_agent::config::SourceConfig;
use strata_engine::metrics::Metrics;
use strata_engine::migrate::{CopyOptions, CopyProgress, copy_tree};
use strata_engine::source::Source;
use strata_testkit::data::content;
use strata_testkit::hdfs::MiniDfs;
use strata_testkit::s3::S3Server;

const OBJECTS: usize = 1000;
const CONCURRENCY: usize = 16;

/// Sizes from a few bytes to 64 KiB, and three larger than the 8 MiB part (multipart).
fn size_of(i: usize) -> usize {
    match i {
        // An empty object: no byte range to read (the real node found a copy refusing it).
        7 => 0,
        100 | 500 | 900 => (8 << 20) + 1000 * i,
        _ => 1 + (i * 7919) % (64 << 10),
    }
}

fn key_of(i: usize) -> String {
    format!("day={:02}/part-{i:04}.parquet", i % 30)
}

/// Sum of `name`'s samples for the target source's requests of `op`.
fn target_requests(metrics: &Metrics, op: &str) -> f64 {
    metrics
        .encode()
        .lines()
        .filter(|l| {
            l.starts_with("strata_source_requests_total")
                && l.contains("source=\"target\"")
                && l.contains(&format!("op=\"{op}\""))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_killed_twice_copies_each_object_once_whole() {
    let hdfs = MiniDfs::start();
    let s3 = S3Server::start();
    s3.create_bucket("cloud");
    // Written 16 at a time: one by one, the namenode's create/complete round trips make
    // this the slowest part of the test.
    futures::stream::iter(0..OBJECTS)
        .for_each_concurrent(16, |i| {
            let hdfs = &hdfs;
            async move {
                let data = content(i as u64, size_of(i));
                hdfs.put(&format!("/warehouse/events/{}", key_of(i)), &data)
                    .await;
            }
        })
        .await;
    let written = std::time::Instant::now();
    let metrics = Arc::new(Metrics::new());
    let from = Arc::new(
        Source::new(
            &SourceConfig {
                name: "lake".into(),
                uri: format!("{}/warehouse/", hdfs.url()),
                ..Default::default()
            },
            "migration",
            metrics.clone(),
        )
        .unwrap(),
    );
    let to = Arc::new(
        Source::new(
            &s3.source("target", "s3://cloud/migrated/", "/"),
            "migration",
            metrics.clone(),
        )
        .unwrap(),
    );
    let options = CopyOptions {
        concurrency: CONCURRENCY,
    };

    // Two runs killed part-way (a third and two thirds of the objects done), then one to
    // the end.
    let mut skipped = Vec::new();
    for stop_at in [OBJECTS as u64 / 3, 2 * OBJECTS as u64 / 3] {
        let done = Arc::new(AtomicU64::new(0));
        let seen = done.clone();
        let (from, to, options) = (from.clone(), to.clone(), options.clone());
        let run = tokio::spawn(async move {
            copy_tree(&from, &to, "events", &options, |p| {
                seen.store(p.objects_done, Ordering::Relaxed);
            })
            .await
        });
        while done.load(Ordering::Relaxed) < stop_at {
            assert!(
                !run.is_finished(),
                "the run ended before its kill: {:?}",
                run.await
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        run.abort();
        let _ = run.await;
        skipped.push(done.load(Ordering::Relaxed));
    }
    let last: CopyProgress = copy_tree(&from, &to, "events", &options, |_| {})
        .await
        .expect("the resumed copy");
    eprintln!(
        "copied in {:.1}s over three runs; the last: {last:?}",
        written.elapsed().as_secs_f64()
    );
    assert_eq!(last.objects_total, OBJECTS as u64);
    assert_eq!(last.objects_done, OBJECTS as u64);
    assert_eq!(last.percent(), 100.0);
    // What the killed runs finished was not copied again.
    assert!(
        last.objects_skipped >= skipped[1],
        "the last run skipped {} objects, the runs before it finished {skipped:?}",
        last.objects_skipped
    );

    // Uploads over all runs: each object once, plus at most what was in flight at each
    // kill (cut off before completing, so never listed whole).
    let uploads = target_requests(&metrics, "put") + target_requests(&metrics, "multipart");
    assert!(
        uploads >= OBJECTS as f64 && uploads <= (OBJECTS + 2 * CONCURRENCY) as f64,
        "{uploads} uploads for {OBJECTS} objects"
    );

    // Every object at the target, with the source's bytes, and nothing else.
    let store = s3.store("cloud");
    let mut listed: Vec<String> = Vec::new();
    let mut stream = store.list(Some(&object_store::path::Path::from("migrated")));
    while let Some(meta) = stream.next().await {
        listed.push(meta.unwrap().location.to_string());
    }
    listed.sort();
    let mut expected: Vec<String> = (0..OBJECTS)
        .map(|i| format!("migrated/events/{}", key_of(i)))
        .collect();
    expected.sort();
    assert_eq!(listed, expected);
    for i in 0..OBJECTS {
        let got = store
            .get(&object_store::path::Path::from(format!(
                "migrated/events/{}",
                key_of(i)
            )))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(
            Sha256::digest(&got),
            Sha256::digest(content(i as u64, size_of(i))),
            "{}",
            key_of(i)
        );
    }
}
