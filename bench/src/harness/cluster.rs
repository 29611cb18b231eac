//! The cluster workload: three `strata-agent serve` daemons, each in its own network namespace
//! behind a bridge, reading the same data through their FUSE mounts. The S3 server is reached
//! through the WAN proxy (listening on the bridge, counting the bytes it carries); agents reach
//! each other over the bridge directly, unshaped.
//!
//! Per data set (the seq-large object and the epoch-small files), each run measures:
//! - one node alone, cold (no peers): the time the cluster is held to (within 1.3x);
//! - three nodes with independent caches (no peers), cold, reading at once: 3x the source bytes;
//! - three nodes sharing blocks (a peers file), cold, reading at once: the time until the
//!   last one is done, and the source bytes over the data size (goal 1.0x);
//! - then a fourth read: node B restarted with an empty cache in the now warm cluster reads
//!   everything (the groups B itself owns come from the source, the rest from A and C);
//! - the peer fetch: every block of the data asked of warm node A with the agents' own peer
//!   client from inside B's namespace, as many requests in flight as an agent keeps;
//! - raw TCP from A's namespace to B's (1 and 8 connections) and over A's loopback: the
//!   ceiling the peer fetch is compared with.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt};
use rand::{Rng, SeedableRng};
use strata_agent::api::client::{AgentClient, PeerBlocksQuery};

use super::{Ctx, size_of_epoch_key};
use crate::clusternet::{
    BRIDGE_IP, ClusterNet, Registered, Resource, in_namespace, raw_tcp_transfer, register,
    unregister,
};
use crate::data::s3_store;
use crate::mounts::{System, is_mounted};
use crate::process::{ChildGuard, cpu_seconds, drop_page_caches, machine_cpu_ticks, wait_until};
use crate::proxy::DelayProxyProcess;
use crate::workloads::epoch;
use crate::{Error, Result};

pub const WORKLOAD: &str = "cluster";
const NAMESPACE: &str = "bench";
const DATASET: &str = "data";
/// The dataset's one source (its name is part of every block's identity).
const SOURCE: &str = "s3";
const NODE_NAMES: [&str; 3] = ["node-a", "node-b", "node-c"];
const API_PORT: u16 = 7070;
const METRICS_PORT: u16 = 7071;
/// Bytes of each raw TCP transfer.
const RAW_BYTES: u64 = 2 << 30;
/// The agent's default block size, and the blocks of one placement group (16 MiB).
const BLOCK: u64 = 4 << 20;
const GROUP_BLOCKS: u64 = 4;
/// Readers per node of the epoch-small files (as epoch-small's "8 readers").
const SMALL_READERS: usize = 8;

pub const CASE_ALONE: &str = "one node alone, cold";
pub const CASE_INDEPENDENT: &str = "3 nodes, independent caches, cold";
pub const CASE_CLUSTER: &str = "3 nodes, cluster cache, cold";
pub const CASE_NEW_NODE: &str = "node B restarted empty in the warm cluster";
pub const CASE_PEER_FETCH: &str = "peer fetch from warm node A to B's namespace";
pub const CASE_LOCAL_DISK: &str =
    "the same bytes from the local disk (reference copy, page cache dropped)";
pub const RAW_CASES: [&str; 3] = [
    "raw TCP, A to B, 1 connection",
    "raw TCP, A to B, 8 connections",
    "raw TCP, loopback in A, 1 connection",
];

/// The two data sets of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data {
    /// The seq-large object, read by one reader per node in 1 MiB reads.
    Large,
    /// The epoch-small files, read by 8 readers per node in a shuffled order.
    Small,
}

impl Data {
    pub const ALL: [Data; 2] = [Data::Large, Data::Small];

    /// "1024 MiB file" / "10000 files", as the report's case names start.
    pub fn label(self, spec: &crate::data::DataSpec) -> String {
        match self {
            Data::Large => format!("{} MiB file", spec.seq_large_bytes >> 20),
            Data::Small => format!("{} files", spec.epoch_files),
        }
    }

    fn bytes(self, spec: &crate::data::DataSpec) -> u64 {
        match self {
            Data::Large => spec.seq_large_bytes,
            Data::Small => spec.epoch_bytes(),
        }
    }

    /// Peer requests kept in flight by the peer fetch: the groups the agent's default
    /// 128 MiB readahead covers (8 x 16 MiB), or its directory prefetch's 32 fetches.
    fn in_flight(self) -> usize {
        match self {
            Data::Large => 8,
            Data::Small => 32,
        }
    }
}

/// What one run shares: the network, the counting WAN proxy, the node secret, the peers file.
struct Env {
    net: ClusterNet,
    proxy: DelayProxyProcess,
    _proxy_pid: Registered,
    dir: PathBuf,
    token_file: PathBuf,
    peers_file: PathBuf,
}

/// One `strata-agent serve` in its namespace, with the dataset mounted.
struct Node {
    index: usize,
    name: &'static str,
    ip: Ipv4Addr,
    netns: PathBuf,
    socket: PathBuf,
    cache: PathBuf,
    mount: Option<PathBuf>,
    child: ChildGuard,
}

impl Node {
    fn api(&self) -> AgentClient {
        AgentClient::unix(&self.socket).with_timeout(Duration::from_secs(60))
    }

    /// This agent's /metrics text.
    fn metrics(&self) -> Result<String> {
        agent_metrics(SocketAddr::from((self.ip, METRICS_PORT)), self.name)
    }

    fn mountpoint(&self) -> Result<&Path> {
        self.mount.as_deref().ok_or_else(|| Error::Config {
            field: "cluster",
            detail: format!("{} has no mount", self.name),
        })
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // SIGTERM: the agent unmounts its datasets and exits.
        let pid = self.child.pid();
        self.child.stop(Duration::from_secs(20));
        unregister(&Resource::Process(pid));
        if let Some(m) = &self.mount {
            if is_mounted(m) {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(m)
                    .output();
            }
            unregister(&Resource::Mount(m.clone()));
        }
        if self.cache.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.cache)
        {
            tracing::warn!(cache = %self.cache.display(), error = %e, "could not remove a node's cache");
        }
    }
}

/// The /metrics text of the agent `who` whose metrics port is `addr`.
pub(super) fn agent_metrics(addr: SocketAddr, who: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| Error::io(format!("metrics of {who} at {addr}"), e))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| Error::io("metrics", e))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n")
        .map_err(|e| Error::io(format!("metrics of {who}"), e))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| Error::io(format!("metrics of {who}"), e))?;
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or(text))
}

/// Sum of the samples of `name` whose labels include `label` (name="value"), if given.
pub fn metric_sum(text: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| match label {
            Some((k, v)) => l.contains(&format!("{k}=\"{v}\"")),
            None => true,
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Bytes of blocks served to a node's readers, by origin.
#[derive(Debug, Default, Clone, Copy)]
struct Origins {
    memory: f64,
    disk: f64,
    peer: f64,
    source: f64,
}

impl Origins {
    fn of(text: &str) -> Self {
        let o = |v| metric_sum(text, "strata_block_bytes_total", Some(("origin", v)));
        Origins {
            memory: o("memory"),
            disk: o("disk"),
            peer: o("peer"),
            source: o("source"),
        }
    }

    fn describe(&self) -> String {
        let mib = |b: f64| b / (1024.0 * 1024.0);
        format!(
            "source {:.0} MiB, peer {:.0} MiB, memory {:.0} MiB, disk {:.0} MiB",
            mib(self.source),
            mib(self.peer),
            mib(self.memory),
            mib(self.disk)
        )
    }
}

/// One node's read of a data set.
#[derive(Debug, Clone, Copy)]
struct NodeRead {
    secs: f64,
    bytes: u64,
    complete: bool,
}

impl Ctx<'_> {
    pub(super) fn cluster_session(&mut self, run: u32) -> Result<()> {
        let cfg = self.cfg;
        let dir = cfg.work_dir.join("cluster");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let net = ClusterNet::create(NODE_NAMES.len())?;
        let proxy = DelayProxyProcess::start_on(
            BRIDGE_IP.into(),
            self.s3_addr,
            self.delay,
            &cfg.work_dir.join("logs").join("cluster-proxy.log"),
            true,
        )?;
        // Every namespace reaches the proxy over the bridge, or nothing below can work.
        for node in &net.nodes {
            let addr = proxy.listen;
            in_namespace(&node.netns_path(), move || {
                TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                    .map(drop)
                    .map_err(|e| Error::io(format!("connecting to the WAN proxy at {addr}"), e))
            })?;
        }
        let token_file = dir.join("peer-token");
        {
            use rand::distr::{Alphanumeric, SampleString};
            write_private(
                &token_file,
                &Alphanumeric.sample_string(&mut rand::rng(), 40),
            )?;
        }
        let peers_file = dir.join("peers");
        let listing: String = net
            .nodes
            .iter()
            .zip(NODE_NAMES)
            .map(|(n, name)| format!("{name} http://{}:{API_PORT}\n", n.ip))
            .collect();
        std::fs::write(&peers_file, listing).map_err(|e| Error::io(&peers_file, e))?;
        let env = Env {
            net,
            _proxy_pid: Registered::new(Resource::Process(proxy.pid())),
            proxy,
            dir,
            token_file,
            peers_file,
        };
        for data in Data::ALL {
            if let Err(e) = self.cluster_data(&env, data, run) {
                let label = data.label(&cfg.spec);
                self.note(WORKLOAD, format!("{label}, run {run} failed: {e}"));
            }
        }
        Ok(())
    }

    /// Every case of one data set, in an order that alternates between runs so that a disk
    /// still busy with the previous case's cache writes does not always slow the same case.
    fn cluster_data(&mut self, env: &Env, data: Data, run: u32) -> Result<()> {
        let alone_first = run % 2 == 1;
        if alone_first {
            self.cluster_alone(env, data, run)?;
            self.cluster_independent(env, data, run)?;
            self.cluster_shared(env, data, run)?;
        } else {
            self.cluster_shared(env, data, run)?;
            self.cluster_independent(env, data, run)?;
            self.cluster_alone(env, data, run)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn cluster_record(
        &mut self,
        data: Data,
        case: &str,
        system: System,
        metric: &str,
        unit: &str,
        higher_is_better: bool,
        run: u32,
        value: f64,
        complete: bool,
    ) {
        let case = format!("{}, {case}", data.label(&self.cfg.spec));
        self.record(
            WORKLOAD,
            &case,
            system,
            metric,
            unit,
            higher_is_better,
            run,
            value,
            complete,
        );
    }

    /// Writes dirty pages back, lets the disk idle for the settle time, drops the page cache.
    fn cluster_settle(&self) -> Result<()> {
        nix::unistd::sync();
        std::thread::sleep(self.cfg.settle);
        drop_page_caches()
    }

    fn cluster_alone(&mut self, env: &Env, data: Data, run: u32) -> Result<()> {
        self.cluster_settle()?;
        let nodes = vec![self.start_node(env, 0, false, "alone", data)?];
        let (reads, link_bytes, _) = self.read_on(env, &nodes, data, run, CASE_ALONE)?;
        let r = reads[0];
        self.cluster_record(
            data,
            CASE_ALONE,
            System::Strata,
            "seconds",
            "s",
            false,
            run,
            r.secs,
            r.complete,
        );
        self.cluster_record(
            data,
            CASE_ALONE,
            System::Strata,
            "source bytes / data",
            "x",
            false,
            run,
            link_bytes as f64 / data.bytes(&self.cfg.spec) as f64,
            r.complete,
        );
        Ok(())
    }

    fn cluster_independent(&mut self, env: &Env, data: Data, run: u32) -> Result<()> {
        self.cluster_settle()?;
        let nodes = (0..NODE_NAMES.len())
            .map(|i| self.start_node(env, i, false, "independent", data))
            .collect::<Result<Vec<_>>>()?;
        let (reads, link_bytes, _) = self.read_on(env, &nodes, data, run, CASE_INDEPENDENT)?;
        self.record_group(data, CASE_INDEPENDENT, &reads, link_bytes, run);
        stop_all(nodes);
        Ok(())
    }

    /// The cluster cold, then node B restarted empty, the peer fetch and the raw transfers.
    fn cluster_shared(&mut self, env: &Env, data: Data, run: u32) -> Result<()> {
        let cfg = self.cfg;
        self.cluster_settle()?;
        let mut nodes = (0..NODE_NAMES.len())
            .map(|i| self.start_node(env, i, true, "cluster", data))
            .collect::<Result<Vec<_>>>()?;
        self.wait_members(&nodes)?;
        let (reads, link_bytes, origins) = self.read_on(env, &nodes, data, run, CASE_CLUSTER)?;
        self.record_group(data, CASE_CLUSTER, &reads, link_bytes, run);
        let size = data.bytes(&cfg.spec) as f64;
        let peer: f64 = origins.iter().map(|o| o.peer).sum();
        self.cluster_record(
            data,
            CASE_CLUSTER,
            System::Strata,
            "peer bytes / data",
            "x",
            false,
            run,
            peer / size,
            reads.iter().all(|r| r.complete),
        );

        // Node B again, with an empty cache, in the cluster A and C now hold everything of.
        let b = nodes.remove(1);
        drop(b);
        self.cluster_settle()?;
        let b = self.start_node(env, 1, true, "rejoined", data)?;
        nodes.insert(1, b);
        self.wait_members(&nodes)?;
        let (reads, link_bytes, origins) =
            self.read_on(env, &nodes[1..2], data, run, CASE_NEW_NODE)?;
        let r = reads[0];
        let o = origins[0];
        for (metric, unit, hib, value) in [
            ("seconds", "s", false, r.secs),
            (
                "MiB/s",
                "MiB/s",
                true,
                r.bytes as f64 / (1024.0 * 1024.0) / r.secs,
            ),
            ("peer bytes / data", "x", false, o.peer / size),
            ("source bytes / data", "x", false, link_bytes as f64 / size),
        ] {
            self.cluster_record(
                data,
                CASE_NEW_NODE,
                System::Strata,
                metric,
                unit,
                hib,
                run,
                value,
                r.complete,
            );
        }

        // The peer route alone: warm A's blocks pulled into B's namespace, no FUSE, no cache
        // write on the asking side.
        drop_page_caches()?;
        let before = env.proxy.counts()?;
        let serving = nodes[0].child.pid();
        let me = std::process::id();
        let cpu0 = (cpu_seconds(serving), cpu_seconds(me));
        let (got, secs) = self.peer_fetch(env, &nodes[0], &nodes[1], data)?;
        let cpu1 = (cpu_seconds(serving), cpu_seconds(me));
        let after = env.proxy.counts()?;
        for (metric, a, b) in [
            ("CPU s, serving agent", cpu0.0, cpu1.0),
            ("CPU s, asking client", cpu0.1, cpu1.1),
        ] {
            if let (Some(a), Some(b)) = (a, b) {
                self.cluster_record(
                    data,
                    CASE_PEER_FETCH,
                    System::Strata,
                    metric,
                    "s",
                    false,
                    run,
                    b - a,
                    true,
                );
            }
        }
        let from_source = after.downstream_bytes - before.downstream_bytes;
        tracing::info!(
            got,
            secs,
            from_source,
            "peer fetch from node-a into node-b's namespace"
        );
        self.cluster_record(
            data,
            CASE_PEER_FETCH,
            System::Strata,
            "MiB/s",
            "MiB/s",
            true,
            run,
            got as f64 / (1024.0 * 1024.0) / secs,
            got as f64 >= size,
        );
        if from_source > (size as u64) / 100 {
            self.note(
                WORKLOAD,
                format!(
                    "run {run}: during the peer fetch of the {}, {} MiB crossed the WAN link: node A did not hold everything",
                    data.label(&cfg.spec),
                    from_source >> 20
                ),
            );
        }
        stop_all(nodes);
        // What the serving node's disk gives for the same bytes: the local reference copy
        // read with the page cache dropped (A's blocks are on the same disk).
        drop_page_caches()?;
        let local = cfg.work_dir.join("local");
        let (bytes, secs) = match data {
            Data::Large => {
                let r = read_whole(
                    &local.join(cfg.spec.seq_key()),
                    cfg.spec.seq_large_bytes,
                    cfg.seq_limit,
                )?;
                (r.bytes, r.secs)
            }
            Data::Small => {
                let order = epoch::shuffled(&cfg.spec.epoch_keys(), u64::from(run));
                let r = epoch::run_epoch(
                    &local,
                    &order,
                    data.in_flight(),
                    cfg.epoch_limit,
                    size_of_epoch_key,
                )?;
                (r.bytes, r.seconds)
            }
        };
        self.cluster_record(
            data,
            CASE_LOCAL_DISK,
            System::LocalFile,
            "MiB/s",
            "MiB/s",
            true,
            run,
            bytes as f64 / (1024.0 * 1024.0) / secs,
            bytes as f64 >= size,
        );
        // The ceiling, measured right after, with the agents gone.
        let a = &env.net.nodes[0];
        let b = &env.net.nodes[1];
        for (case, streams, to) in [
            (RAW_CASES[0], 1, b),
            (RAW_CASES[1], 8, b),
            (RAW_CASES[2], 1, a),
        ] {
            let mibs =
                raw_tcp_transfer(&a.netns_path(), a.ip, &to.netns_path(), RAW_BYTES, streams)?;
            self.cluster_record(
                data,
                case,
                System::RawTcp,
                "MiB/s",
                "MiB/s",
                true,
                run,
                mibs,
                true,
            );
        }
        Ok(())
    }

    fn record_group(
        &mut self,
        data: Data,
        case: &str,
        reads: &[NodeRead],
        link_bytes: u64,
        run: u32,
    ) {
        let size = data.bytes(&self.cfg.spec) as f64;
        let all = reads.iter().all(|r| r.complete);
        let last = reads.iter().map(|r| r.secs).fold(0.0, f64::max);
        let first = reads.iter().map(|r| r.secs).fold(f64::INFINITY, f64::min);
        self.cluster_record(
            data,
            case,
            System::Strata,
            "seconds",
            "s",
            false,
            run,
            last,
            all,
        );
        self.cluster_record(
            data,
            case,
            System::Strata,
            "first node done",
            "s",
            false,
            run,
            first,
            all,
        );
        self.cluster_record(
            data,
            case,
            System::Strata,
            "source bytes / data",
            "x",
            false,
            run,
            link_bytes as f64 / size,
            all,
        );
    }

    /// Starts agent `index` in its namespace (sharing blocks with the others if `peers`),
    /// registers the dataset and mounts it.
    fn start_node(
        &self,
        env: &Env,
        index: usize,
        peers: bool,
        session: &str,
        data: Data,
    ) -> Result<Node> {
        let cfg = self.cfg;
        let name = NODE_NAMES[index];
        let net = &env.net.nodes[index];
        let dir = env.dir.join(name);
        let cache = dir.join("cache");
        if cache.exists() {
            std::fs::remove_dir_all(&cache).map_err(|e| Error::io(&cache, e))?;
        }
        let mount_root = dir.join("mnt");
        for d in [&cache, &mount_root] {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        let socket = dir.join("agent.sock");
        let listen = SocketAddr::from((net.ip, API_PORT));
        let mut c = std::process::Command::new("nsenter");
        c.arg(format!("--net={}", net.netns_path().display()))
            .arg("--")
            .arg(&cfg.programs.strata_agent)
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--advertise-url")
            .arg(format!("http://{listen}"))
            .arg("--peer-token-file")
            .arg(&env.token_file)
            .arg("--metrics-listen")
            .arg(SocketAddr::from((net.ip, METRICS_PORT)).to_string())
            .arg("--mount-root")
            .arg(&mount_root)
            .arg("--cache-dir")
            .arg(&cache)
            .arg("--memory")
            .arg(cfg.quota.memory_bytes.to_string())
            .arg("--disk")
            .arg(cfg.quota.disk_bytes.to_string())
            .env("AWS_ACCESS_KEY_ID", &self.creds.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.creds.secret_key)
            .env(
                "STRATA_LOG",
                "warn,strata_engine::cluster=info,strata_agent::serve=info",
            );
        if peers {
            c.arg("--node-name")
                .arg(name)
                .arg("--peers-file")
                .arg(&env.peers_file);
        } else {
            c.arg("--no-peers");
        }
        let log = cfg.work_dir.join("logs").join(format!(
            "cluster-{name}-{session}-{}.log",
            match data {
                Data::Large => "file",
                Data::Small => "files",
            }
        ));
        let child = ChildGuard::spawn(&format!("strata-agent serve ({name})"), c, &log)?;
        register(Resource::Process(child.pid()));
        let mut node = Node {
            index,
            name,
            ip: net.ip,
            netns: net.netns_path(),
            socket,
            cache,
            mount: None,
            child,
        };
        let api = node.api();
        wait_until(
            &format!("{name}'s agent"),
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                node.child.check_alive().map_err(|e| e.to_string())?;
                self.rt
                    .block_on(api.ready())
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        )?;
        let config = serde_json::json!({
            "sources": [{
                "name": SOURCE,
                "uri": format!("s3://{}/", crate::data::BUCKET),
                "endpoint": env.proxy.endpoint_url(),
                "region": "us-east-1",
            }],
            "cache": {"metadataTtl": "1h", "replicas": 1},
        });
        let agent_error = |what: &str, e: strata_agent::api::client::ClientError| Error::Command {
            command: format!("{what} on {name}'s agent"),
            detail: e.to_string(),
        };
        self.rt
            .block_on(api.put_dataset(NAMESPACE, DATASET, &config))
            .map_err(|e| agent_error("PUT dataset", e))?;
        let volume = self
            .rt
            .block_on(api.acquire_volume(NAMESPACE, DATASET, &format!("bench-{name}"), None))
            .map_err(|e| agent_error("acquire volume", e))?;
        register(Resource::Mount(volume.mount_path.clone()));
        node.mount = Some(volume.mount_path.clone());
        if !is_mounted(&volume.mount_path) {
            return Err(Error::Config {
                field: "cluster",
                detail: format!(
                    "{name}'s agent said the dataset is mounted at {}, but it is not in the mount table",
                    volume.mount_path.display()
                ),
            });
        }
        Ok(node)
    }

    /// Waits until every node counts all of them as members.
    fn wait_members(&self, nodes: &[Node]) -> Result<()> {
        for n in nodes {
            wait_until(
                &format!("{} to see {} members", n.name, nodes.len()),
                Duration::from_secs(20),
                Duration::from_millis(200),
                || {
                    let m = n.metrics().map_err(|e| e.to_string())?;
                    let members = metric_sum(&m, "strata_cluster_members", None);
                    if members as usize == nodes.len() {
                        Ok(())
                    } else {
                        Err(format!("{members} members"))
                    }
                },
            )?;
        }
        Ok(())
    }

    /// All of `nodes` read the whole data set at once through their mounts. Returns each
    /// node's read, the bytes the WAN link carried from the source meanwhile, and each
    /// node's blocks by origin. The bytes are checked afterwards against the local copies.
    fn read_on(
        &mut self,
        env: &Env,
        nodes: &[Node],
        data: Data,
        run: u32,
        case: &str,
    ) -> Result<(Vec<NodeRead>, u64, Vec<Origins>)> {
        let cfg = self.cfg;
        drop_page_caches()?;
        let before = env.proxy.counts()?;
        // CPU used while the nodes read: the agents, the source side (S3 server and WAN
        // proxy), this process (the readers' read calls), and the whole machine.
        let cpu = |pids: &[u32]| pids.iter().filter_map(|p| cpu_seconds(*p)).sum::<f64>();
        let agents: Vec<u32> = nodes.iter().map(|n| n.child.pid()).collect();
        let source = [self.s3_pid, env.proxy.pid()];
        let me = [std::process::id()];
        let cpu_before = (cpu(&agents), cpu(&source), cpu(&me), machine_cpu_ticks());
        let barrier = Barrier::new(nodes.len());
        let files = cfg.spec.epoch_keys();
        let reads: Vec<Result<NodeRead>> = std::thread::scope(|s| {
            let handles: Vec<_> = nodes
                .iter()
                .map(|n| {
                    let barrier = &barrier;
                    let files = &files;
                    s.spawn(move || -> Result<NodeRead> {
                        let mount = n.mountpoint()?;
                        barrier.wait();
                        match data {
                            Data::Large => read_whole(
                                &mount.join(cfg.spec.seq_key()),
                                cfg.spec.seq_large_bytes,
                                cfg.seq_limit,
                            ),
                            Data::Small => {
                                // Every node its own order, as data-parallel loaders do.
                                let order = epoch::shuffled(
                                    files,
                                    u64::from(run) * 16 + n.index as u64 + 100,
                                );
                                let r = epoch::run_epoch(
                                    mount,
                                    &order,
                                    SMALL_READERS,
                                    cfg.epoch_limit * 3,
                                    size_of_epoch_key,
                                )?;
                                Ok(NodeRead {
                                    secs: r.seconds,
                                    bytes: r.bytes,
                                    complete: r.complete,
                                })
                            }
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("reader thread panicked"))
                .collect()
        });
        let after = env.proxy.counts()?;
        let cpu_after = (cpu(&agents), cpu(&source), cpu(&me), machine_cpu_ticks());
        let reads = reads.into_iter().collect::<Result<Vec<_>>>()?;
        let complete = reads.iter().all(|r| r.complete);
        for (metric, value) in [
            ("CPU s, agents", cpu_after.0 - cpu_before.0),
            ("CPU s, S3 server + proxy", cpu_after.1 - cpu_before.1),
            ("CPU s, readers", cpu_after.2 - cpu_before.2),
        ] {
            self.cluster_record(
                data,
                case,
                System::Strata,
                metric,
                "s",
                false,
                run,
                value,
                complete,
            );
        }
        if let (Some((b0, t0)), Some((b1, t1))) = (cpu_before.3, cpu_after.3)
            && t1 > t0
        {
            let ours = (cpu_after.0 - cpu_before.0)
                + (cpu_after.1 - cpu_before.1)
                + (cpu_after.2 - cpu_before.2);
            self.cluster_record(
                data,
                case,
                System::Strata,
                "CPU s, other processes",
                "s",
                false,
                run,
                ((b1 - b0) as f64 / 100.0 - ours).max(0.0),
                complete,
            );
            self.cluster_record(
                data,
                case,
                System::Strata,
                "machine CPU busy",
                "%",
                false,
                run,
                (b1 - b0) as f64 / (t1 - t0) as f64 * 100.0,
                complete,
            );
        }
        let mut origins = Vec::new();
        for (n, r) in nodes.iter().zip(&reads) {
            let o = Origins::of(&n.metrics()?);
            tracing::info!(
                node = n.name,
                secs = r.secs,
                mib = r.bytes >> 20,
                complete = r.complete,
                "{}",
                o.describe()
            );
            origins.push(o);
        }
        for n in nodes {
            self.verify_sample(n, data, run)?;
        }
        Ok((
            reads,
            after.downstream_bytes - before.downstream_bytes,
            origins,
        ))
    }

    /// Compares a sample of what `node`'s mount serves with the local copies: 16 random
    /// 1 MiB ranges of the large object, or 50 random whole files.
    fn verify_sample(&self, node: &Node, data: Data, run: u32) -> Result<()> {
        let cfg = self.cfg;
        let mount = node.mountpoint()?;
        let local = cfg.work_dir.join("local");
        let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(run) << 8 | node.index as u64);
        let mismatch = |what: String| Error::Parse {
            what,
            detail: format!("{} served other bytes than the local copy", node.name),
        };
        match data {
            Data::Large => {
                let key = cfg.spec.seq_key();
                let size = cfg.spec.seq_large_bytes;
                let open = |p: &Path| std::fs::File::open(p).map_err(|e| Error::io(p, e));
                let (m, l) = (open(&mount.join(&key))?, open(&local.join(&key))?);
                let len = (1u64 << 20).min(size);
                let (mut a, mut b) = (vec![0u8; len as usize], vec![0u8; len as usize]);
                for _ in 0..16 {
                    let at = rng.random_range(0..=size - len);
                    m.read_exact_at(&mut a, at)
                        .map_err(|e| Error::io(mount.join(&key), e))?;
                    l.read_exact_at(&mut b, at)
                        .map_err(|e| Error::io(local.join(&key), e))?;
                    if a != b {
                        return Err(mismatch(format!("{key} at {at}")));
                    }
                }
            }
            Data::Small => {
                let files = cfg.spec.epoch_keys();
                for _ in 0..50 {
                    let key = &files[rng.random_range(0..files.len())];
                    let read = |p: PathBuf| std::fs::read(&p).map_err(|e| Error::io(p, e));
                    if read(mount.join(key))? != read(local.join(key))? {
                        return Err(mismatch(key.clone()));
                    }
                }
            }
        }
        Ok(())
    }

    /// The peer requests for every block of the data set, one per placement group.
    fn peer_queries(&self, data: Data, from: &str) -> Result<Vec<PeerBlocksQuery>> {
        let cfg = self.cfg;
        let store = s3_store(&self.endpoint, &self.creds)?;
        let metas: Vec<object_store::ObjectMeta> = match data {
            Data::Large => {
                let key = cfg.spec.seq_key();
                vec![
                    self.rt
                        .block_on(store.head(&object_store::path::Path::from(key.as_str())))
                        .map_err(|e| Error::store("head", &key, &e))?,
                ]
            }
            Data::Small => {
                let prefix = object_store::path::Path::from(cfg.spec.epoch_prefix());
                self.rt
                    .block_on(store.list(Some(&prefix)).try_collect::<Vec<_>>())
                    .map_err(|e| Error::store("list", prefix.as_ref(), &e))?
            }
        };
        let mut out = Vec::new();
        for m in metas {
            let key = m.location.to_string();
            let etag = m.e_tag.clone().ok_or_else(|| Error::Parse {
                what: key.clone(),
                detail: "the S3 server gave no ETag".into(),
            })?;
            let blocks = m.size.div_ceil(BLOCK);
            let mut first = 0;
            while first < blocks {
                let count = (GROUP_BLOCKS - first % GROUP_BLOCKS).min(blocks - first);
                out.push(PeerBlocksQuery {
                    path: format!("/{key}"),
                    source: SOURCE.into(),
                    key: key.clone(),
                    etag: etag.clone(),
                    size: m.size,
                    mtime: m.last_modified.timestamp_millis(),
                    block_size: BLOCK,
                    first,
                    count,
                    from: from.into(),
                    wait: false,
                });
                first += count;
            }
        }
        Ok(out)
    }

    /// Every block of the data set asked of `from` over its peer API, from inside `to`'s
    /// namespace, `data.in_flight()` requests at once. Returns (bytes, seconds).
    fn peer_fetch(&self, env: &Env, from: &Node, to: &Node, data: Data) -> Result<(u64, f64)> {
        let queries = self.peer_queries(data, to.name)?;
        let token =
            std::fs::read_to_string(&env.token_file).map_err(|e| Error::io(&env.token_file, e))?;
        let url = format!("http://{}:{API_PORT}", from.ip);
        let in_flight = data.in_flight();
        in_namespace(&to.netns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::io("a runtime for the peer fetch", e))?;
            let failed = |e: strata_agent::api::client::ClientError| Error::Command {
                command: format!("peer fetch from {url}"),
                detail: e.to_string(),
            };
            rt.block_on(async {
                let client = AgentClient::from_url(&url, Some(token.trim().to_string()))
                    .map_err(failed)?
                    .with_timeout(Duration::from_secs(120));
                let start = Instant::now();
                let total = futures::stream::iter(queries)
                    .map(|q| {
                        let client = client.clone();
                        async move {
                            let mut body = client.peer_blocks(NAMESPACE, DATASET, &q).await?;
                            let mut n = 0u64;
                            while let Some(chunk) = body.next_chunk().await {
                                n += chunk?.len() as u64;
                            }
                            Ok(n)
                        }
                    })
                    .buffer_unordered(in_flight)
                    .try_fold(0u64, |a, n| async move { Ok(a + n) })
                    .await
                    .map_err(failed)?;
                Ok((total, start.elapsed().as_secs_f64()))
            })
        })
    }
}

/// Stops the agents together (SIGTERM to all, then each is waited for).
fn stop_all(nodes: Vec<Node>) {
    for n in &nodes {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(n.child.pid() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    drop(nodes);
}

/// Reads `path` from start to end in 1 MiB reads (stops starting reads after `limit`).
fn read_whole(path: &Path, size: u64, limit: Duration) -> Result<NodeRead> {
    let start = Instant::now();
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    while start.elapsed() < limit {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
    }
    Ok(NodeRead {
        secs: start.elapsed().as_secs_f64(),
        bytes,
        complete: bytes == size,
    })
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(text.as_bytes()).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_by_name_and_label() {
        let text = "# HELP strata_block_bytes_total x\n\
            strata_block_bytes_total{origin=\"peer\"} 100\n\
            strata_block_bytes_total{origin=\"source\"} 7\n\
            strata_block_bytes_total_extra{origin=\"peer\"} 5\n\
            strata_cluster_members 3\n";
        assert_eq!(
            metric_sum(text, "strata_block_bytes_total", Some(("origin", "peer"))),
            100.0
        );
        assert_eq!(metric_sum(text, "strata_block_bytes_total", None), 107.0);
        assert_eq!(metric_sum(text, "strata_cluster_members", None), 3.0);
    }
}
