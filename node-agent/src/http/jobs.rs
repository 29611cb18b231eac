//! What preload and pin Jobs call (and what a job credential may do): preload, pin, unpin
//! and usage of a dataset.

use super::auth::{Action, Caller};
use super::server::{ApiState, V1, body, json, ndjson, respond};
use super::types::{PathsRequest, PinAnswer, PreloadProgress};
use crate::config::PinRule;
use crate::glob::PathGlobs;
use crate::{Error, Result};
use bytes::Bytes;
use http::StatusCode;
use std::sync::Arc;
use std::time::Duration;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

/// How often a running preload reports progress.
const PRELOAD_REPORT_EVERY: Duration = Duration::from_millis(500);

fn paths_body(body: &Bytes) -> Result<PathsRequest> {
    let request: PathsRequest = serde_json::from_slice(body).map_err(|e| {
        Error::invalid(
            "body",
            format!("expected {{\"paths\": [\"/glob/**\"]}}: {e}"),
        )
    })?;
    if request.paths.is_empty() {
        return Err(Error::invalid(
            "paths",
            "give at least one path glob, e.g. \"/train/**\"",
        ));
    }
    PathGlobs::new(&request.paths).map_err(|e| Error::invalid("paths", e.to_string()))?;
    Ok(request)
}

/// The request's files: its globs and, if given, its `modifiedWithin` window.
fn selection(request: &PathsRequest) -> Result<PinRule> {
    let modified_within = match &request.modified_within {
        None => None,
        Some(within) => Some(
            crate::config::parse_duration(within)
                .map_err(|e| Error::invalid("modifiedWithin", e.to_string()))?,
        ),
    };
    Ok(PinRule {
        paths: request.paths.clone(),
        modified_within,
    })
}

/// A Job's name as the body gives it: the agent reports the run under it.
pub(super) fn check_job_name(job: &str) -> Result<()> {
    if job.is_empty()
        || job.len() > 253
        || !job
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
    {
        return Err(Error::invalid(
            "job",
            "must be a Kubernetes Job name (lowercase letters, digits, '-' and '.', at most 253)",
        ));
    }
    Ok(())
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
    let selection = selection(&request)?;
    if let Some(job) = &request.job {
        check_job_name(job)?;
    }
    let fetches = match request.concurrency {
        None => crate::dataset::PRELOAD_MAX_FETCHES,
        Some(n @ 1..=64) => n as usize,
        Some(n) => {
            return Err(Error::invalid(
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
    tracing::info!(dataset = %format!("{ns}/{name}"), files = %selection.describe(), "preload started");
    let placement = if request.here {
        crate::dataset::Placement::Here
    } else {
        crate::dataset::Placement::Owners
    };
    let mut task = tokio::spawn(async move {
        view.preload_selected_to(&selection, placement, fetches, move |p| {
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
            by_node: Default::default(),
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
            Ok(Err(e)) => matches!(e, strata_engine::Error::Source { .. }),
            Err(_) => false,
        };
        let last = match outcome {
            Ok(Ok(report)) => PreloadProgress {
                done: true,
                by_node: report.by_node.clone(),
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
    Ok(ndjson(lines_rx))
}

async fn pin(
    caller: Caller,
    ns: String,
    name: String,
    body: Bytes,
    state: Arc<ApiState>,
) -> Result<Response> {
    let view = state.view_for(&caller, Action::Pin, &ns, &name)?;
    let rule = selection(&paths_body(&body)?)?;
    let added = view.pin(rule.clone())?;
    Ok(json(
        StatusCode::OK,
        &PinAnswer {
            pins: view.pins(),
            changed: if added { vec![rule] } else { Vec::new() },
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
    let removed = view.unpin(&paths_body(&body)?.paths)?;
    Ok(json(
        StatusCode::OK,
        &PinAnswer {
            pins: view.pins(),
            changed: removed,
        },
    ))
}

async fn usage(caller: Caller, ns: String, name: String, state: Arc<ApiState>) -> Result<Response> {
    let view = state.view_for(&caller, Action::Usage, &ns, &name)?;
    Ok(json(StatusCode::OK, &view.usage()))
}

/// `POST /v1/datasets/{namespace}/{name}/preload|pin|unpin`, `GET .../usage`.
pub(super) fn routes(v1: &V1) -> BoxedFilter<(Response,)> {
    let preload_route = warp::path!("datasets" / String / String / "preload")
        .and(warp::post())
        .and(v1.caller())
        .and(body())
        .and(v1.state())
        .then(|ns, name, c, b, s| async move { respond(preload(c, ns, name, b, s).await) })
        .boxed();
    let pin_route = warp::path!("datasets" / String / String / "pin")
        .and(warp::post())
        .and(v1.caller())
        .and(body())
        .and(v1.state())
        .then(|ns, name, c, b, s| async move { respond(pin(c, ns, name, b, s).await) })
        .boxed();
    let unpin_route = warp::path!("datasets" / String / String / "unpin")
        .and(warp::post())
        .and(v1.caller())
        .and(body())
        .and(v1.state())
        .then(|ns, name, c, b, s| async move { respond(unpin(c, ns, name, b, s).await) })
        .boxed();
    let usage_route = warp::path!("datasets" / String / String / "usage")
        .and(warp::get())
        .and(v1.caller())
        .and(v1.state())
        .then(|ns, name, c, s| async move { respond(usage(c, ns, name, s).await) })
        .boxed();
    preload_route
        .or(pin_route)
        .unify()
        .or(unpin_route)
        .unify()
        .or(usage_route)
        .unify()
        .boxed()
}
