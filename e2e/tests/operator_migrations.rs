//! Migrations on a real kube-apiserver (with its Job controller), a real S3 server (moto)
//! and the operator in process: a Migration becomes a Job that runs `strata-agent migrate
//! --migration` against its node's agent, and the agents are handed the target (with its
//! credentials) beside the dataset; the progress the agents report (written here as an
//! agent writes its StrataNode) shows in the Migration's status (objects, bytes, percent,
//! rate, ETA) and in `kubectl get migrations`; once the Job succeeds the copy is Copied,
//! with `switchSource` Switched, and the agents are handed the dataset with the source
//! served from the target, and back when `switchSource` is unset. A Migration naming a
//! source the dataset lacks fails, saying which sources there are; one whose target's
//! Secret is missing waits, saying which Secret, and leaves the dataset served.

mod operator_common;

use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use operator_common::*;
use strata_crds::{
    Dataset, JobPhase, Migration, MigrationPhase, NodeDatasetUsage, NodeJobProgress,
};
use strata_e2e::{Cluster, TestNamespace};

const WAIT: Duration = Duration::from_secs(60);

fn manifests(namespace: &str, endpoint: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: s3-creds, namespace: {namespace}}}
stringData: {{AWS_ACCESS_KEY_ID: minioadmin, AWS_SECRET_ACCESS_KEY: minioadmin}}
---
apiVersion: strata.dev/v1alpha1
kind: Dataset
metadata: {{name: lake, namespace: {namespace}}}
spec:
  sources:
  - name: warehouse
    uri: s3://onprem/warehouse/
    mountPath: /warehouse
    endpoint: {endpoint}
    region: us-east-1
    credentialsSecretRef: {{name: s3-creds}}
---
apiVersion: strata.dev/v1alpha1
kind: Migration
metadata: {{name: to-cloud, namespace: {namespace}}}
spec:
  dataset: lake
  source: warehouse
  target:
    uri: s3://cloud/warehouse/
    endpoint: {endpoint}
    region: us-east-1
    credentialsSecretRef: {{name: s3-creds}}
  concurrency: 8
"#
    )
}

async fn agent_config(client: &kube::Client, namespace: &str) -> Result<String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = secrets.get("strata-datasets").await?;
    let data = secret.data.unwrap_or_default();
    Ok(data
        .get(&format!("{namespace}.lake.yaml"))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .unwrap_or_default())
}

/// The agent's report of the Migration's run under its Job's name.
async fn report_progress(
    client: &kube::Client,
    ds: &Dataset,
    job: &str,
    done: (i64, i64),
    started_secs_ago: i64,
) -> Result<()> {
    let now = Timestamp::now();
    let run = NodeJobProgress {
        job: job.to_string(),
        phase: JobPhase::Running,
        files_done: done.0,
        files_total: 400,
        bytes_done: done.1,
        bytes_total: 4 << 30,
        start_time: Some(Time(Timestamp::from_second(
            now.as_second() - started_secs_ago,
        )?)),
        completion_time: None,
        message: None,
    };
    let usage = NodeDatasetUsage {
        namespace: ds.namespace().unwrap_or_default(),
        name: ds.name_any(),
        uid: ds.uid(),
        cached_bytes: 0,
        pinned_bytes: None,
        files: 0,
        hits: 0,
        misses: 0,
        last_update: Some(Time(now)),
        last_error: None,
        jobs: vec![run],
        pins: vec![],
        writes: None,
    };
    report_node_usage(client, "node-m1", vec![usage]).await
}

fn phase(m: &Migration) -> Option<MigrationPhase> {
    m.status.as_ref().and_then(|s| s.phase)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_runs_as_a_job_reports_progress_and_switches_the_source() -> Result<()> {
    let cluster = Cluster::shared().await?;
    install_crds(cluster).await?;
    let ns = TestNamespace::create(cluster, "op-migrations").await?;
    let client = ns.client().clone();
    let namespace = ns.name().to_string();
    let s3 = S3Server::start()?;
    for bucket in ["onprem", "cloud"] {
        s3.create_bucket(bucket)?;
    }
    s3.put_object("onprem", "warehouse/events/a.parquet", 1000)?;
    let operator = RunningOperator::start(cluster, &namespace, "op-migrations", &[]).await?;
    cluster
        .apply(&manifests(&namespace, &s3.endpoint()))
        .await?;

    // The Job: the agent command for the migration, on a node's agent, no API token.
    let migrations: Api<Migration> = Api::namespaced(client.clone(), &namespace);
    let m = eventually("Migration Copying with its Job", WAIT, || async {
        let m = migrations.get("to-cloud").await?;
        Ok((phase(&m) == Some(MigrationPhase::Copying)).then_some(m))
    })
    .await?;
    let job_name = m.status.as_ref().unwrap().job.clone().unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let job = jobs.get(&job_name).await?;
    let pod = job.spec.clone().unwrap().template.spec.unwrap();
    let args = pod.containers[0].args.clone().unwrap().join(" ");
    ensure!(
        args.starts_with("migrate --agent http://$(STRATA_NODE_IP):")
            && args.ends_with(&format!("--dataset {namespace}/lake --migration to-cloud")),
        "{args}"
    );
    ensure!(pod.automount_service_account_token == Some(false));
    ensure!(job.owner_references()[0].name == "to-cloud");

    // The agents have the target, with its credentials, beside the dataset.
    let config = eventually("the migration in the agent config", WAIT, || async {
        let config = agent_config(&client, &namespace).await?;
        Ok(config.contains("migrations:").then_some(config))
    })
    .await?;
    for needle in [
        "name: to-cloud",
        "source: warehouse",
        "uri: s3://cloud/warehouse/",
        "name: migration-to-cloud",
        "concurrency: 8",
    ] {
        ensure!(config.contains(needle), "no {needle:?} in:\n{config}");
    }
    ensure!(
        config.matches("secretAccessKey: minioadmin").count() == 2,
        "the source's and the target's credentials:\n{config}"
    );

    // Progress as the agent reports it: 1 GiB of 4 in 10 s.
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), &namespace);
    let ds = datasets.get("lake").await?;
    report_progress(&client, &ds, &job_name, (100, 1 << 30), 10).await?;
    let m = eventually("progress in the status", WAIT, || async {
        let m = migrations.get("to-cloud").await?;
        Ok((m.status.as_ref().and_then(|s| s.percent) == Some(25)).then_some(m))
    })
    .await?;
    let st = m.status.clone().unwrap();
    assert_eq!((st.objects_done, st.objects_total), (Some(100), Some(400)));
    assert_eq!(
        (st.bytes_done, st.bytes_total),
        (Some(1 << 30), Some(4 << 30))
    );
    let rate = st.bytes_per_second.unwrap();
    ensure!(
        (80 << 20..=110 << 20).contains(&rate),
        "about 1 GiB in 10 s: {rate} B/s"
    );
    ensure!(st.rate.as_deref().is_some_and(|r| r.ends_with("MiB/s")));
    ensure!(
        st.eta.as_deref().is_some_and(|e| e.ends_with('s')),
        "{:?}",
        st.eta
    );
    let table = cluster
        .kubectl(&["get", "migrations", "-n", &namespace])
        .await?;
    for column in [
        "DATASET", "PHASE", "PERCENT", "RATE", "ETA", "Copying", "25",
    ] {
        ensure!(table.contains(column), "no {column} in:\n{table}");
    }

    // The Job's pod succeeds (no kubelet here: its status is written as a kubelet would).
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let pod = eventually("the Job's pod", WAIT, || async {
        let list = pods
            .list(
                &ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job_name}")),
            )
            .await?;
        Ok(list.items.into_iter().next())
    })
    .await?;
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {"phase": "Succeeded"}})),
    )
    .await?;
    let m = eventually("Copied", WAIT, || async {
        let m = migrations.get("to-cloud").await?;
        Ok((phase(&m) == Some(MigrationPhase::Copied)).then_some(m))
    })
    .await?;
    let copied = m.status.as_ref().unwrap();
    ensure!(copied.served_from.is_none() && copied.completion_time.is_some());
    ensure!(
        agent_config(&client, &namespace)
            .await?
            .contains("uri: s3://onprem/warehouse/")
    );

    // switchSource: the agents serve the source from the target, and no copy is asked.
    migrations
        .patch(
            "to-cloud",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"switchSource": true}})),
        )
        .await?;
    let m = eventually("Switched", WAIT, || async {
        let m = migrations.get("to-cloud").await?;
        Ok((phase(&m) == Some(MigrationPhase::Switched)).then_some(m))
    })
    .await?;
    let st = m.status.clone().unwrap();
    assert_eq!(st.served_from.as_deref(), Some("s3://cloud/warehouse/"));
    ensure!(st.switch_time.is_some());
    eventually("the switched source in the agent config", WAIT, || async {
        let config = agent_config(&client, &namespace).await?;
        Ok((config.contains("uri: s3://cloud/warehouse/")
            && !config.contains("s3://onprem")
            && !config.contains("migrations:")
            && config.contains("mountPath: /warehouse"))
        .then_some(()))
    })
    .await?;

    // Back: switchSource unset.
    migrations
        .patch(
            "to-cloud",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"switchSource": false}})),
        )
        .await?;
    eventually(
        "the source served from its own store again",
        WAIT,
        || async {
            let m = migrations.get("to-cloud").await?;
            let config = agent_config(&client, &namespace).await?;
            Ok((phase(&m) == Some(MigrationPhase::Copied)
                && config.contains("uri: s3://onprem/warehouse/"))
            .then_some(()))
        },
    )
    .await?;

    // A source the dataset lacks: Failed, naming the sources there are.
    cluster
        .apply(&format!(
            "apiVersion: strata.dev/v1alpha1\nkind: Migration\nmetadata: {{name: typo, namespace: {namespace}}}\nspec: {{dataset: lake, source: warehous, target: {{uri: 's3://cloud/x/'}}}}\n"
        ))
        .await?;
    let m = eventually("typo Failed", WAIT, || async {
        let m = migrations.get("typo").await?;
        Ok((phase(&m) == Some(MigrationPhase::Failed)).then_some(m))
    })
    .await?;
    let message = m.status.unwrap().message.unwrap_or_default();
    ensure!(
        message.contains("no source \"warehous\"") && message.contains("warehouse"),
        "{message}"
    );

    // A target whose Secret is missing: Pending, naming it; the dataset is still served.
    cluster
        .apply(&format!(
            "apiVersion: strata.dev/v1alpha1\nkind: Migration\nmetadata: {{name: nosecret, namespace: {namespace}}}\nspec: {{dataset: lake, source: warehouse, target: {{uri: 's3://cloud/y/', credentialsSecretRef: {{name: gcs-key}}}}}}\n"
        ))
        .await?;
    let m = eventually("nosecret Pending with a message", WAIT, || async {
        let m = migrations.get("nosecret").await?;
        Ok((phase(&m) == Some(MigrationPhase::Pending)
            && m.status
                .as_ref()
                .and_then(|s| s.message.as_deref())
                .is_some())
        .then_some(m))
    })
    .await?;
    let message = m.status.unwrap().message.unwrap();
    ensure!(
        message.contains("gcs-key") && message.contains("target of Migration nosecret"),
        "{message}"
    );
    let config = agent_config(&client, &namespace).await?;
    ensure!(
        config.contains("uri: s3://onprem/warehouse/") && !config.contains("name: nosecret"),
        "{config}"
    );

    // Deleted: its target leaves the agents' config, and its Job goes with it.
    migrations.delete("to-cloud", &Default::default()).await?;
    eventually("the migration out of the agent config", WAIT, || async {
        let config = agent_config(&client, &namespace).await?;
        Ok((!config.contains("to-cloud")).then_some(()))
    })
    .await?;
    operator.stop().await?;
    delete_nodes(&client, &["node-m1"]).await;
    Ok(())
}
