//! Several nodes on one machine for the cluster workload: a network namespace per node, each
//! joined by a veth pair to a bridge in the root namespace (where the S3 server's WAN proxy
//! listens), so node-to-node traffic crosses a real (unshaped) link and never the proxy.
//!
//! Also the raw TCP transfer between two namespaces (the ceiling a peer read is held to),
//! and a last-resort cleanup on SIGINT/SIGTERM: every namespace, bridge, agent and mount the
//! workload makes is registered, so an interrupted run leaves none behind.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};

use crate::netshape::{in_ns, ip};
use crate::process::run_checked;
use crate::{Error, Result};

/// 10.78.0.0/24: no other code here uses it (the e2e cluster test's examples use 10.77).
/// `create` refuses to run if the range is already in use on this machine.
const RANGE_PREFIX: &str = "10.78.0.";
/// The bridge's own address in the root namespace (where the WAN proxy listens).
pub const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);

/// Address of node `i` (0-based).
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 78, 0, 11 + i as u8)
}
/// One node's network namespace.
#[derive(Debug, Clone)]
pub struct NetNode {
    pub namespace: String,
    pub ip: Ipv4Addr,
    host_if: String,
}

impl NetNode {
    /// `/run/netns/NAME`, for `nsenter --net=` and `setns`.
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.namespace)
    }
}

/// The bridge and the nodes' namespaces; removed on drop.
#[derive(Debug)]
pub struct ClusterNet {
    bridge: String,
    pub nodes: Vec<NetNode>,
}

impl ClusterNet {
    /// Creates bridge `sbbr<pid>` with [`BRIDGE_IP`] and `n` namespaces
    /// `strata-bench-<pid>-n<i>` at [`node_ip`]`(i)`.
    pub fn create(n: usize) -> Result<Self> {
        let mut show = Command::new("ip");
        show.args(["-o", "addr"]);
        if let Some(line) = run_checked(show)?
            .lines()
            .find(|l| l.contains(&format!(" {RANGE_PREFIX}")))
        {
            return Err(Error::Config {
                field: "workloads",
                detail: format!(
                    "the cluster workload's address range {RANGE_PREFIX}0/24 is already in use here ({}); a run that was SIGKILLed leaves its bridge (`ip link del sbbrNNNN`) and namespaces (`ip netns del strata-bench-NNNN-nI`) behind",
                    line.split_whitespace()
                        .take(4)
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            });
        }
        let pid = std::process::id() % 100_000;
        let bridge = format!("sbbr{pid}");
        ip(&["link", "add", "name", &bridge, "type", "bridge"])?;
        register(Resource::Bridge(bridge.clone()));
        // From here on, Drop removes whatever part was made.
        let mut net = Self {
            bridge: bridge.clone(),
            nodes: Vec::new(),
        };
        ip(&["addr", "add", &format!("{BRIDGE_IP}/24"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..n {
            let namespace = format!("strata-bench-{pid}-n{i}");
            let host_if = format!("sbc{pid}h{i}");
            let ns_if = format!("sbc{pid}n{i}");
            ip(&["netns", "add", &namespace])?;
            register(Resource::Namespace(namespace.clone()));
            let node = NetNode {
                namespace: namespace.clone(),
                ip: node_ip(i),
                host_if: host_if.clone(),
            };
            net.nodes.push(node.clone());
            ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
            ])?;
            register(Resource::Link(host_if.clone()));
            ip(&["link", "set", &ns_if, "netns", &namespace])?;
            ip(&["link", "set", &host_if, "master", &bridge])?;
            ip(&["link", "set", &host_if, "up"])?;
            in_ns(&namespace, &["ip", "link", "set", "lo", "up"])?;
            in_ns(
                &namespace,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/24", node.ip),
                    "dev",
                    &ns_if,
                ],
            )?;
            in_ns(&namespace, &["ip", "link", "set", &ns_if, "up"])?;
        }
        tracing::info!(%bridge, nodes = n, "cluster network is up");
        Ok(net)
    }
}

impl Drop for ClusterNet {
    fn drop(&mut self) {
        for node in &self.nodes {
            let _ = ip(&["link", "del", &node.host_if]);
            unregister(&Resource::Link(node.host_if.clone()));
            if let Err(e) = ip(&["netns", "del", &node.namespace]) {
                tracing::warn!(namespace = %node.namespace, error = %e, "could not remove network namespace");
            }
            unregister(&Resource::Namespace(node.namespace.clone()));
        }
        if let Err(e) = ip(&["link", "del", &self.bridge]) {
            tracing::warn!(bridge = %self.bridge, error = %e, "could not remove bridge");
        }
        unregister(&Resource::Bridge(self.bridge.clone()));
    }
}

/// Moves the calling thread into the network namespace at `netns` (sockets it creates from
/// then on live there; threads it starts inherit it).
pub fn enter(netns: &Path) -> Result<()> {
    let f = std::fs::File::open(netns).map_err(|e| Error::io(netns, e))?;
    setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| Error::io(netns, e.into()))
}

/// Runs `f` on a new thread inside the network namespace at `netns`.
pub fn in_namespace<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        enter(&netns)?;
        f()
    })
    .join()
    .map_err(|_| Error::Parse {
        what: "a thread in a network namespace".into(),
        detail: "panicked".into(),
    })?
}

/// Plain TCP from memory to memory: `bytes` in total over `streams` connections, sent from a
/// listener in namespace `from` (at `from_ip`) to readers in namespace `to` that throw the
/// bytes away. MiB/s as the receivers saw it (first connect to last byte).
pub fn raw_tcp_transfer(
    from: &Path,
    from_ip: Ipv4Addr,
    to: &Path,
    bytes: u64,
    streams: usize,
) -> Result<f64> {
    const CHUNK: usize = 1 << 20;
    let per_stream = bytes / streams as u64;
    let listener = {
        let addr = SocketAddr::from((from_ip, 0));
        in_namespace(from, move || {
            TcpListener::bind(addr).map_err(|e| Error::io(format!("binding {addr}"), e))
        })?
    };
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("raw transfer listener", e))?;
    let sender = std::thread::spawn(move || -> Result<()> {
        let mut writers = Vec::new();
        for _ in 0..streams {
            let (mut s, _) = listener
                .accept()
                .map_err(|e| Error::io("raw transfer accept", e))?;
            writers.push(std::thread::spawn(move || -> std::io::Result<()> {
                let buf = vec![0x5au8; CHUNK];
                let mut left = per_stream;
                while left > 0 {
                    let n = left.min(CHUNK as u64) as usize;
                    s.write_all(&buf[..n])?;
                    left -= n as u64;
                }
                s.shutdown(std::net::Shutdown::Write)
            }));
        }
        for w in writers {
            w.join()
                .map_err(|_| Error::io("raw transfer sender", std::io::Error::other("panicked")))?
                .map_err(|e| Error::io("raw transfer send", e))?;
        }
        Ok(())
    });
    let to = to.to_path_buf();
    let (received, secs) = in_namespace(&to, move || {
        let start = Instant::now();
        let readers: Vec<_> = (0..streams)
            .map(|_| {
                std::thread::spawn(move || -> std::io::Result<u64> {
                    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                    let mut buf = vec![0u8; CHUNK];
                    let mut got = 0u64;
                    loop {
                        let n = s.read(&mut buf)?;
                        if n == 0 {
                            return Ok(got);
                        }
                        got += n as u64;
                    }
                })
            })
            .collect();
        let mut total = 0;
        for r in readers {
            total += r
                .join()
                .map_err(|_| Error::io("raw transfer reader", std::io::Error::other("panicked")))?
                .map_err(|e| Error::io(format!("raw transfer from {addr}"), e))?;
        }
        Ok((total, start.elapsed().as_secs_f64()))
    })?;
    sender.join().map_err(|_| Error::Parse {
        what: "raw transfer sender".into(),
        detail: "panicked".into(),
    })??;
    if received != per_stream * streams as u64 {
        return Err(Error::Parse {
            what: "raw transfer".into(),
            detail: format!(
                "received {received} of {} bytes",
                per_stream * streams as u64
            ),
        });
    }
    Ok(received as f64 / (1024.0 * 1024.0) / secs)
}

/// Something the cluster workload made that must not outlive the harness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Bridge(String),
    Link(String),
    Namespace(String),
    /// A process (an agent): SIGTERM, then SIGKILL.
    Process(u32),
    /// A FUSE mount point: lazily unmounted.
    Mount(PathBuf),
}

static REGISTRY: Mutex<Vec<Resource>> = Mutex::new(Vec::new());

pub fn register(r: Resource) {
    REGISTRY.lock().expect("cleanup registry").push(r);
}

pub fn unregister(r: &Resource) {
    REGISTRY
        .lock()
        .expect("cleanup registry")
        .retain(|x| x != r);
}

/// Registered while alive: a resource that is unregistered when this is dropped.
#[derive(Debug)]
pub struct Registered(Resource);

impl Registered {
    pub fn new(r: Resource) -> Self {
        register(r.clone());
        Self(r)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        unregister(&self.0);
    }
}

/// On SIGINT or SIGTERM: stops the registered agents, unmounts their mounts, removes the
/// namespaces and the bridge, and exits (Drop does the same on every ordinary way out).
pub fn cleanup_on_signal(rt: &tokio::runtime::Runtime) {
    rt.spawn(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::warn!("interrupted: removing the cluster's agents, mounts and namespaces");
        cleanup_now();
        std::process::exit(130);
    });
}

fn cleanup_now() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let resources = std::mem::take(&mut *REGISTRY.lock().expect("cleanup registry"));
    let pids: Vec<u32> = resources
        .iter()
        .filter_map(|r| match r {
            Resource::Process(p) => Some(*p),
            _ => None,
        })
        .collect();
    for &p in &pids {
        let _ = kill(Pid::from_raw(p as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    for &p in &pids {
        let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
    }
    for r in &resources {
        if let Resource::Mount(m) = r
            && crate::mounts::is_mounted(m)
        {
            let _ = Command::new("umount").arg("-l").arg(m).output();
        }
    }
    for r in &resources {
        if let Resource::Link(l) = r {
            let _ = ip(&["link", "del", l]);
        }
    }
    for r in &resources {
        if let Resource::Namespace(n) = r {
            let _ = ip(&["netns", "del", n]);
        }
    }
    for r in &resources {
        if let Resource::Bridge(b) = r {
            let _ = ip(&["link", "del", b]);
        }
    }
}
