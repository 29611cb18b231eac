//! `strata-bench`: runs the benchmark suite and writes docs/BENCHMARKS.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use strata_bench::data::DataSpec;
use strata_bench::harness::{RunConfig, Workload};
use strata_bench::mounts::{CacheQuota, Programs, System};
use strata_bench::results::BenchResults;
use strata_bench::{proxy, report};

#[derive(Parser, Debug)]
#[command(
    name = "strata-bench",
    version,
    about = "Strata benchmark suite (see docs/BENCHMARKS.md)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run workloads, merge into the results file and render docs/BENCHMARKS.md (needs root).
    Run(Box<RunArgs>),
    /// Render docs/BENCHMARKS.md and the charts again from the results file.
    Report(DocArgs),
    /// A delaying TCP proxy (what `run` starts as its WAN link).
    Proxy(ProxyArgs),
}

#[derive(clap::Args, Debug)]
struct DocArgs {
    /// The repository root (docs/ is written there).
    #[arg(long, env = "STRATA_BENCH_REPO", default_value = ".")]
    repo: PathBuf,
    /// The commit the measured binaries were built from, for the report (default: HEAD of --repo).
    #[arg(long, env = "STRATA_BENCH_COMMIT")]
    commit: Option<String>,
}

#[derive(clap::Args, Debug)]
struct ProxyArgs {
    #[arg(long, env = "STRATA_BENCH_PROXY_LISTEN")]
    listen: SocketAddr,
    #[arg(long, env = "STRATA_BENCH_PROXY_UPSTREAM")]
    upstream: SocketAddr,
    /// One-way delay applied to each chunk in each direction.
    #[arg(long, env = "STRATA_BENCH_PROXY_DELAY", default_value = "25ms", value_parser = humantime::parse_duration)]
    delay: Duration,
    /// Answer connections here with the byte counts (`upstream downstream connections`).
    #[arg(long, env = "STRATA_BENCH_PROXY_STATS_LISTEN")]
    stats_listen: Option<SocketAddr>,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    doc: DocArgs,
    /// Small data, one run, short limits: finishes in a few minutes.
    #[arg(long, env = "STRATA_BENCH_QUICK")]
    quick: bool,
    /// Runs per figure (medians are reported). Default 3, or 1 with --quick.
    #[arg(long, env = "STRATA_BENCH_RUNS")]
    runs: Option<u32>,
    /// One-way delay of the WAN link; repeat for several links (e.g. --delay 25ms --delay 0ms).
    #[arg(long = "delay", env = "STRATA_BENCH_DELAY", value_delimiter = ',', default_value = "25ms", value_parser = humantime::parse_duration)]
    delays: Vec<Duration>,
    /// Cap the link at this many Mbit/s each way (tc tbf on a veth pair in a network namespace).
    #[arg(long, env = "STRATA_BENCH_BANDWIDTH_MBIT")]
    bandwidth_mbit: Option<u32>,
    /// Systems to mount: strata, rclone, s3fs.
    #[arg(
        long,
        env = "STRATA_BENCH_SYSTEMS",
        value_delimiter = ',',
        default_value = "strata,rclone,s3fs"
    )]
    systems: Vec<System>,
    /// Workloads: seq-large, random-4k, epoch-small, list, list-huge, preload, restart,
    /// cluster, write, hit-ratio.
    #[arg(
        long,
        env = "STRATA_BENCH_WORKLOADS",
        value_delimiter = ',',
        default_value = "seq-large,random-4k,epoch-small,list,list-huge,preload,restart,cluster,write,hit-ratio"
    )]
    workloads: Vec<Workload>,
    /// Size of the seq-large object, and of the write workload's large file (default 1GiB,
    /// 128MiB with --quick).
    #[arg(long, env = "STRATA_BENCH_SEQ_SIZE", value_parser = parse_size)]
    seq_size: Option<u64>,
    /// Files of 1 MiB in the write workload (default 1000, 100 with --quick).
    #[arg(long, env = "STRATA_BENCH_WRITE_FILES")]
    write_files: Option<usize>,
    /// Writers of the write workload's small files at once; one measurement per count.
    #[arg(
        long,
        env = "STRATA_BENCH_WRITE_WRITERS",
        value_delimiter = ',',
        default_value = "1,8"
    )]
    write_writers: Vec<usize>,
    /// Time limit of one write measurement, from the first open until the source has it all
    /// (default 600s, 120s with --quick).
    #[arg(long, env = "STRATA_BENCH_WRITE_LIMIT", value_parser = humantime::parse_duration)]
    write_limit: Option<Duration>,
    /// Files in epoch-small (default 10000, 1000 with --quick).
    #[arg(long, env = "STRATA_BENCH_EPOCH_FILES")]
    epoch_files: Option<usize>,
    /// Objects in the list data set (default 100000, 5000 with --quick).
    #[arg(long, env = "STRATA_BENCH_LIST_OBJECTS")]
    list_objects: Option<usize>,
    /// Objects in each list-huge data set, one prefix each (default 200000,1000000; 20000
    /// with --quick).
    #[arg(long, env = "STRATA_BENCH_LIST_HUGE_OBJECTS", value_delimiter = ',')]
    list_huge_objects: Option<Vec<usize>>,
    /// Time limit of one list-huge `ls` (default 600s, 60s with --quick).
    #[arg(long, env = "STRATA_BENCH_LIST_HUGE_LIMIT", value_parser = humantime::parse_duration)]
    list_huge_limit: Option<Duration>,
    /// Memory quota given to the caches.
    #[arg(long, env = "STRATA_BENCH_MEMORY", default_value = "512MiB", value_parser = parse_size)]
    memory: u64,
    /// Disk quota given to the caches.
    #[arg(long, env = "STRATA_BENCH_DISK", default_value = "4GiB", value_parser = parse_size)]
    disk: u64,
    /// Time limit of one sequential read (default 180s, 60s with --quick).
    #[arg(long, env = "STRATA_BENCH_SEQ_LIMIT", value_parser = humantime::parse_duration)]
    seq_limit: Option<Duration>,
    /// Time limit of one epoch (default 120s, 30s with --quick).
    #[arg(long, env = "STRATA_BENCH_EPOCH_LIMIT", value_parser = humantime::parse_duration)]
    epoch_limit: Option<Duration>,
    /// Time limit of one listing (default 180s, 30s with --quick).
    #[arg(long, env = "STRATA_BENCH_LIST_LIMIT", value_parser = humantime::parse_duration)]
    list_limit: Option<Duration>,
    /// Seconds of random 4 KiB reads (default 10, 3 with --quick).
    #[arg(long, env = "STRATA_BENCH_RAND_SECONDS")]
    rand_seconds: Option<u32>,
    /// Idle time after `sync` before every warm read, from a cache or the local file (default
    /// 30s, 2s with --quick): a VM disk reads several times slower for a while after a burst
    /// of writes (a cold read just wrote a GiB of cache), so every system and the local-file
    /// reference start from the same settled disk.
    #[arg(long, env = "STRATA_BENCH_SETTLE", value_parser = humantime::parse_duration)]
    settle: Option<Duration>,
    /// Where the S3 server's data, caches, mounts and logs live (kept for reuse between runs).
    #[arg(
        long,
        env = "STRATA_BENCH_WORK_DIR",
        default_value = "/var/tmp/strata-bench"
    )]
    work_dir: PathBuf,
    /// The strata-agent binary (default: next to this one; built if missing).
    #[arg(long, env = "STRATA_BENCH_AGENT")]
    agent: Option<PathBuf>,
    #[arg(long, env = "STRATA_BENCH_WEED", default_value = "weed")]
    weed: PathBuf,
    #[arg(long, env = "STRATA_BENCH_RCLONE", default_value = "rclone")]
    rclone: PathBuf,
    #[arg(long, env = "STRATA_BENCH_S3FS", default_value = "s3fs")]
    s3fs: PathBuf,
    #[arg(long, env = "STRATA_BENCH_FIO", default_value = "fio")]
    fio: PathBuf,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 512MiB or 1GiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{s}`; use KiB, MiB or GiB"
            ));
        }
    };
    Ok(n * mult)
}

/// The agent next to this binary, built with cargo (same profile and target dir) if missing.
fn find_agent(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating strata-bench")?;
    let dir = exe.parent().context("strata-bench has no directory")?;
    let agent = dir.join("strata-agent");
    let profile_dir = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("release");
    let target_dir = dir.parent().context("no target dir")?;
    let mut build =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build
        .args([
            "build",
            "-p",
            "strata-agent",
            "--bin",
            "strata-agent",
            "--target-dir",
        ])
        .arg(target_dir);
    if profile_dir == "release" {
        build.arg("--release");
    }
    // Always ask cargo: it is a no-op when the agent is up to date, and a stale agent would
    // benchmark old code.
    tracing::info!("building strata-agent ({profile_dir})");
    let status = build
        .status()
        .context("running cargo to build strata-agent")?;
    if !status.success() {
        bail!(
            "building strata-agent failed; build it (cargo build --release -p strata-agent) or pass --agent PATH"
        );
    }
    if !agent.exists() {
        bail!(
            "{} is missing after the build; pass --agent PATH",
            agent.display()
        );
    }
    Ok(agent)
}

fn render(repo: &Path, results: &BenchResults) -> anyhow::Result<()> {
    let docs = repo.join("docs");
    let generated = report::render(results, &docs.join("bench"), "bench")?;
    report::write_doc(&docs.join("BENCHMARKS.md"), &generated)?;
    println!("wrote {}", docs.join("BENCHMARKS.md").display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Proxy(p) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(p.listen)
                    .await
                    .with_context(|| format!("binding the proxy to {}", p.listen))?;
                let counters = Arc::new(proxy::LinkCounters::default());
                if let Some(addr) = p.stats_listen {
                    let stats = tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("binding the proxy's counts port to {addr}"))?;
                    tokio::spawn(proxy::serve_stats(stats, counters.clone()));
                }
                proxy::serve(listener, p.upstream, p.delay, counters).await?;
                Ok(())
            })
        }
        Command::Report(d) => {
            let path = d.repo.join("docs/bench/results.json");
            let results = BenchResults::load(&path)?.with_context(|| {
                format!(
                    "{} does not exist; run `strata-bench run` first",
                    path.display()
                )
            })?;
            render(&d.repo, &results)
        }
        Command::Run(a) => {
            let quick = a.quick;
            let spec = DataSpec {
                seq_large_bytes: a.seq_size.unwrap_or(if quick {
                    128 << 20
                } else {
                    DataSpec::FULL.seq_large_bytes
                }),
                epoch_files: a.epoch_files.unwrap_or(if quick {
                    1000
                } else {
                    DataSpec::FULL.epoch_files
                }),
                list_objects: a.list_objects.unwrap_or(if quick {
                    5000
                } else {
                    DataSpec::FULL.list_objects
                }),
            };
            if a.write_writers.contains(&0) {
                bail!("--write-writers: every count must be at least 1");
            }
            let needs_mounts = a.workloads.iter().any(|w| *w != Workload::HitRatio);
            if needs_mounts && !nix::unistd::Uid::effective().is_root() {
                bail!(
                    "strata-bench run needs root (FUSE mounts, drop_caches, network namespaces); run it with sudo or pass --workloads hit-ratio"
                );
            }
            let strata_agent = if needs_mounts && a.systems.contains(&System::Strata) {
                find_agent(a.agent)?
            } else {
                a.agent.unwrap_or_else(|| "strata-agent".into())
            };
            let work_dir = a.work_dir;
            std::fs::create_dir_all(&work_dir)
                .with_context(|| format!("creating {}", work_dir.display()))?;
            let repo = std::fs::canonicalize(&a.doc.repo)?;
            let cfg = RunConfig {
                quick,
                runs: a.runs.unwrap_or(if quick { 1 } else { 3 }),
                delays: a.delays,
                bandwidth_mbit: a.bandwidth_mbit,
                systems: a.systems.into_iter().filter(|s| s.is_mount()).collect(),
                workloads: a.workloads,
                spec,
                work_dir: std::fs::canonicalize(&work_dir)?,
                repo_dir: repo.clone(),
                commit: a
                    .doc
                    .commit
                    .clone()
                    .unwrap_or_else(|| strata_bench::results::git_commit(&repo)),
                programs: Programs {
                    strata_agent,
                    rclone: a.rclone,
                    s3fs: a.s3fs,
                },
                weed: a.weed,
                fio: a.fio,
                quota: CacheQuota {
                    memory_bytes: a.memory,
                    disk_bytes: a.disk,
                },
                seq_limit: a
                    .seq_limit
                    .unwrap_or(Duration::from_secs(if quick { 60 } else { 180 })),
                epoch_limit: a.epoch_limit.unwrap_or(Duration::from_secs(if quick {
                    30
                } else {
                    120
                })),
                list_limit: a.list_limit.unwrap_or(Duration::from_secs(if quick {
                    30
                } else {
                    180
                })),
                list_huge: a.list_huge_objects.unwrap_or_else(|| {
                    if quick {
                        vec![20_000]
                    } else {
                        vec![200_000, 1_000_000]
                    }
                }),
                list_huge_limit: a.list_huge_limit.unwrap_or(Duration::from_secs(if quick {
                    60
                } else {
                    600
                })),
                rand_seconds: a.rand_seconds.unwrap_or(if quick { 3 } else { 10 }),
                settle: a
                    .settle
                    .unwrap_or(Duration::from_secs(if quick { 2 } else { 30 })),
                write_files: a.write_files.unwrap_or(if quick { 100 } else { 1000 }),
                write_writers: a.write_writers,
                write_limit: a.write_limit.unwrap_or(Duration::from_secs(if quick {
                    120
                } else {
                    600
                })),
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let fresh = strata_bench::harness::run(&cfg, &rt)?;
            let path = repo.join("docs/bench/results.json");
            let mut results = BenchResults::load(&path)?.unwrap_or_default();
            results.merge(fresh);
            results.save(&path)?;
            render(&repo, &results)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1TB").is_err());
    }
}
