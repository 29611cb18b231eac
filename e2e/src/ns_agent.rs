//! A `strata-agent serve` process in a node's network namespace ([`NetNode`]): its own
//! directory (cache, unix socket, mounts, log), its API on the node's address for peers, its
//! metrics on the node's address too (read from the root namespace across the bridge), and the
//! cluster flags of the agent-to-agent cache when given.
//!
//! The test talks to it over its unix socket (datasets, volumes, usage: a unix socket is a
//! file, reachable from any network namespace) and reads its FUSE mounts directly.
//!
//! It runs outside Kubernetes whatever this machine has: its `KUBECONFIG` names a file that
//! does not exist and the in-cluster variables are removed, so with `--node-name` it neither
//! writes a StrataNode nor takes its members from StrataNodes of a cluster the machine runs
//! (the e2e suites' local control plane, say).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use strata_wire::api::client::AgentClient;

use crate::node_net::NetNode;
use crate::{Error, Result};

/// Port of every agent's API (each node has its own address, as real nodes do).
pub const AGENT_PORT: u16 = 7070;
/// Port of every agent's /metrics.
pub const METRICS_PORT: u16 = 9090;
/// How long an agent may take to answer `/readyz` on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The cluster part of an agent's command line (issue 23): who it is among its peers and how
/// it finds and authenticates them.
#[derive(Debug, Clone)]
pub struct ClusterFlags {
    /// `--node-name`, also its member name in the peers file.
    pub node_name: String,
    /// `--peer-token-file`: the same secret on every agent.
    pub token_file: PathBuf,
    /// `--peers-file`: one `NAME URL` line per member, re-read by the agents.
    pub peers_file: Option<PathBuf>,
    /// `--peer-timeout`, the agent's default when `None`.
    pub peer_timeout: Option<Duration>,
}

/// What differs between agents of a test.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `--memory`, e.g. `64Mi`.
    pub memory: String,
    /// `--disk`, e.g. `1Gi`.
    pub disk: String,
    /// Any further flags.
    pub extra: Vec<String>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            memory: "64Mi".into(),
            disk: "2Gi".into(),
            extra: Vec::new(),
        }
    }
}

/// The agent process; stopped (SIGTERM, so it unmounts) on drop, and any mount it left under
/// its directory (after a SIGKILL) detached.
#[derive(Debug)]
pub struct NsAgent {
    pub name: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// `http://<node address>:7070`, what peers use.
    pub url: String,
    pub metrics_addr: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
}

impl NsAgent {
    /// Starts `binary serve` in `node` with its state under `dir` (created), and waits until
    /// it is ready.
    pub async fn start(
        binary: &Path,
        node: &NetNode,
        dir: &Path,
        name: &str,
        cluster: Option<&ClusterFlags>,
        options: &AgentOptions,
    ) -> Result<NsAgent> {
        let fs = |action: &'static str, path: &Path, source| Error::Filesystem {
            action,
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| fs("creating", dir, e))?;
        let socket = dir.join("run/agent.sock");
        let url = format!("http://{}:{AGENT_PORT}", node.address);
        let metrics_addr = SocketAddr::from((node.address, METRICS_PORT));
        let path = |sub: &str| dir.join(sub).to_string_lossy().into_owned();
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--socket".into(),
            socket.to_string_lossy().into_owned(),
            "--mount-root".into(),
            path("mounts"),
            "--cache-dir".into(),
            path("cache"),
            "--metrics-listen".into(),
            metrics_addr.to_string(),
            "--memory".into(),
            options.memory.clone(),
            "--disk".into(),
            options.disk.clone(),
            "--no-holder".into(),
        ];
        if let Some(c) = cluster {
            args.extend([
                "--node-name".into(),
                c.node_name.clone(),
                "--listen".into(),
                format!("{}:{AGENT_PORT}", node.address),
                "--advertise-url".into(),
                url.clone(),
                "--peer-token-file".into(),
                c.token_file.to_string_lossy().into_owned(),
            ]);
            if let Some(peers) = &c.peers_file {
                args.extend(["--peers-file".into(), peers.to_string_lossy().into_owned()]);
            }
            if let Some(t) = c.peer_timeout {
                args.extend(["--peer-timeout".into(), format!("{}ms", t.as_millis())]);
            }
        }
        args.extend(options.extra.iter().cloned());
        let log = dir.join("agent.log");
        let out = std::fs::File::create(&log).map_err(|e| fs("creating", &log, e))?;
        let err_out = out.try_clone().map_err(|e| fs("opening", &log, e))?;
        let child = node
            .command(binary)
            .args(&args)
            .env("KUBECONFIG", dir.join("no-kubeconfig"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err_out)
            .spawn()
            .map_err(|e| Error::NodeAgent {
                node: name.into(),
                detail: format!("starting {} in {}: {e}", binary.display(), node.namespace),
            })?;
        let mut agent = NsAgent {
            name: name.into(),
            dir: dir.to_path_buf(),
            socket,
            url,
            metrics_addr,
            log,
            child: Some(child),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            agent.check_running()?;
            if agent.client().ready().await.is_ok() {
                return Ok(agent);
            }
            if Instant::now() > deadline {
                return Err(agent.failed(format!("not ready within {START_TIMEOUT:?}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client on the agent's unix socket (every route, no token).
    pub fn client(&self) -> AgentClient {
        AgentClient::unix(&self.socket)
    }

    /// Registers a dataset (`PUT /v1/datasets/{ns}/{name}`, the config as JSON).
    pub async fn put_dataset(
        &self,
        ns: &str,
        name: &str,
        config: &serde_json::Value,
    ) -> Result<()> {
        self.client()
            .put_dataset(ns, name, config)
            .await
            .map(drop)
            .map_err(|e| self.failed(format!("PUT dataset {ns}/{name}: {e}")))
    }

    /// Mounts the dataset on this node (a volume, as the CSI plugin would ask) and returns the
    /// FUSE mount's path.
    pub async fn mount(&self, ns: &str, name: &str) -> Result<PathBuf> {
        self.client()
            .acquire_volume(ns, name, &format!("vol-{ns}-{name}"), None)
            .await
            .map(|m| m.mount_path)
            .map_err(|e| self.failed(format!("acquiring a volume of {ns}/{name}: {e}")))
    }

    /// `GET .../usage` of a dataset: what this node's cache holds of it.
    pub async fn usage(&self, ns: &str, name: &str) -> Result<serde_json::Value> {
        self.client()
            .usage(ns, name)
            .await
            .map_err(|e| self.failed(format!("usage of {ns}/{name}: {e}")))
    }

    /// The agent's current `/metrics`.
    pub async fn metrics(&self) -> Result<Metrics> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let fetch = async {
            let mut s = tokio::net::TcpStream::connect(self.metrics_addr).await?;
            s.write_all(
                format!(
                    "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    self.metrics_addr
                )
                .as_bytes(),
            )
            .await?;
            let mut out = Vec::new();
            s.read_to_end(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        };
        let raw = tokio::time::timeout(Duration::from_secs(10), fetch)
            .await
            .map_err(|_| self.failed("GET /metrics: no answer in 10 s"))?
            .map_err(|e| self.failed(format!("GET /metrics: {e}")))?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| self.failed("GET /metrics: no header end"))?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(self.failed(format!(
                "GET /metrics: {}",
                head.lines().next().unwrap_or_default()
            )));
        }
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            return Ok(Metrics(dechunk(body)));
        }
        Ok(Metrics(body.to_string()))
    }

    /// Fails with the log's tail if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        let status = match self.child.as_mut().map(Child::try_wait) {
            None => Some("killed by the test".to_string()),
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Ok(None)) => None,
            Some(Err(e)) => Some(e.to_string()),
        };
        match status {
            None => Ok(()),
            Some(status) => Err(self.failed(format!("exited ({status})"))),
        }
    }

    /// SIGKILL, as a crash or the OOM killer would: no unmount, no goodbye to peers.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (the agent unmounts and exits), SIGKILL after 15 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_none() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// The last `lines` lines of the agent's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    fn failed(&self, detail: impl Into<String>) -> Error {
        Error::NodeAgent {
            node: self.name.clone(),
            detail: format!(
                "{}\nlast lines of {}:\n{}",
                detail.into(),
                self.log.display(),
                self.log_tail(20)
            ),
        }
    }
}

impl Drop for NsAgent {
    fn drop(&mut self) {
        self.stop();
        // A killed agent leaves its mounts behind, disconnected: detach them, deepest first.
        let root = self.dir.to_string_lossy().into_owned();
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<String> = table
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|p| p.replace("\\040", " "))
            .filter(|p| p.starts_with(&root))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let _ = std::process::Command::new("umount")
                .args(["-l", &point])
                .status();
        }
    }
}

/// A `/metrics` exposition.
#[derive(Debug, Clone)]
pub struct Metrics(pub String);

impl Metrics {
    /// Sum of every sample of `name` whose labels include each `key="value"` of `labels`
    /// (0 when there is none: a counter nobody moved yet is often not exposed).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(series, _)| {
                let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
                metric == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|(_, value)| value.parse::<f64>().ok())
            .sum()
    }

    /// [`Self::sum`] as a whole number of bytes or events.
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.sum(name, labels).round() as u64
    }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_series_by_name_and_labels() {
        let m = Metrics(
            "# HELP x\n\
             strata_block_bytes_total{origin=\"peer\"} 10\n\
             strata_block_bytes_total{origin=\"source\"} 5\n\
             strata_block_bytes_total_other 7\n\
             strata_source_read_bytes_total{dataset=\"a/b\",source=\"s3\"} 3\n\
             strata_source_read_bytes_total{dataset=\"a/c\",source=\"s3\"} 4\n"
                .into(),
        );
        assert_eq!(
            m.count("strata_block_bytes_total", &[("origin", "peer")]),
            10
        );
        assert_eq!(m.count("strata_block_bytes_total", &[]), 15);
        assert_eq!(m.count("strata_source_read_bytes_total", &[]), 7);
        assert_eq!(
            m.count("strata_source_read_bytes_total", &[("dataset", "a/c")]),
            4
        );
        assert_eq!(m.count("strata_missing", &[]), 0);
    }

    #[test]
    fn dechunks() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}
