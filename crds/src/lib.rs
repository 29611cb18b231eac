//! The Strata API (`strata.dev/v1alpha1`): the `Dataset`, `CachePolicy`,
//! `Migration` and `StrataNode` custom resources, their validation, and typed
//! parsers for the string-encoded fields (durations, quantities, cron
//! schedules, source URIs).
//!
//! Validation runs twice on purpose. The generated CRDs carry OpenAPI
//! constraints and CEL rules, so the API server refuses a bad spec at
//! `kubectl apply`. [`Dataset::validate`], [`CachePolicy::validate`] and
//! [`Migration::validate`] (with [`Migration::validate_update`] for the
//! fields that must not change) apply the same rules in Rust, for objects stored before a rule existed and for code
//! that builds specs itself; they report every problem with its field path
//! (`spec.sources[1].mountPath`).

mod cache_policy;
mod dataset;
mod duration;
mod error;
mod migration;
mod quantity;
mod schedule;
mod schema;
mod source_uri;
mod store;
mod strata_node;
mod validation;

pub use cache_policy::{
    CachePolicy, CachePolicySpec, CachePolicyStatus, DEFAULT_BLOCK_SIZE, DEFAULT_METADATA_TTL,
    DEFAULT_PRELOAD_CONCURRENCY, Eviction, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, MetadataCachePolicy,
    Persistence, PinRule, PreloadRule, Replicas, Tier,
};
pub use dataset::{
    Dataset, DatasetPhase, DatasetSpec, DatasetStatus, JobKind, JobPhase, JobRun, PinStatus,
    PolicyReference, SecretReference, Source, SourceStatus, WriteMode,
};
pub use duration::parse_duration;
pub use error::{Error, FieldError, FieldErrorKind, Result};
pub use migration::{
    DEFAULT_MIGRATION_CONCURRENCY, Migration, MigrationPhase, MigrationSpec, MigrationStatus,
    MigrationTarget,
};
pub use quantity::{BYTE_COUNT_RULE, format_bytes, parse_quantity_bytes};
pub use schedule::Schedule;
pub use source_uri::{Scheme, SourceUri};
pub use strata_node::{
    NodeDatasetUsage, NodeError, NodeJobProgress, NodePinUsage, NodeWriteConflict, NodeWriteUsage,
    StrataNode, StrataNodeSpec, StrataNodeStatus, TierUsage,
};
pub use validation::validate_dataset_path_glob;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// API group of every Strata resource.
pub const GROUP: &str = "strata.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";
/// `kubectl get strata` lists every kind in this category.
pub const CATEGORY: &str = "strata";

/// Condition types written by the operator. The operator owns their meaning;
/// the names live here so every binary spells them the same way.
pub mod condition {
    /// The object is usable: a Dataset can be mounted, a CachePolicy is applied.
    pub const READY: &str = "Ready";
    /// Every source of a Dataset answered a listing with the given credentials.
    pub const SOURCES_REACHABLE: &str = "SourcesReachable";
    /// A Dataset's policy was found (by `policyRef` or a selector) and is valid.
    pub const POLICY_RESOLVED: &str = "PolicyResolved";
    /// A preload or pin job for the Dataset is running.
    pub const PRELOADING: &str = "Preloading";
    /// The spec passed the Rust validation twin (fails for objects stored before a rule existed).
    pub const SPEC_VALID: &str = "SpecValid";
    /// No live node reports an error reading or listing the Dataset's sources.
    pub const NODES_HEALTHY: &str = "NodesHealthy";
    /// No live node reports a failed upload of the Dataset's writes (only on
    /// datasets with a writable source).
    pub const UPLOADS_HEALTHY: &str = "UploadsHealthy";
    /// The Dataset's PersistentVolume and claim have the access modes its write
    /// mode asks for (ReadWriteMany with a writable source, else ReadOnlyMany).
    pub const VOLUME_UP_TO_DATE: &str = "VolumeUpToDate";
    /// Every object under a Migration's path is at its target and verified.
    pub const COPIED: &str = "Copied";
    /// The Migration's Dataset source is served from the target.
    pub const SWITCHED: &str = "Switched";
}

/// Keys of the Secret named by a source's `credentialsSecretRef` (the names
/// object_store reads from the environment, so `kubectl create secret
/// generic --from-env-file` works with an existing env file).
pub mod secret_keys {
    /// s3: access key id.
    pub const AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
    /// s3: secret access key.
    pub const AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
    /// s3 (optional): session token for temporary credentials.
    pub const AWS_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
    /// gs: the service account JSON key.
    pub const GOOGLE_SERVICE_ACCOUNT_KEY: &str = "GOOGLE_SERVICE_ACCOUNT_KEY";
    /// az: storage account name.
    pub const AZURE_STORAGE_ACCOUNT_NAME: &str = "AZURE_STORAGE_ACCOUNT_NAME";
    /// az: storage account key (or use a SAS token).
    pub const AZURE_STORAGE_ACCOUNT_KEY: &str = "AZURE_STORAGE_ACCOUNT_KEY";
    /// az: SAS token (instead of the account key).
    pub const AZURE_STORAGE_SAS_TOKEN: &str = "AZURE_STORAGE_SAS_TOKEN";
}

/// `part / total` in percent, rounded down and clamped to 0..=100, so 100 means
/// everything (the `cachedPercent` and `JobRun.percent` convention). A zero
/// total counts as fully cached (there is nothing to fetch).
///
/// ```
/// assert_eq!(strata_crds::percent_floor(999, 1000), 99);
/// assert_eq!(strata_crds::percent_floor(1000, 1000), 100);
/// assert_eq!(strata_crds::percent_floor(0, 0), 100);
/// ```
pub fn percent_floor(part: i64, total: i64) -> i32 {
    if total <= 0 {
        return 100;
    }
    let part = part.clamp(0, total) as i128;
    (part * 100 / total as i128) as i32
}

/// Every Strata CRD, in a stable order (the order `crdgen` prints them).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        Dataset::crd(),
        CachePolicy::crd(),
        StrataNode::crd(),
        Migration::crd(),
    ]
}

/// The file name a CRD is written to: `<plural>.<group>.yaml`, e.g. `datasets.strata.dev.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// The committed YAML for one CRD: a header saying how it was made, then the CRD.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String> {
    let body = serde_yaml::to_string(crd).map_err(|source| Error::Yaml {
        what: crd_file_name(crd),
        source,
    })?;
    Ok(format!(
        "# Generated by `cargo run -p strata-crds --bin crdgen`; do not edit.\n{body}"
    ))
}
