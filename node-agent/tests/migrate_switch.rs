//! A Migration as its Job runs it (issue 25), with real parts: a real HDFS (MiniDFSCluster)
//! as the dataset's source, a real S3 server (moto) as the target, a real `strata-agent
//! serve` (in process) and its FUSE volume, and the `strata-agent migrate --migration`
//! command the operator's Job runs, as a process. The command is killed twice and started
//! again; a reader goes through every file of the mount the whole time. Then the dataset's
//! source is switched to the target under the live mount (the config the operator hands
//! the agents after the copy), and HDFS is stopped. The reader never sees an error nor
//! other bytes than the files'; every object is at the target whole, copied once.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use strata_agent::config::SourceConfig;
use strata_testkit::agent::{TestAgent, raw_http};
use strata_testkit::data::content;
use strata_testkit::fuse::require_fuse;
use strata_testkit::hdfs::MiniDfs;
use strata_testkit::s3::S3Server;

const OBJECTS: usize = 300;
const CONCURRENCY: usize = 4;

/// Small files, an empty one, and a few over the 8 MiB part (multipart uploads).
fn size_of(i: usize) -> usize {
    match i {
        7 => 0,
        50 | 250 => (8 << 20) + 4096 * i,
        _ => 1 + (i * 7919) % (96 << 10),
    }
}

fn key_of(i: usize) -> String {
    format!("day={:02}/part-{i:04}.parquet", i % 10)
}

fn dataset(source: &SourceConfig, migrations: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "sources": [source],
        "cache": {"blockSize": 1048576, "metadataTtl": "10s"},
        "migrations": migrations,
    })
}

/// `strata-agent migrate --migration to-cloud`, as the Job runs it, its output to `log`.
fn start_job(agent: &TestAgent, log: &std::path::Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_strata-agent"))
        .args([
            "migrate",
            "--agent",
            &format!("unix://{}", agent.socket.display()),
            "--dataset",
            "ml/lake",
            "--migration",
            "to-cloud",
            "--job",
            "migrate-lake-1",
        ])
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start strata-agent migrate")
}

async fn objects_at_target(s3: &S3Server) -> usize {
    let store = s3.store("cloud");
    let mut stream = store.list(Some(&object_store::path::Path::from("lake")));
    let mut n = 0;
    while let Some(meta) = stream.next().await {
        meta.unwrap();
        n += 1;
    }
    n
}

/// The agent's count of uploads to the target (PUTs and multipart uploads).
async fn target_uploads(agent: &TestAgent) -> f64 {
    let (_, _, body) = raw_http(
        agent.metrics,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| {
            l.starts_with("strata_source_requests_total")
                && l.contains("source=\"cloud\"")
                && (l.contains("op=\"put\"") || l.contains("op=\"multipart\""))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Reads every file through the mount, over and over, until `stop`: errors and wrong
/// bytes are collected, passes counted.
struct Reader {
    stop: Arc<AtomicBool>,
    passes: Arc<AtomicU64>,
    problems: Arc<Mutex<Vec<String>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Reader {
    fn start(mount: PathBuf) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let passes = Arc::new(AtomicU64::new(0));
        let problems = Arc::new(Mutex::new(Vec::new()));
        let digests: Vec<_> = (0..OBJECTS)
            .map(|i| Sha256::digest(content(i as u64, size_of(i))))
            .collect();
        let (s, p, e) = (stop.clone(), passes.clone(), problems.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for (i, digest) in digests.iter().enumerate() {
                    let path = mount.join("events").join(key_of(i));
                    match std::fs::read(&path) {
                        Ok(got) if Sha256::digest(&got) == *digest => {}
                        Ok(got) => e.lock().unwrap().push(format!(
                            "{}: {} bytes, not the file's {}",
                            key_of(i),
                            got.len(),
                            size_of(i)
                        )),
                        Err(err) => e.lock().unwrap().push(format!("{}: {err}", key_of(i))),
                    }
                }
                p.fetch_add(1, Ordering::Relaxed);
            }
        });
        Reader {
            stop,
            passes,
            problems,
            thread,
        }
    }

    /// Waits for `n` more whole passes.
    async fn more_passes(&self, n: u64) {
        let from = self.passes.load(Ordering::Relaxed);
        let started = Instant::now();
        while self.passes.load(Ordering::Relaxed) < from + n {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the reader is stuck"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        let problems = self.problems.lock().unwrap().clone();
        (self.passes.load(Ordering::Relaxed), problems)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_migrated_and_switched_under_a_reader_never_fails_it() {
    require_fuse();
    let hdfs = MiniDfs::start();
    let s3 = S3Server::start();
    s3.create_bucket("cloud");
    futures::stream::iter(0..OBJECTS)
        .for_each_concurrent(16, |i| {
            let hdfs = &hdfs;
            async move {
                let data = content(i as u64, size_of(i));
                hdfs.put(&format!("/lake/events/{}", key_of(i)), &data)
                    .await;
            }
        })
        .await;
    let lake = SourceConfig {
        name: "lake".into(),
        uri: format!("{}/lake/", hdfs.url()),
        ..Default::default()
    };
    let mut target = s3.source("cloud", "s3://cloud/lake/", "/");
    let migrations = serde_json::json!([{
        "name": "to-cloud", "source": "lake", "path": "/", "concurrency": CONCURRENCY,
        "target": target.clone(),
    }]);

    let agent = TestAgent::start().await;
    let api = agent.local();
    api.put_dataset("ml", "lake", &dataset(&lake, migrations))
        .await
        .expect("PUT the dataset with its migration");
    let volume = api
        .acquire_volume("ml", "lake", "vol-1", None)
        .await
        .expect("acquire a volume");
    let reader = Reader::start(volume.mount_path.clone());
    reader.more_passes(1).await;

    // The Job's command, killed at a third and at two thirds of the objects at the
    // target, then run to the end.
    let logs = tempfile::tempdir().unwrap();
    for (run, at) in [(1, OBJECTS / 3), (2, 2 * OBJECTS / 3)] {
        let mut job = start_job(&agent, &logs.path().join(format!("run-{run}.log")));
        let started = Instant::now();
        while objects_at_target(&s3).await < at {
            assert!(
                job.try_wait().unwrap().is_none(),
                "run {run} ended before its kill"
            );
            assert!(started.elapsed() < Duration::from_secs(300), "no progress");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        job.kill().unwrap();
        job.wait().unwrap();
    }
    let log = logs.path().join("run-3.log");
    let status = start_job(&agent, &log).wait().unwrap();
    let mut output = String::new();
    std::fs::File::open(&log)
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    eprintln!("{output}");
    assert!(status.success(), "the last run failed:\n{output}");
    let last = output.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!("{OBJECTS}/{OBJECTS} objects")) && last.contains("100.0%"),
        "{last}"
    );

    // Each object uploaded once: a killed Job leaves the agent's copy running, and the
    // next run finds what it copied.
    let uploads = target_uploads(&agent).await;
    assert_eq!(uploads, OBJECTS as f64, "uploads for {OBJECTS} objects");
    let store = s3.store("cloud");
    for i in 0..OBJECTS {
        let got = store
            .get(&object_store::path::Path::from(format!(
                "lake/events/{}",
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

    // A file opened before the switch reads the same after it.
    let held_path = volume.mount_path.join("events").join(key_of(50));
    let mut held = std::fs::File::open(&held_path).unwrap();
    reader.more_passes(1).await;

    // The switch: the source served from the target, under the live mount.
    target.name = "lake".into();
    api.put_dataset("ml", "lake", &dataset(&target, serde_json::json!([])))
        .await
        .expect("PUT the switched dataset");
    reader.more_passes(2).await;
    let mut bytes = Vec::new();
    held.read_to_end(&mut bytes).unwrap();
    assert!(bytes == content(50, size_of(50)), "the held file's bytes");

    // HDFS gone: reads come from the target.
    drop(hdfs);
    reader.more_passes(2).await;
    let (passes, problems) = reader.finish();
    assert!(
        problems.is_empty(),
        "{} problems in {passes} passes, first: {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
    api.release_volume("vol-1").await.expect("release");
    agent.stop().await;
}
