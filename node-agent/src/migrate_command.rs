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
use crate::{Error, Result};

/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(clap::Args, Debug, Clone)]
pub struct MigrateArgs {
    /// The migration as JSON or YAML: `from` and `to` (sources as in a dataset's agent
    /// config, credentials included), the `path` under `from` to copy (default all) and
    /// `concurrency` (objects at once, default 16).
    #[arg(long, env = "STRATA_MIGRATION_CONFIG")]
    pub config: PathBuf,
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

/// Runs the migration `args` names to the end.
pub async fn run(args: &MigrateArgs) -> Result<CopyProgress> {
    let cfg = MigrationConfig::read(&args.config)?;
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
