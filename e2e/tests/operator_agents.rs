//! The operator and a real cache engine meet through the API, as in a
//! cluster: the agent config the operator writes into the datasets Secret is
//! parsed and loaded by `strata_agent` (the same code `serve` uses), the
//! agent reads through it, and its `node_status` reporter writes the
//! StrataNode that moves the Dataset to Ready. The policy's preload Job command
//! (`strata-agent preload --agent ... --job NAME`) runs against the agent's HTTP
//! API; the agent reports the run and the operator shows its progress in the
//! Dataset's status. Deleting the Dataset removes the key; the agent drops the
//! dataset, reports again, and the finalizer lets go.

mod operator_common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use operator_common::*;
use strata_agent::agent::{Agent, AgentConfig};
use strata_agent::api::auth::TcpAuth;
use strata_agent::api::client::AgentClient;
use strata_agent::api::jobs::{JobArgs, PreloadJobArgs};
use strata_agent::api::server::{Access, ApiState, api_routes};
use strata_agent::api::token_review::KubeTokenReviewer;
use strata_agent::config::DatasetConfig;
use strata_agent::fs::MountOptions;
use strata_agent::mounts::MountRegistry;
use strata_agent::node_status::{self, NodeIdentity};
use strata_agent::path::DatasetPath;
use strata_crds::{Dataset, DatasetPhase, JobPhase, StrataNode};
use strata_e2e::{Cluster, TestNamespace};

const WAIT: Duration = Duration::from_secs(60);
/// The audience job tokens carry (the operator's default --job-token-audience).
const AUDIENCE: &str = "strata.dev/agent";

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
    std::fs::write(data.path().join("train/shard-1.bin"), vec![2u8; 700_000])?;
    let cache = tempfile::tempdir()?;

    // Only the test's data directory may be served as a local source.
    let allowed = format!("--allowed-local-paths={}", data.path().display());
    let operator = RunningOperator::start(cluster, &namespace, "op-agents", &[&allowed]).await?;
    let manifest = format!(
        r#"
apiVersion: strata.dev/v1alpha1
kind: CachePolicy
metadata: {{name: small-blocks}}
spec: {{quota: 64Mi, blockSize: 1Mi, eviction: LRU, datasetSelector: {{}}, pin: [{{paths: ["/train/**"]}}], preload: [{{paths: ["/train/**"]}}]}}
---
apiVersion: strata.dev/v1alpha1
kind: Dataset
metadata: {{name: local}}
spec:
  sources: [{{name: disk, uri: "file://{}", mountPath: /}}]
"#,
        data.path().display()
    );
    cluster.apply_in(&namespace, &manifest).await?;

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
    ensure!(config.cache.pins == [strata_agent::config::PinRule::paths(["/train/**"])]);
    // The live policy is named, so the namespace's job credentials are honoured.
    ensure!(config.policy.as_deref() == Some("small-blocks"), "{text}");

    let agent = Agent::new(AgentConfig::new(cache.path(), 16 << 20, 256 << 20)).await?;
    let view = agent.add_dataset(config).await?;
    let bytes = view
        .read(&DatasetPath::parse("/train/shard-0.bin")?, 0, 300_000)
        .await?;
    ensure!(bytes.len() == 300_000);

    // The agent's HTTP API, as `serve` runs it for jobs and peers.
    let mounts = Arc::new(MountRegistry::new(
        &cache.path().join("mounts"),
        MountOptions::default(),
    )?);
    let state = ApiState::new(agent.clone(), mounts);
    let activity = state.activity.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api_url = format!("http://{}", listener.local_addr()?);
    // Job credentials are ServiceAccount tokens for the Strata audience, checked with a
    // TokenReview against the real API server.
    let reviewer = Arc::new(KubeTokenReviewer::new(client.clone(), AUDIENCE));
    let auth = TcpAuth::new(None, Some(reviewer))?;
    tokio::spawn(
        warp::serve(api_routes(state.clone(), Access::Tcp(Arc::new(auth))))
            .incoming(listener)
            .run(),
    );
    cluster
        .kubectl(&["-n", &namespace, "create", "serviceaccount", "jobs"])
        .await?;
    let job_token = |ns: String, audience: &'static str| async move {
        cluster
            .kubectl(&["-n", &ns, "create", "token", "jobs", "--audience", audience])
            .await
    };
    let token_file = cache.path().join("token");
    std::fs::write(&token_file, job_token(namespace.clone(), AUDIENCE).await?)?;
    // Refused: a token for another audience (it could be replayed at the API server), and a
    // token of another namespace.
    let other = TestNamespace::create(cluster, "op-agents-other").await?;
    cluster
        .kubectl(&["-n", other.name(), "create", "serviceaccount", "jobs"])
        .await?;
    for (what, token) in [
        (
            "another audience",
            job_token(
                namespace.clone(),
                "https://kubernetes.default.svc.cluster.local",
            )
            .await?,
        ),
        (
            "another namespace",
            job_token(other.name().to_string(), AUDIENCE).await?,
        ),
    ] {
        let client = AgentClient::from_url(&api_url, Some(token.trim().to_string()))?;
        let err = client.usage(&namespace, "local").await.expect_err(what);
        ensure!(
            err.status().map(|s| s.as_u16()) == Some(403),
            "{what}: {err}"
        );
    }
    other.cleanup().await?;
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

    // The preload Job's command, run as its pod would (STRATA_JOB_NAME from the
    // pod's job-name label); the report carries the run to the Dataset's status.
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let job = eventually("the preload Job", WAIT, || async {
        let list = jobs.list(&Default::default()).await?;
        Ok(list
            .items
            .into_iter()
            .find_map(|j| j.metadata.name.filter(|n| n.starts_with("preload-local-"))))
    })
    .await?;
    let mut log = Vec::new();
    strata_agent::api::jobs::preload(
        &PreloadJobArgs {
            job: JobArgs {
                agent: vec![api_url.clone()],
                token_file: Some(token_file.clone()),
                dataset: format!("{namespace}/local"),
                paths: vec!["/train/**".into()],
                job_name: Some(job.clone()),
                dataset_wait: std::time::Duration::from_secs(60),
            },
            concurrency: 4,
        },
        &mut log,
    )
    .await?;
    let log = String::from_utf8(log)?;
    ensure!(
        log.contains("files 2/2, bytes 1000000/1000000, 100.0%, done"),
        "{log}"
    );
    node_status::write_once(&client, &agent, &activity, &node).await?;
    let run = eventually("the run's progress in the Dataset", WAIT, || async {
        let st = datasets.get("local").await?.status.unwrap_or_default();
        Ok(st
            .jobs
            .into_iter()
            .find(|r| r.job.as_deref() == Some(job.as_str()) && r.percent.is_some()))
    })
    .await?;
    ensure!(
        run.phase == JobPhase::Succeeded
            && run.files_done == Some(2)
            && run.files_total == Some(2)
            && run.bytes_done == Some(1_000_000)
            && run.bytes_total == Some(1_000_000)
            && run.percent == Some(100)
            && run.start_time.is_some()
            && run.completion_time.is_some(),
        "{run:?}"
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
