//! The Dataset controller: validate, check sources and credentials, resolve
//! the CachePolicy, hand the dataset to the agents (with its Migrations' targets, and
//! a switched Migration's source served from its target), create its PV and PVC, and
//! sum the nodes' reports into the status. A finalizer takes it all back.
//!
//! [`reconcile`] wraps everything in `kube::runtime::finalizer`: `apply` runs
//! the steps of a live Dataset in order (`apply.rs`), `cleanup` takes them back
//! on deletion (`cleanup.rs`).

mod agent_secret;
mod apply;
mod cleanup;
mod job_runs;
mod migrations;
mod policy;
mod source_access;
mod sources;
mod status;
mod volumes;

use std::sync::Arc;
use std::time::Instant;

use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, Event as FinalizerEvent, finalizer};
use kube::{Api, ResourceExt};
use strata_crds::{Dataset, DatasetStatus};
use tracing::{info, instrument, warn};

use crate::conditions;
use crate::context::Context;
use crate::{Error, Result};

pub use agent_secret::datasets_secret_skeleton;

/// The finalizer that holds a Dataset until its volumes and agent config are gone.
pub const FINALIZER: &str = "strata.dev/dataset-cleanup";
/// Controller name in metrics.
pub const CONTROLLER: &str = "dataset";
/// Requeue while something is wrong that may fix itself (Secret created later,
/// source back). Secrets are not watched: outside its namespace the operator
/// may only `get` named Secrets, never list or watch them.
const PROBLEM_REQUEUE: std::time::Duration = std::time::Duration::from_secs(30);
/// Requeue while waiting for the agents during deletion.
const RELEASE_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Reconciles one Dataset (wrapped in the finalizer).
#[instrument(skip_all, fields(dataset = %format!("{}/{}", ds.namespace().unwrap_or_default(), ds.name_any())))]
pub async fn reconcile(ds: Arc<Dataset>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let namespace = ds.namespace().unwrap_or_default();
    let object = format!("{namespace}/{}", ds.name_any());
    let api: Api<Dataset> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, ds, |event| async {
        match event {
            FinalizerEvent::Apply(ds) => apply::apply(&ds, &ctx).await,
            FinalizerEvent::Cleanup(ds) => cleanup::cleanup(&ds, &ctx).await,
        }
    })
    .await
    .map_err(|e| flatten(e, &object));
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    if result.is_ok() {
        ctx.succeeded(&object);
    }
    result
}

/// Counts the failure and picks when to retry.
pub fn error_policy(ds: Arc<Dataset>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(CONTROLLER, error.metric_reason());
    let object = format!("{}/{}", ds.namespace().unwrap_or_default(), ds.name_any());
    if matches!(error, Error::AwaitingNodeRelease { .. }) {
        info!(%object, %error, "waiting");
        return Action::requeue(RELEASE_POLL);
    }
    warn!(%object, %error, "reconcile failed");
    ctx.backoff(&object)
}

fn flatten(e: finalizer::Error<Error>, object: &str) -> Error {
    match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        finalizer::Error::AddFinalizer(source) | finalizer::Error::RemoveFinalizer(source) => {
            Error::kube(
                format!("updating the finalizer of Dataset {object}"),
                source,
            )
        }
        other => Error::Finalizer {
            object: object.to_string(),
            message: other.to_string(),
        },
    }
}

/// A problem found while checking the dataset, as a condition.
struct Problem {
    reason: &'static str,
    message: String,
}

impl Problem {
    /// Sets condition `type_` to False with this problem's reason and message.
    fn set_on(&self, status: &mut DatasetStatus, type_: &str) {
        set_condition(status, type_, false, self.reason, &self.message);
    }
}

/// Sets one condition of the status being built, for the generation it describes.
fn set_condition(
    status: &mut DatasetStatus,
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
) {
    let generation = status.observed_generation;
    conditions::set(
        &mut status.conditions,
        type_,
        ok,
        reason,
        message,
        generation,
    );
}
