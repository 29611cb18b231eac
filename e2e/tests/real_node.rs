//! Strata on a real node: the chart's pods on a kubelet, datasets mounted into pods by the
//! kubelet through the CSI plugin, and Jobs that run as pods.
//!
//! The cluster is `Cluster::with_node()`: the local control plane plus containerd and a kubelet
//! (`e2e/cluster/README.md`), on its own state dir and ports (`e2e/cluster/node-suite.env`).
//!
//! 1. the Strata image from this workspace's binaries (`scripts/image.sh strata`, debug build),
//!    imported into the node's containerd under the chart's default name;
//! 2. `helm install`: the operator Deployment's pod becomes Ready, the mount holder's
//!    DaemonSet pod and the node DaemonSet's pod (agent and CSI plugin) become Ready, the
//!    CSINode lists `csi.strata.dev`;
//! 3. a Dataset on moto S3 (loopback; the agents use the host network) with a CachePolicy: its
//!    preload Job's pod runs to completion and `kubectl get datasets` reaches 100%; its pin
//!    Job's pod runs to completion;
//! 4. a pod using the Dataset's PVC and a pod using an inline CSI volume with a `subPath` check
//!    the sha256 of every file against the source's (`sha256sum -c`) and exit 0 only if all
//!    match and no file is missing or extra; writing to the volume fails with EROFS; then a
//!    writable Dataset (`writeMode: WriteBack`): a pod writes, renames, appends and deletes
//!    through an inline volume, and the bucket ends with exactly what it closed;
//! 5. deleting the pods unpublishes the volumes: no bind mount under the kubelet's pods and no
//!    FUSE mount of the dataset are left on the node;
//! 6. `helm upgrade` with a changed value rolls the node DaemonSet (the operator builds it from
//!    its flags): a new agent pod with the new flag becomes Ready, while a pod checks every
//!    file of the dataset in a loop: no pass fails, and the holder pod is not restarted;
//! 7. a Migration of the Dataset's source to another prefix with `switchSource`: its Job's pod
//!    runs on the kubelet and asks its node's agent; every object reaches the target with its
//!    bytes, the Migration is Switched at 100%, the agents get the dataset with the source
//!    served from the target, and a pod checks every file again through it;
//! 8. deleting the Dataset and `helm uninstall`: no Strata pod, workload, RBAC object, mount,
//!    plugin socket or cached file of the dataset is left; what stays is what docs/install.md
//!    says stays (the CRDs, the CSIDriver, the disk tier's directory).
//!
//! Needs root, `moto_server` and the node's builds (`cluster.sh build`, done by `up`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::storage::v1::CSINode;
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use sha2::{Digest, Sha256};
use strata_e2e::{
    Cluster, MotoS3, TestNamespace, dataset_status, generated_bytes, jobs_of_kind, wait_until,
    workspace_binaries,
};

const RELEASE: &str = "strata";
const BUCKET: &str = "strata-node-e2e";
const DATASET: &str = "corpus";
const POLICY: &str = "corpus-cache";
const DRIVER: &str = "csi.strata.dev";
const BUSYBOX: &str = "strata.local/busybox:1.35";
/// Host ports of this suite's agent API and operator metrics (both use the host network), away
/// from the chart's defaults so `make demo` can run on the same machine.
const AGENT_PORT: u16 = 17070;
const METRICS_PORT: u16 = 18080;
/// The host directories of the agent's mounts and socket (`node.mountsDir`, `node.runDir`),
/// away from the defaults the demo uses; `node-suite.env` makes the first a shared mount.
const MOUNTS_DIR: &str = "/var/lib/strata-node-suite/mounts";
const RUN_DIR: &str = "/run/strata-node-suite";
/// Pods start in seconds here, but a loaded 2-core machine has taken over a minute.
const WAIT: Duration = Duration::from_secs(180);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Uploads the test data under `s3://BUCKET/data/`; returns dataset path (no leading slash) →
/// sha256. `pinned/**` is what the policy pins.
fn upload_data(s3: &MotoS3) -> Result<BTreeMap<String, String>> {
    s3.create_bucket(BUCKET)?;
    let mut files = vec![
        ("train/shard-000.bin".to_string(), 3 << 20),
        ("train/shard-001.bin".to_string(), (5 << 20) + 17),
        ("train/empty.bin".to_string(), 0),
        ("pinned/labels.csv".to_string(), (1 << 20) + 5),
    ];
    for i in 0..6 {
        files.push((format!("train/small/{i:02}.json"), 1000 + i * 777));
    }
    let mut sums = BTreeMap::new();
    for (seed, (path, len)) in files.into_iter().enumerate() {
        let body = generated_bytes(seed as u64 + 100, len);
        s3.put_object(BUCKET, &format!("data/{path}"), &body)?;
        sums.insert(path, sha256_hex(&body));
    }
    Ok(sums)
}

/// A `sha256sum -c` list for the files under `prefix` (paths relative to it, as `./path`).
fn checksum_list(sums: &BTreeMap<String, String>, prefix: &str) -> (String, usize) {
    let lines: Vec<String> = sums
        .iter()
        .filter_map(|(path, sum)| {
            path.strip_prefix(prefix)
                .map(|rel| format!("{sum}  ./{rel}"))
        })
        .collect();
    (lines.join("\n") + "\n", lines.len())
}

/// A shell script that checks every file under /data against /sums/<list>, that exactly
/// `count` files are there, and (when asked) that a write fails with EROFS.
fn reader_script(list: &str, count: usize, check_write: bool) -> String {
    let mut script = format!(
        "cd /data && sha256sum -c /sums/{list} || exit 1; \
         n=$(find . -type f | wc -l); [ \"$n\" -eq {count} ] || {{ echo \"$n files, want {count}\"; exit 2; }}; "
    );
    if check_write {
        script.push_str(
            "if err=$( (echo x > /data/written) 2>&1 ); then echo 'write succeeded'; exit 3; fi; \
             echo \"$err\"; echo \"$err\" | grep -q 'Read-only file system' || exit 4; ",
        );
    }
    // Stays up (and leaves at once on SIGTERM) so the volume is still published when the
    // pod is deleted: the kubelet tears down the volumes of a pod that has exited by itself.
    script.push_str(&format!(
        "echo {CHECKED}; trap 'exit 0' TERM; sleep 3600 & wait"
    ));
    script
}

/// The pod that reads across the node DaemonSet's roll.
const ROLL_READER: &str = "reader-roll";

/// A shell script that checks every file under /data against /sums/<list> in a loop,
/// printing "pass N" after each full pass and "FAILED" with sha256sum's output otherwise.
fn looping_reader_script(list: &str) -> String {
    format!(
        "cd /data; i=0; trap 'exit 0' TERM; while true; do \
         if out=$(sha256sum -c /sums/{list} 2>&1); then i=$((i+1)); echo \"pass $i\"; \
         else echo \"FAILED: $out\"; fi; sleep 0.3 & wait; done"
    )
}

/// Full passes a looping reader logged.
fn passes(log: &str) -> usize {
    log.lines().filter(|l| l.starts_with("pass ")).count()
}

async fn pod_log(cluster: &Cluster, namespace: &str, pod: &str) -> Result<String> {
    Ok(cluster.kubectl(&["-n", namespace, "logs", pod]).await?)
}

/// A run-once busybox pod on the node reading `/data` from `volume` (YAML of one volume).
fn reader_pod(name: &str, node: &str, script: &str, volume: &str) -> String {
    let script = serde_json::to_string(script).expect("a string serializes");
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  restartPolicy: Never
  automountServiceAccountToken: false
  containers:
    - name: main
      image: {BUSYBOX}
      imagePullPolicy: Never
      command: ["sh", "-c", {script}]
      volumeMounts:
        - {{name: data, mountPath: /data}}
        - {{name: sums, mountPath: /sums}}
  volumes:
    - name: sums
      configMap: {{name: sums}}
    - name: data
{volume}
"#
    )
}

/// The writable Dataset of step 4b.
const RESULTS: &str = "results";

/// What the writer pod does through its volume: a file written, renamed onto its name, one
/// appended to, a scratch file deleted; it prints the checksum of what it wrote.
const WRITER_SCRIPT: &str = "set -e; mkdir -p /data/out; cd /data/out; \
     head -c 3000000 /dev/urandom > tmp.bin; mv tmp.bin result.bin; \
     echo hello > note.txt; echo appended >> note.txt; \
     echo scratch > scratch; rm scratch; sha256sum result.bin; \
     [ \"$(cat note.txt)\" = \"$(printf 'hello\\nappended')\" ] || exit 5; \
     echo all-checked; trap 'exit 0' TERM; sleep 3600 & wait";

/// A Dataset whose one source takes writes (write-back), under the same policy.
fn writable_manifest(endpoint: &str) -> String {
    format!(
        r#"apiVersion: strata.dev/v1alpha1
kind: Dataset
metadata:
  name: {RESULTS}
  labels:
    team: node-e2e
spec:
  sources:
    - name: results
      uri: s3://{BUCKET}/results/
      mountPath: /
      endpoint: {endpoint}
      region: us-east-1
      writeMode: WriteBack
      credentialsSecretRef:
        name: s3-creds
      options:
        allow_http: "true"
  policyRef:
    name: {POLICY}
"#
    )
}

fn tenant_manifest(endpoint: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata:
  name: s3-creds
type: Opaque
stringData:
  AWS_ACCESS_KEY_ID: node-e2e-key
  AWS_SECRET_ACCESS_KEY: node-e2e-secret-value
---
apiVersion: strata.dev/v1alpha1
kind: Dataset
metadata:
  name: {DATASET}
  labels:
    team: node-e2e
spec:
  sources:
    - name: corpus
      uri: s3://{BUCKET}/data/
      mountPath: /
      endpoint: {endpoint}
      region: us-east-1
      credentialsSecretRef:
        name: s3-creds
      options:
        allow_http: "true"
  policyRef:
    name: {POLICY}
---
apiVersion: strata.dev/v1alpha1
kind: CachePolicy
metadata:
  name: {POLICY}
spec:
  datasetSelector:
    matchLabels:
      team: node-e2e
  quota: 64Mi
  tiers: [Memory, SSD]
  blockSize: 1Mi
  metadata:
    ttl: 1h
  pin:
    - paths: ["/pinned/**"]
  preload:
    - paths: ["/**"]
"#
    )
}

/// What a user looks at when something does not come up: pods, recent events, the logs of
/// every container in `namespace`.
async fn diagnose(cluster: &Cluster, namespace: &str) -> String {
    let mut out = String::new();
    for args in [
        vec!["-n", namespace, "get", "pods", "-o", "wide"],
        vec!["-n", namespace, "get", "events", "--sort-by=.lastTimestamp"],
        vec![
            "-n",
            namespace,
            "logs",
            "--all-containers",
            "--prefix",
            "--tail=15",
            "-l",
            "app.kubernetes.io/name",
        ],
    ] {
        let text = match cluster.kubectl(&args).await {
            Ok(text) => text,
            Err(e) => e.to_string(),
        };
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!(
            "\n$ kubectl {}\n{}",
            args.join(" "),
            lines[lines.len().saturating_sub(40)..].join("\n")
        ));
    }
    out
}

/// Printed by a reader pod once every check passed; it then stays up, holding its volume.
const CHECKED: &str = "all-checked";

/// Waits for a reader pod to print [`CHECKED`] and returns its log; a pod that exits (a check
/// failed) fails with its log.
async fn pod_checked(cluster: &Cluster, pods: &Api<Pod>, name: &str) -> Result<String> {
    let namespace = pods.namespace().unwrap_or_default().to_string();
    let args = ["-n", namespace.as_str(), "logs", name];
    let log = || cluster.kubectl(&args);
    let outcome = wait_until(&format!("pod {name} to check its volume"), WAIT, || async {
        let phase = pods
            .get(name)
            .await?
            .status
            .and_then(|s| s.phase)
            .unwrap_or_default();
        if matches!(phase.as_str(), "Succeeded" | "Failed") {
            return Ok::<_, anyhow::Error>(Some(Err(phase)));
        }
        if phase != "Running" {
            return Ok(None);
        }
        let log = log().await?;
        Ok(log.lines().any(|l| l == CHECKED).then_some(Ok(log)))
    })
    .await;
    match outcome {
        Ok(Ok(log)) => Ok(log),
        Ok(Err(phase)) => bail!(
            "pod {name} {phase}; its log:\n{}",
            log().await.unwrap_or_else(|e| e.to_string())
        ),
        Err(e) => bail!("{e}{}", diagnose(cluster, &namespace).await),
    }
}

/// Waits for the Job of `kind` ("preload", "pin") in `jobs` to complete (its pods retry up to
/// the Job's backoff limit); a pod's log when the Job failed.
async fn job_completed(cluster: &Cluster, jobs: &Api<Job>, kind: &str) -> Result<String> {
    let namespace = jobs.namespace().unwrap_or_default().to_string();
    let outcome = wait_until(&format!("the {kind} Job to complete"), WAIT, || async {
        let found = jobs_of_kind(jobs, kind).await?;
        let done = found.into_iter().find_map(|job| {
            let status = job.status.clone().unwrap_or_default();
            let name = job.metadata.name.clone().unwrap_or_default();
            if status.succeeded.unwrap_or(0) > 0 {
                Some(Ok(name))
            } else if status
                .conditions
                .as_ref()
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Failed" && c.status == "True"))
            {
                Some(Err(name))
            } else {
                None
            }
        });
        Ok::<_, strata_e2e::Error>(done)
    })
    .await;
    match outcome {
        Ok(Ok(name)) => Ok(name),
        Ok(Err(name)) => {
            let log = cluster
                .kubectl(&["-n", &namespace, "logs", &format!("job/{name}")])
                .await
                .unwrap_or_else(|e| e.to_string());
            bail!("{kind} Job {name} failed; its log:\n{log}")
        }
        Err(e) => {
            // The Job's own pods' logs: what a user runs `kubectl logs job/...` for.
            let mut logs = String::new();
            for job in jobs_of_kind(jobs, kind).await.unwrap_or_default() {
                let name = job.metadata.name.unwrap_or_default();
                let log = cluster
                    .kubectl(&[
                        "-n",
                        &namespace,
                        "logs",
                        &format!("job/{name}"),
                        "--tail=40",
                    ])
                    .await
                    .unwrap_or_else(|e| e.to_string());
                logs.push_str(&format!("\n$ kubectl logs job/{name}\n{log}"));
            }
            bail!("{e}{logs}{}", diagnose(cluster, &namespace).await)
        }
    }
}

/// Mount points on this machine (the node) whose path contains `needle`.
fn mounts_containing(needle: &str) -> Result<Vec<String>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.contains(needle))
        .map(str::to_string)
        .collect())
}

/// CSI volume mounts in the pod directories of the kubelet at `kubelet_dir`.
fn csi_volume_mounts(kubelet_dir: &str) -> Result<Vec<String>> {
    let pods = format!("{kubelet_dir}/pods/");
    Ok(mounts_containing(&pods)?
        .into_iter()
        .filter(|m| m.contains("/volumes/kubernetes.io~csi/"))
        .collect())
}

/// Files under `dir` (recursively) whose path contains `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().contains(needle) {
                found.push(path);
            }
        }
    }
    found
}

/// What is left of the release in `namespace` and on the node: pods, workloads, its Secrets
/// and RBAC, Strata mounts and the plugin's registration socket.
async fn release_leftovers(
    cluster: &Cluster,
    namespace: &str,
    tenant: &str,
    kubelet_dir: &str,
) -> Result<Vec<String>> {
    let mut left = Vec::new();
    let kinds = "pods,deployments,daemonsets,jobs,serviceaccounts,secrets,roles,rolebindings";
    let namespaced = cluster
        .kubectl(&["-n", namespace, "get", kinds, "-o", "name"])
        .await?;
    // Every namespace has its default ServiceAccount.
    left.extend(
        namespaced
            .lines()
            .filter(|n| *n != "serviceaccount/default")
            .map(str::to_string),
    );
    let cluster_rbac = cluster
        .kubectl(&["get", "clusterroles,clusterrolebindings", "-o", "name"])
        .await?;
    let release_prefix = format!("/{RELEASE}-");
    left.extend(
        cluster_rbac
            .lines()
            .filter(|n| n.contains(&release_prefix))
            .map(str::to_string),
    );
    left.extend(mounts_containing(&format!("{MOUNTS_DIR}/{tenant}"))?);
    left.extend(csi_volume_mounts(kubelet_dir)?);
    let registry = Path::new(kubelet_dir).join("plugins_registry");
    left.extend(
        files_containing(&registry, "strata")
            .iter()
            .map(|p| p.display().to_string()),
    );
    Ok(left)
}

/// Uninstalls what an earlier, interrupted run of this suite left installed: cluster-scoped
/// objects of a release in another namespace would make `helm install` refuse. A failed run's
/// namespace is deleted with the release's record in it, so its cluster-scoped objects are
/// found by the chart's instance label.
async fn uninstall_earlier_release(cluster: &Cluster) -> Result<()> {
    let filter = format!("^{RELEASE}$");
    let listed = cluster
        .helm(&[
            "list",
            "--all-namespaces",
            "--filter",
            &filter,
            "-o",
            "json",
        ])
        .await?;
    let releases: Vec<serde_json::Value> = serde_json::from_str(&listed)?;
    for release in releases {
        let namespace = release["namespace"].as_str().unwrap_or_default();
        eprintln!("uninstalling release {RELEASE} left in {namespace} by an earlier run");
        cluster
            .helm(&["uninstall", RELEASE, "-n", namespace, "--wait"])
            .await?;
    }
    let kinds = "clusterroles,clusterrolebindings,validatingadmissionpolicies,\
                 validatingadmissionpolicybindings";
    let selector = format!("app.kubernetes.io/instance={RELEASE}");
    cluster
        .kubectl(&["delete", kinds, "-l", &selector, "--ignore-not-found"])
        .await?;
    Ok(())
}

/// Builds the Strata image from this workspace's debug binaries and imports it into the node.
async fn build_and_import_image(cluster: &Cluster, work: &Path) -> Result<()> {
    let bins = tokio::task::spawn_blocking(|| {
        workspace_binaries(&[
            "strata-operator",
            "strata-agent",
            "strata-csi",
            "strata-holder",
        ])
    })
    .await??;
    let tar = work.join("strata.tar");
    let output = tokio::process::Command::new("bash")
        .arg(repo_root().join("scripts/image.sh"))
        .arg("strata")
        .arg(&tar)
        .env("STRATA_IMAGE_BIN_DIR", &bins)
        .output()
        .await
        .context("running scripts/image.sh")?;
    ensure!(
        output.status.success(),
        "scripts/image.sh strata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    cluster.import_image(&tar).await?;
    Ok(())
}

#[tokio::test]
async fn chart_runs_on_a_real_node_and_pods_mount_datasets() -> Result<()> {
    let started = Instant::now();
    let step = |n: u32, what: &str| {
        eprintln!("real node step {n} ({:.0?}): {what}", started.elapsed());
    };
    let cluster = Cluster::with_node().await?;
    let client = cluster.client().await?;
    let node = cluster.path("NODE_NAME")?.to_string();
    let kubelet_dir = cluster.path("KUBELET_DIR")?.to_string();
    let work = tempfile::tempdir()?;
    let cache_dir = cluster.state_dir().join("node-cache");

    // 1. The image, under the chart's default name.
    build_and_import_image(cluster, work.path()).await?;
    step(
        1,
        "Strata image built and imported into the node's containerd",
    );

    // 2. helm install; the operator's pod and the node DaemonSet's pod become Ready.
    uninstall_earlier_release(cluster).await?;
    let system = TestNamespace::create(cluster, "strata-system").await?;
    let chart = repo_root().join("charts/strata").display().to_string();
    let mut values = vec![
        "image.pullPolicy=Never".to_string(),
        format!("node.kubeletDir={kubelet_dir}"),
        "operator.replicas=1".into(),
        // No kube-proxy on this node: only the host network reaches the API server.
        "operator.hostNetwork=true".into(),
        format!("metrics.port={METRICS_PORT}"),
        format!("node.agentPort={AGENT_PORT}"),
        format!("node.mountsDir={MOUNTS_DIR}"),
        format!("node.runDir={RUN_DIR}"),
        format!("node.cache.disk.path={}", cache_dir.display()),
        "node.cache.disk.size=1Gi".into(),
        "node.cache.memory.size=128Mi".into(),
    ];
    let mut install = vec!["install", RELEASE, chart.as_str(), "-n", system.name()];
    for value in &values {
        install.extend(["--set", value.as_str()]);
    }
    cluster.helm(&install).await?;
    let deployments = system.api::<Deployment>();
    let daemon_sets = system.api::<DaemonSet>();
    let ready = wait_until("the operator's pod to be Ready", WAIT, || async {
        let list = deployments.list(&ListParams::default()).await?;
        Ok::<_, kube::Error>(
            list.items
                .into_iter()
                .find(|d| d.status.as_ref().and_then(|s| s.ready_replicas) == Some(1)),
        )
    })
    .await;
    let operator = match ready {
        Ok(deployment) => deployment.metadata.name.unwrap_or_default(),
        Err(e) => bail!("{e}{}", diagnose(cluster, system.name()).await),
    };
    for name in ["strata-holder", "strata-node"] {
        let ready = wait_until(
            &format!("the {name} DaemonSet's pod to be Ready"),
            WAIT,
            || async {
                let ds = daemon_sets.get_opt(name).await?;
                let status = ds.and_then(|d| d.status).unwrap_or_default();
                Ok::<_, kube::Error>(
                    (status.desired_number_scheduled == 1 && status.number_ready == 1)
                        .then_some(()),
                )
            },
        )
        .await;
        if let Err(e) = ready {
            bail!("{e}{}", diagnose(cluster, system.name()).await);
        }
    }
    let csi_nodes: Api<CSINode> = Api::all(client.clone());
    let registered = wait_until("the CSINode to list csi.strata.dev", WAIT, || async {
        let drivers = csi_nodes
            .get_opt(&node)
            .await?
            .map(|n| n.spec.drivers)
            .unwrap_or_default();
        Ok::<_, kube::Error>(drivers.iter().any(|d| d.name == DRIVER).then_some(()))
    })
    .await;
    if let Err(e) = registered {
        bail!("{e}{}", diagnose(cluster, system.name()).await);
    }
    step(
        2,
        &format!(
            "helm install: operator {operator} Ready, strata-holder and strata-node pods Ready, CSINode lists {DRIVER}"
        ),
    );

    // 3. A Dataset on S3 with a CachePolicy; its preload and pin Jobs run as pods.
    let s3 = MotoS3::start(&work.path().join("moto.log"))?;
    let sums = upload_data(&s3)?;
    let tenant = TestNamespace::create(cluster, "tenant").await?;
    cluster
        .apply_in(tenant.name(), &tenant_manifest(&s3.endpoint()))
        .await?;
    let phase = wait_until("the Dataset to be Ready", WAIT, || async {
        let status = dataset_status(cluster, tenant.name(), DATASET).await?;
        Ok::<_, strata_e2e::Error>((status["phase"] == "Ready").then_some(()))
    })
    .await;
    if let Err(e) = phase {
        let status = dataset_status(cluster, tenant.name(), DATASET).await?;
        bail!(
            "{e}; status {status}{}",
            diagnose(cluster, system.name()).await
        );
    }
    let jobs = tenant.api::<Job>();
    let preload = job_completed(cluster, &jobs, "preload").await?;
    let table = wait_until("kubectl get datasets to show 100%", WAIT, || async {
        let status = dataset_status(cluster, tenant.name(), DATASET).await?;
        let table = cluster
            .kubectl(&["-n", tenant.name(), "get", "datasets"])
            .await?;
        Ok::<_, strata_e2e::Error>((status["cachedPercent"] == 100).then_some(table))
    })
    .await?;
    eprintln!("{table}");
    let pin = job_completed(cluster, &jobs, "pin").await?;
    step(
        3,
        &format!(
            "Dataset Ready; preload Job {preload} ran to completion, 100% cached; pin Job {pin} ran"
        ),
    );

    // 4. A pod through the PVC and one through an inline volume with a subPath check every
    // file; a write fails with EROFS.
    let (all, all_count) = checksum_list(&sums, "");
    let (train, train_count) = checksum_list(&sums, "train/");
    let config_map = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "sums"},
        "data": {"all": all, "train": train},
    });
    cluster
        .apply_in(tenant.name(), &config_map.to_string())
        .await?;
    let pvc_volume =
        format!("      persistentVolumeClaim: {{claimName: {DATASET}, readOnly: true}}");
    let inline_volume = format!(
        "      csi:\n        driver: {DRIVER}\n        volumeAttributes: {{dataset: {DATASET}, subPath: /train}}"
    );
    let readers = [
        (
            "reader-pvc",
            reader_script("all", all_count, false),
            pvc_volume.clone(),
        ),
        (
            "reader-inline",
            reader_script("train", train_count, true),
            inline_volume,
        ),
    ];
    for (name, script, volume) in &readers {
        cluster
            .apply_in(tenant.name(), &reader_pod(name, &node, script, volume))
            .await?;
    }
    let pods = tenant.api::<Pod>();
    for (name, _, _) in &readers {
        let log = pod_checked(cluster, &pods, name).await?;
        eprintln!("pod {name}:\n{log}");
    }
    let inline_log = cluster
        .kubectl(&["-n", tenant.name(), "logs", "reader-inline"])
        .await?;
    ensure!(
        inline_log.contains("Read-only file system"),
        "the write did not fail with EROFS:\n{inline_log}"
    );
    step(
        4,
        "PVC pod and inline subPath pod: every checksum matches the source; a write gets EROFS",
    );

    // 4b. A writable Dataset: a pod writes, renames, appends and deletes through its volume;
    // the bucket gets exactly what the pod closed, whole.
    cluster
        .apply_in(tenant.name(), &writable_manifest(&s3.endpoint()))
        .await?;
    wait_until("the writable Dataset to be Ready", WAIT, || async {
        let status = dataset_status(cluster, tenant.name(), RESULTS).await?;
        Ok::<_, strata_e2e::Error>((status["phase"] == "Ready").then_some(()))
    })
    .await?;
    let writer_volume = format!(
        "      csi:\n        driver: {DRIVER}\n        volumeAttributes: {{dataset: {RESULTS}}}"
    );
    cluster
        .apply_in(
            tenant.name(),
            &reader_pod("writer", &node, WRITER_SCRIPT, &writer_volume),
        )
        .await?;
    let log = pod_checked(cluster, &pods, "writer").await?;
    let written_sum = log
        .lines()
        .find_map(|l| l.strip_suffix("  result.bin"))
        .with_context(|| format!("the writer printed no checksum:\n{log}"))?
        .to_string();
    let at_source = wait_until("the pod's files at the source", WAIT, || async {
        let result = s3.get_object(BUCKET, "results/out/result.bin").await?;
        let note = s3.get_object(BUCKET, "results/out/note.txt").await?;
        Ok::<_, strata_e2e::Error>(match (result, note) {
            (Some(r), Some(n)) => Some((r, n)),
            _ => None,
        })
    })
    .await;
    let (result, note) = match at_source {
        Ok(found) => found,
        Err(e) => bail!("{e}{}", diagnose(cluster, system.name()).await),
    };
    ensure!(
        sha256_hex(&result) == written_sum,
        "result.bin at the source differs from what the pod wrote ({} bytes)",
        result.len()
    );
    ensure!(
        note == b"hello\nappended\n",
        "note.txt at the source: {note:?}"
    );
    for gone in ["results/out/tmp.bin", "results/out/scratch"] {
        ensure!(
            s3.get_object(BUCKET, gone).await?.is_none(),
            "{gone} is at the source; the pod renamed or deleted it"
        );
    }
    pods.delete("writer", &DeleteParams::default()).await?;
    wait_until("the writer pod to go", WAIT, || async {
        Ok::<_, kube::Error>(pods.get_opt("writer").await?.is_none().then_some(()))
    })
    .await?;
    cluster
        .kubectl(&[
            "-n",
            tenant.name(),
            "delete",
            "dataset",
            RESULTS,
            "--wait=true",
        ])
        .await?;
    step(
        4,
        "writable Dataset: what a pod wrote, renamed and appended is at the source whole; what it deleted is not",
    );

    // 5. Deleting the pods unpublishes the volumes and the agent unmounts the dataset.
    let dataset_mount = format!("{MOUNTS_DIR}/{}/{DATASET}", tenant.name());
    let published = csi_volume_mounts(&kubelet_dir)?;
    ensure!(
        published.len() == readers.len() && !mounts_containing(&dataset_mount)?.is_empty(),
        "while the readers run, want {} CSI volume mounts and the dataset's FUSE mount at \
         {dataset_mount}; found {published:?} and {:?}",
        readers.len(),
        mounts_containing(&dataset_mount)?
    );
    for (name, _, _) in &readers {
        pods.delete(name, &DeleteParams::default()).await?;
    }
    let left = wait_until("the pods' Strata mounts to go", WAIT, || async {
        let mut gone = true;
        for (name, _, _) in &readers {
            gone &= pods.get_opt(name).await?.is_none();
        }
        let mut left = mounts_containing(&dataset_mount)?;
        left.extend(csi_volume_mounts(&kubelet_dir)?);
        Ok::<_, anyhow::Error>((gone && left.is_empty()).then_some(()))
    })
    .await;
    if let Err(e) = left {
        let mut left = mounts_containing(&dataset_mount)?;
        left.extend(csi_volume_mounts(&kubelet_dir)?);
        bail!("{e}; mounts left: {left:?}");
    }
    step(
        5,
        "pods deleted: no CSI volume or dataset FUSE mount left on the node",
    );

    // 6. helm upgrade with a changed value rolls the node DaemonSet, while a pod checks
    // every file of the dataset over and over: its mount is held by the strata-holder pod,
    // which the upgrade does not restart, and the new agent takes it over.
    cluster
        .apply_in(
            tenant.name(),
            &reader_pod(
                ROLL_READER,
                &node,
                &looping_reader_script("all"),
                &pvc_volume,
            ),
        )
        .await?;
    let passes_before = wait_until("the looping reader to pass twice", WAIT, || async {
        let log = pod_log(cluster, tenant.name(), ROLL_READER).await?;
        Ok::<_, anyhow::Error>((passes(&log) >= 2).then_some(passes(&log)))
    })
    .await?;
    let holder_selector = ListParams::default().labels("app.kubernetes.io/name=strata-holder");
    let pod_selector = ListParams::default().labels("app.kubernetes.io/name=strata-node");
    let system_pods = system.api::<Pod>();
    let holder_uids = |list: kube::core::ObjectList<Pod>| -> Vec<String> {
        list.items
            .into_iter()
            .filter_map(|p| p.metadata.uid)
            .collect()
    };
    let holders_before = holder_uids(system_pods.list(&holder_selector).await?);
    let before: Vec<String> = system_pods
        .list(&pod_selector)
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    values.retain(|v| !v.starts_with("node.cache.memory.size="));
    values.push("node.cache.memory.size=96Mi".into());
    let mut upgrade = vec!["upgrade", RELEASE, chart.as_str(), "-n", system.name()];
    for value in &values {
        upgrade.extend(["--set", value.as_str()]);
    }
    cluster.helm(&upgrade).await?;
    let rolled = wait_until(
        "the node DaemonSet to roll to --memory 96Mi",
        WAIT,
        || async {
            let list = system_pods.list(&pod_selector).await?;
            let rolled = list.items.iter().find(|pod| {
                let name = pod.metadata.name.clone().unwrap_or_default();
                let spec = pod.spec.clone().unwrap_or_default();
                let new_flag = spec.containers.iter().any(|c| {
                    c.args
                        .as_ref()
                        .is_some_and(|a| a.windows(2).any(|w| w[0] == "--memory" && w[1] == "96Mi"))
                });
                let ready = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                new_flag && ready && !before.contains(&name)
            });
            let rolled = rolled.and_then(|p| p.metadata.name.clone());
            Ok::<_, kube::Error>(rolled)
        },
    )
    .await;
    let new_pod = match rolled {
        Ok(name) => name,
        Err(e) => bail!("{e}{}", diagnose(cluster, system.name()).await),
    };
    let rolled_at = passes(&pod_log(cluster, tenant.name(), ROLL_READER).await?);
    let log = wait_until(
        "the looping reader to pass 3 more times after the roll",
        WAIT,
        || async {
            let log = pod_log(cluster, tenant.name(), ROLL_READER).await?;
            Ok::<_, anyhow::Error>((passes(&log) >= rolled_at + 3).then_some(log))
        },
    )
    .await?;
    ensure!(
        !log.contains("FAILED"),
        "the reader failed across the roll:\n{log}"
    );
    ensure!(
        holder_uids(system_pods.list(&holder_selector).await?) == holders_before,
        "the upgrade restarted the mount holder"
    );
    // The new agent served the reader by taking the mount over, not by a new mount.
    let agent_log = cluster
        .kubectl(&["-n", system.name(), "logs", &new_pod, "-c", "agent"])
        .await?;
    ensure!(
        agent_log.contains("took the mount over") && agent_log.contains("volume taken over"),
        "the new agent did not take the mount over:\n{agent_log}"
    );
    pods.delete(ROLL_READER, &DeleteParams::default()).await?;
    let gone = wait_until("the looping reader's mounts to go", WAIT, || async {
        let mut left = mounts_containing(&dataset_mount)?;
        left.extend(csi_volume_mounts(&kubelet_dir)?);
        Ok::<_, anyhow::Error>(
            (pods.get_opt(ROLL_READER).await?.is_none() && left.is_empty()).then_some(()),
        )
    })
    .await;
    if let Err(e) = gone {
        bail!("{e}; mounts left: {:?}", mounts_containing(&dataset_mount)?);
    }
    step(
        6,
        &format!(
            "helm upgrade: the node DaemonSet rolled to the new flag, its new pod Ready; a pod \
             checked every file {} times across the roll without an error, the holder pod kept",
            passes(&log) - passes_before + 2
        ),
    );

    // 7. A Migration of the dataset's source to another prefix, switched when done: its Job's
    // pod runs on the kubelet and asks its node's agent (TokenReview of its projected
    // token); every object reaches the target whole, and a pod reads every file again
    // through the source now served from there.
    let migration = serde_json::json!({
        "apiVersion": "strata.dev/v1alpha1", "kind": "Migration",
        "metadata": {"name": "corpus-move"},
        "spec": {
            "dataset": DATASET, "source": "corpus", "switchSource": true,
            "target": {
                "uri": format!("s3://{BUCKET}/migrated/"), "endpoint": s3.endpoint(),
                "region": "us-east-1", "credentialsSecretRef": {"name": "s3-creds"},
                "options": {"allow_http": "true"},
            },
        },
    });
    cluster
        .apply_in(tenant.name(), &migration.to_string())
        .await?;
    let migrate_job = job_completed(cluster, &jobs, "migrate").await?;
    let switched = wait_until("the Migration to be Switched", WAIT, || async {
        let out = cluster
            .kubectl(&[
                "-n",
                tenant.name(),
                "get",
                "migration",
                "corpus-move",
                "-o",
                "json",
            ])
            .await?;
        let m: serde_json::Value = serde_json::from_str(&out)?;
        Ok::<_, anyhow::Error>((m["status"]["phase"] == "Switched").then_some(m))
    })
    .await?;
    ensure!(
        switched["status"]["percent"] == 100,
        "the Migration's status: {}",
        switched["status"]
    );
    for (path, sum) in &sums {
        let copied = s3
            .get_object(BUCKET, &format!("migrated/{path}"))
            .await?
            .ok_or_else(|| anyhow::anyhow!("{path} is not at the target"))?;
        ensure!(&sha256_hex(&copied) == sum, "{path} differs at the target");
    }
    let table = cluster
        .kubectl(&["-n", tenant.name(), "get", "migrations"])
        .await?;
    eprintln!("{table}");
    let served = wait_until(
        "the agents to serve the source from the target",
        WAIT,
        || async {
            let status = dataset_status(cluster, tenant.name(), DATASET).await?;
            let reachable = status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "SourcesReachable" && c["status"] == "True");
            let secret = system.api::<Secret>().get("strata-datasets").await?;
            let key = format!("{}.{DATASET}.yaml", tenant.name());
            let yaml = secret
                .data
                .unwrap_or_default()
                .get(&key)
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                .unwrap_or_default();
            Ok::<_, anyhow::Error>(
                (reachable && yaml.contains(&format!("s3://{BUCKET}/migrated/"))).then_some(()),
            )
        },
    )
    .await;
    if let Err(e) = served {
        bail!("{e}{}", diagnose(cluster, system.name()).await);
    }
    cluster
        .apply_in(
            tenant.name(),
            &reader_pod(
                "reader-migrated",
                &node,
                &reader_script("all", all_count, false),
                &pvc_volume,
            ),
        )
        .await?;
    let log = pod_checked(cluster, &pods, "reader-migrated").await?;
    eprintln!("pod reader-migrated:\n{log}");
    pods.delete("reader-migrated", &DeleteParams::default())
        .await?;
    step(
        7,
        &format!(
            "Migration corpus-move: its Job {migrate_job} ran on the node, every object at the \
             target with its bytes, Switched; a pod read every file through the switched source"
        ),
    );

    // 8. Delete the Dataset (its finalizer drops the caches), then uninstall.
    let cached = files_containing(&cache_dir, tenant.name());
    ensure!(
        !cached.is_empty(),
        "no file of {}/{DATASET} under the disk tier {} to check the deletion against",
        tenant.name(),
        cache_dir.display()
    );
    cluster
        .kubectl(&[
            "-n",
            tenant.name(),
            "delete",
            "dataset",
            DATASET,
            "--wait=true",
            "--timeout=180s",
        ])
        .await?;
    let cached = wait_until("the dataset's cached files to go", WAIT, || async {
        let left = files_containing(&cache_dir, tenant.name());
        Ok::<_, std::io::Error>(left.is_empty().then_some(()))
    })
    .await;
    if let Err(e) = cached {
        bail!("{e}: {:?}", files_containing(&cache_dir, tenant.name()));
    }
    cluster
        .helm(&["uninstall", RELEASE, "-n", system.name(), "--wait"])
        .await?;
    let namespace = system.name();
    let leftovers = wait_until("nothing of the release to be left", WAIT, || async {
        let left = release_leftovers(cluster, namespace, tenant.name(), &kubelet_dir).await?;
        Ok::<_, anyhow::Error>(left.is_empty().then_some(()))
    })
    .await;
    if let Err(e) = leftovers {
        let left = release_leftovers(cluster, namespace, tenant.name(), &kubelet_dir).await?;
        bail!("{e}; left: {left:#?}{}", diagnose(cluster, namespace).await);
    }
    // What docs/install.md says stays, and removes by hand: the CRDs (with the StrataNode
    // objects the agents reported), the CSIDriver; and the disk tier's directory.
    let kept = [
        "csidriver/csi.strata.dev",
        "crd/datasets.strata.dev",
        "crd/cachepolicies.strata.dev",
        "crd/stratanodes.strata.dev",
        "crd/migrations.strata.dev",
    ];
    for object in kept {
        cluster.kubectl(&["get", object, "-o", "name"]).await?;
    }
    ensure!(
        cache_dir.is_dir(),
        "the disk tier's directory {} is gone",
        cache_dir.display()
    );
    cluster.kubectl(&["delete", "csidriver", DRIVER]).await?;
    cluster
        .kubectl(&[
            "delete",
            "crd",
            "datasets.strata.dev",
            "cachepolicies.strata.dev",
            "stratanodes.strata.dev",
            "migrations.strata.dev",
        ])
        .await?;
    step(
        8,
        "Dataset deleted, its cache gone; helm uninstall left no pod, workload, RBAC object, mount or plugin socket; the CRDs and CSIDriver removed as docs/install.md says",
    );
    drop(s3);
    tenant.cleanup().await?;
    system.cleanup().await?;
    Ok(())
}
