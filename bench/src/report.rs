//! Renders docs/BENCHMARKS.md's generated part and the charts from the results.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use crate::mounts::System;
use crate::results::BenchResults;
use crate::stats::{median, spread};
use crate::{Error, Result, charts};

mod hdfs;
mod write;

pub const BEGIN: &str = "<!-- generated:begin (strata-bench writes this part; edit outside it) -->";
pub const END: &str = "<!-- generated:end -->";

pub const SEQ_CASES: [&str; 6] = [
    "1 job, cold",
    "1 job, warm",
    "1 job, hot",
    "4 jobs, cold",
    "4 jobs, warm",
    "4 jobs, hot",
];
/// object_store only: ranged GETs with many in flight, the most any client gets from this
/// server and link on this machine.
pub const CEILING_CASES: [&str; 2] = ["raw GETs, 16 in flight", "raw GETs, 64 in flight"];
pub const EPOCH_CASES: [&str; 4] = [
    "1 reader, epoch 1",
    "1 reader, epoch 2",
    "8 readers, epoch 1",
    "8 readers, epoch 2",
];
const TABLE_SYSTEMS: [System; 5] = [
    System::Strata,
    System::Rclone,
    System::S3fs,
    System::ObjectStore,
    System::LocalFile,
];

/// What "a small constant" above the memory quota is taken to mean.
const SMALL_CONSTANT_MIB: f64 = 128.0;

pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "—".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// "median (n=3, ±12%)", with a dagger when a run was cut short by a time limit.
fn cell(r: &BenchResults, w: &str, case: &str, metric: &str, s: System, link: &str) -> String {
    let ms: Vec<_> = r.find(w, case, metric, s, link).collect();
    if ms.is_empty() {
        return "—".into();
    }
    let values: Vec<f64> = ms.iter().map(|m| m.value).collect();
    let med = median(&values).unwrap_or(f64::NAN);
    let cut = if ms.iter().any(|m| !m.complete) {
        "†"
    } else {
        ""
    };
    match (values.len(), spread(&values)) {
        (1, _) | (_, None) => format!("{}{cut}", fmt_num(med)),
        (n, Some(sp)) => format!("{}{cut} (n={n}, ±{:.0}%)", fmt_num(med), sp * 50.0),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn fmt_ratio(x: Option<f64>) -> String {
    x.map(|x| format!("{}x", fmt_num(x)))
        .unwrap_or_else(|| "—".into())
}

/// One target line: what, the measured figure, met or not.
struct Verdict {
    target: String,
    measured: String,
    met: Option<bool>,
}

fn check(target: &str, measured: Option<f64>, threshold: f64, what: &str) -> Verdict {
    Verdict {
        target: target.to_string(),
        measured: measured
            .map(|m| format!("{} ({what})", fmt_ratio(Some(m))))
            .unwrap_or_else(|| format!("not measured ({what})")),
        met: measured.map(|m| m >= threshold),
    }
}

fn targets(r: &BenchResults, link: &str) -> Vec<Verdict> {
    let mut out = Vec::new();
    let m = |w: &str, c: &str, metric: &str, s: System| r.median(w, c, metric, s, link);
    let tp = "throughput";
    for case in ["1 job, warm", "4 jobs, warm", "1 job, cold", "4 jobs, cold"] {
        let cold = case.ends_with("cold");
        let threshold = if cold { 2.0 } else { 3.0 };
        for peer in [System::Rclone, System::S3fs] {
            out.push(check(
                &format!(
                    "seq-large {case}: ≥{threshold}x {} ({})",
                    peer.label(),
                    if cold {
                        "cold reads ≥2x"
                    } else {
                        "warm reads ≥3x"
                    }
                ),
                ratio(
                    m("seq-large", case, tp, System::Strata),
                    m("seq-large", case, tp, peer),
                ),
                threshold,
                "Strata / peer, MiB/s",
            ));
        }
    }
    // Whether 2x the faster peer is within reach of any client here: the raw-GET ceiling.
    let ceiling = CEILING_CASES
        .iter()
        .filter_map(|c| m("seq-large", c, tp, System::ObjectStore))
        .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))));
    for case in ["1 job, cold", "4 jobs, cold"] {
        let faster_peer = [System::Rclone, System::S3fs]
            .iter()
            .filter_map(|p| m("seq-large", case, tp, *p))
            .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))));
        let need = faster_peer.map(|p| 2.0 * p);
        out.push(check(
            &format!(
                "seq-large {case}: 2x the faster peer ({} MiB/s) is below the raw-GET ceiling ({} MiB/s), i.e. reachable here at all",
                need.map(fmt_num).unwrap_or_else(|| "—".into()),
                ceiling.map(fmt_num).unwrap_or_else(|| "—".into()),
            ),
            ratio(ceiling, need),
            1.0,
            "ceiling / (2 x faster peer)",
        ));
    }
    for peer in [System::Rclone, System::S3fs] {
        out.push(check(
            &format!("random-4k warm: ≥3x {} IOPS", peer.label()),
            ratio(
                m("random-4k", "warm", "IOPS", System::Strata),
                m("random-4k", "warm", "IOPS", peer),
            ),
            3.0,
            "Strata / peer",
        ));
    }
    for case in ["1 job, warm", "1 job, hot", "4 jobs, warm", "4 jobs, hot"] {
        out.push(check(
            &format!("seq-large {case}: ≥90% of the local file"),
            ratio(
                m("seq-large", case, tp, System::Strata),
                m("seq-large", case, tp, System::LocalFile),
            ),
            0.9,
            "Strata / local file",
        ));
    }
    let fps = "files/s";
    for peer in [System::Rclone, System::S3fs] {
        out.push(check(
            &format!("epoch-small 8 readers, epoch 1: ≥5x {}", peer.label()),
            ratio(
                m("epoch-small", "8 readers, epoch 1", fps, System::Strata),
                m("epoch-small", "8 readers, epoch 1", fps, peer),
            ),
            5.0,
            "Strata / peer, files/s",
        ));
        out.push(check(
            &format!(
                "epoch-small 8 readers, epoch 2 (warm): ≥3x {}",
                peer.label()
            ),
            ratio(
                m("epoch-small", "8 readers, epoch 2", fps, System::Strata),
                m("epoch-small", "8 readers, epoch 2", fps, peer),
            ),
            3.0,
            "Strata / peer, files/s",
        ));
    }
    for readers in ["1 reader", "8 readers"] {
        out.push(check(
            &format!("epoch-small {readers}: epoch 2 ≥10x faster than epoch 1"),
            ratio(
                m(
                    "epoch-small",
                    &format!("{readers}, epoch 2"),
                    fps,
                    System::Strata,
                ),
                m(
                    "epoch-small",
                    &format!("{readers}, epoch 1"),
                    fps,
                    System::Strata,
                ),
            ),
            10.0,
            "Strata epoch 2 / epoch 1",
        ));
    }
    if let Some(quota) = r.memory_quota_bytes {
        let peak = r
            .measurements
            .iter()
            .filter(|x| x.workload == "memory" && x.system == System::Strata && x.link == link)
            .map(|x| x.value)
            .fold(f64::NAN, f64::max);
        let quota_mib = quota as f64 / (1024.0 * 1024.0);
        out.push(Verdict {
            target: format!(
                "Strata peak RSS ≤ memory quota ({}) + {SMALL_CONSTANT_MIB} MiB",
                fmt_num(quota_mib)
            ),
            measured: if peak.is_finite() {
                format!("{} MiB (max over all sessions)", fmt_num(peak))
            } else {
                "not measured".into()
            },
            met: peak
                .is_finite()
                .then_some(peak <= quota_mib + SMALL_CONSTANT_MIB),
        });
    }
    out.extend(list_huge_targets(r, link));
    out.push(check(
        "list: warm ≥20x faster than cold",
        ratio(
            m("list", "cold", "seconds", System::Strata),
            m("list", "warm", "seconds", System::Strata),
        ),
        20.0,
        "Strata cold s / warm s",
    ));
    out
}

fn hit_ratio_targets(r: &BenchResults) -> Vec<Verdict> {
    let mut out = Vec::new();
    let traces: BTreeSet<&str> = r.hit_ratio.iter().map(|p| p.trace.as_str()).collect();
    for t in traces.iter().filter(|t| t.contains("scans")) {
        let at = |policy: &str| -> Vec<(f64, f64)> {
            r.hit_ratio
                .iter()
                .filter(|p| p.trace == *t && p.policy == policy)
                .map(|p| (p.cache_fraction, p.byte_hit_ratio * 100.0))
                .collect()
        };
        let (fifo, lru, opt) = (at("s3fifo"), at("lru"), at(crate::sim::belady::NAME));
        let gains: Vec<f64> = fifo.iter().zip(&lru).map(|(f, l)| f.1 - l.1).collect();
        let gaps: Vec<f64> = opt.iter().zip(&fifo).map(|(o, f)| o.1 - f.1).collect();
        let gain_ok = gains.iter().filter(|g| **g >= 5.0).count();
        let gap_ok = gaps.iter().filter(|g| **g <= 10.0).count();
        let min_gain = gains.iter().copied().fold(f64::INFINITY, f64::min);
        let max_gain = gains.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let max_gap = gaps.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        out.push(Verdict {
            target: format!("{t}: S3-FIFO ≥5 points above LRU"),
            measured: format!(
                "{:+.1} to {:+.1} points; ≥5 at {gain_ok} of {} cache sizes",
                min_gain,
                max_gain,
                gains.len()
            ),
            met: Some(gain_ok == gains.len()),
        });
        out.push(Verdict {
            target: format!("{t}: S3-FIFO within 10 points of the optimum"),
            measured: format!(
                "gap up to {max_gap:.1} points; within 10 at {gap_ok} of {} cache sizes",
                gaps.len()
            ),
            met: Some(gap_ok == gaps.len()),
        });
    }
    out
}

fn verdict_table(out: &mut String, rows: &[Verdict]) {
    out.push_str("| target | measured | met |\n| --- | --- | --- |\n");
    for v in rows {
        let met = match v.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        let _ = writeln!(out, "| {} | {} | {met} |", v.target, v.measured);
    }
    out.push('\n');
}

fn systems_in(r: &BenchResults, workload: &str, link: &str) -> Vec<System> {
    TABLE_SYSTEMS
        .into_iter()
        .filter(|s| {
            r.measurements
                .iter()
                .any(|m| m.workload == workload && m.system == *s && m.link == link)
        })
        .collect()
}

fn workload_table(
    out: &mut String,
    r: &BenchResults,
    workload: &str,
    cases: &[&str],
    metric: &str,
    link: &str,
    higher_is_better: bool,
) {
    let systems = systems_in(r, workload, link);
    if systems.is_empty() {
        return;
    }
    let peers: Vec<System> = systems
        .iter()
        .copied()
        .filter(|s| *s != System::Strata)
        .collect();
    let _ = write!(out, "| case |");
    for s in &systems {
        let _ = write!(out, " {} |", s.label());
    }
    for p in &peers {
        let _ = write!(out, " Strata vs {} |", p.label());
    }
    out.push_str("\n| --- |");
    for _ in 0..systems.len() + peers.len() {
        out.push_str(" --- |");
    }
    out.push('\n');
    for case in cases {
        if !systems
            .iter()
            .any(|s| r.find(workload, case, metric, *s, link).next().is_some())
        {
            continue;
        }
        let _ = write!(out, "| {case} |");
        for s in &systems {
            let _ = write!(out, " {} |", cell(r, workload, case, metric, *s, link));
        }
        let strata = r.median(workload, case, metric, System::Strata, link);
        for p in &peers {
            let peer = r.median(workload, case, metric, *p, link);
            let x = if higher_is_better {
                ratio(strata, peer)
            } else {
                ratio(peer, strata)
            };
            let _ = write!(out, " {} |", fmt_ratio(x));
        }
        out.push('\n');
    }
    out.push('\n');
}

/// The list-huge data set sizes measured ("200000 objects, cold" -> 200000), ascending.
fn huge_sizes(r: &BenchResults) -> Vec<usize> {
    let mut sizes: Vec<usize> = r
        .measurements
        .iter()
        .filter(|m| m.workload == "list-huge")
        .filter_map(|m| m.case.split(' ').next()?.parse().ok())
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// The round trip of a link labelled "25 ms" or "25 ms, 200 Mbit/s": twice the one-way delay.
fn round_trip_seconds(link: &str) -> Option<f64> {
    let ms: f64 = link.split_whitespace().next()?.parse().ok()?;
    Some(2.0 * ms / 1000.0)
}

/// list-huge's goals: cold within 1.2x of the source's paging floor, warm at least 50x
/// faster than cold, at most 200 bytes of agent memory per cached entry.
fn list_huge_targets(r: &BenchResults, link: &str) -> Vec<Verdict> {
    let mut out = Vec::new();
    let m = |c: &str, metric: &str, s: System| r.median("list-huge", c, metric, s, link);
    for n in huge_sizes(r) {
        let cold = m(&format!("{n} objects, cold"), "seconds", System::Strata);
        let floor = m(
            &format!("{n} objects, cold"),
            "seconds",
            System::ObjectStore,
        );
        let x = ratio(cold, floor);
        out.push(Verdict {
            target: format!("list-huge {n} objects: cold ≤1.2x the source's paging floor"),
            measured: x
                .map(|x| format!("{} (Strata cold s / paging floor s)", fmt_ratio(Some(x))))
                .unwrap_or_else(|| "not measured".into()),
            met: x.map(|x| x <= 1.2),
        });
        out.push(check(
            &format!("list-huge {n} objects: warm ≥50x faster than cold"),
            ratio(
                cold,
                m(&format!("{n} objects, warm"), "seconds", System::Strata),
            ),
            50.0,
            "Strata cold s / warm s",
        ));
        let per_entry = m(
            &format!("{n} objects"),
            "RSS per cached entry",
            System::Strata,
        );
        out.push(Verdict {
            target: format!("list-huge {n} objects: ≤200 bytes of agent memory per cached entry"),
            measured: per_entry
                .map(|b| {
                    format!(
                        "{} bytes (agent RSS growth over the cold ls / entries)",
                        fmt_num(b)
                    )
                })
                .unwrap_or_else(|| "not measured".into()),
            met: per_entry.map(|b| b <= 200.0),
        });
    }
    out
}

/// The goal of the restart workload: no failed read, the longest read under 2 s.
const RESTART_MAX_STALL_MS: f64 = 2000.0;

/// restart: Strata's figures over its restarts, then what every system's reader saw.
fn restart_tables(out: &mut String, r: &BenchResults, link: &str) {
    let rows: Vec<&crate::results::RestartOutcome> =
        r.restart.iter().filter(|o| o.link == link).collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "### restart (SIGKILL of the mount's daemon during a sequential read), link: {link}\n"
    );
    out.push_str("One reader reads the seq-large object from start to end over and over in 1 MiB `read` calls, timing each and comparing every byte with the local copy. Strata: the agent is SIGKILLed and the same `strata-agent mount` command started at once (no deliberate gap), which takes the mount over from its holder (its own `--holder-socket` under the work dir); the page cache is dropped before each SIGKILL and the caches are smaller than the object, so reads wait on the agent. A restart's stall is the longest read call in progress from the SIGKILL to 1 s after the new agent logs \"took the mount over\". rclone and s3fs: their daemon is SIGKILLed once, 2 s into the read.\n\n");
    let strata: Vec<_> = rows.iter().filter(|o| o.system == System::Strata).collect();
    if !strata.is_empty() {
        out.push_str("| system | run | restarts | longest read per restart, p50 / max (ms) | SIGKILL → took over, p50 / max (ms) | restarts with a read waiting in the gap | longest read in the 2 s before the first SIGKILL (ms) | failed reads | wrong bytes | MiB read |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
        let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
        for o in &strata {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} / {} | {} / {} | {} | {} | {} | {} | {} |",
                o.system.label(),
                o.run,
                o.restarts,
                fmt_num(median(&o.stalls_ms).unwrap_or(f64::NAN)),
                fmt_num(max(&o.stalls_ms)),
                fmt_num(median(&o.takeover_ms).unwrap_or(f64::NAN)),
                fmt_num(max(&o.takeover_ms)),
                o.restarts_with_a_waiting_read,
                fmt_num(o.longest_read_before_ms.unwrap_or(f64::NAN)),
                o.failed_reads,
                o.wrong_bytes,
                fmt_num(o.mib_read)
            );
        }
        out.push('\n');
        let verdicts: Vec<Verdict> = strata
            .iter()
            .map(|o| {
                let worst = max(&o.stalls_ms);
                Verdict {
                    target: format!(
                        "restart (run {}): no failed read, no wrong byte, longest read under {} s over {} restarts",
                        o.run,
                        RESTART_MAX_STALL_MS / 1000.0,
                        crate::harness::RESTARTS
                    ),
                    measured: format!(
                        "{} failed, {} wrong bytes, max {} ms over {} restarts",
                        o.failed_reads,
                        o.wrong_bytes,
                        fmt_num(worst),
                        o.restarts
                    ),
                    met: Some(
                        o.failed_reads == 0
                            && o.wrong_bytes == 0
                            && o.restarts == crate::harness::RESTARTS
                            && worst < RESTART_MAX_STALL_MS,
                    ),
                }
            })
            .collect();
        verdict_table(out, &verdicts);
    }
    out.push_str("What the reader (and the daemon, started again) saw:\n\n| system | run | what happened |\n| --- | --- | --- |\n");
    for o in &rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            o.system.label(),
            o.run,
            o.seen.join("; ").replace('|', "\\|")
        );
    }
    out.push('\n');
}

/// The cluster workload's goals: source bytes at the link over the data size (the link
/// also carries HTTP headers and listings, hence a little above 1.0), the cluster's time
/// over one node alone, and the peer fetch over the faster raw TCP transfer.
const CLUSTER_MAX_SOURCE: f64 = 1.02;
const CLUSTER_MAX_SLOWDOWN: f64 = 1.3;
const CLUSTER_MIN_PEER_SHARE: f64 = 0.6;

/// cluster: per data set, every case's figures, then the goals.
fn cluster_tables(out: &mut String, r: &BenchResults, link: &str) {
    use crate::harness::{
        CASE_ALONE, CASE_CLUSTER, CASE_INDEPENDENT, CASE_LOCAL_DISK, CASE_NEW_NODE,
        CASE_PEER_FETCH, ClusterData, RAW_CASES,
    };
    let Some(meta) = r.sections.get("cluster") else {
        return;
    };
    if !r
        .measurements
        .iter()
        .any(|m| m.workload == "cluster" && m.link == link)
    {
        return;
    }
    let _ = writeln!(
        out,
        "### cluster (3 agents in network namespaces, the same data cold), link: {link}\n"
    );
    out.push_str("Each node is a `strata-agent serve` in its own network namespace; its FUSE mount is read from the root namespace (1 MiB reads by one reader for the file; 8 readers in a shuffled order of their own for the small files). The WAN proxy's byte count is the source bytes. \"independent caches\": the same three nodes with `--no-peers`. \"node B restarted empty\": after the cluster run, B is stopped, its cache emptied, started again and reads everything while A and C hold it all; the groups B itself owns come from the source. \"peer fetch\": every block asked of warm node A over its peer API with the agents' own client from inside B's namespace (8 requests of 16 MiB in flight for the file, as the default 128 MiB readahead; 32 for the small files, as the directory prefetch), no FUSE and no cache write on the asking side. raw TCP: memory to memory, 2 GiB, measured right after.\n\n");
    let m = |case: &str, metric: &str, s: System| r.median("cluster", case, metric, s, link);
    let mut verdicts = Vec::new();
    for data in ClusterData::ALL {
        let label = data.label(&meta.spec);
        let c = |case: &str| format!("{label}, {case}");
        let _ = writeln!(out, "{label}:\n");
        out.push_str("| case | seconds until all done | first node done (s) | source bytes / data | peer bytes / data | MiB/s |\n| --- | --- | --- | --- | --- | --- |\n");
        let rows = [
            (CASE_ALONE, System::Strata),
            (CASE_INDEPENDENT, System::Strata),
            (CASE_CLUSTER, System::Strata),
            (CASE_NEW_NODE, System::Strata),
            (CASE_PEER_FETCH, System::Strata),
            (CASE_LOCAL_DISK, System::LocalFile),
            (RAW_CASES[0], System::RawTcp),
            (RAW_CASES[1], System::RawTcp),
            (RAW_CASES[2], System::RawTcp),
        ];
        for (case, system) in rows {
            let case = c(case);
            if r.find("cluster", &case, "seconds", system, link)
                .next()
                .is_none()
                && r.find("cluster", &case, "MiB/s", system, link)
                    .next()
                    .is_none()
            {
                continue;
            }
            let _ = write!(
                out,
                "| {} |",
                case.trim_start_matches(&format!("{label}, "))
            );
            for metric in [
                "seconds",
                "first node done",
                "source bytes / data",
                "peer bytes / data",
                "MiB/s",
            ] {
                let v = if r
                    .find("cluster", &case, metric, system, link)
                    .next()
                    .is_some()
                {
                    cell(r, "cluster", &case, metric, system, link)
                } else {
                    String::new()
                };
                let _ = write!(out, " {v} |");
            }
            out.push('\n');
        }
        out.push('\n');
        if r.find(
            "cluster",
            &c(CASE_CLUSTER),
            "CPU s, agents",
            System::Strata,
            link,
        )
        .next()
        .is_some()
        {
            out.push_str("CPU seconds used during the read (user + system, medians), and how busy the machine's 2 cores were (every process, other sessions' included):\n\n| case | agents | S3 server + WAN proxy | readers (harness) | other processes | machine busy (%) |\n| --- | --- | --- | --- | --- | --- |\n");
            for case in [CASE_ALONE, CASE_INDEPENDENT, CASE_CLUSTER, CASE_NEW_NODE] {
                let _ = write!(out, "| {case} |");
                for metric in [
                    "CPU s, agents",
                    "CPU s, S3 server + proxy",
                    "CPU s, readers",
                    "CPU s, other processes",
                    "machine CPU busy",
                ] {
                    let _ = write!(
                        out,
                        " {} |",
                        cell(r, "cluster", &c(case), metric, System::Strata, link)
                    );
                }
                out.push('\n');
            }
            out.push('\n');
            let serving = m(&c(CASE_PEER_FETCH), "CPU s, serving agent", System::Strata);
            let asking = m(&c(CASE_PEER_FETCH), "CPU s, asking client", System::Strata);
            if let (Some(serving), Some(asking)) = (serving, asking) {
                let _ = writeln!(
                    out,
                    "Peer fetch: the serving agent (A) used {} CPU-s, the asking client (the harness, the agents' own `AgentClient`) {} CPU-s (medians).\n",
                    fmt_num(serving),
                    fmt_num(asking)
                );
            }
        }
        let source = m(&c(CASE_CLUSTER), "source bytes / data", System::Strata);
        let independent = m(&c(CASE_INDEPENDENT), "source bytes / data", System::Strata);
        verdicts.push(Verdict {
            target: format!("{label}: source bytes 1.0x the data with the cluster cache (≤{CLUSTER_MAX_SOURCE}x at the link; independent caches: 3.0x)"),
            measured: format!(
                "{} (independent caches {})",
                fmt_ratio(source),
                fmt_ratio(independent)
            ),
            met: source.map(|v| v <= CLUSTER_MAX_SOURCE),
        });
        let slowdown = ratio(
            m(&c(CASE_CLUSTER), "seconds", System::Strata),
            m(&c(CASE_ALONE), "seconds", System::Strata),
        );
        let (cluster_case, alone_case) = (c(CASE_CLUSTER), c(CASE_ALONE));
        let per_run: Vec<String> = r
            .find("cluster", &cluster_case, "seconds", System::Strata, link)
            .filter_map(|cl| {
                let alone = r
                    .find("cluster", &alone_case, "seconds", System::Strata, link)
                    .find(|a| a.run == cl.run)?;
                Some(fmt_ratio(ratio(Some(cl.value), Some(alone.value))))
            })
            .collect();
        verdicts.push(Verdict {
            target: format!("{label}: all three nodes done within {CLUSTER_MAX_SLOWDOWN}x the time one node alone takes cold"),
            measured: format!(
                "{} (ratio of the medians; within each run {}; independent caches {})",
                fmt_ratio(slowdown),
                per_run.join(", "),
                fmt_ratio(ratio(
                    m(&c(CASE_INDEPENDENT), "seconds", System::Strata),
                    m(&c(CASE_ALONE), "seconds", System::Strata)
                ))
            ),
            met: slowdown.map(|v| v <= CLUSTER_MAX_SLOWDOWN),
        });
        let raw = [RAW_CASES[0], RAW_CASES[1]]
            .iter()
            .filter_map(|case| m(&c(case), "MiB/s", System::RawTcp))
            .reduce(f64::max);
        let share = ratio(m(&c(CASE_PEER_FETCH), "MiB/s", System::Strata), raw);
        verdicts.push(Verdict {
            target: format!("{label}: a warm peer read ≥{:.0}% of the raw transfer between namespaces", CLUSTER_MIN_PEER_SHARE * 100.0),
            measured: format!(
                "peer fetch {:.0}% of raw TCP A to B (the faster of 1 and 8 connections); node B restarted empty, through FUSE: {:.0}%",
                share.unwrap_or(f64::NAN) * 100.0,
                ratio(m(&c(CASE_NEW_NODE), "MiB/s", System::Strata), raw).unwrap_or(f64::NAN) * 100.0
            ),
            met: share.map(|v| v >= CLUSTER_MIN_PEER_SHARE),
        });
    }
    verdict_table(out, &verdicts);
}

/// Writes the charts into `chart_dir` and returns the generated Markdown.
pub fn render(r: &BenchResults, chart_dir: &Path, chart_rel: &str) -> Result<String> {
    std::fs::create_dir_all(chart_dir).map_err(|e| Error::io(chart_dir, e))?;
    let mut out = String::new();
    out.push_str(BEGIN);
    out.push_str("\n\n## Results\n\n");
    let _ = writeln!(
        out,
        "Machine of the latest run: {} cores ({}), {} memory, kernel {}, {}; each workload's own is in the table. Shared with other sessions compiling code while this ran: load average is shown per workload; treat single-digit-percent differences as noise.\n",
        r.machine.nproc,
        r.machine.cpu.trim(),
        r.machine.memory,
        r.machine.kernel,
        r.machine.os
    );
    out.push_str("| workload | date (UTC) | commit | runs | data | load avg before → after | machine |\n| --- | --- | --- | --- | --- | --- | --- |\n");
    for (w, s) in &r.sections {
        let data = match w.as_str() {
            "seq-large" | "random-4k" => format!("{} MiB object", s.spec.seq_large_bytes >> 20),
            "epoch-small" | "preload" => format!("{} files of ~110 KiB", s.spec.epoch_files),
            "list" => format!("{} objects", s.spec.list_objects),
            "restart" => format!(
                "{} MiB object, read sequentially in 1 MiB reads, over and over",
                s.spec.seq_large_bytes >> 20
            ),
            "hdfs" => format!(
                "{} MiB object and {} files of ~110 KiB, in HDFS and in S3",
                s.spec.seq_large_bytes >> 20,
                s.spec.epoch_files
            ),
            "cluster" => format!(
                "{} MiB object and {} files of ~110 KiB, read by 3 nodes",
                s.spec.seq_large_bytes >> 20,
                s.spec.epoch_files
            ),
            "write" => {
                let links = r.links();
                let shapes: Vec<String> = links
                    .iter()
                    .flat_map(|l| write::shapes(r, l))
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                format!("written: {}", shapes.join("; "))
            }
            "list-huge" => {
                let sizes: Vec<String> = huge_sizes(r).iter().map(|n| n.to_string()).collect();
                format!("{} objects in one prefix", sizes.join(" and "))
            }
            _ => "synthetic traces".into(),
        };
        let _ = writeln!(
            out,
            "| {w} | {} | {} | {}{} | {data} | {:.1} → {:.1} | {} |",
            s.date,
            s.commit,
            s.runs,
            if s.quick { " (quick)" } else { "" },
            s.load_before,
            s.load_after,
            s.machine.as_deref().unwrap_or("—")
        );
    }
    out.push('\n');
    if !r.versions.is_empty() {
        out.push_str("Versions: ");
        let v: Vec<String> = r
            .versions
            .iter()
            .map(|(k, v)| format!("{k} `{v}`"))
            .collect();
        out.push_str(&v.join(", "));
        out.push_str(".\n\n");
    }
    if !r.settings.is_empty() {
        out.push_str("Settings:\n\n");
        for (k, v) in &r.settings {
            let _ = writeln!(out, "- {k}: {v}");
        }
        out.push('\n');
    }
    out.push_str("Cells are medians over the runs with (n, ± half the spread). † = cut short by the time limit (the value is the rate over what was read). Ratios compare medians.\n\n");

    for link in r.links() {
        let _ = writeln!(out, "### Targets, link: {link}\n");
        verdict_table(&mut out, &targets(r, &link));
        let _ = writeln!(
            out,
            "### seq-large (MiB/s, higher is better), link: {link}\n"
        );
        out.push_str("cold = fresh cache and page cache dropped; warm = in the system's cache, page cache dropped; hot = read again at once. Before every warm read the harness runs `sync` and lets the disk idle for the settle time (see Settings). object_store = 8 MiB ranged GETs, 1, 4, 16 or 64 in flight, no cache (the last two rows: the most any client gets here); local file = the same bytes from a local copy written with `O_DIRECT` right after the system's cold read (as the cache files were), read after the system's own reads with the same settle; the random-4k local file is the long-lived reference copy.\n\n");
        let seq_rows: Vec<&str> = SEQ_CASES.iter().chain(&CEILING_CASES).copied().collect();
        workload_table(
            &mut out,
            r,
            "seq-large",
            &seq_rows,
            "throughput",
            &link,
            true,
        );
        let _ = writeln!(out, "### random-4k, warm, link: {link}\n");
        for (metric, hib) in [
            ("IOPS", true),
            ("p50 latency", false),
            ("p99 latency", false),
        ] {
            let _ = writeln!(
                out,
                "{metric}{}:\n",
                if hib { "" } else { " (µs, lower is better)" }
            );
            workload_table(&mut out, r, "random-4k", &["warm"], metric, &link, hib);
        }
        let _ = writeln!(
            out,
            "### epoch-small (files/s, higher is better), link: {link}\n"
        );
        out.push_str("Each epoch reads every file once in a new shuffled order; the page cache is dropped before each epoch. object_store = whole-object GETs with 1 or 8 in flight.\n\n");
        workload_table(
            &mut out,
            r,
            "epoch-small",
            &EPOCH_CASES,
            "files/s",
            &link,
            true,
        );
        let systems = systems_in(r, "epoch-small", &link);
        if !systems.is_empty() {
            out.push_str("| epoch 2 / epoch 1 |");
            for s in &systems {
                let _ = write!(out, " {} |", s.label());
            }
            out.push_str("\n| --- |");
            for _ in &systems {
                out.push_str(" --- |");
            }
            out.push('\n');
            for readers in ["1 reader", "8 readers"] {
                let _ = write!(out, "| {readers} |");
                for s in &systems {
                    let e1 = r.median(
                        "epoch-small",
                        &format!("{readers}, epoch 1"),
                        "files/s",
                        *s,
                        &link,
                    );
                    let e2 = r.median(
                        "epoch-small",
                        &format!("{readers}, epoch 2"),
                        "files/s",
                        *s,
                        &link,
                    );
                    let _ = write!(out, " {} |", fmt_ratio(ratio(e2, e1)));
                }
                out.push('\n');
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "### list (`find -type f`, seconds, lower is better), link: {link}\n"
        );
        out.push_str("cold = fresh mount; warm = the same mount again with the kernel's dentry and inode caches dropped, so the answer comes from the system's own metadata cache.\n\n");
        workload_table(
            &mut out,
            r,
            "list",
            &["cold", "warm"],
            "seconds",
            &link,
            false,
        );
        let sizes = huge_sizes(r);
        if !systems_in(r, "list-huge", &link).is_empty() && !sizes.is_empty() {
            let _ = writeln!(
                out,
                "### list-huge (`ls DIR | wc -l` of one prefix, seconds, lower is better), link: {link}\n"
            );
            out.push_str("cold = fresh mount, page cache and dentries dropped; warm = the same mount again with the page cache and dentries dropped, so the names come from the system's own metadata cache. object_store = the source's own paging floor: every page of 1,000 keys in turn through the same link (a page needs the previous page's continuation token), no FUSE, nothing kept.\n\n");
            let cases: Vec<String> = sizes
                .iter()
                .flat_map(|n| [format!("{n} objects, cold"), format!("{n} objects, warm")])
                .collect();
            let cases: Vec<&str> = cases.iter().map(String::as_str).collect();
            workload_table(&mut out, r, "list-huge", &cases, "seconds", &link, false);
            for n in &sizes {
                let pages = r.median(
                    "list-huge",
                    &format!("{n} objects"),
                    "pages",
                    System::ObjectStore,
                    &link,
                );
                if let (Some(pages), Some(rtt)) = (pages, round_trip_seconds(&link)) {
                    let _ = writeln!(
                        out,
                        "- {n} objects: {} pages; pages x round trip = {} s (the rest of the floor is the server's time per page)",
                        fmt_num(pages),
                        fmt_num(pages * rtt)
                    );
                }
            }
            out.push('\n');
            out.push_str("Memory per cached entry: the mount process's RSS after the cold `ls` minus before it, over the number of entries (bytes, lower is better).\n\n");
            let cases: Vec<String> = sizes.iter().map(|n| format!("{n} objects")).collect();
            let cases: Vec<&str> = cases.iter().map(String::as_str).collect();
            workload_table(
                &mut out,
                r,
                "list-huge",
                &cases,
                "RSS per cached entry",
                &link,
                false,
            );
        }
        if !systems_in(r, "preload", &link).is_empty() {
            let _ = writeln!(out, "### preload (MiB/s), link: {link}\n");
            out.push_str("`strata-agent preload` of the epoch-small files into a fresh cache (wall time of the whole command), beside the link's practical capacity for the same files: object_store with 64 whole-object GETs in flight.\n\n");
            workload_table(
                &mut out,
                r,
                "preload",
                &["epoch-small data"],
                "MiB/s",
                &link,
                true,
            );
        }
        restart_tables(&mut out, r, &link);
        cluster_tables(&mut out, r, &link);
        write::tables(&mut out, r, &link);
        hdfs::tables(&mut out, r, &link);
        let mem_cases: BTreeSet<&str> = r
            .measurements
            .iter()
            .filter(|m| m.workload == "memory" && m.link == link)
            .map(|m| m.case.as_str())
            .collect();
        if !mem_cases.is_empty() {
            let _ = writeln!(
                out,
                "### Peak RSS of each mount process (MiB, max over runs), link: {link}\n"
            );
            out.push_str("| session |");
            let systems = [System::Strata, System::Rclone, System::S3fs];
            for s in systems {
                let _ = write!(out, " {} |", s.label());
            }
            out.push_str("\n| --- | --- | --- | --- |\n");
            for case in mem_cases {
                let _ = write!(out, "| {case} |");
                for s in systems {
                    let max = r
                        .find("memory", case, "peak RSS", s, &link)
                        .map(|m| m.value)
                        .fold(f64::NAN, f64::max);
                    let _ = write!(out, " {} |", fmt_num(max));
                }
                out.push('\n');
            }
            out.push('\n');
        }
        // Charts per link.
        let slug: String = link
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let seq_png = format!("seq-large-{slug}.png");
        let systems = systems_in(r, "seq-large", &link);
        if !systems.is_empty() {
            let series: Vec<(String, Vec<Option<f64>>)> = systems
                .iter()
                .map(|s| {
                    let vals = SEQ_CASES
                        .iter()
                        .map(|c| r.median("seq-large", c, "throughput", *s, &link))
                        .collect();
                    (s.label().to_string(), vals)
                })
                .collect();
            charts::grouped_bars(
                &chart_dir.join(&seq_png),
                &format!("seq-large, MiB/s (log scale), link {link}"),
                "MiB/s",
                &SEQ_CASES.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                &series,
            )?;
            let _ = writeln!(out, "![seq-large throughput]({chart_rel}/{seq_png})\n");
        }
        let epoch_png = format!("epoch-small-{slug}.png");
        let systems = systems_in(r, "epoch-small", &link);
        if !systems.is_empty() {
            let series: Vec<(String, Vec<Option<f64>>)> = systems
                .iter()
                .map(|s| {
                    let vals = EPOCH_CASES
                        .iter()
                        .map(|c| r.median("epoch-small", c, "files/s", *s, &link))
                        .collect();
                    (s.label().to_string(), vals)
                })
                .collect();
            charts::grouped_bars(
                &chart_dir.join(&epoch_png),
                &format!("epoch-small, files/s (log scale), link {link}"),
                "files/s",
                &EPOCH_CASES
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>(),
                &series,
            )?;
            let _ = writeln!(out, "![epoch-small files/s]({chart_rel}/{epoch_png})\n");
        }
    }

    if !r.hit_ratio.is_empty() {
        out.push_str("### Eviction study (byte hit ratio, %)\n\n");
        out.push_str("Traces replayed through the engine's own `strata_agent::eviction` policies (driven as its block cache drives them) and Belady's offline optimum; cache sizes are fractions of each trace's footprint (unique bytes of the reused part; scans excluded). Blocks are 4 MiB; an object's last block is shorter.\n\n");
        for t in &r.traces {
            let _ = writeln!(
                out,
                "- **{}**: {}; {} block reads, {:.1} GiB read, footprint {:.1} GiB.",
                t.name,
                t.description,
                t.block_accesses,
                t.total_bytes as f64 / (1u64 << 30) as f64,
                t.footprint_bytes as f64 / (1u64 << 30) as f64
            );
        }
        out.push('\n');
        verdict_table(&mut out, &hit_ratio_targets(r));
        let mut panels = Vec::new();
        for t in &r.traces {
            let policies: Vec<String> = {
                let mut seen = Vec::new();
                for p in r.hit_ratio.iter().filter(|p| p.trace == t.name) {
                    if !seen.contains(&p.policy) {
                        seen.push(p.policy.clone());
                    }
                }
                seen
            };
            let fractions: Vec<f64> = {
                let mut f: Vec<f64> = r
                    .hit_ratio
                    .iter()
                    .filter(|p| p.trace == t.name)
                    .map(|p| p.cache_fraction)
                    .collect();
                f.sort_by(f64::total_cmp);
                f.dedup();
                f
            };
            let _ = write!(out, "{}:\n\n| cache size |", t.name);
            for p in &policies {
                let _ = write!(out, " {p} |");
            }
            out.push_str("\n| --- |");
            for _ in &policies {
                out.push_str(" --- |");
            }
            out.push('\n');
            for f in &fractions {
                let _ = write!(out, "| {}% |", fmt_num(f * 100.0));
                for p in &policies {
                    let v = r
                        .hit_ratio
                        .iter()
                        .find(|x| x.trace == t.name && x.policy == *p && x.cache_fraction == *f)
                        .map(|x| x.byte_hit_ratio * 100.0);
                    let _ = write!(
                        out,
                        " {} |",
                        v.map(|v| format!("{v:.1}")).unwrap_or_default()
                    );
                }
                out.push('\n');
            }
            out.push('\n');
            let lines = policies
                .iter()
                .map(|p| {
                    let pts = r
                        .hit_ratio
                        .iter()
                        .filter(|x| x.trace == t.name && x.policy == *p)
                        .map(|x| (x.cache_fraction * 100.0, x.byte_hit_ratio * 100.0))
                        .collect();
                    (p.clone(), pts)
                })
                .collect();
            panels.push((t.name.clone(), lines));
        }
        charts::hit_ratio_panels(&chart_dir.join("hit-ratio.png"), &panels)?;
        let _ = writeln!(
            out,
            "![byte hit ratio vs cache size]({chart_rel}/hit-ratio.png)\n"
        );
    }
    if !r.notes.is_empty() {
        out.push_str("### Notes from the run\n\n");
        for n in &r.notes {
            let _ = writeln!(out, "- {n}");
        }
        out.push('\n');
    }
    out.push_str(END);
    out.push('\n');
    Ok(out)
}

/// Replaces the generated part of `doc` (or appends it), keeping the hand-written text.
pub fn write_doc(doc: &Path, generated: &str) -> Result<()> {
    let old = std::fs::read_to_string(doc).unwrap_or_else(|_| "# Benchmarks\n\n".to_string());
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => {
            format!(
                "{}{}{}",
                &old[..b],
                generated,
                &old[e + END.len()..].trim_start_matches('\n')
            )
        }
        _ => format!("{}\n{}", old.trim_end(), generated),
    };
    std::fs::write(doc, new).map_err(|e| Error::io(doc, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::Measurement;

    fn m(workload: &str, case: &str, metric: &str, system: System, value: f64) -> Measurement {
        Measurement {
            workload: workload.into(),
            case: case.into(),
            system,
            link: "25 ms".into(),
            metric: metric.into(),
            unit: String::new(),
            higher_is_better: true,
            run: 1,
            value,
            complete: true,
        }
    }

    #[test]
    fn targets_compare_medians_and_say_missed() {
        let mut r = BenchResults::default();
        r.measurements.push(m(
            "seq-large",
            "1 job, warm",
            "throughput",
            System::Strata,
            900.0,
        ));
        r.measurements.push(m(
            "seq-large",
            "1 job, warm",
            "throughput",
            System::Rclone,
            100.0,
        ));
        r.measurements.push(m(
            "seq-large",
            "1 job, warm",
            "throughput",
            System::S3fs,
            400.0,
        ));
        r.measurements.push(m(
            "seq-large",
            "1 job, warm",
            "throughput",
            System::LocalFile,
            1000.0,
        ));
        let v = targets(&r, "25 ms");
        let find = |t: &str| v.iter().find(|x| x.target.contains(t)).unwrap();
        assert_eq!(find("1 job, warm: ≥3x rclone").met, Some(true));
        assert_eq!(find("1 job, warm: ≥3x s3fs").met, Some(false));
        assert_eq!(find("1 job, warm: ≥90% of the local file").met, Some(true));
        assert_eq!(find("1 job, cold: ≥2x rclone").met, None);
    }

    /// 2x the faster peer's cold figure is "reachable" only below the best raw-GET rate.
    #[test]
    fn ceiling_says_whether_twice_the_faster_peer_is_reachable() {
        let tp = "throughput";
        let mut r = BenchResults::default();
        for (case, system, value) in [
            ("1 job, cold", System::Rclone, 200.0),
            ("1 job, cold", System::S3fs, 250.0),
            ("4 jobs, cold", System::Rclone, 300.0),
            ("4 jobs, cold", System::S3fs, 150.0),
            (CEILING_CASES[0], System::ObjectStore, 450.0),
            (CEILING_CASES[1], System::ObjectStore, 550.0),
        ] {
            r.measurements.push(m("seq-large", case, tp, system, value));
        }
        let v = targets(&r, "25 ms");
        let find = |t: &str| v.iter().find(|x| x.target.contains(t)).unwrap();
        // 1 job: 2 x 250 = 500 <= 550 (the better ceiling row counts).
        let one = find("1 job, cold: 2x the faster peer (500 MiB/s)");
        assert_eq!(one.met, Some(true), "{}", one.measured);
        assert!(one.target.contains("(550 MiB/s)"), "{}", one.target);
        // 4 jobs: 2 x 300 = 600 > 550.
        assert_eq!(
            find("4 jobs, cold: 2x the faster peer (600 MiB/s)").met,
            Some(false)
        );
        // No ceiling measured: nothing to say.
        r.measurements.retain(|x| x.system != System::ObjectStore);
        let v = targets(&r, "25 ms");
        let none = v
            .iter()
            .find(|x| x.target.contains("1 job, cold: 2x the faster peer"))
            .unwrap();
        assert_eq!(none.met, None);
    }

    #[test]
    fn list_huge_targets_use_the_paging_floor() {
        let mut r = BenchResults::default();
        for (case, metric, system, value) in [
            ("200000 objects, cold", "seconds", System::Strata, 11.0),
            ("200000 objects, cold", "seconds", System::ObjectStore, 10.0),
            ("200000 objects, warm", "seconds", System::Strata, 0.5),
            (
                "200000 objects",
                "RSS per cached entry",
                System::Strata,
                90.0,
            ),
            ("200000 objects", "pages", System::ObjectStore, 200.0),
        ] {
            r.measurements
                .push(m("list-huge", case, metric, system, value));
        }
        assert_eq!(huge_sizes(&r), [200_000]);
        let v = targets(&r, "25 ms");
        let find = |t: &str| v.iter().find(|x| x.target.contains(t)).unwrap();
        assert_eq!(find("cold ≤1.2x").met, Some(true));
        assert_eq!(find("≥50x faster").met, Some(false), "22x");
        assert_eq!(find("≤200 bytes").met, Some(true));
        assert_eq!(round_trip_seconds("25 ms, 200 Mbit/s"), Some(0.05));
    }

    #[test]
    fn generated_part_is_replaced_not_duplicated() {
        let dir = tempfile::tempdir().unwrap();
        let doc = dir.path().join("B.md");
        std::fs::write(&doc, "# Title\n\nhand text\n").unwrap();
        write_doc(&doc, &format!("{BEGIN}\none\n{END}\n")).unwrap();
        write_doc(&doc, &format!("{BEGIN}\ntwo\n{END}\n")).unwrap();
        std::fs::OpenOptions::new().append(true).open(&doc).unwrap();
        let text = std::fs::read_to_string(&doc).unwrap();
        assert!(text.contains("hand text"));
        assert!(text.contains("two") && !text.contains("one"));
        assert_eq!(text.matches(BEGIN).count(), 1);
    }
}
