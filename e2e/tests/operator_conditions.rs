//! Bad datasets get a documented condition and a Warning event, and the
//! operator keeps serving the good ones: a missing Secret, a Secret without
//! the key the scheme needs, two matching policies, an unreachable source.
//! Creating the Secret heals its dataset without touching the Dataset (the
//! operator re-checks problem datasets every 30 s; it may not watch Secrets).

mod operator_common;

use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::Api;
use operator_common::*;
use strata_crds::{Dataset, DatasetPhase};
use strata_e2e::{Cluster, TestNamespace};

const WAIT: Duration = Duration::from_secs(60);

fn s3_dataset(name: &str, endpoint: &str, secret: &str, labels: &str) -> String {
    format!(
        r#"
apiVersion: strata.dev/v1alpha1
kind: Dataset
metadata:
  name: {name}
  labels: {{{labels}}}
spec:
  sources:
    - name: data
      uri: s3://bucket/data/
      mountPath: /
      endpoint: {endpoint}
      region: us-east-1
      credentialsSecretRef: {{name: {secret}}}
"#
    )
}

/// Waits for `name` to reach `phase` with condition `type_` = False/`reason`; returns its message.
async fn wait_for_condition(
    datasets: &Api<Dataset>,
    name: &str,
    phase: DatasetPhase,
    type_: &str,
    reason: &str,
) -> Result<String> {
    eventually(
        &format!("{name}: {phase:?} with {type_}={reason}"),
        WAIT,
        || async {
            let ds = datasets.get(name).await?;
            let st = ds.status.unwrap_or_default();
            let found = st
                .conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == "False" && c.reason == reason);
            Ok(found
                .filter(|_| st.phase == Some(phase))
                .map(|c| c.message.clone()))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_datasets_get_conditions_and_events_and_good_ones_are_served() -> Result<()> {
    let cluster = Cluster::shared().await?;
    install_crds(cluster).await?;
    let ns = TestNamespace::create(cluster, "op-conditions").await?;
    let client = ns.client().clone();
    let namespace = ns.name().to_string();
    let s3 = S3Server::start()?;
    s3.create_bucket("bucket")?;
    s3.put_object("bucket", "data/a.bin", 10)?;
    let closed = format!("http://127.0.0.1:{}", free_port());

    let operator = RunningOperator::start(cluster, &namespace, "op-conditions", &[]).await?;
    let manifest = [
        s3_dataset("no-secret", &s3.endpoint(), "missing-creds", ""),
        s3_dataset("no-key", &s3.endpoint(), "half-creds", ""),
        s3_dataset("unreachable", &closed, "good-creds", ""),
        s3_dataset("ambiguous", &s3.endpoint(), "good-creds", "team: x"),
        s3_dataset("good", &s3.endpoint(), "good-creds", ""),
        r#"
apiVersion: v1
kind: Secret
metadata: {name: half-creds}
stringData: {AWS_ACCESS_KEY_ID: AKIAHALFVALUE}
---
apiVersion: v1
kind: Secret
metadata: {name: good-creds}
stringData: {AWS_ACCESS_KEY_ID: AKIAGOOD, AWS_SECRET_ACCESS_KEY: goodsecret}
---
apiVersion: strata.dev/v1alpha1
kind: CachePolicy
metadata: {name: first}
spec: {quota: 1Gi, datasetSelector: {matchLabels: {team: x}}}
---
apiVersion: strata.dev/v1alpha1
kind: CachePolicy
metadata: {name: second}
spec: {quota: 2Gi, datasetSelector: {matchExpressions: [{key: team, operator: Exists}]}}
"#
        .to_string(),
    ]
    .join("\n---\n");
    cluster.apply_in(&namespace, &manifest).await?;
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), &namespace);

    let message = wait_for_condition(
        &datasets,
        "no-secret",
        DatasetPhase::Failed,
        "SourcesReachable",
        "SecretNotFound",
    )
    .await?;
    ensure!(message.contains("missing-creds"), "{message}");

    let message = wait_for_condition(
        &datasets,
        "no-key",
        DatasetPhase::Failed,
        "SourcesReachable",
        "SecretKeyMissing",
    )
    .await?;
    ensure!(
        message.contains("has no key AWS_SECRET_ACCESS_KEY"),
        "{message}"
    );
    ensure!(
        !message.contains("AKIAHALFVALUE"),
        "a credential leaked into the status: {message}"
    );

    let message = wait_for_condition(
        &datasets,
        "unreachable",
        DatasetPhase::Degraded,
        "SourcesReachable",
        "SourceUnreachable",
    )
    .await?;
    ensure!(message.contains("source data"), "{message}");

    let message = wait_for_condition(
        &datasets,
        "ambiguous",
        DatasetPhase::Degraded,
        "PolicyResolved",
        "AmbiguousPolicy",
    )
    .await?;
    ensure!(
        message.contains("first, second") && message.contains("policyRef"),
        "{message}"
    );

    // The good dataset is served all the while: listed, claim created, waiting for nodes.
    let good = eventually("good dataset Pending and listed", WAIT, || async {
        let ds = datasets.get("good").await?;
        let st = ds.status.clone().unwrap_or_default();
        Ok((st.phase == Some(DatasetPhase::Pending) && st.total_bytes == Some(10)).then_some(ds))
    })
    .await?;
    ensure!(
        good.status
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.type_ == "SourcesReachable" && c.status == "True")
    );
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    ensure!(
        pvcs.get_opt("good").await?.is_some(),
        "no PVC for the good dataset"
    );

    // Each problem is announced once as a Warning event naming its reason.
    for (name, reason) in [
        ("no-secret", "SecretNotFound"),
        ("no-key", "SecretKeyMissing"),
        ("unreachable", "SourceUnreachable"),
        ("ambiguous", "AmbiguousPolicy"),
    ] {
        let events = eventually(&format!("{reason} event for {name}"), WAIT, || async {
            let events = events_for(&client, &namespace, name).await?;
            Ok(events
                .iter()
                .any(|(t, r, _)| t == "Warning" && r == reason)
                .then_some(events))
        })
        .await?;
        ensure!(
            !events
                .iter()
                .any(|(_, _, note)| note.contains("AKIAHALFVALUE") || note.contains("goodsecret")),
            "{events:?}"
        );
    }
    let metrics = operator.http_get("/metrics")?;
    for reason in [
        "SecretNotFound",
        "SecretKeyMissing",
        "SourceUnreachable",
        "AmbiguousPolicy",
    ] {
        ensure!(
            metrics.contains(&format!(
                "strata_operator_dataset_problems_total{{reason=\"{reason}\"}}"
            )),
            "metric for {reason} missing:\n{metrics}"
        );
    }

    // Creating the missing Secret heals its dataset at the next re-check (30 s).
    cluster
        .run(
            "kubectl",
            &[
                "-n",
                &namespace,
                "create",
                "secret",
                "generic",
                "missing-creds",
                "--from-literal=AWS_ACCESS_KEY_ID=AKIANEW",
                "--from-literal=AWS_SECRET_ACCESS_KEY=newsecret",
            ],
            None,
        )
        .await?;
    eventually("no-secret healed", Duration::from_secs(50), || async {
        let st = datasets.get("no-secret").await?.status.unwrap_or_default();
        Ok((st.phase == Some(DatasetPhase::Pending) && st.total_bytes == Some(10)).then_some(()))
    })
    .await?;

    // Picking a policy resolves the ambiguity.
    cluster
        .kubectl(&[
            "-n",
            &namespace,
            "patch",
            "dataset",
            "ambiguous",
            "--type=merge",
            "-p",
            r#"{"spec":{"policyRef":{"name":"second"}}}"#,
        ])
        .await?;
    eventually("ambiguous resolved", WAIT, || async {
        let st = datasets.get("ambiguous").await?.status.unwrap_or_default();
        Ok(
            (st.phase == Some(DatasetPhase::Pending) && st.policy.as_deref() == Some("second"))
                .then_some(()),
        )
    })
    .await?;

    // The operator must outlive the namespace: it releases the Datasets' finalizers.
    ns.cleanup().await?;
    operator.stop().await?;
    Ok(())
}
