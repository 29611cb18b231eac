//! Reports what this node's agent holds as the cluster-scoped `StrataNode`
//! named after the node (feature `node-status`). The operator sums these
//! reports into each Dataset's status and waits on them when a Dataset is
//! deleted. The engine itself stays free of Kubernetes; only this module
//! talks to the API server.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use strata_crds::{
    JobPhase, NodeDatasetUsage, NodeError, NodeJobProgress, NodePinUsage, StrataNode,
    StrataNodeSpec, StrataNodeStatus, Tier, TierUsage, format_bytes,
};

use crate::activity::{ActivityBoard, DatasetActivity, RunPhase};
use crate::agent::Agent;
use crate::{Error, Result};

/// How often the sources of the datasets this node uses are listed once, to find
/// (and clear) errors that no preload has met, e.g. a node without a route to the
/// endpoint. A dataset is probed once when it appears; after that only while this
/// node uses it (anything cached or read) or while it has an error: with hundreds of
/// datasets on every node, listing all of them would cost real money on S3.
pub const PROBE_EVERY: Duration = Duration::from_secs(300);
/// How long one probe may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// Datasets probed at once.
const PROBE_PARALLEL: usize = 8;

/// Field manager of the agent's writes.
pub const MANAGER: &str = "strata-agent";

/// Where this node's report goes.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// The Kubernetes node name (the StrataNode's name).
    pub node_name: String,
    /// URL of this agent's HTTP API for peers and jobs, e.g. `http://10.0.0.5:7070`.
    pub endpoint: Option<String>,
}

fn api_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn api_time(t: SystemTime) -> Option<Time> {
    Timestamp::try_from(t).ok().map(Time)
}

fn api_phase(phase: RunPhase) -> JobPhase {
    match phase {
        RunPhase::Running => JobPhase::Running,
        RunPhase::Succeeded => JobPhase::Succeeded,
        RunPhase::Failed => JobPhase::Failed,
    }
}

/// The last source error and the Job runs of one dataset, as reported.
fn activity_report(activity: DatasetActivity) -> (Option<NodeError>, Vec<NodeJobProgress>) {
    let last_error = activity.last_error.and_then(|e| {
        Some(NodeError {
            message: e.message,
            time: api_time(e.time)?,
        })
    });
    let jobs = activity
        .runs
        .into_iter()
        .map(|r| NodeJobProgress {
            job: r.job,
            phase: api_phase(r.phase),
            files_done: api_int(r.files_done),
            files_total: api_int(r.files_total),
            bytes_done: api_int(r.bytes_done),
            bytes_total: api_int(r.bytes_total),
            start_time: api_time(r.started),
            completion_time: r.finished.and_then(api_time),
            message: r.message,
        })
        .collect();
    (last_error, jobs)
}

/// The report as of now: tiers and, per dataset, bytes, files, hits, misses, the
/// last source error and the progress of Job runs (from `activity`).
/// What a dataset's writes on this node amount to, for the report.
fn write_usage(u: &strata_engine::writes::WriteUsage) -> strata_crds::NodeWriteUsage {
    let time = |t: std::time::SystemTime| {
        Time(Timestamp::try_from(t).unwrap_or_else(|_| Timestamp::now()))
    };
    strata_crds::NodeWriteUsage {
        pending_files: api_int(u.pending_files),
        pending_bytes: api_int(u.pending_bytes),
        oldest_pending: u.oldest_pending.map(time),
        uploaded_files: api_int(u.uploaded_files),
        uploaded_bytes: api_int(u.uploaded_bytes),
        failures: api_int(u.failures),
        conflicts: api_int(u.conflicts),
        last_error: u
            .last_error
            .as_ref()
            .map(|(message, at)| strata_crds::NodeError {
                message: message.chars().take(2048).collect(),
                time: time(*at),
            }),
        last_conflict: u
            .last_conflict
            .as_ref()
            .map(|c| strata_crds::NodeWriteConflict {
                path: c.path.clone(),
                kept_as: c.kept_as.clone(),
                time: time(c.time),
            }),
    }
}

pub fn status_of(agent: &Agent, activity: &ActivityBoard) -> StrataNodeStatus {
    let now = Time(Timestamp::now());
    let mut datasets: Vec<NodeDatasetUsage> = agent
        .datasets()
        .iter()
        .map(|view| {
            let usage = view.usage();
            // A block read twice from disk is copied into memory, so the two
            // tiers overlap; the larger one is a lower bound of distinct bytes.
            let cached = usage.cached_bytes.max(usage.memory_bytes);
            // Reads through mounts and the API that failed since the last report.
            if let Some((message, _)) = view.take_source_error() {
                activity.source_failed(view.namespace(), view.name(), &message);
            }
            let (last_error, jobs) =
                activity_report(activity.snapshot(view.namespace(), view.name()));
            NodeDatasetUsage {
                namespace: view.namespace().to_string(),
                name: view.name().to_string(),
                uid: view.config().uid.clone(),
                cached_bytes: api_int(cached),
                pinned_bytes: Some(api_int(usage.pinned_bytes)),
                files: api_int(usage.cached_files),
                hits: api_int(usage.hits),
                misses: api_int(usage.misses),
                last_update: Some(now.clone()),
                last_error,
                jobs,
                writes: view.writes().map(|w| write_usage(&w.usage())),
                pins: usage
                    .pins
                    .iter()
                    .take(32)
                    .map(|p| NodePinUsage {
                        paths: p.rule.paths.clone(),
                        modified_within: p.rule.modified_within.map(crate::config::format_duration),
                        from_policy: p.from_policy,
                        files: api_int(p.files),
                        bytes: api_int(p.bytes),
                    })
                    .collect(),
            }
        })
        .collect();
    datasets.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let cache = agent.block_cache();
    let config = agent.config();
    let ephemeral = agent.ephemeral_block_cache();
    let ephemeral_used = ephemeral.map_or(0, |c| c.disk_used());
    let cached: u64 = (cache.disk_used() + ephemeral_used).max(cache.memory_used());
    let mut tiers = vec![
        TierUsage {
            tier: Tier::Memory,
            capacity_bytes: api_int(config.memory_bytes),
            used_bytes: api_int(cache.memory_used()),
            path: None,
            ephemeral: false,
        },
        TierUsage {
            tier: Tier::Ssd,
            capacity_bytes: api_int(cache.disk_capacity()),
            used_bytes: api_int(cache.disk_used()),
            path: Some(config.cache_dir.display().to_string()),
            ephemeral: false,
        },
    ];
    if let Some(c) = ephemeral {
        tiers.push(TierUsage {
            tier: Tier::Ssd,
            capacity_bytes: api_int(c.disk_capacity()),
            used_bytes: api_int(ephemeral_used),
            path: Some(c.root().display().to_string()),
            ephemeral: true,
        });
    }
    StrataNodeStatus {
        tiers,
        dataset_count: Some(i32::try_from(datasets.len()).unwrap_or(i32::MAX)),
        datasets,
        cached_bytes: Some(api_int(cached)),
        cached_size: Some(format_bytes(cached)),
        last_heartbeat: Some(now.clone()),
        agent_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Serving".into(),
            message: "The agent serves its cache and mounts.".into(),
            observed_generation: None,
            last_transition_time: now,
        }],
    }
}

fn kube_error(action: &'static str, node: &str, source: kube::Error) -> Error {
    Error::NodeReport {
        node: node.to_string(),
        action,
        source,
    }
}

/// Writes the report once: the StrataNode's spec, then its status, both by
/// server-side apply (creating the object on the first call).
pub async fn write_once(
    client: &kube::Client,
    agent: &Agent,
    activity: &ActivityBoard,
    node: &NodeIdentity,
) -> Result<()> {
    let api: Api<StrataNode> = Api::all(client.clone());
    let params = PatchParams::apply(MANAGER).force();
    let object = StrataNode::new(
        &node.node_name,
        StrataNodeSpec {
            node_name: node.node_name.clone(),
            endpoint: node.endpoint.clone(),
        },
    );
    api.patch(&node.node_name, &params, &Patch::Apply(&object))
        .await
        .map_err(|e| kube_error("applying the spec", &node.node_name, e))?;
    let status = serde_json::json!({
        "apiVersion": "strata.dev/v1alpha1",
        "kind": "StrataNode",
        "status": status_of(agent, activity),
    });
    api.patch_status(&node.node_name, &params, &Patch::Apply(status))
        .await
        .map_err(|e| kube_error("writing the status", &node.node_name, e))?;
    Ok(())
}

/// Lists the sources (one level of each root) of every dataset not in `probed`
/// yet, used on this node, or with an error: a failure becomes the dataset's last
/// error, success clears an error older than the probe. Adds what it probed to
/// `probed`.
pub async fn probe_sources(
    agent: &Agent,
    activity: &ActivityBoard,
    probed: &mut std::collections::HashSet<String>,
) {
    use futures::StreamExt;
    let views: Vec<_> = agent
        .datasets()
        .into_iter()
        .filter(|view| {
            let usage = view.usage();
            !probed.contains(view.id())
                || usage.cached_files > 0
                || usage.hits + usage.misses > 0
                || activity
                    .snapshot(view.namespace(), view.name())
                    .last_error
                    .is_some()
        })
        .collect();
    probed.extend(views.iter().map(|v| v.id().to_string()));
    futures::stream::iter(views)
        .for_each_concurrent(PROBE_PARALLEL, |view| async move {
            let at = SystemTime::now();
            match tokio::time::timeout(PROBE_TIMEOUT, view.check_sources()).await {
                Ok(Ok(())) => activity.sources_ok(view.namespace(), view.name(), at),
                Ok(Err(e)) => {
                    tracing::warn!(dataset = %view.id(), error = %e, "source check failed");
                    activity.source_failed(view.namespace(), view.name(), &e.to_string());
                }
                Err(_) => activity.source_failed(
                    view.namespace(),
                    view.name(),
                    &format!(
                        "listing the sources did not finish within {PROBE_TIMEOUT:?} (check the endpoints and the network path from this node)"
                    ),
                ),
            }
        })
        .await;
}

/// Reports every `interval` and probes the sources every [`PROBE_EVERY`] until
/// dropped; a failed write is logged and retried next time.
pub async fn run(
    agent: Arc<Agent>,
    activity: Arc<ActivityBoard>,
    node: NodeIdentity,
    client: kube::Client,
    interval: Duration,
) {
    let probes = async {
        let mut ticker = tokio::time::interval(PROBE_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut probed = std::collections::HashSet::new();
        loop {
            ticker.tick().await;
            probed.retain(|id: &String| {
                id.split_once('/')
                    .is_some_and(|(ns, name)| agent.dataset(ns, name).is_some())
            });
            probe_sources(&agent, &activity, &mut probed).await;
        }
    };
    let reports = async {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            activity.retain(|ns, name| agent.dataset(ns, name).is_some());
            if let Err(e) = write_once(&client, &agent, &activity, &node).await {
                tracing::warn!(error = %e, node = %node.node_name, "reporting the node status");
            }
        }
    };
    tokio::join!(probes, reports);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::AgentConfig;
    use crate::config::{DatasetConfig, SourceConfig};
    use crate::path::DatasetPath;

    /// Dataset `ml/NAME` over a local directory.
    fn local_dataset(name: &str, uid: Option<&str>, dir: &std::path::Path) -> DatasetConfig {
        DatasetConfig {
            namespace: "ml".into(),
            name: name.into(),
            uid: uid.map(str::to_string),
            sources: vec![SourceConfig {
                name: "dir".into(),
                uri: format!("file://{}", dir.display()),
                ..SourceConfig::default()
            }],
            ..DatasetConfig::default()
        }
    }

    #[tokio::test]
    async fn the_report_counts_what_was_read() {
        let data = tempfile::tempdir().unwrap();
        std::fs::write(data.path().join("a.bin"), vec![7u8; 10_000]).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let agent = Agent::new(AgentConfig::new(cache.path(), 8 << 20, 64 << 20))
            .await
            .unwrap();
        let view = agent
            .add_dataset(local_dataset("local", Some("7d1e-uid"), data.path()))
            .await
            .unwrap();
        let path = DatasetPath::parse("/a.bin").unwrap();
        let bytes = view.read(&path, 0, 10_000).await.unwrap();
        assert_eq!(bytes.len(), 10_000);

        let status = status_of(&agent, &ActivityBoard::default());
        assert_eq!(status.dataset_count, Some(1));
        let report = &status.datasets[0];
        assert_eq!(
            (report.namespace.as_str(), report.name.as_str()),
            ("ml", "local")
        );
        assert_eq!(report.uid.as_deref(), Some("7d1e-uid"));
        assert!(report.cached_bytes >= 10_000, "{report:?}");
        assert_eq!(report.files, 1);
        assert!(report.misses >= 1, "{report:?}");
        assert_eq!(status.tiers.len(), 2);
        assert_eq!(status.tiers[0].capacity_bytes, 8 << 20);
        assert!(status.last_heartbeat.is_some());
    }

    /// A source this node cannot reach becomes the dataset's lastError, without
    /// the credentials; an error older than a clean probe is cleared.
    #[tokio::test]
    async fn an_unreachable_source_is_the_last_error_without_credentials() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let cache = tempfile::tempdir().unwrap();
        let agent = Agent::new(AgentConfig::new(cache.path(), 8 << 20, 64 << 20))
            .await
            .unwrap();
        agent
            .add_dataset(DatasetConfig {
                namespace: "ml".into(),
                name: "remote".into(),
                sources: vec![SourceConfig {
                    name: "train".into(),
                    uri: "s3://bucket/train/".into(),
                    endpoint: Some(format!("http://127.0.0.1:{port}")),
                    region: Some("us-east-1".into()),
                    credentials: Some(crate::config::Credentials {
                        access_key_id: Some("AKIAEXAMPLEKEYID".into()),
                        secret_access_key: Some("hunter2-very-secret".into()),
                        ..Default::default()
                    }),
                    max_retries: Some(0),
                    ..SourceConfig::default()
                }],
                ..DatasetConfig::default()
            })
            .await
            .unwrap();
        let activity = ActivityBoard::default();
        let mut probed = std::collections::HashSet::new();
        probe_sources(&agent, &activity, &mut probed).await;
        assert!(probed.contains("ml/remote"));
        let report = status_of(&agent, &activity).datasets.remove(0);
        let error = report
            .last_error
            .expect("no lastError after a failed probe");
        assert!(error.message.contains("train"), "{}", error.message);
        assert!(
            !error.message.contains("hunter2") && !error.message.contains("AKIAEXAMPLEKEYID"),
            "{}",
            error.message
        );
        // Unused here, but probed again while it has an error (still failing).
        let first = activity.snapshot("ml", "remote").last_error.unwrap().time;
        probe_sources(&agent, &activity, &mut probed).await;
        let again = activity.snapshot("ml", "remote").last_error.unwrap().time;
        assert!(again > first, "not probed again while failing");
        activity.sources_ok("ml", "remote", SystemTime::now());
        assert!(
            status_of(&agent, &activity).datasets[0]
                .last_error
                .is_none()
        );
    }

    /// After its first probe, a dataset nobody uses on this node is left alone.
    #[tokio::test]
    async fn unused_datasets_are_probed_once() {
        let data = tempfile::tempdir().unwrap();
        std::fs::write(data.path().join("a.bin"), vec![1u8; 1000]).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let agent = Agent::new(AgentConfig::new(cache.path(), 8 << 20, 64 << 20))
            .await
            .unwrap();
        let view = agent
            .add_dataset(local_dataset("idle", None, data.path()))
            .await
            .unwrap();
        let (activity, mut probed) = (ActivityBoard::default(), std::collections::HashSet::new());
        probe_sources(&agent, &activity, &mut probed).await;
        let lists = view.request_counts().lists;
        assert!(lists >= 1);
        probe_sources(&agent, &activity, &mut probed).await;
        assert_eq!(
            view.request_counts().lists,
            lists,
            "an idle dataset was probed again"
        );
        view.read(&DatasetPath::parse("/a.bin").unwrap(), 0, 1000)
            .await
            .unwrap();
        let lists = view.request_counts().lists;
        probe_sources(&agent, &activity, &mut probed).await;
        assert!(
            view.request_counts().lists > lists,
            "a used dataset was not probed"
        );
        assert!(activity.snapshot("ml", "idle").last_error.is_none());
    }
}
