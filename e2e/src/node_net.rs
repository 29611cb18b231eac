//! Several nodes on one machine: a Linux bridge in the root network namespace and one network
//! namespace per node, each joined to the bridge by a veth pair and given its own address, so
//! programs started in a node ([`NetNode::command`]) talk to each other and to servers in the
//! root namespace over real TCP between real addresses.
//!
//! Only the network is separate: `nsenter --net` keeps the mount namespace (unlike
//! `ip netns exec`, which makes a new one), so an agent's FUSE mounts in a node are visible to
//! the test's readers in the root namespace.
//!
//! Addresses: the bridge is `10.77.<k>.1/24` and node `i` is `10.77.<k>.<i + 2>`, where `k` is
//! the first subnet no interface on this machine uses yet. Namespaces are named
//! `strata-ct-<pid>-<k>-<i>`, interfaces carry the alias `strata-ct-<pid>`: everything is removed
//! on drop, and [`NodeNet::create`] first removes what a test process that died (SIGKILL, a
//! crashed runner) left behind.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use crate::{Error, Result};

/// Prefix of every namespace this module creates; the creating process's pid follows.
const NAMESPACE_PREFIX: &str = "strata-ct-";
/// First two octets of every subnet this module uses (RFC 1918, unlikely to be routed here).
const SUBNET_PREFIX: [u8; 2] = [10, 77];
/// Subnets this process has taken (a `NodeNet` per test, tests may run in parallel).
static TAKEN: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Why the node tests cannot run here (not root, a tool or `/dev/fuse` missing), if so.
pub fn node_net_unavailable() -> Option<String> {
    if !is_root() {
        return Some("needs root (network namespaces, FUSE)".into());
    }
    for tool in ["ip", "nsenter"] {
        if which(tool).is_none() {
            return Some(format!(
                "needs `{tool}` (apt-get install iproute2 util-linux)"
            ));
        }
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("needs /dev/fuse (apt-get install fuse3)".into());
    }
    None
}

fn is_root() -> bool {
    // The effective uid is the second field of `Uid:`.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Runs `ip args...`, failing with its stderr.
fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Error::NodeNet(format!("running ip: {e}")))?;
    if !out.status.success() {
        return Err(Error::NodeNet(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One node: a network namespace with an address on the bridge.
#[derive(Debug)]
pub struct NetNode {
    /// Position in the [`NodeNet`], from 0.
    pub index: usize,
    /// The namespace's name (`/run/netns/<namespace>`).
    pub namespace: String,
    /// The node's address on the bridge.
    pub address: Ipv4Addr,
    /// The root-namespace end of the node's veth pair.
    host_if: String,
}

impl NetNode {
    /// `program` to be run inside this node's network namespace (only the network: mounts,
    /// pids and files are the test's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.namespace))
            .arg("--")
            .arg(program);
        command
    }

    /// Connects or cuts the node's link to the bridge. A cut link drops packets silently, as
    /// a dead or partitioned machine does: connections to it time out instead of being
    /// refused.
    pub fn set_link(&self, up: bool) -> Result<()> {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }]).map(drop)
    }
}

/// A bridge and its nodes; removed on drop.
#[derive(Debug)]
pub struct NodeNet {
    bridge: String,
    subnet: u8,
    nodes: Vec<NetNode>,
}

impl NodeNet {
    /// Creates the bridge and `count` (1 to 200) nodes. Removes leftovers of dead test
    /// processes first.
    pub fn create(count: usize) -> Result<NodeNet> {
        if !(1..=200).contains(&count) {
            return Err(Error::NodeNet(format!("{count} nodes: 1 to 200")));
        }
        remove_leftovers();
        let pid = std::process::id();
        let subnet = take_subnet()?;
        // Interface names have at most 15 bytes: `sct` + 5 digits + `b|h` + subnet + `n` + index.
        let tag = pid % 100_000;
        let alias = format!("{NAMESPACE_PREFIX}{pid}");
        let mut net = NodeNet {
            bridge: format!("sct{tag}b{subnet}"),
            subnet,
            nodes: Vec::new(),
        };
        // From here on, Drop removes whatever part was made.
        ip(&[
            "link",
            "add",
            &net.bridge,
            "type",
            "bridge",
            // Frames between the nodes are bridged, not routed: keep them out of the host's
            // iptables (br_netfilter would run them through a FORWARD chain that a container
            // runtime or kube-proxy on this machine may set to DROP).
            "nf_call_iptables",
            "0",
        ])?;
        ip(&["link", "set", &net.bridge, "alias", &alias])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.host_address()),
            "dev",
            &net.bridge,
        ])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        for index in 0..count {
            let namespace = format!("{NAMESPACE_PREFIX}{pid}-{subnet}-{index}");
            let host_if = format!("sct{tag}h{subnet}n{index}");
            ip(&["netns", "add", &namespace])?;
            let node = NetNode {
                index,
                namespace,
                address: net.address(index + 2),
                host_if,
            };
            let ns = node.namespace.clone();
            net.nodes.push(node);
            let node = net.nodes.last().expect("just pushed");
            // The node's end is `eth0` in its namespace, the other end joins the bridge.
            ip(&[
                "link",
                "add",
                &node.host_if,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns,
            ])?;
            ip(&["link", "set", &node.host_if, "alias", &alias])?;
            ip(&["link", "set", &node.host_if, "master", &net.bridge])?;
            ip(&["link", "set", &node.host_if, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", node.address),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }

    /// The bridge's address: how the nodes reach servers in the root namespace.
    pub fn host_address(&self) -> Ipv4Addr {
        self.address(1)
    }

    pub fn nodes(&self) -> &[NetNode] {
        &self.nodes
    }

    pub fn node(&self, index: usize) -> &NetNode {
        &self.nodes[index]
    }

    fn address(&self, host: usize) -> Ipv4Addr {
        let [a, b] = SUBNET_PREFIX;
        Ipv4Addr::new(a, b, self.subnet, host as u8)
    }
}

impl Drop for NodeNet {
    fn drop(&mut self) {
        // A namespace goes when its last process has exited; its veth pair goes with it.
        for node in &self.nodes {
            let _ = ip(&["link", "del", &node.host_if]);
            let _ = ip(&["netns", "del", &node.namespace]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
        TAKEN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| *s != self.subnet);
    }
}

/// The first `10.77.<k>.0/24` no interface here has an address in and this process has not
/// taken.
fn take_subnet() -> Result<u8> {
    let addresses = ip(&["-o", "-4", "addr", "show"])?;
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    let [a, b] = SUBNET_PREFIX;
    let subnet = (0..=255u8)
        .find(|k| !taken.contains(k) && !addresses.contains(&format!(" {a}.{b}.{k}.")))
        .ok_or_else(|| Error::NodeNet(format!("every subnet {a}.{b}.*.0/24 is in use")))?;
    taken.push(subnet);
    Ok(subnet)
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the namespaces and interfaces of test processes that are gone, and kills what
/// still runs in those namespaces (agents a killed test process left behind).
fn remove_leftovers() {
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(NAMESPACE_PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if pid_alive(pid) {
                continue;
            }
            for orphan in ip(&["netns", "pids", &name]).unwrap_or_default().lines() {
                let _ = Command::new("kill").args(["-KILL", orphan.trim()]).status();
            }
            let _ = ip(&["netns", "del", &name]);
        }
    }
    // `ip -o link` lines end with `alias <alias>` when one is set.
    for line in ip(&["-o", "link", "show"]).unwrap_or_default().lines() {
        let Some(pid) = line
            .split(&format!("alias {NAMESPACE_PREFIX}"))
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        // `3: name@if2: <...>` or `3: name: <...>`
        if let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next()) {
            let _ = ip(&["link", "del", name]);
        }
    }
}
