//! What the node agents are told about a dataset: one YAML document per
//! dataset in the `strata-datasets` Secret, in the agent's `DatasetConfig`
//! format (`strata_wire::config::DatasetConfig`, camelCase), built as that very type.

use std::collections::BTreeMap;

use strata_crds::{
    CachePolicy, CachePolicySpec, Dataset, Eviction, Source, Tier, WriteMode, parse_duration,
};
use strata_wire::config::{
    CacheSettings, DatasetConfig, EvictionKind, MAX_METADATA_TTL, PinRule,
    Replicas as WireReplicas, SourceConfig, TierKind, WriteMode as WireWriteMode,
};

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

/// One dataset, as the agent reads it: the agent's own type (`strata-wire`), so the
/// operator cannot write a field the agent does not read, or in another grammar.
pub type AgentDatasetConfig = DatasetConfig;

/// Cache settings from a (validated) policy. A field that does not parse keeps its default;
/// the policy controller reports the invalid field.
pub fn cache_settings(policy: &CachePolicySpec) -> CacheSettings {
    let defaults = CacheSettings::default();
    CacheSettings {
        ephemeral: policy.persistence == strata_crds::Persistence::Ephemeral,
        block_size: policy.block_size_bytes().unwrap_or(defaults.block_size),
        // The agent refuses more than 365 days: a longer TTL means "never changes", which
        // 365 days serves as well.
        metadata_ttl: policy
            .metadata_ttl()
            .map(|d| d.min(MAX_METADATA_TTL))
            .unwrap_or(defaults.metadata_ttl),
        quota: policy.quota_bytes().ok(),
        eviction: match policy.eviction {
            Eviction::Lru => EvictionKind::Lru,
            Eviction::S3Fifo => EvictionKind::S3Fifo,
            Eviction::Arc => EvictionKind::Arc,
        },
        pins: policy
            .pin
            .iter()
            .map(|rule| PinRule {
                paths: rule.paths.clone(),
                // An invalid window is reported by the policy controller; the rule
                // then pins nothing rather than everything.
                modified_within: rule
                    .modified_within
                    .as_deref()
                    .map(|w| parse_duration(w).unwrap_or_default()),
            })
            .collect(),
        data_ttl: policy.data_ttl().ok().flatten(),
        tiers: policy
            .tiers
            .iter()
            .map(|tier| match tier {
                Tier::Memory => TierKind::Memory,
                Tier::Ssd => TierKind::Ssd,
            })
            .collect(),
        replicas: match policy.replicas() {
            Ok(strata_crds::Replicas::Count(n)) => WireReplicas::Count(n.get()),
            Ok(strata_crds::Replicas::All) => WireReplicas::All,
            Err(_) => defaults.replicas,
        },
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
    DatasetConfig {
        namespace: dataset.metadata.namespace.clone().unwrap_or_default(),
        name: dataset.metadata.name.clone().unwrap_or_default(),
        uid: dataset.metadata.uid.clone(),
        policy: live.and_then(|p| p.metadata.name.clone()),
        sources: dataset
            .spec
            .sources
            .iter()
            .map(|s| source_config(s, credentials.get(&s.name)))
            .collect(),
        cache: policy.map(|p| cache_settings(&p.spec)).unwrap_or_default(),
        migrations: Vec::new(),
    }
}

/// One source as the agents read it, and as the operator's reachability check builds its
/// store from (the same `strata-store` builder, so both read the fields alike).
pub fn source_config(source: &Source, credentials: Option<&AgentCredentials>) -> SourceConfig {
    SourceConfig {
        name: source.name.clone(),
        uri: source.uri.clone(),
        mount_path: source.mount_path.clone(),
        endpoint: source.endpoint.clone(),
        region: source.region.clone(),
        credentials: credentials.cloned(),
        // The deprecated readOnly resolved: `readOnly: false` alone means WriteBack.
        write_mode: wire_write_mode(source.effective_write_mode()),
        options: source.options.clone(),
        ..SourceConfig::default()
    }
}

/// The agents' spelling of a source's write mode.
pub fn wire_write_mode(mode: WriteMode) -> WireWriteMode {
    match mode {
        WriteMode::ReadOnly => WireWriteMode::ReadOnly,
        WriteMode::WriteBack => WireWriteMode::WriteBack,
        WriteMode::WriteThrough => WireWriteMode::WriteThrough,
    }
}

/// The YAML document stored in the datasets Secret.
pub fn to_yaml(config: &AgentDatasetConfig) -> Result<String> {
    serde_yaml::to_string(config).map_err(|source| Error::Render {
        what: format!(
            "agent config of dataset {}/{}",
            config.namespace, config.name
        ),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
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
                    write_mode: None,
                    read_only: None,
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
        let yaml = to_yaml(&config).unwrap();
        let value: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(value["namespace"], "ml");
        assert_eq!(value["uid"], "0b6c9a4e-uid");
        assert_eq!(value["sources"][0]["mountPath"], "/train");
        assert!(
            value["sources"][0].get("writeMode").is_none(),
            "read-only by default, and ReadOnly is omitted"
        );
        assert_eq!(
            value["sources"][0]["credentials"]["secretAccessKey"],
            "secret"
        );
        assert_eq!(value["sources"][0]["options"]["allow_http"], "true");
        assert_eq!(value["cache"]["blockSize"], 4 << 20);
        assert_eq!(value["cache"]["eviction"], "S3FIFO");
        assert_eq!(secret_key("ml", "imagenet"), "ml.imagenet.yaml");
    }

    /// writeMode reaches the agents as written, and the deprecated `readOnly: false`
    /// as WriteBack; the agents parse what the operator writes.
    #[test]
    fn write_modes_reach_the_agents() {
        let yaml_of = |write_mode: Option<WriteMode>, read_only: Option<bool>| {
            let mut ds = dataset();
            ds.spec.sources[0].write_mode = write_mode;
            ds.spec.sources[0].read_only = read_only;
            let yaml = to_yaml(&build(&ds, None, &BTreeMap::new())).unwrap();
            let parsed: DatasetConfig = serde_yaml::from_str(&yaml).unwrap();
            let value: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
            assert_eq!(
                parsed.sources[0].write_mode,
                wire_write_mode(ds.spec.sources[0].effective_write_mode())
            );
            value["sources"][0].get("writeMode").cloned()
        };
        let write_back = Some(serde_json::json!("WriteBack"));
        assert_eq!(yaml_of(Some(WriteMode::WriteBack), None), write_back);
        assert_eq!(yaml_of(None, Some(false)), write_back);
        assert_eq!(yaml_of(Some(WriteMode::WriteBack), Some(false)), write_back);
        assert_eq!(
            yaml_of(Some(WriteMode::WriteThrough), None),
            Some(serde_json::json!("WriteThrough"))
        );
        assert_eq!(yaml_of(Some(WriteMode::ReadOnly), None), None);
        assert_eq!(yaml_of(None, Some(true)), None);
        assert_eq!(yaml_of(None, None), None);
    }

    #[test]
    fn policy_settings_reach_the_cache_section() {
        let policy: CachePolicySpec = serde_json::from_value(serde_json::json!({
            "quota": "200Gi", "eviction": "LRU", "blockSize": "8Mi",
            "metadata": {"ttl": "5m"}, "ttl": "30d", "tiers": ["Memory"],
            "pin": [{"paths": ["/train/2026-11-*/**"], "replicas": "All"}]
        }))
        .unwrap();
        let settings = cache_settings(&policy);
        assert_eq!(settings.tiers, vec![TierKind::Memory]);
        assert!(!settings.uses_disk());
        assert_eq!(settings.quota, Some(200 << 30));
        assert_eq!(settings.block_size, 8 << 20);
        assert_eq!(settings.metadata_ttl, Duration::from_secs(300));
        assert_eq!(settings.data_ttl, Some(Duration::from_secs(30 * 86400)));
        assert_eq!(settings.eviction, EvictionKind::Lru);
        assert_eq!(settings.pins, vec![PinRule::paths(["/train/2026-11-*/**"])]);
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
        let settings = cache_settings(&policy);
        assert_eq!(settings.metadata_ttl, Duration::from_secs(365 * 86400));
    }
}
