//! The Migration controller. A Migration's copy runs as a Job whose pod asks its node's
//! agent to run it (`strata-agent migrate --migration`): the agents hold the dataset's
//! source and, handed by the Dataset controller, the target with its credentials, so the
//! Job's pod holds nothing but a token for the agents. The agents report the run under
//! the Job's name; this controller turns that into the status (objects, bytes, percent,
//! rate, ETA). Once the copy is complete and `switchSource` is set, the Migration is
//! Switched and the Dataset controller hands the agents the dataset with the source
//! served from the target; setting `switchSource` back to false, or deleting the
//! Migration, switches it back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use strata_crds::{Dataset, Migration, MigrationPhase, MigrationStatus, WriteMode, condition};
use tracing::{instrument, warn};

use crate::conditions::{self, reason};
use crate::context::{Context, MANAGER};
use crate::credentials;
use crate::jobs::{self, LABEL_KIND};
use crate::node_reports::{JobProgress, to_api};
use crate::volume::{LABEL_MANAGED_BY, MANAGED_BY};
use crate::{Error, Result};

/// Controller name in metrics.
pub const CONTROLLER: &str = "migration";
/// Label naming the Migration a Job copies for.
pub const LABEL_MIGRATION: &str = "strata.dev/migration";
/// How often a running copy's status is refreshed from the agents' reports.
const COPYING_REQUEUE: Duration = Duration::from_secs(5);
/// Requeue while something is missing that may come (the Dataset, a Secret).
const WAITING_REQUEUE: Duration = Duration::from_secs(30);
/// Tries of a Job's pod before the copy counts as failed (each resumes the copy).
const BACKOFF_LIMIT: i32 = 6;

/// Reasons of the Migration's conditions.
mod why {
    pub const DATASET_NOT_FOUND: &str = "DatasetNotFound";
    pub const SOURCE_NOT_FOUND: &str = "SourceNotFound";
    pub const SOURCE_WRITABLE: &str = "SourceWritable";
    pub const COPYING: &str = "Copying";
    pub const COPIED: &str = "Copied";
    pub const COPY_FAILED: &str = "CopyFailed";
    pub const SWITCHED: &str = "Switched";
    pub const NOT_SWITCHED: &str = "NotSwitched";
}

/// Whether a Migration's source is served from its target now: the copy is complete and
/// `switchSource` is set (the Dataset controller asks this).
pub fn is_switched(m: &Migration) -> bool {
    m.spec.switch_source
        && m.metadata.deletion_timestamp.is_none()
        && m.status.as_ref().and_then(|s| s.phase) == Some(MigrationPhase::Switched)
}

/// Whether the agents need the Migration's copy: it may run (or run again) now.
pub fn wants_copy(m: &Migration) -> bool {
    m.metadata.deletion_timestamp.is_none()
        && !matches!(
            m.status.as_ref().and_then(|s| s.phase),
            Some(MigrationPhase::Switched | MigrationPhase::Failed)
        )
        && m.validate().is_ok()
}

/// The Job of a Migration: `migrate-<name>-<uid8>` (a Migration made again under the same
/// name gets a new Job).
pub fn job_name(m: &Migration) -> String {
    let uid: String = m.uid().unwrap_or_default().chars().take(8).collect();
    let mut prefix: String = format!("migrate-{}", m.name_any())
        .chars()
        .take(52)
        .collect();
    while prefix.ends_with(['-', '.']) {
        prefix.pop();
    }
    format!("{prefix}-{uid}")
}

/// The Job that runs the copy: on any node with an agent, asking that agent.
pub fn desired_job(m: &Migration, ds: &Dataset, settings: &jobs::JobSettings) -> Job {
    let name = job_name(m);
    let labels = BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_KIND.to_string(), "migrate".to_string()),
        (LABEL_MIGRATION.to_string(), m.name_any()),
    ]);
    let mut args = jobs::agent_command("migrate", ds, settings);
    args.extend(["--migration".to_string(), m.name_any()]);
    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: m.namespace(),
            labels: Some(labels.clone()),
            owner_references: m.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(BACKOFF_LIMIT),
            template: jobs::agent_job_pod(labels, args, None, settings),
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// The state of a Migration's Job, from its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobState {
    Running,
    Succeeded,
    Failed,
}

fn job_state(job: &Job) -> JobState {
    let status = job.status.clone().unwrap_or_default();
    let failed = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Failed" && c.status == "True");
    if status.succeeded.unwrap_or(0) > 0 {
        JobState::Succeeded
    } else if failed {
        JobState::Failed
    } else {
        JobState::Running
    }
}

fn job_failure(job: &Job) -> Option<String> {
    job.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed" && c.status == "True")
        .and_then(|c| c.message.clone())
}

/// "12.3 MiB/s".
fn format_rate(bytes_per_second: f64) -> String {
    let mut value = bytes_per_second.max(0.0);
    let mut unit = "B";
    for next in ["KiB", "MiB", "GiB", "TiB"] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}/s")
}

/// "1h2m", "4m10s", "7s".
fn format_eta(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, (seconds % 3600) / 60, seconds % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m"),
    }
}

/// The numbers of the agents' report into the status: rate is the average since the run
/// started, ETA what is left at that rate.
fn record_progress(status: &mut MigrationStatus, p: &JobProgress, now: Timestamp) {
    status.objects_done = Some(to_api(p.files_done));
    status.objects_total = Some(to_api(p.files_total));
    status.bytes_done = Some(to_api(p.bytes_done));
    status.bytes_total = Some(to_api(p.bytes_total));
    status.percent = Some(p.percent());
    status.start_time = status.start_time.clone().or(p.start_time.clone());
    let end = p.completion_time.as_ref().map(|t| t.0).unwrap_or(now);
    let elapsed = p
        .start_time
        .as_ref()
        .map(|t| (end.as_millisecond() - t.0.as_millisecond()) as f64 / 1000.0)
        .unwrap_or(0.0);
    if elapsed > 0.0 {
        let rate = p.bytes_done as f64 / elapsed;
        status.bytes_per_second = Some(rate as i64);
        status.rate = Some(format_rate(rate));
        let left = p.bytes_total.saturating_sub(p.bytes_done);
        status.eta = if left == 0 {
            None
        } else if rate > 0.0 {
            Some(format_eta((left as f64 / rate).ceil() as u64))
        } else {
            None
        };
    }
}

/// The numbers of the last status, when no node reports the run now.
fn keep_progress(status: &mut MigrationStatus, old: &MigrationStatus) {
    status.objects_done = old.objects_done;
    status.objects_total = old.objects_total;
    status.bytes_done = old.bytes_done;
    status.bytes_total = old.bytes_total;
    status.percent = old.percent;
    status.rate = old.rate.clone();
    status.bytes_per_second = old.bytes_per_second;
    status.eta = old.eta.clone();
}

/// Whether the nodes' reports may still change the Migration's status: it copies, or it
/// finished before a report of its run came in.
pub fn awaits_reports(m: &Migration) -> bool {
    match m.status.as_ref() {
        None => true,
        Some(s) => match s.phase {
            None | Some(MigrationPhase::Pending | MigrationPhase::Copying) => true,
            Some(MigrationPhase::Copied | MigrationPhase::Switched) => s.objects_total.is_none(),
            Some(MigrationPhase::Failed) => false,
        },
    }
}

/// Reconciles one Migration.
#[instrument(skip_all, fields(migration = %format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any())))]
pub async fn reconcile(m: Arc<Migration>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let object = format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any());
    let result = apply(&m, &ctx).await;
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    if result.is_ok() {
        ctx.succeeded(&object);
    }
    result
}

/// Counts the failure and picks when to retry.
pub fn error_policy(m: Arc<Migration>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(CONTROLLER, error.metric_reason());
    let object = format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any());
    warn!(%object, %error, "reconcile failed");
    ctx.backoff(&object)
}

/// A status in the making.
struct Draft {
    status: MigrationStatus,
}

impl Draft {
    fn condition(&mut self, type_: &str, ok: bool, reason: &str, message: impl Into<String>) {
        let generation = self.status.observed_generation;
        conditions::set(
            &mut self.status.conditions,
            type_,
            ok,
            reason,
            message,
            generation,
        );
    }

    /// The copy cannot go on until the user acts: phase, message and Copied condition.
    fn stop(&mut self, phase: MigrationPhase, reason: &str, message: String) {
        self.status.phase = Some(phase);
        self.condition(condition::COPIED, false, reason, &message);
        self.status.message = Some(message);
    }
}

async fn apply(m: &Migration, ctx: &Context) -> Result<Action> {
    let namespace = m.namespace().unwrap_or_default();
    let old = m.status.clone().unwrap_or_default();
    let mut draft = Draft {
        status: MigrationStatus {
            conditions: old.conditions.clone(),
            observed_generation: m.metadata.generation,
            start_time: old.start_time.clone(),
            ..MigrationStatus::default()
        },
    };
    let resync = ctx.config.resync_interval;
    if let Err(e) = m.validate() {
        let message = format!("{e}. Fix the spec (or create a new Migration).");
        draft.condition(condition::SPEC_VALID, false, reason::INVALID_SPEC, &message);
        draft.stop(MigrationPhase::Failed, reason::INVALID_SPEC, message);
        write_status(m, ctx, &old, draft.status).await?;
        return Ok(Action::requeue(resync));
    }
    draft.condition(
        condition::SPEC_VALID,
        true,
        reason::VALID,
        "The spec is valid.",
    );

    let datasets: Api<Dataset> = Api::namespaced(ctx.client.clone(), &namespace);
    let dataset = datasets
        .get_opt(&m.spec.dataset)
        .await
        .map_err(|e| Error::kube(format!("reading Dataset {namespace}/{}", m.spec.dataset), e))?;
    let Some(ds) = dataset else {
        draft.stop(
            MigrationPhase::Pending,
            why::DATASET_NOT_FOUND,
            format!(
                "Dataset {namespace}/{} (spec.dataset) does not exist; the copy starts once it does.",
                m.spec.dataset
            ),
        );
        write_status(m, ctx, &old, draft.status).await?;
        return Ok(Action::requeue(WAITING_REQUEUE));
    };
    let Some(source) = ds.spec.sources.iter().find(|s| s.name == m.spec.source) else {
        let names: Vec<&str> = ds.spec.sources.iter().map(|s| s.name.as_str()).collect();
        draft.stop(
            MigrationPhase::Failed,
            why::SOURCE_NOT_FOUND,
            format!(
                "Dataset {namespace}/{} has no source {:?} (spec.source); its sources are: {}. \
                 Delete this Migration and create one that names a source of the dataset.",
                m.spec.dataset,
                m.spec.source,
                names.join(", ")
            ),
        );
        write_status(m, ctx, &old, draft.status).await?;
        return Ok(Action::requeue(resync));
    };
    if source.effective_write_mode() != WriteMode::ReadOnly {
        draft.stop(
            MigrationPhase::Pending,
            why::SOURCE_WRITABLE,
            format!(
                "source {} of Dataset {namespace}/{} is writable (writeMode {:?}): writes during \
                 the copy would not reach the target. Make the source read-only (remove its \
                 writeMode) for the migration; the copy starts then.",
                source.name,
                m.spec.dataset,
                source.effective_write_mode()
            ),
        );
        write_status(m, ctx, &old, draft.status).await?;
        return Ok(Action::requeue(WAITING_REQUEUE));
    }
    if let Some(secret) = &m.spec.target.credentials_secret_ref
        && let Ok(uri) = m.spec.target.parsed_uri()
    {
        let whose = format!("the target of Migration {}", m.name_any());
        if let Err((why, message)) =
            credentials::read_secret(&ctx.client, &namespace, &secret.name, uri.scheme, &whose)
                .await?
        {
            draft.stop(MigrationPhase::Pending, why, message);
            write_status(m, ctx, &old, draft.status).await?;
            return Ok(Action::requeue(WAITING_REQUEUE));
        }
    }

    let job = ensure_job(m, &ds, ctx).await?;
    let name = job.name_any();
    draft.status.job = Some(name.clone());
    let usage = ctx.dataset_usage(&ds);
    let progress = usage.jobs.get(&name);
    match progress {
        Some(p) => record_progress(&mut draft.status, p, Timestamp::now()),
        // The agents report a run every status interval, and drop old runs: the last
        // numbers stay until new ones come.
        None => keep_progress(&mut draft.status, &old),
    }
    let state = job_state(&job);
    let copied = state == JobState::Succeeded || old.phase == Some(MigrationPhase::Switched);
    let requeue = if copied {
        // The Job exits 0 only once its agent copied and verified every object.
        draft.status.percent = Some(100);
        draft.status.phase = Some(MigrationPhase::Copied);
        draft.status.message = None;
        draft.status.completion_time = old
            .completion_time
            .clone()
            .or_else(|| job.status.as_ref()?.completion_time.clone());
        draft.status.eta = None;
        let message = format!(
            "Every object under {} of source {} is at {}, verified.",
            m.spec.path, m.spec.source, m.spec.target.uri
        );
        draft.condition(condition::COPIED, true, why::COPIED, message);
        record_switch(m, &old, &mut draft);
        resync
    } else if state == JobState::Failed {
        let message = progress
            .and_then(|p| p.message.clone())
            .or_else(|| job_failure(&job))
            .unwrap_or_else(|| "the Job failed".into());
        draft.stop(
            MigrationPhase::Failed,
            why::COPY_FAILED,
            format!(
                "Job {name} failed after {BACKOFF_LIMIT} tries: {message}. What was copied \
                 stays; fix the cause, then delete and create the Migration again to resume."
            ),
        );
        resync
    } else {
        let p = draft.status.percent.unwrap_or(0);
        draft.status.phase = Some(MigrationPhase::Copying);
        draft.status.message = None;
        draft.condition(
            condition::COPIED,
            false,
            why::COPYING,
            format!("Job {name} is copying ({p}%)."),
        );
        COPYING_REQUEUE
    };
    if draft.status.phase != Some(MigrationPhase::Switched) {
        draft.status.served_from = None;
        draft.status.switch_time = None;
        let message = if m.spec.switch_source {
            "The copy is not complete yet.".to_string()
        } else {
            format!(
                "switchSource is false: source {} is served from its own store.",
                m.spec.source
            )
        };
        draft.condition(condition::SWITCHED, false, why::NOT_SWITCHED, message);
    }
    write_status(m, ctx, &old, draft.status).await?;
    Ok(Action::requeue(requeue))
}

/// With `switchSource`, a complete copy is Switched (when it was first, kept).
fn record_switch(m: &Migration, old: &MigrationStatus, draft: &mut Draft) {
    if !m.spec.switch_source {
        return;
    }
    draft.status.phase = Some(MigrationPhase::Switched);
    draft.status.served_from = Some(m.spec.target.uri.clone());
    draft.status.switch_time = old
        .switch_time
        .clone()
        .or_else(|| Some(Time(Timestamp::now())));
    draft.condition(
        condition::SWITCHED,
        true,
        why::SWITCHED,
        format!(
            "Source {} of Dataset {} is served from {}: open files keep reading what they \
             opened, new opens read the target. Put this URI in the Dataset in Git, then \
             delete the Migration (deleting it before switches the source back).",
            m.spec.source, m.spec.dataset, m.spec.target.uri
        ),
    );
}

/// The Migration's Job, created when missing (never again once it exists: its pods
/// resume the copy; a finished Job stays as the record).
async fn ensure_job(m: &Migration, ds: &Dataset, ctx: &Context) -> Result<Job> {
    let namespace = m.namespace().unwrap_or_default();
    let name = job_name(m);
    if let Some(job) = ctx
        .jobs
        .state()
        .iter()
        .find(|j| j.namespace().as_deref() == Some(namespace.as_str()) && j.name_any() == name)
    {
        return Ok(job.as_ref().clone());
    }
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Some(job) = api
        .get_opt(&name)
        .await
        .map_err(|e| Error::kube(format!("reading Job {namespace}/{name}"), e))?
    {
        return Ok(job);
    }
    let job = desired_job(m, ds, &ctx.job_settings);
    match api.create(&PostParams::default(), &job).await {
        Ok(created) => Ok(created),
        Err(kube::Error::Api(s)) if s.code == 409 => api
            .get(&name)
            .await
            .map_err(|e| Error::kube(format!("reading Job {namespace}/{name}"), e)),
        Err(e) => Err(Error::kube(format!("creating Job {namespace}/{name}"), e)),
    }
}

/// Writes the status when it changed (server-side apply, field manager `strata-operator`).
async fn write_status(
    m: &Migration,
    ctx: &Context,
    old: &MigrationStatus,
    status: MigrationStatus,
) -> Result<()> {
    let same = conditions::same(&old.conditions, &status.conditions) && {
        let (mut a, mut b) = (old.clone(), status.clone());
        a.conditions.clear();
        b.conditions.clear();
        a == b
    };
    if same {
        return Ok(());
    }
    let namespace = m.namespace().unwrap_or_default();
    let api: Api<Migration> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": "strata.dev/v1alpha1",
        "kind": "Migration",
        "status": status,
    });
    api.patch_status(
        &m.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await
    .map_err(|e| {
        Error::kube(
            format!(
                "writing the status of Migration {namespace}/{}",
                m.name_any()
            ),
            e,
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_eta_read_like_kubectl_durations() {
        assert_eq!(format_eta(7), "7s");
        assert_eq!(format_eta(250), "4m10s");
        assert_eq!(format_eta(3720), "1h2m");
        let mut status = MigrationStatus::default();
        let start = Timestamp::from_second(1_000).unwrap();
        let p = JobProgress {
            files_done: 10,
            files_total: 40,
            bytes_done: 100 << 20,
            bytes_total: 400 << 20,
            start_time: Some(Time(start)),
            ..JobProgress::default()
        };
        record_progress(&mut status, &p, Timestamp::from_second(1_010).unwrap());
        assert_eq!(status.percent, Some(25));
        assert_eq!(status.bytes_per_second, Some(10 << 20));
        assert_eq!(status.rate.as_deref(), Some("10.0 MiB/s"));
        assert_eq!(status.eta.as_deref(), Some("30s"));
        assert_eq!(
            (status.objects_done, status.objects_total),
            (Some(10), Some(40))
        );
    }

    #[test]
    fn the_job_runs_the_agent_command_for_the_migration() {
        let mut m = Migration::new(
            "lake-to-s3",
            serde_json::from_value(serde_json::json!({
                "dataset": "lake", "source": "events",
                "target": {"uri": "s3://cloud/events/"}
            }))
            .unwrap(),
        );
        m.metadata.namespace = Some("analytics".into());
        m.metadata.uid = Some("0123456789abcdef".into());
        let mut ds = Dataset::new(
            "lake",
            serde_json::from_value(serde_json::json!({"sources": [
                {"name": "events", "uri": "hdfs://nn:8020/events/", "mountPath": "/"}
            ]}))
            .unwrap(),
        );
        ds.metadata.namespace = Some("analytics".into());
        let settings = jobs::JobSettings {
            image: "strata:dev".into(),
            image_pull_policy: "IfNotPresent".into(),
            agent_port: 7070,
            tolerations: Vec::new(),
            node_selector: BTreeMap::new(),
            token_audience: "strata.dev/agent".into(),
        };
        let job = desired_job(&m, &ds, &settings);
        assert_eq!(job.name_any(), "migrate-lake-to-s3-01234567");
        let pod = job.spec.unwrap().template.spec.unwrap();
        let args = pod.containers[0].args.clone().unwrap();
        assert_eq!(
            args,
            [
                "migrate",
                "--agent",
                "http://$(STRATA_NODE_IP):7070",
                "--token-file",
                "/var/run/strata/token",
                "--dataset",
                "analytics/lake",
                "--migration",
                "lake-to-s3"
            ]
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
    }
}
