//! `strata-agent preload|pin|unpin --agent URL ...`: the commands that the operator's
//! preload and pin Jobs run against a node's agent (clients of its HTTP API).

use crate::config::PinRule;
use crate::http::client::{AgentClient, read_token_file};
use crate::http::types::PreloadProgress;
use crate::{Error, Result};
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use strata_wire::api::client::ClientError;

use crate::cli_values::parse_duration;

/// How often a Job asks again while its agent does not know the dataset yet.
const DATASET_CONFIG_POLL: Duration = Duration::from_secs(2);

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
    /// How long to wait for an agent that does not know the dataset yet (it answers 404)
    /// before failing. A new Dataset reaches the agents through a Secret volume the kubelet
    /// refreshes, so a Job started with its Dataset may run before the agent has it.
    #[arg(long, env = "STRATA_DATASET_WAIT", default_value = "5m", value_parser = parse_duration)]
    pub dataset_wait: Duration,
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
    /// Pin only files modified within this long (e.g. 14d): a window that rolls with the
    /// clock, so files that age out are unpinned and new ones pinned.
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
                Error::invalid(
                    "dataset",
                    format!("{:?} is not NAMESPACE/NAME", self.dataset),
                )
            })
    }

    fn clients(&self) -> Result<Vec<AgentClient>> {
        let token =
            match &self.token_file {
                Some(file) => Some(read_token_file(file).map_err(|e| {
                    Error::io(format!("reading --token-file {}", file.display()), e)
                })?),
                None => None,
            };
        self.agent
            .iter()
            .map(|url| {
                if url.starts_with("http://") && token.is_none() {
                    return Err(Error::invalid(
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

/// True for the agent's answer "dataset not configured here" (404 naming the dataset).
fn is_dataset_not_configured(error: &Error) -> bool {
    matches!(
        error,
        Error::Client(ClientError::Status { status, field, .. })
            if status.as_u16() == 404 && field.as_deref() == Some("name")
    )
}

/// A Job's wait for an agent to receive its dataset.
struct DatasetWait<'a> {
    endpoint: &'a str,
    dataset: &'a str,
    limit: Duration,
    started: Instant,
    said: bool,
}

impl<'a> DatasetWait<'a> {
    fn new(endpoint: &'a str, dataset: &'a str, limit: Duration) -> Self {
        DatasetWait {
            endpoint,
            dataset,
            limit,
            started: Instant::now(),
            said: false,
        }
    }

    /// Whether to try again after `error`: the agent does not know the dataset yet and the
    /// wait is not over. Says once in `out` what it waits for.
    fn retry(&mut self, error: &Error, out: &mut (dyn Write + Send)) -> bool {
        if !is_dataset_not_configured(error) || self.started.elapsed() >= self.limit {
            return false;
        }
        if !self.said {
            let _ = writeln!(
                out,
                "waiting up to {}s for the agent on {} to receive dataset {} \
                 (agents read Dataset configs from a Secret volume the kubelet refreshes)",
                self.limit.as_secs(),
                self.endpoint,
                self.dataset
            );
            let _ = out.flush();
            self.said = true;
        }
        true
    }
}

/// One progress line: what a user watching the Job's log wants to see.
pub fn progress_line(agent: &str, dataset: &str, p: &PreloadProgress) -> String {
    let by_node = if p.by_node.is_empty() {
        String::new()
    } else {
        let nodes: Vec<String> = p
            .by_node
            .iter()
            .map(|(node, bytes)| format!("{node} {bytes}"))
            .collect();
        format!(" (bytes per node: {})", nodes.join(", "))
    };
    format!(
        "preload {dataset} on {agent}: files {}/{}, bytes {}/{}, {:.1}%{}{by_node}",
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
    modified_within: Option<&str>,
    wait: Duration,
    out: &mut (dyn Write + Send),
) -> Result<PreloadProgress> {
    let (ns, name) = dataset.split_once('/').unwrap_or(("", dataset));
    let endpoint = client.endpoint();
    let mut waiting = DatasetWait::new(&endpoint, dataset, wait);
    loop {
        let result = {
            let mut print = |p: &PreloadProgress| {
                let _ = writeln!(out, "{}", progress_line(&endpoint, dataset, p));
                let _ = out.flush();
            };
            client
                .preload_selected(ns, name, paths, modified_within, &mut print)
                .await
                .map_err(Error::from)
        };
        match result {
            Err(e) if waiting.retry(&e, out) => {
                tokio::time::sleep(DATASET_CONFIG_POLL).await;
            }
            other => return other,
        }
    }
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
        let (dataset, paths, wait) = (&args.job.dataset, &args.job.paths, args.job.dataset_wait);
        results.push(preload_on(&client, dataset, paths, None, wait, out).await?);
    }
    Ok(results)
}

/// Pins the paths on every agent and (unless `no_preload`) fetches what was pinned,
/// printing the pins and progress lines.
pub async fn pin(args: &PinJobArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    let (ns, name) = args.job.dataset()?;
    for client in args.job.clients()? {
        let endpoint = client.endpoint();
        let mut waiting = DatasetWait::new(&endpoint, &args.job.dataset, args.job.dataset_wait);
        let answer = loop {
            let result = client
                .pin(ns, name, &args.job.paths, args.modified_within.as_deref())
                .await
                .map_err(Error::from);
            match result {
                Err(e) if waiting.retry(&e, out) => {
                    tokio::time::sleep(DATASET_CONFIG_POLL).await;
                }
                other => break other?,
            }
        };
        let rule = PinRule {
            paths: args.job.paths.clone(),
            modified_within: None,
        };
        let rule = match &args.modified_within {
            None => rule.describe(),
            Some(w) => format!("{} modified within {w}", rule.describe()),
        };
        let _ = writeln!(
            out,
            "pinned {rule} in {} on {}: {}, {} rule(s) in force",
            args.job.dataset,
            client.endpoint(),
            if answer.changed.is_empty() {
                "already in force"
            } else {
                "rule added"
            },
            answer.pins.len()
        );
        // Fetched even when the rule was in force: the Job is how a pin takes effect now,
        // rather than at the agent's next re-evaluation.
        if !args.no_preload {
            // Each node keeps what it pins: the blocks come from their owners, and stay here.
            let client = client.clone().with_here(true);
            preload_on(
                &client,
                &args.job.dataset,
                &args.job.paths,
                args.modified_within.as_deref(),
                args.job.dataset_wait,
                out,
            )
            .await?;
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
    fn jobs_wait_only_for_a_dataset_the_agent_does_not_know_yet() {
        let status = |code: u16, field: Option<&str>| {
            Error::Client(ClientError::Status {
                status: http::StatusCode::from_u16(code).unwrap(),
                message: "m".into(),
                field: field.map(str::to_string),
            })
        };
        let mut out = Vec::new();
        let not_configured = status(404, Some("name"));
        let mut waiting = DatasetWait::new("http://n:7070", "a/b", Duration::from_secs(60));
        assert!(waiting.retry(&not_configured, &mut out));
        assert!(waiting.retry(&not_configured, &mut out));
        let said = String::from_utf8(out.clone()).unwrap();
        assert_eq!(said.lines().count(), 1, "{said}");
        assert!(
            said.contains("up to 60s") && said.contains("dataset a/b"),
            "{said}"
        );
        // Any other failure, and the same one once the wait is over, ends the Job.
        assert!(!waiting.retry(&status(404, Some("paths")), &mut out));
        assert!(!waiting.retry(&status(403, None), &mut out));
        let mut over = DatasetWait::new("e", "a/b", Duration::ZERO);
        assert!(!over.retry(&not_configured, &mut out));
    }

    #[test]
    fn progress_lines_show_files_bytes_and_percent() {
        let p = PreloadProgress {
            files_done: 1,
            files_total: 4,
            bytes_done: 512,
            bytes_total: 2048,
            done: false,
            error: None,
            by_node: Default::default(),
        };
        assert_eq!(
            progress_line("unix:///a.sock", "ml/x", &p),
            "preload ml/x on unix:///a.sock: files 1/4, bytes 512/2048, 25.0%"
        );
        let done = PreloadProgress {
            bytes_done: 2048,
            done: true,
            by_node: [("node-a".to_string(), 1024), ("node-b".to_string(), 1024)].into(),
            ..p
        };
        assert_eq!(
            progress_line("unix:///a.sock", "ml/x", &done),
            "preload ml/x on unix:///a.sock: files 1/4, bytes 2048/2048, 100.0%, done \
             (bytes per node: node-a 1024, node-b 1024)"
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
    fn dataset_must_be_namespace_slash_name() {
        let args = JobArgs {
            agent: vec![],
            token_file: None,
            dataset: "imagenet".into(),
            paths: vec!["/**".into()],
            job_name: None,
            dataset_wait: Duration::ZERO,
        };
        assert_eq!(
            args.dataset().unwrap_err().field().as_deref(),
            Some("dataset")
        );
    }
}
