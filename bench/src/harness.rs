//! The benchmark run: S3 server, data, WAN link, then every workload on every system, several
//! runs, interleaved so that machine noise spreads over all systems alike.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::data::{
    DataSets, DataSpec, Wanted, epoch_file_size, huge_prefix, s3_store, wait_writable,
};
use crate::mounts::{CacheQuota, MountRequest, Mounted, Programs, System};
use crate::netshape::ShapedLink;
use crate::process::{drop_page_caches, rss_bytes};
use crate::proxy::DelayProxyProcess;
use crate::report::CEILING_CASES;
use crate::results::{
    BenchResults, Measurement, SectionMeta, TraceInfo, load_average, machine_info,
};
use crate::s3server::{S3Credentials, SeaweedFs, SeaweedOptions};
use crate::workloads::{epoch, fio, floor, listing};
use crate::{Error, Result, sim};

mod cluster;
pub mod hdfs;
mod restart;
pub mod write;
pub use cluster::{
    CASE_ALONE, CASE_CLUSTER, CASE_INDEPENDENT, CASE_LOCAL_DISK, CASE_NEW_NODE, CASE_PEER_FETCH,
    Data as ClusterData, RAW_CASES, metric_sum,
};
pub use restart::RESTARTS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    SeqLarge,
    Random4k,
    EpochSmall,
    List,
    ListHuge,
    Preload,
    Restart,
    Cluster,
    Write,
    Hdfs,
    HitRatio,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::SeqLarge => "seq-large",
            Workload::Random4k => "random-4k",
            Workload::EpochSmall => "epoch-small",
            Workload::List => "list",
            Workload::ListHuge => "list-huge",
            Workload::Preload => "preload",
            Workload::Restart => "restart",
            Workload::Cluster => "cluster",
            Workload::Write => "write",
            Workload::Hdfs => "hdfs",
            Workload::HitRatio => "hit-ratio",
        }
    }
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        [
            Workload::SeqLarge,
            Workload::Random4k,
            Workload::EpochSmall,
            Workload::List,
            Workload::ListHuge,
            Workload::Preload,
            Workload::Restart,
            Workload::Cluster,
            Workload::Write,
            Workload::Hdfs,
            Workload::HitRatio,
        ]
        .into_iter()
        .find(|w| w.name() == s)
        .ok_or_else(|| {
            format!("unknown workload `{s}`; expected seq-large, random-4k, epoch-small, list, list-huge, preload, restart, cluster, write or hit-ratio")
        })
    }
}

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub quick: bool,
    pub runs: u32,
    pub delays: Vec<Duration>,
    pub bandwidth_mbit: Option<u32>,
    pub systems: Vec<System>,
    pub workloads: Vec<Workload>,
    pub spec: DataSpec,
    pub work_dir: PathBuf,
    pub repo_dir: PathBuf,
    /// The commit of the code being measured, for the report.
    pub commit: String,
    pub programs: Programs,
    pub weed: PathBuf,
    pub fio: PathBuf,
    pub quota: CacheQuota,
    pub seq_limit: Duration,
    pub epoch_limit: Duration,
    pub list_limit: Duration,
    /// Objects in each list-huge data set (one prefix each).
    pub list_huge: Vec<usize>,
    /// Time limit of one list-huge `ls`.
    pub list_huge_limit: Duration,
    pub rand_seconds: u32,
    /// Idle time after `sync` before each warm read (see `Ctx::settle`).
    pub settle: Duration,
    /// The write workload's small files (1 MiB each).
    pub write_files: usize,
    /// Writers of the small files at once, one measurement per count.
    pub write_writers: Vec<usize>,
    /// Time limit of one write measurement, from the first open until the source has
    /// everything.
    pub write_limit: Duration,
}

struct Ctx<'a> {
    cfg: &'a RunConfig,
    rt: &'a Runtime,
    creds: S3Credentials,
    link: String,
    endpoint: String,
    /// The S3 server itself (the cluster workload starts its own proxy to it).
    s3_addr: std::net::SocketAddr,
    s3_pid: u32,
    /// The S3 server's master (vacuum after the write workload deletes what it wrote).
    master_addr: std::net::SocketAddr,
    /// The WAN proxy of the current link, and where it answers with its byte counts.
    proxy_pid: u32,
    proxy_stats: Option<std::net::SocketAddr>,
    /// The one-way delay of the current link.
    delay: Duration,
    out: BenchResults,
    /// (system, link, objects) whose list-huge `ls` hit the time limit: not tried again at
    /// that size or a larger one in later runs (each try costs the whole limit).
    listing_gave_up: Vec<(System, String, usize)>,
}

impl Ctx<'_> {
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        workload: &str,
        case: &str,
        system: System,
        metric: &str,
        unit: &str,
        higher_is_better: bool,
        run: u32,
        value: f64,
        complete: bool,
    ) {
        tracing::info!(
            workload,
            case,
            system = system.label(),
            metric,
            value,
            complete,
            run,
            "measured"
        );
        self.out.measurements.push(Measurement {
            workload: workload.into(),
            case: case.into(),
            system,
            link: self.link.clone(),
            metric: metric.into(),
            unit: unit.into(),
            higher_is_better,
            run,
            value,
            complete,
        });
    }

    fn note(&mut self, workload: &str, text: String) {
        tracing::warn!(workload, "{text}");
        self.out.notes.push(format!("{workload}: {text}"));
    }

    fn mount(&self, system: System, session: &str) -> Result<Mounted> {
        self.mount_as(system, session, false)
    }

    /// A fresh mount of `system`, for writing if `writable` (rclone and s3fs).
    fn mount_as(&self, system: System, session: &str, writable: bool) -> Result<Mounted> {
        let p = self.mount_paths(system, session)?;
        Mounted::mount(&MountRequest {
            system,
            endpoint_url: &self.endpoint,
            creds: &self.creds,
            mountpoint: &p.mountpoint,
            cache_dir: &p.cache,
            log: &p.log,
            quota: self.cfg.quota,
            programs: &self.cfg.programs,
            holder_socket: None,
            strata_log: "warn",
            writable,
        })
    }

    /// A fresh (emptied) cache dir, the mount point and the log of one mount session.
    fn mount_paths(&self, system: System, session: &str) -> Result<MountPaths> {
        let dir = &self.cfg.work_dir;
        let cache = dir.join("cache").join(format!("{system:?}").to_lowercase());
        if cache.exists() {
            std::fs::remove_dir_all(&cache).map_err(|e| Error::io(&cache, e))?;
        }
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| Error::io(&logs, e))?;
        Ok(MountPaths {
            mountpoint: dir.join("mnt").join(format!("{system:?}").to_lowercase()),
            log: logs.join(format!("{system:?}-{session}.log").to_lowercase()),
            logs,
            cache,
        })
    }

    /// Writes back dirty pages, lets the disk idle for `settle`, then drops the page cache.
    /// On this VM the same 1 GiB file reads at ~2 GB/s on a quiet disk but at ~0.6 GB/s for
    /// 5 to 35 s after a GiB of writes (the host writing them back, measured), and every
    /// cold read has just written a GiB of cache.
    fn settle(&self) -> Result<()> {
        nix::unistd::sync();
        std::thread::sleep(self.cfg.settle);
        drop_page_caches()
    }

    /// Writes a fresh local copy of the seq-large bytes, the way the caches were just written
    /// (`O_DIRECT`), read as the local-file reference and removed after: the reference must be as new to the disk as the cache files,
    /// because this VM's disk serves the first read of newly written data slower than data
    /// it has read before (1.1-1.7 GB/s against 2.0 GB/s for the same copy read again).
    fn write_fresh_local_copy(&self) -> Result<PathBuf> {
        let cfg = self.cfg;
        let source = cfg.work_dir.join("local").join(cfg.spec.seq_key());
        let copy = cfg.work_dir.join("local-fresh.bin");
        let mut dd = std::process::Command::new("dd");
        dd.arg(format!("if={}", source.display()))
            .arg(format!("of={}", copy.display()))
            .args(["bs=4M", "oflag=direct", "status=none"]);
        crate::process::run_checked(dd)?;
        Ok(copy)
    }

    /// Settles the disk, then reads `file` (the seq-large bytes) twice, recording the warm
    /// and the hot figure for `system`.
    fn warm_and_hot(
        &mut self,
        file: &Path,
        system: System,
        jobs: u32,
        label: &str,
        run: u32,
    ) -> Result<()> {
        let cfg = self.cfg;
        let size = cfg.spec.seq_large_bytes;
        self.settle()?;
        for state in ["warm", "hot"] {
            let r = fio::sequential(&cfg.fio, file, size, jobs, cfg.seq_limit)?;
            self.record(
                "seq-large",
                &format!("{label}, {state}"),
                system,
                "throughput",
                "MiB/s",
                true,
                run,
                r.mib_per_s,
                true,
            );
        }
        Ok(())
    }

    fn record_rss(&mut self, m: &Mounted, session: &str, run: u32) {
        if let Some(rss) = m.peak_rss_bytes() {
            self.record(
                "memory",
                session,
                m.system,
                "peak RSS",
                "MiB",
                false,
                run,
                rss as f64 / (1024.0 * 1024.0),
                true,
            );
        }
    }

    /// seq-large with `jobs` parallel ranges: cold, warm, hot; random-4k after it (1 job only).
    fn seq_session(&mut self, system: System, jobs: u32, run: u32) -> Result<()> {
        let cfg = self.cfg;
        let session = format!("seq-large, {jobs} job{}", if jobs > 1 { "s" } else { "" });
        let m = self.mount(system, &session.replace([' ', ','], ""))?;
        let file = m.mountpoint.join(cfg.spec.seq_key());
        let size = cfg.spec.seq_large_bytes;
        let label = if jobs == 1 { "1 job" } else { "4 jobs" };
        let want_seq = cfg.workloads.contains(&Workload::SeqLarge);
        drop_page_caches()?;
        let cold = fio::sequential(&cfg.fio, &file, size, jobs, cfg.seq_limit)?;
        if want_seq {
            let done = cold.bytes >= size;
            self.record(
                "seq-large",
                &format!("{label}, cold"),
                system,
                "throughput",
                "MiB/s",
                true,
                run,
                cold.mib_per_s,
                done,
            );
            if !done {
                // Only part of the file is cached: warm and hot would not be about cached data.
                self.note("seq-large", format!("{} {label} cold read stopped at the {:?} limit after {} MiB; warm/hot skipped", system.label(), cfg.seq_limit, cold.bytes >> 20));
                self.record_rss(&m, "seq-large", run);
                return Ok(());
            }
            let fresh_copy = self.write_fresh_local_copy()?;
            self.warm_and_hot(&file, system, jobs, label, run)?;
            // The local-file reference, paired with this session's reads: the same settle,
            // the same moment, so a disk that drifts over the run affects both alike.
            self.warm_and_hot(&fresh_copy, System::LocalFile, jobs, label, run)?;
            std::fs::remove_file(&fresh_copy).map_err(|e| Error::io(&fresh_copy, e))?;
        }
        if jobs == 1 && cfg.workloads.contains(&Workload::Random4k) {
            self.settle()?;
            let r = fio::random_4k(&cfg.fio, &file, size, cfg.rand_seconds)?;
            self.record(
                "random-4k",
                "warm",
                system,
                "IOPS",
                "IOPS",
                true,
                run,
                r.iops,
                true,
            );
            self.record(
                "random-4k",
                "warm",
                system,
                "p50 latency",
                "µs",
                false,
                run,
                r.p50_us,
                true,
            );
            self.record(
                "random-4k",
                "warm",
                system,
                "p99 latency",
                "µs",
                false,
                run,
                r.p99_us,
                true,
            );
        }
        self.record_rss(&m, if want_seq { "seq-large" } else { "random-4k" }, run);
        Ok(())
    }

    fn epoch_session(&mut self, system: System, readers: usize, run: u32) -> Result<()> {
        let cfg = self.cfg;
        let m = self.mount(system, &format!("epoch{readers}"))?;
        let label = if readers == 1 {
            "1 reader"
        } else {
            "8 readers"
        };
        let files = cfg.spec.epoch_keys();
        let size_of = |rel: &str| size_of_epoch_key(rel);
        drop_page_caches()?;
        let order1 = epoch::shuffled(&files, u64::from(run) * 2 + 1);
        let e1 = epoch::run_epoch(&m.mountpoint, &order1, readers, cfg.epoch_limit, size_of)?;
        self.record(
            "epoch-small",
            &format!("{label}, epoch 1"),
            system,
            "files/s",
            "files/s",
            true,
            run,
            e1.files_per_s(),
            e1.complete,
        );
        if !e1.complete {
            self.note("epoch-small", format!("{} {label} epoch 1 stopped at the {:?} limit after {} of {} files; epoch 2 reads those {} files", system.label(), cfg.epoch_limit, e1.files, files.len(), e1.files));
        }
        // Epoch 2: the files epoch 1 read (all of them unless the limit cut it), reshuffled.
        let order2 = epoch::shuffled(&order1[..e1.files], u64::from(run) * 2 + 2);
        drop_page_caches()?;
        let e2 = epoch::run_epoch(&m.mountpoint, &order2, readers, cfg.epoch_limit, size_of)?;
        self.record(
            "epoch-small",
            &format!("{label}, epoch 2"),
            system,
            "files/s",
            "files/s",
            true,
            run,
            e2.files_per_s(),
            e2.complete,
        );
        self.record_rss(&m, "epoch-small", run);
        Ok(())
    }

    fn list_session(&mut self, system: System, run: u32) -> Result<()> {
        let cfg = self.cfg;
        let m = self.mount(system, "list")?;
        let dir = m.mountpoint.join(cfg.spec.list_prefix());
        drop_page_caches()?;
        let cold = listing::find_files(&dir, cfg.spec.list_objects, cfg.list_limit)?;
        self.record(
            "list",
            "cold",
            system,
            "seconds",
            "s",
            false,
            run,
            cold.seconds,
            cold.complete,
        );
        if !cold.complete {
            self.note(
                "list",
                format!(
                    "{} cold listing found {} of {} objects in {:.0} s (limit {:?})",
                    system.label(),
                    cold.entries,
                    cfg.spec.list_objects,
                    cold.seconds,
                    cfg.list_limit
                ),
            );
        }
        drop_page_caches()?;
        let warm = listing::find_files(&dir, cfg.spec.list_objects, cfg.list_limit)?;
        self.record(
            "list",
            "warm",
            system,
            "seconds",
            "s",
            false,
            run,
            warm.seconds,
            warm.complete,
        );
        self.record_rss(&m, "list", run);
        Ok(())
    }

    /// `ls` of one prefix of `objects` objects on a fresh mount, cold and then warm (the
    /// page cache and the kernel's dentries dropped before each), and what the mount
    /// process's memory grew by per cached entry over the cold listing.
    fn list_huge_session(&mut self, system: System, objects: usize, run: u32) -> Result<()> {
        let cfg = self.cfg;
        if self
            .listing_gave_up
            .iter()
            .any(|(s, l, n)| *s == system && *l == self.link && *n <= objects)
        {
            tracing::info!(
                system = system.label(),
                objects,
                "list-huge skipped: a listing at most this large hit the time limit earlier"
            );
            return Ok(());
        }
        let m = self.mount(system, &format!("list-huge-{objects}"))?;
        let dir = m.mountpoint.join(huge_prefix(objects));
        let case = |state: &str| format!("{objects} objects, {state}");
        drop_page_caches()?;
        let before = rss_bytes(m.pid());
        let cold = listing::ls_entries(&dir, objects, cfg.list_huge_limit, Some(m.pid()))?;
        let after = rss_bytes(m.pid());
        self.record(
            "list-huge",
            &case("cold"),
            system,
            "seconds",
            "s",
            false,
            run,
            cold.seconds,
            cold.complete,
        );
        if !cold.complete {
            self.note(
                "list-huge",
                format!(
                    "{} cold ls of {objects} objects listed {} in {:.0} s (limit {:?}); warm skipped, and this size and larger ones are not tried again in later runs",
                    system.label(),
                    cold.entries,
                    cold.seconds,
                    cfg.list_huge_limit
                ),
            );
            self.listing_gave_up
                .push((system, self.link.clone(), objects));
            self.record_rss(&m, "list-huge", run);
            return Ok(());
        }
        if let (Some(before), Some(after)) = (before, after) {
            self.record(
                "list-huge",
                &format!("{objects} objects"),
                system,
                "RSS per cached entry",
                "bytes",
                false,
                run,
                after.saturating_sub(before) as f64 / objects as f64,
                true,
            );
        }
        drop_page_caches()?;
        let warm = listing::ls_entries(&dir, objects, cfg.list_huge_limit, Some(m.pid()))?;
        self.record(
            "list-huge",
            &case("warm"),
            system,
            "seconds",
            "s",
            false,
            run,
            warm.seconds,
            warm.complete,
        );
        self.record_rss(&m, "list-huge", run);
        Ok(())
    }

    /// `strata-agent preload` of the epoch-small files into a fresh cache, against what the link
    /// carries for the same files with plenty of plain GETs in flight (and the tc cap, if set).
    fn preload_session(&mut self, run: u32) -> Result<()> {
        let cfg = self.cfg;
        let dir = &cfg.work_dir;
        let cache = dir.join("cache").join("strata-preload");
        if cache.exists() {
            std::fs::remove_dir_all(&cache).map_err(|e| Error::io(&cache, e))?;
        }
        let config = dir.join("preload-dataset.yaml");
        let yaml = format!(
            "name: bench\nsources:\n  - name: bench\n    uri: s3://{}/\n    endpoint: {}\n    region: us-east-1\n",
            crate::data::BUCKET,
            self.endpoint
        );
        std::fs::write(&config, yaml).map_err(|e| Error::io(&config, e))?;
        let mut c = std::process::Command::new(&cfg.programs.strata_agent);
        c.arg("preload")
            .arg("--dataset-config")
            .arg(&config)
            .arg("--cache-dir")
            .arg(&cache)
            .arg("--memory")
            .arg(cfg.quota.memory_bytes.to_string())
            .arg("--disk")
            .arg(cfg.quota.disk_bytes.to_string())
            .arg(format!("/{}/**", cfg.spec.epoch_prefix()))
            .env("AWS_ACCESS_KEY_ID", &self.creds.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.creds.secret_key)
            .env("STRATA_LOG", "warn");
        let bytes = cfg.spec.epoch_bytes() as f64;
        let start = std::time::Instant::now();
        let report = crate::process::run_checked(c)?;
        let secs = start.elapsed().as_secs_f64();
        let mib = bytes / (1024.0 * 1024.0);
        tracing::info!(report = %report.trim(), "preload report");
        self.record(
            "preload",
            "epoch-small data",
            System::Strata,
            "MiB/s",
            "MiB/s",
            true,
            run,
            mib / secs,
            true,
        );
        // The link's practical capacity for the same files: 64 whole-object GETs in flight.
        let store = s3_store(&self.endpoint, &self.creds)?;
        let files = cfg.spec.epoch_keys();
        let (n, gsecs) = self
            .rt
            .block_on(floor::whole_gets(store.as_ref(), &files, 64))?;
        let got = n as f64 / files.len() as f64 * mib;
        self.record(
            "preload",
            "epoch-small data",
            System::ObjectStore,
            "MiB/s",
            "MiB/s",
            true,
            run,
            got / gsecs,
            n == files.len(),
        );
        Ok(())
    }

    /// The local-file reference and the object_store floor.
    fn references(&mut self, run: u32, local_root: &Path) -> Result<()> {
        let cfg = self.cfg;
        let ws = &cfg.workloads;
        let local = local_root.join(cfg.spec.seq_key());
        let size = cfg.spec.seq_large_bytes;
        if ws.contains(&Workload::SeqLarge) {
            let store = s3_store(&self.endpoint, &self.creds)?;
            // 1 and 4 in flight: what a reader without readahead gets; 16 and 64: the most any
            // client gets from this server and link on this machine (no cache, no FUSE).
            for (parallel, case) in [
                (1usize, "1 job, cold"),
                (4, "4 jobs, cold"),
                (16, CEILING_CASES[0]),
                (64, CEILING_CASES[1]),
            ] {
                let key = cfg.spec.seq_key();
                let mibs = self.rt.block_on(floor::sequential_gets(
                    store.as_ref(),
                    &key,
                    size,
                    parallel,
                ))?;
                self.record(
                    "seq-large",
                    case,
                    System::ObjectStore,
                    "throughput",
                    "MiB/s",
                    true,
                    run,
                    mibs,
                    true,
                );
            }
        }
        if ws.contains(&Workload::Random4k) {
            self.settle()?;
            let r = fio::random_4k(&cfg.fio, &local, size, cfg.rand_seconds)?;
            self.record(
                "random-4k",
                "warm",
                System::LocalFile,
                "IOPS",
                "IOPS",
                true,
                run,
                r.iops,
                true,
            );
            self.record(
                "random-4k",
                "warm",
                System::LocalFile,
                "p50 latency",
                "µs",
                false,
                run,
                r.p50_us,
                true,
            );
            self.record(
                "random-4k",
                "warm",
                System::LocalFile,
                "p99 latency",
                "µs",
                false,
                run,
                r.p99_us,
                true,
            );
        }
        if ws.contains(&Workload::ListHuge) {
            // The source's own paging floor: every page in turn through the same link.
            let store = s3_store(&self.endpoint, &self.creds)?;
            for &objects in &cfg.list_huge {
                let prefix = format!("{}/", huge_prefix(objects));
                let (entries, pages, secs) = self
                    .rt
                    .block_on(floor::paged_listing(store.as_ref(), &prefix))?;
                self.record(
                    "list-huge",
                    &format!("{objects} objects, cold"),
                    System::ObjectStore,
                    "seconds",
                    "s",
                    false,
                    run,
                    secs,
                    entries == objects,
                );
                self.record(
                    "list-huge",
                    &format!("{objects} objects"),
                    System::ObjectStore,
                    "pages",
                    "pages",
                    false,
                    run,
                    pages as f64,
                    true,
                );
            }
        }
        if ws.contains(&Workload::EpochSmall) {
            let files = cfg.spec.epoch_keys();
            let store = s3_store(&self.endpoint, &self.creds)?;
            for (readers, label) in [(1usize, "1 reader"), (8, "8 readers")] {
                for e in [1u64, 2] {
                    drop_page_caches()?;
                    let order = epoch::shuffled(&files, u64::from(run) * 2 + e);
                    let r = epoch::run_epoch(
                        local_root,
                        &order,
                        readers,
                        cfg.epoch_limit,
                        size_of_epoch_key,
                    )?;
                    self.record(
                        "epoch-small",
                        &format!("{label}, epoch {e}"),
                        System::LocalFile,
                        "files/s",
                        "files/s",
                        true,
                        run,
                        r.files_per_s(),
                        r.complete,
                    );
                }
                // The floor has no cache: what every epoch costs without one. Bounded by the
                // same time limit through a subset (files/s is a rate).
                let order = epoch::shuffled(&files, u64::from(run) * 2 + 1);
                let subset = &order[..order.len().min(if readers == 1 { 300 } else { 2000 })];
                let (n, secs) =
                    self.rt
                        .block_on(floor::whole_gets(store.as_ref(), subset, readers))?;
                self.record(
                    "epoch-small",
                    &format!("{label}, epoch 1"),
                    System::ObjectStore,
                    "files/s",
                    "files/s",
                    true,
                    run,
                    n as f64 / secs,
                    n == files.len(),
                );
            }
        }
        Ok(())
    }
}

struct MountPaths {
    mountpoint: PathBuf,
    cache: PathBuf,
    log: PathBuf,
    logs: PathBuf,
}

/// One mount session of a workload on one system.
type Session = Box<dyn Fn(&mut Ctx) -> Result<()>>;

fn size_of_epoch_key(rel: &str) -> u64 {
    // ".../sample-000123.bin" -> index 123
    let idx = rel
        .rsplit('-')
        .next()
        .and_then(|s| s.trim_end_matches(".bin").parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    epoch_file_size(idx)
}

fn section(cfg: &RunConfig, load_before: f64) -> SectionMeta {
    SectionMeta {
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M").to_string(),
        commit: cfg.commit.clone(),
        runs: cfg.runs,
        quick: cfg.quick,
        spec: cfg.spec,
        load_before,
        load_after: load_average(),
        machine: Some(machine_info().summary()),
    }
}

/// Runs the configured workloads and returns what was measured.
pub fn run(cfg: &RunConfig, rt: &Runtime) -> Result<BenchResults> {
    let mut results = BenchResults {
        machine: machine_info(),
        ..Default::default()
    };
    let live: Vec<Workload> = cfg
        .workloads
        .iter()
        .copied()
        .filter(|w| *w != Workload::HitRatio)
        .collect();
    if !live.is_empty() {
        let load_before = load_average();
        let creds = S3Credentials::generate();
        let shaped = cfg.bandwidth_mbit.map(ShapedLink::create).transpose()?;
        let server_ip = shaped
            .as_ref()
            .map(|s| s.server_ip())
            .unwrap_or([127, 0, 0, 1].into());
        let weed_dir = cfg.work_dir.join(match &shaped {
            Some(_) => "seaweedfs-shaped",
            None => "seaweedfs",
        });
        let server = SeaweedFs::start(
            &SeaweedOptions {
                program: cfg.weed.clone(),
                data_dir: weed_dir.clone(),
                ip: server_ip,
                netns: shaped.as_ref().map(|s| s.namespace.clone()),
            },
            &creds,
        )?;
        // An interrupted run (SIGINT/SIGTERM during the cluster workload) stops it too.
        let server_pid =
            crate::clusternet::Registered::new(crate::clusternet::Resource::Process(server.pid()));
        let direct = s3_store(&server.endpoint_url(), &creds)?;
        rt.block_on(wait_writable(&direct))?;
        // Uploads are remembered per server data dir.
        let data = DataSets {
            spec: cfg.spec,
            wanted: Wanted {
                seq: live.contains(&Workload::SeqLarge)
                    || live.contains(&Workload::Random4k)
                    || live.contains(&Workload::Restart)
                    || live.contains(&Workload::Cluster)
                    || live.contains(&Workload::Hdfs),
                epoch: live.contains(&Workload::EpochSmall)
                    || live.contains(&Workload::Preload)
                    || live.contains(&Workload::Cluster)
                    || live.contains(&Workload::Hdfs),
                list: live.contains(&Workload::List),
            },
            list_huge: if live.contains(&Workload::ListHuge) {
                &cfg.list_huge
            } else {
                &[]
            },
            store: direct.clone(),
            local_root: cfg.work_dir.join("local"),
            work_dir: &weed_dir,
        };
        let secs = rt.block_on(data.ensure())?;
        tracing::info!(secs, "data sets ready");
        results.versions.insert(
            "SeaweedFS".into(),
            crate::mounts::version_of(&cfg.weed, "version").replace("version ", ""),
        );
        results.versions.insert(
            "rclone".into(),
            crate::mounts::version_of(&cfg.programs.rclone, "version"),
        );
        results.versions.insert(
            "s3fs".into(),
            crate::mounts::version_of(&cfg.programs.s3fs, "--version"),
        );
        results.versions.insert(
            "fio".into(),
            crate::mounts::version_of(&cfg.fio, "--version"),
        );
        results.memory_quota_bytes = Some(cfg.quota.memory_bytes);
        results.settings.insert(
            "cache quota (every system)".into(),
            format!(
                "memory {} MiB (Strata's memory tier; rclone and s3fs have no such knob), disk {} MiB",
                cfg.quota.memory_bytes >> 20,
                cfg.quota.disk_bytes >> 20
            ),
        );
        results.settings.insert("Strata".into(), "`strata-agent mount s3://bench/ MNT --endpoint URL --cache-dir D --memory M --disk D --metadata-ttl 1h`, defaults otherwise (S3-FIFO, 4 MiB blocks, 128 MiB readahead per file, adjacent blocks fetched with one GET of up to 16 MiB, directory prefetch after 4 small files read whole, FUSE passthrough for fully cached files)".into());
        results.settings.insert("rclone".into(), "`rclone mount --vfs-cache-mode full --read-only --vfs-cache-max-size D --dir-cache-time 1h`, defaults otherwise".into());
        results.settings.insert("s3fs".into(), "`s3fs -o use_cache=D,ro,use_path_request_style,stat_cache_expire=3600`, defaults otherwise".into());
        results.settings.insert(
            "settle".into(),
            format!(
                "`sync`, then {} s idle, then drop the page cache, before every warm read (each system's and the local file's): this VM's disk reads the same file at ~0.6 GB/s instead of ~2 GB/s for 5 to 35 s after a GiB of writes, and each cold read has just written one",
                cfg.settle.as_secs_f64()
            ),
        );
        results.settings.insert(
            "S3 server".into(),
            format!("SeaweedFS `weed server` on {server_ip}, telemetry off"),
        );
        results.settings.insert(
            "link".into(),
            format!(
                "delaying TCP proxy (strata-bench proxy): each chunk held for the one-way delay in each direction, order kept, plus one round trip per new connection{}",
                match cfg.bandwidth_mbit {
                    Some(m) => format!("; bandwidth capped at {m} Mbit/s each way with tc tbf on a veth pair into a network namespace"),
                    None => "; no bandwidth cap".into(),
                }
            ),
        );
        if live.contains(&Workload::Cluster) {
            crate::clusternet::cleanup_on_signal(rt);
            results.settings.insert(
                "cluster".into(),
                format!(
                    "three `strata-agent serve` (`nsenter --net=/run/netns/NS`), one per network namespace, {}.11-13/24 on veth pairs to a bridge in the root namespace (unshaped); each `--listen IP:7070 --peer-token-file F --metrics-listen IP:7071 --memory {} MiB --disk {} MiB`, and either `--node-name N --peers-file P` listing all three (cluster cache, `replicas: 1`) or `--no-peers` (independent caches, one node alone); the dataset PUT over each agent's unix socket and mounted with a volume (FUSE), read from the root namespace; the WAN proxy listens on the bridge ({}), and its byte count is the source bytes",
                    "10.78.0",
                    cfg.quota.memory_bytes >> 20,
                    cfg.quota.disk_bytes >> 20,
                    crate::clusternet::BRIDGE_IP
                ),
            );
        }
        if live.contains(&Workload::Write) {
            results.settings.insert(
                "write".into(),
                format!(
                    "the large file by one writer in 1 MiB `write` calls, then `close`; the {} small files of 1 MiB by {} writer(s) at once, each writing its files one after another (open, one 1 MiB `write`, `close`), no fsync. Strata: `strata-agent serve --memory M --disk D --no-peers`, the dataset (`writeMode: WriteBack` or `WriteThrough`, `metadataTtl: 1h`) PUT over its unix socket and mounted with a volume; rclone: `rclone mount --vfs-cache-mode writes --vfs-cache-max-size D --dir-cache-time 1h`, defaults otherwise (uploads 5 s after the last close, `--vfs-write-back`); s3fs: `s3fs -o use_cache=D,use_path_request_style,stat_cache_expire=3600`. At the source = the bucket polled every {} ms at the S3 server itself (not through the link) until every object has its whole size. `sync`, {} s idle and the page cache dropped before each measurement; the objects deleted and SeaweedFS vacuumed after it",
                    cfg.write_files,
                    cfg.write_writers
                        .iter()
                        .map(|w| w.to_string())
                        .collect::<Vec<_>>()
                        .join(" or "),
                    write::POLL.as_millis(),
                    cfg.settle.as_secs_f64()
                ),
            );
        }
        if live.contains(&Workload::Hdfs) {
            results.settings.insert(
                "hdfs".into(),
                format!(
                    "a MiniDFSCluster (hadoop-client-minicluster 3.4.1, Java 17; one namenode, one datanode, {} MiB blocks) behind the same delaying link as the S3 server: the namenode through one proxy, the datanode (on 127.0.0.1, calling itself 127.0.0.2) through a second one on 127.0.0.2 with `dfs.client.use.datanode.hostname: true`; the data copied in beforehand with `strata-agent migrate` (not through the link). Each source: `strata-agent serve --memory M --disk D --no-peers`, the dataset (`metadataTtl: 1h`) PUT over its socket and mounted with a volume, seq-large read whole by 1 reader, epoch-small by {} readers (1 MiB reads as epoch-small), cold then warm (`sync`, settle, page cache dropped); object_store GETs = the raw ceiling through the link (8 MiB ranges 16 in flight; 64 files in flight). Migration: `strata-agent migrate --config` of epoch-small from hdfs:// to s3:// (both through the link, {} objects at once, each verified), against the raw copy (GET from HDFS, PUT to S3, {} at once, nothing verified)",
                    128,
                    8,
                    16,
                    16
                ),
            );
        }
        let mut ctx = Ctx {
            cfg,
            rt,
            creds: creds.clone(),
            link: String::new(),
            endpoint: String::new(),
            s3_addr: server.s3_addr,
            s3_pid: server.pid(),
            master_addr: server.master_addr,
            proxy_pid: 0,
            proxy_stats: None,
            delay: Duration::ZERO,
            out: results,
            listing_gave_up: Vec::new(),
        };
        for delay in &cfg.delays {
            let logs = cfg.work_dir.join("logs");
            std::fs::create_dir_all(&logs).map_err(|e| Error::io(&logs, e))?;
            // With its byte counts: the write workload compares the bytes each system sent.
            let proxy = DelayProxyProcess::start_on(
                [127, 0, 0, 1].into(),
                server.s3_addr,
                *delay,
                &logs.join("proxy.log"),
                true,
            )?;
            let _proxy_pid = crate::clusternet::Registered::new(
                crate::clusternet::Resource::Process(proxy.pid()),
            );
            ctx.link = match cfg.bandwidth_mbit {
                Some(m) => format!("{} ms, {m} Mbit/s", delay.as_millis()),
                None => format!("{} ms", delay.as_millis()),
            };
            ctx.endpoint = proxy.endpoint_url();
            ctx.delay = *delay;
            ctx.proxy_pid = proxy.pid();
            ctx.proxy_stats = proxy.stats_addr();
            for run in 1..=cfg.runs {
                tracing::info!(run, link = %ctx.link, "run");
                for &system in &cfg.systems {
                    let mut sessions: Vec<(&str, Session)> = Vec::new();
                    if live.contains(&Workload::SeqLarge) || live.contains(&Workload::Random4k) {
                        sessions.push((
                            "seq-large",
                            Box::new(move |c: &mut Ctx| c.seq_session(system, 1, run)),
                        ));
                    }
                    if live.contains(&Workload::SeqLarge) {
                        sessions.push((
                            "seq-large",
                            Box::new(move |c: &mut Ctx| c.seq_session(system, 4, run)),
                        ));
                    }
                    if live.contains(&Workload::EpochSmall) {
                        sessions.push((
                            "epoch-small",
                            Box::new(move |c: &mut Ctx| c.epoch_session(system, 1, run)),
                        ));
                        sessions.push((
                            "epoch-small",
                            Box::new(move |c: &mut Ctx| c.epoch_session(system, 8, run)),
                        ));
                    }
                    if live.contains(&Workload::List) {
                        sessions.push((
                            "list",
                            Box::new(move |c: &mut Ctx| c.list_session(system, run)),
                        ));
                    }
                    if live.contains(&Workload::ListHuge) {
                        for &objects in &cfg.list_huge {
                            sessions.push((
                                "list-huge",
                                Box::new(move |c: &mut Ctx| {
                                    c.list_huge_session(system, objects, run)
                                }),
                            ));
                        }
                    }
                    if live.contains(&Workload::Restart) {
                        sessions.push((
                            "restart",
                            Box::new(move |c: &mut Ctx| c.restart_session(system, run)),
                        ));
                    }
                    if live.contains(&Workload::Preload) && system == System::Strata {
                        sessions.push((
                            "preload",
                            Box::new(move |c: &mut Ctx| c.preload_session(run)),
                        ));
                    }
                    if live.contains(&Workload::Cluster) && system == System::Strata {
                        sessions.push((
                            "cluster",
                            Box::new(move |c: &mut Ctx| c.cluster_session(run)),
                        ));
                    }
                    for (workload, session) in sessions {
                        if let Err(e) = session(&mut ctx) {
                            ctx.note(
                                workload,
                                format!("{} run {run} failed: {e}", system.label()),
                            );
                        }
                    }
                }
                let local_root = cfg.work_dir.join("local");
                if let Err(e) = ctx.references(run, &local_root) {
                    ctx.note("seq-large", format!("references run {run} failed: {e}"));
                }
                if live.contains(&Workload::Write) {
                    // Every system in one sequence per shape, its references beside it.
                    ctx.write_run(run);
                }
                if live.contains(&Workload::Hdfs) {
                    ctx.hdfs_run(run);
                }
            }
        }
        results = ctx.out;
        let load_after_meta = section(cfg, load_before);
        for w in &live {
            results
                .sections
                .insert(w.name().into(), load_after_meta.clone());
        }
        drop(server_pid);
        drop(server);
        drop(shaped);
    }
    if cfg.workloads.contains(&Workload::HitRatio) {
        let load_before = load_average();
        let traces = sim::trace::standard_traces(cfg.quick);
        results.traces = traces
            .iter()
            .map(|t| TraceInfo {
                name: t.name.clone(),
                description: t.description.clone(),
                block_accesses: t.accesses.len(),
                total_bytes: t.total_bytes(),
                footprint_bytes: t.footprint_bytes,
            })
            .collect();
        results.hit_ratio = sim::run_study(&traces);
        results.sections.insert(
            "hit-ratio".into(),
            SectionMeta {
                runs: 1,
                ..section(cfg, load_before)
            },
        );
    }
    Ok(results)
}
