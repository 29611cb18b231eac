//! Durations in the API are strings: a whole number and one unit, `30s`, `5m`,
//! `12h`, `30d`. One unit keeps the CEL rule a single regular expression and the
//! meaning obvious in a manifest.

use std::time::Duration;

use crate::{Error, Result};

/// The CEL/OpenAPI form of the grammar; [`parse_duration`] accepts exactly this.
pub(crate) const DURATION_PATTERN: &str = "^[0-9]{1,9}(s|m|h|d)$";

/// Parses `30s`, `5m`, `12h` or `30d` (at most 9 digits) into a [`Duration`].
///
/// ```
/// # use std::time::Duration;
/// assert_eq!(strata_crds::parse_duration("5m").unwrap(), Duration::from_secs(300));
/// assert!(strata_crds::parse_duration("1h30m").is_err());
/// ```
pub fn parse_duration(value: &str) -> Result<Duration> {
    let err = |reason: &str| Error::Duration {
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let Some(unit) = value.chars().last() else {
        return Err(err("it is empty"));
    };
    let digits = &value[..value.len() - unit.len_utf8()];
    let seconds_per_unit: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(err("the unit must be one of s, m, h, d")),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err("it must start with a whole number"));
    }
    if digits.len() > 9 {
        return Err(err("the number has more than 9 digits"));
    }
    let count: u64 = digits
        .parse()
        .map_err(|_| err("the number does not parse"))?;
    Ok(Duration::from_secs(count * seconds_per_unit))
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
