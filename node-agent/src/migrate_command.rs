//! `strata-agent migrate --config FILE`: copies a path of one source to another (see
//! [`strata_engine::migrate`]), logging progress (objects, bytes, percent, rate, ETA).
//! Run it again after a kill to resume: what was copied is not copied again.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use strata_engine::metrics::Metrics;
use strata_engine::migrate::{CopyOptions, CopyProgress, copy_tree};
use strata_engine::source::Source;

use crate::config::SourceConfig;
use crate::http::client::{AgentClient, ClientError, read_token_file};
use crate::http::types::MigrationProgress;
use crate::{Error, Result};
use std::io::Write;

/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How long to wait before asking an agent again.
const ASK_AGAIN: Duration = Duration::from_secs(2);

#[derive(clap::Args, Debug, Clone)]
pub struct MigrateArgs {
    /// Run the copy here: the migration as JSON or YAML: `from` and `to` (sources as in a
    /// dataset's agent config, credentials included), the `path` under `from` to copy
    /// (default all) and `concurrency` (objects at once, default 16).
    #[arg(
        long,
        env = "STRATA_MIGRATION_CONFIG",
        conflicts_with = "migration",
        required_unless_present = "migration"
    )]
    pub config: Option<PathBuf>,
    /// Ask a running agent to run the dataset's migration of this name (what a Migration's
    /// Job does; the operator hands the migration to the agents with the dataset).
    #[arg(long, env = "STRATA_MIGRATION", requires_all = ["agent", "dataset"])]
    pub migration: Option<String>,
    /// With --migration: the agent, unix:///run/strata/agent.sock or http://HOST:7070.
    #[arg(long, env = "STRATA_AGENT_URL")]
    pub agent: Option<String>,
    /// With --migration: bearer token file for an http:// agent.
    #[arg(long, env = "STRATA_AGENT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// With --migration: the dataset, as NAMESPACE/NAME.
    #[arg(long, env = "STRATA_DATASET")]
    pub dataset: Option<String>,
    /// With --migration: the Kubernetes Job running this command; the agent reports the
    /// run's progress under it.
    #[arg(long = "job", env = "STRATA_JOB_NAME")]
    pub job_name: Option<String>,
    /// With --migration: how long to keep asking while the agent is away (restarting) or
    /// does not know the migration yet, before failing. Each new run resumes the copy.
    #[arg(long, env = "STRATA_AGENT_WAIT", default_value = "10m",
          value_parser = crate::cli_values::parse_duration)]
    pub agent_wait: Duration,
}

/// The migration a config file describes.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MigrationConfig {
    pub from: SourceConfig,
    pub to: SourceConfig,
    #[serde(default)]
    pub path: String,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

fn default_concurrency() -> usize {
    16
}

impl MigrationConfig {
    /// Reads and checks a config file; errors name the file and the field.
    pub fn read(path: &std::path::Path) -> Result<Self> {
        let invalid = |field: &str, message: String| Error::InvalidInput {
            field: format!("--config {} {field}", path.display()),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| invalid("", e.to_string()))?;
        let cfg: MigrationConfig =
            serde_yaml::from_str(&text).map_err(|e| invalid("", e.to_string()))?;
        if cfg.concurrency == 0 {
            return Err(invalid("concurrency", "must be at least 1".into()));
        }
        Ok(cfg)
    }
}

/// One line of progress, as the log and a Job's output show it.
pub fn progress_line(p: &CopyProgress) -> String {
    let eta = p
        .eta()
        .map(|d| format!(", ETA {}s", d.as_secs()))
        .unwrap_or_default();
    format!(
        "migrate: {}/{} objects ({} already there), {}/{} bytes, {:.1}%, {:.1} MB/s{eta}",
        p.objects_done,
        p.objects_total,
        p.objects_skipped,
        p.bytes_done,
        p.bytes_total,
        p.percent(),
        p.rate() / 1e6
    )
}

/// Runs the migration `args` names to the end: here, or on the agent `--agent` names.
pub async fn run(args: &MigrateArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    match (&args.migration, &args.config) {
        (Some(migration), _) => run_on_agent(args, migration, out).await.map(|_| ()),
        (None, Some(config)) => run_here(config).await.map(|_| ()),
        (None, None) => Err(Error::invalid(
            "config",
            "give --config FILE (copy here) or --migration NAME --agent URL --dataset NS/NAME",
        )),
    }
}

/// Asks the agent to run the dataset's migration and prints its progress, asking again
/// while the agent is away (it restarts) or does not know the migration yet (the
/// kubelet refreshes the agents' config Secret within about a minute). Every run
/// resumes: what was copied is not copied again.
pub async fn run_on_agent(
    args: &MigrateArgs,
    migration: &str,
    out: &mut (dyn Write + Send),
) -> Result<MigrationProgress> {
    let dataset = args.dataset.as_deref().unwrap_or_default();
    let (ns, name) = dataset
        .split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
        .ok_or_else(|| Error::invalid("dataset", format!("{dataset:?} is not NAMESPACE/NAME")))?;
    let url = args.agent.as_deref().unwrap_or_default();
    let token = match &args.token_file {
        Some(file) => Some(
            read_token_file(file)
                .map_err(|e| Error::io(format!("reading --token-file {}", file.display()), e))?,
        ),
        None if url.starts_with("http://") => {
            return Err(Error::invalid(
                "token-file",
                format!("{url} needs --token-file with a bearer token the agent accepts"),
            ));
        }
        None => None,
    };
    let started = Instant::now();
    loop {
        let client = AgentClient::from_url(url, token.clone())?
            .with_timeout(Duration::from_secs(60))
            .with_job(args.job_name.clone());
        let mut last_line = Instant::now() - PROGRESS_EVERY;
        let result = client
            .migrate(ns, name, migration, |p| {
                if last_line.elapsed() >= PROGRESS_EVERY {
                    last_line = Instant::now();
                    let _ = writeln!(out, "{}", progress_line(&from_api(p)));
                    let _ = out.flush();
                }
            })
            .await;
        match result {
            Ok(done) => {
                let _ = writeln!(out, "{}", progress_line(&from_api(&done)));
                return Ok(done);
            }
            Err(e) if worth_asking_again(&e) && started.elapsed() < args.agent_wait => {
                let _ = writeln!(
                    out,
                    "migrate {dataset} {migration} on {url}: {e}; asking again in {}s \
                     (the copy resumes where it stopped)",
                    ASK_AGAIN.as_secs()
                );
                let _ = out.flush();
                tokio::time::sleep(ASK_AGAIN).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Errors a later request may not meet: the agent away or restarting, its stream cut,
/// the dataset or the migration not handed to it yet.
fn worth_asking_again(e: &ClientError) -> bool {
    if e.is_unreachable() {
        return true;
    }
    match e {
        ClientError::Status { status, field, .. } => {
            status.as_u16() == 502
                || status.as_u16() == 503
                || (status.as_u16() == 404 && field.as_deref() == Some("name"))
                || (status.as_u16() == 400 && field.as_deref() == Some("migration"))
        }
        _ => false,
    }
}

fn from_api(p: &MigrationProgress) -> CopyProgress {
    CopyProgress {
        objects_total: p.objects_total,
        objects_done: p.objects_done,
        objects_skipped: p.objects_skipped,
        bytes_total: p.bytes_total,
        bytes_done: p.bytes_done,
        bytes_copied: p.bytes_copied,
        elapsed_seconds: p.elapsed_seconds,
    }
}

/// Runs the copy of a config file in this process.
async fn run_here(config: &std::path::Path) -> Result<CopyProgress> {
    let cfg = MigrationConfig::read(config)?;
    let metrics = Arc::new(Metrics::new());
    let from = Arc::new(Source::new(&cfg.from, "migration", metrics.clone())?);
    let to = Arc::new(Source::new(&cfg.to, "migration", metrics)?);
    let last = Mutex::new(Instant::now() - PROGRESS_EVERY);
    let done = copy_tree(
        &from,
        &to,
        cfg.path.trim_matches('/'),
        &CopyOptions {
            concurrency: cfg.concurrency,
        },
        |p| {
            let mut last = last.lock().expect("progress");
            if last.elapsed() >= PROGRESS_EVERY {
                *last = Instant::now();
                println!("{}", progress_line(p));
            }
        },
    )
    .await?;
    println!("{}", progress_line(&done));
    Ok(done)
}
