//! strata-agent: the node agent over the cache engine (`strata-engine`).
//!
//! - [`fuse`]: the read-only FUSE file system (passthrough for fully cached files);
//! - [`mounts`]: the dataset mounts the CSI plugin's volumes share;
//! - [`api`]: the HTTP API (server, callers by role, job commands);
//! - [`node_status`]: the StrataNode reporter (the only Kubernetes client here).
//!
//! The engine's modules are re-exported under their old paths (`strata_agent::cache`, ...),
//! so callers that only need the engine can depend on `strata-engine` instead.

#![forbid(unsafe_code)]

pub mod api;
pub mod fuse;
/// The FUSE module's path before it became a folder (`strata_agent::fs::mount`, ...).
pub use fuse as fs;
pub mod mounts;
#[cfg(feature = "node-status")]
pub mod node_status;

pub use strata_engine::{
    Error, Result, agent, block_writer, cache, config, dataset, error, eviction, glob, metadata,
    metrics, path, sidecar, singleflight, source,
};
