//! End-to-end test support for Strata.
//!
//! [`Cluster::shared`] starts (once per test process) or reuses a local Kubernetes control plane
//! — etcd, kube-apiserver, kube-controller-manager and kube-scheduler built from the upstream Go
//! modules by `e2e/cluster/cluster.sh` — and hands out API clients and `kubectl`/`helm` runners.
//! [`TestNamespace`] gives each test its own namespace. That cluster has no kubelet: Pods are
//! created and scheduled against no nodes, so they stay `Pending`. [`Cluster::with_node`] is a
//! second cluster with a real node (containerd and a kubelet) for the suite that runs the
//! chart's pods.
//!
//! Without Kubernetes, [`NodeNet`] puts several nodes on one machine (a network namespace each,
//! joined by a bridge), [`NsAgent`] runs an agent in one of them, and [`DelayProxy`] puts a WAN
//! in front of a server and counts the bytes that crossed it: the cluster cache's tests
//! (`tests/cluster_cache.rs`).
//!
//! ```no_run
//! # async fn example() -> strata_e2e::Result<()> {
//! use strata_e2e::{Cluster, TestNamespace};
//! let cluster = Cluster::shared().await?;
//! let ns = TestNamespace::create(cluster, "demo").await?;
//! cluster.kubectl(&["-n", ns.name(), "create", "configmap", "c"]).await?;
//! ns.cleanup().await?;
//! # Ok(())
//! # }
//! ```

mod binaries;
mod cluster;
mod csi;
mod delay_proxy;
mod error;
mod local_run;
mod namespace;
mod node_net;
mod ns_agent;
mod s3;
mod tool;
mod wait;

pub use binaries::workspace_binaries;
pub use cluster::{Cluster, client_from_kubeconfig};
pub use csi::{csi_connect, pod_volume_context, publish_request};
pub use delay_proxy::DelayProxy;
pub use error::{Error, Result};
pub use local_run::{
    LocalNode, dataset_status, job_args, job_token, jobs_of_kind, operator_args,
    sync_secret_to_dir, wait_for_dataset_job, wait_for_dataset_pv,
};
pub use namespace::{MANAGED_BY, TestNamespace};
pub use node_net::{NetNode, NodeNet, node_net_unavailable};
pub use ns_agent::{AGENT_PORT, AgentOptions, ClusterFlags, METRICS_PORT, Metrics, NsAgent};
pub use s3::{MotoS3, generated_bytes};
pub use tool::ToolOutput;
pub use wait::wait_until;
