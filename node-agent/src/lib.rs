//! strata-agent: the node-local cache engine of Strata.
//!
//! Layers, top to bottom:
//! - [`fs`]: the read-only FUSE file system (passthrough for fully cached files);
//! - [`agent::Agent`]: node-wide; holds datasets over one block cache;
//! - [`dataset::DatasetView`]: one dataset: sources under one namespace, metadata cache,
//!   single-flight block fetches, readahead, preload and pins;
//! - [`cache`]: memory and disk tiers, checksums, eviction ([`eviction`]);
//! - [`source::Source`]: object stores through `object_store`.
//!
//! Every user-supplied path goes through [`path::DatasetPath::parse`].
//! The engine has no Kubernetes dependency.

#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod block_writer;
pub mod cache;
pub mod config;
pub mod dataset;
pub mod error;
pub mod eviction;
pub mod fs;
pub mod glob;
pub mod metadata;
pub mod metrics;
pub mod mounts;
#[cfg(feature = "node-status")]
pub mod node_status;
pub mod sidecar;
pub mod singleflight;
pub mod source;

pub use error::{Error, Result};
/// Every user-supplied path goes through [`path::DatasetPath::parse`] (in `strata-wire`).
pub use strata_wire::path;
