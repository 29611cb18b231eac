//! The CachePolicy controller: each preload rule becomes a Job (or a CronJob
//! with a schedule), each pin rule a Job (one per node for `replicas: All`),
//! for every dataset the policy applies to. Jobs whose rule changed or whose
//! dataset left are deleted; the status lists datasets and last runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use strata_crds::{CachePolicy, CachePolicyStatus, Dataset, JobKind, Replicas, condition};
use tracing::{instrument, warn};

use crate::conditions::{self, reason};
use crate::context::{Context, MANAGER};
use crate::jobs::{self, DesiredJob, JobRequest, LABEL_POLICY};
use crate::policy_resolution::{Resolution, resolve};
use crate::{Error, Result};

/// Controller name in metrics.
pub const CONTROLLER: &str = "cachepolicy";

/// Reconciles one CachePolicy. Children are owned by it, so deleting the
/// policy lets the garbage collector remove them; no finalizer needed.
#[instrument(skip_all, fields(policy = %format!("{}/{}", policy.namespace().unwrap_or_default(), policy.name_any())))]
pub async fn reconcile(policy: Arc<CachePolicy>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let object = format!(
        "policy:{}/{}",
        policy.namespace().unwrap_or_default(),
        policy.name_any()
    );
    let result = apply(&policy, &ctx).await;
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    if result.is_ok() {
        ctx.succeeded(&object);
    }
    result
}

/// Counts the failure and picks when to retry.
pub fn error_policy(policy: Arc<CachePolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(CONTROLLER, error.metric_reason());
    let object = format!(
        "policy:{}/{}",
        policy.namespace().unwrap_or_default(),
        policy.name_any()
    );
    warn!(%object, %error, "reconcile failed");
    ctx.backoff(&object)
}

async fn apply(policy: &CachePolicy, ctx: &Context) -> Result<Action> {
    if policy.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let generation = policy.metadata.generation;
    let old = policy.status.clone().unwrap_or_default();
    let mut status = CachePolicyStatus {
        observed_generation: generation,
        conditions: old.conditions.clone(),
        ..CachePolicyStatus::default()
    };

    if let Err(e) = policy.validate() {
        let message = format!("{e}. Fix the spec; its jobs are left as they are until then.");
        conditions::set(
            &mut status.conditions,
            condition::READY,
            false,
            reason::INVALID_SPEC,
            &message,
            generation,
        );
        if conditions::find(&old.conditions, condition::READY)
            .is_none_or(|c| c.reason != reason::INVALID_SPEC)
        {
            ctx.event(policy, true, reason::INVALID_SPEC, message).await;
        }
        write_status(policy, ctx, &old, status).await?;
        return Ok(Action::requeue(ctx.config.resync_interval));
    }

    // Which datasets this policy governs.
    let datasets = Api::<Dataset>::namespaced(ctx.client.clone(), &namespace)
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube(format!("listing Datasets in {namespace}"), e))?
        .items;
    let policies = Api::<CachePolicy>::namespaced(ctx.client.clone(), &namespace)
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube(format!("listing CachePolicies in {namespace}"), e))?
        .items;
    let governed: Vec<&Dataset> = datasets
        .iter()
        .filter(|d| d.metadata.deletion_timestamp.is_none() && d.validate().is_ok())
        .filter(|d| matches!(resolve(d, &policies), Resolution::Found { policy: p, .. } if p.name_any() == name))
        .collect();

    // What should run.
    let live_nodes: BTreeSet<String> = ctx
        .live_nodes()
        .iter()
        .map(|n| n.spec.node_name.clone())
        .collect();
    let default_replicas = policy.spec.replicas().unwrap_or(Replicas::All);
    let mut desired: Vec<DesiredJob> = Vec::new();
    for ds in &governed {
        for (i, rule) in policy.spec.preload.iter().enumerate() {
            let req = JobRequest {
                policy,
                dataset: ds,
                kind: JobKind::Preload,
                rule: i as i32,
                extra_args: jobs::preload_args(rule),
                paths: &rule.paths,
                node: None,
                schedule: rule.schedule.as_deref(),
            };
            desired.push(jobs::desired_job(&req, &ctx.job_settings));
        }
        for (i, rule) in policy.spec.pin.iter().enumerate() {
            let replicas = rule
                .replicas
                .as_ref()
                .map(Replicas::parse)
                .transpose()
                .ok()
                .flatten()
                .unwrap_or(default_replicas);
            match replicas {
                Replicas::All => {
                    for node in &live_nodes {
                        let req = JobRequest {
                            policy,
                            dataset: ds,
                            kind: JobKind::Pin,
                            rule: i as i32,
                            extra_args: jobs::pin_args(rule),
                            paths: &rule.paths,
                            node: Some(node),
                            schedule: None,
                        };
                        desired.push(jobs::desired_job(&req, &ctx.job_settings));
                    }
                }
                Replicas::Count(_) => {
                    let req = JobRequest {
                        policy,
                        dataset: ds,
                        kind: JobKind::Pin,
                        rule: i as i32,
                        extra_args: jobs::pin_args(rule),
                        paths: &rule.paths,
                        node: None,
                        schedule: None,
                    };
                    desired.push(jobs::desired_job(&req, &ctx.job_settings));
                }
            }
        }
    }

    let params = PatchParams::apply(MANAGER).force();
    let job_api: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let cron_api: Api<CronJob> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut created = 0usize;
    for job in &desired {
        let name = job.name();
        match job {
            DesiredJob::Once(j) => {
                if job_api
                    .get_opt(&name)
                    .await
                    .map_err(|e| Error::kube(format!("reading Job {namespace}/{name}"), e))?
                    .is_none()
                {
                    job_api
                        .patch(&name, &params, &Patch::Apply(j))
                        .await
                        .map_err(|e| Error::kube(format!("creating Job {namespace}/{name}"), e))?;
                    created += 1;
                }
            }
            DesiredJob::Scheduled(c) => {
                cron_api
                    .patch(&name, &params, &Patch::Apply(c))
                    .await
                    .map_err(|e| Error::kube(format!("applying CronJob {namespace}/{name}"), e))?;
            }
        }
    }

    // Remove what no rule asks for any more (changed rules, departed datasets or nodes).
    let wanted: BTreeSet<String> = desired.iter().map(DesiredJob::name).collect();
    let selector = ListParams::default().labels(&format!("{LABEL_POLICY}={name}"));
    let existing_jobs = job_api
        .list(&selector)
        .await
        .map_err(|e| Error::kube(format!("listing Jobs of policy {namespace}/{name}"), e))?
        .items;
    let existing_crons = cron_api
        .list(&selector)
        .await
        .map_err(|e| Error::kube(format!("listing CronJobs of policy {namespace}/{name}"), e))?
        .items;
    let mut removed = 0usize;
    for job in existing_jobs
        .iter()
        .filter(|j| owned_by(*j, policy) && !jobs::created_by_cron_job(j))
    {
        if !wanted.contains(&job.name_any()) {
            delete_ignoring_missing(&job_api, &job.name_any()).await?;
            removed += 1;
        }
    }
    for cron in existing_crons.iter().filter(|c| owned_by(*c, policy)) {
        if !wanted.contains(&cron.name_any()) {
            delete_ignoring_missing(&cron_api, &cron.name_any()).await?;
            removed += 1;
        }
    }
    if created > 0 || removed > 0 {
        ctx.event(
            policy,
            false,
            "JobsUpdated",
            format!(
                "Created {created} and removed {removed} preload/pin job(s); {} wanted.",
                wanted.len()
            ),
        )
        .await;
    }

    // Status: datasets and the last run of each rule.
    let mut names: Vec<String> = governed.iter().map(|d| d.name_any()).collect();
    names.sort();
    status.dataset_count = Some(i32::try_from(names.len()).unwrap_or(i32::MAX));
    status.datasets = names;
    let current_jobs: BTreeMap<String, &Job> =
        existing_jobs.iter().map(|j| (j.name_any(), j)).collect();
    let current_crons: BTreeMap<String, &CronJob> =
        existing_crons.iter().map(|c| (c.name_any(), c)).collect();
    for job in &desired {
        let run = match job {
            DesiredJob::Once(j) => current_jobs
                .get(&job.name())
                .map_or_else(|| jobs::job_run(j), |j| jobs::job_run(j)),
            DesiredJob::Scheduled(c) => current_crons
                .get(&job.name())
                .map_or_else(|| jobs::cron_job_run(c), |c| jobs::cron_job_run(c)),
        };
        if let Some(run) = run {
            match run.kind {
                JobKind::Preload => status.last_preloads.push(run),
                JobKind::Pin => status.last_pins.push(run),
            }
        }
    }
    let waiting_for_nodes = live_nodes.is_empty()
        && policy.spec.pin.iter().any(|r| {
            r.replicas
                .as_ref()
                .map(Replicas::parse)
                .transpose()
                .ok()
                .flatten()
                .unwrap_or(default_replicas)
                == Replicas::All
        });
    let message = if waiting_for_nodes {
        format!(
            "Applies to {} dataset(s); pins with replicas All wait for nodes to report.",
            governed.len()
        )
    } else {
        format!(
            "Applies to {} dataset(s) with {} job(s).",
            governed.len(),
            wanted.len()
        )
    };
    conditions::set(
        &mut status.conditions,
        condition::READY,
        true,
        reason::READY,
        message,
        generation,
    );
    write_status(policy, ctx, &old, status).await?;
    Ok(Action::requeue(ctx.config.resync_interval))
}

fn owned_by<K: Resource>(child: &K, policy: &CachePolicy) -> bool {
    let uid = policy.uid();
    child
        .owner_references()
        .iter()
        .any(|r| Some(&r.uid) == uid.as_ref())
}

async fn delete_ignoring_missing<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(
            format!("deleting {} {name}", K::kind(&Default::default())),
            e,
        )),
    }
}

async fn write_status(
    policy: &CachePolicy,
    ctx: &Context,
    old: &CachePolicyStatus,
    status: CachePolicyStatus,
) -> Result<()> {
    let mut a = old.clone();
    let mut b = status.clone();
    if conditions::same(&a.conditions, &b.conditions) {
        a.conditions.clear();
        b.conditions.clear();
        if a == b {
            return Ok(());
        }
    }
    let namespace = policy.namespace().unwrap_or_default();
    let patch =
        json!({"apiVersion": "strata.dev/v1alpha1", "kind": "CachePolicy", "status": status});
    Api::<CachePolicy>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(
            &policy.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await
        .map_err(|e| {
            Error::kube(
                format!(
                    "writing the status of CachePolicy {namespace}/{}",
                    policy.name_any()
                ),
                e,
            )
        })?;
    Ok(())
}
