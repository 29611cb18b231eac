//! Benchmark, not a timed test (ignored by default): 1,000 Datasets applied
//! at once; reports the time until every one is reconciled (phase and
//! observedGeneration set, PV and PVC created) and the operator's peak RSS.
//! Runs the built binary so the RSS is the operator's alone:
//!
//! ```text
//! cargo build --release -p strata-operator
//! STRATA_OPERATOR_BIN=target/release/strata-operator \
//!   cargo test -p strata-e2e --test operator_scale -- --ignored --nocapture
//! ```

mod operator_common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::Api;
use kube::api::ListParams;
use operator_common::*;
use strata_crds::Dataset;
use strata_e2e::{Cluster, TestNamespace};

const DATASETS: usize = 1000;

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn thousand_datasets() -> Result<()> {
    let binary = std::env::var("STRATA_OPERATOR_BIN")
        .context("set STRATA_OPERATOR_BIN to the built strata-operator binary")?;
    let cluster = Cluster::shared().await?;
    install_crds(cluster).await?;
    let ns = TestNamespace::create(cluster, "op-scale").await?;
    let client = ns.client().clone();
    let namespace = ns.name().to_string();
    let port = free_port();

    let mut child = Command::new(&binary)
        .args([
            "--namespace",
            &namespace,
            "--watch-namespace",
            &namespace,
            "--identity",
            "op-scale",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--manage-nodes",
            "false",
            "--log",
            "warn",
        ])
        .env("KUBECONFIG", cluster.kubeconfig())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {binary}"))?;
    let pid = child.id();
    eventually("operator leads", Duration::from_secs(30), || async {
        Ok(http_get(([127, 0, 0, 1], port).into(), "/metrics")
            .ok()
            .filter(|m| m.contains("strata_operator_leader 1"))
            .map(|_| ()))
    })
    .await?;
    let idle_rss = peak_rss_kib(pid).unwrap_or(0);

    let manifest: String = (0..DATASETS)
        .map(|i| format!(
            "apiVersion: strata.dev/v1alpha1\nkind: Dataset\nmetadata: {{name: ds-{i:04}, labels: {{bench: scale}}}}\nspec:\n  sources: [{{name: local, uri: \"file:///srv/ds-{i:04}\", mountPath: /}}]\n"
        ))
        .collect::<Vec<_>>()
        .join("---\n");
    let started = Instant::now();
    cluster
        .run(
            "kubectl",
            &["-n", &namespace, "apply", "--server-side", "-f", "-"],
            Some(manifest.as_bytes()),
        )
        .await?;
    let applied = started.elapsed();

    let datasets: Api<Dataset> = Api::namespaced(client.clone(), &namespace);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    let mut last_report = Instant::now();
    loop {
        let list = datasets.list(&ListParams::default()).await?;
        let done = list
            .items
            .iter()
            .filter(|d| {
                d.status.as_ref().is_some_and(|s| {
                    s.phase.is_some() && s.observed_generation == d.metadata.generation
                })
            })
            .count();
        if done == DATASETS && pvcs.list(&ListParams::default()).await?.items.len() == DATASETS {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!("{done}/{DATASETS} reconciled after {:?}", started.elapsed());
            last_report = Instant::now();
        }
        ensure!(
            started.elapsed() < Duration::from_secs(900),
            "not all reconciled after 15 minutes ({done})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let reconciled = started.elapsed();
    let peak = peak_rss_kib(pid).unwrap_or(0);
    eprintln!(
        "BENCH datasets={DATASETS} apply={applied:?} all_reconciled={reconciled:?} idle_rss={:.1}MiB peak_rss={:.1}MiB",
        idle_rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );

    // Clean up while the operator runs, so the finalizers are released.
    cluster
        .kubectl(&[
            "-n",
            &namespace,
            "delete",
            "datasets",
            "-l",
            "bench=scale",
            "--wait=true",
            "--timeout=600s",
        ])
        .await?;
    let deleted = started.elapsed() - reconciled;
    eprintln!("BENCH deleted all in {deleted:?}");
    ns.cleanup().await?;
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}
