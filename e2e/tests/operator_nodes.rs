//! The operator creates, from its flags, the node DaemonSet (agent, CSI
//! plugin, node-driver-registrar), the CSIDriver object, the agent token and
//! the datasets Secret; namespaced ones are owned by the operator's
//! Deployment. The metrics and health endpoint answers.

mod operator_common;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use operator_common::*;
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
    ensure!(
        names == ["agent", "csi", "node-driver-registrar"],
        "{names:?}"
    );
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
    let token = eventually("agent token", WAIT, || async {
        Ok(secrets.get_opt("strata-agent-token").await?)
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
