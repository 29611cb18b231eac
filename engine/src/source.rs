//! Sources: object stores (S3, GCS, Azure, HTTP, local directories) behind `object_store`,
//! each with bounded concurrency, explicit retries, request counters and errors that name
//! the source and never carry a credential.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::http::HttpBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{
    BackoffConfig, ClientConfigKey, ClientOptions, GetOptions, GetRange, GetResult, ObjectStore,
    ObjectStoreExt, RetryConfig,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::SourceConfig;
use crate::error::SourceErrorKind;
use crate::metrics::{InFlight, Metrics};
use crate::path::DatasetPath;
use crate::{Error, Result};

/// Default most requests in flight per source.
pub const DEFAULT_MAX_CONCURRENCY: usize = 64;
/// Default retries per request.
pub const DEFAULT_MAX_RETRIES: usize = 3;

/// Metadata of one object as the engine uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the source's prefix.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time.
    pub mtime: SystemTime,
    /// Version identity: ETag, else object version, else size+mtime. A change of this
    /// value makes a new cache key, so changed objects are never served stale.
    pub etag: String,
}

/// A GET whose response headers are in.
struct StartedGet {
    response: GetResult,
    request: RequestGuard,
}

/// What a GET holds until its body is read: its concurrency permit and in-flight gauge.
struct RequestGuard {
    started: Instant,
    _permit: OwnedSemaphorePermit,
    _in_flight: InFlight,
}

struct StreamState {
    source: Arc<Source>,
    rel: String,
    body: BoxStream<'static, object_store::Result<Bytes>>,
    got: u64,
    wanted: u64,
    request: RequestGuard,
}

/// Number of requests a source has received (for tests, status and metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestCounts {
    /// Ranged GETs.
    pub gets: u64,
    /// HEADs.
    pub heads: u64,
    /// LIST calls.
    pub lists: u64,
    /// Bytes received from GETs.
    pub bytes: u64,
}

impl RequestCounts {
    /// All requests together.
    pub fn total(&self) -> u64 {
        self.gets + self.heads + self.lists
    }
}

#[derive(Default)]
struct Counters {
    gets: AtomicU64,
    heads: AtomicU64,
    lists: AtomicU64,
    bytes: AtomicU64,
}

/// One configured source of a dataset.
pub struct Source {
    name: String,
    uri: String,
    mount_path: DatasetPath,
    store: Arc<dyn ObjectStore>,
    prefix: String,
    permits: Arc<Semaphore>,
    counters: Counters,
    secrets: Vec<String>,
    metrics: Arc<Metrics>,
    dataset: String,
    /// Local sources: the directory, canonical. object_store follows symlinks, so every
    /// entry is resolved and checked against it (see [`Source::escapes_local_root`]).
    local_root: Option<std::path::PathBuf>,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("name", &self.name)
            .field("uri", &self.uri)
            .field("mount_path", &self.mount_path)
            .finish()
    }
}

/// A listing of one directory level of a source.
#[derive(Debug, Default, Clone)]
pub struct SourceListing {
    /// Sub-directory names (common prefixes).
    pub dirs: Vec<String>,
    /// Objects directly in the directory.
    pub files: Vec<ObjectInfo>,
}

impl Source {
    /// Builds the object store for a source configuration. `dataset` ("ns/name") labels
    /// metrics. Nothing is contacted yet; see [`Source::check`].
    pub fn new(cfg: &SourceConfig, dataset: &str, metrics: Arc<Metrics>) -> Result<Self> {
        let mount_path = DatasetPath::parse(&cfg.mount_path).map_err(|e| {
            Error::config(format!("source {:?} mountPath", cfg.name), e.to_string())
        })?;
        let (store, prefix) = build_store(cfg)?;
        let local_root = local_dir(&cfg.uri)
            .map(|dir| {
                std::fs::canonicalize(dir).map_err(|e| {
                    Error::config(
                        format!("source {:?} uri", cfg.name),
                        format!("local directory {dir:?}: {e}"),
                    )
                })
            })
            .transpose()?;
        let mut secrets = Vec::new();
        if let Some(c) = &cfg.credentials {
            for s in [
                &c.secret_access_key,
                &c.session_token,
                &c.service_account_key,
                &c.account_key,
                &c.token,
                &c.access_key_id,
            ]
            .into_iter()
            .flatten()
            {
                if s.len() >= 4 {
                    secrets.push(s.clone());
                }
            }
        }
        Ok(Source {
            name: cfg.name.clone(),
            uri: scrub(&cfg.uri, &secrets),
            mount_path,
            store,
            prefix,
            permits: Arc::new(Semaphore::new(
                cfg.max_concurrency
                    .unwrap_or(DEFAULT_MAX_CONCURRENCY)
                    .max(1),
            )),
            counters: Counters::default(),
            secrets,
            metrics,
            dataset: dataset.to_string(),
            local_root,
        })
    }

    /// Wraps an existing store (for tests and embedders); keys are relative to `prefix`.
    pub fn from_store(
        name: &str,
        mount_path: DatasetPath,
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        metrics: Arc<Metrics>,
    ) -> Self {
        Source {
            name: name.to_string(),
            uri: format!("{store}"),
            mount_path,
            store,
            prefix: normalize_prefix(prefix),
            permits: Arc::new(Semaphore::new(DEFAULT_MAX_CONCURRENCY)),
            counters: Counters::default(),
            secrets: Vec::new(),
            metrics,
            dataset: String::new(),
            local_root: None,
        }
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The source's URI (without credentials).
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Whether this is a local directory (where one large request saves nothing).
    pub fn is_local(&self) -> bool {
        self.local_root.is_some()
    }

    /// Where the source appears in the dataset.
    pub fn mount_path(&self) -> &DatasetPath {
        &self.mount_path
    }

    /// Requests this source has received so far.
    pub fn request_counts(&self) -> RequestCounts {
        RequestCounts {
            gets: self.counters.gets.load(Ordering::Relaxed),
            heads: self.counters.heads.load(Ordering::Relaxed),
            lists: self.counters.lists.load(Ordering::Relaxed),
            bytes: self.counters.bytes.load(Ordering::Relaxed),
        }
    }

    /// Contacts the source once (a LIST of its prefix, one level) so that a wrong
    /// endpoint, bucket or credential is reported at startup with the source's name.
    pub async fn check(&self) -> Result<()> {
        self.list_dir("").await.map(|_| ())
    }

    /// True when `key` of a local source resolves (through symlinks) to something outside
    /// the source directory: such entries are treated as absent, so a link like
    /// `ln -s /etc secrets` in a hostPath source cannot expose the node's files.
    /// A key that does not resolve (missing, dangling link) is left to the store.
    fn escapes_local_root(&self, key: &str) -> bool {
        let Some(root) = &self.local_root else {
            return false;
        };
        match std::fs::canonicalize(root.join(key.trim_start_matches('/'))) {
            Ok(real) => !real.starts_with(root),
            Err(_) => std::fs::symlink_metadata(root.join(key.trim_start_matches('/')))
                .is_ok_and(|m| m.file_type().is_symlink()),
        }
    }

    fn outside_root_error(&self, rel: &str) -> Error {
        Error::Source {
            source_name: self.name.clone(),
            uri: self.uri.clone(),
            kind: SourceErrorKind::NotFound,
            message: format!(
                "{rel}: not found (a symlink leading outside the source directory is not followed)"
            ),
        }
    }

    fn location(&self, rel: &str) -> Result<StorePath> {
        let full = format!("{}{}", self.prefix, rel.trim_start_matches('/'));
        StorePath::parse(&full).map_err(|e| Error::InvalidPath {
            path: rel.to_string(),
            reason: format!("not a valid object key in source {:?}: {e}", self.name),
        })
    }

    fn to_info(&self, meta: &object_store::ObjectMeta) -> ObjectInfo {
        let key = meta.location.as_ref();
        let rel = key.strip_prefix(self.prefix.as_str()).unwrap_or(key);
        let mtime: SystemTime = meta.last_modified.into();
        let etag = meta
            .e_tag
            .clone()
            .or_else(|| meta.version.clone())
            .unwrap_or_else(|| {
                let secs = mtime
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                format!("{}-{}", meta.size, secs)
            });
        ObjectInfo {
            key: rel.to_string(),
            size: meta.size,
            mtime,
            etag,
        }
    }

    /// HEAD of one object; `Ok(None)` when it does not exist.
    pub async fn head(&self, rel: &str) -> Result<Option<ObjectInfo>> {
        if rel.is_empty() {
            return Ok(None);
        }
        let loc = self.location(rel)?;
        if self.escapes_local_root(rel) {
            return Ok(None);
        }
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| Error::Task(e.to_string()))?;
        self.counters.heads.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .source_request(&self.dataset, &self.name, "head");
        match self.store.head(&loc).await {
            Ok(meta) => Ok(Some(self.to_info(&meta))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            // Local stores answer "is a directory" with a generic error: not a file.
            Err(e) if is_directory_error(&e) => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Lists one directory level (`rel` "" is the source root). Pages are fetched by the
    /// store and collected once; the caller keeps the only copy.
    pub async fn list_dir(&self, rel: &str) -> Result<SourceListing> {
        let prefix = if rel.is_empty() && self.prefix.is_empty() {
            None
        } else {
            Some(self.location(rel)?)
        };
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| Error::Task(e.to_string()))?;
        self.counters.lists.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .source_request(&self.dataset, &self.name, "list");
        let res = match self.store.list_with_delimiter(prefix.as_ref()).await {
            Ok(r) => r,
            // A local directory that does not exist lists as empty on some stores and as
            // an error on others: treat "not found" as empty.
            Err(object_store::Error::NotFound { .. }) => return Ok(SourceListing::default()),
            Err(e) => return Err(self.error(e)),
        };
        let base = rel.trim_matches('/');
        let dirs = res
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .filter(|d| !self.escapes_local_root(&format!("{base}/{d}")))
            .collect();
        let files = res
            .objects
            .iter()
            .map(|m| self.to_info(m))
            .filter(|f| !self.escapes_local_root(&f.key))
            .collect();
        Ok(SourceListing { dirs, files })
    }

    /// Every object under a directory, recursively, streamed page by page to `each`.
    pub async fn list_recursive(&self, rel: &str, mut each: impl FnMut(ObjectInfo)) -> Result<()> {
        use futures::StreamExt;
        if self.local_root.is_some() {
            // object_store's recursive local listing follows directory symlinks (a link to
            // "/" would walk the whole node); walk level by level through the checked
            // listing instead.
            let mut pending = vec![rel.trim_matches('/').to_string()];
            while let Some(dir) = pending.pop() {
                let listing = self.list_dir(&dir).await?;
                for f in listing.files {
                    each(f);
                }
                for d in listing.dirs {
                    pending.push(if dir.is_empty() {
                        d
                    } else {
                        format!("{dir}/{d}")
                    });
                }
            }
            return Ok(());
        }
        let prefix = if rel.is_empty() && self.prefix.is_empty() {
            None
        } else {
            Some(self.location(rel)?)
        };
        self.counters.lists.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .source_request(&self.dataset, &self.name, "list");
        let mut stream = self.store.list(prefix.as_ref());
        while let Some(item) = stream.next().await {
            match item {
                Ok(meta) => each(self.to_info(&meta)),
                Err(object_store::Error::NotFound { .. }) => break,
                Err(e) => return Err(self.error(e)),
            }
        }
        Ok(())
    }

    /// Ranged GET of one object version. Fails with [`SourceErrorKind::Changed`] when the
    /// object no longer has `etag` (so blocks of two versions are never mixed).
    pub async fn get_range(&self, rel: &str, etag: &str, range: Range<u64>) -> Result<Bytes> {
        let wanted = range.end - range.start;
        let request = self.start_get(rel, etag, range).await?;
        let result = request.response.bytes().await;
        self.metrics
            .observe_fetch(request.request.started.elapsed());
        match result {
            Ok(bytes) => {
                self.count_bytes(bytes.len() as u64);
                if (bytes.len() as u64) != wanted {
                    return Err(self.short_read(rel, wanted, bytes.len() as u64));
                }
                Ok(bytes)
            }
            Err(e) => Err(self.error(e)),
        }
    }

    /// [`Self::get_range`] as a stream of chunks as they arrive, for one request spanning
    /// several blocks: the caller can use each block as soon as its bytes are in. The
    /// stream ends with an error if the object changed or delivered fewer bytes than asked.
    pub async fn get_range_stream(
        self: &Arc<Self>,
        rel: &str,
        etag: &str,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let wanted = range.end - range.start;
        let request = self.start_get(rel, etag, range).await?;
        let body = request.response.into_stream();
        let state = StreamState {
            source: self.clone(),
            rel: rel.to_string(),
            body,
            got: 0,
            wanted,
            request: request.request,
        };
        Ok(futures::stream::unfold(Some(state), |state| async move {
            let mut st = state?;
            match st.body.next().await {
                Some(Ok(chunk)) => {
                    st.got += chunk.len() as u64;
                    st.source.count_bytes(chunk.len() as u64);
                    Some((Ok(chunk), Some(st)))
                }
                Some(Err(e)) => {
                    st.source
                        .metrics
                        .observe_fetch(st.request.started.elapsed());
                    Some((Err(st.source.error(e)), None))
                }
                None => {
                    st.source
                        .metrics
                        .observe_fetch(st.request.started.elapsed());
                    if st.got == st.wanted {
                        None
                    } else {
                        Some((Err(st.source.short_read(&st.rel, st.wanted, st.got)), None))
                    }
                }
            }
        })
        .boxed())
    }

    /// Sends a ranged GET (in the source's concurrency bound, counted) and waits for the
    /// response headers.
    async fn start_get(&self, rel: &str, etag: &str, range: Range<u64>) -> Result<StartedGet> {
        let loc = self.location(rel)?;
        if self.escapes_local_root(rel) {
            return Err(self.outside_root_error(rel));
        }
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Error::Task(e.to_string()))?;
        self.counters.gets.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .source_request(&self.dataset, &self.name, "get");
        let in_flight = self.metrics.fetch_started();
        let started = Instant::now();
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range)),
            // Synthetic identities (size-mtime) are not ETags the store would know.
            if_match: (!is_synthetic_etag(etag)).then(|| etag.to_string()),
            ..Default::default()
        };
        match self.store.get_opts(&loc, opts).await {
            Ok(response) => Ok(StartedGet {
                response,
                request: RequestGuard {
                    started,
                    _permit: permit,
                    _in_flight: in_flight,
                },
            }),
            Err(e) => {
                self.metrics.observe_fetch(started.elapsed());
                Err(self.error(e))
            }
        }
    }

    fn count_bytes(&self, n: u64) {
        self.counters.bytes.fetch_add(n, Ordering::Relaxed);
        self.metrics.source_bytes(&self.dataset, &self.name, n);
    }

    /// The object delivered fewer (or more) bytes than its version has: it changed.
    fn short_read(&self, rel: &str, wanted: u64, got: u64) -> Error {
        Error::Source {
            source_name: self.name.clone(),
            uri: self.uri.clone(),
            kind: SourceErrorKind::Changed,
            message: format!("{rel}: expected {wanted} bytes, got {got}; the object changed"),
        }
    }

    /// Turns an object_store error into one naming this source, scrubbed of credentials.
    fn error(&self, e: object_store::Error) -> Error {
        let kind = match &e {
            object_store::Error::NotFound { .. } => SourceErrorKind::NotFound,
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => SourceErrorKind::PermissionDenied,
            object_store::Error::Precondition { .. } => SourceErrorKind::Changed,
            object_store::Error::UnknownConfigurationKey { .. } => SourceErrorKind::InvalidConfig,
            _ => classify_text(&format!("{e:?}")),
        };
        let raw = match &e {
            object_store::Error::Generic { source, .. } => {
                // The Display of nested errors is terse; include the chain for diagnosis.
                let mut s = source.to_string();
                let mut cur = source.source();
                while let Some(c) = cur {
                    s.push_str(": ");
                    s.push_str(&c.to_string());
                    cur = c.source();
                }
                s
            }
            other => other.to_string(),
        };
        let hint = match kind {
            SourceErrorKind::NotFound => " (check the bucket/container name and prefix)",
            SourceErrorKind::PermissionDenied => " (check the credentials and their permissions)",
            SourceErrorKind::Unavailable => {
                " (check the endpoint address and that it is reachable)"
            }
            _ => "",
        };
        Error::Source {
            source_name: self.name.clone(),
            uri: self.uri.clone(),
            kind,
            message: format!("{}{hint}", scrub(&raw, &self.secrets)),
        }
    }
}

fn classify_text(text: &str) -> SourceErrorKind {
    let t = text.to_ascii_lowercase();
    // "Not a directory": a local path that goes through a regular file ("a.bin/x").
    if t.contains("nosuchbucket")
        || has_status(&t, "404")
        || t.contains("not found")
        || t.contains("not a directory")
    {
        SourceErrorKind::NotFound
    } else if has_status(&t, "403")
        || has_status(&t, "401")
        || t.contains("accessdenied")
        || t.contains("invalidaccesskeyid")
        || t.contains("signaturedoesnotmatch")
        || t.contains("forbidden")
    {
        SourceErrorKind::PermissionDenied
    } else if t.contains("connect")
        || t.contains("timed out")
        || t.contains("timeout")
        || t.contains("dns")
        || t.contains("refused")
        || has_status(&t, "500")
        || has_status(&t, "503")
    {
        SourceErrorKind::Unavailable
    } else {
        SourceErrorKind::Other
    }
}

/// Whether `code` occurs as a number of its own: not inside a port (`127.0.0.1:40345`), an
/// address or a duration (`403.2ms`), which the error texts also contain.
fn has_status(text: &str, code: &str) -> bool {
    let bytes = text.as_bytes();
    let part_of_number = |c: u8| c.is_ascii_digit() || c == b'.' || c == b':';
    text.match_indices(code).any(|(i, _)| {
        let before = i.checked_sub(1).map(|j| bytes[j]);
        let after = bytes.get(i + code.len()).copied();
        !before.is_some_and(part_of_number) && !after.is_some_and(part_of_number)
    })
}

fn is_directory_error(e: &object_store::Error) -> bool {
    let t = format!("{e:?}").to_ascii_lowercase();
    t.contains("is a directory") || t.contains("isadirectory")
}

fn is_synthetic_etag(etag: &str) -> bool {
    // size-nanos, produced by `to_info` when a store reports neither ETag nor version.
    let mut parts = etag.splitn(2, '-');
    matches!((parts.next(), parts.next()), (Some(a), Some(b))
        if !a.is_empty() && a.bytes().all(|c| c.is_ascii_digit()) && b.bytes().all(|c| c.is_ascii_digit()))
        && !etag.starts_with('"')
}

fn normalize_prefix(p: &str) -> String {
    let t = p.trim_matches('/');
    if t.is_empty() {
        String::new()
    } else {
        format!("{t}/")
    }
}

/// One scrubber for the engine and the operator (`strata-wire`).
pub use strata_wire::scrub::scrub;

fn retry_config(cfg: &SourceConfig) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: cfg.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
        retry_timeout: Duration::from_secs(60),
    }
}

fn client_options(cfg: &SourceConfig, http: bool) -> Result<ClientOptions> {
    let mut opts = ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(120))
        .with_allow_http(http);
    for (k, v) in &cfg.options {
        if let Ok(key) = k.parse::<ClientConfigKey>() {
            opts = opts.with_config(key, v.clone());
        }
    }
    Ok(opts)
}

/// Splits "scheme://bucket/prefix" into (scheme, bucket, prefix).
fn split_uri(uri: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = uri.split_once("://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    Some((scheme, bucket, prefix))
}

/// The directory of a local source URI (`/data` or `file:///data`), `None` otherwise.
pub fn local_dir(uri: &str) -> Option<&str> {
    let uri = uri.trim();
    (uri.starts_with('/') || uri.starts_with("file://"))
        .then(|| uri.strip_prefix("file://").unwrap_or(uri))
}

fn build_store(cfg: &SourceConfig) -> Result<(Arc<dyn ObjectStore>, String)> {
    let field = |f: &str| format!("source {:?} {f}", cfg.name);
    let uri = cfg.uri.trim();
    let bad_key = |k: &str| {
        Error::config(
            field("options"),
            format!("unknown option {k:?} for this kind of source"),
        )
    };
    let wrap = |e: object_store::Error| Error::config(field("uri"), scrub(&e.to_string(), &[]));
    if uri.starts_with('/') || uri.starts_with("file://") {
        let dir = uri.strip_prefix("file://").unwrap_or(uri);
        let meta = std::fs::metadata(dir)
            .map_err(|e| Error::config(field("uri"), format!("local directory {dir:?}: {e}")))?;
        if !meta.is_dir() {
            return Err(Error::config(
                field("uri"),
                format!("{dir:?} is not a directory"),
            ));
        }
        let store = LocalFileSystem::new_with_prefix(dir).map_err(wrap)?;
        return Ok((Arc::new(store), String::new()));
    }
    let Some((scheme, bucket, prefix)) = split_uri(uri) else {
        return Err(Error::config(
            field("uri"),
            format!(
                "{:?} has no scheme; use s3://, gs://, az://, http(s):// or file://",
                scrub(uri, &[])
            ),
        ));
    };
    let prefix = normalize_prefix(prefix);
    let retry = retry_config(cfg);
    let creds = cfg.credentials.clone().unwrap_or_default();
    match scheme {
        "s3" | "s3a" => {
            if bucket.is_empty() {
                return Err(Error::config(field("uri"), "s3:// URI needs a bucket name"));
            }
            let endpoint_http = cfg
                .endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://"));
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry)
                .with_client_options(client_options(cfg, endpoint_http)?);
            if let Some(region) = &cfg.region {
                b = b.with_region(region);
            }
            if let Some(ep) = &cfg.endpoint {
                // Custom endpoints (MinIO, SeaweedFS, Ceph) mostly want path-style
                // addressing; set option virtual_hosted_style_request=true otherwise.
                b = b
                    .with_endpoint(ep)
                    .with_allow_http(endpoint_http)
                    .with_virtual_hosted_style_request(false);
            }
            if let Some(k) = &creds.access_key_id {
                b = b.with_access_key_id(k);
            }
            if let Some(s) = &creds.secret_access_key {
                b = b.with_secret_access_key(s);
            }
            if let Some(t) = &creds.session_token {
                b = b.with_token(t);
            }
            for (k, v) in &cfg.options {
                if k.parse::<ClientConfigKey>().is_ok() {
                    continue;
                }
                let key: AmazonS3ConfigKey = k.parse().map_err(|_| bad_key(k))?;
                b = b.with_config(key, v.clone());
            }
            Ok((Arc::new(b.build().map_err(wrap)?), prefix))
        }
        "gs" | "gcs" => {
            let mut b = GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry)
                .with_client_options(client_options(cfg, false)?);
            if let Some(k) = &creds.service_account_key {
                b = b.with_service_account_key(k);
            }
            if let Some(t) = &creds.token {
                b = b.with_bearer_token(t);
            }
            for (k, v) in &cfg.options {
                if k.parse::<ClientConfigKey>().is_ok() {
                    continue;
                }
                let key: GoogleConfigKey = k.parse().map_err(|_| bad_key(k))?;
                b = b.with_config(key, v.clone());
            }
            Ok((Arc::new(b.build().map_err(wrap)?), prefix))
        }
        "az" | "azure" | "abfs" | "abfss" => {
            let mut b = MicrosoftAzureBuilder::from_env()
                .with_container_name(bucket)
                .with_retry(retry)
                .with_client_options(client_options(cfg, false)?);
            if let Some(a) = &creds.account_name {
                b = b.with_account(a);
            }
            if let Some(k) = &creds.account_key {
                b = b.with_access_key(k);
            }
            if let Some(t) = &creds.token {
                b = b.with_bearer_token_authorization(t);
            }
            if let Some(ep) = &cfg.endpoint {
                b = b.with_endpoint(ep.clone());
            }
            for (k, v) in &cfg.options {
                if k.parse::<ClientConfigKey>().is_ok() {
                    continue;
                }
                let key: AzureConfigKey = k.parse().map_err(|_| bad_key(k))?;
                b = b.with_config(key, v.clone());
            }
            Ok((Arc::new(b.build().map_err(wrap)?), prefix))
        }
        "http" | "https" => {
            // The whole URI is the base; keys are relative to it.
            let b = HttpBuilder::new()
                .with_url(uri.trim_end_matches('/'))
                .with_retry(retry)
                .with_client_options(client_options(cfg, scheme == "http")?);
            Ok((Arc::new(b.build().map_err(wrap)?), String::new()))
        }
        other => Err(Error::config(
            field("uri"),
            format!(
                "unknown scheme {other:?}; use s3://, gs://, az://, http(s)://, file:// or an absolute path"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Status codes are recognised as numbers of their own, not inside a port or a
    /// duration (a refused connection to port 40345 was once taken for a 403).
    #[test]
    fn error_texts_classify_by_status_not_by_port() {
        let refused = "Error performing GET http://127.0.0.1:40345/b?<redacted> in 401.3ms - \
                       client error (Connect): tcp connect error: Connection refused";
        assert_eq!(classify_text(refused), SourceErrorKind::Unavailable);
        assert_eq!(
            classify_text("Client error with status 403 Forbidden: <Error>"),
            SourceErrorKind::PermissionDenied
        );
        assert_eq!(
            classify_text("status: 404, body: NoSuchKey"),
            SourceErrorKind::NotFound
        );
        assert_eq!(
            classify_text("Server error with status 503 Service Unavailable"),
            SourceErrorKind::Unavailable
        );
        assert_eq!(classify_text("port 14040 said no"), SourceErrorKind::Other);
    }

    #[test]
    fn refuses_unknown_schemes_naming_the_source() {
        let cfg = SourceConfig {
            name: "weird".into(),
            uri: "ftp://host/x".into(),
            ..Default::default()
        };
        let err = Source::new(&cfg, "ns/d", Arc::new(Metrics::new())).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("weird") && msg.contains("ftp"), "{msg}");
        let cfg = SourceConfig {
            name: "nodir".into(),
            uri: "/definitely/not/here".into(),
            ..Default::default()
        };
        let msg = Source::new(&cfg, "ns/d", Arc::new(Metrics::new()))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("nodir") && msg.contains("/definitely/not/here"),
            "{msg}"
        );
    }

    #[test]
    fn synthetic_etags() {
        assert!(is_synthetic_etag("123-456"));
        assert!(!is_synthetic_etag("\"abc-1\""));
        assert!(!is_synthetic_etag("d41d8cd98f00b204e9800998ecf8427e"));
    }
}
