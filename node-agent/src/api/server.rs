//! Routes and handlers of the agent's HTTP API (warp).

use super::auth::{Action, Caller, TcpAuth};
use super::error::{ApiError, Result};
use super::jobs::ActivityBoard;
use super::types::{
    ErrorBody, HealthStatus, PathsRequest, PinAnswer, PreloadProgress, VolumeMount, VolumeRelease,
};
use crate::agent::Agent;
use crate::config::DatasetConfig;
use crate::dataset::DatasetView;
use crate::glob::PathGlobs;
use crate::mounts::MountRegistry;
use crate::path::DatasetPath;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// Largest JSON body accepted (dataset configs, path lists).
const MAX_BODY_BYTES: u64 = 1 << 20;
/// Largest chunk read from the engine per step of a streamed `read`.
const READ_CHUNK_BYTES: u64 = 4 << 20;
/// How often a running preload reports progress.
const PRELOAD_REPORT_EVERY: Duration = Duration::from_millis(500);

/// Everything the handlers share.
pub struct ApiState {
    pub agent: Arc<Agent>,
    pub mounts: Arc<MountRegistry>,
    /// Preload runs and source errors, for the StrataNode report.
    pub activity: Arc<ActivityBoard>,
    ready: AtomicBool,
}

impl ApiState {
    pub fn new(agent: Arc<Agent>, mounts: Arc<MountRegistry>) -> Arc<Self> {
        Arc::new(ApiState {
            agent,
            mounts,
            activity: Arc::default(),
            ready: AtomicBool::new(false),
        })
    }

    /// Called once the datasets of --datasets-dir are loaded.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// How callers of a listener are authenticated.
#[derive(Clone)]
pub enum Access {
    /// The unix socket: its file permissions are the guard; every caller is `Local`.
    Local,
    /// TCP: a bearer token says who the caller is (see [`TcpAuth`]).
    Tcp(Arc<TcpAuth>),
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

fn error_response(error: ApiError) -> Response {
    let status = error.status();
    if status.is_server_error() {
        tracing::warn!(error = %error, "request failed");
    } else {
        tracing::debug!(error = %error, "request refused");
    }
    json(status, &error.body())
}

fn respond(result: Result<Response>) -> Response {
    result.unwrap_or_else(error_response)
}

/// Kubernetes names: what namespaces and Dataset names can be.
fn check_name(field: &str, value: &str) -> Result<()> {
    let ok = strata_wire::names::is_kubernetes_name(value, strata_wire::names::MAX_NAME_LEN);
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            field,
            format!("{value:?} is not a Kubernetes name (lower-case letters, digits, '-' and '.')"),
        ))
    }
}

fn check_volume_id(value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "volumeId",
            format!("{value:?} is not a volume id (1-128 of A-Z a-z 0-9 . _ -)"),
        ))
    }
}

impl ApiState {
    /// The dataset `namespace/name` for `caller` doing `action`: a job credential reaches
    /// only datasets of its own namespace that a live CachePolicy covers.
    fn view_for(
        &self,
        caller: &Caller,
        action: Action,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<DatasetView>> {
        check_name("namespace", namespace)?;
        check_name("name", name)?;
        caller.may(action, Some(namespace))?;
        let view = self.view(namespace, name)?;
        if let Caller::Job { namespace: own } = caller
            && view.config().policy.is_none()
        {
            return Err(ApiError::Forbidden(format!(
                "dataset {namespace}/{name} is under no CachePolicy now, so no job credential of \
                 namespace {own} acts on it"
            )));
        }
        Ok(view)
    }

    fn view(&self, namespace: &str, name: &str) -> Result<Arc<DatasetView>> {
        check_name("namespace", namespace)?;
        check_name("name", name)?;
        self.agent
            .dataset(namespace, name)
            .ok_or_else(|| ApiError::dataset_not_found(namespace, name))
    }

    async fn summary(&self, view: &DatasetView) -> serde_json::Value {
        let (ns, name) = (view.namespace(), view.name());
        let sources: Vec<serde_json::Value> = view
            .sources()
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name(),
                    // Already scrubbed of credentials by the engine.
                    "uri": s.uri(),
                    "mountPath": s.mount_path().as_str(),
                })
            })
            .collect();
        serde_json::json!({
            "namespace": ns,
            "name": name,
            "sources": sources,
            "blockSize": view.block_size(),
            "pins": view.pins(),
            "mountPath": self.mounts.mounted_at(ns, name).await,
            "volumes": self.mounts.dataset_volumes(ns, name).await,
            "usage": view.usage(),
        })
    }
}

fn dataset_path(query: &HashMap<String, String>) -> Result<DatasetPath> {
    let raw = query.get("path").map(String::as_str).unwrap_or("/");
    DatasetPath::parse(raw).map_err(|e| ApiError::bad_request("path", e.to_string()))
}

fn paths_body(body: &Bytes) -> Result<PathsRequest> {
    let request: PathsRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "body",
            format!("expected {{\"paths\": [\"/glob/**\"]}}: {e}"),
        )
    })?;
    if request.paths.is_empty() {
        return Err(ApiError::bad_request(
            "paths",
            "give at least one path glob, e.g. \"/train/**\"",
        ));
    }
    PathGlobs::new(&request.paths).map_err(|e| ApiError::bad_request("paths", e.to_string()))?;
    Ok(request)
}

/// A glob matching exactly `path`: glob metacharacters become one-character classes.
fn literal_glob(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            '*' | '?' | '[' | ']' | '{' | '}' => {
                out.push('[');
                out.push(c);
                out.push(']');
            }
            c => out.push(c),
        }
    }
    out
}

async fn list_datasets(caller: Caller, state: Arc<ApiState>) -> Result<Response> {
    caller.may(Action::ListDatasets, None)?;
    let mut out = Vec::new();
    for view in state.agent.datasets() {
        out.push(state.summary(&view).await);
    }
    Ok(json(StatusCode::OK, &out))
}

async fn get_dataset(
    caller: Caller,
    ns: String,
    name: String,
    state: Arc<ApiState>,
) -> Result<Response> {
    let view = state.view_for(&caller, Action::Read, &ns, &name)?;
    Ok(json(StatusCode::OK, &state.summary(&view).await))
}

/// Parses a dataset config body; namespace and name come from the URL when the body
/// leaves them out, and must agree with it otherwise.
pub fn parse_dataset_body(ns: &str, name: &str, body: &[u8]) -> Result<DatasetConfig> {
    let mut value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("body", format!("not a JSON DatasetConfig: {e}")))?;
    let Some(object) = value.as_object_mut() else {
        return Err(ApiError::bad_request(
            "body",
            "expected a JSON object (a DatasetConfig)",
        ));
    };
    for (field, expected) in [("namespace", ns), ("name", name)] {
        match object.get(field) {
            None => {
                object.insert(
                    field.to_string(),
                    serde_json::Value::String(expected.to_string()),
                );
            }
            Some(serde_json::Value::String(given)) if given == expected => {}
            Some(given) => {
                return Err(ApiError::bad_request(
                    field,
                    format!("body says {given}, the URL says {expected:?}"),
                ));
            }
        }
    }
    let config: DatasetConfig = serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request("body", format!("invalid DatasetConfig: {e}")))?;
    config.validate()?;
    Ok(config)
}

async fn put_dataset(
    caller: Caller,
    ns: String,
    name: String,
    body: Bytes,
    state: Arc<ApiState>,
) -> Result<Response> {
    caller.may(Action::Register, Some(&ns))?;
    check_name("namespace", &ns)?;
    check_name("name", &name)?;
    let config = parse_dataset_body(&ns, &name, &body)?;
    let existed = state.agent.dataset(&ns, &name).is_some();
    let view = state.agent.add_dataset(config).await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json(status, &state.summary(&view).await))
}

async fn delete_dataset(
    caller: Caller,
    ns: String,
    name: String,
    query: HashMap<String, String>,
    state: Arc<ApiState>,
) -> Result<Response> {
    state.view_for(&caller, Action::Register, &ns, &name)?;
    let volumes = state.mounts.dataset_volumes(&ns, &name).await;
    if !volumes.is_empty() {
        return Err(ApiError::Conflict {
            message: format!(
                "dataset {ns}/{name} is mounted for {} volume(s) ({}); unpublish them (delete the pods) first",
                volumes.len(),
                volumes.join(", ")
            ),
        });
    }
    let drop_cache = query.get("keepCache").is_none_or(|v| v != "true");
    state.agent.remove_dataset(&ns, &name, drop_cache).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"namespace": ns, "name": name, "deleted": true, "cacheDropped": drop_cache}),
    ))
}

async fn stat(
    caller: Caller,
    ns: String,
    name: String,
    query: HashMap<String, String>,
    state: Arc<ApiState>,
) -> Result<Response> {
    let view = state.view_for(&caller, Action::Read, &ns, &name)?;
    let path = dataset_path(&query)?;
    Ok(json(StatusCode::OK, &view.stat(&path).await?))
}

async fn list(
    caller: Caller,
    ns: String,
    name: String,
    query: HashMap<String, String>,
    state: Arc<ApiState>,
) -> Result<Response> {
    let view = state.view_for(&caller, Action::Read, &ns, &name)?;
    let path = dataset_path(&query)?;
    let listing = view.list(&path).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"path": path.as_str(), "entries": &listing.entries}),
    ))
}

/// A single `bytes=` range, resolved against the file size to `[start, end)`.
pub fn parse_range(header: &str, size: u64) -> Result<(u64, u64)> {
    let unsatisfiable = || {
        ApiError::RangeNotSatisfiable(format!(
            "range {header:?} does not fit a file of {size} bytes"
        ))
    };
    let spec = header.trim().strip_prefix("bytes=").ok_or_else(|| {
        ApiError::bad_request(
            "range",
            format!("{header:?}: only `bytes=` ranges are supported"),
        )
    })?;
    if spec.contains(',') {
        return Err(ApiError::bad_request(
            "range",
            "only a single range is supported",
        ));
    }
    let (first, last) = spec.split_once('-').ok_or_else(|| {
        ApiError::bad_request("range", format!("{header:?} is not bytes=START-END"))
    })?;
    let number = |s: &str| {
        s.trim().parse::<u64>().map_err(|_| {
            ApiError::bad_request("range", format!("{header:?} is not bytes=START-END"))
        })
    };
    let (start, end) = match (first.trim().is_empty(), last.trim().is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => {
            let n = number(last)?;
            if n == 0 {
                return Err(unsatisfiable());
            }
            (size.saturating_sub(n), size)
        }
        (false, true) => (number(first)?, size),
        (false, false) => (number(first)?, number(last)?.saturating_add(1).min(size)),
        (true, true) => {
            return Err(ApiError::bad_request(
                "range",
                format!("{header:?} is not bytes=START-END"),
            ));
        }
    };
    if start >= size || start >= end {
        return Err(unsatisfiable());
    }
    Ok((start, end))
}

async fn read(
    caller: Caller,
    ns: String,
    name: String,
    query: HashMap<String, String>,
    range: Option<String>,
    state: Arc<ApiState>,
) -> Result<Response> {
    let view = state.view_for(&caller, Action::Read, &ns, &name)?;
    let path = dataset_path(&query)?;
    // An open file keeps the object version it saw, so a streamed answer never mixes versions.
    let reader = Arc::new(view.open(&path).await?);
    let stat = reader.stat().clone();
    let size = stat.size;
    let (start, end, status) = match range.as_deref() {
        Some(header) => {
            let (s, e) = parse_range(header, size)?;
            (s, e, StatusCode::PARTIAL_CONTENT)
        }
        None => (0, size, StatusCode::OK),
    };
    let chunks = futures::stream::unfold(start, move |offset| {
        let reader = reader.clone();
        async move {
            if offset >= end {
                return None;
            }
            let len = (end - offset).min(READ_CHUNK_BYTES);
            match reader.read(offset, len).await {
                Ok(bytes) if bytes.is_empty() => None,
                Ok(bytes) => {
                    let next = offset + bytes.len() as u64;
                    Some((Ok::<Bytes, crate::Error>(bytes), next))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "read failed mid-stream");
                    Some((Err(e), end))
                }
            }
        }
    });
    let mut response = warp::reply::stream(chunks).into_response();
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(value) = HeaderValue::from_str(&format!("bytes {}-{}/{size}", start, end - 1))
    {
        headers.insert(header::CONTENT_RANGE, value);
    }
    if let Some(etag) = stat
        .etag
        .as_deref()
        .and_then(|e| HeaderValue::from_str(&format!("\"{}\"", e.trim_matches('"'))).ok())
    {
        headers.insert(header::ETAG, etag);
    }
    Ok(response)
}

async fn preload(
    caller: Caller,
    ns: String,
    name: String,
    body: Bytes,
    state: Arc<ApiState>,
) -> Result<Response> {
    let view = state.view_for(&caller, Action::Preload, &ns, &name)?;
    let request = paths_body(&body)?;
    let paths = request.paths;
    if let Some(job) = &request.job
        && (job.is_empty()
            || job.len() > 253
            || !job
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.'))
    {
        return Err(ApiError::bad_request(
            "job",
            "must be a Kubernetes Job name (lowercase letters, digits, '-' and '.', at most 253)",
        ));
    }
    let fetches = match request.concurrency {
        None => crate::dataset::PRELOAD_MAX_FETCHES,
        Some(n @ 1..=64) => n as usize,
        Some(n) => {
            return Err(ApiError::bad_request(
                "concurrency",
                format!("{n} is out of range: give 1 to 64 requests in flight"),
            ));
        }
    };
    // A Job's run is reported (progress, outcome) in the StrataNode under the Job's name.
    let run = request
        .job
        .as_deref()
        .map(|job| state.activity.start_run(&ns, &name, job));
    let activity = state.activity.clone();
    let started = std::time::SystemTime::now();
    let (progress_tx, mut progress_rx) =
        tokio::sync::watch::channel(None::<crate::dataset::PreloadProgress>);
    let (lines_tx, lines_rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tracing::info!(dataset = %format!("{ns}/{name}"), ?paths, "preload started");
    let mut task = tokio::spawn(async move {
        view.preload_with(&paths, fetches, move |p| {
            let _ = progress_tx.send(Some(p));
        })
        .await
    });
    // Reports at most every PRELOAD_REPORT_EVERY, then a final line. The preload keeps
    // running if the client goes away: filling the cache is still useful.
    tokio::spawn(async move {
        let line = |p: &PreloadProgress| {
            let mut text = serde_json::to_vec(p).unwrap_or_default();
            text.push(b'\n');
            Bytes::from(text)
        };
        let to_api = |p: crate::dataset::PreloadProgress| PreloadProgress {
            files_done: p.files_done,
            files_total: p.files_total,
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
            done: false,
            error: None,
        };
        let mut ticker = tokio::time::interval(PRELOAD_REPORT_EVERY);
        let outcome = loop {
            tokio::select! {
                outcome = &mut task => break outcome,
                _ = ticker.tick() => {
                    if progress_rx.has_changed().unwrap_or(false) {
                        let current = *progress_rx.borrow_and_update();
                        if let Some(p) = current {
                            let p = to_api(p);
                            if let Some(run) = &run {
                                run.progress(&p);
                            }
                            let _ = lines_tx.send(line(&p)).await;
                        }
                    }
                }
            }
        };
        let last = progress_rx.borrow().map(to_api).unwrap_or_default();
        // Files the sources refused and source failures are the dataset's last error;
        // a clean run shows the sources answer again.
        let source_failed = match &outcome {
            Ok(Ok(report)) => !report.failed.is_empty(),
            Ok(Err(e)) => matches!(e, crate::Error::Source { .. }),
            Err(_) => false,
        };
        let last = match outcome {
            Ok(Ok(report)) => PreloadProgress {
                done: true,
                error: report.failed.first().map(|(path, reason)| {
                    format!(
                        "{} of {} files failed, first {path}: {reason}",
                        report.failed.len(),
                        last.files_total
                    )
                }),
                ..last
            },
            Ok(Err(e)) => PreloadProgress {
                done: true,
                error: Some(e.to_string()),
                ..last
            },
            Err(e) => PreloadProgress {
                done: true,
                error: Some(format!("preload task failed: {e}")),
                ..last
            },
        };
        tracing::info!(files = last.files_done, bytes = last.bytes_done, error = ?last.error, "preload finished");
        match &last.error {
            Some(error) if source_failed => activity.source_failed(&ns, &name, error),
            Some(_) => {}
            None => activity.sources_ok(&ns, &name, started),
        }
        if let Some(run) = run {
            run.finish(&last, last.error.as_deref());
        }
        let _ = lines_tx.send(line(&last)).await;
    });
    let stream = futures::stream::unfold(lines_rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<Bytes, Infallible>(line), rx))
    });
    let mut response = warp::reply::stream(stream).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

async fn pin(
    caller: Caller,
    ns: String,
    name: String,
    body: Bytes,
    state: Arc<ApiState>,
) -> Result<Response> {
    let view = state.view_for(&caller, Action::Pin, &ns, &name)?;
    let request = paths_body(&body)?;
    let changed = match &request.modified_within {
        None => request.paths,
        Some(within) => {
            let within = crate::config::parse_duration(within)
                .map_err(|e| ApiError::bad_request("modifiedWithin", e.to_string()))?;
            let since = std::time::SystemTime::now()
                .checked_sub(within)
                .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
            let globs = PathGlobs::new(&request.paths)?;
            view.expand_globs(&globs)
                .await?
                .into_iter()
                .filter(|f| f.mtime >= since)
                .map(|f| literal_glob(f.path.as_str()))
                .collect()
        }
    };
    if !changed.is_empty() {
        view.pin(&changed)?;
    }
    Ok(json(
        StatusCode::OK,
        &PinAnswer {
            pins: view.pins(),
            changed,
        },
    ))
}

async fn unpin(
    caller: Caller,
    ns: String,
    name: String,
    body: Bytes,
    state: Arc<ApiState>,
) -> Result<Response> {
    let view = state.view_for(&caller, Action::Pin, &ns, &name)?;
    let paths = paths_body(&body)?.paths;
    view.unpin(&paths)?;
    Ok(json(
        StatusCode::OK,
        &PinAnswer {
            pins: view.pins(),
            changed: paths,
        },
    ))
}

async fn usage(caller: Caller, ns: String, name: String, state: Arc<ApiState>) -> Result<Response> {
    let view = state.view_for(&caller, Action::Usage, &ns, &name)?;
    Ok(json(StatusCode::OK, &view.usage()))
}

async fn acquire_volume(
    caller: Caller,
    ns: String,
    name: String,
    volume_id: String,
    query: HashMap<String, String>,
    state: Arc<ApiState>,
) -> Result<Response> {
    caller.may(Action::Volumes, Some(&ns))?;
    check_volume_id(&volume_id)?;
    let owner = query.get("owner").map(String::as_str);
    if let Some(owner) = owner
        && (owner.is_empty() || owner.len() > 1024 || owner.chars().any(char::is_control))
    {
        return Err(ApiError::bad_request(
            "owner",
            "must be 1-1024 printable characters",
        ));
    }
    let view = state.view(&ns, &name)?;
    let acquired = state.mounts.acquire(view, &volume_id, owner).await?;
    Ok(json(
        StatusCode::OK,
        &VolumeMount {
            namespace: ns,
            name,
            volume_id,
            mount_path: acquired.mount_path,
            volumes: acquired.volumes,
            new_volume: acquired.new_volume,
        },
    ))
}

async fn release_volume(
    caller: Caller,
    dataset: Option<(String, String)>,
    volume_id: String,
    state: Arc<ApiState>,
) -> Result<Response> {
    caller.may(Action::Volumes, dataset.as_ref().map(|(ns, _)| ns.as_str()))?;
    check_volume_id(&volume_id)?;
    if let Some((ns, name)) = &dataset {
        check_name("namespace", ns)?;
        check_name("name", name)?;
    }
    let released = state
        .mounts
        .release(
            &volume_id,
            dataset.as_ref().map(|(n, d)| (n.as_str(), d.as_str())),
        )
        .await?;
    Ok(json(
        StatusCode::OK,
        &VolumeRelease {
            volume_id,
            released: released.released,
            unmounted: released.unmounted,
        },
    ))
}

async fn list_volumes(caller: Caller, state: Arc<ApiState>) -> Result<Response> {
    caller.may(Action::Volumes, None)?;
    Ok(json(StatusCode::OK, &state.mounts.volumes().await))
}

fn health(state: &ApiState) -> Response {
    json(
        StatusCode::OK,
        &HealthStatus {
            status: "ok".into(),
            datasets: state.agent.datasets().len(),
        },
    )
}

fn readiness(state: &ApiState) -> Response {
    let datasets = state.agent.datasets().len();
    if state.is_ready() {
        json(
            StatusCode::OK,
            &HealthStatus {
                status: "ready".into(),
                datasets,
            },
        )
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &HealthStatus {
                status: "starting: loading datasets".into(),
                datasets,
            },
        )
    }
}

fn with_state(
    state: Arc<ApiState>,
) -> impl Filter<Extract = (Arc<ApiState>,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

fn health_routes(state: Arc<ApiState>) -> BoxedFilter<(Response,)> {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .and(with_state(state.clone()))
        .map(|s: Arc<ApiState>| health(&s));
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_state(state))
        .map(|s: Arc<ApiState>| readiness(&s));
    healthz.or(readyz).unify().boxed()
}

fn v1_routes(state: Arc<ApiState>, access: Access) -> BoxedFilter<(Response,)> {
    let st = || with_state(state.clone());
    // After the path and method, so that one request is authenticated once.
    let who = || caller(access.clone());
    let query = || warp::query::<HashMap<String, String>>();
    let body = || warp::body::content_length_limit(MAX_BODY_BYTES).and(warp::body::bytes());
    let dataset = || warp::path!("datasets" / String / String);

    let list_all = warp::path!("datasets")
        .and(warp::get())
        .and(who())
        .and(st())
        .then(|c, s| async move { respond(list_datasets(c, s).await) })
        .boxed();
    let get = dataset()
        .and(warp::get())
        .and(who())
        .and(st())
        .then(|ns, name, c, s| async move { respond(get_dataset(c, ns, name, s).await) })
        .boxed();
    let put = dataset()
        .and(warp::put())
        .and(who())
        .and(body())
        .and(st())
        .then(|ns, name, c, b, s| async move { respond(put_dataset(c, ns, name, b, s).await) })
        .boxed();
    let delete = dataset()
        .and(warp::delete())
        .and(who())
        .and(query())
        .and(st())
        .then(|ns, name, c, q, s| async move { respond(delete_dataset(c, ns, name, q, s).await) })
        .boxed();
    let stat_route = warp::path!("datasets" / String / String / "stat")
        .and(warp::get())
        .and(who())
        .and(query())
        .and(st())
        .then(|ns, name, c, q, s| async move { respond(stat(c, ns, name, q, s).await) })
        .boxed();
    let list_route = warp::path!("datasets" / String / String / "list")
        .and(warp::get())
        .and(who())
        .and(query())
        .and(st())
        .then(|ns, name, c, q, s| async move { respond(list(c, ns, name, q, s).await) })
        .boxed();
    let read_route = warp::path!("datasets" / String / String / "read")
        .and(warp::get())
        .and(who())
        .and(query())
        .and(warp::header::optional::<String>("range"))
        .and(st())
        .then(|ns, name, c, q, r, s| async move { respond(read(c, ns, name, q, r, s).await) })
        .boxed();
    let preload_route = warp::path!("datasets" / String / String / "preload")
        .and(warp::post())
        .and(who())
        .and(body())
        .and(st())
        .then(|ns, name, c, b, s| async move { respond(preload(c, ns, name, b, s).await) })
        .boxed();
    let pin_route = warp::path!("datasets" / String / String / "pin")
        .and(warp::post())
        .and(who())
        .and(body())
        .and(st())
        .then(|ns, name, c, b, s| async move { respond(pin(c, ns, name, b, s).await) })
        .boxed();
    let unpin_route = warp::path!("datasets" / String / String / "unpin")
        .and(warp::post())
        .and(who())
        .and(body())
        .and(st())
        .then(|ns, name, c, b, s| async move { respond(unpin(c, ns, name, b, s).await) })
        .boxed();
    let usage_route = warp::path!("datasets" / String / String / "usage")
        .and(warp::get())
        .and(who())
        .and(st())
        .then(|ns, name, c, s| async move { respond(usage(c, ns, name, s).await) })
        .boxed();
    let volume = || warp::path!("datasets" / String / String / "volumes" / String);
    let acquire = volume()
        .and(warp::put())
        .and(who())
        .and(query())
        .and(st())
        .then(|ns, name, id, c, q, s| async move {
            respond(acquire_volume(c, ns, name, id, q, s).await)
        })
        .boxed();
    let release = volume()
        .and(warp::delete())
        .and(who())
        .and(st())
        .then(|ns, name, id, c, s| async move {
            respond(release_volume(c, Some((ns, name)), id, s).await)
        })
        .boxed();
    let release_any = warp::path!("volumes" / String)
        .and(warp::delete())
        .and(who())
        .and(st())
        .then(|id, c, s| async move { respond(release_volume(c, None, id, s).await) })
        .boxed();
    let volumes = warp::path!("volumes")
        .and(warp::get())
        .and(who())
        .and(st())
        .then(|c: Caller, s: Arc<ApiState>| async move { respond(list_volumes(c, s).await) })
        .boxed();
    // Anything else under /v1 is authenticated too (401/403 before 404), so that the
    // answer to a caller without a credential says nothing about which routes exist.
    let unknown = who()
        .and_then(|_| async { Err::<Response, _>(warp::reject::not_found()) })
        .boxed();

    list_all
        .or(get)
        .unify()
        .or(put)
        .unify()
        .or(delete)
        .unify()
        .or(stat_route)
        .unify()
        .or(list_route)
        .unify()
        .or(read_route)
        .unify()
        .or(preload_route)
        .unify()
        .or(pin_route)
        .unify()
        .or(unpin_route)
        .unify()
        .or(usage_route)
        .unify()
        .or(acquire)
        .unify()
        .or(release)
        .unify()
        .or(release_any)
        .unify()
        .or(volumes)
        .unify()
        .or(unknown)
        .unify()
        .boxed()
}

/// The caller of a `/v1` request: the unix socket is `Local`; on TCP the bearer token says
/// who it is (401 without one, 403 for one nobody issued).
fn caller(access: Access) -> BoxedFilter<(Caller,)> {
    warp::header::optional::<String>("authorization")
        .and_then(move |header: Option<String>| {
            let access = access.clone();
            async move {
                match access {
                    Access::Local => Ok(Caller::Local),
                    Access::Tcp(auth) => auth
                        .authenticate(header.as_deref())
                        .await
                        .map_err(|e| warp::reject::custom(ApiRejection(e.status(), e.body()))),
                }
            }
        })
        .boxed()
}

#[derive(Debug)]
struct ApiRejection(StatusCode, ErrorBody);
impl warp::reject::Reject for ApiRejection {}

/// Turns warp's own rejections (no route, wrong method, bad query) into JSON errors.
async fn recover(rejection: Rejection) -> std::result::Result<Response, Infallible> {
    let (status, body) = if let Some(ApiRejection(status, body)) = rejection.find::<ApiRejection>()
    {
        (*status, body.clone())
    } else if rejection.is_not_found() {
        (
            StatusCode::NOT_FOUND,
            ErrorBody {
                error: "no such route; see docs/csi.md (Agent API) for the routes".into(),
                field: None,
            },
        )
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorBody {
                error: "method not allowed on this route".into(),
                field: None,
            },
        )
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        (
            StatusCode::BAD_REQUEST,
            ErrorBody {
                error: "the query string does not parse".into(),
                field: Some("query".into()),
            },
        )
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorBody {
                error: format!("request body larger than {MAX_BODY_BYTES} bytes"),
                field: Some("body".into()),
            },
        )
    } else {
        (
            StatusCode::BAD_REQUEST,
            ErrorBody {
                error: format!("request refused: {rejection:?}"),
                field: None,
            },
        )
    };
    Ok(json(status, &body))
}

/// The API served on the unix socket (`Access::Local`) or on TCP (`Access::Tcp`).
/// Health routes are open on both; `/v1` follows `access`.
pub fn api_routes(state: Arc<ApiState>, access: Access) -> BoxedFilter<(Response,)> {
    let v1 = warp::path("v1").and(v1_routes(state.clone(), access));
    health_routes(state)
        .or(v1)
        .unify()
        .recover(recover)
        .unify()
        .with(warp::trace::request())
        .map(Reply::into_response)
        .boxed()
}

/// The open port: `/healthz`, `/readyz` and `/metrics` (Prometheus text format).
pub fn metrics_routes(state: Arc<ApiState>) -> BoxedFilter<(Response,)> {
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_state(state.clone()))
        .map(|s: Arc<ApiState>| {
            let mut response = Response::new(s.agent.metrics().encode().into());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        });
    health_routes(state)
        .or(metrics)
        .unify()
        .recover(recover)
        .unify()
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_against_the_size() {
        assert_eq!(parse_range("bytes=0-99", 1000).unwrap(), (0, 100));
        assert_eq!(parse_range("bytes=900-", 1000).unwrap(), (900, 1000));
        assert_eq!(parse_range("bytes=-100", 1000).unwrap(), (900, 1000));
        assert_eq!(parse_range("bytes=990-5000", 1000).unwrap(), (990, 1000));
        assert_eq!(parse_range("bytes=-5000", 1000).unwrap(), (0, 1000));
        assert_eq!(
            parse_range("bytes=1000-", 1000).unwrap_err().status(),
            StatusCode::RANGE_NOT_SATISFIABLE
        );
        assert_eq!(
            parse_range("bytes=5-4", 1000).unwrap_err().status(),
            StatusCode::RANGE_NOT_SATISFIABLE
        );
        assert_eq!(
            parse_range("items=0-1", 1000).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            parse_range("bytes=0-1,5-6", 1000).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn dataset_bodies_take_names_from_the_url() {
        let body = br#"{"sources":[{"name":"local","uri":"file:///tmp"}]}"#;
        let config = parse_dataset_body("ml", "imagenet", body).unwrap();
        assert_eq!(
            (config.namespace.as_str(), config.name.as_str()),
            ("ml", "imagenet")
        );
        let err =
            parse_dataset_body("ml", "imagenet", br#"{"name":"other","sources":[]}"#).unwrap_err();
        assert_eq!(err.field().as_deref(), Some("name"));
        let err = parse_dataset_body("ml", "imagenet", b"[1]").unwrap_err();
        assert_eq!(err.field().as_deref(), Some("body"));
    }

    #[test]
    fn literal_globs_match_only_their_path() {
        let glob = literal_glob("/a/b*[1]{x}?.txt");
        let globs = PathGlobs::new(&[glob]).unwrap();
        assert!(globs.matches(&DatasetPath::parse("/a/b*[1]{x}?.txt").unwrap()));
        assert!(!globs.matches(&DatasetPath::parse("/a/bzz[1]{x}?.txt").unwrap()));
    }

    #[test]
    fn names_and_volume_ids_are_checked() {
        assert!(check_name("namespace", "ml-team.a").is_ok());
        for bad in ["", "ML", "-a", "a/b", "a%2Fb", ".."] {
            assert!(check_name("namespace", bad).is_err(), "{bad}");
        }
        assert!(check_volume_id("csi-0123abcd").is_ok());
        for bad in ["", "a/b", "x y", &"a".repeat(129)] {
            assert!(check_volume_id(bad).is_err(), "{bad}");
        }
    }
}
