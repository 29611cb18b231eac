//! The local control plane does what the rest of the suite relies on: a real kube-apiserver with
//! RBAC and CRD validation, a controller-manager that reconciles, a scheduler that schedules (onto
//! no nodes), and the helm / csi-sanity tools built alongside.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::{Api, Client};
use serde_json::json;
use strata_e2e::{Cluster, Error, TestNamespace, client_from_kubeconfig, wait_until};

const PROBE_CRD: &str = include_str!("fixtures/probe-crd.yaml");
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn apiserver_is_ready_and_runs_the_pinned_release() -> Result<()> {
    let cluster = Cluster::shared().await?;
    let readyz = cluster.kubectl(&["get", "--raw", "/readyz"]).await?;
    assert_eq!(readyz.trim(), "ok");
    let checks = cluster
        .kubectl(&["get", "--raw", "/readyz?verbose"])
        .await?;
    for check in ["[+]etcd ok", "[+]poststarthook/rbac/bootstrap-roles ok"] {
        assert!(checks.contains(check), "{check} missing from:\n{checks}");
    }
    let version = cluster.client().await?.apiserver_version().await?;
    assert_eq!(version.git_version, cluster.k8s_version());
    Ok(())
}

#[tokio::test]
async fn default_namespaces_are_listed() -> Result<()> {
    let cluster = Cluster::shared().await?;
    let listed = cluster
        .kubectl(&["get", "namespaces", "-o", "name"])
        .await?;
    for ns in ["default", "kube-system", "kube-public"] {
        assert!(
            listed.lines().any(|l| l == format!("namespace/{ns}")),
            "{ns} missing from:\n{listed}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn rbac_denies_service_accounts_what_admins_may_do() -> Result<()> {
    let cluster = Cluster::shared().await?;
    let client = cluster.client().await?;
    let may_create_pods = |user: &str, groups: Vec<String>| {
        let client = client.clone();
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.to_string()),
                groups: Some(groups),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some("default".into()),
                    verb: Some("create".into()),
                    resource: Some("pods".into()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        async move {
            let answer = Api::<SubjectAccessReview>::all(client)
                .create(&PostParams::default(), &review)
                .await?;
            Ok::<_, kube::Error>(answer.status.map(|s| s.allowed).unwrap_or(false))
        }
    };
    assert!(may_create_pods("strata-admin", vec!["system:masters".into()]).await?);
    let sa = "system:serviceaccount:default:default";
    let sa_groups = vec![
        "system:serviceaccounts".into(),
        "system:authenticated".into(),
    ];
    assert!(
        !may_create_pods(sa, sa_groups).await?,
        "a plain service account may create pods: authorization is not RBAC"
    );
    Ok(())
}

#[tokio::test]
async fn fixture_crd_applies_and_the_api_server_validates_its_objects() -> Result<()> {
    let cluster = Cluster::shared().await?;
    let client = cluster.client().await?;
    cluster.apply(PROBE_CRD).await?;
    wait_established(&client, "probes.e2e.strata.dev").await?;

    let ns = TestNamespace::create(cluster, "crd").await?;
    let gvk = GroupVersionKind::gvk("e2e.strata.dev", "v1", "Probe");
    let probes: Api<DynamicObject> =
        Api::namespaced_with(ns.client().clone(), ns.name(), &ApiResource::from_gvk(&gvk));
    let probe = |name: &str, spec: serde_json::Value| -> Result<DynamicObject> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "e2e.strata.dev/v1",
            "kind": "Probe",
            "metadata": { "name": name },
            "spec": spec,
        }))?)
    };

    // Right after Established the new resource can still be missing from the serving handler
    // for a moment, so the first create is retried.
    let valid = probe(
        "valid",
        json!({ "target": "s3://bucket/prefix", "maxBytes": 4096 }),
    )?;
    let created = wait_until("the first Probe to be accepted", WAIT, || async {
        match probes.create(&PostParams::default(), &valid).await {
            Ok(obj) => Ok(Some(obj)),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
            Err(err) => Err(err),
        }
    })
    .await?;
    // The schema default was applied by the API server.
    assert_eq!(created.data["spec"]["minBytes"], json!(0));
    let fetched = probes.get("valid").await?;
    assert_eq!(fetched.data["spec"]["target"], json!("s3://bucket/prefix"));

    let rejected = |name: &'static str, spec: serde_json::Value, expect: &'static str| {
        let probes = probes.clone();
        async move {
            let err = probes
                .create(&PostParams::default(), &probe(name, spec)?)
                .await
                .err()
                .with_context(|| format!("invalid Probe {name} was accepted"))?;
            let text = err.to_string();
            ensure!(
                matches!(&err, kube::Error::Api(s) if s.code == 422),
                "{name}: expected 422 Invalid, got {text}"
            );
            ensure!(text.contains(expect), "{name}: {expect:?} not in {text}");
            Ok(())
        }
    };
    rejected(
        "no-target",
        json!({ "maxBytes": 1 }),
        "spec.target: Required value",
    )
    .await?;
    rejected(
        "bad-type",
        json!({ "target": "x", "maxBytes": "lots" }),
        "spec.maxBytes",
    )
    .await?;
    rejected(
        "cel",
        json!({ "target": "x", "minBytes": 10, "maxBytes": 1 }),
        "minBytes must not exceed maxBytes",
    )
    .await?;

    ns.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn strata_crds_pass_a_server_side_dry_run() -> Result<()> {
    let cluster = Cluster::shared().await?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/generated");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            names.push(
                path.file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    ensure!(!names.is_empty(), "no CRD YAML in {}", dir.display());
    // Dry run: the API server compiles schemas and CEL rules without changing the shared cluster.
    let dir_arg = dir.to_string_lossy();
    let out = cluster
        .kubectl(&["apply", "--dry-run=server", "-f", &dir_arg])
        .await?;
    for name in names {
        assert!(
            out.contains(&format!(
                "customresourcedefinition.apiextensions.k8s.io/{name}"
            )),
            "{name} not applied:\n{out}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn deployment_gets_a_replicaset_and_an_unschedulable_pod() -> Result<()> {
    let cluster = Cluster::shared().await?;
    let ns = TestNamespace::create(cluster, "deploy").await?;
    cluster
        .kubectl(&[
            "-n",
            ns.name(),
            "create",
            "deployment",
            "web",
            "--image=registry.invalid/strata/pause:1",
            "--replicas=2",
        ])
        .await?;

    let replica_sets: Api<ReplicaSet> = ns.api();
    let rs =
        wait_until("a ReplicaSet owned by Deployment web", WAIT, || async {
            let list = replica_sets.list(&Default::default()).await?;
            Ok::<_, kube::Error>(list.items.into_iter().find(|rs| {
                rs.metadata.owner_references.iter().flatten().any(|o| {
                    o.kind == "Deployment" && o.name == "web" && o.controller == Some(true)
                })
            }))
        })
        .await?;
    assert_eq!(rs.spec.replicas, Some(2));

    // The ReplicaSet controller creates the Pods; the scheduler finds no node for them.
    let pods: Api<Pod> = ns.api();
    let unschedulable = wait_until(
        "2 Pods marked Unschedulable by the scheduler",
        WAIT,
        || async {
            let list = pods.list(&Default::default()).await?;
            let count = list
                .items
                .iter()
                .filter(|pod| {
                    pod.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .into_iter()
                        .flatten()
                        .any(|c| {
                            c.type_ == "PodScheduled"
                                && c.status == "False"
                                && c.reason.as_deref() == Some("Unschedulable")
                        })
                })
                .count();
            Ok::<_, kube::Error>((count == 2).then_some(list.items))
        },
    )
    .await?;
    for pod in unschedulable {
        let phase = pod.status.and_then(|s| s.phase);
        assert_eq!(phase.as_deref(), Some("Pending"));
    }
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn helm_and_csi_sanity_run() -> Result<()> {
    let cluster = Cluster::shared().await?;
    let version = cluster.helm(&["version", "--short"]).await?;
    assert!(
        version.trim().starts_with(cluster.helm_version()),
        "helm version {version:?}, pinned {}",
        cluster.helm_version()
    );
    // helm reaches the API server with the cluster's kubeconfig.
    let releases = cluster
        .helm(&["list", "--all-namespaces", "-o", "json"])
        .await?;
    let releases: serde_json::Value = serde_json::from_str(&releases)?;
    ensure!(releases.is_array(), "helm list printed {releases}");

    let help = cluster.run("csi-sanity", &["--help"], None).await?;
    let text = format!("{}{}", help.stdout, help.stderr);
    assert!(
        text.contains("csi.endpoint"),
        "csi-sanity --help printed:\n{text}"
    );
    Ok(())
}

#[tokio::test]
async fn test_namespaces_are_deleted_with_their_contents() -> Result<()> {
    let cluster = Cluster::shared().await?;
    let client = cluster.client().await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());

    let ns = TestNamespace::create(cluster, "cleanup").await?;
    let name = ns.name().to_string();
    let config_map = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("left-behind".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    ns.api::<ConfigMap>()
        .create(&PostParams::default(), &config_map)
        .await?;
    ns.cleanup().await?;
    assert!(namespaces.get_opt(&name).await?.is_none());

    // A namespace dropped without cleanup (a test that failed early) is deleted too.
    let dropped = TestNamespace::create(cluster, "dropped").await?;
    let dropped_name = dropped.name().to_string();
    drop(dropped);
    wait_until(
        &format!("dropped namespace {dropped_name} to go"),
        WAIT,
        || async {
            let found = namespaces.get_opt(&dropped_name).await?;
            Ok::<_, kube::Error>(found.is_none().then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn service_account_kubeconfig_has_only_the_permissions_rbac_grants() -> Result<()> {
    let cluster = Cluster::shared().await?;
    let ns = TestNamespace::create(cluster, "sa").await?;
    cluster
        .kubectl(&["-n", ns.name(), "create", "serviceaccount", "reader"])
        .await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("reader.kubeconfig");
    cluster
        .write_service_account_kubeconfig(ns.name(), "reader", &path)
        .await?;
    let reader: Api<ConfigMap> = Api::namespaced(client_from_kubeconfig(&path).await?, ns.name());

    match reader.list(&Default::default()).await {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => anyhow::bail!("expected 403 Forbidden before any RoleBinding, got {other:?}"),
    }
    cluster
        .kubectl(&[
            "-n",
            ns.name(),
            "create",
            "rolebinding",
            "reader-view",
            "--clusterrole=view",
            &format!("--serviceaccount={}:reader", ns.name()),
        ])
        .await?;
    wait_until("the view RoleBinding to take effect", WAIT, || async {
        reader.list(&Default::default()).await.map(Some)
    })
    .await?;
    // `view` grants reading, not writing.
    let config_map = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("written-by-reader".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let write = reader.create(&PostParams::default(), &config_map).await;
    assert!(
        matches!(&write, Err(kube::Error::Api(s)) if s.code == 403),
        "{write:?}"
    );
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn tool_failures_name_the_command_and_its_stderr() -> Result<()> {
    let cluster = Cluster::shared().await?;
    let err = cluster
        .kubectl(&["get", "configmap", "does-not-exist", "-n", "default"])
        .await
        .expect_err("getting a missing ConfigMap succeeded");
    let Error::CommandFailed {
        command, stderr, ..
    } = &err
    else {
        panic!("unexpected error kind: {err}");
    };
    assert_eq!(command, "kubectl get configmap does-not-exist -n default");
    assert!(stderr.contains("NotFound"), "{stderr}");
    Ok(())
}

async fn wait_established(client: &Client, name: &str) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    wait_until(&format!("CRD {name} to be Established"), WAIT, || async {
        let crd = crds.get(name).await?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Established" && c.status == "True");
        Ok::<_, kube::Error>(established.then_some(()))
    })
    .await?;
    Ok(())
}
