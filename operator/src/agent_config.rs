//! What the node agents are told about a dataset: one YAML document per
//! dataset in the `strata-datasets` Secret, in the agent's `DatasetConfig`
//! format (`strata_agent::config::DatasetConfig`, camelCase).

use std::collections::BTreeMap;

use serde::Serialize;
use strata_crds::{CachePolicy, CachePolicySpec, Dataset, Eviction};

use crate::credentials::AgentCredentials;
use crate::{Error, Result};

/// Name of the Secret (in the Strata namespace) holding every dataset's agent config.
pub const DATASETS_SECRET: &str = "strata-datasets";

/// The Secret key of one dataset: `<namespace>.<name>.yaml`. Namespaces and
/// names are DNS labels/subdomains, so the key is a valid Secret key and
/// unambiguous (a namespace has no dots).
pub fn secret_key(namespace: &str, name: &str) -> String {
    format!("{namespace}.{name}.yaml")
}

/// One dataset, as the agent reads it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentDatasetConfig {
    pub namespace: String,
    pub name: String,
    /// The Dataset's UID; the agent echoes it in its StrataNode report so a
    /// report about a deleted dataset of the same name is not counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The live CachePolicy that applies; the agents honour a preload/pin Job's
    /// credential only for datasets that have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    pub sources: Vec<AgentSource>,
    pub cache: AgentCacheSettings,
}

/// One source, as the agent reads it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentSource {
    pub name: String,
    pub uri: String,
    pub mount_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<AgentCredentials>,
    /// Always true: the agent serves sources read-only in this version.
    pub read_only: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// Cache settings, from the dataset's CachePolicy (or the defaults).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentCacheSettings {
    /// Bytes.
    pub block_size: u64,
    /// Seconds.
    pub metadata_ttl: u64,
    /// Bytes per node; absent = only the node's capacity limits it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<u64>,
    /// `LRU` or `S3FIFO`.
    pub eviction: &'static str,
    /// Globs never evicted (every pin rule's paths).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pins: Vec<String>,
    /// Seconds; absent = keep until evicted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_ttl: Option<u64>,
}

impl Default for AgentCacheSettings {
    fn default() -> Self {
        AgentCacheSettings {
            block_size: strata_crds::parse_quantity_bytes("4Mi").unwrap_or(4 << 20),
            metadata_ttl: 60,
            quota: None,
            eviction: "S3FIFO",
            pins: Vec::new(),
            data_ttl: None,
        }
    }
}

/// Longest metadata TTL a node agent accepts, in seconds (365 days).
const MAX_METADATA_TTL_SECS: u64 = 365 * 86400;

impl AgentCacheSettings {
    /// Settings from a (validated) policy. A field that does not parse keeps
    /// its default; the policy controller reports the invalid field.
    pub fn from_policy(policy: &CachePolicySpec) -> Self {
        let defaults = Self::default();
        AgentCacheSettings {
            block_size: policy.block_size_bytes().unwrap_or(defaults.block_size),
            // The agent refuses more than 365 days (its MAX_METADATA_TTL): a longer TTL
            // means "never changes", which 365 days serves as well.
            metadata_ttl: policy
                .metadata_ttl()
                .map(|d| d.as_secs().min(MAX_METADATA_TTL_SECS))
                .unwrap_or(defaults.metadata_ttl),
            quota: policy.quota_bytes().ok(),
            eviction: match policy.eviction {
                Eviction::Lru => "LRU",
                Eviction::S3Fifo => "S3FIFO",
                Eviction::Arc => "ARC",
            },
            pins: policy
                .pin
                .iter()
                .flat_map(|rule| rule.paths.iter().cloned())
                .collect(),
            data_ttl: policy.data_ttl().ok().flatten().map(|d| d.as_secs()),
        }
    }
}

/// Builds a dataset's agent config. `credentials` maps source names to the
/// credentials read from their Secrets.
pub fn build(
    dataset: &Dataset,
    policy: Option<&CachePolicy>,
    credentials: &BTreeMap<String, AgentCredentials>,
) -> AgentDatasetConfig {
    // A policy being deleted is no longer live: its jobs' credentials stop working now.
    let live = policy.filter(|p| p.metadata.deletion_timestamp.is_none());
    AgentDatasetConfig {
        namespace: dataset.metadata.namespace.clone().unwrap_or_default(),
        name: dataset.metadata.name.clone().unwrap_or_default(),
        uid: dataset.metadata.uid.clone(),
        policy: live.and_then(|p| p.metadata.name.clone()),
        sources: dataset
            .spec
            .sources
            .iter()
            .map(|s| AgentSource {
                name: s.name.clone(),
                uri: s.uri.clone(),
                mount_path: s.mount_path.clone(),
                endpoint: s.endpoint.clone(),
                region: s.region.clone(),
                credentials: credentials.get(&s.name).cloned(),
                read_only: true,
                options: s.options.clone(),
            })
            .collect(),
        cache: policy
            .map(|p| AgentCacheSettings::from_policy(&p.spec))
            .unwrap_or_default(),
    }
}

impl AgentDatasetConfig {
    /// The YAML document stored in the datasets Secret.
    pub fn to_yaml(&self) -> Result<String> {
        serde_yaml::to_string(self).map_err(|e| Error::Render {
            what: format!("agent config of dataset {}/{}", self.namespace, self.name),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_crds::{DatasetSpec, Source};

    fn dataset() -> Dataset {
        let mut ds = Dataset::new(
            "imagenet",
            DatasetSpec {
                sources: vec![Source {
                    name: "train".into(),
                    uri: "s3://datasets/imagenet/train/".into(),
                    mount_path: "/train".into(),
                    endpoint: Some("http://127.0.0.1:9000".into()),
                    region: Some("us-east-1".into()),
                    credentials_secret_ref: None,
                    read_only: false,
                    options: BTreeMap::from([("allow_http".into(), "true".into())]),
                }],
                policy_ref: None,
            },
        );
        ds.metadata.namespace = Some("ml".into());
        ds.metadata.uid = Some("0b6c9a4e-uid".into());
        ds
    }

    #[test]
    fn renders_the_agent_format() {
        let creds = BTreeMap::from([(
            "train".to_string(),
            AgentCredentials {
                access_key_id: Some("AKIA".into()),
                secret_access_key: Some("secret".into()),
                ..Default::default()
            },
        )]);
        let config = build(&dataset(), None, &creds);
        let yaml = config.to_yaml().unwrap();
        let value: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(value["namespace"], "ml");
        assert_eq!(value["uid"], "0b6c9a4e-uid");
        assert_eq!(value["sources"][0]["mountPath"], "/train");
        assert_eq!(value["sources"][0]["readOnly"], true);
        assert_eq!(
            value["sources"][0]["credentials"]["secretAccessKey"],
            "secret"
        );
        assert_eq!(value["sources"][0]["options"]["allow_http"], "true");
        assert_eq!(value["cache"]["blockSize"], 4 << 20);
        assert_eq!(value["cache"]["eviction"], "S3FIFO");
        assert_eq!(secret_key("ml", "imagenet"), "ml.imagenet.yaml");
    }

    #[test]
    fn policy_settings_reach_the_cache_section() {
        let policy: CachePolicySpec = serde_json::from_value(serde_json::json!({
            "quota": "200Gi", "eviction": "LRU", "blockSize": "8Mi",
            "metadata": {"ttl": "5m"}, "ttl": "30d",
            "pin": [{"paths": ["/train/2026-11-*/**"], "replicas": "All"}]
        }))
        .unwrap();
        let settings = AgentCacheSettings::from_policy(&policy);
        assert_eq!(settings.quota, Some(200 << 30));
        assert_eq!(settings.block_size, 8 << 20);
        assert_eq!(settings.metadata_ttl, 300);
        assert_eq!(settings.data_ttl, Some(30 * 86400));
        assert_eq!(settings.eviction, "LRU");
        assert_eq!(settings.pins, vec!["/train/2026-11-*/**".to_string()]);
    }

    #[test]
    fn only_a_live_policy_is_named_for_the_agents() {
        let spec: CachePolicySpec =
            serde_json::from_value(serde_json::json!({"quota": "1Gi"})).unwrap();
        let mut policy = CachePolicy::new("hot", spec);
        let creds = BTreeMap::new();
        assert_eq!(build(&dataset(), None, &creds).policy, None);
        assert_eq!(
            build(&dataset(), Some(&policy), &creds).policy.as_deref(),
            Some("hot")
        );
        policy.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        assert_eq!(build(&dataset(), Some(&policy), &creds).policy, None);
    }

    #[test]
    fn a_metadata_ttl_past_what_agents_accept_is_capped() {
        let policy: CachePolicySpec = serde_json::from_value(serde_json::json!({
            "quota": "1Gi", "metadata": {"ttl": "9999d"}
        }))
        .unwrap();
        let settings = AgentCacheSettings::from_policy(&policy);
        assert_eq!(settings.metadata_ttl, 365 * 86400);
    }
}
