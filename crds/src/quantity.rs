//! Kubernetes quantities (`4Mi`, `200Gi`, `1500M`, `1e9`) as byte counts.
//!
//! The grammar is apimachinery's `resource.Quantity`; a byte count must come
//! out as a whole, non-negative number that fits in `i64`. The parser is the
//! agents' own (`strata_wire::config::parse_quantity`, exact: `1.5Gi` is
//! 1610612736 and `0.5` is refused), so a size the CRDs accept is read the same
//! by every agent.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::Deserialize as _;
use strata_wire::WireError;

use crate::{Error, Result};

/// The CEL rule text of a byte count, for `concat!` into the rules of size fields.
/// `asInteger()` fails past 2^63-1 wherever CEL runs (the API server's `isInteger()`
/// already stops there; kube-cel's, in the tests, does not).
macro_rules! byte_count_rule {
    () => {
        "isQuantity(string(self)) && quantity(string(self)).isInteger() && quantity(string(self)).asInteger() >= 0"
    };
}
pub(crate) use byte_count_rule;

/// The CEL twin of [`parse_quantity_bytes`]: a Kubernetes quantity that is a whole
/// number of bytes from 0 to 2^63-1. Size fields add their own bounds to it.
pub const BYTE_COUNT_RULE: &str = byte_count_rule!();

/// Parses a Kubernetes quantity into a whole number of bytes.
///
/// ```
/// assert_eq!(strata_crds::parse_quantity_bytes("4Mi").unwrap(), 4 << 20);
/// assert_eq!(strata_crds::parse_quantity_bytes("1.5Gi").unwrap(), 1_610_612_736);
/// assert_eq!(strata_crds::parse_quantity_bytes("2k").unwrap(), 2000);
/// assert!(strata_crds::parse_quantity_bytes("0.5").is_err());
/// ```
pub fn parse_quantity_bytes(value: &str) -> Result<u64> {
    strata_wire::config::parse_quantity(value).map_err(|e| Error::Quantity {
        value: value.to_string(),
        reason: match e {
            WireError::Config { message, .. } => message,
            other => other.to_string(),
        },
    })
}

/// [`parse_quantity_bytes`] on a [`Quantity`].
pub(crate) fn quantity_bytes(q: &Quantity) -> Result<u64> {
    parse_quantity_bytes(&q.0)
}

/// A byte count for people, in binary units with one decimal, e.g. `12.4Gi`,
/// `512Ki`, `17`. Used for the `Size` printer column.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    if bytes < 1024 {
        return bytes.to_string();
    }
    let mut unit = 0;
    let mut scaled = bytes as f64 / 1024.0;
    while scaled >= 1024.0 && unit + 1 < UNITS.len() {
        scaled /= 1024.0;
        unit += 1;
    }
    let text = format!("{scaled:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text}{}", UNITS[unit])
}

/// Deserializes a [`Quantity`] from a string or an integer. The CRD declares
/// quantities int-or-string (like the core API), and the API server stores an
/// integer as an integer, which `Quantity`'s own deserializer would refuse.
pub(crate) fn deserialize_int_or_string<'de, D>(deserializer: D) -> Result<Quantity, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum IntOrString {
        Int(i64),
        Uint(u64),
        String(String),
    }
    Ok(Quantity(match IntOrString::deserialize(deserializer)? {
        IntOrString::Int(i) => i.to_string(),
        IntOrString::Uint(u) => u.to_string(),
        IntOrString::String(s) => s,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_quantities() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("1", 1),
            ("1Ki", 1024),
            ("4Mi", 4 * 1024 * 1024),
            ("64Mi", 64 << 20),
            ("200Gi", 200 << 30),
            ("1.5Gi", 1_610_612_736),
            ("1Ei", 1 << 60),
            ("7Ei", 7 << 60),
            ("1k", 1000),
            ("1500M", 1_500_000_000),
            ("1e9", 1_000_000_000),
            ("1E3", 1000),
            ("2.5e3", 2500),
            ("+7", 7),
            ("1000m", 1),
            ("0.25Ki", 256),
            (".5Ki", 512),
            ("5.", 5),
            ("-0", 0),
        ];
        for (text, want) in cases {
            assert_eq!(parse_quantity_bytes(text).unwrap(), *want, "{text}");
        }
    }

    #[test]
    fn refuses_non_byte_counts() {
        for bad in [
            "", "Mi", "4MB", "4mi", "-1Gi", "0.5", "1500m", "1.2.3", "8Ei", "1e400", "4 Mi",
            "1e-3", "abc",
        ] {
            let e = parse_quantity_bytes(bad).unwrap_err();
            assert!(e.to_string().contains("e.g. 4Mi"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(format_bytes(0), "0");
        assert_eq!(format_bytes(1023), "1023");
        assert_eq!(format_bytes(1024), "1Ki");
        assert_eq!(format_bytes(1536), "1.5Ki");
        assert_eq!(format_bytes(4 << 20), "4Mi");
        assert_eq!(format_bytes(13_314_398_618), "12.4Gi");
        assert_eq!(format_bytes(u64::MAX), "16Ei");
        assert_eq!(format_bytes(7 << 60), "7Ei");
    }
}
