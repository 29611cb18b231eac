//! `strata-agent preload|pin|unpin --agent URL ...`: the commands that the
//! operator's preload and pin Jobs run against a node's agent, and the
//! agent's record of those runs (and of failed source reads) that its
//! StrataNode report carries to the operator.

use super::client::{AgentClient, read_token_file};
use super::error::{ApiError, Result};
use super::types::PreloadProgress;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Runs kept per dataset (the newest; one per Job name).
pub const MAX_RUNS_PER_DATASET: usize = 8;
/// Longest error message kept (the report is a Kubernetes object; keep it small).
const MAX_MESSAGE_CHARS: usize = 1024;

/// Where a preload or pin run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunPhase {
    Running,
    Succeeded,
    Failed,
}

/// One preload (or the fetch of a pin) that a Job asked this agent for.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRunRecord {
    /// Name of the Kubernetes Job (sent by `strata-agent preload|pin --job`).
    pub job: String,
    pub phase: RunPhase,
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub started: SystemTime,
    pub finished: Option<SystemTime>,
    /// Why it failed (scrubbed of credentials).
    pub message: Option<String>,
    id: u64,
}

/// The last failed read or listing of one of a dataset's sources.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceErrorRecord {
    /// What failed, scrubbed of credentials and signed URLs.
    pub message: String,
    pub time: SystemTime,
}

/// What the board holds about one dataset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DatasetActivity {
    /// Newest first.
    pub runs: Vec<JobRunRecord>,
    pub last_error: Option<SourceErrorRecord>,
}

/// Per dataset: the preload/pin runs this agent executed for Jobs and the last
/// source error it met. The API server writes it; the StrataNode reporter reads it.
#[derive(Debug, Default)]
pub struct ActivityBoard {
    datasets: Mutex<BTreeMap<(String, String), DatasetActivity>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// A run in progress on the board; dropped without [`RunHandle::finish`] it counts as failed.
#[derive(Debug)]
pub struct RunHandle {
    board: Arc<ActivityBoard>,
    key: (String, String),
    id: u64,
    finished: bool,
}

/// A message as it may appear in a report: scrubbed, on one line, bounded.
fn report_message(text: &str) -> String {
    let text = crate::source::scrub(text, &[]).replace('\n', " ");
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

impl ActivityBoard {
    fn with<T>(&self, ns: &str, name: &str, f: impl FnOnce(&mut DatasetActivity) -> T) -> T {
        let mut datasets = self.datasets.lock().expect("activity board");
        f(datasets
            .entry((ns.to_string(), name.to_string()))
            .or_default())
    }

    /// Records the start of a run for `job`; it replaces an earlier run of the same Job.
    pub fn start_run(self: &Arc<Self>, ns: &str, name: &str, job: &str) -> RunHandle {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.with(ns, name, |a| {
            a.runs.retain(|r| r.job != job);
            a.runs.insert(
                0,
                JobRunRecord {
                    job: job.to_string(),
                    phase: RunPhase::Running,
                    files_done: 0,
                    files_total: 0,
                    bytes_done: 0,
                    bytes_total: 0,
                    started: SystemTime::now(),
                    finished: None,
                    message: None,
                    id,
                },
            );
            a.runs.truncate(MAX_RUNS_PER_DATASET);
        });
        RunHandle {
            board: self.clone(),
            key: (ns.to_string(), name.to_string()),
            id,
            finished: false,
        }
    }

    /// Records a failed read or listing of one of the dataset's sources.
    pub fn source_failed(&self, ns: &str, name: &str, message: &str) {
        let record = SourceErrorRecord {
            message: report_message(message),
            time: SystemTime::now(),
        };
        self.with(ns, name, |a| a.last_error = Some(record));
    }

    /// The sources answered at `at`: an error recorded before then is over.
    pub fn sources_ok(&self, ns: &str, name: &str, at: SystemTime) {
        self.with(ns, name, |a| {
            if a.last_error.as_ref().is_some_and(|e| e.time <= at) {
                a.last_error = None;
            }
        });
    }

    /// What the board holds about a dataset (empty when nothing happened).
    pub fn snapshot(&self, ns: &str, name: &str) -> DatasetActivity {
        self.datasets
            .lock()
            .expect("activity board")
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// Forgets datasets the agent no longer serves.
    pub fn retain(&self, mut keep: impl FnMut(&str, &str) -> bool) {
        self.datasets
            .lock()
            .expect("activity board")
            .retain(|(ns, name), _| keep(ns, name));
    }
}

impl RunHandle {
    fn update(&self, f: impl FnOnce(&mut JobRunRecord)) {
        let (ns, name) = &self.key;
        self.board.with(ns, name, |a| {
            if let Some(run) = a.runs.iter_mut().find(|r| r.id == self.id) {
                f(run);
            }
        });
    }

    /// Records the progress so far.
    pub fn progress(&self, p: &PreloadProgress) {
        self.update(|run| {
            run.files_done = p.files_done;
            run.files_total = p.files_total;
            run.bytes_done = p.bytes_done;
            run.bytes_total = p.bytes_total;
        });
    }

    /// Records the end: `error` is None for a run that fetched everything.
    pub fn finish(mut self, last: &PreloadProgress, error: Option<&str>) {
        self.progress(last);
        self.close(error.map(report_message));
    }

    fn close(&mut self, message: Option<String>) {
        self.finished = true;
        self.update(|run| {
            run.phase = if message.is_some() {
                RunPhase::Failed
            } else {
                RunPhase::Succeeded
            };
            run.finished = Some(SystemTime::now());
            run.message = message;
        });
    }
}

impl Drop for RunHandle {
    fn drop(&mut self) {
        if !self.finished {
            self.close(Some(
                "the agent stopped tracking the run before it ended".into(),
            ));
        }
    }
}

/// Flags shared by the job commands.
#[derive(clap::Args, Debug, Clone)]
pub struct JobArgs {
    /// Agent(s) to ask: unix:///run/strata/agent.sock or http://HOST:7070 (comma separated for several nodes).
    #[arg(
        long,
        env = "STRATA_AGENT_URL",
        value_delimiter = ',',
        default_value = "unix:///run/strata/agent.sock"
    )]
    pub agent: Vec<String>,
    /// Bearer token file for http:// agents.
    #[arg(long, env = "STRATA_AGENT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The dataset, as NAMESPACE/NAME.
    #[arg(long, env = "STRATA_DATASET")]
    pub dataset: String,
    /// Path globs inside the dataset, e.g. /train/** (comma separated or repeated).
    #[arg(long, env = "STRATA_PATHS", value_delimiter = ',', num_args = 1.., required = true)]
    pub paths: Vec<String>,
    /// Name of the Kubernetes Job running this command (the operator's Jobs set it from
    /// the pod's job-name label); the agent reports the run's progress under it.
    #[arg(long = "job", env = "STRATA_JOB_NAME")]
    pub job_name: Option<String>,
}

/// `strata-agent preload --agent ...`.
#[derive(clap::Args, Debug, Clone)]
pub struct PreloadJobArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Block fetches the agent keeps in flight for this preload, over all its files, 1 to
    /// 64 (the CachePolicy rule's `concurrency`). Over a high-latency link a preload needs
    /// dozens in flight to fill it; lower it to spare the source.
    #[arg(long, env = "STRATA_CONCURRENCY", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub concurrency: u32,
}

/// `strata-agent pin|unpin --agent ...`.
#[derive(clap::Args, Debug, Clone)]
pub struct PinJobArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Copies across nodes (a number or All). The operator runs one Job per node for
    /// All; each Job pins on the agent it is given.
    #[arg(long, env = "STRATA_REPLICAS", default_value = "1")]
    pub replicas: String,
    /// Pin only files modified within this long (e.g. 14d), each by its exact path.
    #[arg(long, env = "STRATA_MODIFIED_WITHIN")]
    pub modified_within: Option<String>,
    /// Only pin, do not fetch the pinned files.
    #[arg(long, env = "STRATA_NO_PRELOAD")]
    pub no_preload: bool,
}

/// The command line of `strata-agent preload --agent ...`, parsed on its own: the
/// agent's `preload` subcommand without `--agent` fills a local cache directory.
#[derive(clap::Parser, Debug)]
#[command(
    name = "strata-agent preload",
    about = "Preload dataset paths on running agents"
)]
pub struct AgentPreloadCli {
    #[command(flatten)]
    pub args: PreloadJobArgs,
}

/// True when `strata-agent <argv>` is `preload` aimed at a running agent (`--agent` given).
pub fn is_agent_preload(argv: &[OsString]) -> bool {
    argv.get(1).is_some_and(|a| a == "preload")
        && (argv.iter().any(|a| {
            a.to_str()
                .is_some_and(|s| s == "--agent" || s.starts_with("--agent="))
        }) || std::env::var_os("STRATA_AGENT_URL").is_some())
}

impl JobArgs {
    fn dataset(&self) -> Result<(&str, &str)> {
        self.dataset
            .split_once('/')
            .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "dataset",
                    format!("{:?} is not NAMESPACE/NAME", self.dataset),
                )
            })
    }

    fn clients(&self) -> Result<Vec<AgentClient>> {
        let token = match &self.token_file {
            Some(file) => Some(read_token_file(file).map_err(|e| {
                ApiError::io(format!("reading --token-file {}", file.display()), e)
            })?),
            None => None,
        };
        self.agent
            .iter()
            .map(|url| {
                if url.starts_with("http://") && token.is_none() {
                    return Err(ApiError::bad_request(
                        "token-file",
                        format!("{url} needs --token-file with the agent's bearer token"),
                    ));
                }
                Ok(AgentClient::from_url(url, token.clone())?
                    .with_timeout(Duration::from_secs(60))
                    .with_job(self.job_name.clone()))
            })
            .collect()
    }
}

/// One progress line: what a user watching the Job's log wants to see.
pub fn progress_line(agent: &str, dataset: &str, p: &PreloadProgress) -> String {
    format!(
        "preload {dataset} on {agent}: files {}/{}, bytes {}/{}, {:.1}%{}",
        p.files_done,
        p.files_total,
        p.bytes_done,
        p.bytes_total,
        p.percent(),
        if p.done { ", done" } else { "" }
    )
}

async fn preload_on(
    client: &AgentClient,
    dataset: &str,
    paths: &[String],
    out: &mut (dyn Write + Send),
) -> Result<PreloadProgress> {
    let (ns, name) = dataset.split_once('/').unwrap_or(("", dataset));
    let endpoint = client.endpoint();
    let mut print = |p: &PreloadProgress| {
        let _ = writeln!(out, "{}", progress_line(&endpoint, dataset, p));
        let _ = out.flush();
    };
    Ok(client.preload(ns, name, paths, &mut print).await?)
}

/// Preloads the paths on every agent, printing progress lines to `out`. Fails if any agent failed.
pub async fn preload(
    args: &PreloadJobArgs,
    out: &mut (dyn Write + Send),
) -> Result<Vec<PreloadProgress>> {
    args.job.dataset()?;
    let mut results = Vec::new();
    for client in args.job.clients()? {
        let client = client.with_concurrency(Some(args.concurrency));
        results.push(preload_on(&client, &args.job.dataset, &args.job.paths, out).await?);
    }
    Ok(results)
}

/// Pins the paths on every agent and (unless `no_preload`) fetches what was pinned,
/// printing the pins and progress lines.
pub async fn pin(args: &PinJobArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    let (ns, name) = args.job.dataset()?;
    for client in args.job.clients()? {
        let answer = client
            .pin(ns, name, &args.job.paths, args.modified_within.as_deref())
            .await?;
        let _ = writeln!(
            out,
            "pinned {} on {}: {} pattern(s) added, {} pin(s) in force",
            args.job.dataset,
            client.endpoint(),
            answer.changed.len(),
            answer.pins.len()
        );
        if !args.no_preload && !answer.changed.is_empty() {
            preload_on(&client, &args.job.dataset, &answer.changed, out).await?;
        }
    }
    Ok(())
}

/// Removes the pins on every agent.
pub async fn unpin(args: &JobArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    let (ns, name) = args.dataset()?;
    for client in args.clients()? {
        let answer = client.unpin(ns, name, &args.paths).await?;
        let _ = writeln!(
            out,
            "unpinned {} on {}: {} pin(s) left",
            args.dataset,
            client.endpoint(),
            answer.pins.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn progress_lines_show_files_bytes_and_percent() {
        let p = PreloadProgress {
            files_done: 1,
            files_total: 4,
            bytes_done: 512,
            bytes_total: 2048,
            done: false,
            error: None,
        };
        assert_eq!(
            progress_line("unix:///a.sock", "ml/x", &p),
            "preload ml/x on unix:///a.sock: files 1/4, bytes 512/2048, 25.0%"
        );
    }

    #[test]
    fn parses_the_operators_preload_job_arguments() {
        let argv: Vec<OsString> = [
            "strata-agent",
            "preload",
            "--agent",
            "http://10.0.0.5:7070",
            "--token-file",
            "/var/run/strata/token",
            "--dataset",
            "ml/imagenet",
            "--paths",
            "/labels/**",
            "--concurrency",
            "8",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        assert!(is_agent_preload(&argv));
        let cli = AgentPreloadCli::try_parse_from(&argv[1..]).unwrap();
        assert_eq!(cli.args.job.agent, ["http://10.0.0.5:7070"]);
        assert_eq!(cli.args.job.paths, ["/labels/**"]);
        assert_eq!(cli.args.concurrency, 8);
        let local: Vec<OsString> = [
            "strata-agent",
            "preload",
            "--dataset-config",
            "d.yaml",
            "/x",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        if std::env::var_os("STRATA_AGENT_URL").is_none() {
            assert!(!is_agent_preload(&local));
        }
    }

    #[test]
    fn the_board_keeps_the_latest_run_per_job_and_scrubs_errors() {
        let board = Arc::new(ActivityBoard::default());
        let first = board.start_run("ml", "x", "preload-x-1");
        first.progress(&PreloadProgress {
            files_done: 1,
            files_total: 2,
            bytes_done: 10,
            bytes_total: 20,
            ..Default::default()
        });
        drop(first); // the handler went away without finishing
        let runs = board.snapshot("ml", "x").runs;
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].phase, RunPhase::Failed);
        assert_eq!((runs[0].bytes_done, runs[0].bytes_total), (10, 20));

        // A retry of the same Job replaces it; other Jobs are kept, newest first.
        let retry = board.start_run("ml", "x", "preload-x-1");
        for i in 0..MAX_RUNS_PER_DATASET + 2 {
            board
                .start_run("ml", "x", &format!("pin-x-{i}"))
                .finish(&PreloadProgress::default(), None);
        }
        retry.finish(
            &PreloadProgress {
                files_done: 2,
                files_total: 2,
                bytes_done: 20,
                bytes_total: 20,
                done: true,
                error: None,
            },
            None,
        );
        let runs = board.snapshot("ml", "x").runs;
        assert_eq!(runs.len(), MAX_RUNS_PER_DATASET);
        assert_eq!(runs[0].job, format!("pin-x-{}", MAX_RUNS_PER_DATASET + 1));
        assert!(
            runs.iter().all(|r| r.job != "preload-x-1"),
            "evicted as the oldest"
        );
        assert!(runs.iter().all(|r| r.phase == RunPhase::Succeeded));

        let before = SystemTime::now() - Duration::from_secs(1);
        board.source_failed(
            "ml",
            "x",
            &format!(
                "GET https://b.s3.amazonaws.com/k?X-Amz-Signature=abcdef0123 failed\n{}",
                "x".repeat(5000)
            ),
        );
        let error = board.snapshot("ml", "x").last_error.unwrap();
        assert!(!error.message.contains("abcdef0123"), "{}", error.message);
        assert!(!error.message.contains('\n'));
        assert!(error.message.chars().count() <= MAX_MESSAGE_CHARS + 3);
        board.sources_ok("ml", "x", before); // a probe that started before the error
        assert!(board.snapshot("ml", "x").last_error.is_some());
        board.sources_ok("ml", "x", SystemTime::now());
        assert!(board.snapshot("ml", "x").last_error.is_none());
        board.retain(|_, name| name != "x");
        assert_eq!(board.snapshot("ml", "x"), DatasetActivity::default());
    }

    #[test]
    fn dataset_must_be_namespace_slash_name() {
        let args = JobArgs {
            agent: vec![],
            token_file: None,
            dataset: "imagenet".into(),
            paths: vec!["/**".into()],
            job_name: None,
        };
        assert_eq!(
            args.dataset().unwrap_err().field().as_deref(),
            Some("dataset")
        );
    }
}
