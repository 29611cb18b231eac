//! strata-agent: the node agent over the cache engine (`strata-engine`).
//!
//! - [`fuse`]: the FUSE file system (passthrough for fully cached files; writes through the
//!   engine's write journal when a source has a writeMode);
//! - [`mounts`]: the dataset mounts the CSI plugin's volumes share;
//! - [`http`]: the HTTP API (routes and handlers by area, callers by role, TokenReview);
//! - [`serve`]: `strata-agent serve`, the node daemon that wires them together, with
//!   [`datasets_dir`] (dataset configs from a directory);
//! - [`activity`]: the record of Job runs and source errors the API writes and the
//!   StrataNode report reads;
//! - [`standalone`]: `strata-agent mount` and the local `preload`, one dataset without the
//!   daemon;
//! - [`job_commands`]: `strata-agent preload|pin|unpin --agent`, run by the operator's Jobs;
//! - [`peers`]: the cluster cache's transport to other agents and its member list;
//! - [`node_status`]: the StrataNode reporter (and, in [`peers`], the StrataNode watch).
//!
//! The engine's modules are re-exported under their old paths (`strata_agent::cache`, ...),
//! so callers that only need the engine can depend on `strata-engine` instead.

#![forbid(unsafe_code)]

pub mod activity;
pub mod cli_values;
pub mod datasets_dir;
pub mod fuse;
pub mod held_mounts;
/// The FUSE module's path before it became a folder (`strata_agent::fs::mount`, ...).
pub use fuse as fs;
pub mod http;
pub mod job_commands;
pub mod migrate_command;
pub mod mounts;
#[cfg(feature = "node-status")]
pub mod node_status;
pub mod peers;
pub mod serve;
pub mod standalone;

/// The paths from before the HTTP API, the daemon and the job commands were split by role
/// (`strata_agent::api::...`), used by the CSI and e2e tests and the fuzz targets.
pub mod api {
    #[cfg(feature = "node-status")]
    pub use crate::http::token_review;
    pub use crate::http::{auth, client, server, types};
    pub use crate::{job_commands as jobs, serve};
}

pub mod error;
pub use error::{Error, Result};

pub use strata_engine::{
    agent, block_writer, cache, cluster, config, dataset, eviction, glob, metadata, metrics, path,
    sidecar, singleflight, source, writes,
};
