//! Reports what this node's agent holds as the cluster-scoped `StrataNode`
//! named after the node (feature `node-status`). The operator sums these
//! reports into each Dataset's status and waits on them when a Dataset is
//! deleted. The engine itself stays free of Kubernetes; only this module
//! talks to the API server.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use strata_crds::{
    NodeDatasetUsage, StrataNode, StrataNodeSpec, StrataNodeStatus, Tier, TierUsage, format_bytes,
};

use crate::agent::Agent;

/// Why a report could not be written. Kept here rather than in the engine's
/// error type: only this feature talks to the API server.
#[derive(Debug, thiserror::Error)]
#[error(
    "StrataNode {node}: {action}: {source} (the agent's ServiceAccount needs create/patch on stratanodes and stratanodes/status)"
)]
pub struct ReportError {
    /// The node (= StrataNode) name.
    pub node: String,
    /// What was being written.
    pub action: &'static str,
    #[source]
    pub source: kube::Error,
}

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

/// The report as of now: tiers and, per dataset, bytes, files, hits and misses.
pub fn status_of(agent: &Agent) -> StrataNodeStatus {
    let now = Time(Timestamp::now());
    let mut datasets: Vec<NodeDatasetUsage> = agent
        .datasets()
        .iter()
        .map(|view| {
            let usage = view.usage();
            // A block read twice from disk is copied into memory, so the two
            // tiers overlap; the larger one is a lower bound of distinct bytes.
            let cached = usage.cached_bytes.max(usage.memory_bytes);
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
            }
        })
        .collect();
    datasets.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let cache = agent.block_cache();
    let config = agent.config();
    let cached: u64 = cache.disk_used().max(cache.memory_used());
    StrataNodeStatus {
        tiers: vec![
            TierUsage {
                tier: Tier::Memory,
                capacity_bytes: api_int(config.memory_bytes),
                used_bytes: api_int(cache.memory_used()),
                path: None,
            },
            TierUsage {
                tier: Tier::Ssd,
                capacity_bytes: api_int(cache.disk_capacity()),
                used_bytes: api_int(cache.disk_used()),
                path: Some(config.cache_dir.display().to_string()),
            },
        ],
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

fn kube_error(action: &'static str, node: &str, source: kube::Error) -> ReportError {
    ReportError {
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
    node: &NodeIdentity,
) -> Result<(), ReportError> {
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
        "status": status_of(agent),
    });
    api.patch_status(&node.node_name, &params, &Patch::Apply(status))
        .await
        .map_err(|e| kube_error("writing the status", &node.node_name, e))?;
    Ok(())
}

/// Reports every `interval` until dropped; a failed write is logged and retried next time.
pub async fn run(agent: Arc<Agent>, node: NodeIdentity, client: kube::Client, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(e) = write_once(&client, &agent, &node).await {
            tracing::warn!(error = %e, node = %node.node_name, "reporting the node status");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::AgentConfig;
    use crate::config::{DatasetConfig, SourceConfig};
    use crate::path::DatasetPath;

    #[tokio::test]
    async fn the_report_counts_what_was_read() {
        let data = tempfile::tempdir().unwrap();
        std::fs::write(data.path().join("a.bin"), vec![7u8; 10_000]).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let agent = Agent::new(AgentConfig::new(cache.path(), 8 << 20, 64 << 20))
            .await
            .unwrap();
        let view = agent
            .add_dataset(DatasetConfig {
                namespace: "ml".into(),
                name: "local".into(),
                uid: Some("7d1e-uid".into()),
                sources: vec![SourceConfig {
                    name: "dir".into(),
                    uri: format!("file://{}", data.path().display()),
                    ..SourceConfig::default()
                }],
                ..DatasetConfig::default()
            })
            .await
            .unwrap();
        let path = DatasetPath::parse("/a.bin").unwrap();
        let bytes = view.read(&path, 0, 10_000).await.unwrap();
        assert_eq!(bytes.len(), 10_000);

        let status = status_of(&agent);
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
}
