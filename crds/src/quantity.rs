//! Kubernetes quantities (`4Mi`, `200Gi`, `1500M`, `1e9`) as byte counts.
//!
//! The grammar is apimachinery's `resource.Quantity`; a byte count must come
//! out as a whole, non-negative number that fits in `u64`. The arithmetic is
//! exact (integers only), so `1.5Gi` is 1610612736 and `0.5` is refused.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::Deserialize as _;

use crate::{Error, Result};

/// Parses a Kubernetes quantity into a whole number of bytes.
///
/// ```
/// assert_eq!(strata_crds::parse_quantity_bytes("4Mi").unwrap(), 4 << 20);
/// assert_eq!(strata_crds::parse_quantity_bytes("1.5Gi").unwrap(), 1_610_612_736);
/// assert_eq!(strata_crds::parse_quantity_bytes("2k").unwrap(), 2000);
/// assert!(strata_crds::parse_quantity_bytes("0.5").is_err());
/// ```
pub fn parse_quantity_bytes(value: &str) -> Result<u64> {
    let err = |reason: &str| Error::Quantity {
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let s = value.trim();
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    let (negative, s) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    // Split the number (digits with at most one '.') from the suffix.
    let number_len = s
        .bytes()
        .position(|b| !(b.is_ascii_digit() || b == b'.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_len);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
        return Err(err("it must start with a number"));
    }
    // Value = digits * 10^(exp10) * 2^(exp2).
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 38 {
        return Err(err("the number has too many digits"));
    }
    let mantissa: u128 = if digits.is_empty() {
        0
    } else {
        digits
            .parse()
            .map_err(|_| err("the number does not parse"))?
    };
    let mut exp10: i64 = -(frac_part.len() as i64);
    let mut exp2: u32 = 0;
    match suffix {
        "" => {}
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        _ if suffix.starts_with(['e', 'E']) => {
            let exp: i64 = suffix[1..]
                .parse()
                .map_err(|_| err("the exponent after 'e' must be a whole number"))?;
            if exp.abs() > 40 {
                return Err(err("the exponent is out of range"));
            }
            exp10 += exp;
        }
        _ => {
            return Err(err(
                "unknown suffix; use Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E or none",
            ));
        }
    }
    if mantissa == 0 {
        return Ok(0);
    }
    if negative {
        return Err(err("a byte count cannot be negative"));
    }
    let too_big = || err("it is larger than 2^63-1 bytes");
    let mut bytes = mantissa;
    if exp10 >= 0 {
        let scale = 10u128.checked_pow(exp10 as u32).ok_or_else(too_big)?;
        bytes = bytes.checked_mul(scale).ok_or_else(too_big)?;
    }
    bytes = bytes.checked_mul(1u128 << exp2).ok_or_else(too_big)?;
    if exp10 < 0 {
        let scale = 10u128
            .checked_pow((-exp10) as u32)
            .ok_or_else(|| err("it is not a whole number of bytes"))?;
        if !bytes.is_multiple_of(scale) {
            return Err(err("it is not a whole number of bytes"));
        }
        bytes /= scale;
    }
    // Kubernetes quantities stop at 2^63-1; so does the API server's CEL `isInteger()`.
    if bytes > i64::MAX as u128 {
        return Err(too_big());
    }
    Ok(bytes as u64)
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
