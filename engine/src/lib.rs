//! strata-engine: the node-local cache engine of Strata, with no Kubernetes in it.
//!
//! Layers, top to bottom:
//! - [`agent::Agent`]: node-wide; holds datasets over one block cache;
//! - [`dataset::DatasetView`]: one dataset: sources under one namespace, metadata cache,
//!   single-flight block fetches, readahead, preload and pins;
//! - [`cache`]: memory and disk tiers, checksums, eviction ([`eviction`]);
//! - [`cluster`]: block placement over the cluster's agents and the peer transport's trait;
//! - [`source::Source`]: object stores through `object_store`;
//! - [`writes`]: writes landing on the node, journaled, uploaded in the background.
//!
//! Every user-supplied path goes through [`path::DatasetPath::parse`] (from `strata-wire`).
//! The FUSE file system, the HTTP API and the node status reporter are `strata-agent`'s.

#![forbid(unsafe_code)]

pub mod agent;
pub mod block_writer;
pub mod cache;
pub mod cluster;
pub mod dataset;
pub mod error;
pub mod eviction;
pub mod frames;
pub mod metadata;
pub mod metrics;
pub mod migrate;
pub mod sidecar;
pub mod singleflight;
pub mod source;
pub mod writes;

pub use error::{Error, Result};
pub use strata_wire::{config, glob, path};
