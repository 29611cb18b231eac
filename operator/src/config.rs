//! The operator's settings: one clap-derived struct, every flag also an
//! environment variable (the Helm chart sets these).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Toleration;

use crate::{Error, Result};

/// All operator settings.
#[derive(clap::Args, Clone, Debug)]
pub struct OperatorConfig {
    /// The Strata namespace: holds the datasets Secret, the agent token, the
    /// node DaemonSet and (by default) the leader Lease.
    #[arg(long, env = "STRATA_NAMESPACE", default_value = "strata-system")]
    pub namespace: String,

    /// Only reconcile Datasets and CachePolicies in this namespace (empty:
    /// every namespace). StrataNodes are cluster-scoped and always watched.
    #[arg(long, env = "STRATA_WATCH_NAMESPACE", default_value = "")]
    pub watch_namespace: String,

    /// This replica's name in the leader Lease and in events (the pod name).
    #[arg(long, env = "STRATA_OPERATOR_IDENTITY", default_value_t = default_identity())]
    pub identity: String,

    /// Name of the coordination.k8s.io Lease the replicas compete for.
    #[arg(long, env = "STRATA_LEASE_NAME", default_value = "strata-operator")]
    pub lease_name: String,

    /// Namespace of the Lease; empty means --namespace.
    #[arg(long, env = "STRATA_LEASE_NAMESPACE", default_value = "")]
    pub lease_namespace: String,

    /// How long a leader's Lease is valid without renewal; a standby takes
    /// over at most this long after the leader dies.
    #[arg(long, env = "STRATA_LEASE_DURATION", default_value = "15s", value_parser = strata_crds::parse_duration)]
    pub lease_duration: Duration,

    /// Where /metrics and /healthz listen.
    #[arg(long, env = "STRATA_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// How often every Dataset is reconciled even without changes (re-lists
    /// sources, refreshes lastSyncTime).
    #[arg(long, env = "STRATA_RESYNC_INTERVAL", default_value = "5m", value_parser = strata_crds::parse_duration)]
    pub resync_interval: Duration,

    /// How long one source check (connect and first listing page) may take
    /// before the source counts as unreachable.
    #[arg(long, env = "STRATA_SOURCE_CHECK_TIMEOUT", default_value = "10s", value_parser = strata_crds::parse_duration)]
    pub source_check_timeout: Duration,

    /// How long a full listing (for totalBytes and files) may take; a source
    /// larger than this can list stays reachable but without a size.
    #[arg(long, env = "STRATA_LISTING_TIMEOUT", default_value = "60s", value_parser = strata_crds::parse_duration)]
    pub listing_timeout: Duration,

    /// A StrataNode whose heartbeat is older than this is ignored in sums.
    #[arg(long, env = "STRATA_NODE_STALE_AFTER", default_value = "3m", value_parser = strata_crds::parse_duration)]
    pub node_stale_after: Duration,

    /// How long a deleted Dataset's finalizer waits for the agents to stop
    /// reporting it before removing the volumes anyway.
    #[arg(long, env = "STRATA_RELEASE_TIMEOUT", default_value = "60s", value_parser = strata_crds::parse_duration)]
    pub release_timeout: Duration,

    /// Whether this operator creates the node DaemonSet and the CSIDriver
    /// (off when they are installed another way).
    #[arg(long, env = "STRATA_MANAGE_NODES", default_value_t = true, action = clap::ArgAction::Set)]
    pub manage_nodes: bool,

    /// Name of the operator's own Deployment in --namespace; when set, the
    /// DaemonSet and the Secrets the operator makes are owned by it.
    #[arg(long, env = "STRATA_OWNER_DEPLOYMENT", default_value = "")]
    pub owner_deployment: String,

    /// Image with `strata-agent` and `strata-csi` (node DaemonSet and jobs).
    #[arg(
        long,
        env = "STRATA_AGENT_IMAGE",
        default_value = "ghcr.io/strata/strata:latest"
    )]
    pub agent_image: String,

    /// Pull policy of the agent image.
    #[arg(long, env = "STRATA_IMAGE_PULL_POLICY", default_value = "IfNotPresent")]
    pub image_pull_policy: String,

    /// ServiceAccount of the node agents (needs write access to StrataNodes only).
    #[arg(
        long,
        env = "STRATA_AGENT_SERVICE_ACCOUNT",
        default_value = "strata-agent"
    )]
    pub agent_service_account: String,

    /// Node selector of the DaemonSet: `key=value,key2=value2`.
    #[arg(long, env = "STRATA_NODE_SELECTOR", default_value = "")]
    pub node_selector: String,

    /// Tolerations of the DaemonSet as a JSON list of Kubernetes tolerations,
    /// e.g. `[{"key":"gpu","operator":"Exists","effect":"NoSchedule"}]`.
    #[arg(long, env = "STRATA_TOLERATIONS", default_value = "[]")]
    pub tolerations: String,

    /// Memory tier size per node (a size such as `4Gi`, as the agents' --memory reads it).
    #[arg(long, env = "STRATA_MEMORY_TIER_SIZE", default_value = "1Gi")]
    pub memory_tier_size: String,

    /// Host directory of the disk (SSD) tier.
    #[arg(
        long,
        env = "STRATA_DISK_TIER_PATH",
        default_value = "/var/cache/strata"
    )]
    pub disk_tier_path: String,

    /// Disk tier size per node (a size such as `100Gi`, as the agents' --disk reads it).
    #[arg(long, env = "STRATA_DISK_TIER_SIZE", default_value = "10Gi")]
    pub disk_tier_size: String,

    /// Ephemeral disk tier size per node (e.g. `100Gi`): an emptyDir of each agent pod
    /// with this size limit, for datasets whose CachePolicy's persistence is Ephemeral.
    /// Empty: nodes have none, and such datasets are refused there.
    #[arg(long, env = "STRATA_EPHEMERAL_TIER_SIZE", default_value = "")]
    pub ephemeral_tier_size: String,

    /// Port of the agents' HTTP API (on the host network).
    #[arg(long, env = "STRATA_AGENT_PORT", default_value_t = 7070)]
    pub agent_port: u16,

    /// The kubelet's root directory on the nodes.
    #[arg(long, env = "STRATA_KUBELET_DIR", default_value = "/var/lib/kubelet")]
    pub kubelet_dir: String,

    /// Host directory of the agent's unix socket, shared with the node's CSI plugin (in the
    /// pods it is always /run/strata). Two installations on one machine need two.
    #[arg(long, env = "STRATA_NODE_RUN_DIR", default_value = "/run/strata")]
    pub node_run_dir: String,

    /// Host directory under which the agents mount datasets (FUSE), propagated to the CSI
    /// plugin and from there into pods (in the pods it is always /var/lib/strata/mounts).
    /// Must be a shared mount or on one (the kubelet refuses Bidirectional propagation
    /// otherwise). Two installations on one machine need two.
    #[arg(
        long,
        env = "STRATA_NODE_MOUNTS_DIR",
        default_value = "/var/lib/strata/mounts"
    )]
    pub node_mounts_dir: String,

    /// Audience of the ServiceAccount tokens preload/pin Job pods present to the agents
    /// (projected into the pods; the agents check them with a TokenReview).
    #[arg(
        long,
        env = "STRATA_JOB_TOKEN_AUDIENCE",
        default_value = "strata.dev/agent"
    )]
    pub job_token_audience: String,

    /// Host directories `file://` sources may name, comma-separated absolute paths. The
    /// node DaemonSet mounts each read-only into the agent at the same path; a Dataset
    /// naming any other local path is refused. Empty: no `file://` sources.
    #[arg(long, env = "STRATA_ALLOWED_LOCAL_PATHS", default_value = "")]
    pub allowed_local_paths: String,
}

fn default_identity() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("strata-operator-{}", std::process::id()))
}

/// Parser for [`OperatorConfig::try_parse_from`].
#[derive(clap::Parser)]
struct ConfigOnly {
    #[command(flatten)]
    config: OperatorConfig,
}

impl OperatorConfig {
    /// Parses flags (and `STRATA_*` environment variables) as the binary
    /// does; the first item is the program name. For embedding and tests.
    pub fn try_parse_from<I, T>(args: I) -> std::result::Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        <ConfigOnly as clap::Parser>::try_parse_from(args).map(|c| c.config)
    }

    /// The Lease's namespace (--lease-namespace, else --namespace).
    pub fn lease_namespace(&self) -> &str {
        if self.lease_namespace.is_empty() {
            &self.namespace
        } else {
            &self.lease_namespace
        }
    }

    /// --node-selector parsed into a map.
    pub fn node_selector_map(&self) -> Result<BTreeMap<String, String>> {
        let mut map = BTreeMap::new();
        for pair in self.node_selector.split(',').map(str::trim) {
            if pair.is_empty() {
                continue;
            }
            let (k, v) = pair.split_once('=').ok_or_else(|| Error::Config {
                flag: "node-selector",
                message: format!("{pair:?} is not key=value; write e.g. strata.dev/cache=true"),
            })?;
            map.insert(k.trim().to_string(), v.trim().to_string());
        }
        Ok(map)
    }

    /// --allowed-local-paths parsed: absolute, normalized (no `.`/`..`, no trailing `/`).
    pub fn allowed_local_path_list(&self) -> Result<Vec<String>> {
        let mut paths = Vec::new();
        for raw in self.allowed_local_paths.split(',').map(str::trim) {
            if raw.is_empty() {
                continue;
            }
            let bad = !raw.starts_with('/')
                || raw.chars().any(char::is_control)
                || raw.split('/').any(|c| c == "." || c == "..");
            if bad {
                return Err(Error::Config {
                    flag: "allowed-local-paths",
                    message: format!(
                        "{raw:?} is not an absolute host path without . or ..; write e.g. /mnt/datasets"
                    ),
                });
            }
            let path = raw.trim_end_matches('/');
            paths.push(if path.is_empty() {
                "/".to_string()
            } else {
                path.to_string()
            });
        }
        Ok(paths)
    }

    /// --tolerations parsed.
    pub fn toleration_list(&self) -> Result<Vec<Toleration>> {
        serde_json::from_str(&self.tolerations).map_err(|e| Error::Config {
            flag: "tolerations",
            message: format!(
                "not a JSON list of tolerations ({e}); write e.g. [{{\"operator\":\"Exists\"}}]"
            ),
        })
    }

    /// Checks every flag that is parsed later, so a bad value stops the
    /// operator at start instead of in a reconcile.
    /// The ephemeral tier's size, when nodes have one (`--ephemeral-tier-size` not empty).
    pub fn ephemeral_tier(&self) -> Option<&str> {
        let size = self.ephemeral_tier_size.trim();
        (!size.is_empty()).then_some(size)
    }

    pub fn validate(&self) -> Result<()> {
        self.node_selector_map()?;
        self.toleration_list()?;
        for (flag, value) in [
            ("memory-tier-size", Some(&self.memory_tier_size)),
            ("disk-tier-size", Some(&self.disk_tier_size)),
            (
                "ephemeral-tier-size",
                self.ephemeral_tier().map(|_| &self.ephemeral_tier_size),
            ),
        ] {
            let Some(value) = value else { continue };
            if flag == "ephemeral-tier-size" {
                // Also an emptyDir's sizeLimit: a Kubernetes quantity.
                strata_crds::parse_quantity_bytes(value).map_err(|e| Error::Config {
                    flag,
                    message: format!("{e} (a Kubernetes quantity such as 100Gi)"),
                })?;
            }
            // Handed to the agents as --memory/--disk: checked with the parser they use.
            strata_wire::config::parse_size(value).map_err(|e| Error::Config {
                flag,
                message: e.to_string(),
            })?;
        }
        if self.lease_duration < Duration::from_secs(2) {
            return Err(Error::Config {
                flag: "lease-duration",
                message: "must be at least 2s".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        config: OperatorConfig,
    }

    #[test]
    fn defaults_are_valid_and_flags_parse() {
        let cli = Cli::parse_from([
            "strata-operator",
            "--node-selector",
            "a=b, c=d",
            "--tolerations",
            r#"[{"key":"gpu","operator":"Exists","effect":"NoSchedule"}]"#,
            "--lease-duration",
            "5s",
        ]);
        cli.config.validate().unwrap();
        assert_eq!(cli.config.node_selector_map().unwrap().len(), 2);
        assert_eq!(
            cli.config.toleration_list().unwrap()[0].key.as_deref(),
            Some("gpu")
        );
        assert_eq!(cli.config.lease_duration, Duration::from_secs(5));
        assert_eq!(cli.config.lease_namespace(), "strata-system");
    }

    #[test]
    fn bad_values_name_the_flag() {
        let cli = Cli::parse_from(["strata-operator", "--node-selector", "nokey"]);
        let e = cli.config.validate().unwrap_err().to_string();
        assert!(e.contains("--node-selector"), "{e}");
        let cli = Cli::parse_from(["strata-operator", "--tolerations", "{"]);
        assert!(
            cli.config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("--tolerations")
        );
    }

    #[test]
    fn tier_sizes_and_durations_use_the_grammar_of_their_readers() {
        // The agents read the tier sizes (--memory, --disk); the CRDs' grammar the durations.
        let cli = Cli::parse_from(["strata-operator", "--memory-tier-size", "512MiB"]);
        cli.config.validate().unwrap();
        let cli = Cli::parse_from(["strata-operator", "--disk-tier-size", "0.5"]);
        let e = cli.config.validate().unwrap_err().to_string();
        assert!(e.contains("--disk-tier-size"), "{e}");
        // The ephemeral tier is also an emptyDir's sizeLimit: a Kubernetes quantity.
        let cli = Cli::parse_from(["strata-operator", "--ephemeral-tier-size", "512MiB"]);
        let e = cli.config.validate().unwrap_err().to_string();
        assert!(e.contains("--ephemeral-tier-size"), "{e}");
        let cli = Cli::parse_from(["strata-operator", "--ephemeral-tier-size", "100Gi"]);
        cli.config.validate().unwrap();
        assert_eq!(cli.config.ephemeral_tier(), Some("100Gi"));
        let cli = Cli::parse_from(["strata-operator", "--ephemeral-tier-size="]);
        assert_eq!(cli.config.ephemeral_tier(), None, "empty: no tier");
        let e = Cli::try_parse_from(["strata-operator", "--resync-interval", "1h30m"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("invalid duration"), "{e}");
    }
}
