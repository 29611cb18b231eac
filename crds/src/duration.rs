//! Durations in the API are strings: a whole number and one unit, `30s`, `5m`,
//! `12h`, `30d`. One unit keeps the CEL rule a single regular expression and the
//! meaning obvious in a manifest.

use std::time::Duration;

use crate::{Error, Result};

/// The CEL/OpenAPI form of the grammar; [`parse_duration`] accepts exactly this.
pub(crate) const DURATION_PATTERN: &str = strata_wire::config::API_DURATION_PATTERN;

/// Parses `30s`, `5m`, `12h` or `30d` (at most 9 digits) into a [`Duration`]: the API's
/// grammar, defined once in `strata_wire::config::parse_api_duration`, which the agents'
/// `parse_duration` also reads first.
///
/// ```
/// # use std::time::Duration;
/// assert_eq!(strata_crds::parse_duration("5m").unwrap(), Duration::from_secs(300));
/// assert!(strata_crds::parse_duration("1h30m").is_err());
/// ```
pub fn parse_duration(value: &str) -> Result<Duration> {
    strata_wire::config::parse_api_duration(value).map_err(|reason| Error::Duration {
        value: value.to_string(),
        reason: reason.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("45s").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("12h").unwrap(), Duration::from_secs(43_200));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(2_592_000)
        );
        assert_eq!(
            parse_duration("999999999d").unwrap(),
            Duration::from_secs(999_999_999 * 86_400)
        );
    }

    /// Every duration the API accepts reads as the same length on the agents.
    #[test]
    fn the_agents_read_api_durations_alike() {
        for ok in ["0s", "45s", "5m", "12h", "30d", "999999999d", "999999999s"] {
            assert_eq!(
                strata_wire::config::parse_duration(ok).unwrap(),
                parse_duration(ok).unwrap(),
                "{ok}"
            );
        }
    }

    #[test]
    fn refuses_other_shapes() {
        for bad in [
            "",
            "s",
            "5",
            "5x",
            "1h30m",
            "-5m",
            "+5m",
            "5 m",
            " 5m",
            "5M",
            "1.5h",
            "1000000000s",
            "５m",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(
                e.to_string().contains("e.g. 30s"),
                "{bad:?} gave an error without the fix: {e}"
            );
        }
    }
}
