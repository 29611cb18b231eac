//! JSON bodies of the agent's HTTP API, shared by the server and [`super::client::AgentClient`].

use crate::config::PinRule;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Every error answer: a sentence a user can act on and, when one input is at
/// fault, the name of that input (`path`, `namespace`, `volumeId`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Answer to `PUT /v1/datasets/{ns}/{name}/volumes/{volumeId}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub namespace: String,
    pub name: String,
    pub volume_id: String,
    /// The dataset's FUSE mount on this node, shared by every volume of the dataset.
    pub mount_path: PathBuf,
    /// How many volumes use the mount now, this one included.
    pub volumes: usize,
    /// False when the agent already had this volume (a repeated publish).
    pub new_volume: bool,
}

/// Answer to `DELETE .../volumes/{volumeId}` and `DELETE /v1/volumes/{volumeId}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRelease {
    pub volume_id: String,
    /// False when the agent did not know the volume (already released): release is idempotent.
    pub released: bool,
    /// True when this was the dataset's last volume and its FUSE mount was taken down.
    pub unmounted: bool,
}

/// One entry of `GET /v1/volumes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeInfo {
    pub volume_id: String,
    pub namespace: String,
    pub name: String,
    pub mount_path: PathBuf,
    /// Who published the volume (the CSI volume id), if the caller said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// Body of `POST .../preload`, `.../pin` and `.../unpin`: glob patterns over dataset paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathsRequest {
    pub paths: Vec<String>,
    /// Pin and preload: only the files (matching `paths`) modified within this long
    /// before now (e.g. `14d`). A pin keeps the window rolling: files that age out of it
    /// are unpinned, new ones pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_within: Option<String>,
    /// Preload only: the Kubernetes Job asking, so the agent reports the run's progress
    /// under its name in the StrataNode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Preload only: requests kept in flight (the CachePolicy rule's `concurrency`),
    /// 1 to 64; absent means 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Preload only: keep the blocks on this node (what a pin Job asks: every node keeps
    /// what it pins), rather than each block group on its owners in the cluster.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub here: bool,
}

/// Answer to `POST .../pin` and `.../unpin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinAnswer {
    /// Every pin rule in force on the dataset now: the configuration's, then those added
    /// through the API.
    pub pins: Vec<PinRule>,
    /// The rules this call added or removed; none when the rule was already in force
    /// (for instance, it is the CachePolicy's own).
    pub changed: Vec<PinRule>,
}

/// One line of the NDJSON stream that `POST .../preload` answers with; the
/// last line has `done: true` (and `error` when the preload failed part-way).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreloadProgress {
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub done: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// (the last line, in a cluster of agents) bytes preloaded per node: each block group is
    /// fetched and kept by its owner.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub by_node: std::collections::BTreeMap<String, u64>,
}

impl PreloadProgress {
    /// Bytes fetched so far as a percentage of the matched bytes (100 when nothing matched).
    pub fn percent(&self) -> f64 {
        if self.bytes_total == 0 {
            100.0
        } else {
            self.bytes_done as f64 * 100.0 / self.bytes_total as f64
        }
    }
}

/// Body of `POST /v1/datasets/{namespace}/{name}/migrations/{migration}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationRequest {
    /// The Kubernetes Job asking: the agent reports the run's progress under its name
    /// in the StrataNode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

/// One line of a migration's progress (newline-delimited JSON, about every second); the
/// last line has `done: true` (and `error` when the copy stopped on one).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationProgress {
    pub objects_done: u64,
    pub objects_total: u64,
    /// Objects found at the target already (copied by an earlier run), not copied again.
    pub objects_skipped: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Bytes this run sent (the others were at the target already).
    pub bytes_copied: u64,
    /// Seconds since this run started.
    pub elapsed_seconds: f64,
    pub done: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /readyz` and `/healthz` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthStatus {
    pub status: String,
    #[serde(default)]
    pub datasets: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_of_nothing_is_complete() {
        assert_eq!(PreloadProgress::default().percent(), 100.0);
        let p = PreloadProgress {
            bytes_done: 1,
            bytes_total: 4,
            ..Default::default()
        };
        assert_eq!(p.percent(), 25.0);
    }

    #[test]
    fn error_body_omits_missing_field() {
        let body = ErrorBody {
            error: "x".into(),
            field: None,
        };
        assert_eq!(serde_json::to_string(&body).unwrap(), r#"{"error":"x"}"#);
    }
}
