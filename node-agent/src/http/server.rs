//! The server side of the agent's HTTP API (warp): the state handlers share, who may
//! call (per listener), the routing table of every area, and the JSON answers and
//! errors. The handlers live by area: `datasets`, `reads`,
//! `jobs` (what preload and pin Jobs call) and `volumes`.

use super::HttpError;
use super::auth::{Action, Caller, TcpAuth};
use super::types::{ErrorBody, HealthStatus};
use super::{datasets, jobs, migrations, peer, reads, volumes};
use crate::activity::ActivityBoard;
use crate::agent::Agent;
use crate::dataset::DatasetView;
use crate::mounts::MountRegistry;
use crate::{Error, Result};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// Largest JSON body accepted (dataset configs, path lists).
const MAX_BODY_BYTES: u64 = 1 << 20;

/// Everything the handlers share.
pub struct ApiState {
    pub agent: Arc<Agent>,
    pub mounts: Arc<MountRegistry>,
    /// Preload runs and source errors, for the StrataNode report.
    pub activity: Arc<ActivityBoard>,
    ready: AtomicBool,
    /// One lock per migration (`namespace/name/migration`): one run at a time.
    migration_runs: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ApiState {
    pub fn new(agent: Arc<Agent>, mounts: Arc<MountRegistry>) -> Arc<Self> {
        Arc::new(ApiState {
            agent,
            mounts,
            activity: Arc::default(),
            ready: AtomicBool::new(false),
            migration_runs: Default::default(),
        })
    }

    /// Called once the datasets of --datasets-dir are loaded.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The lock one run of a migration holds.
    pub(super) fn migration_lock(
        &self,
        namespace: &str,
        name: &str,
        migration: &str,
    ) -> Arc<tokio::sync::Mutex<()>> {
        let mut runs = self.migration_runs.lock().expect("migration runs");
        runs.entry(format!("{namespace}/{name}/{migration}"))
            .or_default()
            .clone()
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

pub(super) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

fn error_response(error: Error) -> Response {
    let status = error.status();
    if status.is_server_error() {
        tracing::warn!(error = %error, "request failed");
    } else {
        tracing::debug!(error = %error, "request refused");
    }
    json(status, &error.body())
}

pub(super) fn respond(result: Result<Response>) -> Response {
    result.unwrap_or_else(error_response)
}

/// Kubernetes names: what namespaces and Dataset names can be.
pub(super) fn check_name(field: &str, value: &str) -> Result<()> {
    let ok = strata_wire::names::is_kubernetes_name(value, strata_wire::names::MAX_NAME_LEN);
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("{value:?} is not a Kubernetes name (lower-case letters, digits, '-' and '.')"),
        ))
    }
}

impl ApiState {
    /// The dataset `namespace/name` for `caller` doing `action`: a job credential reaches
    /// only datasets of its own namespace that a live CachePolicy covers.
    pub(super) fn view_for(
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
            return Err(Error::Forbidden(format!(
                "dataset {namespace}/{name} is under no CachePolicy now, so no job credential of \
                 namespace {own} acts on it"
            )));
        }
        Ok(view)
    }

    pub(super) fn view(&self, namespace: &str, name: &str) -> Result<Arc<DatasetView>> {
        check_name("namespace", namespace)?;
        check_name("name", name)?;
        self.agent
            .dataset(namespace, name)
            .ok_or_else(|| Error::DatasetNotConfigured {
                namespace: namespace.to_string(),
                name: name.to_string(),
            })
    }
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

/// What every `/v1` route is built from: the state the handlers share and the caller.
#[derive(Clone)]
pub(super) struct V1 {
    state: Arc<ApiState>,
    access: Access,
}

impl V1 {
    pub(super) fn state(
        &self,
    ) -> impl Filter<Extract = (Arc<ApiState>,), Error = Infallible> + Clone + use<> {
        with_state(self.state.clone())
    }

    /// Put after the path and method, so that one request is authenticated once.
    pub(super) fn caller(&self) -> BoxedFilter<(Caller,)> {
        caller(self.access.clone())
    }
}

pub(super) fn query() -> impl Filter<Extract = (HashMap<String, String>,), Error = Rejection> + Clone
{
    warp::query::<HashMap<String, String>>()
}

/// A streamed answer of newline-delimited JSON: each line `lines` receives, until it closes
/// (progress of a preload or a migration).
pub(super) fn ndjson(lines: tokio::sync::mpsc::Receiver<Bytes>) -> Response {
    let stream = futures::stream::unfold(lines, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<Bytes, Infallible>(line), rx))
    });
    let mut response = warp::reply::stream(stream).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

pub(super) fn body() -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::body::content_length_limit(MAX_BODY_BYTES).and(warp::body::bytes())
}

fn v1_routes(state: Arc<ApiState>, access: Access) -> BoxedFilter<(Response,)> {
    let v1 = V1 { state, access };
    // Anything else under /v1 is authenticated too (401/403 before 404), so that the
    // answer to a caller without a credential says nothing about which routes exist.
    let unknown = v1
        .caller()
        .and_then(|_| async { Err::<Response, _>(warp::reject::not_found()) })
        .boxed();
    datasets::routes(&v1)
        .or(reads::routes(&v1))
        .unify()
        .or(jobs::routes(&v1))
        .unify()
        .or(migrations::routes(&v1))
        .unify()
        .or(volumes::routes(&v1))
        .unify()
        .or(peer::routes(&v1))
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
