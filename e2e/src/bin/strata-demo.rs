//! `strata-demo`: the one-node cluster demo behind `make demo` (driven by `scripts/demo.sh`).
//!
//! Two ways to run the same story, both against the demo's own local cluster
//! (`e2e/cluster/cluster.sh`, reached through the inherited `STRATA_STATE` / port variables) and
//! an S3 server with the sample data:
//!
//! - `node-up` (the default): the cluster has a real node (containerd + kubelet). The chart is
//!   installed with the locally built image; the operator and the node DaemonSet run as pods,
//!   the preload and pin Jobs' pods run on the kubelet, and busybox pods read the datasets
//!   through their PVCs ([`node`]).
//! - `local-up` (the fallback when the node cannot come up): the control plane only; the
//!   operator, agent and CSI plugin run as local processes with the flags of their pods, the
//!   Jobs' commands run by hand and the volume is published through the CSI socket ([`local`]).
//!
//! Both preload a Dataset, show `kubectl get datasets` at 100% and a warm first read (0 blocks
//! fetched from S3), then show a pinned path surviving a cache fill: a second Dataset of the
//! same data under a CachePolicy with a 32 MiB quota and a pin, its pin Job, a 128 MiB read,
//! and the pinned files still cached while files read before the fill were evicted.

#[path = "strata_demo/local.rs"]
mod local;
#[path = "strata_demo/node.rs"]
mod node;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use clap::{Parser, Subcommand};

const SYSTEM_NS: &str = "strata-system";
const RELEASE: &str = "strata";
const TENANT_NS: &str = "demo";
const DATASET: &str = "sample";
const POLICY: &str = "sample-cache";
/// The pin step's Dataset (the same data) and its CachePolicy: a quota far below the data,
/// and a pin.
const PINNED_DATASET: &str = "sample-pinned";
const PINNED_POLICY: &str = "pinned-cache";
const PINNED_QUOTA_MIB: u64 = 32;
/// What the pin step's policy pins, and a directory of files just like them it does not.
const PINNED_DIR: &str = "train/2026-11-21";
const UNPINNED_DIR: &str = "train/2026-11-20";
/// The file read to fill the pin step's cache (4 times its quota).
const FILL_FILE: &str = "generated/random-128MiB.bin";
const WAIT: Duration = Duration::from_secs(120);

#[derive(Parser)]
#[command(about = "One-node Strata demo on the local cluster")]
struct Cli {
    /// Directory for the demo's state: pid files, logs, the summary.
    #[arg(long, env = "STRATA_DEMO_DIR", default_value = "/tmp/strata-demo")]
    state: PathBuf,
    #[command(subcommand)]
    command: Action,
}

#[derive(Subcommand)]
enum Action {
    /// On the cluster's real node: install the chart with the imported image, then run the
    /// story with pods (harmless when already up).
    NodeUp {
        #[command(flatten)]
        data: DataArgs,
        /// The Helm chart to install.
        #[arg(long, env = "STRATA_DEMO_CHART")]
        chart: PathBuf,
        /// The kubelet's root directory (`KUBELET_DIR` of `cluster.sh paths`).
        #[arg(long)]
        kubelet_dir: PathBuf,
        /// Host directory of the agent's disk tier.
        #[arg(long)]
        disk_cache: PathBuf,
        /// `sha256sum` lines (`HASH  ./path`) of every object under the S3 prefix, to check
        /// what the reader pod reads against.
        #[arg(long)]
        source_sums: PathBuf,
    },
    /// Without a node: install the chart, run its components as local processes, publish and
    /// show the dataset (harmless when already up).
    LocalUp {
        #[command(flatten)]
        data: DataArgs,
        /// Directory holding the built strata-operator, strata-agent and strata-csi.
        #[arg(long, env = "STRATA_DEMO_BIN_DIR")]
        bins: PathBuf,
        /// The Helm chart to install.
        #[arg(long, env = "STRATA_DEMO_CHART")]
        chart: PathBuf,
    },
    /// Unpublish the volumes and stop the processes `local-up` started.
    LocalDown,
    /// Keep the local node's datasets/ and peer/ equal to the Secrets the DaemonSet mounts.
    SyncSecrets,
}

/// Where the sample data is.
#[derive(clap::Args)]
struct DataArgs {
    /// S3 endpoint holding the sample data, e.g. http://127.0.0.1:9000.
    #[arg(long, env = "STRATA_DEMO_S3_ENDPOINT")]
    s3_endpoint: String,
    /// Bucket and prefix of the sample data.
    #[arg(
        long,
        env = "STRATA_DEMO_S3_URI",
        default_value = "s3://strata-demo/data/"
    )]
    s3_uri: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Action::NodeUp {
            data,
            chart,
            kubelet_dir,
            disk_cache,
            source_sums,
        } => {
            node::NodeDemo {
                state: cli.state,
                chart,
                kubelet_dir,
                disk_cache,
                source_sums,
                s3_endpoint: data.s3_endpoint,
                s3_uri: data.s3_uri,
                agent_socket_inode: Default::default(),
            }
            .up()
            .await
        }
        Action::LocalUp { data, bins, chart } => {
            local::LocalDemo { state: cli.state }
                .up(&bins, &chart, &data.s3_endpoint, &data.s3_uri)
                .await
        }
        Action::LocalDown => local::LocalDemo { state: cli.state }.down().await,
        Action::SyncSecrets => local::LocalDemo { state: cli.state }.sync_secrets().await,
    }
}

/// What the pin step watches of a dataset's usage on the node (the agent's own counts).
#[derive(Clone, Copy)]
struct Usage {
    /// Bytes on the disk tier.
    cached: u64,
    /// Of them, pinned.
    pinned: u64,
    /// Blocks fetched from the source so far.
    misses: u64,
}

impl Usage {
    /// From the agent API's `GET /v1/datasets/<ns>/<name>/usage` answer.
    fn from_json(usage: &serde_json::Value) -> Self {
        let field = |name: &str| usage[name].as_u64().unwrap_or_default();
        Usage {
            cached: field("cachedBytes"),
            pinned: field("pinnedBytes"),
            misses: field("misses"),
        }
    }
}

/// What the pin step measured, either way it read: the unpinned day, then the fill file, then
/// (page cache dropped) the pinned day and the unpinned day again, with the usage after each.
struct PinReads {
    unpinned_files: usize,
    pinned_files: usize,
    fill_bytes: u64,
    fill_time: Duration,
    before_fill: Usage,
    filled: Usage,
    pinned_again: Usage,
    unpinned_again: Usage,
}

impl PinReads {
    fn pinned_fetched(&self) -> u64 {
        self.pinned_again.misses - self.filled.misses
    }

    fn unpinned_fetched(&self) -> u64 {
        self.unpinned_again.misses - self.pinned_again.misses
    }

    /// The two progress lines: the fill, and what reading both days again fetched.
    fn progress(&self, how: &str) -> String {
        format!(
            "demo: read /{FILL_FILE} ({:.0} MiB, {:.0}x the quota) {how} in {:.1}s: the dataset \
             holds {} on disk ({} pinned; before: {}, {} pinned)\n\
             demo: read again, page cache dropped: /{PINNED_DIR} (pinned) {} blocks fetched from \
             S3, /{UNPINNED_DIR} (not pinned) {}",
            mib(self.fill_bytes),
            mib(self.fill_bytes) / PINNED_QUOTA_MIB as f64,
            self.fill_time.as_secs_f64(),
            size(self.filled.cached),
            size(self.filled.pinned),
            size(self.before_fill.cached),
            size(self.before_fill.pinned),
            self.pinned_fetched(),
            self.unpinned_fetched(),
        )
    }

    /// Fails unless the pinned files survived the fill and the unpinned ones did not.
    fn check(&self, agent_log_hint: &str) -> Result<()> {
        ensure!(
            self.filled.pinned > 0 && self.pinned_fetched() == 0,
            "pinned /{PINNED_DIR} after the fill: {} pinned, {} blocks fetched again from S3; \
             {agent_log_hint}",
            size(self.filled.pinned),
            self.pinned_fetched(),
        );
        ensure!(
            self.unpinned_fetched() > 0,
            "unpinned /{UNPINNED_DIR} was still cached after the fill (quota not reached?)"
        );
        Ok(())
    }

    /// The summary's lines after the pin Job's description.
    fn summary(&self, through: &str) -> String {
        format!(
            "  read /{UNPINNED_DIR} ({} files, not pinned), then /{FILL_FILE} ({:.0} MiB) {through}\n  \
             the dataset's cache after the fill: {} on disk, {} of it pinned\n  \
             read again: /{PINNED_DIR} ({} files, pinned) 0 blocks fetched from S3; \
             /{UNPINNED_DIR} ({} files) {} blocks fetched again (evicted by the fill)\n",
            self.unpinned_files,
            mib(self.fill_bytes),
            size(self.filled.cached),
            size(self.filled.pinned),
            self.pinned_files,
            self.unpinned_files,
            self.unpinned_fetched(),
        )
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// Bytes for people: KiB below a MiB, MiB above.
fn size(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", mib(bytes))
    }
}

/// So the next read comes from the agent's cache, not the kernel's page cache of the mount
/// (one page cache for the host and its pods).
fn drop_page_cache() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// The demo's credentials are placeholders: moto checks no signatures, the agent still signs.
fn manifests(endpoint: &str, uri: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata:
  name: s3-creds
  namespace: {TENANT_NS}
type: Opaque
stringData:
  AWS_ACCESS_KEY_ID: AKIASTRATADEMO
  AWS_SECRET_ACCESS_KEY: strata-demo-secret
---
apiVersion: strata.dev/v1alpha1
kind: Dataset
metadata:
  name: {DATASET}
  namespace: {TENANT_NS}
  labels:
    app: strata-demo
spec:
  sources:
    - name: sample
      uri: {uri}
      mountPath: /
      endpoint: {endpoint}
      region: us-east-1
      credentialsSecretRef:
        name: s3-creds
      options:
        allow_http: "true"
  policyRef:
    name: {POLICY}
---
apiVersion: strata.dev/v1alpha1
kind: CachePolicy
metadata:
  name: {POLICY}
  namespace: {TENANT_NS}
spec:
  datasetSelector:
    matchLabels:
      app: strata-demo
  quota: 512Mi
  tiers: [Memory, SSD]
  eviction: LRU
  blockSize: 1Mi
  replicas: 1
  metadata:
    ttl: 1h
  preload:
    - paths: ["/**"]
"#
    )
}

/// The pin step's Dataset (the same source as the first) and its CachePolicy.
fn pinned_manifests(endpoint: &str, uri: &str) -> String {
    format!(
        r#"apiVersion: strata.dev/v1alpha1
kind: Dataset
metadata:
  name: {PINNED_DATASET}
  namespace: {TENANT_NS}
  labels:
    app: strata-demo-pinned
spec:
  sources:
    - name: sample
      uri: {uri}
      mountPath: /
      endpoint: {endpoint}
      region: us-east-1
      credentialsSecretRef:
        name: s3-creds
      options:
        allow_http: "true"
  policyRef:
    name: {PINNED_POLICY}
---
apiVersion: strata.dev/v1alpha1
kind: CachePolicy
metadata:
  name: {PINNED_POLICY}
  namespace: {TENANT_NS}
spec:
  datasetSelector:
    matchLabels:
      app: strata-demo-pinned
  quota: {PINNED_QUOTA_MIB}Mi
  eviction: LRU
  blockSize: 1Mi
  replicas: 1
  metadata:
    ttl: 1h
  pin:
    - paths: ["/{PINNED_DIR}/**"]
"#
    )
}
