//! The demo without a node (`strata-demo local-up`, the fallback of `make demo`): the
//! control plane only, so the chart's workloads run as local background processes with the
//! flags of the chart's Deployment and of the operator's DaemonSet, two Secrets the DaemonSet
//! mounts are kept synced into the node's directories (`sync-secrets`, also in the
//! background), the Dataset's PersistentVolume is published through the CSI socket as kubelet
//! would, and the preload and pin Jobs' commands run by hand. `local-down` unpublishes the
//! volumes and stops, by pid, what `local-up` started.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use strata_csi::proto::NodeUnpublishVolumeRequest;
use strata_e2e::{
    Cluster, LocalNode, csi_connect, dataset_status, job_args, job_token, operator_args,
    pod_volume_context, publish_request, sync_secret_to_dir, wait_for_dataset_job,
    wait_for_dataset_pv, wait_until,
};
use strata_wire::api::client::AgentClient;

use crate::{
    DATASET, FILL_FILE, PINNED_DATASET, PINNED_DIR, PINNED_POLICY, PINNED_QUOTA_MIB, PinReads,
    RELEASE, SYSTEM_NS, TENANT_NS, UNPINNED_DIR, Usage, WAIT, drop_page_cache, manifests, mib,
    pinned_manifests,
};

/// The pods whose volumes the demo publishes: one reads the dataset, one trains on the pinned one.
const READER_POD: &str = "reader";
const TRAINER_POD: &str = "trainer";
const NODE_NAME: &str = "demo-node";
const NODE_IP: &str = "127.0.0.1";
/// The demo's processes, in the order `down` stops them.
const PROCESSES: [&str; 4] = ["csi", "agent", "sync-secrets", "operator"];

pub struct LocalDemo {
    pub state: PathBuf,
}

impl LocalDemo {
    fn node(&self, sub: &str) -> PathBuf {
        self.state.join("node").join(sub)
    }
    fn logs(&self) -> PathBuf {
        self.state.join("logs")
    }
    fn pid_file(&self, name: &str) -> PathBuf {
        self.state.join("run").join(format!("{name}.pid"))
    }
    /// Where kubelet would ask for pod `pod`'s volume of `dataset`: the parent exists, the
    /// target does not.
    fn target_of(&self, pod: &str, dataset: &str) -> PathBuf {
        self.node(&format!(
            "kubelet/pods/{pod}/volumes/kubernetes.io~csi/{dataset}/mount"
        ))
    }
    fn summary_file(&self) -> PathBuf {
        self.state.join("summary.txt")
    }

    fn running(&self, name: &str) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.pid_file(name))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // A zombie (exited, not yet reaped) counts as stopped.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let state = stat.rsplit(')').next()?.split_whitespace().next()?;
        (state != "Z").then_some(pid)
    }

    fn tail(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.logs().join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Starts `program` in its own process group (it outlives this command), logging to
    /// `logs/<name>.log`; a process already running from an earlier `up` is kept.
    fn start(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<u32> {
        if let Some(pid) = self.running(name) {
            println!("demo: {name} already running (pid {pid})");
            return Ok(pid);
        }
        let log = self.logs().join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}: {}", program.display()))?;
        std::fs::write(self.pid_file(name), child.id().to_string())?;
        println!(
            "demo: started {name} (pid {}, log {})",
            child.id(),
            log.display()
        );
        Ok(child.id())
    }

    async fn wait_ready(&self, name: &str, what: &str, ready: impl Fn() -> bool) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        while !ready() {
            if self.running(name).is_none() {
                bail!(
                    "{name} exited before {what}; last log lines:\n{}",
                    self.tail(name)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{name}: no {what} after {WAIT:?}; last log lines:\n{}",
                    self.tail(name)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    pub async fn up(&self, bins: &Path, chart: &Path, endpoint: &str, s3_uri: &str) -> Result<()> {
        if let Ok(summary) = std::fs::read_to_string(self.summary_file())
            && PROCESSES.iter().all(|p| self.running(p).is_some())
            && is_mount_point(&self.target_of(READER_POD, DATASET))
        {
            println!("demo: already up; 'make demo-down' stops it. From the first run:\n");
            print!("{summary}");
            let now = Cluster::shared()
                .await?
                .kubectl(&["-n", TENANT_NS, "get", "datasets"])
                .await?;
            println!("\nNow:\n$ kubectl get datasets -n {TENANT_NS}\n{now}");
            return Ok(());
        }
        let started = Instant::now();
        for dir in [
            "run",
            "logs",
            "node/datasets",
            "node/peer",
            "node/cache",
            "node/mounts",
        ] {
            std::fs::create_dir_all(self.state.join(dir))?;
        }
        let cluster = Cluster::shared().await?;
        let client = cluster.client().await?;

        // 1. The chart, and the operator as its Deployment would run it.
        cluster
            .apply(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {SYSTEM_NS}\n---\n\
                 apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {TENANT_NS}\n"
            ))
            .await?;
        let agent_port = self.remembered_port("agent-port", NODE_IP)?;
        cluster
            .helm(&[
                "upgrade",
                "--install",
                RELEASE,
                &chart.to_string_lossy(),
                "-n",
                SYSTEM_NS,
                "--set",
                &format!("operator.watchNamespace={TENANT_NS},node.agentPort={agent_port}"),
                "--set",
                "node.cache.memory.size=256Mi,node.cache.disk.size=1Gi",
            ])
            .await
            .context("helm upgrade --install of the chart")?;
        println!(
            "demo: chart {} installed as release {RELEASE} in {SYSTEM_NS}",
            chart.display()
        );
        let operator_name = format!("{RELEASE}-operator");
        let deployment = Api::<Deployment>::namespaced(client.clone(), SYSTEM_NS)
            .get(&operator_name)
            .await?;
        let metrics_port = self.remembered_port("operator-metrics-port", "127.0.0.1")?;
        let operator_args = operator_args(&deployment, &operator_name, metrics_port)?;
        let operator_kubeconfig = self.state.join("operator.kubeconfig");
        // A token of the chart's ServiceAccount (so the operator gets exactly the chart's RBAC),
        // valid for a day of demo.
        cluster
            .write_service_account_kubeconfig_valid_for(
                SYSTEM_NS,
                &operator_name,
                &operator_kubeconfig,
                "24h",
            )
            .await?;
        self.start(
            "operator",
            &bins.join("strata-operator"),
            &operator_args,
            &[("KUBECONFIG", &operator_kubeconfig.to_string_lossy())],
        )?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NS);
        let daemon_set = wait_until("the operator's node DaemonSet", WAIT, || async {
            Api::<DaemonSet>::namespaced(client.clone(), SYSTEM_NS)
                .get_opt("strata-node")
                .await
        })
        .await
        .with_context(|| format!("operator log:\n{}", self.tail("operator")))?;
        wait_until("the peer token Secret", WAIT, || async {
            secrets.get_opt("strata-peer-token").await
        })
        .await?;

        // 2. The node: the Secrets the DaemonSet mounts, the agent, the CSI plugin.
        let me = std::env::current_exe()?;
        self.start(
            "sync-secrets",
            &me,
            &[
                "--state".into(),
                self.state.to_string_lossy().into(),
                "sync-secrets".into(),
            ],
            &[("KUBECONFIG", &cluster.kubeconfig().to_string_lossy())],
        )?;
        let token = self.node("peer/token");
        self.wait_ready("sync-secrets", "peer token file", || token.exists())
            .await?;
        let node = LocalNode {
            name: NODE_NAME.into(),
            ip: NODE_IP.into(),
            dir: self.state.join("node"),
            agent_port,
        };
        // The mount holder first (its DaemonSet's args): the agent waits for it.
        let holder_set = wait_until("the operator's mount holder DaemonSet", WAIT, || async {
            Api::<DaemonSet>::namespaced(client.clone(), SYSTEM_NS)
                .get_opt("strata-holder")
                .await
        })
        .await?;
        self.start(
            "holder",
            &bins.join("strata-holder"),
            &node.container_args(&holder_set, "holder")?,
            &[],
        )?;
        let agent_args = node.agent_args(&daemon_set)?;
        // A token bound to a Pod on this node (a Node object stands in for the kubelet's
        // registration): the admission policy lets an agent write its own StrataNode only.
        let agent_kubeconfig = self.state.join("agent.kubeconfig");
        cluster
            .write_node_bound_kubeconfig(
                SYSTEM_NS,
                &format!("{RELEASE}-agent"),
                NODE_NAME,
                &agent_kubeconfig,
                "24h",
            )
            .await?;
        self.start(
            "agent",
            &bins.join("strata-agent"),
            &agent_args,
            &[
                ("KUBECONFIG", &agent_kubeconfig.to_string_lossy()),
                ("NODE_NAME", NODE_NAME),
            ],
        )?;
        let agent_addr: SocketAddr = format!("{NODE_IP}:{agent_port}").parse()?;
        self.wait_ready("agent", "API socket and port", || {
            self.node("agent.sock").exists() && TcpStream::connect(agent_addr).is_ok()
        })
        .await?;
        self.start(
            "csi",
            &bins.join("strata-csi"),
            &node.container_args(&daemon_set, "csi")?,
            &[],
        )?;
        self.wait_ready("csi", "CSI socket", || self.node("csi.sock").exists())
            .await?;
        println!(
            "demo: node {NODE_NAME} up: agent on {agent_addr}, CSI plugin on {}",
            self.node("csi.sock").display()
        );

        // 3. The Dataset, its CachePolicy and credentials Secret; 4. its volume published.
        cluster.apply(&manifests(endpoint, s3_uri)).await?;
        let target = self.publish(cluster, &client, DATASET, READER_POD).await?;

        // 5. The policy's preload Job first, as its pod would run it, with its progress lines;
        //    then kubectl get datasets shows the dataset fully cached.
        println!("demo: preloading {TENANT_NS}/{DATASET} (the CachePolicy's preload Job):");
        let preload = self.run_job(cluster, &client, "preload", DATASET).await?;
        let table = wait_until("kubectl get datasets to show 100%", WAIT, || async {
            let status = dataset_status(cluster, TENANT_NS, DATASET).await?;
            let table = cluster
                .kubectl(&["-n", TENANT_NS, "get", "datasets"])
                .await?;
            Ok::<_, anyhow::Error>((status["cachedPercent"] == 100).then_some(table))
        })
        .await
        .with_context(|| format!("agent log:\n{}", self.tail("agent")))?;

        // 6. The pod's first read through the mount: warm, not one block fetched from S3
        //    (the agent's own count of reads that went to the source).
        let agent_api = AgentClient::unix(self.node("agent.sock"));
        let misses = || async {
            let usage = agent_api.usage(TENANT_NS, DATASET).await?;
            Ok::<_, anyhow::Error>(usage["misses"].as_u64().unwrap_or_default())
        };
        let misses_before = misses().await?;
        drop_page_cache();
        let (files, bytes, first) = read_all(&target)?;
        let fetched = misses().await? - misses_before;
        ensure!(
            fetched == 0,
            "the first read after the preload fetched {fetched} blocks from S3; agent log:\n{}",
            self.tail("agent")
        );

        // 7. A pinned path survives a cache fill.
        let pins = self.pin_step(cluster, &client, endpoint, s3_uri).await?;

        let mib = mib(bytes);
        let summary = format!(
            "The dataset {TENANT_NS}/{DATASET} ({s3_uri} on {endpoint}) is mounted, as kubelet would \
             give it to a pod, at:\n  {target}\n\
             Try: ls -lR {target}\n\n\
             preload Job command: {preload}\n\
             $ kubectl get datasets -n {TENANT_NS}\n{table}\n\
             the first read through the mount, after the preload, of all {files} files \
             ({mib:.1} MiB): {first:.3}s ({first_rate:.0} MiB/s), 0 blocks fetched from S3\n\n\
             {pins}\n\
             Explore the cluster:\n  export KUBECONFIG={kubeconfig} PATH={bin}:$PATH\n  \
             kubectl get datasets,cachepolicies,pv,pvc -A\n\
             Logs: {logs}\nStop it all: make demo-down\n",
            target = target.display(),
            first = first.as_secs_f64(),
            first_rate = mib / first.as_secs_f64(),
            kubeconfig = cluster.kubeconfig().display(),
            bin = cluster.bin_dir().display(),
            logs = self.logs().display(),
        );
        std::fs::write(self.summary_file(), &summary)?;
        println!("demo: up in {:.1}s\n", started.elapsed().as_secs_f64());
        print!("{summary}");
        Ok(())
    }

    /// Waits for `dataset` to be Ready with its PV, then publishes the PV through the CSI
    /// socket as kubelet would for pod `pod` using the Dataset's PVC; returns where it is
    /// mounted (`down` finds it in `published-volumes`).
    async fn publish(
        &self,
        cluster: &Cluster,
        client: &kube::Client,
        dataset: &str,
        pod: &str,
    ) -> Result<PathBuf> {
        wait_until(&format!("Dataset {dataset} Ready"), WAIT, || async {
            let status = dataset_status(cluster, TENANT_NS, dataset).await?;
            Ok::<_, anyhow::Error>((status["phase"] == "Ready").then_some(()))
        })
        .await
        .with_context(|| format!("operator log:\n{}", self.tail("operator")))?;
        let pv = wait_for_dataset_pv(client, TENANT_NS, dataset, WAIT).await?;
        let csi_source = pv
            .spec
            .and_then(|s| s.csi)
            .context("the Dataset's PV has no CSI source")?;
        println!(
            "demo: Dataset {TENANT_NS}/{dataset} Ready, PV volume handle {}",
            csi_source.volume_handle
        );
        let target = self.target_of(pod, dataset);
        std::fs::create_dir_all(target.parent().context("target without parent")?)?;
        let context = pod_volume_context(&csi_source, TENANT_NS, pod);
        let csi = csi_connect(self.node("csi.sock")).await?;
        let handle = csi_source.volume_handle.clone();
        wait_until(
            &format!("NodePublishVolume of {dataset}'s PV"),
            WAIT,
            || {
                let mut csi = csi.clone();
                let request = publish_request(&handle, &target, context.clone());
                async move { csi.node_publish_volume(request).await.map(Some) }
            },
        )
        .await
        .with_context(|| {
            format!(
                "CSI log:\n{}\nagent log:\n{}",
                self.tail("csi"),
                self.tail("agent")
            )
        })?;
        let list = self.state.join("published-volumes");
        let line = format!("{handle}\t{}", target.display());
        if !std::fs::read_to_string(&list)
            .unwrap_or_default()
            .lines()
            .any(|l| l == line)
        {
            let mut published = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&list)?;
            writeln!(published, "{line}")?;
        }
        Ok(target)
    }

    /// Step 7: a second Dataset of the same data under a CachePolicy whose quota is a
    /// quarter of the file read through it, pinning one day of shards (`PINNED_DIR`). Its pin
    /// Job pins and fetches them; the other day's shards are read too, as often and as
    /// recently; then a file of four times the quota is read through the mount. Reading both
    /// days again, the pinned one is still cached (0 blocks fetched from S3) and the other
    /// was evicted (fetched again); fails otherwise. Returns the summary's lines.
    async fn pin_step(
        &self,
        cluster: &Cluster,
        client: &kube::Client,
        endpoint: &str,
        s3_uri: &str,
    ) -> Result<String> {
        println!(
            "demo: pinning: Dataset {TENANT_NS}/{PINNED_DATASET} (the same data) under CachePolicy \
             {PINNED_POLICY}: quota {PINNED_QUOTA_MIB}Mi, pin /{PINNED_DIR}/**"
        );
        cluster.apply(&pinned_manifests(endpoint, s3_uri)).await?;
        let target = self
            .publish(cluster, client, PINNED_DATASET, TRAINER_POD)
            .await?;
        println!("demo: the CachePolicy's pin Job:");
        let pin_job = self.run_job(cluster, client, "pin", PINNED_DATASET).await?;
        let agent_api = AgentClient::unix(self.node("agent.sock"));
        let usage = || async {
            let usage = agent_api.usage(TENANT_NS, PINNED_DATASET).await?;
            Ok::<_, anyhow::Error>(Usage::from_json(&usage))
        };
        let (unpinned_files, _, _) = read_all(&target.join(UNPINNED_DIR))?;
        let before_fill = usage().await?;
        let (_, fill_bytes, fill_time) = read_all(&target.join(FILL_FILE))?;
        let filled = usage().await?;
        drop_page_cache();
        let (pinned_files, _, _) = read_all(&target.join(PINNED_DIR))?;
        let pinned_again = usage().await?;
        read_all(&target.join(UNPINNED_DIR))?;
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
        println!("{}", reads.progress("through the mount"));
        reads.check(&format!("agent log:\n{}", self.tail("agent")))?;
        let lines = format!(
            "pinned path surviving a cache fill (Dataset {TENANT_NS}/{PINNED_DATASET}, \
             CachePolicy {PINNED_POLICY}: quota {PINNED_QUOTA_MIB}Mi, pin /{PINNED_DIR}/**):\n  \
             pin Job command: {pin_job}\n{}",
            reads.summary(&format!("through {}", target.display())),
        );
        Ok(lines)
    }

    /// Runs the container command of `dataset`'s Job of `kind` (`preload`, `pin`) against
    /// this node's agent, with the ServiceAccount token the Job's pod would have projected,
    /// printing its log; returns how it went.
    async fn run_job(
        &self,
        cluster: &Cluster,
        client: &kube::Client,
        kind: &str,
        dataset: &str,
    ) -> Result<String> {
        let jobs: Api<Job> = Api::namespaced(client.clone(), TENANT_NS);
        let job = wait_for_dataset_job(&jobs, kind, dataset, WAIT).await?;
        let token_file = self.state.join("job-token");
        std::fs::write(&token_file, job_token(cluster, &job).await?)?;
        let args = job_args(&job, NODE_IP, &token_file)?;
        let log = self.logs().join(format!("{kind}-job.log"));
        let mut out = std::fs::File::create(&log)?;
        let started = Instant::now();
        let mut child = Command::new(self.bin_of_agent()?)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(out.try_clone()?)
            .spawn()?;
        // The Job's log, as `kubectl logs -f job/...` would show it.
        let stdout = child.stdout.take().context("the preload's output")?;
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("  {line}");
            writeln!(out, "{line}")?;
        }
        let status = child.wait()?;
        ensure!(
            status.success(),
            "{kind} Job command strata-agent {} failed ({status}):\n{}",
            args.join(" "),
            self.tail(&format!("{kind}-job"))
        );
        Ok(format!(
            "strata-agent {} ({:.1}s)",
            args.join(" "),
            started.elapsed().as_secs_f64()
        ))
    }

    fn bin_of_agent(&self) -> Result<PathBuf> {
        let pid = self.running("agent").context("the agent is not running")?;
        Ok(std::fs::read_link(format!("/proc/{pid}/exe"))?)
    }

    /// A port picked once and kept in the state dir, so a second `up` finds the same one.
    fn remembered_port(&self, name: &str, ip: &str) -> Result<u16> {
        let file = self.state.join(name);
        if let Some(port) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return Ok(port);
        }
        let port = TcpListener::bind((ip, 0))?.local_addr()?.port();
        std::fs::write(&file, port.to_string())?;
        Ok(port)
    }

    pub async fn down(&self) -> Result<()> {
        let published =
            std::fs::read_to_string(self.state.join("published-volumes")).unwrap_or_default();
        if self.running("csi").is_some() {
            for (handle, target) in published.lines().filter_map(|l| l.split_once('\t')) {
                let mut csi = csi_connect(self.node("csi.sock")).await?;
                csi.node_unpublish_volume(NodeUnpublishVolumeRequest {
                    volume_id: handle.into(),
                    target_path: target.into(),
                })
                .await
                .with_context(|| format!("NodeUnpublishVolume {handle} at {target}"))?;
                println!("demo: unpublished {handle} from {target}");
            }
        }
        let _ = std::fs::remove_file(self.state.join("published-volumes"));
        for name in PROCESSES {
            if let Some(pid) = self.running(name) {
                stop(name, pid).await;
            }
            let _ = std::fs::remove_file(self.pid_file(name));
        }
        Ok(())
    }

    pub async fn sync_secrets(&self) -> Result<()> {
        let client = kube::Client::try_default().await?;
        let secrets: Api<Secret> = Api::namespaced(client, SYSTEM_NS);
        loop {
            for (secret, sub) in [
                ("strata-datasets", "datasets"),
                ("strata-peer-token", "peer"),
            ] {
                match secrets.get_opt(secret).await {
                    Ok(Some(s)) => {
                        if let Err(e) =
                            sync_secret_to_dir(&s, &self.node(sub), &self.node(".staging"))
                        {
                            eprintln!(
                                "syncing Secret {secret} into {}: {e:#}",
                                self.node(sub).display()
                            );
                        }
                    }
                    Ok(None) => {}
                    Err(e) => eprintln!("reading Secret {SYSTEM_NS}/{secret}: {e}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// SIGTERM (an agent unmounts its FUSE file systems on it), then SIGKILL after 15 s.
async fn stop(name: &str, pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    for _ in 0..150 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            println!("demo: stopped {name} (pid {pid})");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    println!("demo: killed {name} (pid {pid}), it ignored SIGTERM for 15s");
}

fn is_mount_point(path: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let wanted = path.to_string_lossy().replace(' ', "\\040");
    table
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(wanted.as_str()))
}

/// Reads every regular file under `root` (or `root` itself): (files, bytes, time taken).
fn read_all(root: &Path) -> Result<(usize, u64, Duration)> {
    let started = Instant::now();
    let (mut files, mut bytes) = (0, 0);
    if root.is_file() {
        let mut f = std::fs::File::open(root)?;
        let bytes = std::io::copy(&mut f, &mut std::io::sink())
            .with_context(|| format!("reading {}", root.display()))?;
        return Ok((1, bytes, started.elapsed()));
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            } else {
                let mut f = std::fs::File::open(entry.path())?;
                bytes += std::io::copy(&mut f, &mut std::io::sink())
                    .with_context(|| format!("reading {}", entry.path().display()))?;
                files += 1;
            }
        }
    }
    Ok((files, bytes, started.elapsed()))
}
