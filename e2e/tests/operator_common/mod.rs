//! Shared by the operator_*.rs suites: CRD install, an in-process operator
//! replica scoped to a test namespace, a real S3 server (moto) on loopback,
//! and fake StrataNode reports written the way the agents write them.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use strata_crds::{NodeDatasetUsage, StrataNode, StrataNodeSpec};
use strata_e2e::{Cluster, wait_until};
use strata_operator::metrics::Metrics;
use strata_operator::{Operator, OperatorConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

/// Applies crds/generated and waits until the CRDs are established.
pub async fn install_crds(cluster: &Cluster) -> Result<()> {
    let dir = repo_root().join("crds/generated");
    for name in ["datasets", "cachepolicies", "stratanodes", "migrations"] {
        let file = dir.join(format!("{name}.strata.dev.yaml"));
        let file = file.to_string_lossy().into_owned();
        cluster
            .kubectl(&[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=strata-e2e-operator",
                "-f",
                &file,
            ])
            .await
            .with_context(|| format!("installing {file}"))?;
        cluster
            .kubectl(&[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{name}.strata.dev"),
            ])
            .await?;
    }
    Ok(())
}

/// An operator replica running in this process, scoped to one namespace.
pub struct RunningOperator {
    pub identity: String,
    pub metrics: Metrics,
    pub metrics_addr: SocketAddr,
    task: JoinHandle<strata_operator::Result<()>>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl RunningOperator {
    /// Starts a replica whose Strata namespace and watched namespace are
    /// `namespace`, with `extra` flags appended.
    pub async fn start(
        cluster: &Cluster,
        namespace: &str,
        identity: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let mut args = vec![
            "strata-operator",
            "--namespace",
            namespace,
            "--watch-namespace",
            namespace,
            "--identity",
            identity,
            "--metrics-addr",
            "127.0.0.1:0",
            "--lease-duration",
            "4s",
            "--source-check-timeout",
            "2s",
            "--listing-timeout",
            "10s",
            "--release-timeout",
            "60s",
            "--agent-image",
            "strata:e2e",
        ];
        // These suites use file:// sources under many paths; the allow list itself is
        // tested where a test passes its own.
        if !extra.iter().any(|a| a.starts_with("--allowed-local-paths")) {
            args.extend_from_slice(&["--allowed-local-paths", "/"]);
        }
        args.extend_from_slice(extra);
        let config = OperatorConfig::try_parse_from(args)?;
        let operator = Operator::new(cluster.client().await?, config)?;
        let metrics = operator.metrics();
        let (addr_tx, addr_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(operator.run(
            async move {
                let _ = stop_rx.await;
            },
            Some(addr_tx),
        ));
        let metrics_addr = tokio::time::timeout(Duration::from_secs(10), addr_rx)
            .await
            .context("operator did not start its metrics endpoint")??;
        Ok(RunningOperator {
            identity: identity.to_string(),
            metrics,
            metrics_addr,
            task,
            shutdown: Some(stop_tx),
        })
    }

    /// Kills the replica without a goodbye (no Lease release), like SIGKILL.
    pub fn kill(&self) {
        self.task.abort();
    }

    /// Asks the replica to stop (it releases the Lease) and waits. Losing the
    /// Lease counts as stopped: deleting the test namespace deletes the Lease.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match tokio::time::timeout(Duration::from_secs(10), &mut self.task).await {
            Ok(Ok(Err(strata_operator::Error::LostLease { .. }))) => Ok(()),
            Ok(Ok(result)) => Ok(result?),
            Ok(Err(e)) if e.is_cancelled() => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => bail!("operator {} did not stop within 10s", self.identity),
        }
    }

    /// GET `path` from the replica's metrics endpoint; returns the body.
    pub fn http_get(&self, path: &str) -> Result<String> {
        http_get(self.metrics_addr, path)
    }
}

impl Drop for RunningOperator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A one-shot HTTP/1.1 GET; returns the body of a 200 response.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {head}");
    }
    Ok(body.to_string())
}

/// A moto S3 server on 127.0.0.1 (it does not check signatures, so plain
/// HTTP requests create buckets and objects). Killed when dropped.
pub struct S3Server {
    child: Child,
    pub port: u16,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl S3Server {
    /// Starts `moto_server` (`pip install 'moto[server]'`).
    pub fn start() -> Result<S3Server> {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("moto_server not found: install it with `pip install 'moto[server]'`")?;
        let server = S3Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("moto_server did not listen on port {port} within 30s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn put(&self, path: &str, body: &[u8]) -> Result<()> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        write!(
            s,
            "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        )?;
        s.write_all(body)?;
        let mut response = String::new();
        s.read_to_string(&mut response)?;
        if !response.starts_with("HTTP/1.1 200") {
            bail!("PUT {path}: {}", response.lines().next().unwrap_or(""));
        }
        Ok(())
    }

    pub fn create_bucket(&self, bucket: &str) -> Result<()> {
        self.put(&format!("/{bucket}"), b"")
    }

    pub fn put_object(&self, bucket: &str, key: &str, size: usize) -> Result<()> {
        self.put(&format!("/{bucket}/{key}"), &vec![b'x'; size])
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One dataset line of a fake node report.
pub struct Report<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: Option<String>,
    pub cached_bytes: i64,
    pub hits: i64,
    pub misses: i64,
}

/// Creates or replaces StrataNode `node` with `reports`, heartbeat now, as an
/// agent would (spec by create, status through the status subresource).
pub async fn report_node(client: &kube::Client, node: &str, reports: &[Report<'_>]) -> Result<()> {
    let datasets: Vec<NodeDatasetUsage> = reports
        .iter()
        .map(|r| NodeDatasetUsage {
            namespace: r.namespace.to_string(),
            name: r.name.to_string(),
            uid: r.uid.clone(),
            cached_bytes: r.cached_bytes,
            pinned_bytes: None,
            files: 1,
            hits: r.hits,
            misses: r.misses,
            last_update: Some(Time(Timestamp::now())),
            last_error: None,
            jobs: vec![],
            pins: vec![],
            writes: None,
        })
        .collect();
    report_node_usage(client, node, datasets).await
}

/// Like [`report_node`], with whole per-dataset reports (errors, job progress).
pub async fn report_node_usage(
    client: &kube::Client,
    node: &str,
    datasets: Vec<NodeDatasetUsage>,
) -> Result<()> {
    let api: Api<StrataNode> = Api::all(client.clone());
    if api.get_opt(node).await?.is_none() {
        let object = StrataNode::new(
            node,
            StrataNodeSpec {
                node_name: node.to_string(),
                endpoint: Some("http://127.0.0.1:7070".into()),
            },
        );
        api.create(&PostParams::default(), &object).await?;
    }
    let cached: i64 = datasets.iter().map(|r| r.cached_bytes).sum();
    let status = json!({
        "status": {
            "datasets": datasets,
            "datasetCount": datasets.len(),
            "cachedBytes": cached,
            "lastHeartbeat": Time(Timestamp::now()),
        }
    });
    api.patch_status(node, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// Deletes fake StrataNodes (ignoring ones already gone).
pub async fn delete_nodes(client: &kube::Client, nodes: &[&str]) {
    let api: Api<StrataNode> = Api::all(client.clone());
    for node in nodes {
        let _ = api.delete(node, &DeleteParams::default()).await;
    }
}

/// Waits up to `timeout` for `check` to return Some.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    Ok(wait_until(what, timeout, check).await?)
}

/// The manifest of an example with its namespace and S3 endpoint replaced.
pub fn example(file: &str, namespace: &str, s3_endpoint: Option<&str>) -> Result<String> {
    let path = repo_root().join("examples").join(file);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut text = text.replace("namespace: ml", &format!("namespace: {namespace}"));
    if let Some(endpoint) = s3_endpoint {
        text = text.replace("http://minio.storage:9000", endpoint);
    }
    Ok(text)
}

/// Events (core/v1) in `namespace` about object `name`, as (type, reason, message).
pub async fn events_for(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Vec<(String, String, String)>> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), namespace);
    let list = api.list(&Default::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect())
}
