//! `Migration`: an online copy of one Dataset source (or a path under it) to
//! another store, and optionally serving the source from there once it is
//! complete.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::dataset::{SecretReference, Source, object_name};
use crate::source_uri::SourceUri;
use crate::store::{
    CREDENTIALS_SCHEME_RULE, ENDPOINT_SCHEME_RULE, MSG_TARGET_URI_SCHEME, OPTION_KEYS_RULE,
    REGION_SCHEME_RULE, StoreFields, URI_DOTDOT_RULE, URI_SHAPE_RULE, URI_USERINFO_RULE,
    UriSchemes, WRITABLE_URI_SCHEME_RULE,
};
use crate::validation::{
    DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, FieldErrors, HTTP_URL_PATTERN, MOUNT_PATH_RULE,
    MSG_CREDENTIALS_SCHEME, MSG_ENDPOINT, MSG_ENDPOINT_SCHEME, MSG_OPTION_KEY, MSG_REGION,
    MSG_REGION_SCHEME, MSG_URI_DOTDOT, MSG_URI_SHAPE, MSG_URI_USERINFO, NO_CONTROL_RULE,
    cel_matches, has_control_character, is_dns1123_label, is_dns1123_subdomain, is_mount_path,
};
use crate::{FieldError, FieldErrorKind, Result};

/// Default `concurrency`: objects copied at once.
pub const DEFAULT_MIGRATION_CONCURRENCY: i32 = 16;

/// CEL transition rule: the field keeps the value it was created with.
const IMMUTABLE_RULE: &str = "self == oldSelf";
const MSG_DATASET_IMMUTABLE: &str =
    "dataset is immutable: delete the Migration and create a new one";
const MSG_SOURCE_IMMUTABLE: &str = "source is immutable: delete the Migration and create a new one";
const MSG_PATH_IMMUTABLE: &str = "path is immutable: delete the Migration and create a new one";
const MSG_TARGET_IMMUTABLE: &str = "target is immutable: delete the Migration and create a new one";

const MSG_DATASET_NAME: &str = "dataset must name a Dataset in the Migration's namespace: a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters)";
const MSG_MIGRATION_SOURCE: &str = "source must be the name of one of the Dataset's sources (spec.sources[].name): a DNS-1123 label, lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters (e.g. events)";
const MSG_MIGRATION_PATH: &str = "path must be an absolute path under the source, such as /2026 or / (the whole source): no trailing '/', no empty, '.' or '..' segments";
const MSG_MIGRATION_PATH_CONTROL: &str = "path must not contain control characters (NUL, tab, newline, DEL, ...): use printable characters only";
const MSG_CONCURRENCY: &str = "concurrency must be between 1 and 64";

/// `switchSource` serves a whole source from the target, so it needs `path: /`.
const SWITCH_WHOLE_SOURCE_RULE: &str =
    "!has(self.switchSource) || !self.switchSource || !has(self.path) || self.path == '/'";
const MSG_SWITCH_PART: &str = "switchSource needs path / (or no path): only a whole source can be served from the target; copy the whole source, or split the Dataset source so that the part under this path is a source of its own (its own name, uri and mountPath) and migrate that source";

/// A Migration copies one source of a Dataset (or a path under it) to another
/// store while the dataset stays in use, as a Kubernetes Job run by the
/// operator. The copy is resumable (objects already at the target are
/// skipped) and verified. With switchSource, once the copy is complete the
/// dataset's source is served from the target instead, without remounting.
// Each printcolumn(...) repeats `type_ = ...`; clippy reads that as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "strata.dev",
    version = "v1alpha1",
    kind = "Migration",
    plural = "migrations",
    singular = "migration",
    shortname = "mig",
    category = "strata",
    namespaced,
    status = "MigrationStatus",
    derive = "PartialEq",
    doc = "A Migration copies one source of a Dataset (or a path under it) to another store while the dataset stays in use, verified and resumable; with switchSource the source is then served from the target.",
    printcolumn(
        name = "Dataset",
        type_ = "string",
        json_path = ".spec.dataset",
        description = "The Dataset whose source is copied"
    ),
    printcolumn(
        name = "Source",
        type_ = "string",
        json_path = ".spec.source",
        description = "The Dataset source copied from"
    ),
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.target.uri",
        description = "Where the objects are copied to"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Copying, Copied, Switched or Failed"
    ),
    printcolumn(
        name = "Percent",
        type_ = "integer",
        json_path = ".status.percent",
        description = "Bytes at the target, in percent (%) of the bytes to copy"
    ),
    printcolumn(
        name = "Rate",
        type_ = "string",
        json_path = ".status.rate",
        description = "Average copy rate since the run started"
    ),
    printcolumn(
        name = "ETA",
        type_ = "string",
        json_path = ".status.eta",
        description = "Time left at the average rate"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(SWITCH_WHOLE_SOURCE_RULE).message(MSG_SWITCH_PART).field_path(".switchSource").reason(Reason::FieldValueForbidden))]
pub struct MigrationSpec {
    /// The Dataset, in the Migration's namespace, whose source is copied.
    /// Immutable.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(cel_matches(DNS_SUBDOMAIN_PATTERN)).message(MSG_DATASET_NAME))]
    #[x_kube(validation = Rule::new(IMMUTABLE_RULE).message(MSG_DATASET_IMMUTABLE))]
    pub dataset: String,

    /// The name of the Dataset's source to copy from (its
    /// `spec.sources[].name`), such as `events`. Immutable.
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new(cel_matches(DNS_LABEL_PATTERN)).message(MSG_MIGRATION_SOURCE))]
    #[x_kube(validation = Rule::new(IMMUTABLE_RULE).message(MSG_SOURCE_IMMUTABLE))]
    pub source: String,

    /// What to copy: an absolute path under the source, such as `/2026`, or
    /// `/` (the default) for the whole source. Immutable.
    #[serde(default = "default_path")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new(MOUNT_PATH_RULE).message(MSG_MIGRATION_PATH))]
    #[x_kube(validation = Rule::new(NO_CONTROL_RULE).message(MSG_MIGRATION_PATH_CONTROL))]
    #[x_kube(validation = Rule::new(IMMUTABLE_RULE).message(MSG_PATH_IMMUTABLE))]
    pub path: String,

    /// Where to copy to. The objects under `path` land under the target uri
    /// with the same relative names. Immutable.
    #[x_kube(validation = Rule::new(IMMUTABLE_RULE).message(MSG_TARGET_IMMUTABLE))]
    pub target: MigrationTarget,

    /// Objects copied at once, 1 to 64 (default 16). May be changed while the
    /// Migration runs; the next run of the copy uses it.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 64))]
    pub concurrency: i32,

    /// When true and the copy is complete, the Dataset's source is served from
    /// the target instead (no remount: files already open keep reading what
    /// they opened, new opens read the target). Needs `path` `/`. May be
    /// changed: copy first, check, then set it. Setting it back to false (or
    /// deleting the Migration) before the target URI is committed to the
    /// Dataset serves the source from its own uri again. Default false.
    #[serde(default)]
    pub switch_source: bool,
}

fn default_path() -> String {
    "/".to_string()
}

fn default_concurrency() -> i32 {
    DEFAULT_MIGRATION_CONCURRENCY
}

/// Where a Migration copies to: the same fields and rules as a Dataset
/// source's store, except that the store must take writes (no http(s)).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(CREDENTIALS_SCHEME_RULE).message(MSG_CREDENTIALS_SCHEME).field_path(".credentialsSecretRef").reason(Reason::FieldValueForbidden))]
#[x_kube(validation = Rule::new(ENDPOINT_SCHEME_RULE).message(MSG_ENDPOINT_SCHEME).field_path(".endpoint").reason(Reason::FieldValueForbidden))]
#[x_kube(validation = Rule::new(REGION_SCHEME_RULE).message(MSG_REGION_SCHEME).field_path(".region").reason(Reason::FieldValueForbidden))]
pub struct MigrationTarget {
    /// The store to copy to: `s3://bucket/prefix/`, `gs://bucket/prefix/`,
    /// `az://container/prefix/`, `hdfs://namenode:8020/path/` or
    /// `file:///absolute/dir`. http(s) stores are read-only and refused.
    /// Never put credentials in the URI; use credentialsSecretRef.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(WRITABLE_URI_SCHEME_RULE).message(MSG_TARGET_URI_SCHEME))]
    #[x_kube(validation = Rule::new(URI_SHAPE_RULE).message(MSG_URI_SHAPE))]
    // Forbidden, not Invalid: the API server then prints only the message, not the value.
    #[x_kube(validation = Rule::new(URI_USERINFO_RULE).message(MSG_URI_USERINFO).reason(Reason::FieldValueForbidden))]
    #[x_kube(validation = Rule::new(URI_DOTDOT_RULE).message(MSG_URI_DOTDOT))]
    pub uri: String,

    /// Endpoint URL of an S3-compatible store or a GCS/Azure emulator, as for
    /// a Dataset source. Only for s3, gs and az targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(cel_matches(HTTP_URL_PATTERN)).message(MSG_ENDPOINT))]
    pub endpoint: Option<String>,

    /// Region of an s3 bucket, such as `eu-west-1`. Only for s3 targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new(cel_matches(DNS_LABEL_PATTERN)).message(MSG_REGION))]
    pub region: Option<String>,

    /// A Secret in the Migration's namespace with the credentials for an s3,
    /// gs or az target (the same keys as a Dataset source's Secret). Refused
    /// for hdfs and file targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretReference>,

    /// Extra store settings for the target, as a Dataset source's `options`.
    /// At most 32; keys naming a credential are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    #[x_kube(validation = Rule::new(OPTION_KEYS_RULE).message(MSG_OPTION_KEY))]
    pub options: BTreeMap<String, String>,
}

/// Where a Migration is in its life.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrationPhase {
    /// Created; the copy Job has not started.
    Pending,
    /// The copy Job is running.
    Copying,
    /// Every object is at the target and verified.
    Copied,
    /// The copy is complete and the Dataset's source is served from the target.
    Switched,
    /// The copy failed; see message and conditions.
    Failed,
}

/// Progress of a Migration, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStatus {
    /// Pending, Copying, Copied, Switched or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MigrationPhase>,

    /// Name of the Kubernetes Job that copies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,

    /// Objects at the target so far in this run (copied or skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects_done: Option<i64>,

    /// Objects under the source path (known once listing is done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects_total: Option<i64>,

    /// Bytes at the target so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<i64>,

    /// Bytes under the source path (known once listing is done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<i64>,

    /// bytesDone / bytesTotal in percent, rounded down (100 only when complete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: Option<i32>,

    /// Average copy rate since the run started, for people, e.g. `12.3 MiB/s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,

    /// The same rate in bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<i64>,

    /// Time left at the average rate, e.g. `4m10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<String>,

    /// When the copy started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the copy completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// When the Dataset's source started to be served from the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch_time: Option<Time>,

    /// The uri the Dataset's source is served from after a switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_from: Option<String>,

    /// What is happening or went wrong, in words a user can act on (never a
    /// credential or signed URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Standard conditions: Copied, Switched, SpecValid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

impl MigrationTarget {
    /// The parsed target URI (scheme, bucket or host, prefix).
    pub fn parsed_uri(&self) -> Result<SourceUri> {
        SourceUri::parse(&self.uri)
    }

    /// `source` served from this target: its name, mountPath and write mode
    /// kept, its store fields (uri, endpoint, region, credentialsSecretRef,
    /// options) replaced by the target's. What the agents are handed after a
    /// switch.
    ///
    /// ```
    /// let source: strata_crds::Source = serde_json::from_value(serde_json::json!(
    ///     {"name": "events", "uri": "hdfs://nn:8020/events/", "mountPath": "/events"}
    /// )).unwrap();
    /// let target: strata_crds::MigrationTarget = serde_json::from_value(serde_json::json!(
    ///     {"uri": "s3://lake/events/", "region": "eu-west-1"}
    /// )).unwrap();
    /// let served = target.in_place_of(&source);
    /// assert_eq!((served.name.as_str(), served.uri.as_str()), ("events", "s3://lake/events/"));
    /// ```
    pub fn in_place_of(&self, source: &Source) -> Source {
        Source {
            uri: self.uri.clone(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            credentials_secret_ref: self.credentials_secret_ref.clone(),
            options: self.options.clone(),
            ..source.clone()
        }
    }

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

impl MigrationSpec {
    /// Whether the Migration copies the whole source (`path` is `/`).
    pub fn copies_whole_source(&self) -> bool {
        self.path == "/"
    }

    /// Every rule of the CRD that looks at one object, checked in Rust. Field
    /// paths start at `spec`.
    pub fn field_errors(&self) -> Vec<FieldError> {
        let mut errors = FieldErrors::default();
        if !is_dns1123_subdomain(&self.dataset) {
            errors.push("spec.dataset", FieldErrorKind::Invalid, MSG_DATASET_NAME);
        }
        if !is_dns1123_label(&self.source) {
            errors.push("spec.source", FieldErrorKind::Invalid, MSG_MIGRATION_SOURCE);
        }
        if !is_mount_path(&self.path) {
            errors.push("spec.path", FieldErrorKind::Invalid, MSG_MIGRATION_PATH);
        }
        if has_control_character(&self.path) {
            errors.push(
                "spec.path",
                FieldErrorKind::Invalid,
                MSG_MIGRATION_PATH_CONTROL,
            );
        }
        self.target
            .store()
            .check(&mut errors, "spec.target", UriSchemes::Writable);
        if !(1..=64).contains(&self.concurrency) {
            errors.push("spec.concurrency", FieldErrorKind::Invalid, MSG_CONCURRENCY);
        }
        if self.switch_source && !self.copies_whole_source() {
            errors.push(
                "spec.switchSource",
                FieldErrorKind::Forbidden,
                MSG_SWITCH_PART,
            );
        }
        errors.0
    }

    /// The transition rules: `dataset`, `source`, `path` and `target` keep the
    /// values they were created with (`old`); `concurrency` and `switchSource`
    /// may change.
    pub fn update_field_errors(&self, old: &MigrationSpec) -> Vec<FieldError> {
        let mut errors = FieldErrors::default();
        for (changed, field, message) in [
            (
                self.dataset != old.dataset,
                "spec.dataset",
                MSG_DATASET_IMMUTABLE,
            ),
            (
                self.source != old.source,
                "spec.source",
                MSG_SOURCE_IMMUTABLE,
            ),
            (self.path != old.path, "spec.path", MSG_PATH_IMMUTABLE),
            (
                self.target != old.target,
                "spec.target",
                MSG_TARGET_IMMUTABLE,
            ),
        ] {
            if changed {
                errors.push(field, FieldErrorKind::Invalid, message);
            }
        }
        errors.0
    }
}

impl Migration {
    /// Checks the spec against every rule of the CRD that looks at one object;
    /// the error lists each problem with its field path, e.g. `spec.target.uri`.
    pub fn validate(&self) -> Result<()> {
        FieldErrors(self.spec.field_errors()).into_result("Migration", object_name(self))
    }

    /// [`Migration::validate`] plus the rules of an update from `old`: the
    /// fields that are immutable must not have changed.
    pub fn validate_update(&self, old: &Migration) -> Result<()> {
        let mut errors = self.spec.field_errors();
        errors.extend(self.spec.update_field_errors(&old.spec));
        FieldErrors(errors).into_result("Migration", object_name(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, Scheme};

    const EXAMPLE: &str = r#"
apiVersion: strata.dev/v1alpha1
kind: Migration
metadata: {name: lake-to-s3, namespace: analytics}
spec:
  dataset: lake
  source: events
  path: /2026
  target:
    uri: s3://bucket/events/
    endpoint: http://minio.storage:9000
    region: eu-west-1
    credentialsSecretRef: {name: s3-creds}
    options: {allow_http: "true"}
  concurrency: 32
"#;

    fn migration(spec: serde_json::Value) -> Migration {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "strata.dev/v1alpha1",
            "kind": "Migration",
            "metadata": {"name": "m", "namespace": "ns"},
            "spec": spec,
        }))
        .expect("deserializes")
    }

    /// `(field, message)` of every problem `validate` finds.
    fn problems(m: &Migration) -> Vec<(String, String)> {
        match m.validate() {
            Ok(()) => vec![],
            Err(Error::Invalid { errors, .. }) => {
                errors.into_iter().map(|e| (e.field, e.message)).collect()
            }
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn the_example_parses_and_validates() {
        let m: Migration = serde_yaml::from_str(EXAMPLE).unwrap();
        m.validate().unwrap();
        assert_eq!(m.spec.path, "/2026");
        assert_eq!(m.spec.concurrency, 32);
        assert!(!m.spec.switch_source);
        assert!(!m.spec.copies_whole_source());
        assert_eq!(m.spec.target.parsed_uri().unwrap().scheme, Scheme::S3);
    }

    #[test]
    fn defaults() {
        let m = migration(serde_json::json!({
            "dataset": "lake", "source": "events", "target": {"uri": "gs://b/events/"},
        }));
        assert_eq!(m.spec.path, "/");
        assert_eq!(m.spec.concurrency, DEFAULT_MIGRATION_CONCURRENCY);
        assert!(!m.spec.switch_source);
        assert!(m.spec.copies_whole_source());
        assert!(problems(&m).is_empty());
        // The target's empty options are left out, so a spec round-trips as written.
        let json = serde_json::to_value(&m.spec.target).unwrap();
        assert_eq!(json, serde_json::json!({"uri": "gs://b/events/"}));
    }

    #[test]
    fn switching_needs_the_whole_source() {
        let m = migration(serde_json::json!({
            "dataset": "lake", "source": "events", "path": "/2026", "switchSource": true,
            "target": {"uri": "s3://b/events/"},
        }));
        let found = problems(&m);
        assert_eq!(found.len(), 1, "{found:?}");
        let (field, message) = &found[0];
        assert_eq!(field, "spec.switchSource");
        assert!(message.contains("needs path /"), "{message}");
        assert!(message.contains("split the Dataset source"), "{message}");
        let whole = migration(serde_json::json!({
            "dataset": "lake", "source": "events", "switchSource": true,
            "target": {"uri": "s3://b/events/"},
        }));
        assert!(problems(&whole).is_empty());
    }

    #[test]
    fn the_target_must_take_writes() {
        for uri in ["https://example.com/events/", "http://10.0.0.1:8080/x/"] {
            let m = migration(serde_json::json!({
                "dataset": "lake", "source": "events", "target": {"uri": uri},
            }));
            let found = problems(&m);
            assert_eq!(found.len(), 1, "{found:?}");
            let (field, message) = &found[0];
            assert_eq!(field, "spec.target.uri");
            assert!(
                message.contains("http(s) stores are read-only"),
                "{message}"
            );
            assert!(message.contains("copy to an object store"), "{message}");
        }
    }

    #[test]
    fn target_store_rules_are_the_sources() {
        let m = migration(serde_json::json!({
            "dataset": "lake", "source": "events",
            "target": {"uri": "hdfs://namenode:8020/events/", "credentialsSecretRef": {"name": "keytab"},
                       "region": "eu", "endpoint": "http://x:1", "options": {"aws_secret_access_key": "x"}},
        }));
        let fields: Vec<String> = problems(&m).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "spec.target.endpoint",
                "spec.target.region",
                "spec.target.credentialsSecretRef",
                "spec.target.options",
            ]
        );
        let found = problems(&m);
        let credentials = &found[2].1;
        assert!(credentials.contains("hdfs"), "{credentials}");
        assert!(credentials.contains("remove it"), "{credentials}");
    }

    #[test]
    fn names_path_and_concurrency() {
        let m = migration(serde_json::json!({
            "dataset": "Lake_1", "source": "Events", "path": "/2026/", "concurrency": 65,
            "target": {"uri": "s3://b/../x"},
        }));
        let found = problems(&m);
        let fields: Vec<&str> = found.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.dataset",
                "spec.source",
                "spec.path",
                "spec.target.uri",
                "spec.concurrency",
            ]
        );
        assert!(found[0].1.contains("Dataset in the Migration's namespace"));
        assert!(found[1].1.contains("spec.sources[].name"));
        assert!(found[2].1.contains("no trailing '/'"));
        assert!(found[3].1.contains("'..'"));
        for path in ["/a//b", "/a/../b", "relative", "/a\tb"] {
            let m = migration(serde_json::json!({
                "dataset": "lake", "source": "events", "path": path, "target": {"uri": "s3://b/"},
            }));
            let fields: Vec<String> = problems(&m).into_iter().map(|(f, _)| f).collect();
            assert!(
                fields.contains(&"spec.path".to_string()),
                "{path:?}: {fields:?}"
            );
        }
    }

    #[test]
    fn only_concurrency_and_switch_source_may_change() {
        let old: Migration = serde_yaml::from_str(EXAMPLE).unwrap();
        let mut new = old.clone();
        new.spec.concurrency = 4;
        new.spec.path = "/".to_string();
        new.spec.switch_source = true;
        // Only the path change is refused; the new spec is otherwise valid.
        let Err(Error::Invalid { errors, .. }) = new.validate_update(&old) else {
            panic!("refused")
        };
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "spec.path");
        assert_eq!(
            errors[0].message,
            "path is immutable: delete the Migration and create a new one"
        );

        let mut new = old.clone();
        new.spec.concurrency = 64;
        new.validate_update(&old).unwrap();

        let mut new = old.clone();
        new.spec.dataset = "other".into();
        new.spec.source = "other".into();
        new.spec.target.region = None;
        let fields: Vec<String> = new
            .spec
            .update_field_errors(&old.spec)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["spec.dataset", "spec.source", "spec.target"]);
    }

    #[test]
    fn in_place_of_keeps_the_sources_place_and_write_mode() {
        let source: Source = serde_json::from_value(serde_json::json!({
            "name": "events", "uri": "hdfs://nn:8020/events/", "mountPath": "/events",
            "writeMode": "WriteBack", "options": {"dfs.client.use.datanode.hostname": "true"},
        }))
        .unwrap();
        let m: Migration = serde_yaml::from_str(EXAMPLE).unwrap();
        let served = m.spec.target.in_place_of(&source);
        assert_eq!(served.name, "events");
        assert_eq!(served.mount_path, "/events");
        assert_eq!(served.write_mode, source.write_mode);
        assert_eq!(served.uri, "s3://bucket/events/");
        assert_eq!(served.region.as_deref(), Some("eu-west-1"));
        assert_eq!(served.options, m.spec.target.options);
        assert_eq!(
            served.credentials_secret_ref.map(|s| s.name).as_deref(),
            Some("s3-creds")
        );
    }
}
