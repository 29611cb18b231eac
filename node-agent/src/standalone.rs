//! One dataset served or fetched by this process alone, without the daemon:
//! `strata-agent mount` (a FUSE mount in the foreground) and the local
//! `strata-agent preload` (fill a cache directory ahead of time).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use crate::agent::{Agent, AgentConfig};
use crate::cli_values::{
    parse_duration, parse_eviction, parse_size, parse_tiers, parse_write_mode,
};
use crate::config::{CacheSettings, DatasetConfig, EvictionKind, PinRule, TierKind};
use crate::dataset::{DatasetUsage, DatasetView, PreloadReport};
use crate::fuse::{MountHandle, MountOptions, check_mountpoint, mount};
use crate::{Error, Result};

#[derive(Args, Debug, Clone)]
pub struct CacheArgs {
    /// Directory of the disk tier.
    #[arg(long, env = "STRATA_CACHE_DIR")]
    pub cache_dir: PathBuf,
    /// Memory tier size, e.g. 512Mi.
    #[arg(long, env = "STRATA_MEMORY", default_value = "256Mi", value_parser = parse_size)]
    pub memory: u64,
    /// Disk tier size, e.g. 4Gi (0 disables the disk tier).
    #[arg(long, env = "STRATA_DISK", default_value = "1Gi", value_parser = parse_size)]
    pub disk: u64,
    /// Block size, e.g. 4Mi.
    #[arg(long, env = "STRATA_BLOCK_SIZE", value_parser = parse_size)]
    pub block_size: Option<u64>,
    /// How long stat/list results are trusted, e.g. 30s or 5m.
    #[arg(long, env = "STRATA_METADATA_TTL", value_parser = parse_duration)]
    pub metadata_ttl: Option<Duration>,
    /// Eviction policy: LRU, S3FIFO or ARC.
    #[arg(long, env = "STRATA_EVICTION", default_value = "S3FIFO", value_parser = parse_eviction)]
    pub eviction: EvictionKind,
    /// Readahead per open file, e.g. 128Mi.
    #[arg(long, env = "STRATA_READAHEAD", default_value = "128Mi", value_parser = parse_size)]
    pub readahead: u64,
    /// Readahead over all open files (bytes held by prefetched blocks), e.g. 256Mi.
    #[arg(long, env = "STRATA_READAHEAD_TOTAL", default_value = "256Mi", value_parser = parse_size)]
    pub readahead_total: u64,
    /// Directory prefetch: after this many small files (at most one block) of a directory
    /// were read whole, fetch the directory's other small files in the background. 0 = off.
    #[arg(long, env = "STRATA_PREFETCH_DIRECTORY_FILES", default_value_t = 4)]
    pub prefetch_directory_files: u32,
    /// Most bytes one directory prefetch fetches (and at most a quarter of the disk tier).
    #[arg(long, env = "STRATA_PREFETCH_DIRECTORY_BYTES", default_value = "1Gi", value_parser = parse_size)]
    pub prefetch_directory_bytes: u64,
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// A source as NAME=URI[:MOUNTPATH] (repeatable), e.g. train=s3://bucket/train/:/train.
    #[arg(long = "source", env = "STRATA_SOURCES", value_delimiter = ',')]
    pub sources: Vec<String>,
    /// S3-compatible endpoint for s3:// sources, e.g. http://127.0.0.1:9000.
    #[arg(long, env = "STRATA_S3_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Region for s3:// sources.
    #[arg(long, env = "STRATA_S3_REGION")]
    pub region: Option<String>,
    /// Dataset name (labels metrics and the cache directory).
    #[arg(long, env = "STRATA_DATASET", default_value = "default/standalone")]
    pub dataset: String,
    /// Serve fully cached files through the agent even if the kernel offers passthrough.
    #[arg(long, env = "STRATA_NO_PASSTHROUGH")]
    pub no_passthrough: bool,
    /// Only the mounting user may read the mount (no allow_other).
    #[arg(long, env = "STRATA_PRIVATE")]
    pub private: bool,
    /// Tiers the blocks may live in: Memory (nothing written to the cache dir), SSD (never
    /// held in memory) or Memory,SSD.
    // The full path keeps clap from taking the list as a repeated flag: one value, one list.
    #[arg(long, env = "STRATA_TIERS", default_value = "Memory,SSD", value_parser = parse_tiers)]
    pub tiers: ::std::vec::Vec<TierKind>,
    /// How the sources take writes: ReadOnly, WriteBack (land on this machine, uploaded
    /// in the background) or WriteThrough (close returns once the source has the file).
    #[arg(long, env = "STRATA_WRITE_MODE", default_value = "ReadOnly", value_parser = parse_write_mode)]
    pub write_mode: crate::config::WriteMode,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub holder: crate::held_mounts::HolderFlags,
    /// `[URI] MOUNTPOINT`: one source URI (mounted at /) and the mount point.
    #[arg(required = true, num_args = 1..=2, value_names = ["URI", "MOUNTPOINT"])]
    pub positional: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PreloadArgs {
    /// Dataset configuration file (YAML or JSON).
    #[arg(long, env = "STRATA_DATASET_CONFIG")]
    pub dataset_config: PathBuf,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Globs of paths to fetch, e.g. "/train/**".
    #[arg(required = true)]
    pub paths: Vec<String>,
    /// Also pin what was fetched.
    #[arg(long, env = "STRATA_PIN")]
    pub pin: bool,
    /// Requests (each up to 16 MiB of adjacent blocks) kept in flight over all files, 1 to 64. Over a high-latency link a
    /// preload needs dozens in flight to fill it; lower it to spare the source.
    #[arg(long, env = "STRATA_CONCURRENCY", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub concurrency: u32,
}

impl MountArgs {
    /// The dataset's cache settings these flags give; refuses a tier whose flag turned it
    /// off (`--tiers SSD` with `--disk 0`, `--tiers Memory` with `--memory 0`).
    pub fn cache_settings(&self) -> Result<CacheSettings> {
        if self.tiers == [TierKind::Ssd] && self.cache.disk == 0 {
            return Err(Error::invalid(
                "--tiers",
                "SSD keeps blocks only on disk, which --disk 0 turns off",
            ));
        }
        if self.tiers == [TierKind::Memory] && self.cache.memory == 0 {
            return Err(Error::invalid(
                "--tiers",
                "Memory keeps blocks only in memory, which --memory 0 turns off",
            ));
        }
        Ok(CacheSettings {
            tiers: self.tiers.clone(),
            ..self.cache.cache_settings()
        })
    }
}

impl CacheArgs {
    /// The node-wide settings these flags give.
    pub fn agent_config(&self) -> AgentConfig {
        let mut cfg = AgentConfig::new(&self.cache_dir, self.memory, self.disk);
        cfg.readahead_per_file_bytes = self.readahead;
        cfg.readahead_total_bytes = self.readahead_total;
        cfg.directory_prefetch_files = self.prefetch_directory_files;
        cfg.directory_prefetch_bytes = self.prefetch_directory_bytes;
        cfg
    }

    /// The dataset's cache settings these flags give.
    pub fn cache_settings(&self) -> CacheSettings {
        let mut s = CacheSettings {
            eviction: self.eviction,
            ..Default::default()
        };
        if let Some(b) = self.block_size {
            s.block_size = b;
        }
        if let Some(t) = self.metadata_ttl {
            s.metadata_ttl = t;
        }
        s
    }
}

/// How a mount served by [`mount_until`] ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Unmount (a user's Ctrl-C).
    Unmount,
    /// Leave the mount to its holder for the next agent (an upgrade or a service stop):
    /// readers wait for the next agent instead of losing the mount. Unmounts when the
    /// mount has no holder.
    LeaveToHolder,
}

/// Mounts `dataset` at `mountpoint`, serves it until `shutdown` resolves, then unmounts
/// or leaves the mount to its holder, as `shutdown` says. `on_mounted` is told what is
/// mounted where once it is; the answer is the dataset's usage as it was when `shutdown`
/// resolved.
pub async fn mount_until(
    agent: AgentConfig,
    dataset: DatasetConfig,
    mountpoint: &Path,
    options: MountOptions,
    shutdown: impl Future<Output = Result<Stop>>,
    on_mounted: impl FnOnce(&DatasetView, &MountHandle),
) -> Result<DatasetUsage> {
    // Refuse a bad mount point before touching any source. A held mount is there
    // already: the holder checks the path itself.
    if options.holder.is_none() {
        check_mountpoint(mountpoint)?;
    }
    let agent = Agent::new(agent).await?;
    if options.holder.is_some() {
        // Files a write handle of a previous agent holds are kept until the mount is
        // taken over.
        agent.expect_takeover();
    }
    let view = agent.add_dataset(dataset).await?;
    view.check_sources().await?;
    let handle = mount(view.clone(), mountpoint, options);
    agent.takeover_done();
    let handle = handle?;
    on_mounted(&view, &handle);
    let stop = shutdown.await?;
    let usage = view.usage();
    match stop {
        Stop::LeaveToHolder => handle.leave_to_holder(),
        Stop::Unmount => handle.unmount()?,
    }
    Ok(usage)
}

/// Fetches the files matching `paths` into the cache of `agent` (and pins them with
/// `pin`), keeping up to `concurrency` requests in flight; progress goes to the log.
pub async fn preload(
    agent: AgentConfig,
    dataset: DatasetConfig,
    paths: &[String],
    concurrency: usize,
    pin: bool,
) -> Result<PreloadReport> {
    let agent = Agent::new(agent).await?;
    let view = agent.add_dataset(dataset).await?;
    let report = view
        .preload_with(paths, concurrency, |p| {
            tracing::info!(
                files = p.files_done,
                files_total = p.files_total,
                bytes = p.bytes_done,
                bytes_total = p.bytes_total,
                "preload progress"
            );
        })
        .await?;
    if pin {
        view.pin(PinRule::paths(paths))?;
    }
    Ok(report)
}
