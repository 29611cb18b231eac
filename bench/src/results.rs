//! What a benchmark run measured, kept as JSON (docs/bench/results.json) so the report can be
//! rendered again and partial re-runs merge into earlier results.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::DataSpec;
use crate::mounts::System;
use crate::sim::HitRatioPoint;
use crate::{Error, Result};

/// One measured figure of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    /// "seq-large", "random-4k", "epoch-small", "list", "memory".
    pub workload: String,
    /// e.g. "1 job, cold"; for "memory", the workload whose session it was.
    pub case: String,
    pub system: System,
    /// e.g. "25 ms" one way, or "25 ms, 200 Mbit/s".
    pub link: String,
    pub metric: String,
    pub unit: String,
    pub higher_is_better: bool,
    pub run: u32,
    pub value: f64,
    /// False when a time limit cut the measurement short (the value is then a partial rate).
    pub complete: bool,
}

/// When and how one workload was measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SectionMeta {
    pub date: String,
    pub commit: String,
    pub runs: u32,
    pub quick: bool,
    pub spec: DataSpec,
    /// Load average (1 min) before and after, to show how busy the shared machine was.
    pub load_before: f64,
    pub load_after: f64,
    /// The machine it ran on ("2 cores (CPU), kernel K"): runs merged into one results
    /// file may come from different machines.
    #[serde(default)]
    pub machine: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MachineInfo {
    pub nproc: String,
    pub memory: String,
    pub kernel: String,
    pub cpu: String,
    pub os: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TraceInfo {
    pub name: String,
    pub description: String,
    pub block_accesses: usize,
    pub total_bytes: u64,
    pub footprint_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BenchResults {
    pub machine: MachineInfo,
    /// Versions of the S3 server, peers and tools.
    pub versions: BTreeMap<String, String>,
    /// Settings every mount got (cache quotas, link), in words.
    pub settings: BTreeMap<String, String>,
    pub sections: BTreeMap<String, SectionMeta>,
    pub measurements: Vec<Measurement>,
    pub traces: Vec<TraceInfo>,
    pub hit_ratio: Vec<HitRatioPoint>,
    /// Things that went wrong or were cut short, in words, for the report.
    pub notes: Vec<String>,
    /// Strata's memory-tier quota in the last live run, for the memory-bound target.
    #[serde(default)]
    pub memory_quota_bytes: Option<u64>,
    /// The restart workload: one entry per system and run.
    #[serde(default)]
    pub restart: Vec<RestartOutcome>,
}

/// What a reader saw while one system's daemon was SIGKILLed (and, for Strata, restarted).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestartOutcome {
    pub system: System,
    pub link: String,
    pub run: u32,
    /// False when the program is not installed here (nothing else is then filled in).
    pub installed: bool,
    /// SIGKILL + restart rounds done (Strata), or 1 kill (peers).
    pub restarts: u32,
    /// Per restart: the longest read call in progress between the SIGKILL and 1 s after the
    /// takeover (ms).
    pub stalls_ms: Vec<f64>,
    /// Per restart: SIGKILL to the new agent's "took the mount over" (ms).
    pub takeover_ms: Vec<f64>,
    /// Restarts during whose gap (SIGKILL to takeover) a read call was in progress: that
    /// reads really did wait on the agent.
    pub restarts_with_a_waiting_read: u32,
    /// The longest read call in the seconds before the first SIGKILL (ms): the link's and
    /// cache's own worst read, for comparison.
    pub longest_read_before_ms: Option<f64>,
    pub reads: u64,
    pub mib_read: f64,
    pub failed_reads: u64,
    pub wrong_bytes: u64,
    /// What the reader and the daemon did, in words, in order.
    pub seen: Vec<String>,
}

impl BenchResults {
    pub fn load(path: &Path) -> Result<Option<Self>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Parse {
                    what: path.display().to_string(),
                    detail: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let json = serde_json::to_vec_pretty(self).expect("results serialize");
        std::fs::write(path, json).map_err(|e| Error::io(path, e))
    }

    /// Replaces everything about the workloads in `newer` (measured again) and keeps the rest.
    pub fn merge(&mut self, newer: BenchResults) {
        let redone: Vec<&String> = newer.sections.keys().collect();
        self.measurements.retain(|m| {
            let section = if m.workload == "memory" {
                &m.case
            } else {
                &m.workload
            };
            !redone.contains(&section)
        });
        self.notes
            .retain(|n| !redone.iter().any(|w| n.starts_with(&format!("{w}:"))));
        if newer.sections.contains_key("restart") {
            self.restart = newer.restart;
        }
        if newer.sections.contains_key("hit-ratio") {
            self.hit_ratio = newer.hit_ratio;
            self.traces = newer.traces;
        }
        self.measurements.extend(newer.measurements);
        self.notes.extend(newer.notes);
        self.sections.extend(newer.sections);
        self.versions.extend(newer.versions);
        self.settings.extend(newer.settings);
        self.machine = newer.machine;
        if newer.memory_quota_bytes.is_some() {
            self.memory_quota_bytes = newer.memory_quota_bytes;
        }
    }

    /// Values of every run of one figure.
    pub fn values(
        &self,
        workload: &str,
        case: &str,
        metric: &str,
        system: System,
        link: &str,
    ) -> Vec<f64> {
        self.find(workload, case, metric, system, link)
            .map(|m| m.value)
            .collect()
    }

    pub fn find<'a>(
        &'a self,
        workload: &'a str,
        case: &'a str,
        metric: &'a str,
        system: System,
        link: &'a str,
    ) -> impl Iterator<Item = &'a Measurement> + 'a {
        self.measurements.iter().filter(move |m| {
            m.workload == workload
                && m.case == case
                && m.metric == metric
                && m.system == system
                && m.link == link
        })
    }

    pub fn median(
        &self,
        workload: &str,
        case: &str,
        metric: &str,
        system: System,
        link: &str,
    ) -> Option<f64> {
        crate::stats::median(&self.values(workload, case, metric, system, link))
    }

    pub fn links(&self) -> Vec<String> {
        let mut links: Vec<String> = self.measurements.iter().map(|m| m.link.clone()).collect();
        links.sort();
        links.dedup();
        links
    }
}

impl MachineInfo {
    /// "2 cores (CPU), kernel K": what a section records of the machine.
    pub fn summary(&self) -> String {
        format!(
            "{} cores ({}), kernel {}",
            self.nproc,
            self.cpu.trim(),
            self.kernel
        )
    }
}

pub fn machine_info() -> MachineInfo {
    let sh = |cmd: &str| {
        std::process::Command::new("sh")
            .args(["-c", cmd])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    MachineInfo {
        nproc: sh("nproc"),
        memory: sh("free -h | awk '/^Mem:/ {print $2\" total, \"$7\" available\"}'"),
        kernel: sh("uname -r"),
        cpu: sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        os: sh(". /etc/os-release && echo $PRETTY_NAME"),
    }
}

pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

pub fn git_commit(repo: &Path) -> String {
    std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}
