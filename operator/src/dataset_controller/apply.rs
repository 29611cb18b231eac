//! The reconcile of a live Dataset, as named steps run in order. Each step
//! writes its part of the status being built and returns the problem it found;
//! the problems together pick the phase, Ready and when to look again.

use kube::ResourceExt;
use kube::runtime::controller::Action;
use strata_crds::{Dataset, DatasetPhase, DatasetStatus, condition, format_bytes};

use super::source_access::{self, SourceAccess};
use super::{
    PROBLEM_REQUEUE, Problem, agent_secret, job_runs, migrations, policy, set_condition, sources,
    status, volumes,
};
use crate::Result;
use crate::agent_config;
use crate::conditions::reason;
use crate::context::Context;
use crate::node_reports::{NodeReportedError, WriteUsage};
use crate::policy_resolution::{Resolution, resolve};

/// Runs the steps of a live Dataset in order and writes the status they build.
pub(super) async fn apply(ds: &Dataset, ctx: &Context) -> Result<Action> {
    let old = ds.status.clone().unwrap_or_default();
    let mut status = DatasetStatus {
        conditions: old.conditions.clone(),
        observed_generation: ds.metadata.generation,
        ..DatasetStatus::default()
    };
    if let Err(e) = ds.validate() {
        return refuse_invalid_spec(ds, ctx, &old, status, &e).await;
    }
    accept_spec(&mut status);
    // From here on, the sources as served: a switched Migration's by its target.
    let served = migrations::served(ds, ctx);
    let access = source_access::read_source_access(&served, ctx).await?;
    let policies = policy::policies_in_namespace(ds, ctx);
    let resolution = resolve(ds, &policies);
    let policy_problem = policy::record_policy(&mut status, ds, &resolution);
    let source_problem = sources::check_sources(&served, ctx, &access, &old, &mut status).await;
    hand_to_agents(&served, ctx, &access, &resolution).await?;
    let volume_problem = volumes::apply_volumes(ds, ctx).await?;
    record_volume(&mut status, volume_problem.as_ref());
    let usage = ctx.dataset_usage(ds);
    usage.write_into(&mut status, ds.spec.is_writable());
    let node_problem = record_node_health(&mut status, &usage.errors);
    let upload_problem = record_upload_health(&mut status, ds, usage.writes.as_ref());
    publish_conflicts(ds, ctx, usage.writes.as_ref()).await;
    job_runs::record_job_runs(&mut status, ctx, ds, &usage.jobs);
    let problems = Problems {
        credentials: access.problem,
        sources: source_problem,
        policy: policy_problem,
        nodes: node_problem,
        uploads: upload_problem,
        volume: volume_problem,
    };
    record_phase(&mut status, &problems, &usage.nodes);
    status::finish(ds, ctx, &old, status).await?;
    Ok(if problems.may_fix_itself() {
        Action::requeue(PROBLEM_REQUEUE)
    } else {
        Action::requeue(ctx.config.resync_interval)
    })
}

/// An invalid spec: says so in SpecValid and Ready, drops the conditions that
/// describe a servable dataset, and takes the dataset off the agents.
async fn refuse_invalid_spec(
    ds: &Dataset,
    ctx: &Context,
    old: &DatasetStatus,
    mut status: DatasetStatus,
    error: &impl std::fmt::Display,
) -> Result<Action> {
    let message = format!("{error}. Fix the spec; the dataset is not served until then.");
    set_condition(
        &mut status,
        condition::SPEC_VALID,
        false,
        reason::INVALID_SPEC,
        &message,
    );
    set_condition(
        &mut status,
        condition::READY,
        false,
        reason::INVALID_SPEC,
        &message,
    );
    for stale in [
        condition::SOURCES_REACHABLE,
        condition::POLICY_RESOLVED,
        condition::PRELOADING,
        condition::NODES_HEALTHY,
        condition::UPLOADS_HEALTHY,
        condition::VOLUME_UP_TO_DATE,
    ] {
        status.conditions.retain(|c| c.type_ != stale);
    }
    status.phase = Some(DatasetPhase::Failed);
    let namespace = ds.namespace().unwrap_or_default();
    agent_secret::remove_agent_config(ctx, &namespace, &ds.name_any()).await?;
    status::finish(ds, ctx, old, status).await?;
    Ok(Action::requeue(ctx.config.resync_interval))
}

/// SpecValid: the spec passed validation.
fn accept_spec(status: &mut DatasetStatus) {
    set_condition(
        status,
        condition::SPEC_VALID,
        true,
        reason::VALID,
        "The spec is valid.",
    );
}

/// Hands the dataset to the agents. With unusable credentials the last
/// good config stays in place, so running pods keep working.
async fn hand_to_agents(
    ds: &Dataset,
    ctx: &Context,
    access: &SourceAccess,
    resolution: &Resolution<'_>,
) -> Result<()> {
    if access.problem.is_some() {
        return Ok(());
    }
    let mut config = agent_config::build(ds, resolution.policy(), &access.credentials);
    config.migrations = migrations::copies(ds, ctx).await?;
    let namespace = ds.namespace().unwrap_or_default();
    agent_secret::write_agent_config(
        ctx,
        &namespace,
        &ds.name_any(),
        &agent_config::to_yaml(&config)?,
    )
    .await
}

/// NodesHealthy from the source errors live nodes report; returns the problem.
fn record_node_health(status: &mut DatasetStatus, errors: &[NodeReportedError]) -> Option<Problem> {
    let problem = node_errors_problem(errors);
    match &problem {
        Some(p) => p.set_on(status, condition::NODES_HEALTHY),
        None => set_condition(
            status,
            condition::NODES_HEALTHY,
            true,
            reason::NO_NODE_ERRORS,
            "No live node reports an error reading the sources.",
        ),
    }
    problem
}

/// VolumeUpToDate: whether the PV and the claim have the access modes the write
/// mode asks for.
fn record_volume(status: &mut DatasetStatus, problem: Option<&Problem>) {
    match problem {
        Some(p) => p.set_on(status, condition::VOLUME_UP_TO_DATE),
        None => set_condition(
            status,
            condition::VOLUME_UP_TO_DATE,
            true,
            reason::VOLUME_UP_TO_DATE,
            "The PersistentVolume and claim have the access modes the write mode asks for.",
        ),
    }
}

/// UploadsHealthy from the upload errors live nodes report, for a dataset with a
/// writable source or with writes a node still reports; otherwise the condition is
/// dropped. Returns the problem.
fn record_upload_health(
    status: &mut DatasetStatus,
    ds: &Dataset,
    writes: Option<&WriteUsage>,
) -> Option<Problem> {
    if !ds.spec.is_writable() && writes.is_none() {
        status
            .conditions
            .retain(|c| c.type_ != condition::UPLOADS_HEALTHY);
        return None;
    }
    let writes = writes.cloned().unwrap_or_default();
    let problem = upload_errors_problem(&writes);
    match &problem {
        Some(p) => p.set_on(status, condition::UPLOADS_HEALTHY),
        None => set_condition(
            status,
            condition::UPLOADS_HEALTHY,
            true,
            reason::NO_UPLOAD_ERRORS,
            format!(
                "No live node reports a failed upload. {}{}",
                pending_summary(&writes),
                conflicts_summary(&writes)
            ),
        ),
    }
    problem
}

/// An `UploadConflict` event for each conflict a node reports that was not published
/// yet (one per node and conflict; an operator that starts again publishes each node's
/// last one once more).
async fn publish_conflicts(ds: &Dataset, ctx: &Context, writes: Option<&WriteUsage>) {
    let Some(writes) = writes else { return };
    for (node, c) in &writes.conflicts_met {
        let key = format!(
            "{}/{}/{node}",
            ds.metadata.namespace.as_deref().unwrap_or_default(),
            ds.metadata.name.as_deref().unwrap_or_default()
        );
        if !ctx.conflict_is_new(&key, &c.time) {
            continue;
        }
        ctx.event(
            ds,
            true,
            reason::UPLOAD_CONFLICT,
            format!(
                "{} changed at the source while node {node} held changes to it (found at {}): the node's version was uploaded and the source's kept as {}. Compare the two and delete the one not wanted.",
                c.path, c.time.0, c.kept_as
            ),
        )
        .await;
    }
}

/// What is waiting to be uploaded, as a sentence.
fn pending_summary(writes: &WriteUsage) -> String {
    if writes.pending_files == 0 && writes.pending_bytes == 0 {
        return "Every reported write is at the sources.".to_string();
    }
    let since = writes
        .oldest_pending
        .as_ref()
        .map(|t| format!(", the oldest change made at {}", t.0))
        .unwrap_or_default();
    format!(
        "{} in {} file(s) not yet uploaded{since}.",
        format_bytes(writes.pending_bytes),
        writes.pending_files
    )
}

/// Uploads that met an upstream change, as a sentence (empty when none).
fn conflicts_summary(writes: &WriteUsage) -> String {
    if writes.conflicts == 0 {
        return String::new();
    }
    format!(
        " {} upload(s) since the agents started found the object changed at the source: the local version was uploaded and the upstream one kept as <name>.conflict-<UTC time>.",
        writes.conflicts
    )
}

/// Nodes reporting failed uploads, as the UploadsHealthy problem: names the nodes
/// (the first few), the first node's error and what waits to be uploaded.
fn upload_errors_problem(writes: &WriteUsage) -> Option<Problem> {
    const NAMED: usize = 5;
    let first = writes.errors.first()?;
    let nodes: Vec<&str> = writes
        .errors
        .iter()
        .take(NAMED)
        .map(|e| e.node.as_str())
        .collect();
    let more = writes.errors.len().saturating_sub(NAMED);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    Some(Problem {
        reason: reason::UPLOADS_FAILING,
        message: format!(
            "{} node(s) fail to upload writes to the sources: {}{more}. First, on {}: {}. {} Writes keep landing on the nodes and the uploads are retried; check the source's endpoint, the credentials' write permission and the network path from those nodes. The condition clears once an upload from each of them succeeds.{}",
            writes.errors.len(),
            nodes.join(", "),
            first.node,
            first.message,
            pending_summary(writes),
            conflicts_summary(writes)
        ),
    })
}

/// Nodes reporting source errors, as the NodesHealthy problem: names the nodes
/// (the first few) and the first node's error.
fn node_errors_problem(errors: &[NodeReportedError]) -> Option<Problem> {
    const NAMED: usize = 5;
    let first = errors.first()?;
    let nodes: Vec<&str> = errors.iter().take(NAMED).map(|e| e.node.as_str()).collect();
    let more = errors.len().saturating_sub(NAMED);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    Some(Problem {
        reason: reason::NODE_REPORTS_ERRORS,
        message: format!(
            "{} node(s) fail to read the sources: {}{more}. First, on {}: {}. Check the endpoint, credentials and the network path from those nodes; the condition clears once their agents read the sources again.",
            errors.len(),
            nodes.join(", "),
            first.node,
            first.message
        ),
    })
}

/// What the steps found wrong, by the condition that reports it.
struct Problems {
    credentials: Option<Problem>,
    sources: Option<Problem>,
    policy: Option<Problem>,
    nodes: Option<Problem>,
    uploads: Option<Problem>,
    volume: Option<Problem>,
}

impl Problems {
    /// Whether something is wrong that may fix itself soon (a Secret created
    /// later, a source back), so the dataset is looked at again before the resync.
    fn may_fix_itself(&self) -> bool {
        self.credentials.is_some()
            || self.sources.is_some()
            || self.policy.is_some()
            || self.volume.is_some()
    }
}

/// The phase and Ready: unusable credentials fail the dataset, other problems
/// degrade it, and without a node report it is still pending.
fn record_phase(status: &mut DatasetStatus, problems: &Problems, serving_nodes: &[String]) {
    let (phase, ready_reason, ready_message) = if let Some(p) = &problems.credentials {
        (DatasetPhase::Failed, p.reason, p.message.clone())
    } else if let Some(p) = problems
        .sources
        .as_ref()
        .or(problems.policy.as_ref())
        .or(problems.nodes.as_ref())
        .or(problems.uploads.as_ref())
        .or(problems.volume.as_ref())
    {
        (DatasetPhase::Degraded, p.reason, p.message.clone())
    } else if serving_nodes.is_empty() {
        (DatasetPhase::Pending, reason::WAITING_FOR_NODES,
            "The agents were given the dataset; no node has reported it yet (is the strata-node DaemonSet running?).".to_string())
    } else {
        (
            DatasetPhase::Ready,
            reason::READY,
            format!("Served by {} node(s).", serving_nodes.len()),
        )
    };
    status.phase = Some(phase);
    set_condition(
        status,
        condition::READY,
        phase == DatasetPhase::Ready,
        ready_reason,
        ready_message,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions;

    #[test]
    fn node_errors_name_the_nodes_and_the_first_error() {
        assert!(node_errors_problem(&[]).is_none());
        let errors: Vec<_> = (0..7)
            .map(|i| NodeReportedError {
                node: format!("node-{i}"),
                message: format!("source a: connection refused ({i})"),
            })
            .collect();
        let p = node_errors_problem(&errors).unwrap();
        assert_eq!(p.reason, "NodeReportsErrors");
        assert!(
            p.message.starts_with(
                "7 node(s) fail to read the sources: node-0, node-1, node-2, node-3, node-4 and 2 more. First, on node-0: source a: connection refused (0)."
            ),
            "{}",
            p.message
        );
    }

    fn writable(mode: &str) -> Dataset {
        let mut ds: Dataset = serde_json::from_value(serde_json::json!({
            "apiVersion": "strata.dev/v1alpha1", "kind": "Dataset",
            "metadata": {"name": "out", "namespace": "ml"},
            "spec": {"sources": [{"name": "out", "uri": "s3://b/out/", "mountPath": "/"}]},
        }))
        .unwrap();
        if !mode.is_empty() {
            ds.spec.sources[0].write_mode =
                serde_json::from_value(serde_json::json!(mode)).unwrap();
        }
        ds
    }

    fn upload_condition(status: &DatasetStatus) -> Option<(String, String, String)> {
        conditions::find(&status.conditions, condition::UPLOADS_HEALTHY)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    }

    #[test]
    fn upload_errors_name_the_nodes_the_error_and_what_is_pending() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        use k8s_openapi::jiff::Timestamp;
        let writes = WriteUsage {
            pending_files: 3,
            pending_bytes: 5 << 20,
            oldest_pending: Some(Time(Timestamp::from_second(1_700_000_000).unwrap())),
            failures: 4,
            conflicts: 1,
            errors: vec![NodeReportedError {
                node: "node-b".into(),
                message: "upload of /out/x.bin to source out: connection refused".into(),
            }],
            conflicts_met: vec![],
        };
        let mut status = DatasetStatus::default();
        let problem = record_upload_health(&mut status, &writable("WriteBack"), Some(&writes));
        assert_eq!(problem.unwrap().reason, "UploadsFailing");
        let (ok, reason, message) = upload_condition(&status).unwrap();
        assert_eq!((ok.as_str(), reason.as_str()), ("False", "UploadsFailing"));
        assert!(
            message.starts_with(
                "1 node(s) fail to upload writes to the sources: node-b. First, on node-b: upload of /out/x.bin to source out: connection refused. 5Mi in 3 file(s) not yet uploaded, the oldest change made at 2023-11-14T22:13:20Z."
            ),
            "{message}"
        );
        assert!(message.contains("conflict-<UTC time>"), "{message}");

        // Once uploads succeed the condition turns True and says what still waits.
        let healthy = WriteUsage {
            errors: vec![],
            conflicts: 0,
            ..writes
        };
        assert!(
            record_upload_health(&mut status, &writable("WriteBack"), Some(&healthy)).is_none()
        );
        let (ok, reason, message) = upload_condition(&status).unwrap();
        assert_eq!((ok.as_str(), reason.as_str()), ("True", "NoUploadErrors"));
        assert!(
            message.contains("5Mi in 3 file(s) not yet uploaded"),
            "{message}"
        );
    }

    #[test]
    fn upload_health_only_where_there_are_writes() {
        let mut status = DatasetStatus::default();
        assert!(record_upload_health(&mut status, &writable("WriteThrough"), None).is_none());
        let (ok, _, message) = upload_condition(&status).unwrap();
        assert_eq!(ok, "True");
        assert!(
            message.ends_with("Every reported write is at the sources."),
            "{message}"
        );
        // The sources became read-only: the condition goes, unless a node still reports writes.
        record_upload_health(&mut status, &writable(""), None);
        assert_eq!(upload_condition(&status), None);
        record_upload_health(&mut status, &writable(""), Some(&WriteUsage::default()));
        assert!(upload_condition(&status).is_some());
    }

    #[test]
    fn failing_uploads_degrade_the_dataset() {
        let mut status = DatasetStatus::default();
        let problems = Problems {
            credentials: None,
            sources: None,
            policy: None,
            nodes: None,
            uploads: Some(Problem {
                reason: reason::UPLOADS_FAILING,
                message: "1 node(s) fail to upload".into(),
            }),
            volume: None,
        };
        record_phase(&mut status, &problems, &["node-a".to_string()]);
        assert_eq!(status.phase, Some(DatasetPhase::Degraded));
        let ready = conditions::find(&status.conditions, condition::READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "UploadsFailing")
        );
    }
}
