//! strata-wire: the types that cross Strata's process boundaries, shared by the agent, the
//! CSI plugin and the job commands without pulling in the cache engine or Kubernetes.
//!
//! - [`path`]: [`path::DatasetPath`], the one parser of every path a user gives (FUSE, HTTP,
//!   subPath, globs);
//! - [`api`]: the JSON bodies of the agent's HTTP API and [`api::client::AgentClient`];
//! - [`config`]: the dataset configuration the operator writes and the agent reads, with
//!   the one size and duration grammar; [`glob`]: pin and preload globs;
//! - [`names`]: the Kubernetes name check of namespaces and dataset names;
//! - [`scrub`]: credentials out of any text that leaves a process.

#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod error;
pub mod glob;
pub mod names;
pub mod path;
pub mod scrub;

pub use error::{Result, WireError};
