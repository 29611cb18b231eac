//! Strata end to end, the way a user meets it, on the local control plane:
//!
//! 1. `helm install` the chart; the operator Deployment's pod cannot run (no kubelet), so the
//!    cargo-built `strata-operator` runs as a local process with exactly the Deployment's flags
//!    and a token of the chart's operator ServiceAccount (so the chart's RBAC is what it gets);
//! 2. a real S3 server (moto) on loopback with generated data;
//! 3. two simulated nodes, each a `strata-holder`, a `strata-agent serve` and a `strata-csi` process with its own
//!    node name, cache dir, sockets and loopback address, standing in for the DaemonSet's pods;
//!    the Secrets the DaemonSet mounts (`strata-datasets`, `strata-peer-token`) are synced into
//!    each node's directories, as kubelet would; each agent's Kubernetes credential is a token
//!    bound to a Pod on a Node object of its name, so the chart's RBAC and admission policy
//!    (its own StrataNode only) apply as on a real node;
//! 4. a Secret, Dataset and CachePolicy applied with kubectl; the Dataset becomes Ready;
//! 5. the preload Job's command, run as its pod would (with its ServiceAccount token for the
//!    agents' audience), takes `kubectl get datasets` to 100% (before the reads, which
//!    would otherwise cache everything themselves); the two agents found each other through
//!    their StrataNodes (the cluster cache), and each fetched its own share of the blocks; then a second tenant with its own Dataset
//!    and CachePolicy: with the first tenant's job credential every route that touches the
//!    second's data, registration, volumes and the dataset list is refused with 403 and the
//!    second's cache and pins stay as they were; a policy's deletion revokes its namespace's
//!    job credential;
//! 6. NodePublishVolume through each node's CSI socket with the PV's volume handle and as an
//!    inline volume; every file read through the target path has the source's checksum (warm on
//!    the preloaded node, cold on the other); then one node's agent is killed (SIGKILL) while
//!    its published volume is read: the read waits, the agent started again takes the mount
//!    over from the node's mount holder, and the read ends with every checksum right;
//! 7. a file added under the pinned path after the reads is fetched by the pin Job (run on
//!    each node as its pod would); with the quota lowered below the data and every other file
//!    read again, the pinned paths, the new file among them, are still served with the S3
//!    server stopped;
//!    the peer token is rotated: the old one is refused, the new one works, no restart;
//! 8. deleting the Dataset drops the caches and mounts and removes the PV and PVC.
//!
//! Finally every process log and every API object (Secrets aside) is searched for the test
//! credentials, which must appear nowhere.
//!
//! Needs root (FUSE and bind mounts), `moto_server` (`pip install 'moto[server]'`) and the local
//! control plane (`e2e/cluster/cluster.sh`). The binaries are built with `cargo build` into the
//! target directory of this test (or taken from `STRATA_E2E_BIN_DIR`).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Secret};
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use sha2::{Digest, Sha256};
use strata_agent::api::client::AgentClient;
use strata_crds::Dataset;
use strata_csi::proto::NodeUnpublishVolumeRequest;
use strata_csi::proto::node_client::NodeClient;
use strata_e2e::{
    Cluster, LocalNode, MotoS3, TestNamespace, csi_connect, dataset_status, generated_bytes,
    job_args, job_token, jobs_of_kind, operator_args, pod_volume_context, publish_request,
    sync_secret_to_dir, wait_for_dataset_pv, wait_until, workspace_binaries,
};
use tonic::transport::Channel;

const BUCKET: &str = "strata-e2e";
const DATASET: &str = "corpus";
const POLICY: &str = "corpus-cache";
/// The policy's quota in step 7, below the dataset's 17 MiB, above its 1.2 MiB of pins.
const QUOTA_AFTER: u64 = 8 << 20;
const WAIT: Duration = Duration::from_secs(90);
/// Loopback addresses of the two simulated nodes (the agent API binds the chart's agentPort on
/// each, as two hosts would).
const NODE_IPS: [&str; 2] = ["127.0.0.2", "127.0.0.3"];

// ---------------------------------------------------------------------------------------------
// Binaries and processes

/// A local process standing in for a pod's container; its output goes to `<logs>/<name>.log`.
/// Dropping it sends SIGTERM (so an agent unmounts its FUSE file systems), then SIGKILL.
struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        logs: &Path,
    ) -> Result<Process> {
        let log = logs.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Process {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// Fails with the log's tail if the process has exited.
    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}):\n{}", self.name, tail(&self.log, 30));
        }
        Ok(())
    }

    fn terminate(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn free_port(ip: &str) -> Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

async fn wait_for_port(addr: SocketAddr, process: &mut Process) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(addr).is_err() {
        process.check_running()?;
        ensure!(
            Instant::now() < deadline,
            "{} did not listen on {addr}",
            process.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn wait_for_socket(path: &Path, process: &mut Process) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while tokio::net::UnixStream::connect(path).await.is_err() {
        process.check_running()?;
        ensure!(
            Instant::now() < deadline,
            "{} did not listen on {}",
            process.name,
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The S3 server and its data

fn sha256(bytes: &[u8]) -> String {
    hex_string(&Sha256::digest(bytes))
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The test data: dataset path → (sha256, size). `/pinned/**` is what the policy pins.
fn upload_data(s3: &MotoS3) -> Result<BTreeMap<String, (String, u64)>> {
    s3.create_bucket(BUCKET)?;
    let mut files = vec![
        ("train/shard-000.bin".to_string(), 3 << 20),
        ("train/shard-001.bin".to_string(), (5 << 20) + 17),
        ("train/shard-002.bin".to_string(), 4 << 20),
        ("train/shard-003.bin".to_string(), 4 << 20),
        ("train/empty.bin".to_string(), 0),
        ("pinned/labels.csv".to_string(), (1 << 20) + 5),
        ("pinned/vocab/words.txt".to_string(), 200_000),
    ];
    for i in 0..12 {
        files.push((format!("train/small/{i:02}.json"), 1000 + i * 777));
    }
    let mut sums = BTreeMap::new();
    for (seed, (key, len)) in files.into_iter().enumerate() {
        let body = generated_bytes(seed as u64 + 1, len);
        s3.put_object(BUCKET, &format!("data/{key}"), &body)?;
        sums.insert(format!("/{key}"), (sha256(&body), len as u64));
    }
    Ok(sums)
}

// ---------------------------------------------------------------------------------------------
// Simulated nodes

struct Node {
    name: String,
    ip: &'static str,
    dir: PathBuf,
    agent: Process,
    csi: Process,
    csi_client: NodeClient<Channel>,
    /// How its agent was started, to start it again.
    agent_args: Vec<String>,
    agent_kubeconfig: String,
    // Declared last, dropped (stopped) last: the agent's mounts live in it.
    _holder: Process,
}

impl Node {
    fn datasets_dir(&self) -> PathBuf {
        self.dir.join("datasets")
    }

    fn mount_root(&self) -> PathBuf {
        self.dir.join("mounts")
    }

    fn cache_dir(&self) -> PathBuf {
        self.dir.join("cache")
    }

    /// A kubelet-like target path: the parent exists, the target does not.
    fn target(&self, pod: &str) -> Result<PathBuf> {
        let parent = self
            .dir
            .join("kubelet/pods")
            .join(pod)
            .join("volumes/kubernetes.io~csi/data");
        std::fs::create_dir_all(&parent)?;
        Ok(parent.join("mount"))
    }
}

/// Keeps every node's `datasets/` and `peer/` equal to the two Secrets, every 300 ms, until
/// the returned handle is aborted.
fn spawn_secret_sync(
    client: kube::Client,
    namespace: String,
    node_dirs: Vec<PathBuf>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let secrets: Api<Secret> = Api::namespaced(client, &namespace);
        loop {
            for (secret, sub) in [
                ("strata-datasets", "datasets"),
                ("strata-peer-token", "peer"),
            ] {
                if let Ok(Some(s)) = secrets.get_opt(secret).await {
                    for dir in &node_dirs {
                        if let Err(e) =
                            sync_secret_to_dir(&s, &dir.join(sub), &dir.join(".staging"))
                        {
                            eprintln!("syncing Secret {secret} into {}: {e:#}", dir.display());
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

/// Every regular file under `root`, as dataset path → sha256 of what a read returns.
fn checksums_under(root: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else {
                let bytes =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                let relative = path.strip_prefix(root)?.to_string_lossy().into_owned();
                out.insert(format!("/{relative}"), sha256(&bytes));
            }
        }
    }
    Ok(out)
}

fn mounts_under(dir: &Path) -> Result<Vec<String>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    let prefix = dir.to_string_lossy().replace(' ', "\\040");
    Ok(table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(prefix.as_str()))
        .map(str::to_string)
        .collect())
}

// ---------------------------------------------------------------------------------------------
// The manifests

fn manifests(tenant: &str, endpoint: &str, key_id: &str, secret_key: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata:
  name: s3-creds
  namespace: {tenant}
type: Opaque
stringData:
  AWS_ACCESS_KEY_ID: {key_id}
  AWS_SECRET_ACCESS_KEY: {secret_key}
---
apiVersion: strata.dev/v1alpha1
kind: Dataset
metadata:
  name: {DATASET}
  namespace: {tenant}
  labels:
    team: e2e
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
  namespace: {tenant}
spec:
  datasetSelector:
    matchLabels:
      team: e2e
  quota: 64Mi
  tiers: [Memory, SSD]
  eviction: LRU
  blockSize: 1Mi
  replicas: 1
  metadata:
    ttl: 1h
  pin:
    - paths: ["/pinned/**"]
  preload:
    - paths: ["/**"]
"#
    )
}

// ---------------------------------------------------------------------------------------------
// Steps

#[tokio::test]
async fn strata_end_to_end() -> Result<()> {
    let started = Instant::now();
    let step = |n: u32, what: &str| {
        eprintln!(
            "step {n} ok after {:.1}s: {what}",
            started.elapsed().as_secs_f64()
        );
    };
    let cluster = Cluster::shared().await?;
    let bins = tokio::task::spawn_blocking(|| {
        workspace_binaries(&[
            "strata-operator",
            "strata-agent",
            "strata-csi",
            "strata-holder",
        ])
    })
    .await??;
    let system = TestNamespace::create(cluster, "e2e-system").await?;
    let tenant = TestNamespace::create(cluster, "e2e-tenant").await?;
    let other = TestNamespace::create(cluster, "e2e-other").await?;
    let client = cluster.client().await?;
    // Kept when the test fails (logs, node directories); removed at the end of a passing run.
    let run = tempfile::Builder::new()
        .prefix("strata-e2e-")
        .tempdir()?
        .keep();
    let logs = run.join("logs");
    std::fs::create_dir_all(&logs)?;
    eprintln!("logs in {}", logs.display());

    // 1. The chart, and the operator as the Deployment would run it.
    let release = system.name().to_string();
    let agent_port = free_port(NODE_IPS[0])?;
    let chart = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/strata");
    cluster
        .helm(&[
            "install",
            &release,
            &chart.to_string_lossy(),
            "-n",
            system.name(),
            "--set",
            &format!("node.agentPort={agent_port},logLevel=debug"),
            "--set",
            "node.cache.memory.size=64Mi,node.cache.disk.size=256Mi",
            "--set",
            "operator.leaderElection.leaseDuration=4s,operator.sourceCheckTimeout=5s",
        ])
        .await?;
    let operator_name = format!("{release}-operator");
    let deployment = system.api::<Deployment>().get(&operator_name).await?;
    let operator_port = free_port("127.0.0.1")?;
    let operator_args = operator_args(&deployment, &operator_name, operator_port)?;
    let operator_kubeconfig = run.join("operator.kubeconfig");
    cluster
        .write_service_account_kubeconfig(system.name(), &operator_name, &operator_kubeconfig)
        .await?;
    let mut operator = Process::spawn(
        "operator",
        &bins.join("strata-operator"),
        &operator_args,
        &[("KUBECONFIG", &operator_kubeconfig.to_string_lossy())],
        &logs,
    )?;
    wait_for_port(([127, 0, 0, 1], operator_port).into(), &mut operator).await?;
    let suffix = &system.name()[system.name().len() - 6..];
    let node_names: Vec<String> = (0..2).map(|i| format!("e2e-node-{i}-{suffix}")).collect();
    let _teardown = Teardown {
        cluster,
        run: run.clone(),
        tenants: vec![tenant.name().to_string(), other.name().to_string()],
        system: system.name().to_string(),
        release: release.clone(),
        nodes: node_names.clone(),
    };
    let secrets = system.api::<Secret>();
    wait_until("the operator to mint the peer token", WAIT, || async {
        secrets.get_opt("strata-peer-token").await
    })
    .await?;
    let daemon_set = wait_until("the node DaemonSet", WAIT, || async {
        system.api::<DaemonSet>().get_opt("strata-node").await
    })
    .await?;
    let holder_set = wait_until("the mount holder's DaemonSet", WAIT, || async {
        system.api::<DaemonSet>().get_opt("strata-holder").await
    })
    .await?;
    Api::<CSIDriver>::all(client.clone())
        .get("csi.strata.dev")
        .await?;
    step(
        1,
        "chart installed, operator running with its flags and RBAC",
    );

    // 2. S3 with generated data.
    let s3 = MotoS3::start(&logs.join("moto.log"))?;
    let files = upload_data(&s3)?;
    let sums: BTreeMap<String, String> = files
        .iter()
        .map(|(path, (sum, _))| (path.clone(), sum.clone()))
        .collect();
    step(
        2,
        &format!("S3 on {} with {} files", s3.endpoint(), sums.len()),
    );

    // 3. Two nodes.
    let node_dirs: Vec<PathBuf> = (0..2).map(|i| run.join(format!("node-{i}"))).collect();
    for dir in &node_dirs {
        for sub in ["datasets", "peer", "cache", "mounts", "kubelet"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
    }
    let sync = spawn_secret_sync(client.clone(), system.name().to_string(), node_dirs.clone());
    let mut nodes = Vec::new();
    for (i, dir) in node_dirs.iter().enumerate() {
        let name = node_names[i].clone();
        let ip = NODE_IPS[i];
        let token = dir.join("peer/token");
        wait_until("the peer token file", WAIT, || async {
            Ok::<_, std::io::Error>(token.exists().then_some(()))
        })
        .await?;
        // As the agent container of the DaemonSet's pod on this node holds it.
        let agent_kubeconfig = dir.join("agent.kubeconfig");
        cluster
            .write_node_bound_kubeconfig(
                system.name(),
                &format!("{release}-agent"),
                &name,
                &agent_kubeconfig,
                "1h",
            )
            .await?;
        let local = LocalNode {
            name: name.clone(),
            ip: ip.to_string(),
            dir: dir.clone(),
            agent_port,
        };
        // The holder first: the agent waits for it.
        let holder = Process::spawn(
            &format!("holder-{i}"),
            &bins.join("strata-holder"),
            &local.container_args(&holder_set, "holder")?,
            &[("STRATA_LOG", "debug")],
            &logs,
        )?;
        let agent_args = local.agent_args(&daemon_set)?;
        let kubeconfig = agent_kubeconfig.to_string_lossy().into_owned();
        let mut agent = Process::spawn(
            &format!("agent-{i}"),
            &bins.join("strata-agent"),
            &agent_args,
            &[
                ("KUBECONFIG", &kubeconfig),
                ("NODE_NAME", &name),
                ("STRATA_LOG", "debug"),
            ],
            &logs,
        )?;
        wait_for_socket(&dir.join("agent.sock"), &mut agent).await?;
        wait_for_port(format!("{ip}:{agent_port}").parse()?, &mut agent).await?;
        let csi_args = local.container_args(&daemon_set, "csi")?;
        let mut csi = Process::spawn(
            &format!("csi-{i}"),
            &bins.join("strata-csi"),
            &csi_args,
            &[("STRATA_LOG", "debug")],
            &logs,
        )?;
        wait_for_socket(&dir.join("csi.sock"), &mut csi).await?;
        let csi_client = csi_connect(dir.join("csi.sock")).await?;
        nodes.push(Node {
            name,
            ip,
            dir: dir.clone(),
            agent_args: agent_args.clone(),
            agent_kubeconfig: kubeconfig.clone(),
            _holder: holder,
            agent,
            csi,
            csi_client,
        });
    }
    step(3, "two nodes: mount holder, agent and CSI plugin each");

    // 4. Secret, Dataset, CachePolicy; Ready.
    let key_id = format!("AKIASTRATAE2E{}", suffix.to_ascii_uppercase());
    let secret_key = format!("strataE2eSecret{suffix}x{}", sha256(suffix.as_bytes()));
    cluster
        .apply(&manifests(
            tenant.name(),
            &s3.endpoint(),
            &key_id,
            &secret_key,
        ))
        .await?;
    let ready = wait_until("Dataset Ready", WAIT, || async {
        let status = dataset_status(cluster, tenant.name(), DATASET).await?;
        Ok::<_, anyhow::Error>((status["phase"] == "Ready").then_some(status))
    })
    .await;
    let ready = match ready {
        Ok(status) => status,
        Err(e) => bail!(
            "{e}; status: {}; operator log: {}",
            dataset_status(cluster, tenant.name(), DATASET).await?,
            operator.log.display()
        ),
    };
    eprintln!("Dataset status: {ready}");
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv = wait_for_dataset_pv(&client, tenant.name(), DATASET, WAIT).await?;
    let pvc = tenant
        .api::<PersistentVolumeClaim>()
        .get(DATASET)
        .await
        .context("the Dataset's PersistentVolumeClaim")?;
    let csi_source = pv
        .spec
        .as_ref()
        .and_then(|s| s.csi.clone())
        .context("PV without a CSI source")?;
    assert_eq!(csi_source.driver, "csi.strata.dev");
    assert_eq!(
        pvc.spec.as_ref().and_then(|s| s.volume_name.clone()),
        pv.metadata.name.clone()
    );
    let config_key = format!("{}.{DATASET}.yaml", tenant.name());
    for node in &nodes {
        let file = node.datasets_dir().join(&config_key);
        wait_until("the dataset config on every node", WAIT, || async {
            Ok::<_, std::io::Error>(file.exists().then_some(()))
        })
        .await?;
    }
    // The credentials did reach the agents (through the mounted Secret only), so the search for
    // them in logs and objects at the end is not vacuous.
    let config = std::fs::read_to_string(nodes[0].datasets_dir().join(&config_key))?;
    ensure!(
        config.contains(&key_id) && config.contains(&secret_key),
        "the agents' dataset config lacks the source credentials:\n{config}"
    );
    step(4, "Dataset Ready, PV and PVC bound, config on every node");

    // 5. The preload Job's command, as its pod runs it (on node 0), takes the Dataset from
    // partly cached (the agents fetch what the policy pins as soon as they are configured) to
    // `kubectl get datasets` showing 100%.
    let before = dataset_status(cluster, tenant.name(), DATASET).await?;
    ensure!(
        before["cachedPercent"].as_i64().unwrap_or(0) < 100,
        "cached before any read or preload: {before}"
    );
    let jobs = tenant.api::<Job>();
    let preload = wait_until("the preload Job", WAIT, || async {
        Ok::<_, anyhow::Error>(jobs_of_kind(&jobs, "preload").await?.into_iter().next())
    })
    .await?;
    // The pod's projected ServiceAccount token for the agents' audience, as kubelet mints it;
    // nothing was copied into the tenant's namespace.
    ensure!(
        tenant
            .api::<Secret>()
            .list(&Default::default())
            .await?
            .items
            .iter()
            .all(|s| s.metadata.name.as_deref() == Some("s3-creds")),
        "the operator stored a Secret in the tenant's namespace"
    );
    let job_token_file = run.join("job-token");
    std::fs::write(&job_token_file, job_token(cluster, &preload).await?)?;
    let args = job_args(&preload, nodes[0].ip, &job_token_file)?;
    let preload_log = logs.join("preload-job.log");
    let status = Command::new(bins.join("strata-agent"))
        .args(&args)
        .env("STRATA_LOG", "debug")
        .stdout(std::fs::File::create(&preload_log)?)
        .stderr(std::fs::File::create(logs.join("preload-job.err.log"))?)
        .status()?;
    ensure!(
        status.success(),
        "preload job {args:?} failed: {}\n{}",
        tail(&preload_log, 20),
        tail(&logs.join("preload-job.err.log"), 20)
    );
    wait_until("kubectl get datasets to show 100%", WAIT, || async {
        let out = cluster
            .kubectl(&["-n", tenant.name(), "get", "datasets"])
            .await?;
        let status = dataset_status(cluster, tenant.name(), DATASET).await?;
        Ok::<_, anyhow::Error>((status["cachedPercent"] == 100).then_some(out))
    })
    .await
    .map(|table| eprintln!("{table}"))?;
    // The cluster cache: the two agents found each other through their StrataNodes, and the
    // Job, run against node 0's agent, had each block group fetched and kept by its owner.
    let log = std::fs::read_to_string(&preload_log)?;
    let last = log.lines().last().unwrap_or_default();
    for node in &nodes {
        ensure!(
            last.contains("bytes per node:") && last.contains(&format!("{} ", node.name)),
            "the preload did not place blocks on {}: {last}",
            node.name
        );
    }
    step(
        5,
        "preload job ran; kubectl get datasets went to 100%; each node fetched its own share",
    );

    // 5b. A second tenant on the same nodes, with the same dataset and policy names: the first
    // tenant's job credential reaches none of it, and changes nothing of it.
    cluster
        .apply(&manifests(
            other.name(),
            &s3.endpoint(),
            &key_id,
            &secret_key,
        ))
        .await?;
    let other_key = format!("{}.{DATASET}.yaml", other.name());
    let other_file = nodes[0].datasets_dir().join(&other_key);
    wait_until("the other tenant's config on node 0", WAIT, || async {
        Ok::<_, std::io::Error>(other_file.exists().then_some(()))
    })
    .await?;
    let node0 = format!("{}:{agent_port}", nodes[0].ip);
    let local0 = AgentClient::unix(nodes[0].dir.join("agent.sock"));
    wait_until(
        "node 0 to serve the other tenant's dataset",
        WAIT,
        // Under its policy: a config written before the policy resolved names none, and no
        // job credential acts on a dataset without one.
        || async {
            Ok::<_, anyhow::Error>(
                local0
                    .dataset(other.name(), DATASET)
                    .await
                    .ok()
                    .filter(|summary| summary["policy"] == POLICY),
            )
        },
    )
    .await?;
    // The other tenant fills its cache with its own job credential.
    let other_jobs = other.api::<Job>();
    let other_preload = wait_until("the other tenant's preload Job", WAIT, || async {
        Ok::<_, anyhow::Error>(
            jobs_of_kind(&other_jobs, "preload")
                .await?
                .into_iter()
                .next(),
        )
    })
    .await?;
    let other_token = job_token(cluster, &other_preload).await?;
    let other_token_file = run.join("other-job-token");
    std::fs::write(&other_token_file, &other_token)?;
    let out = Command::new(bins.join("strata-agent"))
        .args(job_args(&other_preload, nodes[0].ip, &other_token_file)?)
        .output()?;
    ensure!(
        out.status.success(),
        "the other tenant's preload failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The agents fill the new dataset's pins from each other in the background (the
    // cluster cache): the comparison below starts once node 0's figures hold still.
    let mut before = local0.dataset(other.name(), DATASET).await?;
    let settle = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = local0.dataset(other.name(), DATASET).await?;
        if now["usage"] == before["usage"] || settle.elapsed() > WAIT {
            break;
        }
        before = now;
    }
    ensure!(
        before["usage"]["cachedBytes"].as_u64().unwrap_or(0) > 0
            && before["pins"] == serde_json::json!([{"paths": ["/pinned/**"]}]),
        "the other tenant's dataset is not cached and pinned: {before}"
    );
    let mine = std::fs::read_to_string(&job_token_file)?;
    let (a, b) = (tenant.name(), other.name());
    let some_file = files.keys().next().context("no file")?.clone();
    let register = r#"{"sources":[{"name":"etc","uri":"file:///etc/"}]}"#;
    let globs = r#"{"paths":["/**"]}"#;
    let peer_query = format!(
        "path={some_file}&source=corpus&key=x&etag=x&size=1&mtime=0&blockSize=4194304&first=0&count=1&from=x"
    );
    let refused: Vec<(&str, String, &str)> = vec![
        ("GET", "/v1/datasets".into(), ""),
        ("GET", format!("/v1/datasets/{b}/{DATASET}"), ""),
        ("GET", format!("/v1/datasets/{b}/{DATASET}/stat?path=/"), ""),
        ("GET", format!("/v1/datasets/{b}/{DATASET}/list?path=/"), ""),
        (
            "GET",
            format!("/v1/datasets/{b}/{DATASET}/read?path={some_file}"),
            "",
        ),
        ("POST", format!("/v1/datasets/{b}/{DATASET}/preload"), globs),
        ("POST", format!("/v1/datasets/{b}/{DATASET}/pin"), globs),
        (
            "POST",
            format!("/v1/datasets/{b}/{DATASET}/unpin"),
            r#"{"paths":["/pinned/**"]}"#,
        ),
        ("GET", format!("/v1/datasets/{b}/{DATASET}/usage"), ""),
        ("PUT", format!("/v1/datasets/{b}/{DATASET}"), register),
        ("DELETE", format!("/v1/datasets/{b}/{DATASET}"), ""),
        ("PUT", format!("/v1/datasets/{a}/steal"), register),
        (
            "PUT",
            format!("/v1/datasets/{b}/{DATASET}/volumes/vol-steal"),
            "",
        ),
        (
            "DELETE",
            format!("/v1/datasets/{b}/{DATASET}/volumes/vol-steal"),
            "",
        ),
        ("DELETE", "/v1/volumes/vol-steal".into(), ""),
        ("GET", "/v1/volumes".into(), ""),
        // Its own dataset: a job preloads and pins, it does not read.
        (
            "GET",
            format!("/v1/datasets/{a}/{DATASET}/read?path={some_file}"),
            "",
        ),
        // The cluster cache's block routes are the agents' own, for no tenant.
        (
            "GET",
            format!("/v1/peer/datasets/{a}/{DATASET}/blocks?{peer_query}"),
            "",
        ),
        (
            "POST",
            format!("/v1/peer/datasets/{b}/{DATASET}/fill?{peer_query}"),
            "",
        ),
    ];
    for (method, target, body) in &refused {
        let (status, answer) = raw_call(&node0, method, target, &mine, body)?;
        ensure!(
            status == 403,
            "{method} {target} with the other namespace's job credential: {status} {answer}"
        );
    }
    let (status, answer) = raw_call(
        &node0,
        "GET",
        &format!("/v1/datasets/{a}/{DATASET}/usage"),
        &mine,
        "",
    )?;
    ensure!(status == 200, "its own usage: {status} {answer}");
    let after = local0.dataset(other.name(), DATASET).await?;
    ensure!(
        after["usage"]["cachedBytes"] == before["usage"]["cachedBytes"]
            && after["usage"]["hits"] == before["usage"]["hits"]
            && after["usage"]["misses"] == before["usage"]["misses"]
            && after["pins"] == before["pins"]
            && after["volumes"] == serde_json::json!([]),
        "refused calls changed the other tenant's dataset: {before} -> {after}"
    );
    ensure!(
        local0.dataset(a, "steal").await.is_err(),
        "a job registered a dataset"
    );
    // Deleting a policy revokes its namespace's job credential, without restarting anything.
    let other_usage = format!("/v1/datasets/{b}/{DATASET}/usage");
    let (status, answer) = raw_call(&node0, "GET", &other_usage, &other_token, "")?;
    ensure!(
        status == 200,
        "the other tenant's own usage: {status} {answer}"
    );
    cluster
        .kubectl(&["-n", b, "delete", "cachepolicy", POLICY])
        .await?;
    let revoked = Instant::now();
    wait_until(
        "the deleted policy's job credential to be refused",
        WAIT,
        || async {
            let (status, _) = raw_call(&node0, "GET", &other_usage, &other_token, "")?;
            Ok::<_, anyhow::Error>((status == 403).then_some(()))
        },
    )
    .await?;
    eprintln!(
        "a deleted CachePolicy's job credential was refused {:.1}s after the delete",
        revoked.elapsed().as_secs_f64()
    );
    step(
        5,
        "second tenant: 19 calls with the first tenant's job credential refused, nothing changed; \
         a deleted policy's credential refused",
    );

    // 6. Publish through each node's CSI socket, persistent and inline; read everything (warm
    // on node 0, which was preloaded, cold from S3 on node 1).
    let mut published: Vec<(usize, String, PathBuf)> = Vec::new();
    for (i, node) in nodes.iter_mut().enumerate() {
        let context = pod_volume_context(&csi_source, tenant.name(), "reader");
        let target = node.target("pod-pvc")?;
        let handle = csi_source.volume_handle.clone();
        // The agent picks the dataset up from its datasets dir within a rescan.
        wait_until("NodePublishVolume of the PV", WAIT, || {
            let mut client = node.csi_client.clone();
            let request = publish_request(&handle, &target, context.clone());
            async move { client.node_publish_volume(request).await.map(Some) }
        })
        .await?;
        published.push((i, handle.clone(), target.clone()));
        let read = checksums_under(&target)?;
        assert_eq!(
            read, sums,
            "node {i}: files through the PV differ from the source"
        );

        let inline_id = format!("csi-inline-{i}-{suffix}");
        let target = node.target("pod-inline")?;
        let context: HashMap<String, String> = [
            ("dataset", DATASET),
            ("subPath", "/pinned"),
            ("csi.storage.k8s.io/ephemeral", "true"),
            ("csi.storage.k8s.io/pod.namespace", tenant.name()),
            ("csi.storage.k8s.io/pod.name", "inline-reader"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        node.csi_client
            .node_publish_volume(publish_request(&inline_id, &target, context))
            .await?;
        published.push((i, inline_id, target.clone()));
        let read = checksums_under(&target)?;
        let expected: BTreeMap<String, String> = sums
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("/pinned")
                    .map(|k| (k.to_string(), v.clone()))
            })
            .collect();
        assert_eq!(
            read, expected,
            "node {i}: inline volume with subPath /pinned"
        );

        // Another namespace's pod cannot name this dataset.
        let foreign = node.target("pod-foreign")?;
        let context: HashMap<String, String> = [
            ("dataset", format!("{}/{DATASET}", tenant.name())),
            ("csi.storage.k8s.io/ephemeral", "true".into()),
            ("csi.storage.k8s.io/pod.namespace", "intruder".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let refused = node
            .csi_client
            .node_publish_volume(publish_request("csi-foreign", &foreign, context))
            .await
            .expect_err("a pod of another namespace mounted the dataset");
        assert!(
            matches!(
                refused.code(),
                tonic::Code::PermissionDenied | tonic::Code::NotFound
            ),
            "{refused:?}"
        );
        // Nor through the PV's handle: a pod elsewhere that names it is refused too.
        let context = pod_volume_context(&csi_source, "intruder", "reader");
        let refused = node
            .csi_client
            .node_publish_volume(publish_request(
                &csi_source.volume_handle,
                &node.target("pod-foreign-pv")?,
                context,
            ))
            .await
            .expect_err("a pod of another namespace mounted the dataset's PV");
        assert!(
            matches!(
                refused.code(),
                tonic::Code::PermissionDenied | tonic::Code::NotFound
            ),
            "{refused:?}"
        );
        ensure!(
            mounts_under(&node.dir.join("kubelet/pods/pod-foreign"))?.is_empty()
                && mounts_under(&node.dir.join("kubelet/pods/pod-foreign-pv"))?.is_empty(),
            "a refused publish left a mount"
        );
        node.agent.check_running()?;
        node.csi.check_running()?;
    }
    step(
        6,
        "PV and inline volumes published on both nodes, every checksum equal",
    );

    // 6b. Node 1's agent is killed while its published volume is read: the read waits (the
    // holder keeps the mount), the agent started again takes the mount over and its volume
    // records, and the read finishes with every checksum right.
    {
        let node = &mut nodes[1];
        let target = published
            .iter()
            .find(|(i, _, _)| *i == 1)
            .map(|(_, _, t)| t.clone())
            .expect("node 1 published a volume");
        node.agent.child.kill()?;
        node.agent.child.wait()?;
        let reader = std::thread::spawn({
            let target = target.clone();
            move || checksums_under(&target).map_err(|e| format!("{e:#}"))
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        ensure!(
            !reader.is_finished(),
            "a read through the volume answered while no agent ran"
        );
        let mut agent = Process::spawn(
            "agent-1-restarted",
            &bins.join("strata-agent"),
            &node.agent_args,
            &[
                ("KUBECONFIG", &node.agent_kubeconfig),
                ("NODE_NAME", &node.name),
                ("STRATA_LOG", "debug"),
            ],
            &logs,
        )?;
        wait_for_socket(&node.dir.join("agent.sock"), &mut agent).await?;
        let read = tokio::task::spawn_blocking(move || reader.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the reader panicked"))?
            .map_err(|e| anyhow::anyhow!("reading across the agent's restart: {e}"))?;
        assert_eq!(read, sums, "node 1: files read across the agent's restart");
        let log = wait_until("the new agent to take the volume over", WAIT, || async {
            let log = std::fs::read_to_string(&agent.log)?;
            Ok::<_, std::io::Error>(log.contains("volume taken over").then_some(log))
        })
        .await?;
        ensure!(log.contains("took the mount over"), "{log}");
        node.agent = agent;
        node.csi.check_running()?;
    }
    step(
        6,
        "node 1's agent killed during a read of its published volume: the read waited, the restarted agent took the mount over, every checksum equal",
    );

    // 7. Pinned paths stay when the cache overflows its quota. A file that appears under the
    // pinned path after every read is fetched by the pin Job alone: nothing reads it before
    // S3 stops, and the agents' own re-evaluation waits a metadata TTL (1h here).
    let late = generated_bytes(99, (2 << 20) + 3);
    s3.put_object(BUCKET, "data/pinned/late.bin", &late)?;
    let pins = wait_until("the pin Job", WAIT, || async {
        Ok::<_, anyhow::Error>(jobs_of_kind(&jobs, "pin").await?.into_iter().next())
    })
    .await?;
    for node in &nodes {
        let args = job_args(&pins, node.ip, &job_token_file)?;
        let out = Command::new(bins.join("strata-agent"))
            .args(&args)
            .env("STRATA_LOG", "debug")
            .output()?;
        std::fs::write(
            logs.join(format!("pin-job-{}.log", node.name)),
            [out.stdout, out.stderr].concat(),
        )?;
        ensure!(
            out.status.success(),
            "pin job {args:?} failed on {}",
            node.name
        );
    }
    // The Dataset's status shows what the pin rule holds: its 3 files on both nodes.
    let pin_status = wait_until(
        "the pin rule's files in the Dataset status",
        WAIT,
        || async {
            let status = dataset_status(cluster, tenant.name(), DATASET).await?;
            let pins = status["pins"].clone();
            Ok::<_, anyhow::Error>(
                (pins[0]["paths"] == serde_json::json!(["/pinned/**"])
                    && pins[0]["nodes"] == 2
                    && pins[0]["files"] == 6)
                    .then_some(pins),
            )
        },
    )
    .await?;
    eprintln!("status.pins: {pin_status}");
    // Quota below the data: reading everything again must evict, and only unpinned blocks.
    Api::<strata_crds::CachePolicy>::namespaced(client.clone(), tenant.name())
        .patch(
            POLICY,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"quota": QUOTA_AFTER.to_string()}})),
        )
        .await?;
    for node in &nodes {
        let file = node.datasets_dir().join(&config_key);
        wait_until("the lowered quota on every node", WAIT, || async {
            let text = std::fs::read_to_string(&file)?;
            Ok::<_, std::io::Error>(
                text.contains(&format!("quota: {QUOTA_AFTER}"))
                    .then_some(()),
            )
        })
        .await?;
    }
    // Read through each agent's token-guarded API, as a peer would: unlike re-reading the
    // mount, this cannot be answered from the kernel's page cache.
    let token = std::fs::read_to_string(nodes[0].dir.join("peer/token"))?
        .trim()
        .to_string();
    let agents: Vec<AgentClient> = nodes
        .iter()
        .map(|n| {
            AgentClient::from_url(
                &format!("http://{}:{agent_port}", n.ip),
                Some(token.clone()),
            )
        })
        .collect::<std::result::Result<_, _>>()?;
    let anonymous = AgentClient::from_url(&format!("http://{}:{agent_port}", nodes[0].ip), None)?;
    let refused = anonymous
        .usage(tenant.name(), DATASET)
        .await
        .expect_err("the agent API answered a request without the token");
    ensure!(
        refused.status().map(|s| s.as_u16()) == Some(401),
        "{refused}"
    );
    for (i, agent) in agents.iter().enumerate() {
        for (path, (sum, _)) in &files {
            let bytes = agent.read(tenant.name(), DATASET, path).await?;
            ensure!(
                &sha256(&bytes) == sum,
                "node {i}: {path} read past the quota"
            );
        }
    }
    // Stops the server, so what still reads can only come from the caches.
    drop(s3);
    for (i, agent) in agents.iter().enumerate() {
        let bytes = agent
            .read(tenant.name(), DATASET, "/pinned/late.bin")
            .await
            .with_context(|| format!("node {i}: the pin Job did not fetch /pinned/late.bin"))?;
        ensure!(bytes == late, "node {i}: /pinned/late.bin");
        let mut unpinned_still_cached = 0u64;
        let mut unpinned_evicted = 0;
        for (path, (sum, size)) in &files {
            let read = agent.read(tenant.name(), DATASET, path).await;
            match (path.starts_with("/pinned/"), read) {
                (true, Ok(bytes)) => ensure!(&sha256(&bytes) == sum, "node {i}: pinned {path}"),
                (true, Err(e)) => bail!("node {i}: pinned {path} not cached: {e}"),
                (false, Ok(bytes)) => {
                    ensure!(&sha256(&bytes) == sum, "node {i}: {path}");
                    unpinned_still_cached += size;
                }
                (false, Err(_)) => unpinned_evicted += 1,
            }
        }
        // A file this node evicted may still be served by the other node's cache (the
        // cluster cache), so what still reads is bounded by both quotas together.
        ensure!(
            unpinned_evicted > 0 && unpinned_still_cached <= nodes.len() as u64 * QUOTA_AFTER,
            "node {i}: with S3 stopped, {unpinned_still_cached} unpinned bytes still read and \
             {unpinned_evicted} files not: the {QUOTA_AFTER}-byte quota was not enforced"
        );
        eprintln!(
            "node {i}: S3 stopped; pinned files all read, {unpinned_evicted} unpinned files \
             evicted, {unpinned_still_cached} unpinned bytes still cached"
        );
    }
    step(7, "past the quota, pinned paths still read with S3 stopped");

    // 7b. The peer token is rotated by writing the Secret: kubelet (here the sync loop) updates
    // the mounted file and the agents read it again; no restart.
    let rotated = hex_string(&Sha256::digest(format!("rotated-{suffix}").as_bytes()));
    secrets
        .patch(
            "strata-peer-token",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"token": base64(rotated.as_bytes())}})),
        )
        .await?;
    let rotated_at = Instant::now();
    let usage_target = format!("/v1/datasets/{}/{DATASET}/usage", tenant.name());
    for node in &nodes {
        let addr = format!("{}:{agent_port}", node.ip);
        wait_until("the old peer token to be refused", WAIT, || async {
            let (status, _) = raw_call(&addr, "GET", &usage_target, &token, "")?;
            Ok::<_, anyhow::Error>((status == 403).then_some(()))
        })
        .await?;
        let (status, answer) = raw_call(&addr, "GET", &usage_target, &rotated, "")?;
        ensure!(
            status == 200,
            "{}: the rotated peer token: {status} {answer}",
            node.name
        );
    }
    eprintln!(
        "peer token rotated: the old one refused on every node {:.1}s after the Secret changed",
        rotated_at.elapsed().as_secs_f64()
    );
    step(7, "peer token rotated without a restart");

    // 8. Pods go (kubelet unpublishes), the Dataset is deleted: caches, mounts, PV, PVC gone.
    for (i, id, target) in &published {
        nodes[*i]
            .csi_client
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: id.clone(),
                target_path: target.to_string_lossy().into(),
            })
            .await?;
    }
    Api::<Dataset>::namespaced(client.clone(), tenant.name())
        .delete(DATASET, &DeleteParams::default())
        .await?;
    wait_until("the Dataset to be gone", WAIT, || async {
        let found = Api::<Dataset>::namespaced(client.clone(), tenant.name())
            .get_opt(DATASET)
            .await?;
        Ok::<_, kube::Error>(found.is_none().then_some(()))
    })
    .await?;
    let pv_name = pv.metadata.name.clone().unwrap_or_default();
    wait_until("the PV and PVC to be removed", WAIT, || async {
        let pv = pvs.get_opt(&pv_name).await?;
        let pvc = tenant
            .api::<PersistentVolumeClaim>()
            .get_opt(DATASET)
            .await?;
        Ok::<_, kube::Error>((pv.is_none() && pvc.is_none()).then_some(()))
    })
    .await?;
    // A node that keeps the dataset is recorded and the credential check still runs; the test
    // fails at the end with everything that went wrong.
    let mut failures = Vec::new();
    for node in &nodes {
        let mounts = node.mount_root();
        let cache = node.cache_dir();
        let kubelet = node.dir.join("kubelet");
        let dropped = wait_until(
            "the node to drop the dataset's mounts and cache",
            WAIT,
            || async {
                let left = mounts_under(&mounts)?;
                let pods = mounts_under(&kubelet)?;
                let cached = cached_objects(&cache)?;
                Ok::<_, anyhow::Error>(
                    (left.is_empty() && pods.is_empty() && cached == 0).then_some(()),
                )
            },
        )
        .await;
        if let Err(e) = dropped {
            failures.push(format!(
                "step 8, {}: {e}: FUSE mounts {:?}, pod mounts {:?}, cached objects left {:?}",
                node.name,
                mounts_under(&mounts)?,
                mounts_under(&kubelet)?,
                cached_objects(&cache)?
            ));
        }
    }
    if failures.is_empty() {
        step(
            8,
            "Dataset deleted: caches dropped, mounts gone, PV and PVC removed",
        );
    }

    // No credential anywhere: process logs, API objects (Secrets are where they belong).
    let mut everything = String::new();
    for entry in std::fs::read_dir(&logs)? {
        everything.push_str(&std::fs::read_to_string(entry?.path()).unwrap_or_default());
    }
    // The chart's RBAC was enough: the API server refused the operator and the agents nothing.
    // Nor the admission policy that keeps each agent to its own StrataNode.
    if let Some(at) = everything
        .find("is forbidden: User")
        .or_else(|| everything.find("ValidatingAdmissionPolicy"))
    {
        bail!(
            "a component was refused by RBAC:\n{}",
            &everything[at.saturating_sub(300)..(at + 300).min(everything.len())]
        );
    }
    let kinds = cluster
        .kubectl(&["api-resources", "--verbs=list", "-o", "name"])
        .await?;
    let kinds: Vec<&str> = kinds.lines().filter(|k| *k != "secrets").collect();
    everything.push_str(
        &cluster
            .kubectl(&["get", &kinds.join(","), "--all-namespaces", "-o", "yaml"])
            .await?,
    );
    for credential in [&key_id, &secret_key] {
        let encoded = base64(credential.as_bytes());
        for form in [credential.as_str(), encoded.as_str()] {
            if let Some(at) = everything.find(form) {
                let start = at.saturating_sub(300);
                bail!(
                    "a test credential appears outside its Secret:\n...{}...",
                    &everything[start..(at + form.len() + 100).min(everything.len())]
                );
            }
        }
    }
    step(
        9,
        "no RBAC refusal in any log, no credential in any log or object",
    );

    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    // The tenant goes while the operator still runs (it finalizes what is left), then the rest.
    tenant.cleanup().await?;
    other.cleanup().await?;
    for node in &node_names {
        cluster.delete_node(node).await?;
    }
    sync.abort();
    drop(nodes);
    operator.terminate();
    cluster
        .helm(&["uninstall", &release, "-n", system.name(), "--wait"])
        .await?;
    system.cleanup().await?;
    std::fs::remove_dir_all(&run)?;
    Ok(())
}

/// Leaves nothing behind when the test fails half-way. Dropped after the nodes' processes (so
/// their FUSE mounts are gone) and before the operator's (which must still run to finalize the
/// Datasets): unmounts pod target paths left published, deletes the tenant's Datasets, strips
/// the finalizers of any that remain (so the namespace can go) and uninstalls the release (its
/// ClusterRoles outlive the namespace). Every step is idempotent, so it also runs harmlessly
/// after a passing test.
struct Teardown {
    cluster: &'static Cluster,
    run: PathBuf,
    tenants: Vec<String>,
    system: String,
    release: String,
    /// Node objects made for the agents' bound tokens.
    nodes: Vec<String>,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        // Deepest first, lazily: bind mounts of FUSE mounts whose agent is gone.
        let mut left = mounts_under(&self.run).unwrap_or_default();
        left.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in left {
            let _ = Command::new("umount").args(["-l", &mount]).status();
        }
        let kubectl = |args: &[&str]| {
            Command::new(self.cluster.bin("kubectl"))
                .args(args)
                .env("KUBECONFIG", self.cluster.kubeconfig())
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        for tenant in &self.tenants {
            let tenant = tenant.as_str();
            kubectl(&[
                "-n",
                tenant,
                "delete",
                "datasets,cachepolicies",
                "--all",
                "--timeout=20s",
            ]);
            for name in
                kubectl(&["-n", tenant, "get", "datasets,cachepolicies", "-o", "name"]).lines()
            {
                kubectl(&[
                    "-n",
                    tenant,
                    "patch",
                    name,
                    "--type=merge",
                    "-p",
                    r#"{"metadata":{"finalizers":null}}"#,
                ]);
            }
        }
        for node in &self.nodes {
            kubectl(&["delete", "node", node, "--ignore-not-found", "--wait=false"]);
        }
        let _ = Command::new(self.cluster.bin("helm"))
            .args([
                "uninstall",
                &self.release,
                "-n",
                &self.system,
                "--ignore-not-found",
            ])
            .env("KUBECONFIG", self.cluster.kubeconfig())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Cached object files (`<id>.data`) left under a node's cache directory.
fn cached_objects(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if entry.path().extension().is_some_and(|e| e == "data") {
                total += 1;
            }
        }
    }
    Ok(total)
}

/// One HTTP/1.1 request to an agent's TCP API with a bearer token: status and body.
fn raw_call(
    addr: &str,
    method: &str,
    target: &str,
    token: &str,
    body: &str,
) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "{method} {target} HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        token.trim(),
        body.len()
    )?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("{method} {target}: no HTTP status in {text:?}"))?;
    Ok((status, text))
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
