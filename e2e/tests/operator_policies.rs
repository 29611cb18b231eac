//! CachePolicy rules become Jobs and CronJobs owned by the policy; changing a
//! rule replaces its Job (new name, old one deleted), never duplicates it;
//! a schedule turns it into a CronJob; the status lists datasets and runs.

mod operator_common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use operator_common::*;
use strata_crds::CachePolicy;
use strata_e2e::{Cluster, TestNamespace};

const WAIT: Duration = Duration::from_secs(60);

fn policy(preload: &str) -> String {
    format!(
        r#"
apiVersion: strata.dev/v1alpha1
kind: CachePolicy
metadata: {{name: warm}}
spec:
  quota: 1Gi
  datasetSelector: {{matchLabels: {{app: trainer}}}}
  preload:
{preload}
"#
    )
}

const DATASETS: &str = r#"
apiVersion: strata.dev/v1alpha1
kind: Dataset
metadata: {name: shards, labels: {app: trainer}}
spec:
  sources: [{name: local, uri: "file:///srv/shards", mountPath: /}]
---
apiVersion: strata.dev/v1alpha1
kind: Dataset
metadata: {name: unrelated, labels: {app: other}}
spec:
  sources: [{name: local, uri: "file:///srv/other", mountPath: /}]
"#;

/// Names of the Jobs the policy owns (not counting CronJob-made ones), and their args.
async fn policy_jobs(jobs: &Api<Job>) -> Result<Vec<(String, Vec<String>)>> {
    let list = jobs
        .list(&ListParams::default().labels("strata.dev/policy=warm"))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .map(|j| {
            let args = j
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .map(|p| p.containers[0].args.clone().unwrap_or_default())
                .unwrap_or_default();
            (j.name_any(), args)
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_changes_replace_jobs_without_duplicates() -> Result<()> {
    let cluster = Cluster::shared().await?;
    install_crds(cluster).await?;
    let ns = TestNamespace::create(cluster, "op-policies").await?;
    let client = ns.client().clone();
    let namespace = ns.name().to_string();
    let operator = RunningOperator::start(cluster, &namespace, "op-policies", &[]).await?;
    let apply = |manifest: String| {
        let namespace = namespace.clone();
        async move { cluster.apply_in(&namespace, &manifest).await }
    };
    apply(DATASETS.to_string()).await?;
    apply(policy(r#"    - paths: ["/2026-11-01/**"]"#)).await?;

    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let first = eventually("one preload Job", WAIT, || async {
        let jobs = policy_jobs(&jobs).await?;
        Ok((jobs.len() == 1).then(|| jobs[0].clone()))
    })
    .await?;
    ensure!(
        first.1.starts_with(&["preload".to_string()]),
        "{:?}",
        first.1
    );
    ensure!(
        first.1.contains(&format!("{namespace}/shards"))
            && first.1.contains(&"/2026-11-01/**".to_string()),
        "{:?}",
        first.1
    );
    let job = jobs.get(&first.0).await?;
    ensure!(
        job.owner_references()[0].kind == "CachePolicy" && job.owner_references()[0].name == "warm"
    );
    ensure!(job.labels().get("strata.dev/dataset").map(String::as_str) == Some("shards"));
    // Job pods present their own ServiceAccount token for the agents' audience: nothing is
    // copied into the policy's namespace.
    let pod = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .unwrap_or_default();
    let projection = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find_map(|v| v.projected)
        .and_then(|p| p.sources)
        .unwrap_or_default()
        .into_iter()
        .find_map(|s| s.service_account_token);
    ensure!(
        projection.is_some_and(|t| t.audience.as_deref() == Some("strata.dev/agent")),
        "the job pod has no projected token for the agents"
    );
    ensure!(pod.automount_service_account_token == Some(false));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    // (Here the policy's namespace is also the operator's, which holds its own two.)
    let names: Vec<String> = secrets
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    ensure!(
        names
            .iter()
            .all(|n| n == "strata-datasets" || n == "strata-peer-token"),
        "the operator stored a Secret for the jobs: {names:?}"
    );

    let policies: Api<CachePolicy> = Api::namespaced(client.clone(), &namespace);
    let status = eventually("policy status", WAIT, || async {
        let st = policies.get("warm").await?.status.unwrap_or_default();
        Ok((st.datasets == ["shards"] && st.last_preloads.len() == 1).then_some(st))
    })
    .await?;
    ensure!(status.dataset_count == Some(1));
    ensure!(status.last_preloads[0].job.as_deref() == Some(first.0.as_str()));

    // Same spec applied again: nothing new.
    apply(policy(r#"    - paths: ["/2026-11-01/**"]"#)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(
        policy_jobs(&jobs)
            .await?
            .iter()
            .map(|j| &j.0)
            .collect::<Vec<_>>()
            == [&first.0],
        "re-apply changed the jobs"
    );

    // A changed rule: a new Job, the old one deleted.
    apply(policy(r#"    - paths: ["/2026-11-02/**"]"#)).await?;
    let second = eventually("the Job replaced", WAIT, || async {
        let jobs = policy_jobs(&jobs).await?;
        Ok((jobs.len() == 1 && jobs[0].0 != first.0).then(|| jobs[0].clone()))
    })
    .await?;
    ensure!(
        second.1.contains(&"/2026-11-02/**".to_string()),
        "{:?}",
        second.1
    );
    // Stays that way over several reconciles (status updates trigger more).
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let names: BTreeSet<String> = policy_jobs(&jobs).await?.into_iter().map(|j| j.0).collect();
        ensure!(
            names == BTreeSet::from([second.0.clone()]),
            "duplicate or stale jobs: {names:?}"
        );
    }

    // Two rules, one scheduled: one Job and one CronJob.
    apply(policy("    - paths: [\"/2026-11-02/**\"]\n    - paths: [\"/index/**\"]\n      schedule: \"0 3 * * *\"")).await?;
    let crons: Api<CronJob> = Api::namespaced(client.clone(), &namespace);
    let by_policy = ListParams::default().labels("strata.dev/policy=warm");
    let cron = eventually("one CronJob", WAIT, || async {
        let items = crons.list(&by_policy).await?.items;
        Ok((items.len() == 1).then(|| items[0].clone()))
    })
    .await?;
    ensure!(cron.spec.schedule == "0 3 * * *");
    ensure!(cron.owner_references()[0].kind == "CachePolicy");
    let names: Vec<String> = policy_jobs(&jobs).await?.into_iter().map(|j| j.0).collect();
    ensure!(
        names == [second.0.clone()],
        "the unchanged rule's Job must stay: {names:?}"
    );

    // The dataset leaves the selector: its jobs go.
    cluster
        .kubectl(&[
            "-n",
            &namespace,
            "label",
            "dataset",
            "shards",
            "app=retired",
            "--overwrite",
        ])
        .await?;
    eventually("jobs removed", WAIT, || async {
        let jobs_left = policy_jobs(&jobs).await?.len();
        let crons_left = crons.list(&by_policy).await?.items.len();
        Ok((jobs_left == 0 && crons_left == 0).then_some(()))
    })
    .await?;
    eventually("status emptied", WAIT, || async {
        let st = policies.get("warm").await?.status.unwrap_or_default();
        Ok((st.datasets.is_empty() && st.dataset_count == Some(0)).then_some(()))
    })
    .await?;

    ns.cleanup().await?;
    operator.stop().await?;
    Ok(())
}
