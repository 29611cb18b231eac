//! The agent's HTTP API as its callers see it: the JSON bodies and the client.

pub mod client;
pub mod types;
