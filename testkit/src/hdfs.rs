//! A real HDFS for tests: Hadoop's MiniDFSCluster (one namenode and one datanode in a JVM) on
//! loopback, packaged from Maven Central by `scripts/minidfs/build.sh` into
//! `~/.cache/strata/minidfs` (or `STRATA_MINIDFS`). Needs `java` (17) to run, and `mvn` the first
//! time. Files are written with hdfs-native, the client Strata's `hdfs://` sources use.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hdfs_native::{Client, ClientBuilder, WriteOptions};
use tempfile::TempDir;

/// Formatting the namenode and registering the datanode took 3-7 s on 2 cores; the rest is
/// headroom for a machine that is also compiling.
const START_LIMIT: Duration = Duration::from_secs(120);

/// What `MiniDfs.java` prints on stdout once the cluster is active, before the URL.
const READY: &str = "MINIDFS READY ";

/// Where the packaged cluster is: `STRATA_MINIDFS`, or the build script's place.
fn package_dir() -> PathBuf {
    crate::cached_tool("STRATA_MINIDFS", "minidfs")
}

/// A running MiniDFSCluster, killed when dropped (its data lives in a temp dir dropped with it).
pub struct MiniDfs {
    child: Child,
    /// Held open: the cluster shuts down when its stdin closes.
    _stdin: ChildStdin,
    url: String,
    port: u16,
    _dir: TempDir,
}

impl MiniDfs {
    /// Packages the cluster if needed, starts it with its data in a fresh temp dir and waits
    /// (up to two minutes) until the namenode and datanode are up.
    pub fn start() -> MiniDfs {
        let package = package_dir();
        build_package();
        let dir = tempfile::Builder::new()
            .prefix("strata-minidfs-")
            .tempdir()
            .expect("a temp dir for MiniDFS");
        let log_path = dir.path().join("minidfs.log");
        let log = File::create(&log_path).expect("create the MiniDFS log");
        let mut child = Command::new("java")
            .arg("-cp")
            .arg(format!(
                "{}:{}/*",
                package.join("minidfs.jar").display(),
                package.join("lib").display()
            ))
            .arg("dev.strata.MiniDfs")
            .args(["--port", "0", "--datanodes", "1", "--dir"])
            .arg(dir.path().join("data"))
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start MiniDFS (java): {e}; install a Java 17 runtime (`java`)")
            });
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");

        // A thread reads stdout for the whole run: the READY line, then whatever else, so the
        // JVM never blocks on a full pipe.
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix(READY)
                    && let Some(tx) = ready_tx.take()
                {
                    let _ = tx.send(url.to_string());
                }
            }
        });

        let started = Instant::now();
        let url = match ready_rx.recv_timeout(START_LIMIT) {
            Ok(url) => url,
            Err(why) => {
                let _ = child.kill();
                let status = child
                    .wait()
                    .map_or_else(|e| e.to_string(), |s| s.to_string());
                let waited = match why {
                    mpsc::RecvTimeoutError::Timeout => format!("not ready within {START_LIMIT:?}"),
                    mpsc::RecvTimeoutError::Disconnected => {
                        format!("exited before it was ready ({status})")
                    }
                };
                panic!(
                    "MiniDFS {waited}; the end of its log:\n{}",
                    log_tail(&log_path, 4000)
                );
            }
        };
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("MiniDFS printed a URL without a port: {url}"));
        eprintln!("MiniDFS at {url}, ready in {:.1?}", started.elapsed());
        MiniDfs {
            child,
            _stdin: stdin,
            url,
            port,
            _dir: dir,
        }
    }

    /// The namenode's URL, `hdfs://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The namenode's RPC port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// An hdfs-native client of this cluster.
    pub fn client(&self) -> Client {
        ClientBuilder::new()
            .with_url(self.url())
            .build()
            .unwrap_or_else(|e| panic!("hdfs-native client for {}: {e}", self.url))
    }

    /// Writes `data` to the absolute `path` (parents created, an existing file replaced).
    pub async fn put(&self, path: &str, data: &[u8]) {
        let options = WriteOptions {
            overwrite: true,
            ..WriteOptions::default()
        };
        let mut writer = self
            .client()
            .create(path, options)
            .await
            .unwrap_or_else(|e| panic!("create {path} on MiniDFS: {e}"));
        writer
            .write_bytes(data.to_vec().into())
            .await
            .unwrap_or_else(|e| panic!("write {path} on MiniDFS: {e}"));
        writer
            .close()
            .await
            .unwrap_or_else(|e| panic!("close {path} on MiniDFS: {e}"));
    }
}

impl Drop for MiniDfs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `scripts/minidfs/build.sh`, which returns at once when the package matches the
/// sources (so an edited `MiniDfs.java` is picked up). Skipped when `STRATA_MINIDFS` names a
/// package built elsewhere.
fn build_package() {
    let prebuilt = std::env::var_os("STRATA_MINIDFS").is_some();
    if prebuilt && package_dir().join("minidfs.jar").exists() {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/minidfs/build.sh");
    let status = Command::new("bash")
        .arg(&script)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        status.success(),
        "{} failed ({status}); it needs `java` 17, `mvn` and Maven Central the first time",
        script.display()
    );
}

/// The last `limit` bytes of the log, for a start that failed.
fn log_tail(path: &Path, limit: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(limit)));
    let mut tail = Vec::new();
    let _ = file.read_to_end(&mut tail);
    String::from_utf8_lossy(&tail).into_owned()
}
