//! The POSIX suites over a writable mount (a `WriteBack` source on moto S3, mounted with
//! FUSE): pjdfstest, the Rust rewrite (crates.io `pjdfstest`), and fsx (`fsx`, asomers/fsx-rs).
//! Both are installed by `scripts/setup.sh` under `~/.cache/strata/tools` (docs/testing.md);
//! a missing one fails the test.
//!
//! pjdfstest: every case passes except those in `posix/pjdfstest-expected-failures.txt`,
//! each listed with why an object store cannot do it; a listed case that passes fails the
//! test too, so the list stays true (but for those marked `?`, which depend on whether an
//! upload ended meanwhile). fsx: what it reads back is what it wrote, and what it left is
//! what reaches the bucket.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use strata_agent::config::{CacheSettings, WriteMode};
use strata_agent::dataset::DatasetView;
use strata_agent::fuse::{MountHandle, MountOptions, mount};

const PJDFSTEST_VERSION: &str = "0.2.2";
const FSX_VERSION: &str = "0.3.2";

/// A tool `scripts/setup.sh` installs (`cargo install --root ~/.cache/strata/tools/<name>`),
/// or the path in `env`; fails the test when it is not there.
fn tool(env: &str, name: &str, version: &str) -> PathBuf {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        PathBuf::from(home).join(format!(".cache/strata/tools/{name}/bin/{name}"))
    });
    assert!(
        path.is_file(),
        "{} missing: scripts/setup.sh installs it (cargo install --locked --root \
         ~/.cache/strata/tools/{name} {name} --version {version}), or set {env}",
        path.display()
    );
    path
}

/// What a tool run printed, and how it ended (None: killed at its time limit).
struct Run {
    status: Option<std::process::ExitStatus>,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` with its output in files under `dir`, killed after `limit`: a hung file
/// system fails the test instead of hanging it.
async fn run_bounded(mut cmd: Command, dir: &Path, name: &str, limit: Duration) -> Run {
    let (out_path, err_path) = (
        dir.join(format!("{name}.out")),
        dir.join(format!("{name}.err")),
    );
    cmd.stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let status = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
    Run {
        status,
        stdout: read(&out_path),
        stderr: read(&err_path),
    }
}

/// A writable dataset over an empty bucket, mounted.
struct WritableMount {
    s3: S3Server,
    _cache_dir: tempfile::TempDir,
    mnt: tempfile::TempDir,
    view: Arc<DatasetView>,
    handle: Option<MountHandle>,
}

async fn writable_mount(bucket: &str) -> WritableMount {
    require_fuse();
    let s3 = S3Server::start();
    s3.create_bucket(bucket);
    let cache_dir = tempdir();
    let mnt = tempdir();
    let mut source = s3.source("s3", &format!("s3://{bucket}/"), "/");
    source.write_mode = WriteMode::WriteBack;
    let cfg = dataset(
        bucket,
        vec![source],
        CacheSettings {
            metadata_ttl: Duration::from_secs(300),
            ..one_mib_blocks()
        },
    );
    let agent = agent(cache_dir.path(), 64 << 20, 1 << 30).await;
    let view = agent.add_dataset(cfg).await.unwrap();
    let handle = mount(view.clone(), mnt.path(), MountOptions::default()).unwrap();
    WritableMount {
        s3,
        _cache_dir: cache_dir,
        mnt,
        view,
        handle: Some(handle),
    }
}

/// A case of `posix/pjdfstest-expected-failures.txt`.
struct ExpectedFailure {
    reason: String,
    /// Marked `?`: passes or fails with the timing of an upload.
    may_pass: bool,
}

/// The expected failures: `case  # reason` a line (`?case` for one that may pass); `#`
/// lines are comments.
fn expected_failures() -> BTreeMap<String, ExpectedFailure> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/posix/pjdfstest-expected-failures.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let at = || format!("{}:{}", path.display(), n + 1);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (case, reason) = line
            .split_once('#')
            .unwrap_or_else(|| panic!("{}: no `# reason`", at()));
        let (case, reason) = (case.trim(), reason.trim());
        let (case, may_pass) = match case.strip_prefix('?') {
            Some(case) => (case, true),
            None => (case, false),
        };
        assert!(
            !case.contains(char::is_whitespace) && !reason.is_empty(),
            "{}: expected `case  # reason`",
            at()
        );
        let reason = reason.to_string();
        assert!(
            out.insert(case.to_string(), ExpectedFailure { reason, may_pass })
                .is_none(),
            "{}: {case} listed twice",
            at()
        );
    }
    out
}

#[derive(Debug, Default)]
struct PjdResults {
    passed: BTreeSet<String>,
    failed: BTreeMap<String, String>,
    skipped: BTreeMap<String, String>,
}

/// Parses pjdfstest's output: `<case> ok|FAILED|skipped` a line, a failure followed by
/// its message (tab-indented, then the rest of a multi-line assertion), a skip by its
/// reasons (tab-indented).
fn parse_pjdfstest(out: &str) -> PjdResults {
    let mut r = PjdResults::default();
    // The failed or skipped case whose details follow.
    let mut detail_of: Option<&mut String> = None;
    for line in out.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(d) = detail_of.as_mut() {
                if !d.is_empty() {
                    d.push(' ');
                }
                d.push_str(line.trim());
            }
            continue;
        }
        detail_of = None;
        let mut words = line.split_whitespace();
        let (Some(case), Some(status), None) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        if !case.contains("::") {
            continue;
        }
        match status {
            "ok" => {
                r.passed.insert(case.to_string());
            }
            "FAILED" => detail_of = Some(r.failed.entry(case.to_string()).or_default()),
            "skipped" => detail_of = Some(r.skipped.entry(case.to_string()).or_default()),
            _ => {}
        }
    }
    r
}

/// pjdfstest's settings: users to switch to that every Debian has (its default `tests`
/// user is not one); the opt-in features a Linux FUSE mount has (posix_fallocate through
/// glibc's emulation: the mount has no fallocate); no remount (the EROFS cases: a
/// read-only dataset's EROFS is tested in writes_mount.rs).
const PJDFSTEST_CONFIG: &str = r#"
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
[settings]
naptime = 0.01
allow_remount = false
[dummy_auth]
entries = [["nobody", "nogroup"], ["daemon", "daemon"]]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pjdfstest_passes_every_case_an_object_store_can() {
    let pjdfstest = tool("STRATA_PJDFSTEST", "pjdfstest", PJDFSTEST_VERSION);
    let expected = expected_failures();
    let mut m = writable_mount("pjdfstest").await;
    let work = tempdir();
    let config = work.path().join("pjdfstest.toml");
    std::fs::write(&config, PJDFSTEST_CONFIG).unwrap();
    // The cross-device cases rename and link to a second file system.
    let secondary = tempdir();
    let started = Instant::now();
    let mut cmd = Command::new(&pjdfstest);
    cmd.arg("-c")
        .arg(&config)
        .arg("-p")
        .arg(m.mnt.path())
        .arg("-s")
        .arg(secondary.path())
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "0");
    let run = run_bounded(cmd, work.path(), "pjdfstest", PJDFSTEST_LIMIT).await;
    println!("{}\n{}", run.stdout, run.stderr);
    let r = parse_pjdfstest(&run.stdout);
    assert!(
        run.stdout.lines().any(|l| l.starts_with("Summary")),
        "pjdfstest did not finish ({:?}; None: still running after {PJDFSTEST_LIMIT:?}):\n{}",
        run.status,
        run.stderr
    );
    let listed_failed = r
        .failed
        .keys()
        .filter(|c| expected.contains_key(*c))
        .count();
    println!(
        "pjdfstest: {} passed, {} failed ({listed_failed} of them listed as expected), {} skipped, in {:?}",
        r.passed.len(),
        r.failed.len(),
        r.skipped.len(),
        started.elapsed()
    );
    for (case, why) in &r.skipped {
        println!("skipped: {case}: {why}");
    }
    let unexpected: Vec<_> = r
        .failed
        .iter()
        .filter(|(c, _)| !expected.contains_key(*c))
        .map(|(c, why)| format!("{c}: {why}"))
        .collect();
    let (may_pass, now_passing): (Vec<_>, Vec<_>) = expected
        .iter()
        .filter(|(c, _)| r.passed.contains(*c))
        .partition(|(_, e)| e.may_pass);
    for (case, e) in &may_pass {
        println!("passed this time (listed with `?`): {case} ({})", e.reason);
    }
    let now_passing: Vec<_> = now_passing.into_iter().map(|(c, _)| c).collect();
    let not_run: Vec<_> = expected
        .keys()
        .filter(|c| !r.passed.contains(*c) && !r.failed.contains_key(*c))
        .collect();
    assert!(
        unexpected.is_empty() && now_passing.is_empty() && not_run.is_empty(),
        "pjdfstest: {} cases failed that are not listed in posix/pjdfstest-expected-failures.txt:\n  {}\n\
         listed but passed (take them off the list): {now_passing:?}\n\
         listed but not run (skipped or gone): {not_run:?}",
        unexpected.len(),
        unexpected.join("\n  ")
    );
    // pjdfstest removed what it made: after the uploads, nothing is left at the source,
    // and no change failed to get there.
    let writes = m.view.writes().unwrap().clone();
    assert!(
        writes.drain(Duration::from_secs(120)).await,
        "uploads did not finish"
    );
    let usage = writes.usage();
    assert_eq!(usage.failures, 0, "{usage:?}");
    let left: Vec<_> =
        m.s3.store("pjdfstest")
            .list(None)
            .try_collect()
            .await
            .unwrap();
    let left: Vec<_> = left.iter().map(|o| o.location.to_string()).collect();
    assert!(left.is_empty(), "left at the source: {left:?}");
    m.handle.take().unwrap().unmount().unwrap();
}

/// fsx's operations and their weights: every one a file on a Linux FUSE mount can take,
/// shared writable mmap included (the mount serves it through the page cache), and
/// posix_fallocate (glibc emulates it: the mount has no fallocate); not hole punching
/// (fallocate: EOPNOTSUPP). close_open commits the file (its upload starts) and opens it
/// again, from the source once the upload ended and the node let the file go.
const FSX_CONFIG: &str = r#"
flen = 4194304
[opsize]
max = 262144
[weights]
read = 10
write = 10
mapread = 5
mapwrite = 5
truncate = 4
close_open = 1
fsync = 1
fdatasync = 1
invalidate = 1
sendfile = 1
copy_file_range = 1
posix_fadvise = 1
posix_fallocate = 1
"#;

/// fsx runs with these seeds, `FSX_OPS` operations each (`STRATA_FSX_OPS` overrides).
const FSX_SEEDS: [u64; 2] = [20261207, 424242];
const FSX_OPS: u64 = 5000;
/// Far above what a run takes here (see docs/testing.md), to fail rather than hang.
const FSX_LIMIT: Duration = Duration::from_secs(300);
const PJDFSTEST_LIMIT: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fsx_sees_what_it_wrote_and_the_bucket_gets_it() {
    let fsx = tool("STRATA_FSX", "fsx", FSX_VERSION);
    let ops: u64 = std::env::var("STRATA_FSX_OPS")
        .ok()
        .map(|v| v.parse().expect("STRATA_FSX_OPS: a number"))
        .unwrap_or(FSX_OPS);
    let mut m = writable_mount("fsx").await;
    let work = tempdir();
    let config = work.path().join("fsx.toml");
    std::fs::write(&config, FSX_CONFIG).unwrap();
    for seed in FSX_SEEDS {
        let name = format!("fsx-{seed}");
        let file = m.mnt.path().join(&name);
        let started = Instant::now();
        let mut cmd = Command::new(&fsx);
        cmd.arg("-f")
            .arg(&config)
            .arg("-N")
            .arg(ops.to_string())
            .arg("-S")
            .arg(seed.to_string())
            .arg("-P")
            .arg(work.path())
            .arg(&file);
        let run = run_bounded(cmd, work.path(), &name, FSX_LIMIT).await;
        assert!(
            run.status.is_some_and(|s| s.success()),
            "fsx -S {seed} -N {ops} failed ({:?}; None: still running after {FSX_LIMIT:?}):\n{}\n{}",
            run.status,
            run.stdout,
            run.stderr
        );
        println!(
            "fsx -S {seed}: {ops} operations passed in {:?}",
            started.elapsed()
        );
        // What fsx left is what reaches the bucket.
        let content = tokio::fs::read(&file).await.unwrap();
        let writes = m.view.writes().unwrap().clone();
        assert!(
            writes.drain(Duration::from_secs(120)).await,
            "uploads did not finish"
        );
        let at_source =
            m.s3.store("fsx")
                .get(&object_store::path::Path::from(name.as_str()))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
        assert!(
            at_source == content,
            "{name}: the object at the source ({} bytes) differs from the file ({} bytes)",
            at_source.len(),
            content.len()
        );
    }
    let usage = m.view.writes().unwrap().usage();
    assert_eq!(usage.failures, 0, "{usage:?}");
    m.handle.take().unwrap().unmount().unwrap();
}
