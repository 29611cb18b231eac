//! What a Migration's Job calls: `POST /v1/datasets/{namespace}/{name}/migrations/{migration}`
//! copies a path of one of the dataset's sources to the migration's target (the operator
//! hands both to the agents with the dataset), answering with progress lines.

use super::auth::{Action, Caller};
use super::jobs::check_job_name;
use super::server::{ApiState, V1, body, ndjson, respond};
use super::types::{MigrationProgress, MigrationRequest};
use crate::{Error, Result};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use strata_engine::migrate::{CopyOptions, CopyProgress, copy_tree};
use strata_engine::source::Source;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

/// How often a running migration reports progress.
const REPORT_EVERY: Duration = Duration::from_secs(1);

fn to_api(p: &CopyProgress) -> MigrationProgress {
    MigrationProgress {
        objects_done: p.objects_done,
        objects_total: p.objects_total,
        objects_skipped: p.objects_skipped,
        bytes_done: p.bytes_done,
        bytes_total: p.bytes_total,
        bytes_copied: p.bytes_copied,
        elapsed_seconds: p.elapsed_seconds,
        done: false,
        error: None,
    }
}

/// The run's numbers as a job run records them (objects as files).
fn as_job_progress(p: &MigrationProgress) -> super::types::PreloadProgress {
    super::types::PreloadProgress {
        files_done: p.objects_done,
        files_total: p.objects_total,
        bytes_done: p.bytes_done,
        bytes_total: p.bytes_total,
        ..Default::default()
    }
}

async fn migrate(
    caller: Caller,
    ns: String,
    name: String,
    migration: String,
    body: Bytes,
    state: Arc<ApiState>,
) -> Result<Response> {
    caller.may(Action::Migrate, Some(&ns))?;
    let view = state.view(&ns, &name)?;
    let config = state.agent.migration(&ns, &name, &migration).ok_or_else(|| {
        Error::invalid(
            "migration",
            format!(
                "dataset {ns}/{name} has no migration {migration:?} on this agent (the operator \
                 hands a Migration to the agents with its dataset while it exists)"
            ),
        )
    })?;
    let request: MigrationRequest = if body.is_empty() {
        MigrationRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::invalid("body", format!("expected {{\"job\": \"NAME\"}}: {e}")))?
    };
    if let Some(job) = &request.job {
        check_job_name(job)?;
    }
    let from = view
        .sources()
        .iter()
        .find(|s| s.name() == config.source)
        .cloned()
        .ok_or_else(|| {
            Error::invalid(
                "migration",
                format!("source {:?} is not a source of {ns}/{name}", config.source),
            )
        })?;
    let to = Arc::new(Source::new(
        &config.target,
        &format!("{ns}/{name}/migration/{migration}"),
        state.agent.metrics().clone(),
    )?);
    // One run of a migration at a time on this agent: a second request (the Job's pod
    // started again while the first run goes on) waits for it, then finds its objects
    // copied and only checks them.
    let one_run = state.migration_lock(&ns, &name, &migration);
    let run = request
        .job
        .as_deref()
        .map(|job| state.activity.start_run(&ns, &name, job));
    let (progress_tx, mut progress_rx) = tokio::sync::watch::channel(None::<MigrationProgress>);
    let (lines_tx, lines_rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let rel = config.path.trim_matches('/').to_string();
    let options = CopyOptions {
        concurrency: config.concurrency,
    };
    let id = format!("{ns}/{name}");
    let mut task = tokio::spawn(async move {
        let _one_run = one_run.lock_owned().await;
        tracing::info!(dataset = %id, %migration, path = %rel, "migration started");
        copy_tree(&from, &to, &rel, &options, move |p| {
            let _ = progress_tx.send(Some(to_api(p)));
        })
        .await
    });
    // Reports every REPORT_EVERY, then a final line. The copy goes on if the client goes
    // away: what it copies is not copied again by the next run.
    tokio::spawn(async move {
        let line = |p: &MigrationProgress| {
            let mut text = serde_json::to_vec(p).unwrap_or_default();
            text.push(b'\n');
            Bytes::from(text)
        };
        let mut ticker = tokio::time::interval(REPORT_EVERY);
        let outcome = loop {
            tokio::select! {
                outcome = &mut task => break outcome,
                _ = ticker.tick() => {
                    if progress_rx.has_changed().unwrap_or(false) {
                        let current = progress_rx.borrow_and_update().clone();
                        if let Some(p) = current {
                            if let Some(run) = &run {
                                run.progress(&as_job_progress(&p));
                            }
                            let _ = lines_tx.send(line(&p)).await;
                        }
                    }
                }
            }
        };
        let last = match outcome {
            Ok(Ok(done)) => MigrationProgress {
                done: true,
                ..to_api(&done)
            },
            Ok(Err(e)) => MigrationProgress {
                done: true,
                error: Some(e.to_string()),
                ..progress_rx.borrow().clone().unwrap_or_default()
            },
            Err(e) => MigrationProgress {
                done: true,
                error: Some(format!("migration task failed: {e}")),
                ..progress_rx.borrow().clone().unwrap_or_default()
            },
        };
        tracing::info!(objects = last.objects_done, skipped = last.objects_skipped,
            bytes = last.bytes_done, error = ?last.error, "migration finished");
        if let Some(run) = run {
            run.finish(&as_job_progress(&last), last.error.as_deref());
        }
        let _ = lines_tx.send(line(&last)).await;
    });
    Ok(ndjson(lines_rx))
}

/// `POST /v1/datasets/{namespace}/{name}/migrations/{migration}`.
pub(super) fn routes(v1: &V1) -> BoxedFilter<(Response,)> {
    warp::path!("datasets" / String / String / "migrations" / String)
        .and(warp::post())
        .and(v1.caller())
        .and(body())
        .and(v1.state())
        .then(|ns, name, migration, c, b, s| async move {
            respond(migrate(c, ns, name, migration, b, s).await)
        })
        .boxed()
}
