//! The chart's workloads run as local processes (there is no kubelet): the operator with its
//! Deployment's flags, a node's agent and CSI plugin with the DaemonSet's flags mapped onto a
//! local directory, a Job's command, and the Secret volumes those pods mount.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, PersistentVolume, PodSpec, Secret};
use kube::Api;
use kube::api::ListParams;

use crate::{Cluster, Error, Result, wait_until};

/// The operator Deployment's container args for a local process: the metrics endpoint moved to
/// `127.0.0.1:<metrics_port>` and `$(POD_NAME)` (the leader-election identity) set to
/// `<operator_name>-local`.
pub fn operator_args(
    deployment: &Deployment,
    operator_name: &str,
    metrics_port: u16,
) -> Result<Vec<String>> {
    let pod = deployment
        .spec
        .template
        .spec
        .as_ref()
        .ok_or_else(|| Error::NoPodSpec {
            what: "operator Deployment".into(),
        })?;
    Ok(first_container("operator Deployment", pod)?
        .args
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|a| {
            if a.starts_with("--metrics-addr=") {
                format!("--metrics-addr=127.0.0.1:{metrics_port}")
            } else {
                a.replace("$(POD_NAME)", &format!("{operator_name}-local"))
            }
        })
        .collect())
}

/// A simulated node: its directory stands in for the host paths and Secret volumes the node
/// DaemonSet's pod mounts, its loopback address for the host's, where the agent API listens on
/// the chart's `agentPort`.
#[derive(Debug, Clone)]
pub struct LocalNode {
    pub name: String,
    pub ip: String,
    pub dir: PathBuf,
    pub agent_port: u16,
}

impl LocalNode {
    /// `sub` under the node's directory, as a string for a command line.
    fn path(&self, sub: &str) -> String {
        self.dir.join(sub).to_string_lossy().into_owned()
    }

    /// The args of the DaemonSet's `container` (`agent`, `csi` or `holder`), after checking it runs the
    /// binary run in its place, with the pod's paths mapped into this node's directory (the
    /// hostPath and Secret volumes) and its environment expanded.
    pub fn container_args(&self, daemon_set: &DaemonSet, container: &str) -> Result<Vec<String>> {
        let daemon_set_name = daemon_set.metadata.name.clone().unwrap_or_default();
        let pod = daemon_set
            .spec
            .template
            .spec
            .as_ref()
            .ok_or_else(|| Error::NoPodSpec {
                what: format!("DaemonSet {daemon_set_name}"),
            })?;
        let c = pod
            .containers
            .iter()
            .find(|c| c.name == container)
            .ok_or_else(|| Error::NoContainer {
                owner: format!("DaemonSet {daemon_set_name}"),
                container: container.into(),
            })?;
        let binary = match container {
            "agent" => "strata-agent",
            "holder" => "strata-holder",
            _ => "strata-csi",
        };
        check_command(&format!("container {container}"), c, binary)?;
        let agent_port = self.agent_port;
        let pod_paths = [
            ("/etc/strata/datasets", self.path("datasets")),
            ("/var/run/strata/peer", self.path("peer")),
            ("/run/strata/agent.sock", self.path("agent.sock")),
            ("/run/strata/holder.sock", self.path("holder.sock")),
            ("/var/lib/strata/mounts", self.path("mounts")),
            ("/var/cache/strata", self.path("cache")),
            (
                "unix:///csi/csi.sock",
                format!("unix://{}", self.path("csi.sock")),
            ),
            ("$(NODE_NAME)", self.name.clone()),
            ("$(POD_IP)", self.ip.clone()),
            (
                &format!("0.0.0.0:{agent_port}"),
                format!("{}:{agent_port}", self.ip),
            ),
        ];
        Ok(c.args
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|mut arg| {
                for (pod_path, local) in &pod_paths {
                    arg = arg.replace(pod_path, local);
                }
                arg
            })
            .collect())
    }

    /// The agent container's args, plus quick pacing (datasets rescan 1 s, status every 2 s).
    pub fn agent_args(&self, daemon_set: &DaemonSet) -> Result<Vec<String>> {
        let mut args = self.container_args(daemon_set, "agent")?;
        args.extend([
            "--datasets-rescan".into(),
            "1s".into(),
            "--status-interval".into(),
            "2s".into(),
        ]);
        Ok(args)
    }
}

/// The Job's one container's args, with the Job's pod environment applied: the node's IP and
/// the pod's projected ServiceAccount token (at `token_file` here).
pub fn job_args(job: &Job, node_ip: &str, token_file: &Path) -> Result<Vec<String>> {
    let (owner, spec) = job_pod_spec(job)?;
    let container = first_container(&owner, spec)?;
    check_command("Job", container, "strata-agent")?;
    let token = token_file.to_string_lossy();
    Ok(container
        .args
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|a| {
            a.replace("$(STRATA_NODE_IP)", node_ip)
                .replace("/var/run/strata/token", &token)
        })
        .collect())
}

/// The credential a pod of `job` would find at its token path: a token of the pod's
/// ServiceAccount (`default` unless the Job names one) for the audience of the Job's projected
/// ServiceAccount token volume, from the TokenRequest API, as kubelet gets it.
pub async fn job_token(cluster: &Cluster, job: &Job) -> Result<String> {
    let (owner, spec) = job_pod_spec(job)?;
    let audience = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .find_map(|s| s.service_account_token.as_ref()?.audience.clone())
        .ok_or_else(|| Error::NoContainer {
            owner: owner.clone(),
            container: "projected ServiceAccount token volume".into(),
        })?;
    let account = spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    let namespace = job.metadata.namespace.clone().unwrap_or_default();
    // The controller-manager creates a namespace's `default` account shortly after it.
    wait_until(
        "the Job's ServiceAccount",
        Duration::from_secs(60),
        || async {
            Ok::<_, Error>(
                cluster
                    .kubectl(&["-n", &namespace, "get", "serviceaccount", &account])
                    .await
                    .ok()
                    .map(|_| ()),
            )
        },
    )
    .await?;
    let token = cluster
        .kubectl(&[
            "-n",
            &namespace,
            "create",
            "token",
            &account,
            "--audience",
            &audience,
            "--duration=1h",
        ])
        .await?;
    Ok(token.trim().to_string())
}

/// A Job's name (for errors) and its pod template's spec.
fn job_pod_spec(job: &Job) -> Result<(String, &PodSpec)> {
    let owner = format!("Job {}", job.metadata.name.clone().unwrap_or_default());
    let spec = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .ok_or_else(|| Error::NoPodSpec {
            what: owner.clone(),
        })?;
    Ok((owner, spec))
}

fn first_container<'a>(owner: &str, spec: &'a PodSpec) -> Result<&'a Container> {
    spec.containers.first().ok_or_else(|| Error::NoContainer {
        owner: owner.into(),
        container: "at all".into(),
    })
}

fn check_command(what: &str, container: &Container, binary: &str) -> Result<()> {
    if container.command.as_deref() == Some(&[binary.to_string()][..]) {
        return Ok(());
    }
    Err(Error::UnexpectedCommand {
        what: what.into(),
        command: container.command.clone(),
        expected: binary.into(),
    })
}

/// The Jobs the operator created in `api`'s namespace with label `strata.dev/job-kind=<kind>`.
pub async fn jobs_of_kind(api: &Api<Job>, kind: &str) -> Result<Vec<Job>> {
    Ok(api
        .list(&ListParams::default().labels(&format!("strata.dev/job-kind={kind}")))
        .await?
        .items)
}

/// Waits for the operator's Job of `kind` (`preload`, `pin`) for the Dataset named `dataset`
/// in the namespace of `jobs`.
pub async fn wait_for_dataset_job(
    jobs: &Api<Job>,
    kind: &str,
    dataset: &str,
    timeout: Duration,
) -> Result<Job> {
    wait_until(&format!("the {kind} Job of {dataset}"), timeout, || async {
        Ok::<_, Error>(jobs_of_kind(jobs, kind).await?.into_iter().find(|j| {
            j.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("strata.dev/dataset"))
                .is_some_and(|d| d == dataset)
        }))
    })
    .await
}

/// Writes the keys of `secret` as files into `dir`, as kubelet does for a Secret volume: a new
/// file appears whole (written into `staging` and renamed), a removed key disappears.
pub fn sync_secret_to_dir(secret: &Secret, dir: &Path, staging: &Path) -> Result<()> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Filesystem {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    std::fs::create_dir_all(staging).map_err(io("creating", staging))?;
    let data = secret.data.clone().unwrap_or_default();
    for (key, value) in &data {
        let path = dir.join(key);
        if std::fs::read(&path).ok().as_deref() == Some(value.0.as_slice()) {
            continue;
        }
        let temporary = staging.join(key);
        std::fs::write(&temporary, &value.0).map_err(io("writing", &temporary))?;
        std::fs::rename(&temporary, &path).map_err(io("renaming into", &path))?;
    }
    for entry in std::fs::read_dir(dir).map_err(io("listing", dir))? {
        let entry = entry.map_err(io("listing", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !data.contains_key(&name) {
            std::fs::remove_file(entry.path()).map_err(io("removing", &entry.path()))?;
        }
    }
    Ok(())
}

/// The `.status` of Dataset `namespace/name`, as `kubectl get -o json` shows it.
pub async fn dataset_status(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
) -> Result<serde_json::Value> {
    let out = cluster
        .kubectl(&["-n", namespace, "get", "dataset", name, "-o", "json"])
        .await?;
    let value: serde_json::Value = serde_json::from_str(&out).map_err(|source| Error::Json {
        what: format!("kubectl get dataset {namespace}/{name} -o json"),
        source,
    })?;
    Ok(value["status"].clone())
}

/// Waits for the PersistentVolume the operator creates for Dataset `namespace/name`.
pub async fn wait_for_dataset_pv(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<PersistentVolume> {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let selector = format!("strata.dev/dataset={name},strata.dev/dataset-namespace={namespace}");
    wait_until("the Dataset's PersistentVolume", timeout, || async {
        let list = pvs.list(&ListParams::default().labels(&selector)).await?;
        Ok::<_, kube::Error>(list.items.into_iter().next())
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    fn secret(data: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn a_secret_volume_follows_its_secret() {
        let root = tempfile::tempdir().unwrap();
        let (dir, staging) = (root.path().join("token"), root.path().join(".staging"));
        sync_secret_to_dir(&secret(&[("token", "one"), ("old", "x")]), &dir, &staging).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("token")).unwrap(), "one");
        sync_secret_to_dir(&secret(&[("token", "two")]), &dir, &staging).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("token")).unwrap(), "two");
        assert!(!dir.join("old").exists(), "a removed key stays as a file");
    }

    fn daemon_set(command: &str, args: &[&str]) -> DaemonSet {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "strata-node"},
            "spec": {
                "selector": {},
                "template": {"spec": {"containers": [{
                    "name": "agent",
                    "command": [command],
                    "args": args,
                }]}}
            }
        }))
        .unwrap()
    }

    #[test]
    fn node_args_map_the_pods_paths_onto_the_node_dir() {
        let node = LocalNode {
            name: "n1".into(),
            ip: "127.0.0.2".into(),
            dir: PathBuf::from("/nodes/n1"),
            agent_port: 7070,
        };
        let ds = daemon_set(
            "strata-agent",
            &[
                "--datasets=/etc/strata/datasets",
                "--listen=0.0.0.0:7070",
                "--node=$(NODE_NAME)",
                "--advertise-url=http://$(POD_IP):7070",
            ],
        );
        assert_eq!(
            node.agent_args(&ds).unwrap(),
            [
                "--datasets=/nodes/n1/datasets",
                "--listen=127.0.0.2:7070",
                "--node=n1",
                "--advertise-url=http://127.0.0.2:7070",
                "--datasets-rescan",
                "1s",
                "--status-interval",
                "2s",
            ]
        );
        let wrong = daemon_set("sh", &[]);
        let err = node
            .container_args(&wrong, "agent")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not strata-agent"), "{err}");
        let err = node.container_args(&ds, "csi").unwrap_err().to_string();
        assert_eq!(err, "DaemonSet strata-node has no container csi");
    }
}
