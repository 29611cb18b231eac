//! The agent's HTTP API (`strata-agent serve`), its client, and the job commands.
//!
//! - A unix socket for the local CSI plugin (trusted by file permissions).
//! - A TCP listener for jobs and peers that requires `Authorization: Bearer <token>`;
//!   what each caller may do is in [`auth`].
//! - An open port with `/healthz`, `/readyz` and `/metrics`.
//!
//! Routes are listed in docs/csi.md ("Agent API").

pub mod auth;
pub mod datasets_dir;
pub mod error;
pub mod jobs;
pub mod serve;
pub mod server;
#[cfg(feature = "node-status")]
pub mod token_review;

pub use error::{ApiError, Result};
/// The client and the JSON bodies live in `strata-wire`, so that callers (the CSI plugin,
/// jobs) need not link the engine.
pub use strata_wire::api::{client, types};
