//! strata-store: the one object-store builder. A source's URI, endpoint, region, credentials
//! and options become an `object_store` client here, for the engine's reads and the
//! operator's reachability check alike, so the two cannot disagree on what a Dataset means
//! (which credential call a SAS token takes, when plain HTTP is allowed, which options are
//! refused).
//!
//! - [`build`]: a [`wire::config::SourceConfig`](strata_wire::config::SourceConfig) to a
//!   [`BuiltStore`] (the client and the key prefix under it), tuned by [`Tuning`];
//! - [`classify`]: what kind of failure an `object_store` error is (not found, denied,
//!   unavailable), from its variant and, for the HTTP stores, its text;
//! - [`local_dir`]: the directory of a local source.

#![forbid(unsafe_code)]

mod builder;
mod classify;
mod error;

pub use builder::{
    Ambient, BuiltStore, DEFAULT_MAX_RETRIES, ListPages, S3_PAGE_KEYS, Tuning, build, local_dir,
    normalize_prefix,
};
pub use classify::{FailureKind, classify, classify_text};
pub use error::StoreError;
