//! Cron schedules for preload rules. They end up in a Kubernetes CronJob, so
//! the accepted language is the CronJob's: five fields (minute, hour,
//! day-of-month, month, day-of-week) with numbers, `*`, `?`, ranges, steps,
//! lists and month/weekday names, or one of the `@hourly`-style macros. No
//! seconds field, no Quartz extensions (`L`, `W`, `#`).

use std::fmt;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use crate::{Error, Result};

/// The shape the CEL rule checks; [`Schedule::parse`] additionally checks ranges and names.
pub(crate) const SCHEDULE_PATTERN: &str = "^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|([0-9A-Za-z*/,?-]+ ){4}[0-9A-Za-z*/,?-]+)$";

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// A parsed, valid cron schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    text: String,
    cron: Cron,
}

impl Schedule {
    /// Parses a CronJob-style schedule, e.g. `"0 2 * * *"` or `"@daily"`.
    ///
    /// ```
    /// assert!(strata_crds::Schedule::parse("*/15 2-4 * JAN-MAR mon,fri").is_ok());
    /// assert!(strata_crds::Schedule::parse("0 2 * *").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self> {
        let err = |reason: String| Error::Schedule {
            value: text.to_string(),
            reason,
        };
        let pattern = if text.starts_with('@') {
            match text {
                "@yearly" | "@annually" | "@monthly" | "@weekly" | "@daily" | "@hourly" => text,
                // croner does not know @midnight; it is @daily for CronJob.
                "@midnight" => "@daily",
                _ => {
                    return Err(err(
                        "unknown macro; use @hourly, @daily, @midnight, @weekly, @monthly, @yearly or @annually".into(),
                    ));
                }
            }
        } else {
            let fields: Vec<&str> = text.split(' ').collect();
            if fields.len() != 5 || fields.iter().any(|f| f.is_empty()) {
                return Err(err(format!(
                    "it has {} space-separated fields, not 5",
                    text.split_whitespace().count()
                )));
            }
            for (index, field) in fields.iter().enumerate() {
                check_field_names(index, field).map_err(&err)?;
            }
            text
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(pattern)
            .map_err(|e| err(e.to_string()))?;
        Ok(Self {
            text: text.to_string(),
            cron,
        })
    }

    /// The schedule as written in the policy (what a CronJob's `schedule` gets).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed schedule, for computing run times.
    pub fn cron(&self) -> &Cron {
        &self.cron
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Letters are only allowed as month names (field 4) and weekday names (field 5);
/// this refuses Quartz-only syntax that the CronJob controller would reject.
fn check_field_names(index: usize, field: &str) -> std::result::Result<(), String> {
    const FIELD_NAMES: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];
    if field.contains('#') {
        return Err(format!(
            "the {} field uses '#', which CronJob schedules do not support",
            FIELD_NAMES[index]
        ));
    }
    for token in field.split([',', '-', '/']) {
        if !token.bytes().any(|b| b.is_ascii_alphabetic()) {
            continue;
        }
        let upper = token.to_ascii_uppercase();
        let known = match index {
            3 => MONTHS.contains(&upper.as_str()),
            4 => WEEKDAYS.contains(&upper.as_str()),
            _ => false,
        };
        if !known {
            return Err(format!(
                "{token:?} is not allowed in the {} field (only month names like JAN and weekday names like MON)",
                FIELD_NAMES[index]
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_cronjob_schedules() {
        for good in [
            "0 2 * * *",
            "*/15 * * * *",
            "0 0 1,15 * *",
            "30 3 * JAN-MAR MON-FRI",
            "0 12 ? * sun",
            "5 4 * * 0",
            "@daily",
            "@midnight",
            "@hourly",
            "@annually",
        ] {
            let s = Schedule::parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!(s.as_str(), good);
        }
    }

    #[test]
    fn refuses_other_shapes() {
        for bad in [
            "",
            "0 2 * *",
            "0 0 2 * * *",
            "0  2 * * *",
            "61 * * * *",
            "0 25 * * *",
            "0 0 L * *",
            "0 0 * * 5#3",
            "0 0 15W * *",
            "@every 5m",
            "@reboot",
            "0 2 * FOO *",
        ] {
            let e = Schedule::parse(bad).unwrap_err();
            assert!(e.to_string().contains("write 5 fields"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn next_occurrence_is_computable() {
        let s = Schedule::parse("0 2 * * *").unwrap();
        let start = chrono_start();
        let next = s.cron().find_next_occurrence(&start, false).unwrap();
        assert_eq!(next.to_rfc3339(), "2026-11-25T02:00:00+00:00");
    }

    fn chrono_start() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339("2026-11-24T09:30:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc)
    }
}
