//! `CachePolicy`: what stays hot, what is pinned, what is preloaded and when.

use std::num::NonZeroU32;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::dataset::{JobRun, object_name};
use crate::duration::DURATION_PATTERN;
use crate::quantity::{byte_count_rule, deserialize_int_or_string, quantity_bytes};
use crate::schedule::SCHEDULE_PATTERN;
use crate::validation::{
    FieldErrors, MAX_RULES, MSG_BLOCK_SIZE, MSG_DURATION, MSG_POSITIVE_DURATION, MSG_QUOTA,
    MSG_REPLICAS, MSG_SCHEDULE, cel_matches, check_duration, check_globs,
};
use crate::{Error, FieldErrorKind, Result, Schedule, parse_duration};

/// CEL: a positive duration such as `5m` (`0s` refused).
fn positive_duration_rule() -> String {
    format!(
        "{} && !self.matches('^0+[smhd]$')",
        cel_matches(DURATION_PATTERN)
    )
}

const QUOTA_RULE: &str = concat!(
    byte_count_rule!(),
    " && quantity(string(self)).isGreaterThan(quantity('0'))"
);
const BLOCK_SIZE_RULE: &str = concat!(
    byte_count_rule!(),
    " && quantity(string(self)).asInteger() in [1048576, 2097152, 4194304, 8388608, 16777216, 33554432, 67108864]"
);
const REPLICAS_RULE: &str = "type(self) == int ? self >= 1 : self == 'All'";

/// Smallest and largest block size, and the default.
pub const MIN_BLOCK_SIZE: u64 = 1 << 20;
/// Largest block size (64Mi).
pub const MAX_BLOCK_SIZE: u64 = 64 << 20;
/// Default block size (4Mi).
pub const DEFAULT_BLOCK_SIZE: u64 = 4 << 20;
/// Default metadata (list/stat) cache TTL.
pub const DEFAULT_METADATA_TTL: &str = "1m";
/// Default preload concurrency (requests in flight per job): over a 50 ms round
/// trip a preload needs dozens in flight to fill the link.
pub const DEFAULT_PRELOAD_CONCURRENCY: i32 = 64;

/// Pins keep blocks on the node's disk: a policy with pins must use the SSD tier.
const PIN_NEEDS_SSD_RULE: &str =
    "!has(self.pin) || size(self.pin) == 0 || !has(self.tiers) || 'SSD' in self.tiers";
const MSG_PIN_NEEDS_SSD: &str = "pins keep blocks on the node's disk, and tiers leaves out SSD: add SSD to spec.tiers or remove spec.pin";

/// Ephemeral names where the SSD tier lives: without SSD it would mean nothing.
const EPHEMERAL_NEEDS_SSD_RULE: &str = "!has(self.persistence) || self.persistence != 'Ephemeral' || !has(self.tiers) || 'SSD' in self.tiers";
const MSG_EPHEMERAL_NEEDS_SSD: &str = "persistence Ephemeral places the SSD tier on the node's ephemeral disk, and tiers leaves out SSD: add SSD to spec.tiers or remove spec.persistence (a memory-only cache keeps nothing on disk anyway)";

/// A CachePolicy says how the datasets it applies to are cached: their share
/// of each node's cache, the tiers and eviction policy, block size, replicas
/// across nodes, TTLs, what is pinned and what is preloaded when.
// Each printcolumn(...) repeats `type_ = ...`; clippy reads that as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "strata.dev",
    version = "v1alpha1",
    kind = "CachePolicy",
    plural = "cachepolicies",
    singular = "cachepolicy",
    shortname = "scpol",
    category = "strata",
    namespaced,
    status = "CachePolicyStatus",
    derive = "PartialEq",
    doc = "A CachePolicy says how the datasets it applies to are cached: quota per node, tiers, eviction, block size, replicas, TTLs, pins and preloads.",
    printcolumn(
        name = "Datasets",
        type_ = "integer",
        json_path = ".status.datasetCount",
        description = "Number of datasets this policy applies to"
    ),
    printcolumn(
        name = "Quota",
        type_ = "string",
        json_path = ".spec.quota",
        description = "Each dataset's share of each node's cache"
    ),
    printcolumn(
        name = "Eviction",
        type_ = "string",
        json_path = ".spec.eviction",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(PIN_NEEDS_SSD_RULE).message(MSG_PIN_NEEDS_SSD).field_path(".pin"))]
#[x_kube(validation = Rule::new(EPHEMERAL_NEEDS_SSD_RULE).message(MSG_EPHEMERAL_NEEDS_SSD).field_path(".persistence"))]
pub struct CachePolicySpec {
    /// Datasets in this namespace whose labels match get this policy (a
    /// Dataset's own policyRef wins over any selector). `{}` matches every
    /// dataset in the namespace; unset matches none, so only datasets that name
    /// this policy in policyRef use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_selector: Option<LabelSelector>,

    /// Each dataset's share of each tier of each node's cache, such as `200Gi`:
    /// at most this much of the dataset on the node's disk and at most this
    /// much in its memory. A positive whole number of bytes. When a dataset
    /// reaches its quota in a tier, that tier evicts the dataset's own blocks
    /// (by the policy's eviction), never another dataset's.
    #[serde(deserialize_with = "deserialize_int_or_string")]
    #[schemars(schema_with = "crate::schema::quantity")]
    #[x_kube(validation = Rule::new(QUOTA_RULE).message(MSG_QUOTA))]
    pub quota: Quantity,

    /// The node tiers the datasets' blocks may live in: Memory, SSD or both
    /// (default). With both, fetched blocks are written to the node's disk
    /// and blocks read twice from it are kept in memory too (as are blocks
    /// the disk has no room for). [Memory] alone writes nothing of the
    /// dataset to disk (and so serves no file in FUSE passthrough); [SSD]
    /// alone never holds its blocks in memory. Node capacity of each tier is
    /// set at install time.
    #[serde(default = "default_tiers")]
    #[schemars(length(min = 1, max = 2))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub tiers: Vec<Tier>,

    /// Where the SSD tier of the datasets is kept. Persistent (default): the
    /// node's cache directory, kept across agent restarts. Ephemeral: the
    /// node's ephemeral disk tier (an emptyDir of the agent's pod, sized by
    /// the chart's `node.cache.ephemeral.size`), emptied when the agent
    /// starts and when the dataset goes: for burst compute whose nodes come
    /// and go. A node without an ephemeral tier refuses such a dataset. A
    /// dataset with a WriteBack source refuses an Ephemeral policy (its
    /// unsent writes would go with the node).
    #[serde(default)]
    pub persistence: Persistence,

    /// Which block to drop when a tier is full: LRU (least recently used),
    /// S3FIFO (scan-resistant: one-pass reads do not flush the hot set) or ARC
    /// (adaptive replacement). Default S3FIFO.
    #[serde(default)]
    pub eviction: Eviction,

    /// Size of a cache block: the unit of fetching, caching and eviction. A
    /// power of two between 1Mi and 64Mi. Default 4Mi.
    #[serde(
        default = "default_block_size",
        deserialize_with = "deserialize_int_or_string"
    )]
    #[schemars(schema_with = "crate::schema::quantity")]
    #[x_kube(validation = Rule::new(BLOCK_SIZE_RULE).message(MSG_BLOCK_SIZE))]
    pub block_size: Quantity,

    /// Owners of each block across the cluster's nodes: a whole number >= 1,
    /// or "All" for every node. A node that misses a block asks its owners
    /// (so a block crosses from the source once for the whole cluster); a
    /// block an owner fetched from the source is copied to the other owners,
    /// so with 2 or more the loss of a node costs no new source fetch. The
    /// node that read a block keeps a copy too, under its own quota. Pin
    /// rules without their own `replicas` use this. Default 1.
    #[serde(default = "default_replicas")]
    #[schemars(schema_with = "crate::schema::replicas")]
    #[x_kube(validation = Rule::new(REPLICAS_RULE).message(MSG_REPLICAS))]
    pub replicas: IntOrString,

    /// The metadata (list and stat) cache.
    #[serde(default)]
    pub metadata: MetadataCachePolicy,

    /// Drop cached data nobody has read for this long, such as `30d`. Unset
    /// keeps data until it is evicted for room. Format: a whole number followed
    /// by s, m, h or d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new(positive_duration_rule()).message(MSG_POSITIVE_DURATION))]
    pub ttl: Option<String>,

    /// Paths to keep cached on every node: the blocks of files a rule matches
    /// are never evicted, and each node fetches them as they appear. Every
    /// node re-evaluates the rules once per `metadata.ttl` (a new file cannot
    /// be seen sooner): files aged out of a `modifiedWithin` window become
    /// evictable, new matching files are fetched. A rule's Job fetches at
    /// once, with progress. Pins keep blocks on the disk tier, so `tiers` must
    /// include SSD. At most 16 rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub pin: Vec<PinRule>,

    /// Paths to fetch into the cache ahead of reads, once or on a schedule.
    /// At most 16 rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub preload: Vec<PreloadRule>,
}

fn default_tiers() -> Vec<Tier> {
    vec![Tier::Memory, Tier::Ssd]
}

fn default_block_size() -> Quantity {
    Quantity("4Mi".into())
}

fn default_replicas() -> IntOrString {
    IntOrString::Int(1)
}

/// A node-local cache tier.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    /// RAM on the node.
    Memory,
    /// A local disk (the node's SSD path).
    #[serde(rename = "SSD")]
    Ssd,
}

/// Where a policy's disk tier lives.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Persistence {
    /// The node's cache directory: kept across agent restarts.
    #[default]
    Persistent,
    /// The node's ephemeral disk tier: gone with the agent's pod, emptied at
    /// each agent start and when the dataset goes.
    Ephemeral,
}

/// Eviction policy of the block cache.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Eviction {
    /// Least recently used.
    #[serde(rename = "LRU")]
    Lru,
    /// S3-FIFO: a small probationary queue in front of a main queue; scan-resistant.
    #[default]
    #[serde(rename = "S3FIFO")]
    S3Fifo,
    /// Adaptive replacement cache: balances recency and frequency.
    #[serde(rename = "ARC")]
    Arc,
}

/// Settings of the metadata (list and stat) cache.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MetadataCachePolicy {
    /// How long a listing or stat result (also "not found") is served from the
    /// cache before it is refreshed, such as `5m`. `0s` disables the metadata
    /// cache. Default 1m. Each node holds the listings of the directories read
    /// within one TTL, about 85 bytes per entry (docs/agent.md, "Memory per cached
    /// entry").
    #[serde(default = "default_metadata_ttl")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new(cel_matches(DURATION_PATTERN)).message(MSG_DURATION))]
    pub ttl: String,
}

fn default_metadata_ttl() -> String {
    DEFAULT_METADATA_TTL.into()
}

impl Default for MetadataCachePolicy {
    fn default() -> Self {
        Self {
            ttl: default_metadata_ttl(),
        }
    }
}

/// Keep matching files cached.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PinRule {
    /// Globs relative to the dataset root, such as `/train/2026-11-*/**`
    /// (`*` within a path segment, `**` across segments, `?`, `[a-z]`, `{a,b}`).
    /// Must start with `/`; `..` segments are refused. 1 to 32 globs.
    #[schemars(schema_with = "crate::schema::path_globs")]
    pub paths: Vec<String>,

    /// Only pin files modified within this long before now, such as `14d`
    /// ("keep the last 14 days"): a window that rolls with the clock, so a file
    /// is unpinned once it is older and new files are pinned as they appear.
    /// Unset pins every matching file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new(positive_duration_rule()).message(MSG_POSITIVE_DURATION))]
    pub modified_within: Option<String>,

    /// Where the rule's pin Job runs: "All" runs it on every node (each node
    /// fetches the pinned files, from their owners in the cluster, and keeps
    /// them), a number on one node. Every node re-evaluates the rule at each
    /// metadata TTL and fetches what it pins, so each node ends up holding
    /// the pinned files either way. Unset uses the policy's replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::replicas")]
    #[x_kube(validation = Rule::new(REPLICAS_RULE).message(MSG_REPLICAS))]
    pub replicas: Option<IntOrString>,
}

/// Fetch matching files into the cache ahead of reads.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PreloadRule {
    /// Globs relative to the dataset root, such as `/labels/**`. Must start
    /// with `/`; `..` segments are refused. 1 to 32 globs.
    #[schemars(schema_with = "crate::schema::path_globs")]
    pub paths: Vec<String>,

    /// When to run, in cron syntax (5 fields: minute hour day-of-month month
    /// day-of-week, e.g. "0 2 * * *"; or @hourly, @daily, @weekly, @monthly,
    /// @yearly). Unset runs once, when the policy is applied or changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    #[x_kube(validation = Rule::new(cel_matches(SCHEDULE_PATTERN)).message(MSG_SCHEDULE))]
    pub schedule: Option<String>,

    /// Requests (each up to 16 MiB of adjacent blocks) each agent keeps in flight for
    /// this preload, over all its files, 1 to 64. Default 64: over a high-latency link a preload needs dozens
    /// in flight to fill it; lower it to spare the source.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 64))]
    pub concurrency: i32,
}

fn default_concurrency() -> i32 {
    DEFAULT_PRELOAD_CONCURRENCY
}

/// What a CachePolicy applies to and what its jobs did, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CachePolicyStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Standard conditions: Ready (the policy is valid and applied).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Names of the datasets (in this namespace) this policy applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datasets: Vec<String>,

    /// len(datasets), for the Datasets column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_count: Option<i32>,

    /// The latest run of each preload rule per dataset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_preloads: Vec<JobRun>,

    /// The latest run of each pin rule per dataset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_pins: Vec<JobRun>,
}

/// Copies of a block across nodes, parsed from `replicas`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replicas {
    /// This many nodes hold each block.
    Count(NonZeroU32),
    /// Every node holds each block.
    All,
}

impl Replicas {
    /// Parses an int-or-string `replicas` value.
    ///
    /// ```
    /// use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    /// use strata_crds::Replicas;
    /// assert_eq!(Replicas::parse(&IntOrString::String("All".into())).unwrap(), Replicas::All);
    /// assert!(Replicas::parse(&IntOrString::Int(0)).is_err());
    /// ```
    pub fn parse(value: &IntOrString) -> Result<Self> {
        match value {
            IntOrString::Int(n) => u32::try_from(*n)
                .ok()
                .and_then(NonZeroU32::new)
                .map(Replicas::Count)
                .ok_or_else(|| Error::Replicas {
                    value: n.to_string(),
                }),
            IntOrString::String(s) if s == "All" => Ok(Replicas::All),
            IntOrString::String(s) => Err(Error::Replicas {
                value: format!("{s:?}"),
            }),
        }
    }
}

impl CachePolicySpec {
    /// `quota` in bytes.
    pub fn quota_bytes(&self) -> Result<u64> {
        quantity_bytes(&self.quota)
    }

    /// `blockSize` in bytes (checked: a power of two in [1Mi, 64Mi]).
    pub fn block_size_bytes(&self) -> Result<u64> {
        let bytes = quantity_bytes(&self.block_size)?;
        if bytes.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bytes) {
            Ok(bytes)
        } else {
            Err(Error::Quantity {
                value: self.block_size.0.clone(),
                reason: "a block size must be a power of two between 1Mi and 64Mi".into(),
            })
        }
    }

    /// `replicas`, parsed.
    pub fn replicas(&self) -> Result<Replicas> {
        Replicas::parse(&self.replicas)
    }

    /// `metadata.ttl`, parsed (zero disables the metadata cache).
    pub fn metadata_ttl(&self) -> Result<Duration> {
        parse_duration(&self.metadata.ttl)
    }

    /// `ttl`, parsed; `None` keeps data until evicted for room.
    pub fn data_ttl(&self) -> Result<Option<Duration>> {
        self.ttl.as_deref().map(parse_duration).transpose()
    }

    /// Every rule of the CRD, checked in Rust. Field paths start at `spec`.
    pub fn field_errors(&self) -> Vec<crate::FieldError> {
        let mut errors = FieldErrors::default();
        if !quantity_bytes(&self.quota).is_ok_and(|b| b > 0) {
            errors.push("spec.quota", FieldErrorKind::Invalid, MSG_QUOTA);
        }
        if self.tiers.is_empty() {
            errors.push(
                "spec.tiers",
                FieldErrorKind::Required,
                "tiers must list at least one of Memory, SSD",
            );
        }
        for (i, tier) in self.tiers.iter().enumerate() {
            if self.tiers[..i].contains(tier) {
                errors.push(
                    format!("spec.tiers[{i}]"),
                    FieldErrorKind::Duplicate,
                    "tiers must not repeat a tier",
                );
            }
        }
        if self.block_size_bytes().is_err() {
            errors.push("spec.blockSize", FieldErrorKind::Invalid, MSG_BLOCK_SIZE);
        }
        if self.replicas().is_err() {
            errors.push("spec.replicas", FieldErrorKind::Invalid, MSG_REPLICAS);
        }
        check_duration(&mut errors, "spec.metadata.ttl", &self.metadata.ttl, false);
        if let Some(ttl) = &self.ttl {
            check_duration(&mut errors, "spec.ttl", ttl, true);
        }
        if let Some(selector) = &self.dataset_selector {
            check_selector(&mut errors, "spec.datasetSelector", selector);
        }
        for (list, len) in [
            ("spec.pin", self.pin.len()),
            ("spec.preload", self.preload.len()),
        ] {
            if len > MAX_RULES {
                errors.push(
                    list,
                    FieldErrorKind::Invalid,
                    format!("at most {MAX_RULES} rules are allowed"),
                );
            }
        }
        if !self.pin.is_empty() && !self.tiers.contains(&Tier::Ssd) {
            errors.push("spec.pin", FieldErrorKind::Invalid, MSG_PIN_NEEDS_SSD);
        }
        if self.persistence == Persistence::Ephemeral && !self.tiers.contains(&Tier::Ssd) {
            errors.push(
                "spec.persistence",
                FieldErrorKind::Invalid,
                MSG_EPHEMERAL_NEEDS_SSD,
            );
        }
        for (i, rule) in self.pin.iter().enumerate() {
            let at = format!("spec.pin[{i}]");
            check_globs(&mut errors, &format!("{at}.paths"), &rule.paths);
            if let Some(within) = &rule.modified_within {
                check_duration(&mut errors, &format!("{at}.modifiedWithin"), within, true);
            }
            if let Some(replicas) = &rule.replicas
                && Replicas::parse(replicas).is_err()
            {
                errors.push(
                    format!("{at}.replicas"),
                    FieldErrorKind::Invalid,
                    MSG_REPLICAS,
                );
            }
        }
        for (i, rule) in self.preload.iter().enumerate() {
            let at = format!("spec.preload[{i}]");
            check_globs(&mut errors, &format!("{at}.paths"), &rule.paths);
            if let Some(schedule) = &rule.schedule
                && let Err(e) = Schedule::parse(schedule)
            {
                errors.push(
                    format!("{at}.schedule"),
                    FieldErrorKind::Invalid,
                    format!("{MSG_SCHEDULE} ({e})"),
                );
            }
            if !(1..=64).contains(&rule.concurrency) {
                errors.push(
                    format!("{at}.concurrency"),
                    FieldErrorKind::Invalid,
                    "concurrency must be between 1 and 64",
                );
            }
        }
        errors.0
    }
}

/// The label selector rules the API server applies to built-in selectors.
fn check_selector(errors: &mut FieldErrors, at: &str, selector: &LabelSelector) {
    for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
        let field = format!("{at}.matchExpressions[{i}]");
        let has_values = expr.values.as_ref().is_some_and(|v| !v.is_empty());
        match expr.operator.as_str() {
            "In" | "NotIn" if !has_values => errors.push(
                format!("{field}.values"),
                FieldErrorKind::Required,
                "values must be non-empty for operator In or NotIn",
            ),
            "Exists" | "DoesNotExist" if has_values => errors.push(
                format!("{field}.values"),
                FieldErrorKind::Forbidden,
                "values must be empty for operator Exists or DoesNotExist",
            ),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            _ => errors.push(
                format!("{field}.operator"),
                FieldErrorKind::NotSupported,
                "operator must be one of In, NotIn, Exists, DoesNotExist",
            ),
        }
    }
}

impl CachePolicy {
    /// Checks the spec against every rule of the CRD; the error lists each
    /// problem with its field path, e.g. `spec.preload[0].schedule`.
    pub fn validate(&self) -> Result<()> {
        FieldErrors(self.spec.field_errors()).into_result("CachePolicy", object_name(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(spec: serde_json::Value) -> CachePolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "strata.dev/v1alpha1",
            "kind": "CachePolicy",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": spec,
        }))
        .expect("deserializes")
    }

    #[test]
    fn defaults_and_typed_accessors() {
        let p = policy(serde_json::json!({"quota": "200Gi"}));
        assert_eq!(p.spec.quota_bytes().unwrap(), 200 << 30);
        assert_eq!(p.spec.block_size_bytes().unwrap(), DEFAULT_BLOCK_SIZE);
        assert_eq!(
            p.spec.replicas().unwrap(),
            Replicas::Count(NonZeroU32::new(1).unwrap())
        );
        assert_eq!(p.spec.tiers, [Tier::Memory, Tier::Ssd]);
        assert_eq!(p.spec.eviction, Eviction::S3Fifo);
        assert_eq!(p.spec.metadata_ttl().unwrap(), Duration::from_secs(60));
        assert_eq!(p.spec.data_ttl().unwrap(), None);
        p.validate().unwrap();
    }

    #[test]
    fn integer_quantities_as_the_api_server_stores_them() {
        // `quota: 1073741824` in YAML stays an integer in the stored object.
        let p = policy(serde_json::json!({"quota": 1073741824u64, "blockSize": 2097152}));
        assert_eq!(p.spec.quota_bytes().unwrap(), 1 << 30);
        assert_eq!(p.spec.block_size_bytes().unwrap(), 2 << 20);
        // And it serializes back as a string quantity, which the schema also accepts.
        let back = serde_json::to_value(&p).unwrap();
        assert_eq!(back["spec"]["quota"], "1073741824");
    }

    #[test]
    fn replicas_all_and_counts() {
        let p = policy(serde_json::json!({"quota": "1Gi", "replicas": "All",
            "pin": [{"paths": ["/a/**"], "replicas": 3}]}));
        assert_eq!(p.spec.replicas().unwrap(), Replicas::All);
        let pin = Replicas::parse(p.spec.pin[0].replicas.as_ref().unwrap()).unwrap();
        assert_eq!(pin, Replicas::Count(NonZeroU32::new(3).unwrap()));
        for bad in [
            IntOrString::Int(0),
            IntOrString::Int(-1),
            IntOrString::String("all".into()),
            IntOrString::String("3".into()),
        ] {
            assert!(Replicas::parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn validate_reports_every_problem_with_its_path() {
        let p = policy(serde_json::json!({
            "quota": "0",
            "blockSize": "3Mi",
            "replicas": 0,
            "tiers": ["SSD", "SSD"],
            "metadata": {"ttl": "5 minutes"},
            "ttl": "0d",
            "datasetSelector": {"matchExpressions": [{"key": "team", "operator": "In"}]},
            "pin": [{"paths": ["/ok/**", "rel/**", "/a/../../b"], "modifiedWithin": "2w", "replicas": "every"}],
            "preload": [{"paths": [], "schedule": "0 2 * *", "concurrency": 65}],
        }));
        let Err(Error::Invalid { kind, name, errors }) = p.validate() else {
            panic!("expected Error::Invalid");
        };
        assert_eq!((kind, name.as_str()), ("CachePolicy", "ns/p"));
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.quota",
                "spec.tiers[1]",
                "spec.blockSize",
                "spec.replicas",
                "spec.metadata.ttl",
                "spec.ttl",
                "spec.datasetSelector.matchExpressions[0].values",
                "spec.pin[0].paths[1]",
                "spec.pin[0].paths[2]",
                "spec.pin[0].modifiedWithin",
                "spec.pin[0].replicas",
                "spec.preload[0].paths",
                "spec.preload[0].schedule",
                "spec.preload[0].concurrency",
            ]
        );
        let text = Error::Invalid { kind, name, errors }.to_string();
        assert!(
            text.starts_with(
                "CachePolicy ns/p is invalid: spec.quota: Invalid value: quota must be a positive"
            ),
            "{text}"
        );
    }
}
