//! Parsers of flag values the commands share (clap `value_parser`s): sizes and durations in
//! the one grammar of `strata_wire::config`, and eviction policies.

use std::time::Duration;

use crate::config::EvictionKind;

/// A size such as `512Mi`, `4Gi` or `1000`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    crate::config::parse_size(s).map_err(|e| e.to_string())
}

/// A duration such as `30s`, `5m` or `14d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration(s).map_err(|e| e.to_string())
}

/// An eviction policy: LRU, S3FIFO or ARC (any case, dashes ignored).
pub fn parse_eviction(s: &str) -> Result<EvictionKind, String> {
    match s.to_ascii_uppercase().replace('-', "").as_str() {
        "LRU" => Ok(EvictionKind::Lru),
        "S3FIFO" => Ok(EvictionKind::S3Fifo),
        "ARC" => Ok(EvictionKind::Arc),
        other => Err(format!(
            "unknown eviction policy {other:?}; use LRU, S3FIFO or ARC"
        )),
    }
}
