//! Two replicas: only the Lease holder reconciles; killing it (no release)
//! lets the standby take over within the lease duration, and it then serves.

mod operator_common;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use operator_common::*;
use strata_crds::{Dataset, DatasetPhase};
use strata_e2e::{Cluster, TestNamespace};

const WAIT: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(4);

fn dataset(name: &str) -> String {
    format!(
        "apiVersion: strata.dev/v1alpha1\nkind: Dataset\nmetadata: {{name: {name}}}\nspec:\n  sources: [{{name: local, uri: \"file:///srv/{name}\", mountPath: /}}]\n"
    )
}

async fn holder(leases: &Api<Lease>) -> Result<Option<String>> {
    Ok(leases
        .get_opt("strata-operator")
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_acts_and_a_standby_takes_over() -> Result<()> {
    let cluster = Cluster::shared().await?;
    install_crds(cluster).await?;
    let ns = TestNamespace::create(cluster, "op-leader").await?;
    let client = ns.client().clone();
    let namespace = ns.name().to_string();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), &namespace);
    let apply = |manifest: String| {
        let namespace = namespace.clone();
        async move {
            cluster
                .run(
                    "kubectl",
                    &["-n", &namespace, "apply", "-f", "-"],
                    Some(manifest.as_bytes()),
                )
                .await
        }
    };

    let a = RunningOperator::start(cluster, &namespace, "replica-a", &[]).await?;
    eventually("replica-a leads", WAIT, || async {
        Ok((holder(&leases).await?.as_deref() == Some("replica-a")).then_some(()))
    })
    .await?;
    let b = RunningOperator::start(cluster, &namespace, "replica-b", &[]).await?;

    apply(dataset("first")).await?;
    eventually("first reconciled", WAIT, || async {
        let st = datasets.get("first").await?.status.unwrap_or_default();
        Ok((st.phase == Some(DatasetPhase::Pending)).then_some(()))
    })
    .await?;
    // Several lease periods pass; the standby never reconciles, the Lease never moves.
    tokio::time::sleep(LEASE * 2).await;
    ensure!(holder(&leases).await?.as_deref() == Some("replica-a"));
    ensure!(a.metrics.reconcile_count("dataset") > 0);
    ensure!(
        b.metrics.reconcile_count("dataset") == 0,
        "the standby reconciled"
    );
    ensure!(
        b.metrics.reconcile_count("nodes") == 0,
        "the standby applied the node set"
    );
    ensure!(b.http_get("/metrics")?.contains("strata_operator_leader 0"));
    ensure!(b.http_get("/healthz")? == "ok", "a standby is healthy");

    // Kill the leader without releasing the Lease.
    a.kill();
    let killed = Instant::now();
    let frozen = a.metrics.reconcile_count("dataset");
    eventually("replica-b takes over", WAIT, || async {
        Ok((holder(&leases).await?.as_deref() == Some("replica-b")).then_some(()))
    })
    .await?;
    let takeover = killed.elapsed();
    eprintln!("takeover after {takeover:?} (lease duration {LEASE:?})");
    // The standby waits one lease duration after the last renewal it saw,
    // plus at most one retry period (duration/4) to notice.
    ensure!(
        takeover <= LEASE + LEASE / 4 + Duration::from_millis(500),
        "takeover took {takeover:?}"
    );

    apply(dataset("second")).await?;
    eventually("second reconciled by replica-b", WAIT, || async {
        let st = datasets.get("second").await?.status.unwrap_or_default();
        Ok((st.phase == Some(DatasetPhase::Pending)).then_some(()))
    })
    .await?;
    ensure!(b.metrics.reconcile_count("dataset") > 0);
    ensure!(
        a.metrics.reconcile_count("dataset") == frozen,
        "the killed replica kept working"
    );
    let lease = leases
        .get("strata-operator")
        .await?
        .spec
        .unwrap_or_default();
    ensure!(lease.lease_transitions == Some(1), "{lease:?}");

    // The namespace (and the Lease in it) goes first; the operator releases the finalizers.
    ns.cleanup().await?;
    b.stop().await?;
    Ok(())
}
