//! The Helm chart `charts/strata` against the local control plane: it lints and renders, installs
//! into a fresh namespace (CRDs, operator Deployment, ServiceAccounts, RBAC), grants the node
//! agents no access to Secrets and the operator what it needs and no more (checked with
//! `kubectl auth can-i` as each ServiceAccount), and `helm uninstall` removes what it installed.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use serde::Deserialize;
use strata_e2e::{Cluster, TestNamespace, wait_until, workspace_binaries};

const CRDS: [&str; 4] = [
    "datasets.strata.dev",
    "cachepolicies.strata.dev",
    "stratanodes.strata.dev",
    "migrations.strata.dev",
];
const WAIT: Duration = Duration::from_secs(60);
/// Pods left after an uninstall go through the garbage collector (their ReplicaSet first),
/// which on a loaded 2-core machine took more than a minute.
const POD_GC_WAIT: Duration = Duration::from_secs(180);

fn chart_dir() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/strata")
        .display()
        .to_string()
}

/// `kubectl auth can-i <args> --as=<user>`: true for "yes", false for "no". kubectl exits 1 on
/// "no", so the exit status alone is not an error here; the answer on stdout is what counts.
async fn can_i(cluster: &Cluster, user: &str, args: &[&str]) -> Result<bool> {
    let output = tokio::process::Command::new(cluster.bin("kubectl"))
        .arg("auth")
        .arg("can-i")
        .args(args)
        .arg(format!("--as={user}"))
        .env("KUBECONFIG", cluster.kubeconfig())
        .stdin(Stdio::null())
        .output()
        .await?;
    let answer = String::from_utf8_lossy(&output.stdout);
    match answer.trim() {
        "yes" => Ok(true),
        "no" => Ok(false),
        other => bail!(
            "kubectl auth can-i {args:?} --as={user} answered {other:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// Asserts every `(args, expected)` answer for `user`, and reports all mismatches at once.
async fn expect_permissions(
    cluster: &Cluster,
    user: &str,
    cases: &[(Vec<&str>, bool)],
) -> Result<()> {
    let mut wrong = Vec::new();
    for (args, expected) in cases {
        let allowed = can_i(cluster, user, args).await?;
        if allowed != *expected {
            let want = if *expected { "yes" } else { "no" };
            wrong.push(format!("can-i {} should be {want}", args.join(" ")));
        }
    }
    ensure!(wrong.is_empty(), "{user}:\n  {}", wrong.join("\n  "));
    Ok(())
}

/// Long flags listed in a clap `--help` text, without `--help` and `--version`.
fn help_flags(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let line = line.strip_prefix("-").map_or(line, |rest| {
                // "-h, --help": skip the short form.
                rest.split_once(", ").map_or(line, |(_, long)| long)
            });
            let flag = line.strip_prefix("--")?;
            let name: String = flag
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            (!name.is_empty() && name != "help" && name != "version").then_some(name)
        })
        .collect()
}

#[tokio::test]
async fn chart_passes_exactly_the_operators_flags() -> Result<()> {
    let cluster = Cluster::shared().await?;
    let bin = tokio::task::spawn_blocking(|| workspace_binaries(&["strata-operator"]))
        .await??
        .join("strata-operator");
    let help = std::process::Command::new(&bin).arg("--help").output()?;
    ensure!(help.status.success(), "{} --help failed", bin.display());
    let operator_flags = help_flags(&String::from_utf8_lossy(&help.stdout));
    ensure!(operator_flags.contains("agent-image"), "{operator_flags:?}");

    let rendered = cluster
        .helm(&["template", "t", &chart_dir(), "--set", "logFormat=json"])
        .await?;
    let mut deployment = None;
    for doc in serde_yaml::Deserializer::from_str(&rendered) {
        let doc = serde_yaml::Value::deserialize(doc)?;
        if doc["kind"].as_str() == Some("Deployment") {
            deployment = Some(doc);
        }
    }
    let deployment = deployment.context("no Deployment rendered")?;
    let args: Vec<String> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .context("operator container without args")?
        .iter()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    let chart_flags: BTreeSet<String> = args
        .iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_string())
        .collect();
    let unknown: Vec<_> = chart_flags.difference(&operator_flags).collect();
    let unset: Vec<_> = operator_flags.difference(&chart_flags).collect();
    ensure!(
        unknown.is_empty() && unset.is_empty(),
        "the chart passes flags strata-operator does not have: {unknown:?}; \
         strata-operator flags the chart does not set: {unset:?}"
    );
    // And the operator accepts the rendered command line as a whole (the value parsers run
    // before --help is handled, so this checks every value without connecting anywhere).
    let expanded: Vec<String> = args
        .iter()
        .map(|a| a.replace("$(POD_NAME)", "strata-operator-0"))
        .collect();
    let parsed = std::process::Command::new(&bin)
        .args(&expanded)
        .arg("--help")
        .output()?;
    ensure!(
        parsed.status.success(),
        "strata-operator refused the chart's flags {expanded:?}: {}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn chart_lints_and_renders_with_every_switch() -> Result<()> {
    let cluster = Cluster::shared().await?;
    let chart = chart_dir();
    cluster.helm(&["lint", "--strict", &chart]).await?;
    let variants: [&[&str]; 4] = [
        &[],
        &[
            "--set",
            "metrics.serviceMonitor.enabled=true,operator.replicas=3",
        ],
        &[
            "--set",
            "node.manage=false,rbac.create=false,serviceAccount.create=false,metrics.service.enabled=false",
        ],
        &[
            "--set",
            "node.nodeSelector.strata\\.dev/cache=true,node.tolerations[0].key=gpu,node.tolerations[0].operator=Exists",
        ],
    ];
    for extra in variants {
        let mut args = vec!["lint", "--strict", chart.as_str()];
        args.extend_from_slice(extra);
        cluster.helm(&args).await?;
        let mut args = vec!["template", "t", chart.as_str(), "-n", "default"];
        args.extend_from_slice(extra);
        let rendered = cluster.helm(&args).await?;
        // The API server's own dry run checks every rendered object against its schema.
        // (CRD-backed kinds such as the ServiceMonitor are not installed here; skip that one.)
        let rendered: String = rendered
            .split("\n---")
            .filter(|doc| !doc.contains("kind: ServiceMonitor"))
            .collect::<Vec<_>>()
            .join("\n---");
        ensure!(rendered.contains("kind: Deployment"), "{rendered}");
        cluster
            .run(
                "kubectl",
                &["create", "--dry-run=server", "-n", "default", "-f", "-"],
                Some(rendered.as_bytes()),
            )
            .await
            .with_context(|| format!("server dry run of `helm template` with {extra:?}"))?;
    }
    let selector = cluster
        .helm(&[
            "template",
            "t",
            &chart,
            "--set",
            "node.nodeSelector.strata\\.dev/cache=true,node.nodeSelector.zone=a",
            "--set",
            "node.tolerations[0].key=gpu,node.tolerations[0].operator=Exists",
        ])
        .await?;
    ensure!(
        selector.contains(r#""--node-selector=strata.dev/cache=true,zone=a""#),
        "node selector flag missing:\n{selector}"
    );
    ensure!(
        selector.contains(r#""--tolerations=[{\"key\":\"gpu\",\"operator\":\"Exists\"}]""#),
        "tolerations flag missing:\n{selector}"
    );
    Ok(())
}

#[tokio::test]
async fn install_grants_least_privilege_and_uninstall_cleans_up() -> Result<()> {
    let cluster = Cluster::shared().await?;
    let ns = TestNamespace::create(cluster, "chart").await?;
    let other = TestNamespace::create(cluster, "chart-tenant").await?;
    // The release is named after its namespace, so cluster-scoped objects (ClusterRoles, ...) of
    // concurrent runs do not collide.
    let release = ns.name().to_string();
    let chart = chart_dir();
    cluster
        .helm(&[
            "install",
            &release,
            &chart,
            "-n",
            ns.name(),
            "--set",
            "operator.replicas=2",
        ])
        .await?;
    let client = cluster.client().await?;

    // What the install created.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in CRDS {
        wait_until(&format!("CRD {crd} established"), WAIT, || async {
            let found = crds.get_opt(crd).await?;
            let established = found
                .and_then(|c| c.status)
                .and_then(|s| s.conditions)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            Ok::<_, kube::Error>(established.then_some(()))
        })
        .await?;
    }
    let operator = format!("{release}-operator");
    let agent = format!("{release}-agent");
    let deployment = ns.api::<Deployment>().get(&operator).await?;
    let spec = deployment.spec;
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.context("pod template without spec")?;
    assert_eq!(pod.service_account_name.as_deref(), Some(operator.as_str()));
    let args = pod.containers[0].args.clone().unwrap_or_default();
    for expected in [
        format!("--namespace={}", ns.name()),
        format!("--agent-service-account={agent}"),
        format!("--owner-deployment={operator}"),
        format!("--lease-namespace={}", ns.name()),
    ] {
        assert!(args.contains(&expected), "{expected} not in {args:?}");
    }
    for account in [&operator, &agent] {
        ns.api::<ServiceAccount>().get(account).await?;
    }
    ns.api::<Role>().get(&operator).await?;
    ns.api::<RoleBinding>().get(&operator).await?;
    ns.api::<Service>()
        .get(&format!("{operator}-metrics"))
        .await?;
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    let cluster_bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    for name in [&operator, &agent] {
        cluster_roles.get(name).await?;
        cluster_bindings.get(name).await?;
    }
    // With no kubelet the pods never start, but the ReplicaSet controller creates them.
    wait_until("the operator's pods to be created", WAIT, || async {
        let out = cluster
            .kubectl(&[
                "-n",
                ns.name(),
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/name=strata-operator",
                "-o",
                "name",
            ])
            .await?;
        Ok::<_, strata_e2e::Error>((out.lines().count() == 2).then_some(()))
    })
    .await?;

    // The agents: StrataNode reports, nothing else; above all no Secret anywhere.
    let agent_user = format!("system:serviceaccount:{}:{agent}", ns.name());
    let here = ns.name();
    let there = other.name();
    let mut agent_cases: Vec<(Vec<&str>, bool)> = Vec::new();
    for verb in ["get", "list", "watch"] {
        agent_cases.push((vec![verb, "secrets", "--all-namespaces"], false));
        agent_cases.push((vec![verb, "secrets", "-n", here], false));
        agent_cases.push((vec![verb, "secrets", "-n", there], false));
        agent_cases.push((vec![verb, "secrets/strata-datasets", "-n", here], false));
        agent_cases.push((vec![verb, "secrets/strata-peer-token", "-n", here], false));
    }
    agent_cases.extend([
        // Server-side apply of its StrataNode and its status; which one, the admission
        // policy decides (checked below with node-bound tokens).
        (vec!["create", "stratanodes.strata.dev"], true),
        (vec!["patch", "stratanodes.strata.dev"], true),
        (
            vec!["patch", "stratanodes.strata.dev", "--subresource=status"],
            true,
        ),
        (vec!["update", "stratanodes.strata.dev"], false),
        // The cluster cache's members: the other agents' endpoints and heartbeats.
        (vec!["get", "stratanodes.strata.dev"], true),
        (vec!["list", "stratanodes.strata.dev"], true),
        (vec!["watch", "stratanodes.strata.dev"], true),
        (vec!["delete", "stratanodes.strata.dev"], false),
        // Job credentials are checked with TokenReviews.
        (vec!["create", "tokenreviews.authentication.k8s.io"], true),
        (
            vec!["create", "subjectaccessreviews.authorization.k8s.io"],
            false,
        ),
        (vec!["create", "serviceaccounts/token", "-n", there], false),
        (
            vec!["get", "datasets.strata.dev", "--all-namespaces"],
            false,
        ),
        (vec!["list", "pods", "--all-namespaces"], false),
        (vec!["get", "configmaps", "-n", here], false),
        (vec!["create", "pods", "-n", here], false),
    ]);
    expect_permissions(cluster, &agent_user, &agent_cases).await?;

    // A tenant's job pods run as the namespace's own ServiceAccount: the chart and the
    // operator give it nothing (its token is only worth something to the agents).
    let job_user = format!("system:serviceaccount:{there}:default");
    expect_permissions(
        cluster,
        &job_user,
        &[
            (vec!["get", "secrets", "-n", there], false),
            (vec!["create", "tokenreviews.authentication.k8s.io"], false),
            (vec!["patch", "stratanodes.strata.dev"], false),
            (vec!["get", "datasets.strata.dev", "-n", there], false),
        ],
    )
    .await?;

    // Each agent writes only its own node's StrataNode: the admission policy compares the
    // node-name claim of a token bound to a pod on that node with the object's name.
    let suffix = &here[here.len() - 6..];
    let (mine, theirs) = (format!("chart-a-{suffix}"), format!("chart-b-{suffix}"));
    let run = tempfile::tempdir()?;
    let bound = run.path().join("agent.kubeconfig");
    cluster
        .write_node_bound_kubeconfig(here, &agent, &mine, &bound, "1h")
        .await?;
    let unbound = run.path().join("unbound.kubeconfig");
    cluster
        .write_service_account_kubeconfig(here, &agent, &unbound)
        .await?;
    let apply_node = |kubeconfig: PathBuf, name: String| async move {
        let manifest = format!(
            "apiVersion: strata.dev/v1alpha1\nkind: StrataNode\nmetadata: {{name: {name}}}\nspec: {{nodeName: {name}}}\n"
        );
        let kubeconfig = kubeconfig.to_string_lossy().into_owned();
        cluster
            .run(
                "kubectl",
                &[
                    "--kubeconfig",
                    &kubeconfig,
                    "apply",
                    "--server-side",
                    "--field-manager=strata-agent",
                    "-f",
                    "-",
                ],
                Some(manifest.as_bytes()),
            )
            .await
    };
    apply_node(bound.clone(), mine.clone())
        .await
        .context("the agent writing its own node's StrataNode")?;
    for (what, kubeconfig, name) in [
        ("another node's StrataNode", bound.clone(), theirs.clone()),
        ("a token bound to no node", unbound.clone(), mine.clone()),
    ] {
        let err = apply_node(kubeconfig, name)
            .await
            .err()
            .with_context(|| format!("the agent wrote {what}"))?;
        ensure!(
            err.to_string()
                .contains("may write only the StrataNode of its own node"),
            "{what}: {err}"
        );
    }
    cluster
        .kubectl(&["delete", "stratanode", &mine, "--ignore-not-found"])
        .await?;
    cluster.delete_node(&mine).await?;

    // The operator: what each controller needs, scoped as tightly as the design allows.
    let operator_user = format!("system:serviceaccount:{}:{operator}", ns.name());
    let own_deployment = format!("deployments.apps/{operator}");
    let operator_cases: Vec<(Vec<&str>, bool)> = vec![
        // Datasets and CachePolicies everywhere, with status and finalizers.
        (
            vec!["watch", "datasets.strata.dev", "--all-namespaces"],
            true,
        ),
        (vec!["patch", "datasets.strata.dev", "-n", there], true),
        (
            vec![
                "patch",
                "datasets.strata.dev",
                "--subresource=status",
                "-n",
                there,
            ],
            true,
        ),
        (
            vec!["list", "cachepolicies.strata.dev", "--all-namespaces"],
            true,
        ),
        (
            vec![
                "patch",
                "cachepolicies.strata.dev",
                "--subresource=status",
                "-n",
                there,
            ],
            true,
        ),
        // Migrations: watched everywhere, status written; the spec never touched.
        (
            vec!["watch", "migrations.strata.dev", "--all-namespaces"],
            true,
        ),
        (vec!["patch", "migrations.strata.dev", "-n", there], false),
        (
            vec![
                "patch",
                "migrations.strata.dev",
                "--subresource=status",
                "-n",
                there,
            ],
            true,
        ),
        (vec!["create", "migrations.strata.dev", "-n", there], false),
        (vec!["create", "datasets.strata.dev", "-n", there], false),
        (vec!["delete", "datasets.strata.dev", "-n", there], false),
        (vec!["watch", "stratanodes.strata.dev"], true),
        (vec!["patch", "stratanodes.strata.dev"], false),
        // Volumes and jobs in tenants' namespaces.
        (vec!["create", "persistentvolumes"], true),
        (vec!["delete", "persistentvolumes"], true),
        (vec!["create", "persistentvolumeclaims", "-n", there], true),
        (vec!["create", "jobs.batch", "-n", there], true),
        (vec!["create", "cronjobs.batch", "-n", there], true),
        (vec!["create", "pods", "-n", there], false),
        // Node pods in its own namespace: list and annotate (so the kubelet refreshes the
        // datasets Secret at once); nothing more, and nothing in tenants' namespaces.
        (vec!["patch", "pods", "-n", here], true),
        (vec!["delete", "pods", "-n", here], false),
        (vec!["create", "pods/exec", "-n", here], false),
        (vec!["patch", "pods", "-n", there], false),
        // Tenant Secrets: read the named credentials Secret; never write, enumerate or
        // delete them.
        (vec!["get", "secrets", "-n", there], true),
        (vec!["create", "secrets", "-n", there], false),
        (vec!["patch", "secrets", "-n", there], false),
        (vec!["list", "secrets", "-n", there], false),
        (vec!["watch", "secrets", "-n", there], false),
        (vec!["list", "secrets", "--all-namespaces"], false),
        (vec!["delete", "secrets", "-n", there], false),
        (vec!["update", "secrets", "-n", there], false),
        // Its own namespace: Secrets, the Lease, the DaemonSet.
        (vec!["list", "secrets", "-n", here], true),
        (vec!["delete", "secrets", "-n", here], true),
        (
            vec!["update", "leases.coordination.k8s.io", "-n", here],
            true,
        ),
        (
            vec!["update", "leases.coordination.k8s.io", "-n", there],
            false,
        ),
        (vec!["patch", "daemonsets.apps", "-n", here], true),
        (vec!["create", "daemonsets.apps", "-n", there], false),
        (vec!["get", own_deployment.as_str(), "-n", here], true),
        (vec!["get", "deployments.apps/other", "-n", here], false),
        (vec!["patch", "deployments.apps", "-n", here], false),
        // The one CSIDriver, events, nothing of the cluster's own machinery.
        (
            vec!["patch", "csidrivers.storage.k8s.io/csi.strata.dev"],
            true,
        ),
        (
            vec!["patch", "csidrivers.storage.k8s.io/other.csi.example"],
            false,
        ),
        (vec!["create", "events.events.k8s.io", "-n", there], true),
        (
            vec!["create", "clusterroles.rbac.authorization.k8s.io"],
            false,
        ),
        (vec!["get", "nodes"], false),
    ];
    expect_permissions(cluster, &operator_user, &operator_cases).await?;

    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let own_node_policy = format!("{release}-agent-own-node");
    policies.get(&own_node_policy).await?;

    // Uninstall removes every object the chart made; the CRDs stay (Helm never deletes them).
    cluster
        .helm(&["uninstall", &release, "-n", ns.name(), "--wait"])
        .await?;
    wait_until("the chart's objects to be removed", WAIT, || async {
        let left = [
            ns.api::<Deployment>().get_opt(&operator).await?.is_some(),
            ns.api::<ServiceAccount>()
                .get_opt(&operator)
                .await?
                .is_some(),
            ns.api::<ServiceAccount>().get_opt(&agent).await?.is_some(),
            ns.api::<Role>().get_opt(&operator).await?.is_some(),
            cluster_roles.get_opt(&operator).await?.is_some(),
            cluster_roles.get_opt(&agent).await?.is_some(),
            cluster_bindings.get_opt(&operator).await?.is_some(),
            cluster_bindings.get_opt(&agent).await?.is_some(),
            policies.get_opt(&own_node_policy).await?.is_some(),
        ];
        Ok::<_, kube::Error>(left.iter().all(|l| !l).then_some(()))
    })
    .await?;
    wait_until("the operator's pods to be removed", POD_GC_WAIT, || async {
        let out = cluster
            .kubectl(&["-n", ns.name(), "get", "pods", "-o", "name"])
            .await?;
        Ok::<_, strata_e2e::Error>(out.trim().is_empty().then_some(()))
    })
    .await?;
    expect_permissions(
        cluster,
        &operator_user,
        &[(vec!["get", "secrets", "-n", there], false)],
    )
    .await?;
    for crd in CRDS {
        crds.get(crd).await?;
    }
    let releases = cluster.helm(&["list", "-n", ns.name(), "-q"]).await?;
    ensure!(releases.trim().is_empty(), "releases left: {releases}");
    other.cleanup().await?;
    ns.cleanup().await?;
    Ok(())
}
