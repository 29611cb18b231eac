//! Sources: object stores (S3, GCS, Azure, HTTP, local directories) behind `object_store`,
//! each with bounded concurrency, explicit retries, request counters and errors that name
//! the source and never carry a credential.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::list::PaginatedListOptions;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, GetRange, GetResult, ObjectStore, ObjectStoreExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use strata_store::{BuiltStore, ListPages, Tuning};
use strata_wire::scrub::credential_values;

use crate::config::SourceConfig;
use crate::error::SourceErrorKind;
use crate::metrics::{InFlight, Metrics};
use crate::path::DatasetPath;
use crate::{Error, Result};

/// Default most requests in flight per source.
pub const DEFAULT_MAX_CONCURRENCY: usize = 64;
/// Default retries per request.
pub use strata_store::DEFAULT_MAX_RETRIES;

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
    /// The store as a paged lister of one directory level, where it has one.
    pages: Option<ListPages>,
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

/// A listing of one directory level of a source, or one page of it.
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
        let tuning = Tuning::reads(cfg.max_retries.unwrap_or(DEFAULT_MAX_RETRIES));
        let BuiltStore {
            store,
            prefix,
            pages,
        } = strata_store::build(cfg, &tuning).map_err(|e| Error::config(e.field, e.message))?;
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
        let secrets = cfg
            .credentials
            .as_ref()
            .map(credential_values)
            .unwrap_or_default();
        Ok(Source {
            name: cfg.name.clone(),
            uri: scrub(&cfg.uri, &secrets),
            mount_path,
            store,
            pages,
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
            pages: None,
            prefix: strata_store::normalize_prefix(prefix),
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

    /// Contacts the source once (a LIST of its prefix, one level, one key where the store
    /// pages) so that a wrong endpoint, bucket or credential is reported at startup with the
    /// source's name.
    pub async fn check(&self) -> Result<()> {
        self.dir_exists("").await.map(|_| ())
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

    /// Whether writing `key` of a local source would land outside its directory: the
    /// deepest part of the path that exists already, resolved, must stay inside.
    fn write_escapes_local_root(&self, key: &str) -> bool {
        let Some(root) = &self.local_root else {
            return false;
        };
        let mut at = root.join(key.trim_start_matches('/'));
        loop {
            if std::fs::symlink_metadata(&at).is_ok() {
                return std::fs::canonicalize(&at).map_or(true, |real| !real.starts_with(root));
            }
            if !at.pop() {
                return true;
            }
        }
    }

    /// The store and the location of `rel`, for the write journal's uploads (which count
    /// their own requests); refuses a local key that would land outside the directory.
    pub(crate) fn write_target(&self, rel: &str) -> Result<(Arc<dyn ObjectStore>, StorePath)> {
        if rel.is_empty() || self.write_escapes_local_root(rel) {
            return Err(Error::InvalidPath {
                path: rel.to_string(),
                reason: format!(
                    "not writable in source {:?} (a source root, or a symlink leading outside the source directory)",
                    self.name
                ),
            });
        }
        Ok((self.store.clone(), self.location(rel)?))
    }

    /// Counts one write-side request (`put`, `multipart`, `delete`, `copy`).
    pub(crate) fn count_write_request(&self, op: &str) {
        self.metrics.source_request(&self.dataset, &self.name, op);
    }

    /// An object_store error of a write, as this source's error (scrubbed).
    pub(crate) fn write_error(&self, e: object_store::Error) -> Error {
        self.error(e)
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

    /// Lists one directory level (`rel` "" is the source root), collected whole: for the
    /// source check and local walks. Directories the metadata cache keeps are listed with
    /// [`Self::list_dir_pages`] instead.
    pub async fn list_dir(&self, rel: &str) -> Result<SourceListing> {
        let mut all = SourceListing::default();
        self.list_dir_pages(rel, |page| {
            all.dirs.extend(page.dirs);
            all.files.extend(page.files);
            Ok(())
        })
        .await?;
        Ok(all)
    }

    /// Lists one directory level page by page, handing each page to `each` as it arrives
    /// (one LIST request per page, counted as such); an error from `each` stops the
    /// listing. Stores without paged listings (local directories, HTTP) answer in one
    /// page. A page's entries are those of one response: sub-directory names and objects
    /// directly in the directory, never a marker object named like the directory itself.
    pub async fn list_dir_pages(
        &self,
        rel: &str,
        mut each: impl FnMut(SourceListing) -> Result<()>,
    ) -> Result<()> {
        let prefix = self.dir_prefix(rel)?;
        let base = rel.trim_matches('/');
        let Some(pages) = &self.pages else {
            let _permit = self.list_permit().await?;
            let res = match self.store.list_with_delimiter(prefix.as_ref()).await {
                Ok(r) => r,
                // A local directory that does not exist lists as empty on some stores and
                // as an error on others: treat "not found" as empty.
                Err(object_store::Error::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(self.error(e)),
            };
            return each(self.page(base, prefix.as_ref(), res));
        };
        // The paged API takes the prefix as the server does: with its trailing slash.
        let dir = prefix;
        let prefix = dir.as_ref().map(|p| format!("{p}/"));
        let mut token = None;
        loop {
            let opts = PaginatedListOptions {
                delimiter: Some(Cow::Borrowed("/")),
                max_keys: pages.max_keys,
                page_token: token.take(),
                ..Default::default()
            };
            let page = {
                let _permit = self.list_permit().await?;
                pages.store.list_paginated(prefix.as_deref(), opts).await
            };
            let page = match page {
                Ok(p) => p,
                Err(object_store::Error::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(self.error(e)),
            };
            each(self.page(base, dir.as_ref(), page.result))?;
            match page.page_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(()),
            }
        }
    }

    /// Whether anything is listed under directory `rel` (one request of one key where the
    /// store pages): a stat of a directory never lists it whole.
    pub async fn dir_exists(&self, rel: &str) -> Result<bool> {
        let Some(pages) = &self.pages else {
            let listing = self.list_dir(rel).await?;
            return Ok(!listing.dirs.is_empty() || !listing.files.is_empty());
        };
        let prefix = self.dir_prefix(rel)?.map(|p| format!("{p}/"));
        let opts = PaginatedListOptions {
            delimiter: Some(Cow::Borrowed("/")),
            max_keys: Some(1),
            ..Default::default()
        };
        let page = {
            let _permit = self.list_permit().await?;
            pages.store.list_paginated(prefix.as_deref(), opts).await
        };
        match page {
            // A marker object named like the directory counts: the directory was made.
            Ok(p) => Ok(!p.result.common_prefixes.is_empty() || !p.result.objects.is_empty()),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(e)),
        }
    }

    /// The store prefix of directory `rel`, without a trailing slash (`None` for the root
    /// of a source without a key prefix).
    fn dir_prefix(&self, rel: &str) -> Result<Option<StorePath>> {
        if rel.is_empty() && self.prefix.is_empty() {
            Ok(None)
        } else {
            self.location(rel).map(Some)
        }
    }

    /// Waits for a concurrency permit and counts one LIST request.
    async fn list_permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| Error::Task(e.to_string()))?;
        self.counters.lists.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .source_request(&self.dataset, &self.name, "list");
        Ok(permit)
    }

    /// One answer of a listing of directory `base` (relative, no slashes at the ends), at
    /// `dir` in the store.
    fn page(
        &self,
        base: &str,
        dir: Option<&StorePath>,
        res: object_store::ListResult,
    ) -> SourceListing {
        let dirs = res
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .filter(|d| !self.escapes_local_root(&format!("{base}/{d}")))
            .collect();
        let files = res
            .objects
            .iter()
            // A "directory marker" (the key of the directory itself, made by consoles'
            // "create folder") is not an entry of the directory.
            .filter(|m| Some(&m.location) != dir)
            .map(|m| self.to_info(m))
            .filter(|f| !self.escapes_local_root(&f.key))
            .collect();
        SourceListing { dirs, files }
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
        let kind = strata_store::classify(&e);
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

/// The directory of a local source (`strata-store`, shared with the operator).
pub use strata_store::local_dir;
/// One scrubber for the engine and the operator (`strata-wire`).
pub use strata_wire::scrub::scrub;

#[cfg(test)]
mod tests {
    use super::*;

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
