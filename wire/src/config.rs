//! Dataset configuration: what the operator (or a YAML/JSON file) tells the agent.
//!
//! Field names are camelCase in YAML/JSON. Sizes accept plain byte counts or strings
//! like `512Mi`, `4Gi`, `10G`; durations accept seconds or strings like `30s`, `5m`, `30d`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Result, WireError as Error};

/// Default block size: 4 MiB.
pub const DEFAULT_BLOCK_SIZE: u64 = 4 * 1024 * 1024;
/// Default metadata TTL.
pub const DEFAULT_METADATA_TTL: Duration = Duration::from_secs(60);

/// One dataset: several sources forming one namespace, plus its cache settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatasetConfig {
    /// Kubernetes namespace of the Dataset ("default" for standalone mounts).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Dataset name.
    pub name: String,
    /// UID of the Kubernetes Dataset (set by the operator), echoed in the StrataNode
    /// report so that the operator never counts a report about an earlier dataset of
    /// the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The CachePolicy that applies to the dataset (set by the operator). A preload/pin
    /// Job's credential is honoured only for datasets under a live policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The sources, each visible under its `mountPath`.
    pub sources: Vec<SourceConfig>,
    /// Cache settings for this dataset.
    #[serde(default)]
    pub cache: CacheSettings,
    /// Copies of a source to another store the operator runs (its Migration resources):
    /// a migration Job asks an agent to run one by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migrations: Vec<MigrationConfig>,
}

/// A copy of a path of one of the dataset's sources to another store (a Migration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MigrationConfig {
    /// The Migration's name.
    pub name: String,
    /// The name of the dataset's source to copy from.
    pub source: String,
    /// The path under the source to copy ("/" for all of it).
    #[serde(default = "default_mount_path")]
    pub path: String,
    /// Objects copied at once.
    #[serde(default = "default_migration_concurrency")]
    pub concurrency: usize,
    /// Where to copy to: a store as a source is given (its `name` and `mountPath` unused).
    pub target: SourceConfig,
}

fn default_migration_concurrency() -> usize {
    16
}

fn default_namespace() -> String {
    "default".to_string()
}

/// One source (bucket prefix, HTTP base URL or local directory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceConfig {
    /// Name, unique within the dataset; appears in errors and metric labels.
    pub name: String,
    /// `s3://bucket/prefix/`, `gs://bucket/prefix/`, `az://container/prefix/`,
    /// `http(s)://host/base/`, `file:///abs/dir` or a plain absolute path.
    pub uri: String,
    /// Where the source appears in the dataset namespace ("/" by default).
    #[serde(default = "default_mount_path")]
    pub mount_path: String,
    /// S3-compatible endpoint (e.g. `http://127.0.0.1:9000`); `http://` enables plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region (S3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Explicit credentials; absent means "from the environment" (AWS_*, GOOGLE_*, AZURE_*).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
    /// How writes to the source's paths are handled (read-only by default).
    #[serde(default, skip_serializing_if = "WriteMode::is_read_only")]
    pub write_mode: WriteMode,
    /// Extra object_store configuration keys, e.g. `virtual_hosted_style_request: "true"`,
    /// `skip_signature: "true"`, `allow_http: "true"`, `timeout: "30s"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// Most requests in flight towards this source at once (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<usize>,
    /// Retries per request on transient errors (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<usize>,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            name: String::new(),
            uri: String::new(),
            mount_path: default_mount_path(),
            endpoint: None,
            region: None,
            credentials: None,
            write_mode: WriteMode::ReadOnly,
            options: BTreeMap::new(),
            max_concurrency: None,
            max_retries: None,
        }
    }
}

fn default_mount_path() -> String {
    "/".to_string()
}

/// How a source takes writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteMode {
    /// Every write is refused (EROFS).
    #[default]
    ReadOnly,
    /// Writes land in the node's journal; `close` and `fsync` return once they are
    /// durable there, and uploads run in the background.
    WriteBack,
    /// `close` and `fsync` return once the source has the object.
    WriteThrough,
}

impl WriteMode {
    /// True for [`WriteMode::ReadOnly`].
    pub fn is_read_only(&self) -> bool {
        *self == WriteMode::ReadOnly
    }
}

/// Explicit credentials. `Debug` and `Display` never show the secrets.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Credentials {
    /// S3 access key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// S3 secret access key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// S3 session token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    /// GCS service account key (JSON text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_key: Option<String>,
    /// Azure storage account name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_name: Option<String>,
    /// Azure storage account key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_key: Option<String>,
    /// Azure SAS token or HTTP bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |o: &Option<String>| if o.is_some() { "<redacted>" } else { "-" };
        write!(
            f,
            "Credentials {{ accessKeyId: {}, secretAccessKey: {}, sessionToken: {}, \
             serviceAccountKey: {}, accountName: {}, accountKey: {}, token: {} }}",
            // The key id is not a secret, but it still identifies an account: show a prefix only.
            self.access_key_id
                .as_deref()
                .map(|k| format!("{}…", k.chars().take(4).collect::<String>()))
                .unwrap_or_else(|| "-".into()),
            shown(&self.secret_access_key),
            shown(&self.session_token),
            shown(&self.service_account_key),
            self.account_name.as_deref().unwrap_or("-"),
            shown(&self.account_key),
            shown(&self.token),
        )
    }
}

/// Which eviction policy a dataset's cache uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvictionKind {
    /// Least recently used.
    #[serde(rename = "LRU", alias = "lru", alias = "Lru")]
    Lru,
    /// S3-FIFO: scan resistant (a one-time scan does not flush the hot set).
    #[default]
    #[serde(rename = "S3FIFO", alias = "s3fifo", alias = "S3Fifo")]
    S3Fifo,
    /// ARC: adapts between recency and frequency from the misses its ghost lists remember.
    #[serde(rename = "ARC", alias = "arc", alias = "Arc")]
    Arc,
}

/// Cache settings of one dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheSettings {
    /// Block size in bytes (default 4 MiB).
    #[serde(default = "default_block_size", with = "size_serde")]
    pub block_size: u64,
    /// How long list/head results are trusted (default 60s).
    #[serde(default = "default_metadata_ttl", with = "duration_serde")]
    pub metadata_ttl: Duration,
    /// This dataset's share of the node's disk tier in bytes; `None` = no own limit
    /// (only the node's disk size applies).
    #[serde(
        default,
        with = "opt_size_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub quota: Option<u64>,
    /// Eviction policy.
    #[serde(default)]
    pub eviction: EvictionKind,
    /// Pin rules: the cached blocks of files they match are never evicted, and the agent
    /// fetches matching files as they appear (see [`PinRule`]). A plain glob string is a
    /// rule without a time window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pins: Vec<PinRule>,
    /// Drop cached blocks nobody read for this long; `None` = keep until evicted.
    #[serde(
        default,
        with = "opt_duration_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub data_ttl: Option<Duration>,
    /// The tiers this dataset's blocks may live in (default both). Without `SSD` nothing
    /// of the dataset is written to the node's disk; without `Memory` its blocks are never
    /// held in the memory tier.
    #[serde(default = "default_tiers", skip_serializing_if = "is_default_tiers")]
    pub tiers: Vec<TierKind>,
    /// Owners of each block across the cluster's agents (default 1): a miss on another
    /// node asks them, and a block one owner fetched from the source is copied to the
    /// others. `All`: every live agent owns every block (fetched from the source once,
    /// then copied to every node). Without peers this has no effect.
    #[serde(default, skip_serializing_if = "Replicas::is_default")]
    pub replicas: Replicas,
    /// The dataset's disk blocks go to the node's ephemeral disk tier (the agent's
    /// `--ephemeral-cache-dir`, an emptyDir of its pod) rather than the persistent one:
    /// emptied when the agent starts and when the dataset goes, never kept across either.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
}

/// Owners of each block: a number (at least 1) or `All`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicas {
    /// This many owners (capped at the live agents).
    Count(u32),
    /// Every live agent.
    All,
}

impl Default for Replicas {
    fn default() -> Self {
        Replicas::Count(1)
    }
}

impl Replicas {
    fn is_default(&self) -> bool {
        *self == Replicas::default()
    }
}

impl Serialize for Replicas {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Replicas::Count(n) => s.serialize_u32(*n),
            Replicas::All => s.serialize_str("All"),
        }
    }
}

impl<'de> Deserialize<'de> for Replicas {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u64),
            Text(String),
        }
        let invalid = || {
            serde::de::Error::custom(
                "replicas must be a whole number of at least 1 or \"All\" (copies of each block across nodes)",
            )
        };
        match Raw::deserialize(d)? {
            Raw::Count(n) if n >= 1 => u32::try_from(n).map(Replicas::Count).map_err(|_| invalid()),
            Raw::Text(s) if s == "All" => Ok(Replicas::All),
            _ => Err(invalid()),
        }
    }
}

/// One pin rule: the files matching `paths` (and, with `modified_within`, modified that
/// recently: a window that rolls with the clock) are kept on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PinRule {
    /// Globs over dataset paths (e.g. `/train/2026-11-*/**`).
    pub paths: Vec<String>,
    /// Only files modified within this long before now (e.g. 14 days); `None` pins every
    /// matching file. A file that ages out of the window is unpinned at the next
    /// re-evaluation.
    #[serde(
        default,
        with = "opt_duration_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub modified_within: Option<Duration>,
}

impl PinRule {
    /// A rule pinning every file that matches `paths`.
    pub fn paths(paths: impl IntoIterator<Item = impl Into<String>>) -> Self {
        PinRule {
            paths: paths.into_iter().map(Into::into).collect(),
            modified_within: None,
        }
    }

    /// "/a/** /b/*" or "/a/** modified within 14d", for messages and logs.
    pub fn describe(&self) -> String {
        let paths = self.paths.join(" ");
        match self.modified_within {
            None => paths,
            Some(w) => format!("{paths} modified within {}", humantime::format_duration(w)),
        }
    }
}

/// A glob alone is a rule without a window.
impl From<&str> for PinRule {
    fn from(glob: &str) -> Self {
        PinRule::paths([glob])
    }
}

impl<'de> Deserialize<'de> for PinRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Rule {
            paths: Vec<String>,
            #[serde(default, with = "opt_duration_serde")]
            modified_within: Option<Duration>,
        }
        // A visitor rather than an untagged enum, so a bad rule gets the field's own error
        // instead of "did not match any variant".
        struct RuleVisitor;
        impl<'de> serde::de::Visitor<'de> for RuleVisitor {
            type Value = PinRule;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a glob, or {paths: [globs], modifiedWithin: duration}")
            }
            fn visit_str<E: serde::de::Error>(self, glob: &str) -> std::result::Result<PinRule, E> {
                Ok(PinRule::paths([glob]))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<PinRule, A::Error> {
                let r = Rule::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(PinRule {
                    paths: r.paths,
                    modified_within: r.modified_within,
                })
            }
        }
        d.deserialize_any(RuleVisitor)
    }
}

/// A node-local cache tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TierKind {
    /// RAM on the node.
    Memory,
    /// The node's cache disk.
    #[serde(rename = "SSD", alias = "Ssd", alias = "ssd")]
    Ssd,
}

fn default_tiers() -> Vec<TierKind> {
    vec![TierKind::Memory, TierKind::Ssd]
}

fn is_default_tiers(tiers: &[TierKind]) -> bool {
    tiers == default_tiers().as_slice()
}

impl CacheSettings {
    /// Whether the dataset's blocks may be held in the memory tier.
    pub fn uses_memory(&self) -> bool {
        self.tiers.contains(&TierKind::Memory)
    }

    /// Whether the dataset's blocks may be written to the node's disk.
    pub fn uses_disk(&self) -> bool {
        self.tiers.contains(&TierKind::Ssd)
    }
}

fn default_block_size() -> u64 {
    DEFAULT_BLOCK_SIZE
}
/// Longest metadata TTL accepted.
pub const MAX_METADATA_TTL: Duration = Duration::from_secs(365 * 86400);

fn default_metadata_ttl() -> Duration {
    DEFAULT_METADATA_TTL
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            block_size: DEFAULT_BLOCK_SIZE,
            metadata_ttl: DEFAULT_METADATA_TTL,
            quota: None,
            eviction: EvictionKind::default(),
            pins: Vec::new(),
            data_ttl: None,
            tiers: default_tiers(),
            replicas: Replicas::default(),
            ephemeral: false,
        }
    }
}

impl DatasetConfig {
    /// Loads a dataset from a YAML or JSON file (JSON is valid YAML).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(
                path.display().to_string(),
                format!("cannot read dataset config: {e}"),
            )
        })?;
        Self::from_yaml(&text).map_err(|e| match e {
            Error::Config { field, message } => Error::Config {
                field: format!("{}: {field}", path.display()),
                message,
            },
            other => other,
        })
    }

    /// Parses a dataset from YAML or JSON text and validates it.
    pub fn from_yaml(text: &str) -> Result<Self> {
        let cfg: DatasetConfig = serde_yaml::from_str(text)
            .map_err(|e| Error::config("dataset", format!("not a valid dataset config: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks names, mount paths, block size and globs; errors name the field.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty() {
            return Err(Error::config("name", "must not be empty"));
        }
        for (field, v) in [("namespace", &self.namespace), ("name", &self.name)] {
            if v.contains('/') || v == "." || v == ".." {
                return Err(Error::config(field, format!("{v:?} must not contain '/'")));
            }
        }
        if self.sources.is_empty() {
            return Err(Error::config("sources", "at least one source is required"));
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut mounts = std::collections::BTreeSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            if s.name.is_empty() || !seen.insert(s.name.clone()) {
                return Err(Error::config(
                    format!("sources[{i}].name"),
                    format!("{:?} must be non-empty and unique", s.name),
                ));
            }
            let mp = crate::path::DatasetPath::parse(&s.mount_path)
                .map_err(|e| Error::config(format!("sources[{i}].mountPath"), e.to_string()))?;
            if !mounts.insert(mp.clone()) {
                return Err(Error::config(
                    format!("sources[{i}].mountPath"),
                    format!("{mp} is used by two sources"),
                ));
            }
            let scheme = s.uri.split("://").next().unwrap_or_default();
            if !s.write_mode.is_read_only() && matches!(scheme, "http" | "https") {
                return Err(Error::config(
                    format!("sources[{i}].writeMode"),
                    "http(s) sources cannot be written; remove writeMode or use an object store",
                ));
            }
            if s.write_mode == WriteMode::WriteBack && self.cache.ephemeral {
                return Err(Error::config(
                    format!("sources[{i}].writeMode"),
                    "WriteBack keeps writes on the node until they are uploaded, and this \
                     dataset's cache is ephemeral (its node may go at any time); use \
                     WriteThrough, or a policy with persistence Persistent",
                ));
            }
        }
        for (i, m) in self.migrations.iter().enumerate() {
            let field = |f: &str| format!("migrations[{i}].{f}");
            if !self.sources.iter().any(|s| s.name == m.source) {
                return Err(Error::config(
                    field("source"),
                    format!("{:?} is not a source of the dataset", m.source),
                ));
            }
            crate::path::DatasetPath::parse(&m.path)
                .map_err(|e| Error::config(field("path"), e.to_string()))?;
            if !(1..=64).contains(&m.concurrency) {
                return Err(Error::config(
                    field("concurrency"),
                    format!(
                        "{} is out of range: give 1 to 64 objects at once",
                        m.concurrency
                    ),
                ));
            }
        }
        for a in &mounts {
            for b in &mounts {
                if a != b && b.starts_with(a) {
                    return Err(Error::config(
                        "sources[].mountPath",
                        format!(
                            "{b} is inside {a}; mount paths must not nest (give each source its own directory)"
                        ),
                    ));
                }
            }
        }
        if self.cache.metadata_ttl > MAX_METADATA_TTL {
            return Err(Error::config(
                "cache.metadataTtl",
                format!(
                    "{}s is longer than the 365 days allowed; for data that never changes use 365d",
                    self.cache.metadata_ttl.as_secs()
                ),
            ));
        }
        let bs = self.cache.block_size;
        if !(64 * 1024..=256 * 1024 * 1024).contains(&bs) || !bs.is_multiple_of(4096) {
            return Err(Error::config(
                "cache.blockSize",
                format!("{bs} must be a multiple of 4096 between 64Ki and 256Mi"),
            ));
        }
        for (i, rule) in self.cache.pins.iter().enumerate() {
            if rule.paths.is_empty() {
                return Err(Error::config(
                    format!("cache.pins[{i}].paths"),
                    "list at least one glob, such as /train/**",
                ));
            }
            crate::glob::PathGlobs::new(&rule.paths).map_err(|e| match e {
                Error::Config { field, message } => {
                    Error::config(format!("cache.pins[{i}].{field}"), message)
                }
                other => other,
            })?;
        }
        let tiers = &self.cache.tiers;
        if tiers.is_empty() || (tiers.len() == 2 && tiers[0] == tiers[1]) || tiers.len() > 2 {
            return Err(Error::config(
                "cache.tiers",
                "list Memory, SSD or both, each at most once",
            ));
        }
        if !self.cache.pins.is_empty() && !self.cache.uses_disk() {
            return Err(Error::config(
                "cache.pins",
                "pins keep blocks on the node's disk, and cache.tiers leaves out SSD: add SSD or remove the pins",
            ));
        }
        Ok(())
    }
}

/// A duration as agents write it in configs and reports (e.g. `14days`, `1h 30m`): what
/// [`parse_duration`] reads back.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Parses a byte size, exactly (integers only, no float): the one size grammar of Strata.
/// It is the Kubernetes quantity (`4Mi`, `200Gi`, `1500M`, `1e9`, `+7`; `1.5Gi` is
/// 1610612736, `0.5` is refused) as a whole number of bytes up to 2^63-1, which is all
/// the CRDs accept ([`parse_quantity`]), plus the spellings agents have always read in
/// their config and flags: a `B` after the unit or alone (`512MiB`, `100MB`, `10B`),
/// `K` for `k`, and a blank before the unit (`1 Gi`).
pub fn parse_size(s: &str) -> Result<u64> {
    size_bytes(s, Spelling::Agent).map_err(|reason| {
        Error::config(
            "size",
            format!("{s:?}: {reason} (use e.g. 512Mi, 4Gi, 100M)"),
        )
    })
}

/// A byte size in the Kubernetes quantity spelling alone: [`parse_size`] without the
/// agents' extra spellings, as the CRDs' CEL rule (`isQuantity(...)` and
/// `quantity(...).isInteger()`) accepts it. The error's message is the reason alone:
/// the caller names the field and the value.
pub fn parse_quantity(s: &str) -> Result<u64> {
    size_bytes(s, Spelling::Kubernetes).map_err(|reason| Error::config("size", reason))
}

/// Which spellings of a size are read besides the Kubernetes quantity.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Spelling {
    /// `resource.Quantity`: SI and binary suffixes, exponents, no blank inside.
    Kubernetes,
    /// Also the agents' old spellings: a blank before the unit, `K`, a trailing `B`.
    Agent,
}

/// The value of `value` in bytes, or why it is not a byte count.
fn size_bytes(value: &str, spelling: Spelling) -> std::result::Result<u64, &'static str> {
    // Blanks around the value are dropped in both spellings (the CRDs' Rust twin always
    // did; the API server refuses them before any twin sees the value).
    let s = value.trim();
    if s.is_empty() {
        return Err("it is empty");
    }
    let (negative, s) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    // Split the number (digits with at most one '.') from the suffix.
    let number_len = s
        .bytes()
        .position(|b| !(b.is_ascii_digit() || b == b'.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_len);
    let suffix = match spelling {
        Spelling::Kubernetes => suffix,
        Spelling::Agent => agent_suffix(suffix.trim_start()),
    };
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
        return Err("it must start with a number");
    }
    // Value = digits * 10^(exp10) * 2^(exp2).
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 38 {
        return Err("the number has too many digits");
    }
    let mantissa: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| "the number does not parse")?
    };
    let mut exp10: i64 = -(frac_part.len() as i64);
    let mut exp2: u32 = 0;
    match suffix {
        "" => {}
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        _ if suffix.starts_with(['e', 'E']) => {
            let exp: i64 = suffix[1..]
                .parse()
                .map_err(|_| "the exponent after 'e' must be a whole number")?;
            if exp.abs() > 40 {
                return Err("the exponent is out of range");
            }
            exp10 += exp;
        }
        _ => {
            return Err("unknown suffix; use Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E or none");
        }
    }
    if mantissa == 0 {
        return Ok(0);
    }
    if negative {
        return Err("a byte count cannot be negative");
    }
    let too_big = "it is larger than 2^63-1 bytes";
    let mut bytes = mantissa;
    if exp10 >= 0 {
        let scale = 10u128.checked_pow(exp10 as u32).ok_or(too_big)?;
        bytes = bytes.checked_mul(scale).ok_or(too_big)?;
    }
    bytes = bytes.checked_mul(1u128 << exp2).ok_or(too_big)?;
    if exp10 < 0 {
        let scale = 10u128
            .checked_pow((-exp10) as u32)
            .ok_or("it is not a whole number of bytes")?;
        if !bytes.is_multiple_of(scale) {
            return Err("it is not a whole number of bytes");
        }
        bytes /= scale;
    }
    // Kubernetes quantities stop at 2^63-1; so does the API server's CEL `isInteger()`.
    if bytes > i64::MAX as u128 {
        return Err(too_big);
    }
    Ok(bytes as u64)
}

/// An agent's unit spelled as the Kubernetes suffix it means: `MiB` is `Mi`, `MB` is
/// `M`, `B` is none, `K` and `KB` are `k`. Anything else is left for the quantity
/// grammar to read or refuse.
fn agent_suffix(unit: &str) -> &str {
    let unit = match unit.strip_suffix('B') {
        Some(prefix @ ("" | "K" | "k" | "M" | "G" | "T" | "P" | "E")) => prefix,
        Some(prefix @ ("Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei")) => prefix,
        _ => unit,
    };
    if unit == "K" { "k" } else { unit }
}

/// Parses a duration as the agents read it: the API's spelling ([`parse_api_duration`]:
/// `30s`, `5m`, `12h`, `30d`), plain seconds (`30`), or humantime (`1h30m`, `2days`). Every
/// duration a CRD accepts reads here as the same length.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let t = s.trim();
    if let Ok(exact) = parse_api_duration(t) {
        return Ok(exact);
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t)
        .map_err(|e| Error::config("duration", format!("{s:?}: {e} (use e.g. 30s, 5m, 1h)")))
}

/// The API's duration grammar, which the CRDs' CEL rule (`API_DURATION_PATTERN`) and their
/// Rust twin accept exactly: a whole number of at most 9 digits and one unit, `30s`, `5m`,
/// `12h` or `30d`. One unit keeps the CEL rule a single regular expression and the meaning
/// obvious in a manifest.
pub fn parse_api_duration(value: &str) -> std::result::Result<Duration, &'static str> {
    let Some(unit) = value.chars().last() else {
        return Err("it is empty");
    };
    let digits = &value[..value.len() - unit.len_utf8()];
    let seconds_per_unit: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err("the unit must be one of s, m, h, d"),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("it must start with a whole number");
    }
    if digits.len() > 9 {
        return Err("the number has more than 9 digits");
    }
    let count: u64 = digits.parse().map_err(|_| "the number does not parse")?;
    Ok(Duration::from_secs(count * seconds_per_unit))
}

/// The CEL/OpenAPI form of [`parse_api_duration`].
pub const API_DURATION_PATTERN: &str = "^[0-9]{1,9}(s|m|h|d)$";

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrString {
    Num(u64),
    Str(String),
}

mod size_serde {
    use super::*;
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_u64(*v)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
        match NumOrString::deserialize(d)? {
            NumOrString::Num(n) => Ok(n),
            NumOrString::Str(s) => parse_size(&s).map_err(serde::de::Error::custom),
        }
    }
}

mod opt_size_serde {
    use super::*;
    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> std::result::Result<S::Ok, S::Error> {
        match v {
            Some(n) => s.serialize_u64(*n),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Option<u64>, D::Error> {
        match Option::<NumOrString>::deserialize(d)? {
            None => Ok(None),
            Some(NumOrString::Num(n)) => Ok(Some(n)),
            Some(NumOrString::Str(s)) => parse_size(&s).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

mod duration_serde {
    use super::*;
    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
        match NumOrString::deserialize(d)? {
            NumOrString::Num(n) => Ok(Duration::from_secs(n)),
            NumOrString::Str(s) => parse_duration(&s).map_err(serde::de::Error::custom),
        }
    }
}

mod opt_duration_serde {
    use super::*;
    pub fn serialize<S: Serializer>(
        v: &Option<Duration>,
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Option<Duration>, D::Error> {
        match Option::<NumOrString>::deserialize(d)? {
            None => Ok(None),
            Some(NumOrString::Num(n)) => Ok(Some(Duration::from_secs(n))),
            Some(NumOrString::Str(s)) => parse_duration(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests;
