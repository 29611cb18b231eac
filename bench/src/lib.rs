//! strata-bench: Strata's mount beside rclone and s3fs on a real S3 server behind a WAN-like
//! link, and the eviction study against Belady's optimum. See docs/BENCHMARKS.md.

pub mod charts;
pub mod clusternet;
pub mod data;
pub mod error;
pub mod harness;
pub mod mounts;
pub mod netshape;
pub mod process;
pub mod proxy;
pub mod report;
pub mod results;
pub mod s3server;
pub mod sim;
pub mod stats;
pub mod workloads;

pub use error::{Error, Result};
