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

/// How long a Job waits for its node's agent to know the dataset. A new Dataset reaches the
/// agents through a Secret volume, which the kubelet refreshes on its pod sync (about a
/// minute); a Job started at the same time as the Dataset would otherwise fail and burn its
/// retries before the agent has it.
const DATASET_CONFIG_WAIT: Duration = Duration::from_secs(300);
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

/// Whether a Job should try again after `error`: the agent does not know the dataset yet and
/// the wait since `started` is not over. Says once in `out` what it waits for.
fn wait_for_dataset(
    error: &Error,
    started: Instant,
    said: &mut bool,
    endpoint: &str,
    dataset: &str,
    out: &mut (dyn Write + Send),
) -> bool {
    if !is_dataset_not_configured(error) || started.elapsed() >= DATASET_CONFIG_WAIT {
        return false;
    }
    if !*said {
        let _ = writeln!(
            out,
            "waiting up to {}s for the agent on {endpoint} to receive dataset {dataset} \
             (agents read Dataset configs from a Secret volume the kubelet refreshes)",
            DATASET_CONFIG_WAIT.as_secs()
        );
        let _ = out.flush();
        *said = true;
    }
    true
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
    modified_within: Option<&str>,
    out: &mut (dyn Write + Send),
) -> Result<PreloadProgress> {
    let (ns, name) = dataset.split_once('/').unwrap_or(("", dataset));
    let endpoint = client.endpoint();
    let (started, mut said) = (Instant::now(), false);
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
            Err(e) if wait_for_dataset(&e, started, &mut said, &endpoint, dataset, out) => {
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
        results.push(preload_on(&client, &args.job.dataset, &args.job.paths, None, out).await?);
    }
    Ok(results)
}

/// Pins the paths on every agent and (unless `no_preload`) fetches what was pinned,
/// printing the pins and progress lines.
pub async fn pin(args: &PinJobArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    let (ns, name) = args.job.dataset()?;
    for client in args.job.clients()? {
        let endpoint = client.endpoint();
        let (started, mut said) = (Instant::now(), false);
        let answer = loop {
            let result = client
                .pin(ns, name, &args.job.paths, args.modified_within.as_deref())
                .await
                .map_err(Error::from);
            match result {
                Err(e)
                    if wait_for_dataset(
                        &e,
                        started,
                        &mut said,
                        &endpoint,
                        &args.job.dataset,
                        out,
                    ) =>
                {
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
            preload_on(
                &client,
                &args.job.dataset,
                &args.job.paths,
                args.modified_within.as_deref(),
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
        let mut said = false;
        let now = Instant::now();
        let not_configured = status(404, Some("name"));
        assert!(wait_for_dataset(
            &not_configured,
            now,
            &mut said,
            "http://n:7070",
            "a/b",
            &mut out
        ));
        assert!(wait_for_dataset(
            &not_configured,
            now,
            &mut said,
            "http://n:7070",
            "a/b",
            &mut out
        ));
        let said_text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(said_text.lines().count(), 1, "{said_text}");
        assert!(said_text.contains("dataset a/b"), "{said_text}");
        // Any other failure, and the same one once the wait is over, ends the Job.
        assert!(!wait_for_dataset(
            &status(404, Some("paths")),
            now,
            &mut said,
            "e",
            "a/b",
            &mut out
        ));
        assert!(!wait_for_dataset(
            &status(403, None),
            now,
            &mut said,
            "e",
            "a/b",
            &mut out
        ));
        let long_ago = Instant::now() - DATASET_CONFIG_WAIT;
        assert!(!wait_for_dataset(
            &not_configured,
            long_ago,
            &mut said,
            "e",
            "a/b",
            &mut out
        ));
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
