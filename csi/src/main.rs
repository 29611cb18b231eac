//! `strata-csi`: the CSI node plugin of Strata.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use strata_csi::{registration, server};
use strata_wire::api::client::AgentClient;

#[derive(Parser, Debug)]
#[command(
    name = "strata-csi",
    version,
    about = "CSI node plugin csi.strata.dev: mounts cached datasets into pods"
)]
struct Args {
    /// Where the plugin serves CSI (the kubelet reaches it at --kubelet-registration-path).
    #[arg(
        long,
        env = "STRATA_CSI_ENDPOINT",
        default_value = "unix:///csi/csi.sock"
    )]
    endpoint: String,
    /// This node's name (the Kubernetes node name, from the downward API).
    #[arg(long, env = "STRATA_NODE_ID")]
    node_id: String,
    /// The local agent's API socket.
    #[arg(
        long,
        env = "STRATA_AGENT_SOCKET",
        default_value = "/run/strata/agent.sock"
    )]
    agent_socket: PathBuf,
    /// The kubelet's plugin registration directory (`<kubelet dir>/plugins_registry`) as
    /// mounted here. When set, the plugin registers itself with the kubelet through a socket
    /// there (no node-driver-registrar sidecar); unset, it only serves CSI.
    #[arg(
        long,
        env = "STRATA_CSI_REGISTRATION_DIR",
        requires = "kubelet_registration_path"
    )]
    registration_dir: Option<PathBuf>,
    /// The CSI socket's path on the host, where the kubelet dials it, e.g.
    /// /var/lib/kubelet/plugins/csi.strata.dev/csi.sock.
    #[arg(long, env = "STRATA_CSI_KUBELET_REGISTRATION_PATH")]
    kubelet_registration_path: Option<String>,
    /// Log format.
    #[arg(long, env = "STRATA_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    anyhow::ensure!(!args.node_id.is_empty(), "--node-id must not be empty");

    let socket = server::socket_path(&args.endpoint)?;
    let listener = server::bind(&socket)?;
    let agent = AgentClient::unix(&args.agent_socket);
    tracing::info!(endpoint = %args.endpoint, node_id = %args.node_id, agent = %agent.endpoint(), "strata-csi serving");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    // Registration is served once the CSI socket listens: the kubelet calls NodeGetInfo on it
    // as soon as GetInfo has told it where it is.
    let registration = match (&args.registration_dir, args.kubelet_registration_path) {
        (Some(dir), Some(kubelet_endpoint)) => {
            let path = registration::socket_path(dir);
            let listener = server::bind(&path)?;
            tracing::info!(socket = %path.display(), %kubelet_endpoint, "serving kubelet plugin registration");
            let serving = server::serve_registration(
                listener,
                kubelet_endpoint,
                until_stopped(stopped.clone()),
            );
            Some((path, tokio::spawn(serving)))
        }
        _ => None,
    };
    server::serve(listener, args.node_id, agent, until_stopped(stopped))
        .await
        .context("serving CSI")?;
    // Removing the registration socket is how the kubelet learns the plugin is gone.
    if let Some((path, serving)) = registration {
        serving
            .await
            .context("kubelet registration task")?
            .context("serving kubelet registration")?;
        let _ = std::fs::remove_file(&path);
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
