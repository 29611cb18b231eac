//! `StrataNode`: one per node, written by that node's agent; the operator sums
//! these reports into each `Dataset`'s status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::validation::{HTTP_URL_PATTERN, MSG_ENDPOINT, cel_matches};
use crate::{JobPhase, Tier};

/// What one node's cache agent holds and can hold. Cluster-scoped, named
/// after the node; written only by that node's agent.
// Each printcolumn(...) repeats `type_ = ...`; clippy reads that as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "strata.dev",
    version = "v1alpha1",
    kind = "StrataNode",
    plural = "stratanodes",
    singular = "stratanode",
    shortname = "snode",
    category = "strata",
    status = "StrataNodeStatus",
    derive = "PartialEq",
    doc = "What one node's Strata cache agent holds and can hold; written by that agent, summed by the operator into each Dataset's status.",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.nodeName"),
    printcolumn(
        name = "Datasets",
        type_ = "integer",
        json_path = ".status.datasetCount",
        description = "Datasets with data cached on this node"
    ),
    printcolumn(
        name = "Cached",
        type_ = "string",
        json_path = ".status.cachedSize",
        description = "Bytes cached on this node, all datasets and tiers"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".spec.endpoint",
        priority = 1
    ),
    printcolumn(
        name = "Heartbeat",
        type_ = "date",
        json_path = ".status.lastHeartbeat",
        description = "When the agent last reported"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct StrataNodeSpec {
    /// The Kubernetes node this agent runs on.
    #[schemars(length(min = 1, max = 253))]
    pub node_name: String,

    /// URL of the agent's HTTP API for peers and jobs, such as
    /// `http://10.0.0.5:7070`. Other agents fetch blocks this node owns from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(cel_matches(HTTP_URL_PATTERN)).message(MSG_ENDPOINT))]
    pub endpoint: Option<String>,
}

/// The agent's report.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StrataNodeStatus {
    /// Capacity and use of each cache tier on this node (set at install time).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<TierUsage>,

    /// What this node holds per dataset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datasets: Vec<NodeDatasetUsage>,

    /// len(datasets), for the Datasets column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_count: Option<i32>,

    /// Bytes cached on this node over all datasets and tiers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_bytes: Option<i64>,

    /// cachedBytes for people, e.g. `3.2Gi` (the Cached column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_size: Option<String>,

    /// When the agent last wrote this report. The operator treats a node whose
    /// heartbeat is older than a few report intervals as gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<Time>,

    /// Version of the agent binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,

    /// Standard conditions: Ready (the agent serves its cache and mounts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Capacity and use of one cache tier on one node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TierUsage {
    /// Memory or SSD.
    pub tier: Tier,
    /// Bytes this tier may hold on this node.
    pub capacity_bytes: i64,
    /// Bytes this tier holds now.
    pub used_bytes: i64,
    /// Where the tier keeps its blocks (SSD only), e.g. `/var/cache/strata`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The ephemeral SSD tier (datasets whose policy's persistence is
    /// Ephemeral), emptied when the agent starts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
}

/// What one node holds of one dataset.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeDatasetUsage {
    /// Namespace of the Dataset.
    pub namespace: String,
    /// Name of the Dataset.
    pub name: String,
    /// UID of the Dataset, so a report about a deleted and re-created dataset
    /// of the same name is not summed into the new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Bytes of the dataset cached on this node, all tiers.
    pub cached_bytes: i64,
    /// Bytes of the dataset held here because a pin rule matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_bytes: Option<i64>,
    /// Files with at least one block cached on this node.
    pub files: i64,
    /// Reads served from this node's cache since the agent started.
    pub hits: i64,
    /// Reads that went to a peer or the source since the agent started.
    pub misses: i64,
    /// When these numbers were taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<Time>,
    /// The last failed read or listing of one of the dataset's sources by this
    /// node's agent; gone once the sources answer again. Never carries a
    /// credential or a signed URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<NodeError>,
    /// Preload and pin runs this agent executed for the dataset's Jobs, the
    /// latest per Job, newest first (at most 8).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub jobs: Vec<NodeJobProgress>,
    /// Each pin rule in force on this node and what it holds here: the
    /// CachePolicy's rules, then any added through the agent API (at most 32).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub pins: Vec<NodePinUsage>,
    /// Writes made on this node and their uploads to the sources; only for a
    /// dataset with a writable source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes: Option<NodeWriteUsage>,
}

/// Writes made through one node's mounts of one dataset, and their uploads.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeWriteUsage {
    /// Files changed on this node (written, deleted or renamed) whose change
    /// is not yet at the source.
    pub pending_files: i64,
    /// Bytes of those files still to upload.
    pub pending_bytes: i64,
    /// When the oldest change not yet at the source was made; unset when
    /// nothing is pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_pending: Option<Time>,
    /// Files uploaded since the agent started.
    pub uploaded_files: i64,
    /// Bytes uploaded since the agent started.
    pub uploaded_bytes: i64,
    /// Failed upload attempts since the agent started (each is retried).
    pub failures: i64,
    /// Uploads since the agent started that found the object changed at the
    /// source: the local version was uploaded and the upstream one kept under
    /// `<name>.conflict-<UTC time>`.
    pub conflicts: i64,
    /// The last failed upload; gone once an upload succeeds. Never carries a
    /// credential or a signed URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<NodeError>,
    /// The last upload since the agent started that found the object changed
    /// at the source (the operator turns each new one into an `UploadConflict`
    /// event on the Dataset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_conflict: Option<NodeWriteConflict>,
}

/// An upload that found its object changed at the source: the node's version
/// was uploaded, the upstream one kept under another name.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeWriteConflict {
    /// The file's path in the dataset.
    #[schemars(length(max = 4096))]
    pub path: String,
    /// Where the upstream version was kept: `<path>.conflict-<UTC time>`.
    #[schemars(length(max = 4096))]
    pub kept_as: String,
    /// When the upload found it.
    pub time: Time,
}

/// One pin rule on one node and the cached files it keeps there.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodePinUsage {
    /// The rule's globs.
    #[schemars(length(max = 32))]
    pub paths: Vec<String>,
    /// The rule's window, e.g. `336h0m0s`; unset pins every matching file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_within: Option<String>,
    /// True for a CachePolicy rule, false for one added through the agent API.
    pub from_policy: bool,
    /// Cached files the rule pins on this node now.
    pub files: i64,
    /// Cached bytes of those files.
    pub bytes: i64,
}

/// An error a node's agent met.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeError {
    /// What failed, e.g. `source train (s3://bucket/train/): access denied (check the credentials and their permissions)`.
    #[schemars(length(max = 2048))]
    pub message: String,
    /// When it happened.
    pub time: Time,
}

/// Progress of one preload or pin Job's run on one node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeJobProgress {
    /// Name of the Kubernetes Job (in the dataset's namespace).
    #[schemars(length(min = 1, max = 253))]
    pub job: String,
    /// Running, Succeeded or Failed.
    pub phase: JobPhase,
    /// Files fetched so far.
    pub files_done: i64,
    /// Files matched by the run's paths.
    pub files_total: i64,
    /// Bytes fetched so far.
    pub bytes_done: i64,
    /// Bytes of the matched files.
    pub bytes_total: i64,
    /// When the agent started the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Why it failed (never a credential or signed URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub message: Option<String>,
}
