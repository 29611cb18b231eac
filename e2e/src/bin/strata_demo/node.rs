//! The demo on the cluster's real node (`strata-demo node-up`, what `make demo` runs): the chart
//! installed with the image `scripts/demo.sh` built and imported into the node's containerd, the
//! operator and the node DaemonSet (agent + CSI plugin) as pods, the operator's preload and pin
//! Jobs' pods run by the kubelet, and busybox pods reading the datasets through their PVCs. The
//! agent's own counts (its API on the host socket the DaemonSet shares) tell how many blocks
//! each read fetched from S3. `scripts/demo.sh down` uninstalls and stops the cluster.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::storage::v1::CSINode;
use kube::Api;
use kube::api::ListParams;
use strata_e2e::{Cluster, dataset_status, wait_for_dataset_job, wait_for_dataset_pv, wait_until};
use strata_wire::api::client::AgentClient;

use crate::{
    DATASET, FILL_FILE, PINNED_DATASET, PINNED_DIR, PINNED_POLICY, PINNED_QUOTA_MIB, POLICY,
    PinReads, RELEASE, SYSTEM_NS, TENANT_NS, UNPINNED_DIR, Usage, WAIT, drop_page_cache, manifests,
    pinned_manifests,
};

/// The agent API's unix socket on the host: the DaemonSet mounts the host's `/run/strata`.
const AGENT_SOCKET: &str = "/run/strata/agent.sock";
const CSI_DRIVER: &str = "csi.strata.dev";
const OPERATOR_PODS: &str = "app.kubernetes.io/name=strata-operator";
const NODE_PODS: &str = "app.kubernetes.io/name=strata-node";
/// `cluster.sh` imports it into the node (nothing can be pulled there).
const BUSYBOX: &str = "strata.local/busybox:1.35";
/// Reads the first dataset once, then keeps its volume for `kubectl exec`.
const READER_POD: &str = "reader";
/// Keeps the pinned dataset's volume; the pin step reads through it with `kubectl exec`.
const TRAINER_POD: &str = "trainer";
/// Where both pods see their dataset.
const MOUNT: &str = "/data";
/// The reader's line once it has read everything.
const READER_DONE: &str = "reader: done";
/// The Job controller retries a failed pod after 10, 20 and 40 s (backoffLimit 3).
const JOB_WAIT: Duration = Duration::from_secs(240);
/// Container states a pod does not leave by itself.
const STUCK: [&str; 4] = [
    "ErrImageNeverPull",
    "CrashLoopBackOff",
    "CreateContainerError",
    "CreateContainerConfigError",
];

pub struct NodeDemo {
    pub state: PathBuf,
    pub chart: PathBuf,
    pub kubelet_dir: PathBuf,
    pub disk_cache: PathBuf,
    pub source_sums: PathBuf,
    pub s3_endpoint: String,
    pub s3_uri: String,
    /// The inode of `AGENT_SOCKET` once this cluster's agent is Ready: the path is fixed, so
    /// an agent of another local cluster started later replaces it (and the reads would go
    /// to that agent).
    pub agent_socket_inode: OnceLock<u64>,
}

/// What a Job's pods did, for the summary.
struct JobRun {
    name: String,
    pod: String,
    failed_attempts: usize,
}

impl std::fmt::Display for JobRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job {}: pod {} Succeeded", self.name, self.pod)?;
        if self.failed_attempts > 0 {
            write!(
                f,
                " after {} failed attempt(s) (the agent did not have the dataset yet)",
                self.failed_attempts
            )?;
        }
        Ok(())
    }
}

impl NodeDemo {
    fn summary_file(&self) -> PathBuf {
        self.state.join("summary.txt")
    }

    /// The agent API on the host socket, after checking it is still this cluster's agent's.
    fn agent(&self) -> Result<AgentClient> {
        let inode = std::fs::metadata(AGENT_SOCKET)
            .with_context(|| format!("the agent's socket {AGENT_SOCKET}"))?
            .ino();
        let ours = *self.agent_socket_inode.get_or_init(|| inode);
        ensure!(
            inode == ours,
            "another Strata agent replaced {AGENT_SOCKET} during the demo (a node pod of another \
             local cluster: the DaemonSet's /run/strata is a fixed host path, so two Strata \
             installations cannot share a machine); stop that one, then 'make demo-down; make \
             demo', or run STRATA_DEMO_NODE=0 make demo"
        );
        Ok(AgentClient::unix(AGENT_SOCKET))
    }

    pub async fn up(&self) -> Result<()> {
        let cluster = Cluster::shared().await?;
        let client = cluster.client().await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), TENANT_NS);
        if let Ok(summary) = std::fs::read_to_string(self.summary_file()) {
            let running = |pod: Option<Pod>| {
                pod.and_then(|p| p.status?.phase)
                    .is_some_and(|phase| phase == "Running")
            };
            if running(pods.get_opt(READER_POD).await?) && running(pods.get_opt(TRAINER_POD).await?)
            {
                println!("demo: already up; 'make demo-down' stops it. From the first run:\n");
                print!("{summary}");
                let now = cluster
                    .kubectl(&["-n", TENANT_NS, "get", "datasets"])
                    .await?;
                println!("\nNow:\n$ kubectl get datasets -n {TENANT_NS}\n{now}");
                return Ok(());
            }
        }
        let started = Instant::now();
        self.install(cluster).await?;
        let node_pod = self.wait_for_node(cluster, &client).await?;
        let node_name = node_pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .context("the node pod has no node")?;
        let node_pod = node_pod.metadata.name.unwrap_or_default();

        // The Dataset, its preload Job's pods, kubectl get datasets at 100%.
        println!(
            "demo: Dataset {TENANT_NS}/{DATASET} ({} on {}) under CachePolicy {POLICY}: quota \
             512Mi, preload /**",
            self.s3_uri, self.s3_endpoint
        );
        cluster
            .apply(&manifests(&self.s3_endpoint, &self.s3_uri))
            .await?;
        self.hand_to_agent(&client, &node_pod, DATASET).await?;
        self.wait_ready(cluster, &client, DATASET).await?;
        let preload = self
            .follow_job(cluster, &client, "preload", DATASET)
            .await?;
        let table = wait_until("kubectl get datasets to show 100%", WAIT, || async {
            let status = dataset_status(cluster, TENANT_NS, DATASET).await?;
            let table = cluster
                .kubectl(&["-n", TENANT_NS, "get", "datasets"])
                .await?;
            Ok::<_, anyhow::Error>((status["cachedPercent"] == 100).then_some(table))
        })
        .await?;
        println!("$ kubectl get datasets -n {TENANT_NS}\n{table}");

        let reader = self.read_with_pod(cluster, &client).await?;
        let pins = self.pin_step(cluster, &client, &node_pod).await?;

        let system_pods = cluster
            .kubectl(&["-n", SYSTEM_NS, "get", "pods", "-o", "wide"])
            .await?;
        let summary = format!(
            "Strata runs on node {node_name} (the demo cluster's kubelet and containerd):\n\
             $ kubectl -n {SYSTEM_NS} get pods -o wide\n{system_pods}\n\
             preload {preload}\n\
             $ kubectl get datasets -n {TENANT_NS}\n{table}\n\
             {reader}\n\
             {pins}\n\
             Explore the cluster:\n  export KUBECONFIG={kubeconfig} PATH={bin}:$PATH\n  \
             kubectl get datasets,cachepolicies,pv,pvc,pods -A\n  \
             kubectl -n {SYSTEM_NS} logs ds/strata-node -c agent\n\
             Logs: {logs} (moto, cluster start-up); kubelet and containerd: {cluster_logs}\n\
             Stop it all: make demo-down\n",
            kubeconfig = cluster.kubeconfig().display(),
            bin = cluster.bin_dir().display(),
            logs = self.state.join("logs").display(),
            cluster_logs = cluster.state_dir().join("logs").display(),
        );
        std::fs::write(self.summary_file(), &summary)?;
        println!("demo: up in {:.1}s\n", started.elapsed().as_secs_f64());
        print!("{summary}");
        Ok(())
    }

    /// `helm upgrade --install` of the chart with the imported image.
    async fn install(&self, cluster: &Cluster) -> Result<()> {
        cluster
            .apply(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {SYSTEM_NS}\n---\n\
                 apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {TENANT_NS}\n"
            ))
            .await?;
        // On the host network the operator's metrics port is the host's: one nobody uses.
        let metrics_port = self.remembered_port("operator-metrics-port")?;
        let chart = self.chart.to_string_lossy();
        let values = [
            // The image scripts/demo.sh imported into the node; nothing can be pulled there.
            "image.pullPolicy=Never".to_string(),
            format!("node.kubeletDir={}", self.kubelet_dir.display()),
            "operator.replicas=1".into(),
            // No kube-proxy: only on the host network does the operator reach the API server
            // through the kubernetes Service.
            "operator.hostNetwork=true".into(),
            format!("operator.watchNamespace={TENANT_NS}"),
            format!("metrics.port={metrics_port}"),
            format!("node.cache.disk.path={}", self.disk_cache.display()),
            "node.cache.memory.size=256Mi".into(),
            "node.cache.disk.size=1Gi".into(),
        ];
        let mut args = vec!["upgrade", "--install", RELEASE, &chart, "-n", SYSTEM_NS];
        for value in &values {
            args.extend(["--set", value]);
        }
        cluster
            .helm(&args)
            .await
            .context("helm upgrade --install of the chart")?;
        println!("demo: helm {}", args.join(" "));
        Ok(())
    }

    /// Waits for the operator's pod, the node DaemonSet's pod and the CSI plugin's registration
    /// with the kubelet; returns the node pod.
    async fn wait_for_node(&self, cluster: &Cluster, client: &kube::Client) -> Result<Pod> {
        let started = Instant::now();
        let operator = self
            .wait_pod_ready(
                cluster,
                client,
                SYSTEM_NS,
                OPERATOR_PODS,
                "the operator pod",
            )
            .await?;
        println!(
            "demo: operator pod {} Ready ({:.1}s)",
            operator.metadata.name.unwrap_or_default(),
            started.elapsed().as_secs_f64()
        );
        let node_pod = self
            .wait_pod_ready(
                cluster,
                client,
                SYSTEM_NS,
                NODE_PODS,
                "the node DaemonSet's pod (agent + CSI plugin)",
            )
            .await?;
        let node = node_pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        println!(
            "demo: node DaemonSet pod {} Ready on node {node}: agent and CSI plugin ({:.1}s)",
            node_pod.metadata.name.clone().unwrap_or_default(),
            started.elapsed().as_secs_f64()
        );
        self.agent()?;
        let csi_nodes: Api<CSINode> = Api::all(client.clone());
        wait_until(
            &format!("CSINode {node} to list {CSI_DRIVER}"),
            WAIT,
            || async {
                let registered = csi_nodes
                    .get_opt(&node)
                    .await?
                    .is_some_and(|n| n.spec.drivers.iter().any(|d| d.name == CSI_DRIVER));
                Ok::<_, kube::Error>(registered.then_some(()))
            },
        )
        .await
        .with_context(|| {
            format!(
                "the CSI plugin did not register with the kubelet; see kubectl -n {SYSTEM_NS} \
                 logs ds/strata-node -c csi and {}",
                kubelet_log(cluster)
            )
        })?;
        println!(
            "demo: CSINode {node} lists {CSI_DRIVER} (the plugin registered itself with the \
             kubelet) ({:.1}s)",
            started.elapsed().as_secs_f64()
        );
        Ok(node_pod)
    }

    /// The first pod matching `selector` once it is Ready; fails at once when a container is
    /// stuck (say, its image is not on the node).
    async fn wait_pod_ready(
        &self,
        cluster: &Cluster,
        client: &kube::Client,
        namespace: &str,
        selector: &str,
        what: &str,
    ) -> Result<Pod> {
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let deadline = Instant::now() + WAIT;
        loop {
            let list = pods.list(&ListParams::default().labels(selector)).await?;
            if let Some(pod) = list.items.iter().find(|p| is_ready(p)) {
                return Ok(pod.clone());
            }
            let stuck = list.items.iter().find_map(stuck_reason);
            if stuck.is_some() || Instant::now() > deadline {
                let describe = cluster
                    .kubectl(&["-n", namespace, "describe", "pods", "-l", selector])
                    .await
                    .unwrap_or_default();
                bail!(
                    "{what} is not Ready ({}); kubectl -n {namespace} describe pods -l \
                     {selector} ends with:\n{}\nthe kubelet's log: {}",
                    stuck.unwrap_or_else(|| format!("waited {WAIT:?}")),
                    last_lines(&describe, 25),
                    kubelet_log(cluster)
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits until the node's agent has `dataset`. The operator puts each Dataset into the
    /// Secret the node pods mount and annotates the pods, so the kubelet refreshes the Secret
    /// volume now rather than at its next sync of the pod (up to about a minute); the agent
    /// rescans the directory every 10 s.
    async fn hand_to_agent(
        &self,
        client: &kube::Client,
        node_pod: &str,
        dataset: &str,
    ) -> Result<()> {
        let started = Instant::now();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NS);
        let key = format!("{TENANT_NS}.{dataset}.yaml");
        wait_until(
            &format!("the operator to add {key} to Secret strata-datasets"),
            WAIT,
            || async {
                let secret = secrets.get_opt("strata-datasets").await?;
                let has = secret
                    .and_then(|s| s.data)
                    .is_some_and(|data| data.contains_key(&key));
                Ok::<_, kube::Error>(has.then_some(()))
            },
        )
        .await?;
        // Another cluster's agent taking the socket is final: no point in waiting on.
        wait_until(
            &format!("the agent to configure {TENANT_NS}/{dataset}"),
            WAIT,
            || async {
                Ok::<_, anyhow::Error>(match self.agent() {
                    Err(replaced) => Some(Err(replaced)),
                    Ok(agent) => agent.usage(TENANT_NS, dataset).await.ok().map(Ok),
                })
            },
        )
        .await??;
        println!(
            "demo: the agent has {TENANT_NS}/{dataset} {:.1}s after the operator wrote it into \
             Secret {SYSTEM_NS}/strata-datasets (the operator annotated pod {node_pod} so the \
             kubelet refreshes its Secret volume now rather than at its next sync, up to a \
             minute; the agent rescans it every 10 s)",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Waits for `dataset` to be Ready with its PV.
    async fn wait_ready(
        &self,
        cluster: &Cluster,
        client: &kube::Client,
        dataset: &str,
    ) -> Result<()> {
        wait_until(&format!("Dataset {dataset} Ready"), WAIT, || async {
            let status = dataset_status(cluster, TENANT_NS, dataset).await?;
            Ok::<_, anyhow::Error>((status["phase"] == "Ready").then_some(()))
        })
        .await
        .with_context(|| {
            format!("see kubectl -n {TENANT_NS} describe dataset {dataset} and the operator's log")
        })?;
        let pv = wait_for_dataset_pv(client, TENANT_NS, dataset, WAIT).await?;
        println!(
            "demo: Dataset {TENANT_NS}/{dataset} Ready, PV {} bound to PVC {TENANT_NS}/{dataset}",
            pv.metadata.name.unwrap_or_default()
        );
        Ok(())
    }

    /// Follows the operator's Job of `kind` (`preload`, `pin`) for `dataset`: each of its pods
    /// as it ends, then the log of the one that succeeded.
    async fn follow_job(
        &self,
        cluster: &Cluster,
        client: &kube::Client,
        kind: &str,
        dataset: &str,
    ) -> Result<JobRun> {
        let jobs: Api<Job> = Api::namespaced(client.clone(), TENANT_NS);
        let job = wait_for_dataset_job(&jobs, kind, dataset, WAIT).await?;
        let name = job.metadata.name.clone().unwrap_or_default();
        println!("demo: the operator's {kind} Job {name}; its pods on the kubelet:");
        let pods: Api<Pod> = Api::namespaced(client.clone(), TENANT_NS);
        let selector = format!("batch.kubernetes.io/job-name={name}");
        let deadline = Instant::now() + JOB_WAIT;
        let mut reported = Vec::<String>::new();
        loop {
            let mut list = pods
                .list(&ListParams::default().labels(&selector))
                .await?
                .items;
            list.sort_by_key(|p| p.metadata.creation_timestamp.clone());
            for pod in &list {
                let pod_name = pod.metadata.name.clone().unwrap_or_default();
                let phase = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default();
                if reported.contains(&pod_name) || !matches!(phase.as_str(), "Succeeded" | "Failed")
                {
                    continue;
                }
                let log = cluster
                    .kubectl(&["-n", TENANT_NS, "logs", &pod_name])
                    .await
                    .unwrap_or_else(|e| format!("(no log: {e})"));
                if phase == "Succeeded" {
                    println!("  pod {pod_name}: Succeeded; its log:");
                    for line in log.lines() {
                        println!("    {line}");
                    }
                    return Ok(JobRun {
                        name,
                        pod: pod_name,
                        failed_attempts: reported.len(),
                    });
                }
                println!(
                    "  pod {pod_name}: Failed: {}",
                    log.lines().last().unwrap_or("(empty log)")
                );
                reported.push(pod_name);
            }
            let job = jobs.get(&name).await?;
            let failed = job
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .any(|c| c.type_ == "Failed" && c.status == "True");
            if failed || Instant::now() > deadline {
                bail!(
                    "the {kind} Job {name} did not succeed ({}); see kubectl -n {TENANT_NS} \
                     describe job {name}, its pods' logs and {}",
                    if failed { "it failed" } else { "timed out" },
                    kubelet_log(cluster)
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Step 5: a busybox pod reads the whole dataset through its PVC after the preload; every
    /// checksum must equal the source's and the agent must have fetched nothing from S3.
    async fn read_with_pod(&self, cluster: &Cluster, client: &kube::Client) -> Result<String> {
        let misses = || async {
            let usage = self.agent()?.usage(TENANT_NS, DATASET).await?;
            Ok::<_, anyhow::Error>(Usage::from_json(&usage).misses)
        };
        let misses_before = misses().await?;
        drop_page_cache();
        let script = format!(
            "set -e; cd {MOUNT}; echo '$ ls -lR {MOUNT}'; ls -lR; \
             echo '$ cat {MOUNT}/labels/classes.txt'; cat labels/classes.txt; \
             echo '$ sha256sum (every file)'; find . -type f | sort | xargs sha256sum; \
             echo '{READER_DONE}'; exec sleep 86400"
        );
        println!(
            "demo: pod {TENANT_NS}/{READER_POD} ({BUSYBOX}) reads {TENANT_NS}/{DATASET} through \
             its PVC at {MOUNT}:"
        );
        cluster
            .apply(&pod_manifest(READER_POD, DATASET, &script))
            .await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), TENANT_NS);
        let log = wait_until(
            &format!("pod {READER_POD} to read the dataset"),
            WAIT,
            || async {
                let pod = pods.get(READER_POD).await?;
                let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
                if phase.as_deref() == Some("Failed") || stuck_reason(&pod).is_some() {
                    return Ok(Some(Err(anyhow::anyhow!(
                        "pod {READER_POD} failed ({}); see kubectl -n {TENANT_NS} describe pod \
                     {READER_POD}",
                        stuck_reason(&pod).unwrap_or_else(|| "phase Failed".into())
                    ))));
                }
                let log = cluster
                    .kubectl(&["-n", TENANT_NS, "logs", READER_POD])
                    .await
                    .unwrap_or_default();
                Ok::<_, anyhow::Error>(log.contains(READER_DONE).then_some(Ok(log)))
            },
        )
        .await
        .with_context(|| format!("the kubelet's log: {}", kubelet_log(cluster)))??;
        let fetched = misses().await? - misses_before;
        println!("$ kubectl -n {TENANT_NS} logs {READER_POD}");
        print!("{log}");
        let checked = self.check_sums(&log)?;
        ensure!(
            fetched == 0,
            "pod {READER_POD}'s read after the preload fetched {fetched} blocks from S3"
        );
        let pod = pods.get(READER_POD).await?;
        let uid = pod.metadata.uid.unwrap_or_default();
        let host_path = self.kubelet_dir.join(format!(
            "pods/{uid}/volumes/kubernetes.io~csi/strata-{TENANT_NS}-{DATASET}/mount"
        ));
        let on_host = if host_path.is_dir() {
            format!(
                "\n  (on the host, the kubelet's mount: {})",
                host_path.display()
            )
        } else {
            String::new()
        };
        let line = format!(
            "pod {TENANT_NS}/{READER_POD} read all {checked} files of {TENANT_NS}/{DATASET} \
             through its PVC: every sha256 equals the source's, 0 blocks fetched from S3 (the \
             preload had cached them)"
        );
        println!("demo: {line}");
        Ok(format!(
            "{line}\nThe dataset stays mounted in pod {TENANT_NS}/{READER_POD} at {MOUNT}:{on_host}\n  \
             Try: kubectl -n {TENANT_NS} exec {READER_POD} -- ls -lR {MOUNT}\n"
        ))
    }

    /// Compares the reader's `sha256sum` lines with the source's; returns how many matched.
    fn check_sums(&self, log: &str) -> Result<usize> {
        let parse = |text: &str| -> BTreeMap<String, String> {
            text.lines()
                .filter_map(|l| l.split_once("  ./"))
                .filter(|(hash, _)| hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(|(hash, path)| (path.to_string(), hash.to_string()))
                .collect()
        };
        let source = std::fs::read_to_string(&self.source_sums)
            .with_context(|| format!("reading {}", self.source_sums.display()))?;
        let (want, got) = (parse(&source), parse(log));
        ensure!(
            !want.is_empty(),
            "no checksums in {}",
            self.source_sums.display()
        );
        let wrong: Vec<&String> = want
            .iter()
            .filter(|(path, hash)| got.get(*path) != Some(hash))
            .map(|(path, _)| path)
            .collect();
        ensure!(
            wrong.is_empty() && got.len() == want.len(),
            "pod {READER_POD} read {} files, {} expected; missing or different: {wrong:?}",
            got.len(),
            want.len()
        );
        Ok(want.len())
    }

    /// Step 6: the pinned path surviving a cache fill, read by a pod through `kubectl exec`.
    async fn pin_step(
        &self,
        cluster: &Cluster,
        client: &kube::Client,
        node_pod: &str,
    ) -> Result<String> {
        println!(
            "demo: pinning: Dataset {TENANT_NS}/{PINNED_DATASET} (the same data) under CachePolicy \
             {PINNED_POLICY}: quota {PINNED_QUOTA_MIB}Mi, pin /{PINNED_DIR}/**"
        );
        cluster
            .apply(&pinned_manifests(&self.s3_endpoint, &self.s3_uri))
            .await?;
        self.hand_to_agent(client, node_pod, PINNED_DATASET).await?;
        self.wait_ready(cluster, client, PINNED_DATASET).await?;
        cluster
            .apply(&pod_manifest(
                TRAINER_POD,
                PINNED_DATASET,
                "exec sleep 86400",
            ))
            .await?;
        let trainer = self
            .wait_pod_ready(
                cluster,
                client,
                TENANT_NS,
                &format!("strata.dev/demo-pod={TRAINER_POD}"),
                "pod trainer",
            )
            .await?;
        println!(
            "demo: pod {TENANT_NS}/{} Running with {TENANT_NS}/{PINNED_DATASET} at {MOUNT}",
            trainer.metadata.name.unwrap_or_default()
        );
        let pin_job = self
            .follow_job(cluster, client, "pin", PINNED_DATASET)
            .await?;
        let usage = || async {
            let usage = self.agent()?.usage(TENANT_NS, PINNED_DATASET).await?;
            Ok::<_, anyhow::Error>(Usage::from_json(&usage))
        };
        let read = |path: &'static str| self.read_in_trainer(cluster, path);
        let (unpinned_files, _, _) = read(UNPINNED_DIR).await?;
        let before_fill = usage().await?;
        let (_, fill_bytes, fill_time) = read(FILL_FILE).await?;
        let filled = usage().await?;
        drop_page_cache();
        let (pinned_files, _, _) = read(PINNED_DIR).await?;
        let pinned_again = usage().await?;
        read(UNPINNED_DIR).await?;
        let unpinned_again = usage().await?;
        let reads = PinReads {
            unpinned_files,
            pinned_files,
            fill_bytes,
            fill_time,
            before_fill,
            filled,
            pinned_again,
            unpinned_again,
        };
        let how = format!("in pod {TENANT_NS}/{TRAINER_POD} (kubectl exec)");
        println!("{}", reads.progress(&how));
        reads.check(&format!(
            "see kubectl -n {SYSTEM_NS} logs ds/strata-node -c agent"
        ))?;
        Ok(format!(
            "pinned path surviving a cache fill (Dataset {TENANT_NS}/{PINNED_DATASET}, \
             CachePolicy {PINNED_POLICY}: quota {PINNED_QUOTA_MIB}Mi, pin /{PINNED_DIR}/**):\n  \
             pin {pin_job}\n{}",
            reads.summary(&how)
        ))
    }

    /// Reads every file under `path` of the trainer's volume inside the pod: (files, bytes,
    /// time, measured around `kubectl exec`).
    async fn read_in_trainer(
        &self,
        cluster: &Cluster,
        path: &str,
    ) -> Result<(usize, u64, Duration)> {
        let dir = format!("{MOUNT}/{path}");
        let script =
            format!("find {dir} -type f | wc -l; find {dir} -type f -exec cat {{}} + | wc -c");
        let started = Instant::now();
        let out = cluster
            .kubectl(&[
                "-n",
                TENANT_NS,
                "exec",
                TRAINER_POD,
                "--",
                "sh",
                "-c",
                &script,
            ])
            .await?;
        let elapsed = started.elapsed();
        let mut numbers = out.split_whitespace().map(str::parse::<u64>);
        match (numbers.next(), numbers.next()) {
            (Some(Ok(files)), Some(Ok(bytes))) => Ok((files as usize, bytes, elapsed)),
            _ => bail!("reading {dir} in pod {TRAINER_POD}: unexpected output {out:?}"),
        }
    }

    /// A port picked once and kept in the state dir, so a second `up` finds the same one.
    fn remembered_port(&self, name: &str) -> Result<u16> {
        let file = self.state.join(name);
        if let Some(port) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return Ok(port);
        }
        let port = TcpListener::bind(("0.0.0.0", 0))?.local_addr()?.port();
        std::fs::write(&file, port.to_string())?;
        Ok(port)
    }
}

/// A busybox pod with `dataset`'s PVC at `MOUNT`, running `script`.
fn pod_manifest(name: &str, dataset: &str, script: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": TENANT_NS,
            "labels": {"strata.dev/demo-pod": name},
        },
        "spec": {
            "restartPolicy": "Never",
            // sleep ignores SIGTERM: no reason to wait 30 s on delete.
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": name,
                "image": BUSYBOX,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
                "volumeMounts": [{"name": "data", "mountPath": MOUNT, "readOnly": true}],
            }],
            "volumes": [{
                "name": "data",
                "persistentVolumeClaim": {"claimName": dataset, "readOnly": true},
            }],
        },
    })
    .to_string()
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `container: reason: message` of a container in a state it will not leave by itself.
fn stuck_reason(pod: &Pod) -> Option<String> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses.iter().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        STUCK.contains(&reason).then(|| {
            format!(
                "container {}: {reason}: {}",
                c.name,
                waiting.message.as_deref().unwrap_or_default()
            )
        })
    })
}

fn kubelet_log(cluster: &Cluster) -> String {
    cluster
        .state_dir()
        .join("logs/kubelet.log")
        .display()
        .to_string()
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
