//! The agent's HTTP API (`strata-agent serve`) and its client.
//!
//! - A unix socket for the local CSI plugin (trusted by file permissions).
//! - A TCP listener for jobs and peers that requires `Authorization: Bearer <token>`;
//!   what each caller may do is in [`auth`].
//! - An open port with `/healthz`, `/readyz` and `/metrics`.
//!
//! [`server`] holds the state, the routing table and the JSON answers; the handlers are
//! grouped by area: `datasets`, `reads`, `jobs` (what preload and pin Jobs call), `migrations`
//! (what Migration Jobs call) and `volumes`. Routes are listed in docs/csi.md ("Agent API").

pub mod auth;
mod datasets;
pub mod error;
mod jobs;
mod migrations;
mod peer;
mod reads;
pub mod server;
#[cfg(feature = "node-status")]
pub mod token_review;
mod volumes;

pub use error::HttpError;
pub use reads::parse_range;
pub use server::{Access, ApiState, api_routes, metrics_routes};
/// The client and the JSON bodies live in `strata-wire`, so that callers (the CSI plugin,
/// jobs) need not link the engine.
pub use strata_wire::api::{client, types};
