//! `strata-agent`: the node cache agent. This file parses the command line and wires the
//! library's commands to it: `mount` and `preload` ([`strata_agent::standalone`]), `serve`
//! ([`strata_agent::serve`]), `preload --agent`, `pin` and `unpin`
//! ([`strata_agent::job_commands`]).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use strata_agent::Error;
use strata_agent::config::{DatasetConfig, SourceConfig};
use strata_agent::fuse::MountOptions;
use strata_agent::standalone::{self, MountArgs, PreloadArgs};

#[derive(Parser, Debug)]
#[command(name = "strata-agent", version, about = "Strata node cache agent")]
struct Cli {
    /// Log filter (tracing env-filter syntax), e.g. "info" or "strata_agent=debug".
    #[arg(long, env = "STRATA_LOG", default_value = "info", global = true)]
    log: String,
    /// Log as JSON lines.
    #[arg(long, env = "STRATA_LOG_JSON", global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mount sources as one cached, read-only file system, in the foreground.
    Mount(MountArgs),
    /// Fetch files matching globs into a cache directory (no mount). With --agent, ask
    /// running agents to preload instead (see `strata-agent preload --agent URL --help`).
    Preload(PreloadArgs),
    /// Run as the node daemon: HTTP API, CSI volume mounts, --datasets-dir.
    // Boxed: the daemon's flags outweigh every other command's.
    Serve(Box<strata_agent::serve::ServeArgs>),
    /// Pin paths on running agents (and fetch them), as the operator's pin Jobs do.
    Pin(strata_agent::job_commands::PinJobArgs),
    /// Remove pins from running agents.
    Unpin(strata_agent::job_commands::JobArgs),
    /// Copy a path of one source to another (e.g. hdfs:// to s3://), verified by checksum;
    /// run again after a kill to resume without copying again what was copied. With
    /// --migration, ask a running agent to run a dataset's migration (Migration Jobs).
    Migrate(strata_agent::migrate_command::MigrateArgs),
    /// The mount holder (started by `mount` and `serve --holder-socket` when none runs):
    /// keeps each mount's FUSE connection while agents come and go.
    Holder(strata_holder::HolderArgs),
}

/// starts with '/', so URIs with ports or schemes keep their colons.
fn parse_source(spec: &str) -> anyhow::Result<SourceConfig> {
    let (name, rest) = spec
        .split_once('=')
        .with_context(|| format!("--source {spec:?}: expected NAME=URI[:MOUNTPATH]"))?;
    let (uri, mount_path) = match rest.rfind(":/") {
        Some(i) if i > 0 && !rest[i..].starts_with("://") => (&rest[..i], &rest[i + 1..]),
        _ => (rest, "/"),
    };
    Ok(SourceConfig {
        name: name.to_string(),
        uri: uri.to_string(),
        mount_path: mount_path.to_string(),
        ..Default::default()
    })
}

fn absolute_uri(uri: &str) -> anyhow::Result<String> {
    if uri.contains("://") || uri.starts_with('/') {
        return Ok(uri.to_string());
    }
    let p = std::fs::canonicalize(uri).with_context(|| {
        format!("source {uri:?} is neither a URI nor an existing local directory")
    })?;
    Ok(p.to_string_lossy().into_owned())
}

/// The dataset and mount point `strata-agent mount` names.
fn mount_dataset(args: &MountArgs) -> anyhow::Result<(DatasetConfig, PathBuf)> {
    let (uri, mountpoint) = match args.positional.as_slice() {
        [mp] => (None, mp.clone()),
        [uri, mp] => (Some(uri.clone()), mp.clone()),
        _ => bail!("expected [URI] MOUNTPOINT"),
    };
    let mut sources = Vec::new();
    if let Some(uri) = uri {
        sources.push(SourceConfig {
            name: "default".into(),
            uri: absolute_uri(&uri)?,
            ..Default::default()
        });
    }
    for spec in &args.sources {
        let mut s = parse_source(spec)?;
        s.uri = absolute_uri(&s.uri)?;
        sources.push(s);
    }
    if sources.is_empty() {
        bail!(
            "no source given: pass a URI before the mount point or --source NAME=URI[:MOUNTPATH]"
        );
    }
    for s in &mut sources {
        if s.uri.starts_with("s3://") {
            s.endpoint = args.endpoint.clone();
            s.region = args.region.clone();
        }
        s.write_mode = args.write_mode;
    }
    let (namespace, name) = args
        .dataset
        .split_once('/')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .unwrap_or(("default".into(), args.dataset.clone()));
    let dataset = DatasetConfig {
        namespace,
        name,
        uid: None,
        policy: None,
        sources,
        cache: args.cache_settings()?,
        migrations: Vec::new(),
    };
    Ok((dataset, PathBuf::from(mountpoint)))
}

async fn run_mount(args: MountArgs) -> anyhow::Result<()> {
    let (dataset, mountpoint) = mount_dataset(&args)?;
    let holder = args.holder.for_mount()?;
    let held = holder.is_some();
    let re_exec = ReExec {
        exe: std::env::current_exe().context("finding the agent's own binary")?,
        args: std::env::args_os().skip(1).collect(),
    };
    let stop_for_upgrade = std::sync::OnceLock::new();
    let options = MountOptions {
        allow_other: !args.private,
        passthrough: !args.no_passthrough,
        holder,
        ..Default::default()
    };
    let shutdown = async {
        let signal = wait_for_signal()
            .await
            .map_err(|e| Error::io("waiting for signals", e))?;
        // SIGINT and SIGTERM stop (and unmount); SIGHUP with a holder is an upgrade in
        // place: the mount is left to the holder and the binary at the agent's path is
        // executed again, which takes it over.
        if signal == Signal::Hangup && held {
            tracing::info!(
                "SIGHUP: leaving the mount to the holder and starting the agent binary again"
            );
            let _ = stop_for_upgrade.set(re_exec);
            Ok(standalone::Stop::LeaveToHolder)
        } else {
            tracing::info!(?signal, "signal received, unmounting");
            Ok(standalone::Stop::Unmount)
        }
    };
    let usage = standalone::mount_until(
        args.cache.agent_config(),
        dataset,
        &mountpoint,
        options,
        shutdown,
        |view, handle| {
            eprintln!(
                "strata-agent: {} mounted at {}; Ctrl-C to unmount",
                view.sources()
                    .iter()
                    .map(|s| format!("{} ({})", s.uri(), s.mount_path()))
                    .collect::<Vec<_>>()
                    .join(", "),
                handle.mountpoint().display()
            );
        },
    )
    .await?;
    if let Some(stop) = stop_for_upgrade.get() {
        // exec replaces the process without running destructors, which would close the
        // passthrough backing ids the new image takes over.
        use std::os::unix::process::CommandExt;
        let err = std::process::Command::new(&stop.exe)
            .args(&stop.args)
            .exec();
        return Err(anyhow::anyhow!(
            "re-executing {} for the upgrade failed: {err}; the mount waits in the holder, run the same command again",
            stop.exe.display()
        ));
    }
    eprintln!(
        "strata-agent: unmounted; cache holds {} bytes on disk in {} files and {} bytes in memory \
         ({} hits, {} misses)",
        usage.cached_bytes, usage.cached_files, usage.memory_bytes, usage.hits, usage.misses
    );
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Terminate,
    Interrupt,
    Hangup,
}

/// The command line to execute again on an upgrade in place (SIGHUP): the binary's path
/// as it was at start (the file there may have been replaced since), and the arguments.
struct ReExec {
    exe: PathBuf,
    args: Vec<std::ffi::OsString>,
}

async fn wait_for_signal() -> std::io::Result<Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    Ok(tokio::select! {
        _ = term.recv() => Signal::Terminate,
        _ = int.recv() => Signal::Interrupt,
        _ = hup.recv() => Signal::Hangup,
    })
}

async fn run_preload(args: PreloadArgs) -> anyhow::Result<()> {
    let mut dataset = DatasetConfig::from_file(&args.dataset_config)?;
    if let Some(b) = args.cache.block_size {
        dataset.cache.block_size = b;
    }
    let report = standalone::preload(
        args.cache.agent_config(),
        dataset,
        &args.paths,
        args.concurrency as usize,
        args.pin,
    )
    .await?;
    println!("{}", serde_json::to_string(&report)?);
    if !report.failed.is_empty() {
        bail!("{} file(s) could not be preloaded", report.failed.len());
    }
    Ok(())
}

fn init_tracing(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: log files and `kubectl logs` get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> anyhow::Result<()> {
    // The holder is a plain single-threaded loop: no runtime, no allocator tuning.
    if std::env::args_os().nth(1).is_some_and(|a| a == "holder") {
        let cli = Cli::parse();
        init_tracing(&cli.log, cli.log_json);
        if let Command::Holder(args) = cli.command {
            strata_holder::run(args.into_config())?;
        }
        return Ok(());
    }
    tune_allocator();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

/// glibc raises its mmap threshold after the first large free; from then on the 4 MiB
/// block buffers come from per-thread heaps and stay resident (measured: 250 MiB RSS
/// after reading a 1 GiB file with an empty memory tier; 20 MiB with a fixed threshold).
/// A fixed 1 MiB threshold hands block buffers back to the kernel when they are freed,
/// so the agent's memory stays at its configured tiers plus a small constant.
#[allow(unsafe_code)]
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it runs before any other thread
    // exists and takes no pointers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

async fn run() -> anyhow::Result<()> {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if strata_agent::job_commands::is_agent_preload(&argv) {
        // `preload --agent URL ...` (the operator's Jobs) talks to running agents.
        let cli = <strata_agent::job_commands::AgentPreloadCli as Parser>::parse_from(&argv[1..]);
        init_tracing("warn", false);
        strata_agent::job_commands::preload(&cli.args, &mut std::io::stdout()).await?;
        return Ok(());
    }
    let cli = Cli::parse();
    init_tracing(&cli.log, cli.log_json);
    match cli.command {
        Command::Mount(args) => run_mount(args).await,
        Command::Preload(args) => run_preload(args).await,
        Command::Serve(args) => {
            strata_agent::serve::run(
                *args,
                async {
                    if let Err(e) = wait_for_signal().await {
                        tracing::error!(error = %e, "cannot wait for signals");
                    }
                },
                |_| {},
            )
            .await?;
            // Straight out: with a holder, destructors would close the passthrough
            // backing ids the next agent takes over (run has finished its own cleanup).
            std::process::exit(0)
        }
        Command::Migrate(args) => {
            Ok(strata_agent::migrate_command::run(&args, &mut std::io::stdout()).await?)
        }
        Command::Pin(args) => {
            Ok(strata_agent::job_commands::pin(&args, &mut std::io::stdout()).await?)
        }
        Command::Unpin(args) => {
            Ok(strata_agent::job_commands::unpin(&args, &mut std::io::stdout()).await?)
        }
        Command::Holder(_) => unreachable!("run before the runtime starts, in main"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_specs() {
        let s = parse_source("train=s3://bucket/train/:/train").unwrap();
        assert_eq!(
            (s.name.as_str(), s.uri.as_str(), s.mount_path.as_str()),
            ("train", "s3://bucket/train/", "/train")
        );
        let s = parse_source("web=http://127.0.0.1:8080/base").unwrap();
        assert_eq!(
            (s.uri.as_str(), s.mount_path.as_str()),
            ("http://127.0.0.1:8080/base", "/")
        );
        let s = parse_source("local=/data/x:/x").unwrap();
        assert_eq!((s.uri.as_str(), s.mount_path.as_str()), ("/data/x", "/x"));
        let s = parse_source("local=/data/x").unwrap();
        assert_eq!((s.uri.as_str(), s.mount_path.as_str()), ("/data/x", "/"));
        assert!(parse_source("nonsense").is_err());
    }
}
