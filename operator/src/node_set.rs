//! What runs on every node, owned by the operator and shaped by its flags:
//! the `strata-node` DaemonSet (agent, and the CSI plugin, which registers itself with the
//! kubelet), the `strata-holder` DaemonSet (the mount holder, which keeps the FUSE
//! connections while agent pods roll), the CSIDriver object, the peer token and the
//! (initially empty) datasets Secret.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, Deployment};
use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, HostPathVolumeSource,
    ObjectFieldSelector, PodSpec, PodTemplateSpec, SecretVolumeSource, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::api::storage::v1::{CSIDriver, CSIDriverSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use strata_crds::Dataset;

use crate::agent_config::DATASETS_SECRET;
use crate::config::OperatorConfig;
use crate::context::{Context, MANAGER};
use crate::peer_token::{self, TOKEN_SECRET};
use crate::volume::{
    CSI_DRIVER, LABEL_DATASET, LABEL_DATASET_NAMESPACE, LABEL_MANAGED_BY, MANAGED_BY,
};
use crate::{Error, Result};

/// Name of the node DaemonSet.
pub const DAEMONSET: &str = "strata-node";
/// Name of the mount holder's DaemonSet. Updated only when its pods are deleted
/// (`OnDelete`): a holder restart ends every mount on its node.
pub const HOLDER_DAEMONSET: &str = "strata-holder";
/// The holder's socket in the pods (in the shared run directory).
pub const HOLDER_SOCKET: &str = "/run/strata/holder.sock";
/// How long the holder lets readers wait for an agent pod to come back before it answers
/// them with EIO: long enough for an image pull on a rolling update.
pub const HOLDER_ORPHAN_TIMEOUT: &str = "120s";
/// Where the agent reads dataset configs (the datasets Secret).
pub const DATASETS_DIR: &str = "/etc/strata/datasets";
/// Where the peer token (the agents' shared node secret) is mounted.
pub const PEER_TOKEN_DIR: &str = "/var/run/strata/peer";
/// Directory shared by agent and CSI plugin: the agent's unix socket (in the pods; the host
/// directory is --node-run-dir).
pub const RUN_DIR: &str = "/run/strata";
/// Directory under which the agent keeps its FUSE mounts (in the pods; the host directory is
/// --node-mounts-dir).
pub const MOUNTS_DIR: &str = "/var/lib/strata/mounts";
/// Where the agent container sees its ephemeral disk tier (an emptyDir).
pub const EPHEMERAL_CACHE_DIR: &str = "/var/cache/strata-ephemeral";
/// Controller name in metrics.
pub const CONTROLLER: &str = "nodes";

fn labels() -> BTreeMap<String, String> {
    labels_of(DAEMONSET)
}

fn labels_of(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        ("app.kubernetes.io/name".to_string(), name.to_string()),
    ])
}

fn mount(name: &str, path: &str, read_only: bool, bidirectional: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        mount_propagation: bidirectional.then(|| "Bidirectional".to_string()),
        ..VolumeMount::default()
    }
}

fn host_path(name: &str, path: &str, kind: &str) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: Some(kind.into()),
        }),
        ..Volume::default()
    }
}

fn env_node_name() -> EnvVar {
    EnvVar {
        name: "NODE_NAME".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "spec.nodeName".into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The pod's IP, which on the host network is the node's: where peers reach the agent.
fn env_pod_ip() -> EnvVar {
    EnvVar {
        name: "POD_IP".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "status.podIP".into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn privileged() -> Option<SecurityContext> {
    // FUSE mounts and bind mounts into the kubelet's pod directories need it.
    Some(SecurityContext {
        privileged: Some(true),
        ..SecurityContext::default()
    })
}

/// The node DaemonSet from the operator's flags.
pub fn daemon_set(config: &OperatorConfig, owner: Option<OwnerReference>) -> Result<DaemonSet> {
    let kubelet = config.kubelet_dir.trim_end_matches('/');
    let plugin_dir = format!("{kubelet}/plugins/{CSI_DRIVER}");
    // The host paths file:// sources may name: mounted read-only at the same path, and
    // the only local paths the agent serves.
    let local_paths = config.allowed_local_path_list()?;
    let mut agent_args: Vec<String> = vec![
        "serve".into(),
        "--datasets-dir".into(),
        DATASETS_DIR.into(),
        "--node-name".into(),
        "$(NODE_NAME)".into(),
        "--listen".into(),
        format!("0.0.0.0:{}", config.agent_port),
        // Written in the node's StrataNode: the other agents fetch the blocks this node
        // owns from it (the cluster cache), and find it there.
        "--advertise-url".into(),
        format!("http://$(POD_IP):{}", config.agent_port),
        "--socket".into(),
        format!("{RUN_DIR}/agent.sock"),
        "--peer-token-file".into(),
        format!("{PEER_TOKEN_DIR}/token"),
        "--job-token-audience".into(),
        config.job_token_audience.clone(),
        "--mount-root".into(),
        MOUNTS_DIR.into(),
        "--cache-dir".into(),
        "/var/cache/strata".into(),
        "--memory".into(),
        config.memory_tier_size.clone(),
        "--disk".into(),
        config.disk_tier_size.clone(),
        // Mounts go through the holder (its own DaemonSet), so they outlive agent pods.
        "--holder-socket".into(),
        HOLDER_SOCKET.into(),
    ];
    let mut agent_mounts = vec![
        mount("datasets", DATASETS_DIR, true, false),
        mount("peer-token", PEER_TOKEN_DIR, true, false),
        mount("run", RUN_DIR, false, false),
        mount("cache", "/var/cache/strata", false, false),
        // The holder mounts; the agent only makes and removes the mount points.
        mount("mounts", MOUNTS_DIR, false, false),
        mount("fuse", "/dev/fuse", false, false),
    ];
    let mut local_volumes = Vec::new();
    if let Some(size) = config.ephemeral_tier() {
        // The ephemeral tier: an emptyDir, gone with the pod (the agent also empties it
        // when it starts and stops).
        agent_args.extend([
            "--ephemeral-cache-dir".into(),
            EPHEMERAL_CACHE_DIR.into(),
            "--ephemeral-disk".into(),
            size.to_string(),
        ]);
        agent_mounts.push(mount("ephemeral-cache", EPHEMERAL_CACHE_DIR, false, false));
        local_volumes.push(Volume {
            name: "ephemeral-cache".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity(size.to_string())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    for (i, path) in local_paths.iter().enumerate() {
        let name = format!("local-source-{i}");
        agent_args.push(format!("--allow-local-path={path}"));
        agent_mounts.push(mount(&name, path, true, false));
        local_volumes.push(host_path(&name, path, "Directory"));
    }
    let agent = Container {
        name: "agent".into(),
        image: Some(config.agent_image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        command: Some(vec!["strata-agent".into()]),
        args: Some(agent_args),
        env: Some(vec![env_node_name(), env_pod_ip()]),
        security_context: privileged(),
        volume_mounts: Some(agent_mounts),
        ..Container::default()
    };
    let csi = Container {
        name: "csi".into(),
        image: Some(config.agent_image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        command: Some(vec!["strata-csi".into()]),
        args: Some(vec![
            "--endpoint".into(),
            "unix:///csi/csi.sock".into(),
            "--node-id".into(),
            "$(NODE_NAME)".into(),
            "--agent-socket".into(),
            format!("{RUN_DIR}/agent.sock"),
            // The plugin serves the kubelet's plugin registration itself (no
            // node-driver-registrar): a socket in plugins_registry naming the CSI socket's
            // path on the host.
            "--registration-dir".into(),
            "/registration".into(),
            "--kubelet-registration-path".into(),
            format!("{plugin_dir}/csi.sock"),
        ]),
        env: Some(vec![env_node_name()]),
        security_context: privileged(),
        volume_mounts: Some(vec![
            mount("plugin-dir", "/csi", false, false),
            mount("run", RUN_DIR, false, false),
            mount("kubelet", kubelet, false, true),
            mount("mounts", MOUNTS_DIR, false, true),
            mount("registration", "/registration", false, false),
        ]),
        ..Container::default()
    };
    let node_selector = config.node_selector_map()?;
    let tolerations = config.toleration_list()?;
    let mut volumes = vec![
        Volume {
            name: "datasets".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(DATASETS_SECRET.into()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "peer-token".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(TOKEN_SECRET.into()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        host_path("run", &config.node_run_dir, "DirectoryOrCreate"),
        host_path("cache", &config.disk_tier_path, "DirectoryOrCreate"),
        host_path("mounts", &config.node_mounts_dir, "DirectoryOrCreate"),
        host_path("fuse", "/dev/fuse", "CharDevice"),
        host_path("plugin-dir", &plugin_dir, "DirectoryOrCreate"),
        host_path("kubelet", kubelet, "Directory"),
        host_path(
            "registration",
            &format!("{kubelet}/plugins_registry"),
            "Directory",
        ),
    ];
    volumes.extend(local_volumes);
    Ok(DaemonSet {
        metadata: ObjectMeta {
            name: Some(DAEMONSET.into()),
            namespace: Some(config.namespace.clone()),
            labels: Some(labels()),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(labels()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(config.agent_service_account.clone()),
                    // Peers and jobs reach the agent at the node's IP.
                    host_network: Some(true),
                    dns_policy: Some("ClusterFirstWithHostNet".into()),
                    priority_class_name: Some("system-node-critical".into()),
                    node_selector: (!node_selector.is_empty()).then_some(node_selector),
                    tolerations: (!tolerations.is_empty()).then_some(tolerations),
                    containers: vec![agent, csi],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DaemonSetSpec::default()
        },
        status: None,
    })
}

/// The mount holder's DaemonSet: `strata-holder` on every node the agents run on. It
/// mounts for the agent and keeps each mount's FUSE connection while agent pods roll or
/// crash; it is updated only when its pods are deleted, since a holder restart ends the
/// mounts on its node.
pub fn holder_daemon_set(
    config: &OperatorConfig,
    owner: Option<OwnerReference>,
) -> Result<DaemonSet> {
    let holder = Container {
        name: "holder".into(),
        image: Some(config.agent_image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        command: Some(vec!["strata-holder".into()]),
        args: Some(vec![
            "--socket".into(),
            HOLDER_SOCKET.into(),
            "--orphan-timeout".into(),
            HOLDER_ORPHAN_TIMEOUT.into(),
        ]),
        security_context: privileged(),
        volume_mounts: Some(vec![
            mount("run", RUN_DIR, false, false),
            // Its FUSE mounts must reach the host, where the CSI plugin binds them into pods.
            mount("mounts", MOUNTS_DIR, false, true),
            mount("fuse", "/dev/fuse", false, false),
        ]),
        ..Container::default()
    };
    let node_selector = config.node_selector_map()?;
    let tolerations = config.toleration_list()?;
    Ok(DaemonSet {
        metadata: ObjectMeta {
            name: Some(HOLDER_DAEMONSET.into()),
            namespace: Some(config.namespace.clone()),
            labels: Some(labels_of(HOLDER_DAEMONSET)),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(labels_of(HOLDER_DAEMONSET)),
                ..LabelSelector::default()
            },
            update_strategy: Some(k8s_openapi::api::apps::v1::DaemonSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                ..Default::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels_of(HOLDER_DAEMONSET)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    // No Kubernetes API: no token.
                    automount_service_account_token: Some(false),
                    priority_class_name: Some("system-node-critical".into()),
                    node_selector: (!node_selector.is_empty()).then_some(node_selector),
                    tolerations: (!tolerations.is_empty()).then_some(tolerations),
                    containers: vec![holder],
                    volumes: Some(vec![
                        host_path("run", &config.node_run_dir, "DirectoryOrCreate"),
                        host_path("mounts", &config.node_mounts_dir, "DirectoryOrCreate"),
                        host_path("fuse", "/dev/fuse", "CharDevice"),
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..DaemonSetSpec::default()
        },
        status: None,
    })
}

/// The CSIDriver object (cluster-scoped, so labelled rather than owned).
pub fn csi_driver() -> CSIDriver {
    CSIDriver {
        metadata: ObjectMeta {
            name: Some(CSI_DRIVER.into()),
            labels: Some(labels()),
            ..ObjectMeta::default()
        },
        spec: CSIDriverSpec {
            attach_required: Some(false),
            pod_info_on_mount: Some(true),
            volume_lifecycle_modes: Some(vec!["Persistent".into(), "Ephemeral".into()]),
            fs_group_policy: Some("None".into()),
            ..CSIDriverSpec::default()
        },
    }
}

/// The operator's Deployment as owner of the namespaced objects, when
/// --owner-deployment is set and the Deployment exists.
async fn owner(ctx: &Context) -> Result<Option<OwnerReference>> {
    if ctx.config.owner_deployment.is_empty() {
        return Ok(None);
    }
    let deployment = Api::<Deployment>::namespaced(ctx.client.clone(), &ctx.config.namespace)
        .get_opt(&ctx.config.owner_deployment)
        .await
        .map_err(|e| {
            Error::kube(
                format!(
                    "reading Deployment {}/{}",
                    ctx.config.namespace, ctx.config.owner_deployment
                ),
                e,
            )
        })?;
    Ok(deployment.and_then(|d| d.controller_owner_ref(&())))
}

/// Annotation the operator sets on the node pods when the datasets Secret changed: a pod
/// update makes the kubelet sync the pod, which refreshes its Secret volume now rather than at
/// its periodic sync (about a minute later), so a new Dataset reaches the agents in seconds.
pub const DATASETS_CHANGED_ANNOTATION: &str = "strata.dev/datasets-changed";

/// Coalesces changes to the datasets Secret for a moment, then annotates every node pod.
const NUDGE_COALESCE: std::time::Duration = std::time::Duration::from_secs(1);

/// Until the operator stops: after each change of the datasets Secret, tells the node pods
/// (with --manage-nodes) to refresh it. A failure is logged; the kubelet's own sync still
/// delivers the change, only later.
pub async fn nudge_node_pods_loop(ctx: &Context) {
    if !ctx.config.manage_nodes {
        return;
    }
    loop {
        ctx.datasets_changed.notified().await;
        tokio::time::sleep(NUDGE_COALESCE).await;
        if let Err(e) = nudge_node_pods(ctx).await {
            tracing::warn!(error = %e, "telling the node pods to refresh the datasets Secret");
        }
    }
}

async fn nudge_node_pods(ctx: &Context) -> Result<()> {
    let namespace = &ctx.config.namespace;
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(ctx.client.clone(), namespace);
    let selector = format!("app.kubernetes.io/name={DAEMONSET}");
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| Error::kube(format!("listing the {DAEMONSET} pods in {namespace}"), e))?;
    let stamp = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({
        "metadata": {"annotations": {DATASETS_CHANGED_ANNOTATION: stamp}}
    });
    for pod in list.items {
        let name = pod.name_any();
        match pods
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            // Deleted in the meantime: its successor mounts the current Secret.
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(Error::kube(format!("annotating pod {namespace}/{name}"), e)),
        }
    }
    Ok(())
}

/// Applies the token, the datasets Secret, the CSIDriver and (with
/// --manage-nodes) the DaemonSet.
pub async fn reconcile(ctx: &Context) -> Result<()> {
    let started = std::time::Instant::now();
    let result = apply(ctx).await;
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    if let Err(e) = &result {
        ctx.metrics.failed(CONTROLLER, e.metric_reason());
    }
    result
}

async fn apply(ctx: &Context) -> Result<()> {
    let owner = owner(ctx).await?;
    peer_token::ensure(ctx, owner.clone()).await?;
    let params = PatchParams::apply(MANAGER).force();
    let namespace = &ctx.config.namespace;
    // Only metadata: the per-dataset keys are written by merge patches under
    // another field manager and must not be claimed (or dropped) here.
    let secret = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": DATASETS_SECRET,
            "namespace": namespace,
            "labels": { LABEL_MANAGED_BY: MANAGED_BY },
            "ownerReferences": owner.clone().map(|o| vec![o]).unwrap_or_default(),
        },
    });
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(ctx.client.clone(), namespace)
        .patch(DATASETS_SECRET, &params, &Patch::Apply(secret))
        .await
        .map_err(|e| Error::kube(format!("applying Secret {namespace}/{DATASETS_SECRET}"), e))?;
    sweep_orphan_volumes(ctx).await?;
    if !ctx.config.manage_nodes {
        return Ok(());
    }
    Api::<CSIDriver>::all(ctx.client.clone())
        .patch(CSI_DRIVER, &params, &Patch::Apply(csi_driver()))
        .await
        .map_err(|e| Error::kube(format!("applying CSIDriver {CSI_DRIVER}"), e))?;
    let daemon_sets = Api::<DaemonSet>::namespaced(ctx.client.clone(), namespace);
    // The holder first: agents wait for its socket.
    let holder = holder_daemon_set(&ctx.config, owner.clone())?;
    daemon_sets
        .patch(HOLDER_DAEMONSET, &params, &Patch::Apply(&holder))
        .await
        .map_err(|e| {
            Error::kube(
                format!("applying DaemonSet {namespace}/{HOLDER_DAEMONSET}"),
                e,
            )
        })?;
    let ds = daemon_set(&ctx.config, owner)?;
    daemon_sets
        .patch(DAEMONSET, &params, &Patch::Apply(&ds))
        .await
        .map_err(|e| Error::kube(format!("applying DaemonSet {namespace}/{DAEMONSET}"), e))?;
    Ok(())
}

/// Deletes PVs the operator made whose Dataset is gone (for instance its
/// namespace was deleted while the operator was not running, so no finalizer ran).
async fn sweep_orphan_volumes(ctx: &Context) -> Result<()> {
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let selector = format!("{LABEL_MANAGED_BY}={MANAGED_BY}");
    let list = pvs
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| Error::kube("listing Strata PersistentVolumes", e))?;
    let datasets = if ctx.config.watch_namespace.is_empty() {
        Api::<Dataset>::all(ctx.client.clone())
    } else {
        Api::<Dataset>::namespaced(ctx.client.clone(), &ctx.config.watch_namespace)
    };
    // One list, not a get per volume: there may be thousands.
    let existing: std::collections::BTreeSet<(String, String)> = datasets
        .list_metadata(&ListParams::default())
        .await
        .map_err(|e| Error::kube("listing Datasets", e))?
        .items
        .into_iter()
        .map(|d| (d.namespace().unwrap_or_default(), d.name_any()))
        .collect();
    for pv in list.items {
        let labels = pv.labels();
        let (Some(namespace), Some(name)) = (
            labels.get(LABEL_DATASET_NAMESPACE),
            labels.get(LABEL_DATASET),
        ) else {
            continue;
        };
        if !ctx.config.watch_namespace.is_empty() && *namespace != ctx.config.watch_namespace {
            continue;
        }
        if !existing.contains(&(namespace.clone(), name.clone())) {
            let pv_name = pv.name_any();
            tracing::info!(pv = %pv_name, "deleting the PersistentVolume of a Dataset that no longer exists");
            match pvs.delete(&pv_name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    return Err(Error::kube(
                        format!("deleting PersistentVolume {pv_name}"),
                        e,
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        config: OperatorConfig,
    }

    #[test]
    fn daemon_set_follows_the_flags() {
        let cli = Cli::parse_from([
            "strata-operator",
            "--agent-image",
            "strata:9",
            "--node-selector",
            "strata.dev/cache=true",
            "--tolerations",
            r#"[{"operator":"Exists"}]"#,
            "--memory-tier-size",
            "2Gi",
            "--disk-tier-path",
            "/mnt/nvme/strata",
            "--allowed-local-paths",
            "/mnt/datasets/, /srv/lake",
            "--node-run-dir",
            "/run/strata-b",
            "--node-mounts-dir",
            "/var/lib/strata-b/mounts",
        ]);
        let ds = daemon_set(&cli.config, None).unwrap();
        let pod = ds.spec.template.spec.unwrap();
        // Agent and CSI plugin; the plugin registers with the kubelet itself, no sidecar.
        let names: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["agent", "csi"]);
        assert_eq!(pod.containers[0].image.as_deref(), Some("strata:9"));
        let args = pod.containers[0].args.clone().unwrap();
        assert!(
            args.windows(2).any(|w| w == ["--memory", "2Gi"]),
            "{args:?}"
        );
        assert_eq!(pod.node_selector.unwrap()["strata.dev/cache"], "true");
        assert_eq!(
            pod.tolerations.unwrap()[0].operator.as_deref(),
            Some("Exists")
        );
        let host_dir = |name: &str| {
            let volume = pod
                .volumes
                .as_ref()
                .unwrap()
                .iter()
                .find(|v| v.name == name);
            volume.unwrap().host_path.clone().unwrap().path
        };
        assert_eq!(host_dir("cache"), "/mnt/nvme/strata");
        // Host directories move with the flags; the pods' paths stay.
        assert_eq!(host_dir("run"), "/run/strata-b");
        assert_eq!(host_dir("mounts"), "/var/lib/strata-b/mounts");
        assert!(args.contains(&MOUNTS_DIR.to_string()), "{args:?}");
        // Each allowed local path: a read-only hostPath at the same path, and an agent flag.
        for path in ["/mnt/datasets", "/srv/lake"] {
            assert!(
                args.contains(&format!("--allow-local-path={path}")),
                "{args:?}"
            );
            let mount = pod.containers[0]
                .volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .find(|m| m.mount_path == path)
                .unwrap();
            assert_eq!(mount.read_only, Some(true));
        }
        assert!(
            !pod.containers[1]
                .volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.name == "peer-token"),
            "the CSI plugin needs no peer token"
        );
        let bidirectional = pod.containers[1]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.mount_propagation.as_deref() == Some("Bidirectional"))
            .count();
        assert_eq!(bidirectional, 2);
        // Mounts go through the holder, which has a DaemonSet of its own.
        assert!(
            args.windows(2)
                .any(|w| w == ["--holder-socket", HOLDER_SOCKET]),
            "{args:?}"
        );
        let holder = holder_daemon_set(&cli.config, None).unwrap();
        assert_eq!(
            holder.spec.update_strategy.unwrap().type_.as_deref(),
            Some("OnDelete"),
            "an update must not restart holders: their mounts would end"
        );
        let holder_pod = holder.spec.template.spec.unwrap();
        let c = &holder_pod.containers[0];
        assert_eq!(
            c.command.as_deref(),
            Some(&["strata-holder".to_string()][..])
        );
        assert_eq!(c.image.as_deref(), Some("strata:9"));
        let holder_host_dir = |name: &str| {
            holder_pod
                .volumes
                .as_ref()
                .unwrap()
                .iter()
                .find(|v| v.name == name)
                .unwrap()
                .host_path
                .clone()
                .unwrap()
                .path
        };
        // The same host directories as the agent's: the socket, and where it mounts.
        assert_eq!(holder_host_dir("run"), "/run/strata-b");
        assert_eq!(holder_host_dir("mounts"), "/var/lib/strata-b/mounts");
        assert_eq!(
            holder_pod.node_selector.unwrap()["strata.dev/cache"],
            "true"
        );
        // Registration: the plugin's socket goes in the kubelet's plugins_registry and names
        // the CSI socket at its host path.
        let csi_args = pod.containers[1].args.clone().unwrap();
        assert!(
            csi_args.windows(2).any(|w| w
                == [
                    "--kubelet-registration-path",
                    "/var/lib/kubelet/plugins/csi.strata.dev/csi.sock"
                ]),
            "{csi_args:?}"
        );
        assert!(
            csi_args
                .windows(2)
                .any(|w| w == ["--registration-dir", "/registration"]),
            "{csi_args:?}"
        );
        let registration = pod.containers[1]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "registration")
            .unwrap();
        assert_eq!(registration.mount_path, "/registration");
    }

    #[test]
    fn csi_driver_shape() {
        let d = csi_driver();
        assert_eq!(d.spec.attach_required, Some(false));
        assert_eq!(d.spec.pod_info_on_mount, Some(true));
        assert_eq!(
            d.spec.volume_lifecycle_modes.unwrap(),
            vec!["Persistent", "Ephemeral"]
        );
    }
}
