//! The dataset's preload and pin Jobs in its status (`status.jobs`, newest
//! first) with the progress the nodes report, and the Preloading condition.

use std::collections::BTreeMap;

use kube::ResourceExt;
use strata_crds::{Dataset, DatasetStatus, JobPhase, JobRun, condition};

use super::set_condition;
use crate::conditions::reason;
use crate::context::Context;
use crate::jobs;
use crate::node_reports::{JobProgress, to_api};
use crate::volume::LABEL_DATASET;

/// Job runs kept in a Dataset's status.
const MAX_JOB_RUNS: usize = 8;

/// Writes the dataset's Job runs and Preloading (True while one runs).
pub(super) fn record_job_runs(
    status: &mut DatasetStatus,
    ctx: &Context,
    ds: &Dataset,
    progress: &BTreeMap<String, JobProgress>,
) {
    let namespace = ds.namespace().unwrap_or_default();
    status.jobs = job_runs(ctx, &namespace, &ds.name_any(), progress);
    let running_jobs: Vec<String> = status
        .jobs
        .iter()
        .filter(|j| j.phase == JobPhase::Running)
        .map(|j| match (&j.job, j.percent) {
            (Some(job), Some(p)) => format!("{job} ({p}%)"),
            (Some(job), None) => job.clone(),
            (None, _) => j.policy.clone(),
        })
        .collect();
    let running = !running_jobs.is_empty();
    set_condition(
        status,
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
    );
}

/// Fills a run's numbers from what the nodes report about its Job. The
/// Kubernetes Job's phase wins once it is final; before that the agents' is
/// fresher (and the only one where no Job controller runs).
fn with_progress(mut run: JobRun, progress: &JobProgress) -> JobRun {
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
) -> Vec<JobRun> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use strata_crds::JobKind;

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
}
