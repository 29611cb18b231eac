//! The reconcile of a live Dataset, as named steps run in order. Each step
//! writes its part of the status being built and returns the problem it found;
//! the problems together pick the phase, Ready and when to look again.

use kube::ResourceExt;
use kube::runtime::controller::Action;
use strata_crds::{Dataset, DatasetPhase, DatasetStatus, condition};

use super::source_access::{self, SourceAccess};
use super::{
    PROBLEM_REQUEUE, Problem, agent_secret, job_runs, policy, set_condition, sources, status,
    volumes,
};
use crate::Result;
use crate::agent_config;
use crate::conditions::reason;
use crate::context::Context;
use crate::node_reports::NodeReportedError;
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
    let access = source_access::read_source_access(ds, ctx).await?;
    let policies = policy::policies_in_namespace(ds, ctx);
    let resolution = resolve(ds, &policies);
    let policy_problem = policy::record_policy(&mut status, ds, &resolution);
    let source_problem = sources::check_sources(ds, ctx, &access, &old, &mut status).await;
    hand_to_agents(ds, ctx, &access, &resolution).await?;
    volumes::apply_volumes(ds, ctx).await?;
    let usage = ctx.dataset_usage(ds);
    usage.write_into(&mut status);
    let node_problem = record_node_health(&mut status, &usage.errors);
    job_runs::record_job_runs(&mut status, ctx, ds, &usage.jobs);
    let problems = Problems {
        credentials: access.problem,
        sources: source_problem,
        policy: policy_problem,
        nodes: node_problem,
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
    let config = agent_config::build(ds, resolution.policy(), &access.credentials);
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
}

impl Problems {
    /// Whether something is wrong that may fix itself soon (a Secret created
    /// later, a source back), so the dataset is looked at again before the resync.
    fn may_fix_itself(&self) -> bool {
        self.credentials.is_some() || self.sources.is_some() || self.policy.is_some()
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
}
