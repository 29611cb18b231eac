//! strata-operator: reconciles Datasets, CachePolicies and Migrations into what the
//! node agents read (the `strata-datasets` Secret), volumes (PV/PVC), preload, pin and
//! migration Jobs, and the node DaemonSet; sums the agents' StrataNode reports into
//! each Dataset's and Migration's status. Leader-elected through a Lease.

pub mod agent_config;
pub mod conditions;
pub mod config;
pub mod context;
pub mod credentials;
pub mod dataset_controller;
mod error;
pub mod jobs;
pub mod leader;
pub mod metrics;
pub mod migration_controller;
pub mod node_reports;
pub mod node_set;
mod operator;
pub mod peer_token;
pub mod policy_controller;
pub mod policy_resolution;
pub mod selector;
pub mod source_check;
pub mod volume;

pub use config::OperatorConfig;
pub use error::{Error, Result};
pub use operator::{Operator, run_controllers};
