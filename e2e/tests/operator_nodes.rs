//! The operator creates, from its flags, the node DaemonSet (agent, CSI
//! plugin, which registers itself with the kubelet), the CSIDriver object, the agent token and
//! the datasets Secret; namespaced ones are owned by the operator's
//! Deployment. The metrics and health endpoint answers. Node reports are
//! summed into a Dataset's status only when they carry its uid; the progress
//! they report for preload/pin Jobs is summed into `status.jobs`, and source
//! errors they report make the Dataset Degraded (`NodesHealthy=False`) until
//! they stop.

mod operator_common;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::storage::v1::CSIDriver;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::DeleteParams;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use operator_common::*;
use strata_crds::{
    Dataset, DatasetPhase, DatasetStatus, JobPhase, NodeDatasetUsage, NodeError, NodeJobProgress,
};
use strata_e2e::{Cluster, TestNamespace};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_daemonset_and_csidriver_follow_the_flags() -> Result<()> {
    let cluster = Cluster::shared().await?;
    install_crds(cluster).await?;
    let ns = TestNamespace::create(cluster, "op-nodes").await?;
    let client = ns.client().clone();
    let namespace = ns.name().to_string();

    // The operator's own Deployment (its pods never run: there is no kubelet).
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "strata-operator"},
        "spec": {
            "selector": {"matchLabels": {"app": "strata-operator"}},
            "template": {
                "metadata": {"labels": {"app": "strata-operator"}},
                "spec": {"containers": [{"name": "operator", "image": "strata:e2e"}]}
            }
        }
    }))?;
    let deployment = Api::<Deployment>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &deployment)
        .await?;

    let operator = RunningOperator::start(
        cluster,
        &namespace,
        "op-nodes",
        &[
            "--owner-deployment",
            "strata-operator",
            "--node-selector",
            "strata.dev/cache=true",
            "--tolerations",
            r#"[{"key":"gpu","operator":"Exists","effect":"NoSchedule"}]"#,
            "--memory-tier-size",
            "2Gi",
            "--disk-tier-path",
            "/mnt/nvme/strata",
            "--disk-tier-size",
            "50Gi",
            "--ephemeral-tier-size",
            "20Gi",
        ],
    )
    .await?;

    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &namespace);
    let ds = eventually("DaemonSet strata-node", WAIT, || async {
        Ok(daemonsets.get_opt("strata-node").await?)
    })
    .await?;
    let owner = &ds.owner_references()[0];
    ensure!(
        owner.kind == "Deployment" && owner.uid == deployment.uid().unwrap(),
        "{owner:?}"
    );
    let pod = ds.spec.template.spec.clone().unwrap();
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    ensure!(names == ["agent", "csi"], "{names:?}");
    ensure!(pod.containers[0].image.as_deref() == Some("strata:e2e"));
    ensure!(
        pod.node_selector
            == Some(BTreeMap::from([(
                "strata.dev/cache".to_string(),
                "true".to_string()
            )]))
    );
    ensure!(
        pod.tolerations
            .as_ref()
            .is_some_and(|t| t[0].key.as_deref() == Some("gpu"))
    );
    let agent_args = pod.containers[0].args.clone().unwrap_or_default();
    ensure!(
        agent_args.windows(2).any(|w| w == ["--memory", "2Gi"])
            && agent_args.windows(2).any(|w| w == ["--disk", "50Gi"]),
        "{agent_args:?}"
    );
    let volumes = pod.volumes.clone().unwrap_or_default();
    let cache = volumes
        .iter()
        .find(|v| v.name == "cache")
        .and_then(|v| v.host_path.as_ref())
        .map(|h| h.path.clone());
    ensure!(cache.as_deref() == Some("/mnt/nvme/strata"), "{cache:?}");
    // The ephemeral tier: an emptyDir with the size limit, handed to the agent.
    let ephemeral = volumes
        .iter()
        .find(|v| v.name == "ephemeral-cache")
        .and_then(|v| v.empty_dir.as_ref())
        .and_then(|e| e.size_limit.clone());
    ensure!(
        ephemeral.as_ref().map(|q| q.0.as_str()) == Some("20Gi"),
        "{ephemeral:?}"
    );
    ensure!(
        agent_args
            .windows(2)
            .any(|w| w == ["--ephemeral-cache-dir", "/var/cache/strata-ephemeral"])
            && agent_args
                .windows(2)
                .any(|w| w == ["--ephemeral-disk", "20Gi"]),
        "{agent_args:?}"
    );
    let bidirectional = pod
        .containers
        .iter()
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .filter(|m| m.mount_propagation.as_deref() == Some("Bidirectional"))
        .count();
    ensure!(bidirectional >= 2, "mount propagation");

    let drivers: Api<CSIDriver> = Api::all(client.clone());
    let driver = eventually("CSIDriver", WAIT, || async {
        Ok(drivers.get_opt("csi.strata.dev").await?)
    })
    .await?;
    ensure!(
        driver.spec.attach_required == Some(false) && driver.spec.pod_info_on_mount == Some(true)
    );
    ensure!(
        driver.spec.volume_lifecycle_modes == Some(vec!["Persistent".into(), "Ephemeral".into()])
    );

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let token = eventually("peer token", WAIT, || async {
        Ok(secrets.get_opt("strata-peer-token").await?)
    })
    .await?;
    let value = token
        .data
        .unwrap_or_default()
        .get("token")
        .map(|t| t.0.clone())
        .unwrap_or_default();
    ensure!(
        value.len() == 64 && value.iter().all(u8::is_ascii_hexdigit),
        "token is not 32 random bytes in hex"
    );
    ensure!(token.metadata.owner_references.unwrap_or_default()[0].kind == "Deployment");
    let datasets_secret = secrets.get("strata-datasets").await?;
    ensure!(
        datasets_secret
            .labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str)
            == Some("strata-operator")
    );

    ensure!(operator.http_get("/healthz")? == "ok");
    let metrics = operator.http_get("/metrics")?;
    ensure!(metrics.contains("strata_operator_leader 1"), "{metrics}");
    ensure!(
        metrics.contains("strata_operator_reconciles_total{controller=\"nodes\"}"),
        "{metrics}"
    );

    ns.cleanup().await?;
    operator.stop().await?;
    Ok(())
}

/// A Dataset with one node-local source (checked by the agents, so no store is needed).
fn local_dataset(name: &str) -> Result<Dataset> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "strata.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name},
        "spec": {"sources": [{"name": "disk", "uri": "file:///data/scratch", "mountPath": "/"}]},
    }))?)
}

/// Waits until the Dataset's status satisfies `check`; returns that status.
async fn wait_status(
    datasets: &Api<Dataset>,
    name: &str,
    what: &str,
    check: impl Fn(&DatasetStatus) -> bool,
) -> Result<DatasetStatus> {
    eventually(&format!("{name}: {what}"), WAIT, || async {
        let st = datasets
            .get_opt(name)
            .await?
            .and_then(|d| d.status)
            .unwrap_or_default();
        Ok(check(&st).then_some(st))
    })
    .await
}

fn report<'a>(namespace: &'a str, name: &'a str, uid: &str, cached_bytes: i64) -> Report<'a> {
    Report {
        namespace,
        name,
        uid: Some(uid.to_string()),
        cached_bytes,
        hits: 1,
        misses: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_about_an_earlier_dataset_of_the_same_name_are_not_counted() -> Result<()> {
    let cluster = Cluster::shared().await?;
    install_crds(cluster).await?;
    let ns = TestNamespace::create(cluster, "op-uid").await?;
    let client = ns.client().clone();
    let namespace = ns.name().to_string();
    let operator = RunningOperator::start(cluster, &namespace, "op-uid", &[]).await?;
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), &namespace);
    let (lagging, fresh) = (format!("{namespace}-lagging"), format!("{namespace}-fresh"));

    let first = datasets
        .create(&PostParams::default(), &local_dataset("scratch")?)
        .await?;
    let first_uid = first.uid().unwrap_or_default();
    // The agents are told the uid, to echo it in their reports.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let key = format!("{namespace}.scratch.yaml");
    eventually("agent config with the uid", WAIT, || async {
        let data = secrets
            .get_opt("strata-datasets")
            .await?
            .and_then(|s| s.data)
            .unwrap_or_default();
        let text = data
            .get(&key)
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .unwrap_or_default();
        Ok(text.contains(&format!("uid: {first_uid}")).then_some(()))
    })
    .await?;
    report_node(
        &client,
        &lagging,
        &[report(&namespace, "scratch", &first_uid, 5_000)],
    )
    .await?;
    wait_status(&datasets, "scratch", "Ready with 5000 bytes", |st| {
        st.phase == Some(DatasetPhase::Ready) && st.cached_bytes == Some(5_000)
    })
    .await?;

    // Delete it; once the node stops reporting it the finalizer lets go.
    datasets.delete("scratch", &DeleteParams::default()).await?;
    report_node(&client, &lagging, &[]).await?;
    eventually("first dataset gone", WAIT, || async {
        Ok(datasets.get_opt("scratch").await?.is_none().then_some(()))
    })
    .await?;

    // A lagging agent reports the old dataset again while a new one of the
    // same name appears: its 5000 bytes must not count for the new one.
    report_node(
        &client,
        &lagging,
        &[report(&namespace, "scratch", &first_uid, 5_000)],
    )
    .await?;
    let second = datasets
        .create(&PostParams::default(), &local_dataset("scratch")?)
        .await?;
    let second_uid = second.uid().unwrap_or_default();
    ensure!(second_uid != first_uid);
    let pending = wait_status(&datasets, "scratch", "Pending, nothing cached", |st| {
        st.phase == Some(DatasetPhase::Pending)
    })
    .await?;
    ensure!(
        pending.cached_bytes == Some(0) && pending.nodes == Some(0),
        "{pending:?}"
    );
    // A fresh report of the new dataset counts; the lagging one still does not.
    report_node(
        &client,
        &fresh,
        &[report(&namespace, "scratch", &second_uid, 1_000)],
    )
    .await?;
    let ready = wait_status(&datasets, "scratch", "Ready from the fresh node", |st| {
        st.phase == Some(DatasetPhase::Ready)
    })
    .await?;
    ensure!(
        ready.cached_bytes == Some(1_000) && ready.nodes == Some(1) && ready.hits == Some(1),
        "{ready:?}"
    );

    report_node(&client, &lagging, &[]).await?;
    report_node(&client, &fresh, &[]).await?;
    delete_nodes(&client, &[&lagging, &fresh]).await;
    ns.cleanup().await?;
    operator.stop().await?;
    Ok(())
}

fn usage(
    namespace: &str,
    uid: &str,
    jobs: Vec<NodeJobProgress>,
    error: Option<&str>,
) -> NodeDatasetUsage {
    NodeDatasetUsage {
        namespace: namespace.to_string(),
        name: "scratch".into(),
        uid: Some(uid.to_string()),
        cached_bytes: 100,
        pinned_bytes: None,
        files: 1,
        hits: 0,
        misses: 0,
        last_update: Some(Time(Timestamp::now())),
        last_error: error.map(|message| NodeError {
            message: message.to_string(),
            time: Time(Timestamp::now()),
        }),
        jobs,
        pins: vec![],
        writes: None,
    }
}

fn progress(job: &str, phase: JobPhase, bytes_done: i64, files_done: i64) -> NodeJobProgress {
    NodeJobProgress {
        job: job.to_string(),
        phase,
        files_done,
        files_total: 10,
        bytes_done,
        bytes_total: 1_000,
        start_time: Some(Time(Timestamp::now())),
        completion_time: (phase != JobPhase::Running).then(|| Time(Timestamp::now())),
        message: None,
    }
}

/// Dataset `scratch`'s preload run `job`, as the nodes report their share of it.
struct ScratchRun<'a> {
    client: &'a kube::Client,
    namespace: &'a str,
    uid: &'a str,
    job: &'a str,
}

impl ScratchRun<'_> {
    /// `node` reports `bytes_done` of 1000 bytes and `files_done` of 10 files in `phase`, and
    /// the source error it met last, if any.
    async fn report(
        &self,
        node: &str,
        phase: JobPhase,
        bytes_done: i64,
        files_done: i64,
        error: Option<&str>,
    ) -> Result<()> {
        let job = progress(self.job, phase, bytes_done, files_done);
        let usage = usage(self.namespace, self.uid, vec![job], error);
        report_node_usage(self.client, node, vec![usage]).await
    }
}

fn condition<'a>(
    st: &'a DatasetStatus,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    st.conditions.iter().find(|c| c.type_ == type_)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_progress_and_source_errors_from_the_nodes_reach_the_dataset() -> Result<()> {
    let cluster = Cluster::shared().await?;
    install_crds(cluster).await?;
    let ns = TestNamespace::create(cluster, "op-progress").await?;
    let client = ns.client().clone();
    let namespace = ns.name().to_string();
    let operator = RunningOperator::start(cluster, &namespace, "op-progress", &[]).await?;
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), &namespace);
    let (a, b) = (format!("{namespace}-a"), format!("{namespace}-b"));

    let policy = r#"
apiVersion: strata.dev/v1alpha1
kind: CachePolicy
metadata: {name: warm}
spec: {quota: 1Gi, datasetSelector: {}, preload: [{paths: ["/**"]}]}
"#;
    cluster.apply_in(&namespace, policy).await?;
    let ds = datasets
        .create(&PostParams::default(), &local_dataset("scratch")?)
        .await?;
    let uid = ds.uid().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let job = eventually("the preload Job", WAIT, || async {
        let list = jobs.list(&Default::default()).await?;
        Ok(list.items.into_iter().find_map(|j| {
            j.metadata
                .name
                .filter(|n| n.starts_with("preload-scratch-"))
        }))
    })
    .await?;

    let scratch = ScratchRun {
        client: &client,
        namespace: &namespace,
        uid: &uid,
        job: &job,
    };

    // Two nodes report their share of the run: 300 + 200 of 2000 bytes.
    scratch.report(&a, JobPhase::Running, 300, 3, None).await?;
    scratch.report(&b, JobPhase::Running, 200, 2, None).await?;
    let st = wait_status(&datasets, "scratch", "job progress summed", |st| {
        st.jobs
            .iter()
            .any(|r| r.job.as_deref() == Some(&job) && r.bytes_done == Some(500))
    })
    .await?;
    let run = st
        .jobs
        .iter()
        .find(|r| r.job.as_deref() == Some(&job))
        .unwrap();
    ensure!(
        run.phase == JobPhase::Running
            && run.bytes_total == Some(2_000)
            && run.files_done == Some(5)
            && run.files_total == Some(20)
            && run.percent == Some(25),
        "{run:?}"
    );
    ensure!(
        condition(&st, "Preloading")
            .is_some_and(|c| c.status == "True" && c.message.contains(&format!("{job} (25%)"))),
        "{:?}",
        st.conditions
    );
    let wide = cluster
        .kubectl(&["-n", &namespace, "get", "datasets", "-o", "wide"])
        .await?;
    let header: Vec<&str> = wide
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let row: Vec<&str> = wide
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    ensure!(
        header
            .windows(5)
            .any(|w| w == ["POLICY", "JOB", "JOB", "%", "AGE"])
            && row.windows(3).any(|w| w == ["warm", job.as_str(), "25"]),
        "{wide}"
    );
    ensure!(st.phase == Some(DatasetPhase::Ready), "{st:?}");

    // Node b fails to read the source: Degraded with NodesHealthy=False naming it.
    scratch
        .report(&a, JobPhase::Succeeded, 1_000, 10, None)
        .await?;
    scratch
        .report(
            &b,
            JobPhase::Running,
            400,
            4,
            Some("source disk (file:///data/scratch): permission denied"),
        )
        .await?;
    let st = wait_status(&datasets, "scratch", "Degraded by node errors", |st| {
        st.phase == Some(DatasetPhase::Degraded)
    })
    .await?;
    let healthy = condition(&st, "NodesHealthy")
        .cloned()
        .context("no NodesHealthy condition")?;
    ensure!(
        healthy.status == "False"
            && healthy.reason == "NodeReportsErrors"
            && healthy.message.contains(&b)
            && !healthy.message.contains(&a)
            && healthy.message.contains("permission denied"),
        "{healthy:?}"
    );
    let ready = condition(&st, "Ready").cloned().context("no Ready")?;
    ensure!(
        ready.status == "False" && ready.reason == "NodeReportsErrors",
        "{ready:?}"
    );
    let events = eventually("NodeReportsErrors event", WAIT, || async {
        let events = events_for(&client, &namespace, "scratch").await?;
        Ok(events
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "NodeReportsErrors")
            .then_some(events))
    })
    .await?;
    ensure!(!events.is_empty());

    // The error stops and the run completes everywhere: Ready, 100%, not preloading.
    scratch
        .report(&b, JobPhase::Succeeded, 1_000, 10, None)
        .await?;
    let st = wait_status(&datasets, "scratch", "Ready again, run done", |st| {
        st.phase == Some(DatasetPhase::Ready)
            && st.jobs.iter().any(|r| r.phase == JobPhase::Succeeded)
    })
    .await?;
    let run = st
        .jobs
        .iter()
        .find(|r| r.job.as_deref() == Some(&job))
        .unwrap();
    ensure!(
        run.percent == Some(100) && run.completion_time.is_some(),
        "{run:?}"
    );
    ensure!(
        condition(&st, "NodesHealthy")
            .is_some_and(|c| c.status == "True" && c.reason == "NoNodeErrors")
            && condition(&st, "Preloading").is_some_and(|c| c.status == "False"),
        "{:?}",
        st.conditions
    );

    report_node(&client, &a, &[]).await?;
    report_node(&client, &b, &[]).await?;
    delete_nodes(&client, &[&a, &b]).await;
    ns.cleanup().await?;
    operator.stop().await?;
    Ok(())
}
