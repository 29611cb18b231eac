//! The hdfs workload's part of the report: each source's reads through Strata beside the raw
//! ceiling through the same link, and the migration beside the raw copy; then the issue's
//! goals.

use std::fmt::Write as _;

use super::{Verdict, ratio, verdict_table, workload_table};
use crate::harness::hdfs::{CASE_MIGRATE, Kind, WORKLOAD, case};
use crate::mounts::System;
use crate::results::BenchResults;

/// Warm reads from HDFS against S3's: within 10%.
const WARM_SHARE: f64 = 0.9;
/// Cold reads from HDFS against the raw ceiling of HDFS through the link.
const COLD_SHARE: f64 = 0.7;
/// The migration against the raw copy of the two stores.
const MIGRATE_SHARE: f64 = 0.7;

const READS: [&str; 2] = ["seq-large", "epoch-small"];

pub(super) fn tables(out: &mut String, r: &BenchResults, link: &str) {
    if !r
        .measurements
        .iter()
        .any(|m| m.workload == WORKLOAD && m.link == link)
    {
        return;
    }
    let _ = writeln!(out, "### hdfs (MiB/s, higher is better), link: {link}\n");
    out.push_str("An HDFS lake (MiniDFS) and the S3 server behind the same link (see Settings, hdfs). Strata = reads through its mount (seq-large by 1 reader, epoch-small by 8), and the migration by `strata-agent migrate`; object_store GETs = the raw ceiling through the link (cold rows) and the raw copy of the migration.\n\n");
    let mut cases: Vec<String> = Vec::new();
    for kind in [Kind::S3, Kind::Hdfs] {
        for what in READS {
            for warm in [false, true] {
                cases.push(case(kind, what, warm));
            }
        }
    }
    cases.push(CASE_MIGRATE.to_string());
    let rows: Vec<&str> = cases.iter().map(String::as_str).collect();
    workload_table(out, r, WORKLOAD, &rows, "throughput", link, true);

    let m = |c: &str, s: System| r.median(WORKLOAD, c, "throughput", s, link);
    let pct = |x: Option<f64>| {
        x.map(|x| format!("{:.0}%", x * 100.0))
            .unwrap_or_else(|| "—".into())
    };
    let mut verdicts = Vec::new();
    for what in READS {
        let warm = ratio(
            m(&case(Kind::Hdfs, what, true), System::Strata),
            m(&case(Kind::S3, what, true), System::Strata),
        );
        verdicts.push(Verdict {
            target: format!("{what} warm: HDFS within 10% of S3"),
            measured: format!("hdfs:// {} of s3://", pct(warm)),
            met: warm.map(|v| v >= WARM_SHARE),
        });
        let cold = ratio(
            m(&case(Kind::Hdfs, what, false), System::Strata),
            m(&case(Kind::Hdfs, what, false), System::ObjectStore),
        );
        verdicts.push(Verdict {
            target: format!(
                "{what} cold from HDFS: ≥{:.0}% of its raw ceiling",
                COLD_SHARE * 100.0
            ),
            measured: format!("{} of the raw GETs through the link", pct(cold)),
            met: cold.map(|v| v >= COLD_SHARE),
        });
    }
    let migrate = ratio(
        m(CASE_MIGRATE, System::Strata),
        m(CASE_MIGRATE, System::ObjectStore),
    );
    verdicts.push(Verdict {
        target: format!(
            "migration hdfs:// → s3://: ≥{:.0}% of the raw copy",
            MIGRATE_SHARE * 100.0
        ),
        measured: format!(
            "{} of the raw copy (GET + PUT, same concurrency)",
            pct(migrate)
        ),
        met: migrate.map(|v| v >= MIGRATE_SHARE),
    });
    verdict_table(out, &verdicts);
}
