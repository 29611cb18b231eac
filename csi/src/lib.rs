//! strata-csi: the CSI node plugin `csi.strata.dev`.
//!
//! NodePublishVolume asks the node's agent (over its unix socket) for the
//! dataset's FUSE mount, one per dataset per node, and bind-mounts it, or a
//! sub directory of it, at the pod's target path. The plugin registers itself with
//! the kubelet (no node-driver-registrar sidecar). See docs/csi.md.

pub mod bind;
pub mod controller;
pub mod error;
pub mod identity;
pub mod mount_table;
pub mod node;
pub mod registration;
pub mod server;
pub mod volume;

/// The generated CSI v1 messages and services (proto/csi.proto).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("csi.v1");
}

/// The kubelet's plugin registration API (proto/pluginregistration.proto, from k8s.io/kubelet).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");
}

pub use error::{CsiError, Result};

/// The driver name kubelet and the CSIDriver object use.
pub const DRIVER_NAME: &str = "csi.strata.dev";
/// Topology key under which NodeGetInfo reports the node.
pub const TOPOLOGY_NODE_KEY: &str = "topology.csi.strata.dev/node";
