//! A real `strata-agent serve` (in-process, real sockets, real FUSE) over a local-directory
//! source, for the agent's API tests and the CSI plugin's tests (feature `agent`).

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use strata_agent::http::client::AgentClient;
use strata_agent::serve::{Bound, ServeArgs, run};
use tempfile::TempDir;

/// The peer token (`--peer-token-file`): reads any dataset over TCP, nothing else.
pub const TOKEN: &str = "test-token-0123456789";

/// How [`TestAgent::start_opts`] starts the agent.
#[derive(Debug, Clone)]
pub struct TestAgentOptions {
    /// `--datasets-rescan`.
    pub rescan: Duration,
    /// `--node-name`: the agent's member name in a cluster of test agents.
    pub node_name: Option<String>,
    /// `--peers-file`: the cluster's members.
    pub peers_file: Option<PathBuf>,
    /// `--peer-timeout`.
    pub peer_timeout: Duration,
    /// An ephemeral disk tier of 64 MiB under `<dir>/ephemeral` (`--ephemeral-cache-dir`).
    pub ephemeral: bool,
}

impl Default for TestAgentOptions {
    fn default() -> Self {
        TestAgentOptions {
            rescan: Duration::from_secs(30),
            node_name: None,
            peers_file: None,
            peer_timeout: Duration::from_secs(5),
            ephemeral: false,
        }
    }
}

pub struct TestAgent {
    pub dir: TempDir,
    pub source: PathBuf,
    pub socket: PathBuf,
    pub mount_root: PathBuf,
    pub datasets_dir: PathBuf,
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
    /// Relative path -> SHA-256 of every file under `source`.
    pub files: BTreeMap<String, String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Writes a small tree with files that span several 64 KiB blocks, an empty file,
/// nested directories and a name with a space.
pub fn write_tree(root: &Path) -> BTreeMap<String, String> {
    let files: &[(&str, usize)] = &[
        ("train/a.bin", 300 * 1024 + 17),
        ("train/b.bin", 64 * 1024),
        ("train/nested/c.txt", 1234),
        ("labels/labels.csv", 4096 + 3),
        ("labels/empty.txt", 0),
        ("README with space.md", 77),
    ];
    let mut out = BTreeMap::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for (rel, size) in files {
        let mut data = Vec::with_capacity(*size);
        while data.len() < *size {
            // xorshift: cheap, deterministic, not compressible by accident.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            data.extend_from_slice(&seed.to_le_bytes());
        }
        data.truncate(*size);
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &data).unwrap();
        out.insert(rel.to_string(), hex::encode(Sha256::digest(&data)));
    }
    out
}

pub fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// A dataset config (JSON) over the test source, 64 KiB blocks so files span several.
pub fn dataset_json(source: &Path) -> serde_json::Value {
    serde_json::json!({
        "sources": [{"name": "local", "uri": format!("file://{}", source.display())}],
        "cache": {"blockSize": 65536, "metadataTtl": "1s"}
    })
}

impl TestAgent {
    pub async fn start() -> TestAgent {
        Self::start_with(Duration::from_secs(30)).await
    }

    /// Starts the agent with `--datasets-dir` rescanned every `rescan`.
    pub async fn start_with(rescan: Duration) -> TestAgent {
        Self::start_opts(TestAgentOptions {
            rescan,
            ..TestAgentOptions::default()
        })
        .await
    }

    /// Starts the agent with these options.
    pub async fn start_opts(opts: TestAgentOptions) -> TestAgent {
        let rescan = opts.rescan;
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(std::env::var("STRATA_LOG").unwrap_or_else(|_| "warn".into()))
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        let files = write_tree(&source);
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let datasets_dir = dir.path().join("datasets");
        std::fs::create_dir_all(&datasets_dir).unwrap();
        let args = ServeArgs {
            socket: dir.path().join("run/agent.sock"),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            peer_token_file: Some(token_file),
            job_token_audience: None,
            allow_local_paths: vec![],
            allow_any_local_path: true,
            metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
            mount_root: dir.path().join("mounts"),
            datasets_dir: Some(datasets_dir.clone()),
            datasets_rescan: rescan,
            cache_dir: dir.path().join("cache"),
            memory_size: 16 << 20,
            disk_size: 64 << 20,
            ephemeral_cache_dir: opts.ephemeral.then(|| dir.path().join("ephemeral")),
            ephemeral_disk: opts.ephemeral.then_some(64 << 20),
            readahead: 64 << 20,
            readahead_total: 256 << 20,
            prefetch_directory_files: 4,
            prefetch_directory_bytes: 1 << 30,
            no_passthrough: false,
            fuse_threads: 2,
            node_name: opts.node_name.clone(),
            advertise_url: None,
            status_interval: Duration::from_secs(30),
            holder: strata_agent::held_mounts::HolderFlags {
                holder_socket: None,
                no_holder: false,
                orphan_timeout: Duration::from_secs(30),
            },
            peers: strata_agent::peers::PeerFlags {
                peers: vec![],
                peers_file: opts.peers_file.clone(),
                peer_timeout: opts.peer_timeout,
                no_peers: false,
            },
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (bound_tx, bound_rx) = tokio::sync::oneshot::channel::<Bound>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stop_rx.await;
            };
            run(args, shutdown, move |bound| {
                let _ = bound_tx.send(bound);
            })
            .await
            .expect("strata-agent serve failed");
        });
        let bound = tokio::time::timeout(Duration::from_secs(20), bound_rx)
            .await
            .expect("agent did not start within 20s")
            .expect("agent stopped before binding");
        let agent = TestAgent {
            mount_root: dir.path().join("mounts").canonicalize().unwrap(),
            source,
            socket: bound.socket,
            datasets_dir,
            listen: bound.listen.unwrap(),
            metrics: bound.metrics_listen.unwrap(),
            files,
            dir,
            stop: Some(stop_tx),
            task: Some(task),
        };
        // Ready once the (empty) datasets dir was scanned.
        let local = agent.local();
        for _ in 0..100 {
            if local.ready().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        agent
    }

    pub fn local(&self) -> AgentClient {
        AgentClient::unix(&self.socket)
    }

    pub fn tcp(&self, token: Option<&str>) -> AgentClient {
        AgentClient::from_url(
            &format!("http://{}", self.listen),
            token.map(str::to_string),
        )
        .unwrap()
    }

    /// Adds `ns/name` over the test source through the API.
    pub async fn add_dataset(&self, ns: &str, name: &str) {
        self.local()
            .put_dataset(ns, name, &dataset_json(&self.source))
            .await
            .expect("PUT dataset");
    }

    /// Stops the agent as SIGTERM would; gives back its directory (cache, ephemeral tier)
    /// for a look at what it left.
    pub async fn stop(mut self) -> TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("agent did not stop within 30s")
                .expect("agent task panicked");
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }
}

impl Drop for TestAgent {
    // A failed test must not leave FUSE mounts behind (removing the temp dir would walk
    // into them): detach every mount under the test directory, deepest first.
    fn drop(&mut self) {
        let root = self.dir.path().to_string_lossy().to_string();
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<String> = table
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&root))
            .map(|p| p.replace("\\040", " "))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let _ = nix::mount::umount2(point.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Whether `path` is a mount point in this process's mount table.
pub fn is_mounted(path: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let wanted = path.to_string_lossy().replace(' ', "\\040");
    table
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(wanted.as_str()))
}

/// Raw HTTP/1.1 request over TCP, for status/header checks the client hides.
pub async fn raw_http(addr: SocketAddr, request: &str) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&out[..split]).to_string();
    let body = out[split + 4..].to_vec();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, body)
}
