//! The write workload's part of the report: per shape, what each system's writer saw and
//! when the source had everything, beside the local disk and the raw-PUT ceiling; then the
//! issue's goals.

use std::fmt::Write as _;

use super::{Verdict, cell, fmt_num, fmt_ratio, ratio, verdict_table};
use crate::harness::write::{
    AFTER_CLOSE_S, AGENT_S, BUSY, CASE_LOCAL, CASE_RAW, CASE_RAW_PARTS, CPU_MOUNT, CPU_SOURCE,
    LINK_UP, MODE_BACK, MODE_THROUGH, REQUESTS_PER_FILE, SOURCE_S, WORKLOAD, WRITER_MIBS, WRITER_S,
};
use crate::mounts::System;
use crate::results::BenchResults;

/// A write-back writer's share of the local disk's sequential write speed.
const WRITER_SHARE: f64 = 0.8;
/// Time until everything is at the source, over the raw-PUT ceiling's.
const MAX_OVER_CEILING: f64 = 1.2;
/// Peers' time until the small files are at the source, over Strata's.
const PEER_FACTOR: f64 = 2.0;

/// The shapes the mounts were measured with ("1 x 1024 MiB", "1000 x 1 MiB by 8
/// writers"), the large file first.
pub(super) fn shapes(r: &BenchResults, link: &str) -> Vec<String> {
    let mut out: Vec<String> = r
        .measurements
        .iter()
        .filter(|m| m.workload == WORKLOAD && m.link == link && m.system.is_mount())
        .filter_map(|m| m.case.split(", ").next().map(str::to_string))
        .collect();
    out.sort_by_key(|s| {
        (
            !s.starts_with("1 x "),
            data_of(s).to_string(),
            writers_of(s),
        )
    });
    out.dedup();
    out
}

/// The data of a shape, whoever wrote it: the references' case label.
fn data_of(shape: &str) -> &str {
    shape.split(" by ").next().unwrap_or(shape)
}

fn writers_of(shape: &str) -> usize {
    shape
        .split(" by ")
        .nth(1)
        .and_then(|w| w.split(' ').next()?.parse().ok())
        .unwrap_or(1)
}

/// The raw-PUT ceiling of a shape's data: the faster raw row (for the large file, 8 parts in
/// flight can be slower than 4 when the S3 server's disk is the bottleneck), median seconds.
fn ceiling(r: &BenchResults, link: &str, shape: &str) -> Option<f64> {
    [CASE_RAW, CASE_RAW_PARTS]
        .iter()
        .filter_map(|c| {
            r.median(
                WORKLOAD,
                &format!("{}, {c}", data_of(shape)),
                SOURCE_S,
                System::ObjectStore,
                link,
            )
        })
        .reduce(f64::min)
}

/// (row label, case, system) of one shape's table.
fn rows(shape: &str) -> Vec<(String, String, System)> {
    let mut rows = vec![
        (
            format!("Strata, {MODE_BACK}"),
            format!("{shape}, {MODE_BACK}"),
            System::Strata,
        ),
        (
            format!("Strata, {MODE_THROUGH}"),
            format!("{shape}, {MODE_THROUGH}"),
            System::Strata,
        ),
        ("rclone".into(), shape.to_string(), System::Rclone),
        ("s3fs".into(), shape.to_string(), System::S3fs),
    ];
    let data = data_of(shape);
    for case in [CASE_RAW, CASE_RAW_PARTS] {
        rows.push((case.into(), format!("{data}, {case}"), System::ObjectStore));
    }
    rows.push((
        CASE_LOCAL.into(),
        format!("{shape}, {CASE_LOCAL}"),
        System::LocalFile,
    ));
    rows
}

pub(super) fn tables(out: &mut String, r: &BenchResults, link: &str) {
    let shapes = shapes(r, link);
    if shapes.is_empty() {
        return;
    }
    let _ = writeln!(out, "### write (seconds, lower is better), link: {link}\n");
    out.push_str("writer = from the first open to the last `close` returning (the large file by one writer in 1 MiB writes; the small files by 1 or 8 writers, each writing its share one file after another). at the source = from the first open until the bucket, polled at the S3 server itself, lists every object with its whole size. raw PUTs = the same bytes PUT from memory through the same link (the large file as one multipart upload of 8 MiB parts; 8 in flight as Strata's uploader keeps 8 uploads, 4 parts as it keeps per file); the raw-PUT ceiling is the faster raw row; local disk = the same files written, fsynced and closed by as many writers on the disk the caches are on. Each run measures, per shape: the local disk, Strata write-back, the raw PUTs, Strata write-through, rclone, s3fs, in that order, so each reference is next to the Strata figure it is held to. Strata's \"agent\" column: when its counters say every file was uploaded and none is pending. CPU = seconds used from the first open until everything was at the source.\n\n");
    let mut verdicts = Vec::new();
    let m = |case: &str, metric: &str, s: System| r.median(WORKLOAD, case, metric, s, link);
    for shape in &shapes {
        let _ = writeln!(out, "{shape}:\n");
        out.push_str("| | writer (s) | writer MiB/s | at the source (s) | after the last close (s) | agent: all uploaded (s) | at the source / raw-PUT ceiling | link bytes up / data | CPU s, mount process | CPU s, S3 server + proxy | machine busy (%) |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
        let ceiling = ceiling(r, link, shape);
        for (label, case, system) in rows(shape) {
            if r.find(WORKLOAD, &case, SOURCE_S, system, link)
                .next()
                .is_none()
                && r.find(WORKLOAD, &case, WRITER_S, system, link)
                    .next()
                    .is_none()
            {
                continue;
            }
            let c = |metric: &str| {
                if r.find(WORKLOAD, &case, metric, system, link)
                    .next()
                    .is_some()
                {
                    cell(r, WORKLOAD, &case, metric, system, link)
                } else {
                    String::new()
                }
            };
            let over = match ratio(m(&case, SOURCE_S, system), ceiling) {
                Some(x) => fmt_ratio(Some(x)),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "| {label} | {} | {} | {} | {} | {} | {over} | {} | {} | {} | {} |",
                c(WRITER_S),
                c(WRITER_MIBS),
                c(SOURCE_S),
                c(AFTER_CLOSE_S),
                c(AGENT_S),
                c(LINK_UP),
                c(CPU_MOUNT),
                c(CPU_SOURCE),
                c(BUSY),
            );
        }
        out.push('\n');
        let per_file: Vec<String> = [MODE_BACK, MODE_THROUGH]
            .iter()
            .filter_map(|mode| {
                let case = format!("{shape}, {mode}");
                let ops: std::collections::BTreeSet<&str> = r
                    .measurements
                    .iter()
                    .filter(|x| x.workload == WORKLOAD && x.case == case && x.link == link)
                    .filter_map(|x| x.metric.strip_prefix(REQUESTS_PER_FILE))
                    .collect();
                let ops: Vec<String> = ops
                    .into_iter()
                    .filter_map(|op| {
                        let metric = format!("{REQUESTS_PER_FILE}{op}");
                        m(&case, &metric, System::Strata).map(|v| format!("{op} {}", fmt_num(v)))
                    })
                    .collect();
                (!ops.is_empty()).then(|| format!("{mode}: {}", ops.join(", ")))
            })
            .collect();
        if !per_file.is_empty() {
            let _ = writeln!(
                out,
                "Strata's requests to the source per file written (its own counters, medians): {}.\n",
                per_file.join("; ")
            );
        }
        verdicts.extend(goals(r, link, shape));
    }
    verdict_table(out, &verdicts);
}

/// The goals for one shape.
fn goals(r: &BenchResults, link: &str, shape: &str) -> Vec<Verdict> {
    let m = |case: &str, metric: &str, s: System| r.median(WORKLOAD, case, metric, s, link);
    let back = format!("{shape}, {MODE_BACK}");
    let mut out = Vec::new();
    if shape.starts_with("1 x ") {
        let share = ratio(
            m(&back, WRITER_MIBS, System::Strata),
            m(
                &format!("{shape}, {CASE_LOCAL}"),
                WRITER_MIBS,
                System::LocalFile,
            ),
        );
        out.push(Verdict {
            target: format!(
                "{shape}: a {MODE_BACK} writer ≥{:.0}% of the local disk's sequential write (write + fsync)",
                WRITER_SHARE * 100.0
            ),
            measured: share
                .map(|x| format!("{:.0}% (Strata writer MiB/s / local disk MiB/s)", x * 100.0))
                .unwrap_or_else(|| "not measured".into()),
            met: share.map(|x| x >= WRITER_SHARE),
        });
    }
    let ceiling = ceiling(r, link, shape);
    for mode in [MODE_BACK, MODE_THROUGH] {
        let over = ratio(
            m(&format!("{shape}, {mode}"), SOURCE_S, System::Strata),
            ceiling,
        );
        out.push(Verdict {
            target: format!(
                "{shape}, {mode}: everything at the source within {MAX_OVER_CEILING}x the raw-PUT ceiling ({} s)",
                ceiling.map(fmt_num).unwrap_or_else(|| "—".into())
            ),
            measured: over
                .map(|x| format!("{} (Strata s / raw PUTs s)", fmt_ratio(Some(x))))
                .unwrap_or_else(|| "not measured".into()),
            met: over.map(|x| x <= MAX_OVER_CEILING),
        });
    }
    if shape.starts_with("1 x ") {
        return out;
    }
    for mode in [MODE_BACK, MODE_THROUGH] {
        let strata = m(&format!("{shape}, {mode}"), SOURCE_S, System::Strata);
        for peer in [System::Rclone, System::S3fs] {
            let x = ratio(m(shape, SOURCE_S, peer), strata);
            out.push(Verdict {
                target: format!(
                    "{shape}, {mode}: at the source ≥{PEER_FACTOR}x sooner than {}",
                    peer.label()
                ),
                measured: x
                    .map(|x| format!("{} ({} s / Strata s)", fmt_ratio(Some(x)), peer.label()))
                    .unwrap_or_else(|| "not measured".into()),
                met: x.map(|x| x >= PEER_FACTOR),
            });
        }
    }
    // Whether half the faster peer's time is possible here at all: the raw-PUT ceiling.
    let faster_peer = [System::Rclone, System::S3fs]
        .iter()
        .filter_map(|p| m(shape, SOURCE_S, *p))
        .reduce(f64::min);
    let need = faster_peer.map(|p| p / PEER_FACTOR);
    let room = ratio(need, ceiling);
    out.push(Verdict {
        target: format!(
            "{shape}: half the faster peer's time ({} s) is above the raw-PUT ceiling ({} s), i.e. reachable here at all",
            need.map(fmt_num).unwrap_or_else(|| "—".into()),
            ceiling.map(fmt_num).unwrap_or_else(|| "—".into())
        ),
        measured: room
            .map(|x| format!("{} (needed s / ceiling s)", fmt_ratio(Some(x))))
            .unwrap_or_else(|| "not measured".into()),
        met: room.map(|x| x >= 1.0),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::Measurement;

    fn m(case: &str, metric: &str, system: System, value: f64) -> Measurement {
        Measurement {
            workload: WORKLOAD.into(),
            case: case.into(),
            system,
            link: "25 ms".into(),
            metric: metric.into(),
            unit: String::new(),
            higher_is_better: false,
            run: 1,
            value,
            complete: true,
        }
    }

    #[test]
    fn goals_compare_with_the_local_disk_the_ceiling_and_the_peers() {
        let large = "1 x 1024 MiB";
        let small = "1000 x 1 MiB by 1 writer";
        let eight = "1000 x 1 MiB by 8 writers";
        let data = "1000 x 1 MiB";
        let mut r = BenchResults::default();
        for x in [
            m(
                &format!("{large}, write-back"),
                WRITER_MIBS,
                System::Strata,
                900.0,
            ),
            m(
                &format!("{large}, {CASE_LOCAL}"),
                WRITER_MIBS,
                System::LocalFile,
                1000.0,
            ),
            m(
                &format!("{large}, write-back"),
                SOURCE_S,
                System::Strata,
                13.0,
            ),
            m(
                &format!("{large}, {CASE_RAW}"),
                SOURCE_S,
                System::ObjectStore,
                12.0,
            ),
            m(
                &format!("{large}, {CASE_RAW_PARTS}"),
                SOURCE_S,
                System::ObjectStore,
                10.0,
            ),
            m(
                &format!("{eight}, write-back"),
                SOURCE_S,
                System::Strata,
                30.0,
            ),
            m(
                &format!("{small}, write-back"),
                SOURCE_S,
                System::Strata,
                11.0,
            ),
            m(
                &format!("{data}, {CASE_RAW}"),
                SOURCE_S,
                System::ObjectStore,
                10.0,
            ),
            m(small, SOURCE_S, System::Rclone, 30.0),
            m(small, SOURCE_S, System::S3fs, 20.0),
        ] {
            r.measurements.push(x);
        }
        assert_eq!(shapes(&r, "25 ms"), [large, small, eight]);
        let v: Vec<Verdict> = shapes(&r, "25 ms")
            .iter()
            .flat_map(|s| goals(&r, "25 ms", s))
            .collect();
        let find = |t: &str| v.iter().find(|x| x.target.contains(t)).unwrap();
        assert_eq!(find("write-back writer ≥80%").met, Some(true));
        assert_eq!(
            find(&format!("{large}, write-back: everything")).met,
            Some(false),
            "1.3x"
        );
        assert_eq!(
            find(&format!("{small}, write-back: everything")).met,
            Some(true),
            "1.1x"
        );
        assert_eq!(
            find(&format!("{large}, write-through: everything")).met,
            None
        );
        assert_eq!(
            find(&format!("{eight}, write-back: everything")).met,
            Some(false),
            "3x"
        );
        assert_eq!(
            find(&format!(
                "{small}, write-back: at the source ≥2x sooner than rclone"
            ))
            .met,
            Some(true)
        );
        assert_eq!(
            find(&format!(
                "{small}, write-back: at the source ≥2x sooner than s3fs"
            ))
            .met,
            Some(false)
        );
        // Half of s3fs's 20 s is 10 s: just what the ceiling allows.
        let room = find("half the faster peer's time (10.0 s)");
        assert_eq!(room.met, Some(true), "{}", room.measured);
        let mut out = String::new();
        tables(&mut out, &r, "25 ms");
        assert!(out.contains("| Strata, write-back |"), "{out}");
        assert!(out.contains("| 1.30x |"), "{out}");
    }
}
