//! strata-testkit: what Strata's tests share, instead of `#[path]` includes across crates.
//! A dev-dependency only; panics are its error handling (a test that cannot start its server
//! should fail saying why).
//!
//! - [`azurite`]: the Azure Storage emulator on loopback, with account-SAS tokens signed by
//!   its well-known key;
//! - [`net`]: free loopback ports and waiting for a server to listen;
//! - [`data`]: deterministic test contents.

#![forbid(unsafe_code)]

pub mod azurite;
pub mod data;
pub mod net;
