//! The finalizer's cleanup of a deleted Dataset.

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use strata_crds::Dataset;
use tracing::info;

use super::{agent_secret, volumes};
use crate::context::Context;
use crate::{Error, Result};

/// Deletion: stop serving, wait (bounded) for the agents to drop the dataset,
/// then remove the PVC and PV.
pub(super) async fn cleanup(ds: &Dataset, ctx: &Context) -> Result<Action> {
    let namespace = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    agent_secret::remove_agent_config(ctx, &namespace, &name).await?;

    let usage = ctx.dataset_usage(ds);
    if !usage.nodes.is_empty() {
        let deleted_at = ds
            .metadata
            .deletion_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(0);
        let waited = Timestamp::now().as_second() - deleted_at;
        if waited < ctx.config.release_timeout.as_secs() as i64 {
            return Err(Error::AwaitingNodeRelease {
                dataset: format!("{namespace}/{name}"),
                nodes: usage.nodes,
            });
        }
        ctx.event(ds, true, "NodesDidNotRelease", format!(
            "Nodes {} still report the dataset after {:?}; removing its volumes anyway. Check the agents on those nodes.",
            usage.nodes.join(", "), ctx.config.release_timeout)).await;
    }

    volumes::delete_volumes(ctx, &namespace, &name).await?;
    ctx.event(
        ds,
        false,
        "Deleted",
        "Removed from the agents; PersistentVolume and claim deleted.".into(),
    )
    .await;
    info!("dataset cleaned up");
    Ok(Action::await_change())
}
