//! `strata-operator`: parses flags, sets up logging, runs one replica.

use anyhow::Context as _;
use clap::Parser;
use strata_operator::{Operator, OperatorConfig};

#[derive(Parser, Debug)]
#[command(
    name = "strata-operator",
    version,
    about = "Strata operator: Datasets and CachePolicies into agents, volumes and jobs"
)]
struct Cli {
    #[command(flatten)]
    config: OperatorConfig,
    /// Log filter (tracing env-filter syntax), e.g. `info,strata_operator=debug`.
    #[arg(long, env = "STRATA_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines.
    #[arg(long, env = "STRATA_LOG_JSON", default_value_t = false)]
    log_json: bool,
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log).context("--log")?;
    if cli.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let operator = Operator::new(client, cli.config).context("invalid settings")?;
    operator.run(shutdown_signal(), None).await?;
    Ok(())
}
