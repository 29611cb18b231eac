use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while preparing or talking to the test cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "`{script} {action}` failed ({status}); last output:\n{output_tail}\n\
         Run `{script} {action}` by hand to see the whole output; logs are in the state dir \
         (`{script} paths` prints it)."
    )]
    ClusterScript {
        script: PathBuf,
        action: String,
        status: String,
        output_tail: String,
    },

    #[error("`{script} paths` printed no {key}= line; is the script from this checkout?")]
    ClusterPaths { script: PathBuf, key: String },

    #[error("could not start {program}: {source}; run `e2e/cluster/cluster.sh build` to build it")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("`{command}` failed ({status})\nstderr:\n{stderr}\nstdout:\n{stdout}")]
    CommandFailed {
        command: String,
        status: String,
        stdout: String,
        stderr: String,
    },

    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },

    #[error("building a Kubernetes client from {path}: {source}")]
    Client {
        path: PathBuf,
        #[source]
        source: kube::Error,
    },

    #[error("writing {path}: {source}")]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("Kubernetes API request failed: {0}")]
    Api(#[from] kube::Error),

    #[error("locating the test binary: {0}")]
    CurrentExe(#[source] std::io::Error),

    #[error("test binary {} is not in <target>/<profile>/deps", .exe.display())]
    NotInProfileDir { exe: PathBuf },

    #[error("no target directory above the profile directory")]
    NoTargetDir,

    #[error("profile directory {} has no name", .0.display())]
    ProfileDirName(PathBuf),

    #[error("running {cargo} build: {source}")]
    CargoSpawn {
        cargo: String,
        #[source]
        source: std::io::Error,
    },

    #[error("cargo build of {packages:?} failed: {status}")]
    CargoBuild {
        packages: Vec<String>,
        status: String,
    },

    #[error("connecting to the CSI plugin on {}: {source}", .socket.display())]
    CsiConnect {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },

    #[error("{what} without a pod spec")]
    NoPodSpec { what: String },

    #[error("{owner} has no container {container}")]
    NoContainer { owner: String, container: String },

    #[error("{what} runs {command:?}, not {expected}")]
    UnexpectedCommand {
        what: String,
        command: Option<Vec<String>>,
        expected: String,
    },

    #[error("{action} {}: {source}", .path.display())]
    Filesystem {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("parsing the output of `{what}`: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("timed out after {timeout:?} waiting for {what}{}", last.as_ref().map(|l| format!("; last seen: {l}")).unwrap_or_default())]
    Timeout {
        what: String,
        timeout: Duration,
        last: Option<String>,
    },

    #[error("S3 server (moto_server, `pip install 'moto[server]'`): {0}")]
    S3(String),

    #[error("node network (bridge, namespaces): {0}")]
    NodeNet(String),

    #[error("delaying proxy: {0}")]
    Proxy(String),

    #[error("agent {node}: {detail}")]
    NodeAgent { node: String, detail: String },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
