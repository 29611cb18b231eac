//! Writing the Dataset's status (server-side apply, field manager
//! `strata-operator`) and the events for the conditions that changed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use strata_crds::{Dataset, DatasetStatus, condition};

use crate::conditions::{self, reason};
use crate::context::{Context, MANAGER};
use crate::{Error, Result};

/// Emits events for changed conditions and writes the status when it changed
/// (or the last sync is older than the resync interval). Skipping identical
/// writes matters: every write is a watch event that reconciles again.
pub(super) async fn finish(
    ds: &Dataset,
    ctx: &Context,
    old: &DatasetStatus,
    mut status: DatasetStatus,
) -> Result<()> {
    announce(ds, ctx, &old.conditions, &status.conditions).await;
    let now = Timestamp::now();
    let mut a = old.clone();
    let mut b = status.clone();
    a.last_sync_time = None;
    b.last_sync_time = None;
    let same = conditions::same(&a.conditions, &b.conditions) && {
        a.conditions.clear();
        b.conditions.clear();
        a == b
    };
    let fresh = old.last_sync_time.as_ref().is_some_and(|t| {
        now.as_second() - t.0.as_second() < ctx.config.resync_interval.as_secs() as i64
    });
    if same && fresh {
        return Ok(());
    }
    status.last_sync_time = Some(Time(now));
    let namespace = ds.namespace().unwrap_or_default();
    let api: Api<Dataset> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = json!({
        "apiVersion": "strata.dev/v1alpha1",
        "kind": "Dataset",
        "status": status,
    });
    api.patch_status(
        &ds.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await
    .map_err(|e| {
        Error::kube(
            format!(
                "writing the status of Dataset {namespace}/{}",
                ds.name_any()
            ),
            e,
        )
    })?;
    Ok(())
}

/// One event per condition whose status or reason changed.
async fn announce(ds: &Dataset, ctx: &Context, old: &[Condition], new: &[Condition]) {
    for c in new {
        let before = conditions::find(old, &c.type_);
        if before.is_some_and(|b| b.status == c.status && b.reason == c.reason) {
            continue;
        }
        let ok = c.status == "True";
        // Only the Ready flip is worth a Normal event; the others only when
        // they fail. Waiting for the first node report is a normal state.
        if (ok && c.type_ != condition::READY)
            || c.reason == reason::WAITING_FOR_NODES
            || c.type_ == condition::PRELOADING
        {
            continue;
        }
        if !ok {
            ctx.metrics
                .dataset_problems
                .get_or_create(&crate::metrics::ReasonLabel {
                    reason: c.reason.clone(),
                })
                .inc();
        }
        ctx.event(ds, !ok, &c.reason, c.message.clone()).await;
    }
}
