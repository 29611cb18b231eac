use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::process::Command;
use tokio::sync::OnceCell;

use crate::tool::{self, ToolOutput};
use crate::{Error, Result};

/// Lines of script output kept in an error message.
const OUTPUT_TAIL_LINES: usize = 40;

/// The local control plane, shared by every test in a process.
#[derive(Debug)]
pub struct Cluster {
    script: PathBuf,
    flavor: Flavor,
    /// Everything `cluster.sh paths` printed (KUBELET_DIR, NODE_NAME, ...).
    paths: BTreeMap<String, String>,
    kubeconfig: PathBuf,
    bin_dir: PathBuf,
    state_dir: PathBuf,
    api_server: String,
    k8s_version: String,
    helm_version: String,
}

// Holds the outcome of the one start attempt per process; a failure is kept as text so every
// later test fails fast with the same reason instead of retrying a 30-minute build.
static SHARED: OnceCell<std::result::Result<Cluster, String>> = OnceCell::const_new();
static WITH_NODE: OnceCell<std::result::Result<Cluster, String>> = OnceCell::const_new();

/// Which of the two local clusters: the node-less one most suites share, or the one with a
/// real node (kubelet + containerd) on the state dir and ports of `cluster/node-suite.env`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    ControlPlaneOnly,
    WithNode,
}

impl Cluster {
    /// Starts the control plane with `cluster.sh up` the first time it is called in a process
    /// (building the binaries if they are missing) and returns it; later calls, and runs while a
    /// cluster from an earlier `up` is still healthy, reuse it. The cluster is left running when
    /// the process exits so the next test run starts in a second; `cluster.sh down` stops it.
    ///
    /// This cluster has no node: these suites run the operator, agent and CSI plugin as local
    /// processes, and pods stay `Pending`.
    pub async fn shared() -> Result<&'static Cluster> {
        Self::once(&SHARED, Flavor::ControlPlaneOnly).await
    }

    /// Like [`Cluster::shared`], but a second cluster with a real node (containerd and a kubelet
    /// named `strata-node`) on its own state dir, ports and CIDRs (`e2e/cluster/node-suite.env`),
    /// so it runs beside the node-less one. `scripts/test.sh` stops both.
    pub async fn with_node() -> Result<&'static Cluster> {
        Self::once(&WITH_NODE, Flavor::WithNode).await
    }

    async fn once(
        cell: &'static OnceCell<std::result::Result<Cluster, String>>,
        flavor: Flavor,
    ) -> Result<&'static Cluster> {
        let outcome = cell
            .get_or_init(|| async move { Self::start(flavor).await.map_err(|e| e.to_string()) })
            .await;
        outcome.as_ref().map_err(|message| Error::ClusterScript {
            script: script_path(),
            action: "up".into(),
            status: "failed earlier in this test process".into(),
            output_tail: message.clone(),
        })
    }

    async fn start(flavor: Flavor) -> Result<Cluster> {
        let script = script_path();
        eprintln!(
            "strata-e2e: `{} up` (reuses a running cluster; the first run on a machine builds \
             Kubernetes from source, which takes a long while)",
            script.display()
        );
        run_script(&script, flavor, &["up"]).await?;
        let paths = parse_paths(&run_script(&script, flavor, &["paths"]).await?);
        let get = |key: &str| {
            paths.get(key).cloned().ok_or_else(|| Error::ClusterPaths {
                script: script.clone(),
                key: key.into(),
            })
        };
        Ok(Cluster {
            kubeconfig: get("KUBECONFIG")?.into(),
            bin_dir: get("BIN_DIR")?.into(),
            state_dir: get("STATE_DIR")?.into(),
            api_server: get("API_SERVER")?,
            k8s_version: get("K8S_VERSION")?,
            helm_version: get("HELM_VERSION")?,
            script,
            flavor,
            paths,
        })
    }

    /// Path of the admin kubeconfig (cluster-admin through the `system:masters` group).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Directory holding etcd, kube-*, kubectl, helm and csi-sanity.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Path of one of the built tools, e.g. `cluster.bin("csi-sanity")`.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// Directory with the control plane's logs (`logs/`), PKI and etcd data.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The `cluster.sh` this cluster was started with.
    pub fn script(&self) -> &Path {
        &self.script
    }

    /// A value `cluster.sh paths` printed, e.g. `KUBELET_DIR` or `NODE_NAME`.
    pub fn path(&self, key: &str) -> Result<&str> {
        self.paths
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| Error::ClusterPaths {
                script: self.script.clone(),
                key: key.into(),
            })
    }

    /// Loads an image tar (`scripts/image.sh`) into the node's containerd (`cluster.sh import`).
    pub async fn import_image(&self, tar: &Path) -> Result<()> {
        let tar = tar.display().to_string();
        run_script(&self.script, self.flavor, &["import", &tar]).await?;
        Ok(())
    }

    /// `https://127.0.0.1:<port>`.
    pub fn api_server(&self) -> &str {
        &self.api_server
    }

    /// The pinned Kubernetes release the binaries were built from, e.g. `v1.37.2`.
    pub fn k8s_version(&self) -> &str {
        &self.k8s_version
    }

    /// The pinned Helm release, e.g. `v3.22.0`.
    pub fn helm_version(&self) -> &str {
        &self.helm_version
    }

    /// A new admin client. Each call builds its own: a client's connection pool lives on the
    /// Tokio runtime that created it, and every `#[tokio::test]` has its own runtime.
    pub async fn client(&self) -> Result<kube::Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// Writes a kubeconfig to `path` that authenticates as ServiceAccount `namespace/name` with a
    /// one-hour token from the TokenRequest API, so a component under test can run with exactly
    /// the permissions its RBAC grants (e.g. the operator with the chart's ClusterRole).
    pub async fn write_service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        path: &Path,
    ) -> Result<()> {
        self.write_service_account_kubeconfig_valid_for(namespace, name, path, "1h")
            .await
    }

    /// [`Cluster::write_service_account_kubeconfig`] with a token valid for `duration` (a
    /// `kubectl create token --duration` value such as `24h`), for what outlives a test.
    pub async fn write_service_account_kubeconfig_valid_for(
        &self,
        namespace: &str,
        name: &str,
        path: &Path,
        duration: &str,
    ) -> Result<()> {
        let duration = format!("--duration={duration}");
        let token = self
            .kubectl(&["create", "token", name, "-n", namespace, &duration])
            .await?;
        self.write_token_kubeconfig(namespace, name, token.trim(), path)
    }

    /// Writes a kubeconfig for ServiceAccount `namespace/name` as a pod of that account on
    /// node `node` holds it: a Node object (created if missing, as a kubelet would register
    /// it), a Pod bound to it that tolerates its not-ready taints (nothing runs it), and a
    /// token bound to that Pod, valid for `duration` (`1h`, `24h`), which carries the node's
    /// name (the claim the agent's ValidatingAdmissionPolicy checks). Remove the node with
    /// [`Cluster::delete_node`].
    pub async fn write_node_bound_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        node: &str,
        path: &Path,
        duration: &str,
    ) -> Result<()> {
        let pod = format!("{name}-on-{node}");
        let pod = pod[..pod.len().min(63)]
            .trim_end_matches(['-', '.'])
            .to_string();
        let manifest = serde_json::json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                {"apiVersion": "v1", "kind": "Node", "metadata": {
                    "name": node, "labels": {"strata.dev/e2e-node": "true"}}},
                {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": namespace},
                 "spec": {
                    "nodeName": node,
                    "serviceAccountName": name,
                    "automountServiceAccountToken": false,
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "stand-in", "image": "strata:e2e-stand-in"}]}}
            ]
        });
        self.apply(&manifest.to_string()).await?;
        let token = self
            .kubectl(&[
                "create",
                "token",
                name,
                "-n",
                namespace,
                &format!("--duration={duration}"),
                "--bound-object-kind=Pod",
                &format!("--bound-object-name={pod}"),
            ])
            .await?;
        self.write_token_kubeconfig(namespace, name, token.trim(), path)
    }

    /// Deletes Node `name` (one [`Cluster::write_node_bound_kubeconfig`] made); no error when
    /// it is already gone.
    pub async fn delete_node(&self, name: &str) -> Result<()> {
        self.kubectl(&["delete", "node", name, "--ignore-not-found", "--wait=false"])
            .await
            .map(|_| ())
    }

    fn write_token_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        token: &str,
        path: &Path,
    ) -> Result<()> {
        let ca = self.state_dir.join("pki/ca.crt");
        let user = format!("{namespace}/{name}");
        // JSON is valid YAML, and serde_json quotes every value correctly.
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "strata-local", "cluster": {
                "server": self.api_server,
                "certificate-authority": ca,
            }}],
            "users": [{ "name": user, "user": { "token": token } }],
            "contexts": [{ "name": "strata-local", "context": {
                "cluster": "strata-local",
                "user": user,
                "namespace": namespace,
            }}],
            "current-context": "strata-local",
        });
        let write = || -> std::io::Result<()> {
            std::fs::write(path, kubeconfig.to_string())?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        };
        write().map_err(|source| Error::WriteFile {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Runs `kubectl args...` against this cluster and returns its stdout.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String> {
        Ok(self.run("kubectl", args, None).await?.stdout)
    }

    /// `kubectl apply --server-side -f -` with `manifest` (YAML or JSON, may hold several documents).
    pub async fn apply(&self, manifest: &str) -> Result<String> {
        let args = [
            "apply",
            "--server-side",
            "--field-manager=strata-e2e",
            "-f",
            "-",
        ];
        Ok(self
            .run("kubectl", &args, Some(manifest.as_bytes()))
            .await?
            .stdout)
    }

    /// Client-side `kubectl -n <namespace> apply -f -` with `manifest`, as a user applies files
    /// into their namespace; returns what the apply printed.
    pub async fn apply_in(&self, namespace: &str, manifest: &str) -> Result<ToolOutput> {
        let args = ["-n", namespace, "apply", "-f", "-"];
        self.run("kubectl", &args, Some(manifest.as_bytes())).await
    }

    /// Runs `helm args...` against this cluster and returns its stdout.
    pub async fn helm(&self, args: &[&str]) -> Result<String> {
        Ok(self.run("helm", args, None).await?.stdout)
    }

    /// Runs any tool from [`Cluster::bin_dir`] with `KUBECONFIG` set, optionally feeding stdin.
    pub async fn run(&self, tool: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<ToolOutput> {
        tool::run(&self.bin(tool), args, &self.kubeconfig, stdin).await
    }
}

/// A client for any kubeconfig file, e.g. one from
/// [`Cluster::write_service_account_kubeconfig`].
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
        path: path.to_path_buf(),
        source,
    })?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|source| Error::Kubeconfig {
            path: path.to_path_buf(),
            source,
        })?;
    kube::Client::try_from(config).map_err(|source| Error::Client {
        path: path.to_path_buf(),
        source,
    })
}

fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/cluster.sh")
}

/// The environment `cluster.sh` runs with for `flavor`.
fn script_env(flavor: Flavor) -> Vec<(String, String)> {
    match flavor {
        // The control plane only, no kubelet.
        Flavor::ControlPlaneOnly => vec![("STRATA_NODE".into(), "0".into())],
        Flavor::WithNode => node_suite_env(
            include_str!("../cluster/node-suite.env"),
            &std::env::var("HOME").unwrap_or_default(),
        ),
    }
}

/// `KEY=value` lines of `node-suite.env`, comments skipped, a leading `~/` made absolute.
fn node_suite_env(text: &str, home: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| {
            let value = match value.strip_prefix("~/") {
                Some(rest) => format!("{home}/{rest}"),
                None => value.to_string(),
            };
            (key.to_string(), value)
        })
        .collect()
}

async fn run_script(script: &Path, flavor: Flavor, args: &[&str]) -> Result<String> {
    let output = Command::new("bash")
        .arg(script)
        .args(args)
        .envs(script_env(flavor))
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| Error::Spawn {
            program: script.to_path_buf(),
            source,
        })?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let combined = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = combined.lines().collect();
    let tail = lines[lines.len().saturating_sub(OUTPUT_TAIL_LINES)..].join("\n");
    Err(Error::ClusterScript {
        script: script.to_path_buf(),
        action: args.join(" "),
        status: output.status.to_string(),
        output_tail: tail,
    })
}

fn parse_paths(output: &str) -> BTreeMap<String, String> {
    output
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_output_is_parsed_as_key_value_lines() {
        let paths = parse_paths("KUBECONFIG=/s/kubeconfig\nBIN_DIR=/c/bin\nnoise\n");
        assert_eq!(paths["KUBECONFIG"], "/s/kubeconfig");
        assert_eq!(paths["BIN_DIR"], "/c/bin");
        assert_eq!(paths.len(), 2);
    }

    #[test]
    fn node_suite_env_skips_comments_and_expands_home() {
        let env = node_suite_env(
            "# a comment\nSTRATA_STATE=~/s\nSTRATA_APISERVER_PORT=7443\n",
            "/h",
        );
        assert_eq!(
            env,
            vec![
                ("STRATA_STATE".to_string(), "/h/s".to_string()),
                ("STRATA_APISERVER_PORT".to_string(), "7443".to_string()),
            ]
        );
        // The real file moves every port the node-less cluster uses.
        let real = node_suite_env(include_str!("../cluster/node-suite.env"), "/h");
        for key in [
            "STRATA_STATE",
            "STRATA_APISERVER_PORT",
            "STRATA_KUBELET_PORT",
            "STRATA_SERVICE_CIDR",
        ] {
            assert!(
                real.iter().any(|(k, _)| k == key),
                "{key} missing from node-suite.env"
            );
        }
    }
}
