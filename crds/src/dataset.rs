//! `Dataset`: one namespace over several stores, cached on the nodes.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::source_uri::SourceUri;
use crate::store::{
    CREDENTIALS_SCHEME_RULE, ENDPOINT_SCHEME_RULE, OPTION_KEYS_RULE, REGION_SCHEME_RULE,
    StoreFields, URI_DOTDOT_RULE, URI_SCHEME_RULE, URI_SHAPE_RULE, URI_USERINFO_RULE, UriSchemes,
};
use crate::validation::{
    DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, FieldErrors, HTTP_URL_PATTERN, MAX_SOURCES,
    MOUNT_PATH_RULE, MSG_CREDENTIALS_SCHEME, MSG_DUPLICATE_MOUNT_PATH, MSG_DUPLICATE_SOURCE_NAME,
    MSG_ENDPOINT, MSG_ENDPOINT_SCHEME, MSG_MOUNT_PATH, MSG_MOUNT_PATH_CONTROL,
    MSG_NESTED_MOUNT_PATH, MSG_OBJECT_NAME, MSG_OPTION_KEY, MSG_READ_ONLY_CONTRADICTS,
    MSG_READ_ONLY_HTTP, MSG_REGION, MSG_REGION_SCHEME, MSG_SOURCE_NAME, MSG_URI_DOTDOT,
    MSG_URI_SCHEME, MSG_URI_SHAPE, MSG_URI_USERINFO, MSG_WRITE_MODE_HTTP, NO_CONTROL_RULE,
    cel_matches, has_control_character, is_dns1123_label, is_dns1123_subdomain, is_mount_path,
    mount_path_contains,
};
use crate::{FieldErrorKind, Result};

/// A Dataset mounts one or more sources (S3 and S3-compatible buckets, GCS,
/// Azure Blob, HTTP(S), node-local directories) into one directory tree, which
/// the node agents cache and the CSI driver hands to pods as a volume.
// Each printcolumn(...) repeats `type_ = ...`; clippy reads that as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "strata.dev",
    version = "v1alpha1",
    kind = "Dataset",
    plural = "datasets",
    singular = "dataset",
    shortname = "sds",
    category = "strata",
    namespaced,
    status = "DatasetStatus",
    derive = "PartialEq",
    doc = "A Dataset mounts one or more sources (S3-compatible, GCS, Azure Blob, HTTP(S), node-local directories) into one directory tree, cached on the nodes and handed to pods as a volume.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Ready, Degraded or Failed"
    ),
    printcolumn(
        name = "Cached %",
        type_ = "integer",
        json_path = ".status.cachedPercent",
        description = "Percent of the dataset's bytes cached on at least one node"
    ),
    printcolumn(
        name = "Size",
        type_ = "string",
        json_path = ".status.size",
        description = "Total size of all sources"
    ),
    printcolumn(
        name = "Files",
        type_ = "integer",
        json_path = ".status.files",
        description = "Number of files in all sources"
    ),
    printcolumn(
        name = "Unsent",
        type_ = "string",
        json_path = ".status.unsent",
        description = "Bytes written on the nodes and not yet uploaded to the sources"
    ),
    printcolumn(
        name = "Policy",
        type_ = "string",
        json_path = ".status.policy",
        priority = 1,
        description = "The CachePolicy in effect"
    ),
    printcolumn(
        name = "Job",
        type_ = "string",
        json_path = ".status.jobs[0].job",
        priority = 1,
        description = "The newest preload or pin job"
    ),
    printcolumn(
        name = "Job %",
        type_ = "integer",
        json_path = ".status.jobs[0].percent",
        priority = 1,
        description = "Bytes the newest preload or pin job has fetched, in percent, summed over the nodes"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DatasetSpec {
    // No `reason` on the uniqueness rules: with FieldValueDuplicate the API server
    // prints "Duplicate value" and drops the message.
    /// The stores this dataset reads from. Each source appears in the dataset's
    /// tree at its mountPath. Names and mountPaths must be unique and mountPaths
    /// must not be nested inside one another. 1 to 16 sources.
    #[schemars(length(min = 1, max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t.name == s.name))").message(MSG_DUPLICATE_SOURCE_NAME))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t.mountPath == s.mountPath))").message(MSG_DUPLICATE_MOUNT_PATH))]
    #[x_kube(validation = Rule::new("self.all(a, self.all(b, a.mountPath == b.mountPath || !(a.mountPath == '/' || b.mountPath.startsWith(a.mountPath + '/'))))").message(MSG_NESTED_MOUNT_PATH))]
    pub sources: Vec<Source>,

    /// The CachePolicy (in this namespace) that governs this dataset. When
    /// unset, a policy whose datasetSelector matches this dataset's labels is
    /// used; when none matches, the dataset is cached with the built-in
    /// defaults (no quota beyond node capacity, no pins, no preloads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_ref: Option<PolicyReference>,
}

/// One store mounted into the dataset's tree.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(CREDENTIALS_SCHEME_RULE).message(MSG_CREDENTIALS_SCHEME).field_path(".credentialsSecretRef").reason(Reason::FieldValueForbidden))]
#[x_kube(validation = Rule::new(ENDPOINT_SCHEME_RULE).message(MSG_ENDPOINT_SCHEME).field_path(".endpoint").reason(Reason::FieldValueForbidden))]
#[x_kube(validation = Rule::new(REGION_SCHEME_RULE).message(MSG_REGION_SCHEME).field_path(".region").reason(Reason::FieldValueForbidden))]
#[x_kube(validation = Rule::new("!has(self.writeMode) || self.writeMode == 'ReadOnly' || !self.uri.matches('^https?://')").message(MSG_WRITE_MODE_HTTP).field_path(".writeMode").reason(Reason::FieldValueForbidden))]
#[x_kube(validation = Rule::new("has(self.writeMode) || !has(self.readOnly) || self.readOnly || !self.uri.matches('^https?://')").message(MSG_READ_ONLY_HTTP).field_path(".readOnly").reason(Reason::FieldValueForbidden))]
#[x_kube(validation = Rule::new("!has(self.readOnly) || !has(self.writeMode) || self.readOnly == (self.writeMode == 'ReadOnly')").message(MSG_READ_ONLY_CONTRADICTS).field_path(".readOnly"))]
pub struct Source {
    /// Name of the source, unique within the dataset: a DNS-1123 label such as
    /// `train`. Used in status, metrics and job names.
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new(cel_matches(DNS_LABEL_PATTERN)).message(MSG_SOURCE_NAME))]
    pub name: String,

    /// Where the data lives: `s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `az://container/prefix`, `http(s)://host/path` or `file:///absolute/dir`
    /// (a directory present on every node, e.g. an NFS mount). Never put
    /// credentials in the URI; use credentialsSecretRef.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(URI_SCHEME_RULE).message(MSG_URI_SCHEME))]
    #[x_kube(validation = Rule::new(URI_SHAPE_RULE).message(MSG_URI_SHAPE))]
    // Forbidden, not Invalid: the API server then prints only the message, not the
    // value, so the credentials are not repeated back into a terminal or a log.
    #[x_kube(validation = Rule::new(URI_USERINFO_RULE).message(MSG_URI_USERINFO).reason(Reason::FieldValueForbidden))]
    #[x_kube(validation = Rule::new(URI_DOTDOT_RULE).message(MSG_URI_DOTDOT))]
    pub uri: String,

    /// Where the source appears inside the dataset: an absolute path such as
    /// `/train`, or `/` for a dataset with a single source. The pod sees it at
    /// `<volume mount>/<mountPath>`.
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new(MOUNT_PATH_RULE).message(MSG_MOUNT_PATH))]
    #[x_kube(validation = Rule::new(NO_CONTROL_RULE).message(MSG_MOUNT_PATH_CONTROL))]
    pub mount_path: String,

    /// Endpoint URL of an S3-compatible store (MinIO, Ceph RGW, ...) or a
    /// GCS/Azure emulator, such as `http://minio.storage:9000`. Only for s3, gs
    /// and az sources; unset means the provider's public endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(cel_matches(HTTP_URL_PATTERN)).message(MSG_ENDPOINT))]
    pub endpoint: Option<String>,

    /// Region of an s3 bucket, such as `us-east-1`. Only for s3 sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new(cel_matches(DNS_LABEL_PATTERN)).message(MSG_REGION))]
    pub region: Option<String>,

    /// A Secret in the dataset's namespace holding the credentials for an s3,
    /// gs or az source. Keys: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
    /// optionally `AWS_SESSION_TOKEN` (s3); `GOOGLE_SERVICE_ACCOUNT_KEY` (gs,
    /// the JSON key); `AZURE_STORAGE_ACCOUNT_NAME` plus `AZURE_STORAGE_ACCOUNT_KEY`
    /// or `AZURE_STORAGE_SAS_TOKEN` (az). Unset means anonymous access or the
    /// node's ambient credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretReference>,

    /// How writes to this source's part of the dataset are handled; see
    /// [`WriteMode`] (its doc is the field's description in the CRD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_mode: Option<WriteMode>,

    /// Deprecated: use writeMode. `true` means writeMode ReadOnly, `false`
    /// means WriteBack; when both are set they must agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,

    /// Extra store settings passed to the object store client, keyed by its
    /// option name, e.g. `allow_http: "true"` or
    /// `virtual_hosted_style_request: "false"`. At most 32. Keys naming a
    /// credential (secret, token, password, key) are refused: credentials
    /// belong in the Secret named by credentialsSecretRef.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    #[x_kube(validation = Rule::new(OPTION_KEYS_RULE).message(MSG_OPTION_KEY))]
    pub options: BTreeMap<String, String>,
}

/// How writes to the source's part of the dataset are handled. ReadOnly
/// (the default): every write is refused (EROFS). WriteBack: writes land in
/// the node's journal and close/fsync return once they are durable on the
/// node; uploads to the source run in the background, are retried, and
/// survive agent crashes and restarts (an object appears at the source only
/// whole). WriteThrough: close/fsync return once the source has the object.
/// http(s) sources cannot be written. A dataset with a writable source gets
/// ReadWriteMany volumes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WriteMode {
    /// Every write is refused (EROFS).
    #[default]
    ReadOnly,
    /// Writes land in the node's journal; close and fsync return once they are
    /// durable there, and uploads run in the background.
    WriteBack,
    /// Close and fsync return once the source has the object.
    WriteThrough,
}

impl WriteMode {
    /// Whether the mode takes writes.
    pub fn is_writable(self) -> bool {
        self != WriteMode::ReadOnly
    }

    /// The name as written in the spec (`WriteBack`).
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMode::ReadOnly => "ReadOnly",
            WriteMode::WriteBack => "WriteBack",
            WriteMode::WriteThrough => "WriteThrough",
        }
    }
}

/// A reference to a CachePolicy in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PolicyReference {
    /// Name of the CachePolicy.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(cel_matches(DNS_SUBDOMAIN_PATTERN)).message(MSG_OBJECT_NAME))]
    pub name: String,
}

/// A reference to a Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SecretReference {
    /// Name of the Secret.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(cel_matches(DNS_SUBDOMAIN_PATTERN)).message(MSG_OBJECT_NAME))]
    pub name: String,
}

/// Summary of a Dataset's state, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatasetStatus {
    /// Pending (not yet listed), Ready (mountable), Degraded (mountable, but a
    /// source or node has a problem; see conditions) or Failed (not mountable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<DatasetPhase>,

    /// Standard conditions: Ready, SourcesReachable, PolicyResolved,
    /// Preloading, NodesHealthy, UploadsHealthy (datasets with writes),
    /// VolumeUpToDate, SpecValid. Each says what is wrong in words a user can act on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Total size in bytes of all objects in all sources, from the last listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<i64>,

    /// totalBytes for people, e.g. `12.4Gi` (the Size column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,

    /// Number of files (objects) in all sources, from the last listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<i64>,

    /// Distinct bytes of this dataset cached on at least one node (a block
    /// held by several nodes counts once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_bytes: Option<i64>,

    /// cachedBytes / totalBytes in percent, rounded down (100 only when fully cached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub cached_percent: Option<i32>,

    /// Cache hits summed over all nodes (reads served without going to the source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hits: Option<i64>,

    /// Cache misses summed over all nodes (reads that went to a peer or the source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misses: Option<i64>,

    /// Number of nodes holding part of this dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<i32>,

    /// Bytes written on the nodes and not yet uploaded to the sources, summed
    /// over the live nodes (datasets with a writable source only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_write_bytes: Option<i64>,

    /// pendingWriteBytes for people, e.g. `12.4Mi` (the Unsent column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsent: Option<String>,

    /// Files changed on the nodes (written, deleted, renamed) whose change is
    /// not yet at the source, summed over the live nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_write_files: Option<i64>,

    /// When the oldest change not yet at the source was made, over the live
    /// nodes; unset when nothing is pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_pending_write: Option<Time>,

    /// The CachePolicy in effect (from policyRef or a matching selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,

    /// When the operator last listed the sources and summed the node reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,

    /// Per-source results of the last listing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub sources: Vec<SourceStatus>,

    /// Preload and pin jobs for this dataset, newest first (the operator keeps a few).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<JobRun>,

    /// What each pin rule of the CachePolicy holds, from the nodes' reports. A
    /// rule with `modifiedWithin` counts the files inside its window now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pins: Vec<PinStatus>,
}

/// One pin rule's files and bytes, over the nodes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PinStatus {
    /// The rule's globs, as in the CachePolicy's `spec.pin[].paths`.
    pub paths: Vec<String>,
    /// The rule's `modifiedWithin`, as the agents read it (e.g. `14days`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_within: Option<String>,
    /// Nodes holding at least one file of the rule.
    pub nodes: i32,
    /// Cached files the rule pins, summed over the nodes (a file pinned on 3
    /// nodes counts 3 times).
    pub files: i64,
    /// Cached bytes of those files, summed over the nodes.
    pub bytes: i64,
}

/// The lifecycle phase of a Dataset.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetPhase {
    /// Not yet listed.
    Pending,
    /// Every source listed and mountable.
    Ready,
    /// Mountable, but a source or node has a problem; see conditions.
    Degraded,
    /// Not mountable; see conditions.
    Failed,
}

/// What the last listing of one source found.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// The source's name from spec.sources.
    pub name: String,
    /// Whether the last listing succeeded.
    pub reachable: bool,
    /// Total bytes under the source's prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<i64>,
    /// Number of files under the source's prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<i64>,
    /// What went wrong, in words a user can act on (never a credential or signed URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the source was last listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_list_time: Option<Time>,
}

/// Whether a job preloads (fetches into the cache) or pins (fetches and keeps).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// A preload rule's job.
    Preload,
    /// A pin rule's job.
    Pin,
}

/// Where a job is in its life.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobPhase {
    /// Created, not started.
    Pending,
    /// Fetching.
    Running,
    /// Finished; every block fetched.
    Succeeded,
    /// Finished with errors; see message.
    Failed,
}

/// Progress of one preload or pin job, reported in both the Dataset's and the
/// CachePolicy's status.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobRun {
    /// Preload or Pin.
    pub kind: JobKind,
    /// The CachePolicy whose rule started the job.
    pub policy: String,
    /// Index of the rule in the policy's preload or pin list.
    pub rule: i32,
    /// The Dataset the job fetched into.
    pub dataset: String,
    /// Name of the Kubernetes Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Pending, Running, Succeeded or Failed.
    pub phase: JobPhase,
    /// Bytes fetched so far, summed over the nodes' reports of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<i64>,
    /// Bytes the job will fetch in total (known once listing is done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<i64>,
    /// Files fetched so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_done: Option<i64>,
    /// Files the job will fetch in total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_total: Option<i64>,
    /// bytesDone / bytesTotal in percent, rounded down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: Option<i32>,
    /// When the job started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the job finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// What went wrong, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Source {
    /// The parsed URI (scheme, bucket or host, prefix).
    pub fn parsed_uri(&self) -> Result<SourceUri> {
        SourceUri::parse(&self.uri)
    }

    /// How the source takes writes, with the deprecated `readOnly` resolved:
    /// `writeMode` when set; else `readOnly: false` means WriteBack; else ReadOnly.
    /// (A `readOnly` that contradicts `writeMode` is refused by validation.)
    ///
    /// ```
    /// let source: strata_crds::Source = serde_json::from_value(serde_json::json!(
    ///     {"name": "out", "uri": "s3://b/out/", "mountPath": "/out", "readOnly": false}
    /// )).unwrap();
    /// assert_eq!(source.effective_write_mode(), strata_crds::WriteMode::WriteBack);
    /// ```
    pub fn effective_write_mode(&self) -> WriteMode {
        match (self.write_mode, self.read_only) {
            (Some(mode), _) => mode,
            (None, Some(false)) => WriteMode::WriteBack,
            (None, Some(true) | None) => WriteMode::ReadOnly,
        }
    }
}

impl DatasetSpec {
    /// Whether any source takes writes (its volumes are then ReadWriteMany).
    pub fn is_writable(&self) -> bool {
        self.sources
            .iter()
            .any(|s| s.effective_write_mode().is_writable())
    }
}

impl DatasetSpec {
    /// Every rule of the CRD, checked in Rust. Field paths start at `spec`.
    pub fn field_errors(&self) -> Vec<crate::FieldError> {
        let mut errors = FieldErrors::default();
        if self.sources.is_empty() {
            errors.push(
                "spec.sources",
                FieldErrorKind::Required,
                "sources must list at least one source",
            );
        }
        if self.sources.len() > MAX_SOURCES {
            errors.push(
                "spec.sources",
                FieldErrorKind::Invalid,
                format!("sources must have at most {MAX_SOURCES} items"),
            );
        }
        for (i, source) in self.sources.iter().enumerate() {
            source.check(&mut errors, &format!("spec.sources[{i}]"));
            let earlier = &self.sources[..i];
            if earlier.iter().any(|s| s.name == source.name) {
                errors.push(
                    format!("spec.sources[{i}].name"),
                    FieldErrorKind::Duplicate,
                    MSG_DUPLICATE_SOURCE_NAME,
                );
            }
            if earlier.iter().any(|s| s.mount_path == source.mount_path) {
                errors.push(
                    format!("spec.sources[{i}].mountPath"),
                    FieldErrorKind::Duplicate,
                    MSG_DUPLICATE_MOUNT_PATH,
                );
            }
            let nested = self.sources.iter().any(|other| {
                other.mount_path != source.mount_path
                    && mount_path_contains(&other.mount_path, &source.mount_path)
            });
            if nested {
                errors.push(
                    format!("spec.sources[{i}].mountPath"),
                    FieldErrorKind::Invalid,
                    MSG_NESTED_MOUNT_PATH,
                );
            }
        }
        if let Some(policy) = &self.policy_ref
            && !is_dns1123_subdomain(&policy.name)
        {
            errors.push(
                "spec.policyRef.name",
                FieldErrorKind::Invalid,
                MSG_OBJECT_NAME,
            );
        }
        errors.0
    }
}

impl Source {
    fn check(&self, errors: &mut FieldErrors, at: &str) {
        if !is_dns1123_label(&self.name) {
            errors.push(
                format!("{at}.name"),
                FieldErrorKind::Invalid,
                MSG_SOURCE_NAME,
            );
        }
        let scheme = self.store().check(errors, at, UriSchemes::Readable);
        if !is_mount_path(&self.mount_path) {
            errors.push(
                format!("{at}.mountPath"),
                FieldErrorKind::Invalid,
                MSG_MOUNT_PATH,
            );
        }
        if has_control_character(&self.mount_path) {
            errors.push(
                format!("{at}.mountPath"),
                FieldErrorKind::Invalid,
                MSG_MOUNT_PATH_CONTROL,
            );
        }
        self.check_write_mode(errors, at, scheme);
    }

    /// The fields saying where the store is and how to reach it.
    fn store(&self) -> StoreFields<'_> {
        StoreFields {
            uri: &self.uri,
            endpoint: self.endpoint.as_deref(),
            region: self.region.as_deref(),
            credentials_secret_ref: self.credentials_secret_ref.as_ref(),
            options: &self.options,
        }
    }
}

impl Source {
    /// The writeMode rules: no writes to http(s) sources, and a `readOnly` alias
    /// that agrees with `writeMode`.
    fn check_write_mode(&self, errors: &mut FieldErrors, at: &str, scheme: Option<crate::Scheme>) {
        let unwritable = scheme.is_some_and(|s| !s.accepts_writes());
        match (self.write_mode, self.read_only) {
            (Some(mode), read_only) => {
                if unwritable && mode.is_writable() {
                    errors.push(
                        format!("{at}.writeMode"),
                        FieldErrorKind::Forbidden,
                        MSG_WRITE_MODE_HTTP,
                    );
                }
                if read_only.is_some_and(|r| r == mode.is_writable()) {
                    errors.push(
                        format!("{at}.readOnly"),
                        FieldErrorKind::Invalid,
                        MSG_READ_ONLY_CONTRADICTS,
                    );
                }
            }
            (None, Some(false)) if unwritable => errors.push(
                format!("{at}.readOnly"),
                FieldErrorKind::Forbidden,
                MSG_READ_ONLY_HTTP,
            ),
            (None, _) => {}
        }
    }
}

impl Dataset {
    /// Checks the spec against every rule of the CRD; the error lists each
    /// problem with its field path, e.g. `spec.sources[1].mountPath`.
    pub fn validate(&self) -> Result<()> {
        FieldErrors(self.spec.field_errors()).into_result("Dataset", object_name(self))
    }
}

/// `namespace/name`, or `name` for cluster-scoped or not-yet-namespaced objects.
pub(crate) fn object_name<K: ResourceExt>(obj: &K) -> String {
    match obj.namespace() {
        Some(ns) => format!("{ns}/{}", obj.name_any()),
        None => obj.name_any(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, Scheme};

    fn dataset(sources: serde_json::Value) -> Dataset {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "strata.dev/v1alpha1",
            "kind": "Dataset",
            "metadata": {"name": "d", "namespace": "ns"},
            "spec": {"sources": sources},
        }))
        .expect("deserializes")
    }

    fn fields(d: &Dataset) -> Vec<String> {
        match d.validate() {
            Ok(()) => vec![],
            Err(Error::Invalid { errors, .. }) => errors.into_iter().map(|e| e.field).collect(),
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn a_valid_multi_store_dataset() {
        let d = dataset(serde_json::json!([
            {"name": "train", "uri": "s3://b/train/", "mountPath": "/train", "region": "us-east-1",
             "endpoint": "http://127.0.0.1:9000", "credentialsSecretRef": {"name": "s3-creds"},
             "options": {"allow_http": "true"}},
            {"name": "labels", "uri": "gs://labels/", "mountPath": "/labels"},
            {"name": "web", "uri": "https://example.com/files/", "mountPath": "/web"},
        ]));
        assert_eq!(fields(&d), Vec::<String>::new());
        assert_eq!(
            d.spec.sources[0].effective_write_mode(),
            WriteMode::ReadOnly,
            "sources are read-only by default"
        );
        assert!(!d.spec.is_writable());
        assert_eq!(d.spec.sources[1].parsed_uri().unwrap().scheme, Scheme::Gcs);
    }

    #[test]
    fn mount_path_rules_name_the_later_source() {
        let d = dataset(serde_json::json!([
            {"name": "root", "uri": "s3://a/", "mountPath": "/"},
            {"name": "x", "uri": "s3://b/", "mountPath": "/x"},
            {"name": "x", "uri": "s3://c/", "mountPath": "/x"},
        ]));
        assert_eq!(
            fields(&d),
            [
                "spec.sources[1].mountPath", // nested under /
                "spec.sources[2].name",      // duplicate name
                "spec.sources[2].mountPath", // duplicate mountPath
                "spec.sources[2].mountPath", // nested under /
            ]
        );
    }

    #[test]
    fn scheme_dependent_fields() {
        let d = dataset(serde_json::json!([
            {"name": "f", "uri": "file:///data", "mountPath": "/f",
             "credentialsSecretRef": {"name": "c"}, "endpoint": "http://x:1", "region": "eu"},
            {"name": "g", "uri": "gs://b/", "mountPath": "/g", "region": "eu", "endpoint": "http://fake-gcs:4443"},
        ]));
        assert_eq!(
            fields(&d),
            [
                "spec.sources[0].endpoint",
                "spec.sources[0].region",
                "spec.sources[0].credentialsSecretRef",
                "spec.sources[1].region",
            ]
        );
    }

    #[test]
    fn read_only_is_an_alias_of_write_mode() {
        let mode = |extra: serde_json::Value| {
            let mut source = serde_json::json!({"name": "a", "uri": "s3://b/", "mountPath": "/"});
            source
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let d = dataset(serde_json::json!([source]));
            (d.spec.sources[0].effective_write_mode(), fields(&d))
        };
        let ok = Vec::<String>::new();
        let contradiction = vec!["spec.sources[0].readOnly".to_string()];
        use WriteMode::*;
        for (extra, want) in [
            (serde_json::json!({}), (ReadOnly, ok.clone())),
            (
                serde_json::json!({"readOnly": true}),
                (ReadOnly, ok.clone()),
            ),
            (
                serde_json::json!({"readOnly": false}),
                (WriteBack, ok.clone()),
            ),
            (
                serde_json::json!({"writeMode": "WriteBack"}),
                (WriteBack, ok.clone()),
            ),
            (
                serde_json::json!({"writeMode": "WriteThrough"}),
                (WriteThrough, ok.clone()),
            ),
            (
                serde_json::json!({"writeMode": "ReadOnly"}),
                (ReadOnly, ok.clone()),
            ),
            (
                serde_json::json!({"writeMode": "WriteThrough", "readOnly": false}),
                (WriteThrough, ok.clone()),
            ),
            (
                serde_json::json!({"writeMode": "ReadOnly", "readOnly": true}),
                (ReadOnly, ok.clone()),
            ),
            // Contradictions are refused; writeMode is what the field says.
            (
                serde_json::json!({"writeMode": "WriteBack", "readOnly": true}),
                (WriteBack, contradiction.clone()),
            ),
            (
                serde_json::json!({"writeMode": "ReadOnly", "readOnly": false}),
                (ReadOnly, contradiction.clone()),
            ),
        ] {
            assert_eq!(mode(extra.clone()), want, "{extra}");
        }
        // Omitted when unset, so a spec round-trips as written.
        let d = dataset(serde_json::json!([{"name": "a", "uri": "s3://b/", "mountPath": "/"}]));
        let json = serde_json::to_value(&d.spec.sources[0]).unwrap();
        assert!(
            json.get("readOnly").is_none() && json.get("writeMode").is_none(),
            "{json}"
        );
    }

    #[test]
    fn http_sources_cannot_be_written() {
        let d = dataset(serde_json::json!([
            {"name": "a", "uri": "https://h/x/", "mountPath": "/a", "writeMode": "WriteBack"},
            {"name": "b", "uri": "http://h/y/", "mountPath": "/b", "readOnly": false},
            {"name": "c", "uri": "http://h/z/", "mountPath": "/c", "writeMode": "ReadOnly"},
            {"name": "d", "uri": "file:///srv/out", "mountPath": "/d", "writeMode": "WriteThrough"},
            {"name": "e", "uri": "gs://b/out/", "mountPath": "/e", "readOnly": false},
        ]));
        assert_eq!(
            fields(&d),
            ["spec.sources[0].writeMode", "spec.sources[1].readOnly"]
        );
        assert!(d.spec.is_writable());
        let Err(Error::Invalid { errors, .. }) = d.validate() else {
            panic!("refused")
        };
        assert!(
            errors[0]
                .message
                .contains("http(s) sources cannot be written")
        );
        assert!(errors[0].message.contains("remove writeMode"));
        assert!(errors[1].message.contains("remove readOnly"));
    }
}
