//! An optional bandwidth cap: a veth pair into a network namespace that the harness creates
//! (the S3 server runs inside it), with `tc tbf` on both ends. Removed again on drop.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use crate::Result;
use crate::process::run_checked;

/// TEST-NET-2 (RFC 5737) addresses: they only ever exist on this veth pair. (Not TEST-NET-1:
/// some sandboxes give their own eth0 a 192.0.2.x address.) `create` refuses to run if the
/// range is already in use on this machine.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const NAMESPACE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const RANGE_PREFIX: &str = "198.51.100.";

#[derive(Debug)]
pub struct ShapedLink {
    pub namespace: String,
    host_if: String,
    pub rate_mbit: u32,
}

/// Runs `ip ARGS` (also for the cluster workload's namespaces, `clusternet`).
pub(crate) fn ip(args: &[&str]) -> Result<()> {
    let mut c = Command::new("ip");
    c.args(args);
    run_checked(c).map(drop)
}

/// Runs `ip netns exec NS ARGS`.
pub(crate) fn in_ns(ns: &str, args: &[&str]) -> Result<()> {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    run_checked(c).map(drop)
}

fn tbf_args(dev: &str, rate_mbit: u32) -> Vec<String> {
    // Burst: 4 ms worth of bytes at the rate, at least 64 KiB (a GSO super-packet must fit).
    let burst = (u64::from(rate_mbit) * 1_000_000 / 8 / 250).max(64 * 1024);
    vec![
        "qdisc".into(),
        "replace".into(),
        "dev".into(),
        dev.into(),
        "root".into(),
        "tbf".into(),
        "rate".into(),
        format!("{rate_mbit}mbit"),
        "burst".into(),
        burst.to_string(),
        "latency".into(),
        "50ms".into(),
    ]
}

impl ShapedLink {
    /// Creates namespace `strata-bench-<pid>` with the far end of a veth pair, capped at
    /// `rate_mbit` in each direction.
    pub fn create(rate_mbit: u32) -> Result<Self> {
        let mut show = Command::new("ip");
        show.args(["-o", "addr"]);
        if let Some(line) = run_checked(show)?
            .lines()
            .find(|l| l.contains(&format!(" {RANGE_PREFIX}")))
        {
            return Err(crate::Error::Config {
                field: "bandwidth-mbit",
                detail: format!(
                    "the shaped link's address range {RANGE_PREFIX}0/24 is already in use here ({}); remove that address or run without --bandwidth-mbit",
                    line.split_whitespace()
                        .take(4)
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            });
        }
        let pid = std::process::id();
        let namespace = format!("strata-bench-{pid}");
        let host_if = format!("sbh{}", pid % 100_000);
        let ns_if = format!("sbn{}", pid % 100_000);
        ip(&["netns", "add", &namespace])?;
        // From here on, Drop cleans up whatever part was made.
        let link = Self {
            namespace: namespace.clone(),
            host_if: host_if.clone(),
            rate_mbit,
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", &namespace])?;
        ip(&["addr", "add", &format!("{HOST_IP}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        in_ns(&namespace, &["ip", "link", "set", "lo", "up"])?;
        in_ns(
            &namespace,
            &[
                "ip",
                "addr",
                "add",
                &format!("{NAMESPACE_IP}/30"),
                "dev",
                &ns_if,
            ],
        )?;
        in_ns(&namespace, &["ip", "link", "set", &ns_if, "up"])?;
        let mut tc = Command::new("tc");
        tc.args(tbf_args(&host_if, rate_mbit));
        run_checked(tc)?;
        let mut tc = Command::new("ip");
        tc.args(["netns", "exec", &namespace, "tc"])
            .args(tbf_args(&ns_if, rate_mbit));
        run_checked(tc)?;
        tracing::info!(%namespace, rate_mbit, "bandwidth-capped veth link is up");
        Ok(link)
    }

    pub fn server_ip(&self) -> IpAddr {
        IpAddr::V4(NAMESPACE_IP)
    }
}

impl Drop for ShapedLink {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both; then the namespace.
        let _ = ip(&["link", "del", &self.host_if]);
        if let Err(e) = ip(&["netns", "del", &self.namespace]) {
            tracing::warn!(namespace = %self.namespace, error = %e, "could not remove network namespace");
        }
    }
}
