//! Summing the agents' `StrataNode` reports into one Dataset's numbers.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use strata_crds::{
    DatasetStatus, JobPhase, NodePinUsage, NodeWriteUsage, PinStatus, StrataNode, format_bytes,
};

/// What the live nodes report about one dataset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatasetUsage {
    /// Bytes cached, summed over nodes.
    pub cached_bytes: u64,
    /// Hits summed over nodes.
    pub hits: u64,
    /// Misses summed over nodes.
    pub misses: u64,
    /// Names of the nodes reporting the dataset.
    pub nodes: Vec<String>,
    /// Source errors the nodes report, by node name.
    pub errors: Vec<NodeReportedError>,
    /// Progress of Job runs, by Job name, summed over the nodes.
    pub jobs: BTreeMap<String, JobProgress>,
    /// The CachePolicy's pin rules as the nodes report them, in the policy's order.
    pub pins: Vec<PinStatus>,
    /// Writes made on the nodes and their uploads, summed; None when no node
    /// reports writes for the dataset.
    pub writes: Option<WriteUsage>,
}

/// What the live nodes report of the writes made through their mounts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteUsage {
    /// Files whose change is not yet at the source, summed over nodes.
    pub pending_files: u64,
    /// Bytes still to upload, summed over nodes.
    pub pending_bytes: u64,
    /// The oldest unsent change over the nodes.
    pub oldest_pending: Option<Time>,
    /// Failed upload attempts since each agent started, summed.
    pub failures: u64,
    /// Uploads that met an upstream change, summed (since each agent started).
    pub conflicts: u64,
    /// The last upload failure of each node that has one, by node name.
    pub errors: Vec<NodeReportedError>,
    /// The last conflict of each node that met one, by node name.
    pub conflicts_met: Vec<(String, strata_crds::NodeWriteConflict)>,
}

impl WriteUsage {
    fn add(&mut self, node: &str, report: &NodeWriteUsage) {
        self.pending_files = self
            .pending_files
            .saturating_add(non_negative(report.pending_files));
        self.pending_bytes = self
            .pending_bytes
            .saturating_add(non_negative(report.pending_bytes));
        if report.oldest_pending.is_some()
            && (self.oldest_pending.is_none() || report.oldest_pending < self.oldest_pending)
        {
            self.oldest_pending = report.oldest_pending.clone();
        }
        self.failures = self.failures.saturating_add(non_negative(report.failures));
        self.conflicts = self
            .conflicts
            .saturating_add(non_negative(report.conflicts));
        if let Some(error) = &report.last_error {
            self.errors.push(NodeReportedError {
                node: node.to_string(),
                message: error.message.clone(),
            });
        }
        if let Some(conflict) = &report.last_conflict {
            self.conflicts_met
                .push((node.to_string(), conflict.clone()));
        }
    }
}

impl DatasetUsage {
    /// Writes the summed figures into a Dataset's status: cachedBytes, nodes
    /// and, once a node reports the dataset, hits and misses. cachedPercent is
    /// against `status.totalBytes`, so this runs after the sources were listed.
    /// The pending writes are written for a `writable` dataset (zero when no
    /// node reports any), and for any dataset a node still reports writes of
    /// (made before its sources became read-only).
    pub fn write_into(&self, status: &mut DatasetStatus, writable: bool) {
        if writable || self.writes.is_some() {
            let writes = self.writes.clone().unwrap_or_default();
            status.pending_write_bytes = Some(to_api(writes.pending_bytes));
            status.unsent = Some(format_bytes(writes.pending_bytes));
            status.pending_write_files = Some(to_api(writes.pending_files));
            status.oldest_pending_write = writes.oldest_pending;
        }
        if !self.nodes.is_empty() {
            status.cached_bytes = Some(to_api(self.cached_bytes));
            status.hits = Some(to_api(self.hits));
            status.misses = Some(to_api(self.misses));
            status.nodes = Some(i32::try_from(self.nodes.len()).unwrap_or(i32::MAX));
            status.pins = self.pins.clone();
            if let Some(total) = status.total_bytes {
                status.cached_percent =
                    Some(cached_percent(self.cached_bytes, non_negative(total)));
            }
        } else {
            status.pins = Vec::new();
            status.nodes = Some(0);
            status.cached_bytes = Some(0);
            status.cached_percent = status
                .total_bytes
                .map(|t| cached_percent(0, non_negative(t)));
        }
    }
}

/// One node's last error reading the dataset's sources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeReportedError {
    /// The node.
    pub node: String,
    /// What failed (the agent scrubs credentials before reporting).
    pub message: String,
}

/// One Job's run, summed over the nodes that report it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobProgress {
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Failed if any node's run failed, else Running if any runs, else Succeeded.
    pub phase: Option<JobPhase>,
    /// Earliest start over the nodes.
    pub start_time: Option<Time>,
    /// Latest end over the nodes, once none runs.
    pub completion_time: Option<Time>,
    /// The first failure's message.
    pub message: Option<String>,
}

impl JobProgress {
    fn add(&mut self, run: &strata_crds::NodeJobProgress) {
        self.files_done = self.files_done.saturating_add(non_negative(run.files_done));
        self.files_total = self
            .files_total
            .saturating_add(non_negative(run.files_total));
        self.bytes_done = self.bytes_done.saturating_add(non_negative(run.bytes_done));
        self.bytes_total = self
            .bytes_total
            .saturating_add(non_negative(run.bytes_total));
        self.phase = Some(match (self.phase, run.phase) {
            (Some(JobPhase::Failed), _) | (_, JobPhase::Failed) => JobPhase::Failed,
            (Some(JobPhase::Running), _) | (_, JobPhase::Running) => JobPhase::Running,
            (Some(JobPhase::Pending), _) | (_, JobPhase::Pending) => JobPhase::Pending,
            _ => JobPhase::Succeeded,
        });
        if run.start_time.is_some()
            && (self.start_time.is_none() || run.start_time < self.start_time)
        {
            self.start_time = run.start_time.clone();
        }
        if run.completion_time > self.completion_time {
            self.completion_time = run.completion_time.clone();
        }
        if self.message.is_none() && run.phase == JobPhase::Failed {
            self.message = run.message.clone();
        }
    }

    /// bytesDone / bytesTotal in percent, rounded down (100 when nothing matched).
    pub fn percent(&self) -> i32 {
        cached_percent(self.bytes_done, self.bytes_total)
    }

    /// The completion time, only once the run is over on every node.
    pub fn finished_at(&self) -> Option<Time> {
        match self.phase {
            Some(JobPhase::Succeeded | JobPhase::Failed) => self.completion_time.clone(),
            _ => None,
        }
    }
}

/// Whether a node's last heartbeat is recent enough to count. A report with
/// no heartbeat counts (the agent has not finished its first report yet).
pub fn is_live(node: &StrataNode, stale_after: Duration, now: Timestamp) -> bool {
    let Some(beat) = node.status.as_ref().and_then(|s| s.last_heartbeat.as_ref()) else {
        return true;
    };
    let age = now.as_second().saturating_sub(beat.0.as_second());
    age <= i64::try_from(stale_after.as_secs()).unwrap_or(i64::MAX)
}

/// Sums what live nodes report for `namespace/name`: the one place per-node
/// reports become a Dataset's figures (reconcile and cleanup both come here,
/// through `Context::dataset_usage`). A report carrying a different uid is
/// about an earlier dataset of the same name and is skipped.
pub fn usage_of<'a>(
    nodes: impl IntoIterator<Item = &'a StrataNode>,
    namespace: &str,
    name: &str,
    uid: Option<&str>,
    stale_after: Duration,
    now: Timestamp,
) -> DatasetUsage {
    let mut usage = DatasetUsage::default();
    for node in nodes {
        if !is_live(node, stale_after, now) {
            continue;
        }
        let Some(status) = &node.status else { continue };
        for report in &status.datasets {
            let same_uid = match (uid, report.uid.as_deref()) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            };
            if report.namespace == namespace && report.name == name && same_uid {
                usage.cached_bytes = usage
                    .cached_bytes
                    .saturating_add(non_negative(report.cached_bytes));
                usage.hits = usage.hits.saturating_add(non_negative(report.hits));
                usage.misses = usage.misses.saturating_add(non_negative(report.misses));
                usage.nodes.push(node.name_any());
                if let Some(error) = &report.last_error {
                    usage.errors.push(NodeReportedError {
                        node: node.name_any(),
                        message: error.message.clone(),
                    });
                }
                for run in &report.jobs {
                    usage.jobs.entry(run.job.clone()).or_default().add(run);
                }
                for pin in report.pins.iter().filter(|p| p.from_policy) {
                    add_pin(&mut usage.pins, pin);
                }
                if let Some(writes) = &report.writes {
                    usage
                        .writes
                        .get_or_insert_with(WriteUsage::default)
                        .add(&node.name_any(), writes);
                }
            }
        }
    }
    usage.nodes.sort();
    usage.errors.sort_by(|a, b| a.node.cmp(&b.node));
    if let Some(writes) = &mut usage.writes {
        writes.errors.sort_by(|a, b| a.node.cmp(&b.node));
    }
    usage
}

/// Adds one node's figures of a pin rule to the rule's tally (a new entry the first time
/// the rule is seen, so the policy's order is kept).
fn add_pin(pins: &mut Vec<PinStatus>, pin: &NodePinUsage) {
    let at = match pins
        .iter()
        .position(|p| p.paths == pin.paths && p.modified_within == pin.modified_within)
    {
        Some(at) => at,
        None => {
            pins.push(PinStatus {
                paths: pin.paths.clone(),
                modified_within: pin.modified_within.clone(),
                ..PinStatus::default()
            });
            pins.len() - 1
        }
    };
    let tally = &mut pins[at];
    if pin.files > 0 {
        tally.nodes = tally.nodes.saturating_add(1);
    }
    tally.files = tally.files.saturating_add(pin.files.max(0));
    tally.bytes = tally.bytes.saturating_add(pin.bytes.max(0));
}

/// An API counter (int64) as u64; a negative report counts as zero.
pub fn non_negative(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A u64 for an int64 API field, saturating.
pub fn to_api(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// cachedBytes / totalBytes in percent, rounded down; 100 only when complete.
pub fn cached_percent(cached: u64, total: u64) -> i32 {
    if total == 0 {
        return 100;
    }
    if cached >= total {
        return 100;
    }
    ((u128::from(cached) * 100 / u128::from(total)).min(99)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_crds::{
        NodeDatasetUsage, NodeError, NodeJobProgress, NodeWriteUsage, StrataNodeSpec,
        StrataNodeStatus,
    };

    fn node(name: &str, heartbeat: i64, reports: &[(&str, &str, Option<&str>, u64)]) -> StrataNode {
        let mut n = StrataNode::new(
            name,
            StrataNodeSpec {
                node_name: name.into(),
                endpoint: None,
            },
        );
        n.status = Some(StrataNodeStatus {
            last_heartbeat: Some(Time(Timestamp::from_second(heartbeat).unwrap())),
            datasets: reports
                .iter()
                .map(|(ns, name, uid, bytes)| NodeDatasetUsage {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    uid: uid.map(Into::into),
                    cached_bytes: *bytes as i64,
                    pinned_bytes: None,
                    files: 1,
                    hits: 2,
                    misses: 1,
                    last_update: None,
                    last_error: None,
                    jobs: vec![],
                    pins: vec![],
                    writes: None,
                })
                .collect(),
            ..Default::default()
        });
        n
    }

    #[test]
    fn sums_live_nodes_with_matching_uid() {
        let now = Timestamp::from_second(10_000).unwrap();
        let nodes = [
            node(
                "a",
                9_990,
                &[
                    ("ml", "imagenet", Some("u1"), 100),
                    ("ml", "other", None, 7),
                ],
            ),
            node("b", 9_950, &[("ml", "imagenet", None, 50)]),
            node("c", 9_990, &[("ml", "imagenet", Some("old"), 1_000)]),
            node("stale", 1_000, &[("ml", "imagenet", Some("u1"), 5_000)]),
        ];
        let usage = usage_of(
            &nodes,
            "ml",
            "imagenet",
            Some("u1"),
            Duration::from_secs(180),
            now,
        );
        assert_eq!(usage.cached_bytes, 150);
        assert_eq!(usage.hits, 4);
        assert_eq!(usage.nodes, vec!["a".to_string(), "b".to_string()]);
    }

    fn run(job: &str, phase: JobPhase, done: i64, total: i64, start: i64) -> NodeJobProgress {
        NodeJobProgress {
            job: job.into(),
            phase,
            files_done: done / 10,
            files_total: total / 10,
            bytes_done: done,
            bytes_total: total,
            start_time: Some(Time(Timestamp::from_second(start).unwrap())),
            completion_time: (phase != JobPhase::Running)
                .then(|| Time(Timestamp::from_second(start + 5).unwrap())),
            message: (phase == JobPhase::Failed).then(|| "source a: access denied".into()),
        }
    }

    #[test]
    fn sums_job_progress_and_collects_errors() {
        let now = Timestamp::from_second(10_000).unwrap();
        let mut a = node("a", 9_990, &[("ml", "imagenet", Some("u1"), 100)]);
        let mut b = node("b", 9_990, &[("ml", "imagenet", Some("u1"), 100)]);
        let mut old = node("old", 9_990, &[("ml", "imagenet", Some("u0"), 100)]);
        fn report(n: &mut StrataNode) -> &mut NodeDatasetUsage {
            &mut n.status.as_mut().unwrap().datasets[0]
        }
        report(&mut a).jobs = vec![
            run("pin-x-1", JobPhase::Running, 300, 1_000, 100),
            run("preload-x-2", JobPhase::Succeeded, 50, 50, 10),
        ];
        report(&mut b).jobs = vec![run("pin-x-1", JobPhase::Succeeded, 1_000, 1_000, 90)];
        report(&mut b).last_error = Some(NodeError {
            message: "source a: connection refused".into(),
            time: Time(now),
        });
        report(&mut old).jobs = vec![run("pin-x-1", JobPhase::Failed, 0, 1_000, 80)];
        report(&mut old).last_error = Some(NodeError {
            message: "about the earlier dataset".into(),
            time: Time(now),
        });
        let usage = usage_of(
            &[a, b, old],
            "ml",
            "imagenet",
            Some("u1"),
            Duration::from_secs(180),
            now,
        );
        let pin = &usage.jobs["pin-x-1"];
        assert_eq!((pin.bytes_done, pin.bytes_total), (1_300, 2_000));
        assert_eq!((pin.files_done, pin.files_total), (130, 200));
        assert_eq!(pin.phase, Some(JobPhase::Running));
        assert_eq!(pin.percent(), 65);
        assert_eq!(pin.start_time.as_ref().unwrap().0.as_second(), 90);
        assert_eq!(pin.finished_at(), None);
        let preload = &usage.jobs["preload-x-2"];
        assert_eq!(preload.phase, Some(JobPhase::Succeeded));
        assert_eq!(preload.percent(), 100);
        assert_eq!(preload.finished_at().unwrap().0.as_second(), 15);
        assert_eq!(
            usage.errors,
            vec![NodeReportedError {
                node: "b".into(),
                message: "source a: connection refused".into()
            }]
        );
    }

    #[test]
    fn status_gets_the_sums_once_a_node_reports() {
        let usage = DatasetUsage {
            cached_bytes: 250,
            hits: 7,
            misses: 3,
            nodes: vec!["a".into(), "b".into()],
            ..DatasetUsage::default()
        };
        let mut status = DatasetStatus {
            total_bytes: Some(1_000),
            ..DatasetStatus::default()
        };
        usage.write_into(&mut status, false);
        assert_eq!(
            (
                status.cached_bytes,
                status.hits,
                status.misses,
                status.nodes
            ),
            (Some(250), Some(7), Some(3), Some(2))
        );
        assert_eq!(status.cached_percent, Some(25));
        assert_eq!(
            (status.pending_write_bytes, status.unsent.as_deref()),
            (None, None),
            "a read-only dataset shows no writes"
        );

        let mut unlisted = DatasetStatus::default();
        usage.write_into(&mut unlisted, false);
        assert_eq!(unlisted.cached_percent, None, "no size, no percent");
    }

    #[test]
    fn status_without_node_reports_says_nothing_is_cached() {
        let mut status = DatasetStatus {
            total_bytes: Some(1_000),
            ..DatasetStatus::default()
        };
        DatasetUsage::default().write_into(&mut status, false);
        assert_eq!((status.cached_bytes, status.nodes), (Some(0), Some(0)));
        assert_eq!((status.hits, status.misses), (None, None));
        assert_eq!(status.cached_percent, Some(0));

        let mut empty = DatasetStatus {
            total_bytes: Some(0),
            ..DatasetStatus::default()
        };
        DatasetUsage::default().write_into(&mut empty, false);
        assert_eq!(
            empty.cached_percent,
            Some(100),
            "an empty dataset is complete"
        );
    }

    #[test]
    fn percent_rounds_down_and_caps() {
        assert_eq!(cached_percent(0, 10), 0);
        assert_eq!(cached_percent(999, 1000), 99);
        assert_eq!(cached_percent(1000, 1000), 100);
        assert_eq!(cached_percent(5000, 1000), 100);
        assert_eq!(cached_percent(1, 3), 33);
    }

    fn writes(pending: (i64, i64), oldest: Option<i64>, error: Option<&str>) -> NodeWriteUsage {
        NodeWriteUsage {
            pending_files: pending.0,
            pending_bytes: pending.1,
            oldest_pending: oldest.map(|t| Time(Timestamp::from_second(t).unwrap())),
            uploaded_files: 9,
            uploaded_bytes: 900,
            failures: 2,
            conflicts: 1,
            last_error: error.map(|m| NodeError {
                message: m.into(),
                time: Time(Timestamp::from_second(9_000).unwrap()),
            }),
            last_conflict: None,
        }
    }

    #[test]
    fn sums_pending_writes_and_collects_upload_errors() {
        let now = Timestamp::from_second(10_000).unwrap();
        let mut a = node("a", 9_990, &[("ml", "out", Some("u1"), 0)]);
        let mut b = node("b", 9_990, &[("ml", "out", Some("u1"), 0)]);
        let c = node("c", 9_990, &[("ml", "out", Some("u1"), 0)]);
        let mut stale = node("stale", 1_000, &[("ml", "out", Some("u1"), 0)]);
        let mut old = node("old", 9_990, &[("ml", "out", Some("u0"), 0)]);
        fn report(n: &mut StrataNode) -> &mut NodeDatasetUsage {
            &mut n.status.as_mut().unwrap().datasets[0]
        }
        report(&mut a).writes = Some(writes((3, 3 << 20), Some(9_500), None));
        report(&mut b).writes = Some(writes(
            (2, 1 << 20),
            Some(9_100),
            Some("upload of /out/x.bin to source out: connection refused"),
        ));
        report(&mut stale).writes = Some(writes((100, 1 << 30), Some(100), Some("stale")));
        report(&mut old).writes = Some(writes((100, 1 << 30), Some(100), Some("old")));
        let usage = usage_of(
            &[a, b, c, stale, old],
            "ml",
            "out",
            Some("u1"),
            Duration::from_secs(180),
            now,
        );
        let w = usage.writes.clone().unwrap();
        assert_eq!((w.pending_files, w.pending_bytes), (5, 4 << 20));
        assert_eq!(w.oldest_pending.as_ref().unwrap().0.as_second(), 9_100);
        assert_eq!((w.failures, w.conflicts), (4, 2));
        assert_eq!(
            w.errors,
            vec![NodeReportedError {
                node: "b".into(),
                message: "upload of /out/x.bin to source out: connection refused".into()
            }]
        );
        assert!(usage.errors.is_empty(), "upload errors are not read errors");

        let mut status = DatasetStatus::default();
        usage.write_into(&mut status, true);
        assert_eq!(status.pending_write_bytes, Some(4 << 20));
        assert_eq!(status.unsent.as_deref(), Some("4Mi"));
        assert_eq!(status.pending_write_files, Some(5));
        assert_eq!(status.oldest_pending_write.unwrap().0.as_second(), 9_100);
        // Writes still reported after the sources became read-only are shown too.
        let mut status = DatasetStatus::default();
        usage.write_into(&mut status, false);
        assert_eq!(status.unsent.as_deref(), Some("4Mi"));
    }

    #[test]
    fn a_writable_dataset_without_reports_shows_nothing_unsent() {
        let mut status = DatasetStatus::default();
        DatasetUsage::default().write_into(&mut status, true);
        assert_eq!(
            (
                status.pending_write_bytes,
                status.unsent.as_deref(),
                status.pending_write_files,
                status.oldest_pending_write
            ),
            (Some(0), Some("0"), Some(0), None)
        );
    }
}
