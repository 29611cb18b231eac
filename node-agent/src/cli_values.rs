//! Parsers of flag values the commands share (clap `value_parser`s): sizes and durations in
//! the one grammar of `strata_wire::config`, eviction policies and cache tiers.

use std::time::Duration;

use crate::config::{EvictionKind, TierKind};

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

/// How the mounted sources take writes: `ReadOnly`, `WriteBack` or `WriteThrough` (any
/// case). clap names the flag in the error.
pub fn parse_write_mode(s: &str) -> Result<crate::config::WriteMode, String> {
    use crate::config::WriteMode;
    match s.to_ascii_lowercase().as_str() {
        "readonly" => Ok(WriteMode::ReadOnly),
        "writeback" => Ok(WriteMode::WriteBack),
        "writethrough" => Ok(WriteMode::WriteThrough),
        _ => Err(format!(
            "unknown write mode {s:?}; use ReadOnly, WriteBack or WriteThrough"
        )),
    }
}

/// The tiers a dataset's blocks may live in: `Memory`, `SSD` or both, comma-separated (any
/// case, each at most once), as a CachePolicy's `tiers`. clap names the flag in the error.
pub fn parse_tiers(s: &str) -> Result<Vec<TierKind>, String> {
    let mut tiers = Vec::new();
    for word in s.split(',').map(str::trim) {
        let tier = match word.to_ascii_lowercase().as_str() {
            "memory" => TierKind::Memory,
            "ssd" => TierKind::Ssd,
            _ => {
                return Err(format!(
                    "unknown tier {word:?}; use Memory, SSD or Memory,SSD"
                ));
            }
        };
        if tiers.contains(&tier) {
            return Err(format!(
                "{word:?} is listed twice; use Memory, SSD or Memory,SSD"
            ));
        }
        tiers.push(tier);
    }
    Ok(tiers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_are_memory_ssd_or_both_each_once() {
        use TierKind::{Memory, Ssd};
        for (input, want) in [
            ("Memory", vec![Memory]),
            ("SSD", vec![Ssd]),
            ("ssd", vec![Ssd]),
            ("Memory,SSD", vec![Memory, Ssd]),
            ("SSD, memory", vec![Ssd, Memory]),
        ] {
            assert_eq!(parse_tiers(input).unwrap(), want, "{input}");
        }
        for bad in ["", "Disk", "Memory,", "SSD,SSD", "memory,Memory"] {
            let e = parse_tiers(bad).unwrap_err();
            assert!(e.contains("use Memory, SSD"), "{bad}: {e}");
        }
    }
}
