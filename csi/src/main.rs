//! `strata-csi`: the CSI node plugin of Strata.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use strata_csi::server;
use strata_wire::api::client::AgentClient;

#[derive(Parser, Debug)]
#[command(
    name = "strata-csi",
    version,
    about = "CSI node plugin csi.strata.dev: mounts cached datasets into pods"
)]
struct Args {
    /// Where kubelet (through node-driver-registrar) reaches the plugin.
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
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    server::serve(listener, args.node_id, agent, shutdown)
        .await
        .context("serving CSI")?;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
