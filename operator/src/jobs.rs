//! Preload and pin jobs: the Kubernetes Jobs and CronJobs a CachePolicy's
//! rules become, and how their state reads back as a `JobRun`.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Container, EnvVar, EnvVarSource, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, ObjectFieldSelector, PodSpec, PodTemplateSpec, ProjectedVolumeSource,
    ServiceAccountTokenProjection, Toleration, Volume, VolumeMount, VolumeProjection,
};
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use strata_crds::{CachePolicy, Dataset, JobKind, JobPhase, JobRun, PinRule, PreloadRule};

use crate::volume::{LABEL_DATASET, LABEL_MANAGED_BY, MANAGED_BY};

/// Label naming the CachePolicy a job belongs to.
pub const LABEL_POLICY: &str = "strata.dev/policy";
/// Label: `preload` or `pin`.
pub const LABEL_KIND: &str = "strata.dev/job-kind";
/// Label: index of the rule in the policy's list.
pub const LABEL_RULE: &str = "strata.dev/rule";
/// Annotation naming the node a per-node pin job runs on.
pub const ANNOTATION_NODE: &str = "strata.dev/node";
/// Where the job's credential (its projected ServiceAccount token) is mounted.
pub const TOKEN_DIR: &str = "/var/run/strata";
/// Lifetime the job pod asks for its token (the shortest the API server grants); kubelet
/// renews it at 80%, so a long preload always holds a valid one.
pub const TOKEN_EXPIRATION_SECONDS: i64 = 600;

/// Everything a job manifest depends on besides the rule.
#[derive(Clone, Debug)]
pub struct JobSettings {
    /// Image with `strata-agent`.
    pub image: String,
    /// Its pull policy.
    pub image_pull_policy: String,
    /// Port of the agent API on the node.
    pub agent_port: u16,
    /// Tolerations (the DaemonSet's, so jobs run where agents run).
    pub tolerations: Vec<Toleration>,
    /// Node selector (the DaemonSet's).
    pub node_selector: BTreeMap<String, String>,
    /// Audience of the job pods' projected ServiceAccount token (the agents check it).
    pub token_audience: String,
}

/// A desired Job or CronJob.
#[derive(Clone, Debug)]
pub enum DesiredJob {
    /// Runs once.
    Once(Box<Job>),
    /// Runs on a schedule.
    Scheduled(Box<CronJob>),
}

impl DesiredJob {
    /// The object's name.
    pub fn name(&self) -> String {
        match self {
            DesiredJob::Once(j) => j.name_any(),
            DesiredJob::Scheduled(c) => c.name_any(),
        }
    }
}

fn kind_str(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Preload => "preload",
        JobKind::Pin => "pin",
    }
}

/// `<kind>-<dataset>-<hash8>`, at most 52 characters so a CronJob's Jobs
/// (which append 11 characters) stay within 63.
fn job_name(kind: JobKind, dataset: &str, hash: &str) -> String {
    let prefix = format!("{}-{dataset}", kind_str(kind));
    let keep = 52 - 1 - hash.len();
    let mut prefix: String = prefix.chars().take(keep).collect();
    while prefix.ends_with(['-', '.']) {
        prefix.pop();
    }
    format!("{prefix}-{hash}")
}

/// One job's inputs.
pub struct JobRequest<'a> {
    pub policy: &'a CachePolicy,
    pub dataset: &'a Dataset,
    pub kind: JobKind,
    pub rule: i32,
    /// `strata-agent` arguments after the subcommand's common ones.
    pub extra_args: Vec<String>,
    pub paths: &'a [String],
    /// Run on this node only (pins with replicas All).
    pub node: Option<&'a str>,
    pub schedule: Option<&'a str>,
}

/// `strata-agent <command> --agent <this node's agent> --token-file <the pod's token>
/// --dataset NS/NAME`: how every job pod starts.
pub fn agent_command(command: &str, dataset: &Dataset, settings: &JobSettings) -> Vec<String> {
    vec![
        command.to_string(),
        "--agent".into(),
        format!("http://$(STRATA_NODE_IP):{}", settings.agent_port),
        "--token-file".into(),
        format!("{TOKEN_DIR}/token"),
        "--dataset".into(),
        format!(
            "{}/{}",
            dataset.namespace().unwrap_or_default(),
            dataset.name_any()
        ),
    ]
}

/// The pod template shared by Jobs and CronJobs.
fn pod_template(req: &JobRequest<'_>, settings: &JobSettings) -> PodTemplateSpec {
    let mut args = agent_command(kind_str(req.kind), req.dataset, settings);
    args.push("--paths".into());
    args.extend(req.paths.iter().cloned());
    args.extend(req.extra_args.iter().cloned());
    let affinity = req.node.map(|node| Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".into(),
                        operator: "In".into(),
                        values: Some(vec![node.to_string()]),
                    }]),
                    ..NodeSelectorTerm::default()
                }],
            }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    });
    agent_job_pod(labels(req), args, affinity, settings)
}

/// A job pod that runs `strata-agent` with `args` against its node's agent, holding only
/// a token for the agents.
pub fn agent_job_pod(
    labels: BTreeMap<String, String>,
    args: Vec<String>,
    affinity: Option<Affinity>,
    settings: &JobSettings,
) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            // No token for the Kubernetes API: only the one for the agents, below.
            automount_service_account_token: Some(false),
            affinity,
            tolerations: (!settings.tolerations.is_empty()).then(|| settings.tolerations.clone()),
            node_selector: (!settings.node_selector.is_empty())
                .then(|| settings.node_selector.clone()),
            containers: vec![Container {
                name: "strata-agent".into(),
                image: Some(settings.image.clone()),
                image_pull_policy: Some(settings.image_pull_policy.clone()),
                command: Some(vec!["strata-agent".into()]),
                args: Some(args),
                env: Some(vec![
                    field_env("STRATA_NODE_IP", "status.hostIP"),
                    // The agent reports the run's progress under the Job's name,
                    // which the Job controller puts in this label of its pods.
                    field_env("STRATA_JOB_NAME", JOB_NAME_FIELD),
                ]),
                volume_mounts: Some(vec![VolumeMount {
                    name: "strata-credential".into(),
                    mount_path: TOKEN_DIR.into(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                }]),
                ..Container::default()
            }],
            // The pod's own ServiceAccount token for the Strata audience: the agents accept
            // it for this namespace's datasets only, it is useless against the API server,
            // and kubelet rotates it; nothing is stored in the tenant's namespace.
            volumes: Some(vec![Volume {
                name: "strata-credential".into(),
                projected: Some(ProjectedVolumeSource {
                    sources: Some(vec![VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            audience: Some(settings.token_audience.clone()),
                            expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                            path: "token".into(),
                            user: None,
                        }),
                        ..VolumeProjection::default()
                    }]),
                    ..ProjectedVolumeSource::default()
                }),
                ..Volume::default()
            }]),
            ..PodSpec::default()
        }),
    }
}

/// The pod label naming its Job, set by the Job controller (Kubernetes 1.27+).
pub const JOB_NAME_FIELD: &str = "metadata.labels['batch.kubernetes.io/job-name']";

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn labels(req: &JobRequest<'_>) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_POLICY.to_string(), req.policy.name_any()),
        (LABEL_DATASET.to_string(), req.dataset.name_any()),
        (LABEL_KIND.to_string(), kind_str(req.kind).to_string()),
        (LABEL_RULE.to_string(), req.rule.to_string()),
    ])
}

/// The Job or CronJob for one rule (and node). Its name carries a hash of
/// everything that shapes it, so any change makes a new object.
pub fn desired_job(req: &JobRequest<'_>, settings: &JobSettings) -> DesiredJob {
    let template = pod_template(req, settings);
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(&template).unwrap_or_default());
    hasher.update(req.schedule.unwrap_or("").as_bytes());
    hasher.update(req.dataset.uid().unwrap_or_default().as_bytes());
    let hash = hex::encode(hasher.finalize())[..8].to_string();
    let name = job_name(req.kind, &req.dataset.name_any(), &hash);
    let mut annotations = BTreeMap::new();
    if let Some(node) = req.node {
        annotations.insert(ANNOTATION_NODE.to_string(), node.to_string());
    }
    let metadata = ObjectMeta {
        name: Some(name),
        namespace: req.policy.namespace(),
        labels: Some(labels(req)),
        annotations: (!annotations.is_empty()).then_some(annotations),
        owner_references: req.policy.controller_owner_ref(&()).map(|r| vec![r]),
        ..ObjectMeta::default()
    };
    let job_spec = JobSpec {
        backoff_limit: Some(3),
        template,
        ..JobSpec::default()
    };
    match req.schedule {
        None => DesiredJob::Once(Box::new(Job {
            metadata,
            spec: Some(job_spec),
            status: None,
        })),
        Some(schedule) => DesiredJob::Scheduled(Box::new(CronJob {
            metadata: metadata.clone(),
            spec: CronJobSpec {
                schedule: schedule.to_string(),
                concurrency_policy: Some("Forbid".into()),
                successful_jobs_history_limit: Some(1),
                failed_jobs_history_limit: Some(1),
                job_template: JobTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: metadata.labels.clone(),
                        annotations: metadata.annotations.clone(),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(job_spec),
                },
                ..CronJobSpec::default()
            },
            status: None,
        })),
    }
}

/// Extra `strata-agent preload` arguments of a rule.
pub fn preload_args(rule: &PreloadRule) -> Vec<String> {
    vec!["--concurrency".into(), rule.concurrency.to_string()]
}

/// Extra `strata-agent pin` arguments of a rule. Replicas decide where Jobs run (one per node
/// for All), not what a Job does: each pins on the agent of its own node.
pub fn pin_args(rule: &PinRule) -> Vec<String> {
    match &rule.modified_within {
        Some(within) => vec!["--modified-within".into(), within.clone()],
        None => Vec::new(),
    }
}

fn parse_labels(meta: &ObjectMeta) -> Option<(JobKind, String, i32, String)> {
    let labels = meta.labels.as_ref()?;
    let kind = match labels.get(LABEL_KIND)?.as_str() {
        "preload" => JobKind::Preload,
        "pin" => JobKind::Pin,
        _ => return None,
    };
    Some((
        kind,
        labels.get(LABEL_POLICY)?.clone(),
        labels.get(LABEL_RULE)?.parse().ok()?,
        labels.get(LABEL_DATASET)?.clone(),
    ))
}

/// A Job's state as a `JobRun`.
pub fn job_run(job: &Job) -> Option<JobRun> {
    let (kind, policy, rule, dataset) = parse_labels(&job.metadata)?;
    let status = job.status.clone().unwrap_or_default();
    let failed_condition = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Failed" && c.status == "True");
    let phase = if status.succeeded.unwrap_or(0) > 0 {
        JobPhase::Succeeded
    } else if failed_condition {
        JobPhase::Failed
    } else if status.active.unwrap_or(0) > 0 {
        JobPhase::Running
    } else {
        JobPhase::Pending
    };
    let message = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed" && c.status == "True")
        .and_then(|c| c.message.clone());
    Some(JobRun {
        kind,
        policy,
        rule,
        dataset,
        job: job.metadata.name.clone(),
        phase,
        bytes_done: None,
        bytes_total: None,
        files_done: None,
        files_total: None,
        percent: None,
        start_time: status.start_time,
        completion_time: status.completion_time,
        message,
    })
}

/// A CronJob's last run as a `JobRun`.
pub fn cron_job_run(cron: &CronJob) -> Option<JobRun> {
    let (kind, policy, rule, dataset) = parse_labels(&cron.metadata)?;
    let status = cron.status.clone().unwrap_or_default();
    let running = status.active.as_ref().is_some_and(|a| !a.is_empty());
    let phase = match (&status.last_schedule_time, &status.last_successful_time) {
        _ if running => JobPhase::Running,
        (Some(scheduled), Some(done)) if done.0 >= scheduled.0 => JobPhase::Succeeded,
        (Some(_), _) => JobPhase::Failed,
        (None, _) => JobPhase::Pending,
    };
    Some(JobRun {
        kind,
        policy,
        rule,
        dataset,
        job: cron.metadata.name.clone(),
        phase,
        bytes_done: None,
        bytes_total: None,
        files_done: None,
        files_total: None,
        percent: None,
        start_time: status.last_schedule_time,
        completion_time: status.last_successful_time,
        message: None,
    })
}

/// Whether a Job was made by a CronJob (those are the CronJob's business).
pub fn created_by_cron_job(job: &Job) -> bool {
    job.owner_references().iter().any(|r| r.kind == "CronJob")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CachePolicy {
        let mut p = CachePolicy::new(
            "hot-training",
            serde_json::from_value(serde_json::json!({"quota": "1Gi"})).unwrap(),
        );
        p.metadata.namespace = Some("ml".into());
        p.metadata.uid = Some("p-uid".into());
        p
    }

    fn dataset(name: &str) -> Dataset {
        let mut ds = Dataset::new(
            name,
            serde_json::from_value(serde_json::json!({"sources": [{"name": "a", "uri": "s3://b/p", "mountPath": "/"}]}))
                .unwrap(),
        );
        ds.metadata.namespace = Some("ml".into());
        ds.metadata.uid = Some("d-uid".into());
        ds
    }

    fn settings() -> JobSettings {
        JobSettings {
            image: "strata:1".into(),
            image_pull_policy: "IfNotPresent".into(),
            agent_port: 7070,
            tolerations: vec![],
            node_selector: BTreeMap::new(),
            token_audience: "strata.dev/agent".into(),
        }
    }

    #[test]
    fn names_are_stable_short_and_change_with_the_rule() {
        let (p, d) = (policy(), dataset(&"x".repeat(60)));
        let paths = vec!["/labels/**".to_string()];
        fn req<'a>(p: &'a CachePolicy, d: &'a Dataset, paths: &'a [String]) -> JobRequest<'a> {
            JobRequest {
                policy: p,
                dataset: d,
                kind: JobKind::Preload,
                rule: 0,
                extra_args: vec![],
                paths,
                node: None,
                schedule: None,
            }
        }
        let a = desired_job(&req(&p, &d, &paths), &settings()).name();
        let b = desired_job(&req(&p, &d, &paths), &settings()).name();
        assert_eq!(a, b);
        assert!(a.len() <= 52 && a.starts_with("preload-xxx"), "{a}");
        let other = vec!["/train/**".to_string()];
        assert_ne!(a, desired_job(&req(&p, &d, &other), &settings()).name());
    }

    #[test]
    fn job_runs_the_agent_cli_and_reads_back() {
        let (p, d) = (policy(), dataset("imagenet"));
        let paths = vec!["/train/**".to_string()];
        let req = JobRequest {
            policy: &p,
            dataset: &d,
            kind: JobKind::Pin,
            rule: 1,
            extra_args: vec!["--modified-within".into(), "14d".into()],
            paths: &paths,
            node: Some("node-a"),
            schedule: None,
        };
        let DesiredJob::Once(job) = desired_job(&req, &settings()) else {
            panic!("not a Job")
        };
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let args = pod.containers[0].args.clone().unwrap();
        assert_eq!(
            args,
            [
                "pin",
                "--agent",
                "http://$(STRATA_NODE_IP):7070",
                "--token-file",
                "/var/run/strata/token",
                "--dataset",
                "ml/imagenet",
                "--paths",
                "/train/**",
                "--modified-within",
                "14d"
            ]
        );
        let env = pod.containers[0].env.as_ref().unwrap();
        let job_name = env.iter().find(|e| e.name == "STRATA_JOB_NAME").unwrap();
        assert_eq!(
            job_name
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.labels['batch.kubernetes.io/job-name']"
        );
        let terms = &pod
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms;
        assert_eq!(
            terms[0].match_fields.as_ref().unwrap()[0]
                .values
                .as_ref()
                .unwrap()[0],
            "node-a"
        );
        assert_eq!(
            job.metadata.owner_references.as_ref().unwrap()[0].uid,
            "p-uid"
        );
        // The credential is the pod's own token for the agents' audience, not a Secret.
        let volume = &pod.volumes.as_ref().unwrap()[0];
        assert!(volume.secret.is_none());
        let projection = volume.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
            .service_account_token
            .clone()
            .unwrap();
        assert_eq!(projection.audience.as_deref(), Some("strata.dev/agent"));
        assert_eq!(projection.path, "token");
        assert_eq!(pod.automount_service_account_token, Some(false));
        let run = job_run(&job).unwrap();
        assert_eq!(
            (run.kind, run.rule, run.phase),
            (JobKind::Pin, 1, JobPhase::Pending)
        );
        assert_eq!(run.dataset, "imagenet");
    }
}
