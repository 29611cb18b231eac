//! The operator and a real cache engine meet through the API, as in a
//! cluster: the agent config the operator writes into the datasets Secret is
//! parsed and loaded by `strata_agent` (the same code `serve` uses), the
//! agent reads through it, and its `node_status` reporter writes the
//! StrataNode that moves the Dataset to Ready. Deleting the Dataset removes
//! the key; the agent drops the dataset, reports again, and the finalizer lets go.

mod operator_common;

use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use operator_common::*;
use strata_agent::agent::{Agent, AgentConfig};
use strata_agent::api::jobs::ActivityBoard;
use strata_agent::config::DatasetConfig;
use strata_agent::node_status::{self, NodeIdentity};
use strata_agent::path::DatasetPath;
use strata_crds::{Dataset, DatasetPhase, StrataNode};
use strata_e2e::{Cluster, TestNamespace};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_loads_the_operators_config_and_its_report_makes_the_dataset_ready() -> Result<()> {
    let cluster = Cluster::shared().await?;
    install_crds(cluster).await?;
    let ns = TestNamespace::create(cluster, "op-agents").await?;
    let client = ns.client().clone();
    let namespace = ns.name().to_string();
    let data = tempfile::tempdir()?;
    std::fs::create_dir(data.path().join("train"))?;
    std::fs::write(data.path().join("train/shard-0.bin"), vec![1u8; 300_000])?;
    let cache = tempfile::tempdir()?;

    let operator = RunningOperator::start(cluster, &namespace, "op-agents", &[]).await?;
    let manifest = format!(
        r#"
apiVersion: strata.dev/v1alpha1
kind: CachePolicy
metadata: {{name: small-blocks}}
spec: {{quota: 64Mi, blockSize: 1Mi, eviction: LRU, datasetSelector: {{}}, pin: [{{paths: ["/train/**"]}}]}}
---
apiVersion: strata.dev/v1alpha1
kind: Dataset
metadata: {{name: local}}
spec:
  sources: [{{name: disk, uri: "file://{}", mountPath: /}}]
"#,
        data.path().display()
    );
    cluster
        .run(
            "kubectl",
            &["-n", &namespace, "apply", "-f", "-"],
            Some(manifest.as_bytes()),
        )
        .await?;

    // What a node's agent finds in its datasets directory.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let key = format!("{namespace}.local.yaml");
    let text = eventually("agent config with the policy's settings", WAIT, || async {
        let secret = secrets.get_opt("strata-datasets").await?;
        let text = secret.and_then(|s| s.data).and_then(|d| {
            d.get(&key)
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        });
        Ok(text.filter(|t| t.contains("eviction: LRU")))
    })
    .await?;
    let config = DatasetConfig::from_yaml(&text)?;
    ensure!(config.namespace == namespace && config.name == "local");
    ensure!(config.cache.block_size == 1 << 20 && config.cache.quota == Some(64 << 20));
    ensure!(config.cache.pins == ["/train/**"]);

    let agent = Agent::new(AgentConfig::new(cache.path(), 16 << 20, 256 << 20)).await?;
    let view = agent.add_dataset(config).await?;
    let bytes = view
        .read(&DatasetPath::parse("/train/shard-0.bin")?, 0, 300_000)
        .await?;
    ensure!(bytes.len() == 300_000);

    let activity = ActivityBoard::default();
    let node = NodeIdentity {
        node_name: format!("{namespace}-agent"),
        endpoint: Some("http://127.0.0.1:7070".into()),
    };
    node_status::write_once(&client, &agent, &activity, &node).await?;
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), &namespace);
    let ready = eventually("Ready from the agent's report", WAIT, || async {
        let st = datasets.get("local").await?.status.unwrap_or_default();
        Ok((st.phase == Some(DatasetPhase::Ready)).then_some(st))
    })
    .await?;
    ensure!(ready.cached_bytes.unwrap_or(0) >= 300_000, "{ready:?}");
    ensure!(
        ready.nodes == Some(1) && ready.misses.unwrap_or(0) >= 1,
        "{ready:?}"
    );
    let reported: StrataNode = Api::all(client.clone()).get(&node.node_name).await?;
    let table = cluster
        .kubectl(&["get", "stratanodes", &node.node_name])
        .await?;
    ensure!(
        table.contains(&node.node_name) && table.contains('1'),
        "{table}"
    );
    let reported = reported.status.unwrap_or_default();
    ensure!(reported.tiers.len() == 2);
    // The agent echoes the uid the operator put in its config.
    let uid = datasets.get("local").await?.metadata.uid;
    ensure!(
        uid.is_some() && reported.datasets[0].uid == uid,
        "{:?} vs {uid:?}",
        reported.datasets[0].uid
    );

    // Deletion: the key goes; the agent (here: the test, as `serve` would on
    // rescan) drops the dataset and reports; then the finalizer is released.
    cluster
        .kubectl(&[
            "-n",
            &namespace,
            "delete",
            "dataset",
            "local",
            "--wait=false",
        ])
        .await?;
    eventually("key removed", WAIT, || async {
        let data = secrets
            .get("strata-datasets")
            .await?
            .data
            .unwrap_or_default();
        Ok((!data.contains_key(&key)).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        datasets.get_opt("local").await?.is_some(),
        "released while the node still reported the dataset"
    );
    agent.remove_dataset(&namespace, "local", true).await?;
    node_status::write_once(&client, &agent, &activity, &node).await?;
    eventually("Dataset gone", WAIT, || async {
        Ok(datasets.get_opt("local").await?.is_none().then_some(()))
    })
    .await?;

    delete_nodes(&client, &[&node.node_name]).await;
    ns.cleanup().await?;
    operator.stop().await?;
    Ok(())
}
