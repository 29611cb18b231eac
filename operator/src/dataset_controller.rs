//! The Dataset controller: validate, check sources and credentials, resolve
//! the CachePolicy, hand the dataset to the agents, create its PV and PVC, and
//! sum the nodes' reports into the status. A finalizer takes it all back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, Event as FinalizerEvent, finalizer};
use kube::{Api, ResourceExt};
use serde_json::json;
use strata_crds::{
    CachePolicy, Dataset, DatasetPhase, DatasetStatus, SourceStatus, condition, format_bytes,
};
use tracing::{info, instrument, warn};

use crate::agent_config::{self, DATASETS_SECRET};
use crate::conditions::{self, reason};
use crate::context::{Context, MANAGER};
use crate::credentials::{self, AgentCredentials};
use crate::jobs;
use crate::node_reports::{self, JobProgress, cached_percent, non_negative, to_api};
use crate::policy_resolution::{Resolution, resolve};
use crate::source_check::SourceCheck;
use crate::volume::{self, LABEL_DATASET, LABEL_DATASET_NAMESPACE};
use crate::{Error, Result};

/// The finalizer that holds a Dataset until its volumes and agent config are gone.
pub const FINALIZER: &str = "strata.dev/dataset-cleanup";
/// Field manager of the per-key merge patches on the datasets Secret.
const SECRET_MANAGER: &str = "strata-operator-datasets";
/// Controller name in metrics.
pub const CONTROLLER: &str = "dataset";
/// Job runs kept in a Dataset's status.
const MAX_JOB_RUNS: usize = 8;
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
            FinalizerEvent::Apply(ds) => apply(&ds, &ctx).await,
            FinalizerEvent::Cleanup(ds) => cleanup(&ds, &ctx).await,
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

async fn apply(ds: &Dataset, ctx: &Context) -> Result<Action> {
    let namespace = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let generation = ds.metadata.generation;
    let old = ds.status.clone().unwrap_or_default();
    let mut status = DatasetStatus {
        conditions: old.conditions.clone(),
        observed_generation: generation,
        ..DatasetStatus::default()
    };

    // 1. The spec itself.
    if let Err(e) = ds.validate() {
        let message = format!("{e}. Fix the spec; the dataset is not served until then.");
        conditions::set(
            &mut status.conditions,
            condition::SPEC_VALID,
            false,
            reason::INVALID_SPEC,
            &message,
            generation,
        );
        conditions::set(
            &mut status.conditions,
            condition::READY,
            false,
            reason::INVALID_SPEC,
            &message,
            generation,
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
        remove_agent_config(ctx, &namespace, &name).await?;
        finish(ds, ctx, &old, status).await?;
        return Ok(Action::requeue(ctx.config.resync_interval));
    }
    conditions::set(
        &mut status.conditions,
        condition::SPEC_VALID,
        true,
        reason::VALID,
        "The spec is valid.",
        generation,
    );

    // 2. Credentials.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut creds: BTreeMap<String, AgentCredentials> = BTreeMap::new();
    let mut credential_problem: Option<Problem> = None;
    for source in &ds.spec.sources {
        let Some(reference) = &source.credentials_secret_ref else {
            continue;
        };
        let Ok(uri) = source.parsed_uri() else {
            continue;
        };
        let secret = secrets.get_opt(&reference.name).await.map_err(|e| {
            Error::kube(format!("reading Secret {namespace}/{}", reference.name), e)
        })?;
        let problem = match secret {
            None => Some(Problem {
                reason: reason::SECRET_NOT_FOUND,
                message: format!(
                    "Secret {namespace}/{} (credentialsSecretRef of source {}) does not exist; create it in namespace {namespace}.",
                    reference.name, source.name
                ),
            }),
            Some(secret) => {
                match credentials::from_secret(uri.scheme, &secret.data.unwrap_or_default()) {
                    Ok(c) => {
                        creds.insert(source.name.clone(), c);
                        None
                    }
                    Err(p) => Some(Problem {
                        reason: reason::SECRET_KEY_MISSING,
                        message: p
                            .message(&format!("{namespace}/{}", reference.name), &source.name),
                    }),
                }
            }
        };
        if credential_problem.is_none() {
            credential_problem = problem;
        }
    }

    // A file:// source only under the host paths the admin allows (the agents refuse
    // any other too); like missing credentials, this keeps the dataset off the agents.
    if credential_problem.is_none() {
        credential_problem = local_path_problem(ds, &ctx.config.allowed_local_path_list()?);
    }

    // 3. The policy.
    let policies: Vec<CachePolicy> = ctx
        .policies
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .map(|p| p.as_ref().clone())
        .collect();
    let resolution = resolve(ds, &policies);
    let mut policy_problem = None;
    match &resolution {
        Resolution::Found { policy, by_ref } => {
            let how = if *by_ref {
                "policyRef"
            } else {
                "its datasetSelector"
            };
            status.policy = Some(policy.name_any());
            conditions::set(
                &mut status.conditions,
                condition::POLICY_RESOLVED,
                true,
                reason::POLICY_FOUND,
                format!("CachePolicy {} applies (by {how}).", policy.name_any()),
                generation,
            );
        }
        Resolution::Default => {
            conditions::set(
                &mut status.conditions,
                condition::POLICY_RESOLVED,
                true,
                reason::DEFAULT_POLICY,
                "No CachePolicy names or selects this dataset; built-in defaults apply (no quota, no pins, no preloads).",
                generation,
            );
        }
        Resolution::NotFound { name: policy } => {
            policy_problem = Some(Problem {
                reason: reason::POLICY_NOT_FOUND,
                message: format!(
                    "policyRef names CachePolicy {namespace}/{policy}, which does not exist; create it or fix policyRef. Built-in defaults apply meanwhile."
                ),
            });
        }
        Resolution::Ambiguous { names } => {
            policy_problem = Some(Problem {
                reason: reason::AMBIGUOUS_POLICY,
                message: format!(
                    "CachePolicies {} all select this dataset; set spec.policyRef to pick one, or narrow their datasetSelectors. Built-in defaults apply meanwhile.",
                    names.join(", ")
                ),
            });
        }
        Resolution::Invalid {
            name: policy,
            message,
        } => {
            policy_problem = Some(Problem {
                reason: reason::POLICY_INVALID,
                message: format!(
                    "CachePolicy {policy} is invalid: {message}. Built-in defaults apply meanwhile."
                ),
            });
        }
    }
    if let Some(p) = &policy_problem {
        conditions::set(
            &mut status.conditions,
            condition::POLICY_RESOLVED,
            false,
            p.reason,
            &p.message,
            generation,
        );
    }

    // 4. Sources (only with usable credentials: without them nothing can be listed).
    let mut source_problem: Option<Problem> = None;
    if let Some(p) = &credential_problem {
        conditions::set(
            &mut status.conditions,
            condition::SOURCES_REACHABLE,
            false,
            p.reason,
            &p.message,
            generation,
        );
        status.sources = old.sources.clone();
    } else {
        let limits = ctx.check_limits();
        let checks = join_all(ds.spec.sources.iter().map(|s| {
            let checker = ctx.sources.clone();
            let c = creds.get(&s.name).cloned();
            async move { checker.check(s, c.as_ref(), limits).await }
        }))
        .await;
        let (mut total, mut files, mut sizes_known) = (0u64, 0u64, true);
        let mut node_local = false;
        for (source, (when, check)) in ds.spec.sources.iter().zip(checks) {
            let mut s = SourceStatus {
                name: source.name.clone(),
                reachable: true,
                last_list_time: Some(Time(when)),
                ..SourceStatus::default()
            };
            match check {
                SourceCheck::Reachable {
                    total_bytes,
                    files: f,
                    note,
                } => {
                    s.total_bytes = total_bytes.map(to_api);
                    s.files = f.map(to_api);
                    s.message = note;
                    match (total_bytes, f) {
                        (Some(b), Some(n)) => {
                            total = total.saturating_add(b);
                            files = files.saturating_add(n);
                        }
                        _ => sizes_known = false,
                    }
                }
                SourceCheck::NodeLocal => {
                    node_local = true;
                    sizes_known = false;
                    s.message = Some("node-local source: checked by the agents".into());
                }
                SourceCheck::Failed { reason: r, message } => {
                    s.reachable = false;
                    sizes_known = false;
                    if source_problem.is_none() {
                        source_problem = Some(Problem {
                            reason: r,
                            message: format!(
                                "{message}. Check the URI, endpoint and network path from the cluster."
                            ),
                        });
                    }
                    s.message = Some(message);
                }
            }
            status.sources.push(s);
        }
        if sizes_known {
            status.total_bytes = Some(to_api(total));
            status.files = Some(to_api(files));
            status.size = Some(format_bytes(total));
        }
        match &source_problem {
            Some(p) => conditions::set(
                &mut status.conditions,
                condition::SOURCES_REACHABLE,
                false,
                p.reason,
                &p.message,
                generation,
            ),
            None => conditions::set(
                &mut status.conditions,
                condition::SOURCES_REACHABLE,
                true,
                if node_local {
                    reason::CHECKED_BY_AGENTS
                } else {
                    reason::SOURCES_REACHABLE
                },
                if node_local {
                    "Remote sources answered; node-local (file://) sources are checked by the agents."
                } else {
                    "Every source answered."
                },
                generation,
            ),
        }
    }

    // 5. Hand the dataset to the agents. With unusable credentials the last
    // good config stays in place, so running pods keep working.
    if credential_problem.is_none() {
        let config = agent_config::build(ds, resolution.policy(), &creds);
        write_agent_config(ctx, &namespace, &name, &agent_config::to_yaml(&config)?).await?;
    }

    // 6. The PV and PVC.
    apply_volumes(ds, ctx).await?;

    // 7. What the nodes hold.
    let live = ctx.live_nodes();
    let usage = node_reports::usage_of(
        live.iter().map(|n| n.as_ref()),
        &namespace,
        &name,
        ds.uid().as_deref(),
        ctx.config.node_stale_after,
        Timestamp::now(),
    );
    if !usage.nodes.is_empty() {
        status.cached_bytes = Some(to_api(usage.cached_bytes));
        status.hits = Some(to_api(usage.hits));
        status.misses = Some(to_api(usage.misses));
        status.nodes = Some(i32::try_from(usage.nodes.len()).unwrap_or(i32::MAX));
        if let Some(total) = status.total_bytes {
            status.cached_percent = Some(cached_percent(usage.cached_bytes, non_negative(total)));
        }
    } else {
        status.nodes = Some(0);
        status.cached_bytes = Some(0);
        status.cached_percent = status
            .total_bytes
            .map(|t| cached_percent(0, non_negative(t)));
    }

    let node_problem = node_errors_problem(&usage.errors);
    match &node_problem {
        Some(p) => conditions::set(
            &mut status.conditions,
            condition::NODES_HEALTHY,
            false,
            p.reason,
            &p.message,
            generation,
        ),
        None => conditions::set(
            &mut status.conditions,
            condition::NODES_HEALTHY,
            true,
            reason::NO_NODE_ERRORS,
            "No live node reports an error reading the sources.",
            generation,
        ),
    }

    // 8. Preload and pin jobs for this dataset, with the progress the nodes report.
    status.jobs = job_runs(ctx, &namespace, &name, &usage.jobs);
    let running_jobs: Vec<String> = status
        .jobs
        .iter()
        .filter(|j| j.phase == strata_crds::JobPhase::Running)
        .map(|j| match (&j.job, j.percent) {
            (Some(job), Some(p)) => format!("{job} ({p}%)"),
            (Some(job), None) => job.clone(),
            (None, _) => j.policy.clone(),
        })
        .collect();
    let running = !running_jobs.is_empty();
    conditions::set(
        &mut status.conditions,
        condition::PRELOADING,
        running,
        if running {
            reason::JOB_RUNNING
        } else {
            reason::NO_JOB_RUNNING
        },
        if running {
            format!("Running: {}.", running_jobs.join(", "))
        } else {
            "No preload or pin job is running.".to_string()
        },
        generation,
    );

    // 9. Phase and Ready.
    let (phase, ready_reason, ready_message) = if let Some(p) = &credential_problem {
        (DatasetPhase::Failed, p.reason, p.message.clone())
    } else if let Some(p) = source_problem
        .as_ref()
        .or(policy_problem.as_ref())
        .or(node_problem.as_ref())
    {
        (DatasetPhase::Degraded, p.reason, p.message.clone())
    } else if usage.nodes.is_empty() {
        (DatasetPhase::Pending, reason::WAITING_FOR_NODES,
            "The agents were given the dataset; no node has reported it yet (is the strata-node DaemonSet running?).".to_string())
    } else {
        (
            DatasetPhase::Ready,
            reason::READY,
            format!("Served by {} node(s).", usage.nodes.len()),
        )
    };
    status.phase = Some(phase);
    conditions::set(
        &mut status.conditions,
        condition::READY,
        phase == DatasetPhase::Ready,
        ready_reason,
        ready_message,
        generation,
    );

    finish(ds, ctx, &old, status).await?;
    Ok(
        if credential_problem.is_some() || source_problem.is_some() || policy_problem.is_some() {
            Action::requeue(PROBLEM_REQUEUE)
        } else {
            Action::requeue(ctx.config.resync_interval)
        },
    )
}

/// The first `file://` source outside the allowed host paths, as a problem that names the
/// chart value to change.
fn local_path_problem(ds: &Dataset, allowed: &[String]) -> Option<Problem> {
    let under = |path: &str, root: &str| {
        let path = path.trim_end_matches('/');
        root == "/" || path == root || path.starts_with(&format!("{root}/"))
    };
    ds.spec.sources.iter().find_map(|source| {
        let uri = source.parsed_uri().ok()?;
        if uri.scheme != strata_crds::Scheme::File || allowed.iter().any(|r| under(&uri.path, r)) {
            return None;
        }
        let now = if allowed.is_empty() {
            "none are allowed now".to_string()
        } else {
            format!("allowed now: {}", allowed.join(", "))
        };
        Some(Problem {
            reason: reason::LOCAL_PATH_NOT_ALLOWED,
            message: format!(
                "source {} reads the host path {}, which is not under a host path the cluster admin allows ({now}); the admin adds it to the chart value node.localSources.allowedHostPaths (operator flag --allowed-local-paths), or use a remote source.",
                source.name, uri.path
            ),
        })
    })
}

/// Emits events for changed conditions and writes the status when it changed
/// (or the last sync is older than the resync interval). Skipping identical
/// writes matters: every write is a watch event that reconciles again.
async fn finish(
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

/// Nodes reporting source errors, as the NodesHealthy problem: names the nodes
/// (the first few) and the first node's error.
fn node_errors_problem(errors: &[node_reports::NodeReportedError]) -> Option<Problem> {
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

/// Fills a run's numbers from what the nodes report about its Job. The
/// Kubernetes Job's phase wins once it is final; before that the agents' is
/// fresher (and the only one where no Job controller runs).
fn with_progress(mut run: strata_crds::JobRun, progress: &JobProgress) -> strata_crds::JobRun {
    use strata_crds::JobPhase;
    run.files_done = Some(to_api(progress.files_done));
    run.files_total = Some(to_api(progress.files_total));
    run.bytes_done = Some(to_api(progress.bytes_done));
    run.bytes_total = Some(to_api(progress.bytes_total));
    run.percent = Some(progress.percent());
    if matches!(run.phase, JobPhase::Pending | JobPhase::Running)
        && let Some(phase) = progress.phase
    {
        run.phase = phase;
        if run.completion_time.is_none() {
            run.completion_time = progress.finished_at();
        }
    }
    if run.start_time.is_none() {
        run.start_time = progress.start_time.clone();
    }
    if run.message.is_none() {
        run.message = progress.message.clone();
    }
    run
}

/// The newest reported run of a CronJob's Jobs (named `<cronjob>-<minutes>`).
fn cron_progress<'a>(
    cron: &str,
    progress: &'a BTreeMap<String, JobProgress>,
) -> Option<&'a JobProgress> {
    progress
        .iter()
        .filter(|(job, _)| {
            job.strip_prefix(cron)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
        })
        .max_by(|a, b| a.1.start_time.cmp(&b.1.start_time))
        .map(|(_, p)| p)
}

fn job_runs(
    ctx: &Context,
    namespace: &str,
    name: &str,
    progress: &BTreeMap<String, JobProgress>,
) -> Vec<strata_crds::JobRun> {
    let ours = |meta: &kube::api::ObjectMeta| {
        meta.namespace.as_deref() == Some(namespace)
            && meta
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_DATASET))
                .map(String::as_str)
                == Some(name)
    };
    let mut runs: Vec<_> = ctx
        .jobs
        .state()
        .iter()
        .filter(|j| ours(&j.metadata) && !jobs::created_by_cron_job(j))
        .filter_map(|j| jobs::job_run(j))
        .map(|run| match run.job.as_ref().and_then(|j| progress.get(j)) {
            Some(p) => with_progress(run, p),
            None => run,
        })
        .chain(
            ctx.cron_jobs
                .state()
                .iter()
                .filter(|c| ours(&c.metadata))
                .filter_map(|c| jobs::cron_job_run(c))
                .map(
                    |run| match run.job.as_deref().and_then(|j| cron_progress(j, progress)) {
                        Some(p) => with_progress(run, p),
                        None => run,
                    },
                ),
        )
        .collect();
    runs.sort_by(|a, b| b.start_time.cmp(&a.start_time).then(a.job.cmp(&b.job)));
    runs.truncate(MAX_JOB_RUNS);
    runs
}

/// Writes one dataset's key into the datasets Secret. A JSON merge patch
/// touches only that key, so concurrent reconciles of other datasets never
/// overwrite each other (no read-modify-write).
async fn write_agent_config(ctx: &Context, namespace: &str, name: &str, yaml: &str) -> Result<()> {
    let key = agent_config::secret_key(namespace, name);
    let hash = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        yaml.hash(&mut h);
        h.finish()
    };
    if !ctx.needs_write(&key, hash) {
        return Ok(());
    }
    write_agent_config_now(ctx, &key, yaml).await?;
    ctx.wrote(&key, Some(hash));
    Ok(())
}

async fn write_agent_config_now(ctx: &Context, key: &str, yaml: &str) -> Result<()> {
    let key = key.to_string();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let patch = json!({ "stringData": { key.clone(): yaml } });
    let params = PatchParams {
        field_manager: Some(SECRET_MANAGER.into()),
        ..PatchParams::default()
    };
    match api
        .patch(DATASETS_SECRET, &params, &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let secret =
                datasets_secret_skeleton(ctx, BTreeMap::from([(key.clone(), yaml.to_string())]));
            match api
                .create(
                    &PostParams {
                        field_manager: Some(SECRET_MANAGER.into()),
                        ..PostParams::default()
                    },
                    &secret,
                )
                .await
            {
                Ok(_) => Ok(()),
                // Another reconcile created it first: patch again.
                Err(kube::Error::Api(s)) if s.code == 409 => api
                    .patch(DATASETS_SECRET, &params, &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        Error::kube(
                            format!(
                                "writing {key} into Secret {}/{DATASETS_SECRET}",
                                ctx.config.namespace
                            ),
                            e,
                        )
                    }),
                Err(e) => Err(Error::kube(
                    format!("creating Secret {}/{DATASETS_SECRET}", ctx.config.namespace),
                    e,
                )),
            }
        }
        Err(e) => Err(Error::kube(
            format!(
                "writing {key} into Secret {}/{DATASETS_SECRET}",
                ctx.config.namespace
            ),
            e,
        )),
    }
}

/// The datasets Secret with the labels the operator puts on it.
pub fn datasets_secret_skeleton(ctx: &Context, string_data: BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(DATASETS_SECRET.into()),
            namespace: Some(ctx.config.namespace.clone()),
            labels: Some(BTreeMap::from([(
                volume::LABEL_MANAGED_BY.to_string(),
                volume::MANAGED_BY.to_string(),
            )])),
            ..Default::default()
        },
        string_data: Some(string_data),
        ..Secret::default()
    }
}

/// Removes one dataset's key from the datasets Secret (merge patch with null).
async fn remove_agent_config(ctx: &Context, namespace: &str, name: &str) -> Result<()> {
    let key = agent_config::secret_key(namespace, name);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    ctx.wrote(&key, None);
    let patch = json!({ "data": { key.clone(): null } });
    let params = PatchParams {
        field_manager: Some(SECRET_MANAGER.into()),
        ..PatchParams::default()
    };
    match api
        .patch(DATASETS_SECRET, &params, &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(
            format!(
                "removing {key} from Secret {}/{DATASETS_SECRET}",
                ctx.config.namespace
            ),
            e,
        )),
    }
}

async fn apply_volumes(ds: &Dataset, ctx: &Context) -> Result<()> {
    let namespace = ds.namespace().unwrap_or_default();
    let pv = volume::persistent_volume(ds);
    let pv_name = pv.metadata.name.clone().unwrap_or_default();
    let params = PatchParams::apply(MANAGER).force();
    Api::<PersistentVolume>::all(ctx.client.clone())
        .patch(&pv_name, &params, &Patch::Apply(&pv))
        .await
        .map_err(|e| Error::kube(format!("applying PersistentVolume {pv_name}"), e))?;
    let pvc = volume::persistent_volume_claim(ds);
    Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &namespace)
        .patch(&ds.name_any(), &params, &Patch::Apply(&pvc))
        .await
        .map_err(|e| match e {
            // A user's own claim of the same name is not ours to take over.
            kube::Error::Api(s) if s.code == 409 || s.code == 422 => Error::kube(
                format!("applying PersistentVolumeClaim {namespace}/{} (a claim of that name that Strata did not create? rename it or the dataset)", ds.name_any()),
                kube::Error::Api(s),
            ),
            e => Error::kube(format!("applying PersistentVolumeClaim {namespace}/{}", ds.name_any()), e),
        })?;
    Ok(())
}

/// Deletion: stop serving, wait (bounded) for the agents to drop the dataset,
/// then remove the PVC and PV.
async fn cleanup(ds: &Dataset, ctx: &Context) -> Result<Action> {
    let namespace = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    remove_agent_config(ctx, &namespace, &name).await?;

    let live = ctx.live_nodes();
    let usage = node_reports::usage_of(
        live.iter().map(|n| n.as_ref()),
        &namespace,
        &name,
        ds.uid().as_deref(),
        ctx.config.node_stale_after,
        Timestamp::now(),
    );
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

    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Some(pvc) = pvcs
        .get_opt(&name)
        .await
        .map_err(|e| Error::kube(format!("reading PVC {namespace}/{name}"), e))?
        && pvc.labels().get(LABEL_DATASET).map(String::as_str) == Some(name.as_str())
    {
        ignore_not_found(pvcs.delete(&name, &DeleteParams::background()).await)
            .map_err(|e| Error::kube(format!("deleting PVC {namespace}/{name}"), e))?;
    }
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let pv_name = volume::pv_name(&namespace, &name);
    if let Some(pv) = pvs
        .get_opt(&pv_name)
        .await
        .map_err(|e| Error::kube(format!("reading PV {pv_name}"), e))?
        && pv.labels().get(LABEL_DATASET_NAMESPACE).map(String::as_str) == Some(namespace.as_str())
    {
        ignore_not_found(pvs.delete(&pv_name, &DeleteParams::background()).await)
            .map_err(|e| Error::kube(format!("deleting PV {pv_name}"), e))?;
    }
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

fn ignore_not_found<T>(result: kube::Result<T>) -> kube::Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_crds::{JobKind, JobPhase, JobRun};

    fn progress(phase: JobPhase, done: u64, start: i64) -> JobProgress {
        JobProgress {
            files_done: done / 100,
            files_total: 10,
            bytes_done: done,
            bytes_total: 1_000,
            phase: Some(phase),
            start_time: Some(Time(Timestamp::from_second(start).unwrap())),
            completion_time: (phase != JobPhase::Running)
                .then(|| Time(Timestamp::from_second(start + 60).unwrap())),
            message: (phase == JobPhase::Failed).then(|| "source a: access denied".into()),
        }
    }

    fn run(phase: JobPhase) -> JobRun {
        JobRun {
            kind: JobKind::Preload,
            policy: "warm".into(),
            rule: 0,
            dataset: "imagenet".into(),
            job: Some("preload-imagenet-1a2b3c4d".into()),
            phase,
            bytes_done: None,
            bytes_total: None,
            files_done: None,
            files_total: None,
            percent: None,
            start_time: None,
            completion_time: None,
            message: None,
        }
    }

    #[test]
    fn the_agents_phase_counts_until_the_job_is_final() {
        let pending = with_progress(
            run(JobPhase::Pending),
            &progress(JobPhase::Failed, 300, 100),
        );
        assert_eq!(pending.phase, JobPhase::Failed);
        assert_eq!(pending.percent, Some(30));
        assert_eq!(pending.message.as_deref(), Some("source a: access denied"));
        assert_eq!(pending.completion_time.unwrap().0.as_second(), 160);
        let mut done = run(JobPhase::Succeeded);
        done.start_time = Some(Time(Timestamp::from_second(90).unwrap()));
        let done = with_progress(done, &progress(JobPhase::Running, 999, 100));
        assert_eq!(
            done.phase,
            JobPhase::Succeeded,
            "the Job's final phase wins"
        );
        assert_eq!((done.bytes_done, done.percent), (Some(999), Some(99)));
        assert_eq!(done.start_time.unwrap().0.as_second(), 90);
    }

    #[test]
    fn a_cronjob_shows_its_newest_reported_run() {
        let reports = BTreeMap::from([
            (
                "nightly-27812345".to_string(),
                progress(JobPhase::Succeeded, 1_000, 100),
            ),
            (
                "nightly-27813785".to_string(),
                progress(JobPhase::Running, 400, 200),
            ),
            (
                "nightly-other-27899999".to_string(),
                progress(JobPhase::Running, 1, 300),
            ),
            ("nightly".to_string(), progress(JobPhase::Running, 2, 400)),
        ]);
        let newest = cron_progress("nightly", &reports).unwrap();
        assert_eq!(newest.bytes_done, 400);
        assert!(cron_progress("weekly", &reports).is_none());
    }

    #[test]
    fn local_sources_must_be_under_an_allowed_host_path() {
        let ds = |uri: &str| {
            Dataset::new(
                "d",
                serde_json::from_value(serde_json::json!({"sources": [
                    {"name": "s3", "uri": "s3://b/p", "mountPath": "/remote"},
                    {"name": "lake", "uri": uri, "mountPath": "/lake"}
                ]}))
                .unwrap(),
            )
        };
        let allowed = vec!["/mnt/data".to_string()];
        assert!(local_path_problem(&ds("file:///mnt/data/x/"), &allowed).is_none());
        assert!(local_path_problem(&ds("file:///mnt/data"), &allowed).is_none());
        for outside in ["file:///mnt/database/", "file:///etc/", "file:///"] {
            let problem = local_path_problem(&ds(outside), &allowed).unwrap();
            assert_eq!(problem.reason, reason::LOCAL_PATH_NOT_ALLOWED);
            assert!(
                problem
                    .message
                    .contains("node.localSources.allowedHostPaths")
                    && problem.message.contains("source lake"),
                "{}",
                problem.message
            );
        }
        assert!(local_path_problem(&ds("file:///mnt/data/"), &[]).is_some());
        assert!(local_path_problem(&ds("file:///anything/"), &["/".into()]).is_none());
    }

    #[test]
    fn node_errors_name_the_nodes_and_the_first_error() {
        assert!(node_errors_problem(&[]).is_none());
        let errors: Vec<_> = (0..7)
            .map(|i| node_reports::NodeReportedError {
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
