//! The cluster cache (issue 23) with real parts: agents as nodes, each `strata-agent serve` in
//! its own network namespace with its own address (veth pairs to a bridge, `NodeNet`), the
//! S3 server (moto) in the root namespace behind a proxy that delays each direction by 25 ms
//! and counts every byte it delivers to the agents (`DelayProxy`): what crossed the WAN.
//! Every read goes through a node's FUSE mount (a volume acquired over the agent's unix
//! socket, as the CSI plugin does) and is compared byte for byte with what was uploaded.
//!
//! Every agent has the same peer token and the same peers file (`NAME URL` per member, which
//! the agents re-read every 2 s); the test edits that file to add and remove members.
//! Counts come from two sides that must agree: the proxy (bytes the S3 server sent) and each
//! agent's `/metrics` (`strata_source_read_bytes_total`, `strata_block_bytes_total{origin}`).
//!
//! Needs root (namespaces, FUSE), `ip`, `nsenter` and `moto_server`; without root or the
//! tools each test says why and passes without running. The tests run one at a time (they
//! share the machine's two cores, and the kill-mid-read test's timing depends on it).

use std::collections::VecDeque;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use strata_e2e::{
    AgentOptions, ClusterFlags, DelayProxy, Metrics, MotoS3, NodeNet, NsAgent,
    node_net_unavailable, workspace_binaries,
};

const MIB: usize = 1 << 20;
const BUCKET: &str = "cluster-cache";
const NS: &str = "ml";
const DATASET: &str = "corpus";
/// One-way delay of the WAN link between the nodes and the S3 server.
const WAN_DELAY: Duration = Duration::from_millis(25);
/// The agents re-read the peers file every 2 s; after an edit, every agent has seen it
/// within this long.
const MEMBERSHIP_SETTLE: Duration = Duration::from_secs(5);
/// Bytes the S3 server may send beyond the data itself (response headers, listings):
/// at most 2% of the data (a block of 4 MiB comes with well under 1 KiB of headers).
const WAN_OVERHEAD: f64 = 1.02;
const SOURCE_BYTES: &str = "strata_source_read_bytes_total";
const BLOCK_BYTES: &str = "strata_block_bytes_total";

/// One test at a time in this process.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// Test data

/// Files at the source, kept in memory to compare every byte read.
struct TestData {
    files: Vec<(String, Arc<Vec<u8>>)>,
}

impl TestData {
    /// Random contents (from /dev/urandom: fast, and every file differs, so a block served
    /// for the wrong file or offset shows) of the given sizes.
    fn random(layout: &[(String, usize)]) -> Result<TestData> {
        let mut urandom = std::fs::File::open("/dev/urandom")?;
        let mut files = Vec::new();
        for (path, size) in layout {
            let mut body = vec![0u8; *size];
            urandom.read_exact(&mut body)?;
            files.push((path.clone(), Arc::new(body)));
        }
        Ok(TestData { files })
    }

    fn total(&self) -> u64 {
        self.files.iter().map(|(_, b)| b.len() as u64).sum()
    }

    fn bytes_under(&self, prefix: &str) -> u64 {
        self.files
            .iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .map(|(_, b)| b.len() as u64)
            .sum()
    }
}

/// `count` files of `size` bytes named `<dir>/f<i>.bin`.
fn files(dir: &str, count: usize, size: usize) -> Vec<(String, usize)> {
    (0..count)
        .map(|i| (format!("{dir}/f{i:03}.bin"), size))
        .collect()
}

/// What a reader saw.
#[derive(Debug, Default)]
struct ReadReport {
    bytes: u64,
    files: usize,
    /// Failed reads and wrong contents, one line each.
    errors: Vec<String>,
    took: Duration,
}

/// Reads every file of `data` whose path starts with `prefix` through the mount at `root`
/// with `threads` readers, comparing each byte with the source; adds the bytes read to
/// `progress`. Blocking.
fn read_all(
    root: &Path,
    data: &TestData,
    prefix: &str,
    threads: usize,
    progress: &AtomicU64,
) -> ReadReport {
    let start = Instant::now();
    let queue: Mutex<VecDeque<&(String, Arc<Vec<u8>>)>> = Mutex::new(
        data.files
            .iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .collect(),
    );
    let report = Mutex::new(ReadReport::default());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let Some((path, expected)) = queue.lock().unwrap().pop_front() else {
                        return;
                    };
                    let outcome = read_one(&root.join(path), expected, progress);
                    let mut r = report.lock().unwrap();
                    r.files += 1;
                    match outcome {
                        Ok(n) => r.bytes += n,
                        Err(e) => r.errors.push(format!("{path}: {e:#}")),
                    }
                }
            });
        }
    });
    let mut report = report.into_inner().unwrap();
    report.took = start.elapsed();
    report
}

fn read_one(path: &Path, expected: &[u8], progress: &AtomicU64) -> Result<u64> {
    let mut file = std::fs::File::open(path).context("open")?;
    let mut buf = vec![0u8; MIB];
    let mut offset = 0usize;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("read at {offset}"))?;
        if n == 0 {
            break;
        }
        ensure!(
            offset + n <= expected.len(),
            "longer than the source's {} bytes",
            expected.len()
        );
        if buf[..n] != expected[offset..offset + n] {
            let at = (0..n).find(|i| buf[*i] != expected[offset + i]).unwrap_or(0);
            bail!("differs from the source at byte {}", offset + at);
        }
        offset += n;
        progress.fetch_add(n as u64, Ordering::Relaxed);
    }
    ensure!(
        offset == expected.len(),
        "{offset} bytes, the source has {}",
        expected.len()
    );
    Ok(offset as u64)
}

/// Lists the mount recursively and stats every file, so the node has the dataset's
/// metadata (listings and sizes, kept for the dataset's metadata TTL) before a count starts:
/// the counts are then about data. Returns the files seen.
fn walk(root: &Path) -> Result<usize> {
    let mut seen = 0;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {dir:?}"))? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                seen += 1;
            }
        }
    }
    Ok(seen)
}

/// Drops clean pages, so a re-read goes to the agents, not the kernel's page cache.
fn drop_page_cache() -> Result<()> {
    std::fs::write("/proc/sys/vm/drop_caches", "1").context("writing /proc/sys/vm/drop_caches")
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / MIB as f64)
}

// ---------------------------------------------------------------------------------------------
// The fixture: nodes, the S3 server behind the WAN, agents

/// Fields drop in order: agents (unmounting) before the proxy, the S3 server, the network
/// and the directory.
struct Fixture {
    agents: Vec<Option<NsAgent>>,
    proxy: DelayProxy,
    _s3: MotoS3,
    net: NodeNet,
    binary: PathBuf,
    token_file: PathBuf,
    peers_file: PathBuf,
    data: Arc<TestData>,
    dir: tempfile::TempDir,
}

impl Fixture {
    /// `nodes` network namespaces (no agents yet), moto with `layout` uploaded, the proxy on
    /// the bridge. `None` (after saying why) when this machine cannot run the test.
    async fn new(test: &str, nodes: usize, layout: Vec<(String, usize)>) -> Result<Option<Self>> {
        if let Some(why) = node_net_unavailable() {
            eprintln!("SKIPPED {test}: {why}");
            return Ok(None);
        }
        let bins = tokio::task::spawn_blocking(|| workspace_binaries(&["strata-agent"]))
            .await??;
        let dir = tempfile::Builder::new().prefix("cluster-cache-").tempdir()?;
        let net = NodeNet::create(nodes)?;
        let data = tokio::task::spawn_blocking(move || TestData::random(&layout)).await??;
        let s3 = MotoS3::start(&dir.path().join("moto.log"))?;
        let s3_addr: SocketAddr = s3
            .endpoint()
            .trim_start_matches("http://")
            .parse()
            .context("moto's address")?;
        let data = Arc::new(data);
        let upload = data.clone();
        let s3 = tokio::task::spawn_blocking(move || -> Result<MotoS3> {
            s3.create_bucket(BUCKET)?;
            for (path, body) in &upload.files {
                s3.put_object(BUCKET, path, body)?;
            }
            Ok(s3)
        })
        .await??;
        let proxy = DelayProxy::start(net.host_address().into(), s3_addr, WAN_DELAY)?;
        let token_file = dir.path().join("peer-token");
        std::fs::write(
            &token_file,
            format!("cluster-cache-test-{}\n", std::process::id()),
        )?;
        let peers_file = dir.path().join("peers");
        std::fs::write(&peers_file, "")?;
        Ok(Some(Fixture {
            agents: (0..nodes).map(|_| None).collect(),
            proxy,
            _s3: s3,
            net,
            binary: bins.join("strata-agent"),
            token_file,
            peers_file,
            data,
            dir,
        }))
    }

    fn name(i: usize) -> String {
        format!("node-{i}")
    }

    /// Writes the peers file: these nodes are the members.
    fn set_members(&self, members: &[usize]) -> Result<()> {
        let mut text = String::from("# NAME URL, written by cluster_cache.rs\n");
        for i in members {
            text.push_str(&format!(
                "{} http://{}:{}\n",
                Self::name(*i),
                self.net.node(*i).address,
                strata_e2e::AGENT_PORT
            ));
        }
        // Write whole, then rename: an agent re-reading it never sees half a file.
        let tmp = self.peers_file.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.peers_file)?;
        Ok(())
    }

    /// Starts node `i`'s agent as a member of the cluster (`--peers-file`).
    async fn start_agent(&mut self, i: usize, peer_timeout: Option<Duration>) -> Result<()> {
        let flags = ClusterFlags {
            node_name: Self::name(i),
            token_file: self.token_file.clone(),
            peers_file: Some(self.peers_file.clone()),
            peer_timeout,
        };
        self.start_agent_with(i, Some(&flags), &AgentOptions::default())
            .await
    }

    async fn start_agent_with(
        &mut self,
        i: usize,
        flags: Option<&ClusterFlags>,
        options: &AgentOptions,
    ) -> Result<()> {
        let agent = NsAgent::start(
            &self.binary,
            self.net.node(i),
            &self.dir.path().join(Self::name(i)),
            &Self::name(i),
            flags,
            options,
        )
        .await?;
        self.agents[i] = Some(agent);
        Ok(())
    }

    fn agent(&self, i: usize) -> &NsAgent {
        self.agents[i].as_ref().expect("agent not started")
    }

    fn agent_mut(&mut self, i: usize) -> &mut NsAgent {
        self.agents[i].as_mut().expect("agent not started")
    }

    /// The dataset's config: the whole bucket through the WAN proxy, with `cache` settings.
    fn dataset_config(&self, cache: serde_json::Value) -> serde_json::Value {
        json!({
            "sources": [{
                "name": "s3",
                "uri": format!("s3://{BUCKET}/"),
                "endpoint": self.proxy.endpoint(),
                "region": "us-east-1",
                "credentials": {"accessKeyId": "testing", "secretAccessKey": "testing-secret"},
            }],
            "cache": cache,
        })
    }

    /// Registers the dataset on node `i`, mounts it there and walks the mount (see [`walk`]).
    async fn add_dataset(&self, i: usize, cache: &serde_json::Value) -> Result<PathBuf> {
        let agent = self.agent(i);
        agent
            .put_dataset(NS, DATASET, &self.dataset_config(cache.clone()))
            .await?;
        let root = agent.mount(NS, DATASET).await?;
        let walked = root.clone();
        let seen = tokio::task::spawn_blocking(move || walk(&walked)).await??;
        ensure!(
            seen == self.data.files.len(),
            "node {i} lists {seen} files, the source has {}",
            self.data.files.len()
        );
        Ok(root)
    }

    /// Reads everything under `prefix` on each `(node, mount)` at once, 4 readers per node.
    async fn read_on(
        &self,
        mounts: &[(usize, PathBuf)],
        prefix: &str,
    ) -> Result<Vec<(usize, ReadReport)>> {
        let mut tasks = Vec::new();
        for (i, root) in mounts {
            let (i, root, data) = (*i, root.clone(), self.data.clone());
            let prefix = prefix.to_string();
            tasks.push(tokio::task::spawn_blocking(move || {
                (
                    i,
                    read_all(&root, &data, &prefix, 4, &AtomicU64::new(0)),
                )
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await?);
        }
        Ok(out)
    }

    async fn metrics(&self, i: usize) -> Result<Metrics> {
        Ok(self.agent(i).metrics().await?)
    }

    /// Per node: (bytes from the source, block bytes by origin peer, by origin source).
    async fn counts(&self, nodes: &[usize]) -> Result<Vec<NodeCounts>> {
        let mut out = Vec::new();
        for &i in nodes {
            let m = self.metrics(i).await?;
            out.push(NodeCounts {
                source: m.count(SOURCE_BYTES, &[]),
                from_peers: m.count(BLOCK_BYTES, &[("origin", "peer")]),
                from_source: m.count(BLOCK_BYTES, &[("origin", "source")]),
                local: m.count(BLOCK_BYTES, &[("origin", "memory")])
                    + m.count(BLOCK_BYTES, &[("origin", "disk")]),
            });
        }
        Ok(out)
    }
}

/// One agent's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct NodeCounts {
    /// `strata_source_read_bytes_total`: bytes this agent got from the source.
    source: u64,
    /// `strata_block_bytes_total{origin="peer"}`: bytes its readers got from peers.
    from_peers: u64,
    /// `strata_block_bytes_total{origin="source"}`.
    from_source: u64,
    /// `strata_block_bytes_total{origin="memory|disk"}`.
    local: u64,
}

impl NodeCounts {
    fn since(self, before: NodeCounts) -> NodeCounts {
        NodeCounts {
            source: self.source - before.source,
            from_peers: self.from_peers - before.from_peers,
            from_source: self.from_source - before.from_source,
            local: self.local - before.local,
        }
    }
}

fn deltas(after: &[NodeCounts], before: &[NodeCounts]) -> Vec<NodeCounts> {
    after.iter().zip(before).map(|(a, b)| a.since(*b)).collect()
}

fn ensure_clean(reports: &[(usize, ReadReport)], data: &TestData, prefix: &str) -> Result<()> {
    let expected = data.bytes_under(prefix);
    for (i, r) in reports {
        ensure!(
            r.errors.is_empty(),
            "node {i}: {} read errors, first: {:?}",
            r.errors.len(),
            &r.errors[..r.errors.len().min(5)]
        );
        ensure!(
            r.bytes == expected,
            "node {i} read {} bytes, expected {expected}",
            r.bytes
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The harness itself

/// The harness counts what crosses the WAN: one agent in a node (no peers) reads a dataset
/// cold through its FUSE mount; the proxy saw the data once (at least every byte, at most 2%
/// more for headers and listings), the agent's own `strata_source_read_bytes_total` says the
/// same, and a second read (page cache dropped) adds nothing at the proxy. If this fails, the
/// cluster tests' counts mean nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wan_bytes_are_counted_at_the_proxy_and_by_the_agent() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut layout = files("big", 2, 8 * MIB + 1234);
    layout.extend(files("small", 8, 100_000));
    let Some(mut f) = Fixture::new("wan_bytes_are_counted", 1, layout).await? else {
        return Ok(());
    };
    let flags = ClusterFlags {
        node_name: Fixture::name(0),
        token_file: f.token_file.clone(),
        peers_file: None,
        peer_timeout: None,
    };
    f.start_agent_with(0, Some(&flags), &AgentOptions::default())
        .await?;
    let root = f.add_dataset(0, &json!({"metadataTtl": "10m"})).await?;
    let total = f.data.total();
    let wan_before = f.proxy.bytes_to_clients();
    let reports = f.read_on(&[(0, root.clone())], "").await?;
    ensure_clean(&reports, &f.data, "")?;
    let wan = f.proxy.bytes_to_clients() - wan_before;
    let agent_source = f.metrics(0).await?.count(SOURCE_BYTES, &[]);
    eprintln!(
        "one node: data {}, WAN {} ({:.4}x), agent's source bytes {}, read in {:?}",
        mib(total),
        mib(wan),
        wan as f64 / total as f64,
        mib(agent_source),
        reports[0].1.took
    );
    ensure!(
        wan >= total && (wan as f64) <= total as f64 * WAN_OVERHEAD,
        "the proxy counted {wan} bytes for {total} bytes of data read cold"
    );
    ensure!(
        agent_source >= total && agent_source <= wan,
        "the agent counts {agent_source} source bytes, the proxy {wan}, the data is {total}"
    );
    drop_page_cache()?;
    let wan_before = f.proxy.bytes_to_clients();
    let reports = f.read_on(&[(0, root)], "").await?;
    ensure_clean(&reports, &f.data, "")?;
    ensure!(
        f.proxy.bytes_to_clients() == wan_before,
        "a warm re-read fetched {} bytes",
        f.proxy.bytes_to_clients() - wan_before
    );
    f.agent_mut(0).stop();
    Ok(())
}
