//! `strata-agent`: the node cache agent. `mount` runs one dataset standalone in the
//! foreground; `preload` fills a cache directory ahead of time.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use strata_agent::agent::{Agent, AgentConfig};
use strata_agent::config::{
    CacheSettings, DatasetConfig, EvictionKind, SourceConfig, parse_duration, parse_size,
};
use strata_agent::fuse::{MountOptions, mount};

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
    Serve(strata_agent::serve::ServeArgs),
    /// Pin paths on running agents (and fetch them), as the operator's pin Jobs do.
    Pin(strata_agent::job_commands::PinJobArgs),
    /// Remove pins from running agents.
    Unpin(strata_agent::job_commands::JobArgs),
}

#[derive(Args, Debug, Clone)]
struct CacheArgs {
    /// Directory of the disk tier.
    #[arg(long, env = "STRATA_CACHE_DIR")]
    cache_dir: PathBuf,
    /// Memory tier size, e.g. 512Mi.
    #[arg(long, env = "STRATA_MEMORY", default_value = "256Mi", value_parser = size)]
    memory: u64,
    /// Disk tier size, e.g. 4Gi (0 disables the disk tier).
    #[arg(long, env = "STRATA_DISK", default_value = "1Gi", value_parser = size)]
    disk: u64,
    /// Block size, e.g. 4Mi.
    #[arg(long, env = "STRATA_BLOCK_SIZE", value_parser = size)]
    block_size: Option<u64>,
    /// How long stat/list results are trusted, e.g. 30s or 5m.
    #[arg(long, env = "STRATA_METADATA_TTL", value_parser = duration)]
    metadata_ttl: Option<Duration>,
    /// Eviction policy: LRU, S3FIFO or ARC.
    #[arg(long, env = "STRATA_EVICTION", default_value = "S3FIFO", value_parser = eviction)]
    eviction: EvictionKind,
    /// Readahead per open file, e.g. 128Mi.
    #[arg(long, env = "STRATA_READAHEAD", default_value = "128Mi", value_parser = size)]
    readahead: u64,
    /// Readahead over all open files (bytes held by prefetched blocks), e.g. 256Mi.
    #[arg(long, env = "STRATA_READAHEAD_TOTAL", default_value = "256Mi", value_parser = size)]
    readahead_total: u64,
    /// Directory prefetch: after this many small files (at most one block) of a directory
    /// were read whole, fetch the directory's other small files in the background. 0 = off.
    #[arg(long, env = "STRATA_PREFETCH_DIRECTORY_FILES", default_value_t = 4)]
    prefetch_directory_files: u32,
    /// Most bytes one directory prefetch fetches (and at most a quarter of the disk tier).
    #[arg(long, env = "STRATA_PREFETCH_DIRECTORY_BYTES", default_value = "1Gi", value_parser = size)]
    prefetch_directory_bytes: u64,
}

#[derive(Args, Debug)]
struct MountArgs {
    /// A source as NAME=URI[:MOUNTPATH] (repeatable), e.g. train=s3://bucket/train/:/train.
    #[arg(long = "source", env = "STRATA_SOURCES", value_delimiter = ',')]
    sources: Vec<String>,
    /// S3-compatible endpoint for s3:// sources, e.g. http://127.0.0.1:9000.
    #[arg(long, env = "STRATA_S3_ENDPOINT")]
    endpoint: Option<String>,
    /// Region for s3:// sources.
    #[arg(long, env = "STRATA_S3_REGION")]
    region: Option<String>,
    /// Dataset name (labels metrics and the cache directory).
    #[arg(long, env = "STRATA_DATASET", default_value = "default/standalone")]
    dataset: String,
    /// Serve fully cached files through the agent even if the kernel offers passthrough.
    #[arg(long, env = "STRATA_NO_PASSTHROUGH")]
    no_passthrough: bool,
    /// Only the mounting user may read the mount (no allow_other).
    #[arg(long, env = "STRATA_PRIVATE")]
    private: bool,
    #[command(flatten)]
    cache: CacheArgs,
    /// `[URI] MOUNTPOINT`: one source URI (mounted at /) and the mount point.
    #[arg(required = true, num_args = 1..=2, value_names = ["URI", "MOUNTPOINT"])]
    positional: Vec<String>,
}

#[derive(Args, Debug)]
struct PreloadArgs {
    /// Dataset configuration file (YAML or JSON).
    #[arg(long, env = "STRATA_DATASET_CONFIG")]
    dataset_config: PathBuf,
    #[command(flatten)]
    cache: CacheArgs,
    /// Globs of paths to fetch, e.g. "/train/**".
    #[arg(required = true)]
    paths: Vec<String>,
    /// Also pin what was fetched.
    #[arg(long, env = "STRATA_PIN")]
    pin: bool,
    /// Requests (each up to 16 MiB of adjacent blocks) kept in flight over all files, 1 to 64. Over a high-latency link a
    /// preload needs dozens in flight to fill it; lower it to spare the source.
    #[arg(long, env = "STRATA_CONCURRENCY", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    concurrency: u32,
}

fn size(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}
fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}
fn eviction(s: &str) -> Result<EvictionKind, String> {
    match s.to_ascii_uppercase().replace('-', "").as_str() {
        "LRU" => Ok(EvictionKind::Lru),
        "S3FIFO" => Ok(EvictionKind::S3Fifo),
        "ARC" => Ok(EvictionKind::Arc),
        other => Err(format!(
            "unknown eviction policy {other:?}; use LRU, S3FIFO or ARC"
        )),
    }
}

/// Parses NAME=URI[:MOUNTPATH]. The mount path is the part after the last ':' when it
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

fn agent_config(c: &CacheArgs) -> AgentConfig {
    let mut cfg = AgentConfig::new(&c.cache_dir, c.memory, c.disk);
    cfg.readahead_per_file_bytes = c.readahead;
    cfg.readahead_total_bytes = c.readahead_total;
    cfg.directory_prefetch_files = c.prefetch_directory_files;
    cfg.directory_prefetch_bytes = c.prefetch_directory_bytes;
    cfg
}

fn cache_settings(c: &CacheArgs) -> CacheSettings {
    let mut s = CacheSettings {
        eviction: c.eviction,
        ..Default::default()
    };
    if let Some(b) = c.block_size {
        s.block_size = b;
    }
    if let Some(t) = c.metadata_ttl {
        s.metadata_ttl = t;
    }
    s
}

async fn run_mount(args: MountArgs) -> anyhow::Result<()> {
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
        cache: cache_settings(&args.cache),
    };
    // Refuse a bad mount point before touching any source.
    strata_agent::fuse::check_mountpoint(std::path::Path::new(&mountpoint))?;
    let agent = Agent::new(agent_config(&args.cache)).await?;
    let view = agent.add_dataset(dataset).await?;
    view.check_sources().await?;
    let handle = mount(
        view.clone(),
        std::path::Path::new(&mountpoint),
        MountOptions {
            allow_other: !args.private,
            passthrough: !args.no_passthrough,
            ..Default::default()
        },
    )?;
    eprintln!(
        "strata-agent: {} mounted at {}; Ctrl-C to unmount",
        view.sources()
            .iter()
            .map(|s| format!("{} ({})", s.uri(), s.mount_path()))
            .collect::<Vec<_>>()
            .join(", "),
        handle.mountpoint().display()
    );
    wait_for_signal().await?;
    tracing::info!("signal received, unmounting");
    let usage = view.usage();
    handle.unmount()?;
    eprintln!(
        "strata-agent: unmounted; cache holds {} bytes in {} files ({} hits, {} misses)",
        usage.cached_bytes, usage.cached_files, usage.hits, usage.misses
    );
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}

async fn run_preload(args: PreloadArgs) -> anyhow::Result<()> {
    let mut dataset = DatasetConfig::from_file(&args.dataset_config)?;
    if let Some(b) = args.cache.block_size {
        dataset.cache.block_size = b;
    }
    let agent = Agent::new(agent_config(&args.cache)).await?;
    let view = agent.add_dataset(dataset).await?;
    let report = view
        .preload_with(&args.paths, args.concurrency as usize, |p| {
            tracing::info!(
                files = p.files_done,
                files_total = p.files_total,
                bytes = p.bytes_done,
                bytes_total = p.bytes_total,
                "preload progress"
            );
        })
        .await?;
    if args.pin {
        view.pin(&args.paths)?;
    }
    println!("{}", serde_json::to_string(&report)?);
    if !report.failed.is_empty() {
        bail!("{} file(s) could not be preloaded", report.failed.len());
    }
    Ok(())
}

fn init_tracing(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> anyhow::Result<()> {
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
                args,
                async {
                    if let Err(e) = wait_for_signal().await {
                        tracing::error!(error = %e, "cannot wait for signals");
                    }
                },
                |_| {},
            )
            .await?;
            Ok(())
        }
        Command::Pin(args) => {
            Ok(strata_agent::job_commands::pin(&args, &mut std::io::stdout()).await?)
        }
        Command::Unpin(args) => {
            Ok(strata_agent::job_commands::unpin(&args, &mut std::io::stdout()).await?)
        }
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
