//! The write workload: one large file written sequentially (1 MiB writes, then close) and
//! many 1 MiB files written one after another by one writer, into Strata (write-back and
//! write-through: a dataset of `strata-agent serve` with that `writeMode`, mounted through a
//! volume), rclone (`--vfs-cache-mode writes`) and s3fs, each through the WAN link. For each:
//! the time the writer sees (first open to last close), and the time until every object is
//! whole at the source, seen by polling the bucket at the S3 server itself (not through the
//! link); for Strata also when the agent's own counters say everything is uploaded.
//!
//! Beside them, in the same run: the local disk's own write of the same files (write, fsync,
//! close, on the disk the caches live on) and the raw-PUT ceiling (the same bytes PUT from
//! memory through the same link, as many in flight as Strata's uploader keeps: 8 PUTs, or
//! one multipart upload of 8 MiB parts, 8 and 4 parts in flight).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strata_agent::api::client::AgentClient;
use strata_agent::metrics::{SOURCE_REQUESTS, WRITE_PENDING_FILES, WRITE_UPLOADED_FILES};

use super::Ctx;
use super::cluster::{agent_metrics, metric_sum};
use crate::data::s3_store;
use crate::mounts::{System, is_mounted};
use crate::process::{ChildGuard, cpu_seconds, free_port, machine_cpu_ticks, wait_until};
use crate::workloads::write::{
    Awaited, Content, Shape, delete_prefix, raw_puts, verify_sample, wait_whole, write_files,
};
use crate::{Error, Result};

pub const WORKLOAD: &str = "write";
const NAMESPACE: &str = "bench";
const DATASET: &str = "write";
/// How often the bucket is polled for the objects.
pub(super) const POLL: Duration = Duration::from_millis(100);
/// In flight in the raw-PUT ceiling: Strata's uploader runs 8 operations per dataset, and
/// 4 parts of one multipart upload at once (engine/src/writes/upload.rs).
const UPLOADS_IN_FLIGHT: usize = 8;
const PARTS_IN_FLIGHT: usize = 4;

pub const MODE_BACK: &str = "write-back";
pub const MODE_THROUGH: &str = "write-through";
pub const CASE_LOCAL: &str = "local disk, write + fsync";
pub const CASE_RAW: &str = "raw PUTs, 8 in flight";
pub const CASE_RAW_PARTS: &str = "raw PUTs, 4 parts in flight";

pub const WRITER_S: &str = "writer s";
pub const WRITER_MIBS: &str = "writer MiB/s";
pub const SOURCE_S: &str = "at the source s";
pub const AFTER_CLOSE_S: &str = "at the source after the last close s";
pub const AGENT_S: &str = "agent: all uploaded s";
pub const LINK_UP: &str = "link bytes up / data";
pub const CPU_MOUNT: &str = "CPU s, mount process";
pub const CPU_SOURCE: &str = "CPU s, S3 server + proxy";
pub const CPU_HARNESS: &str = "CPU s, writer + watcher";
pub const BUSY: &str = "machine CPU busy";
/// Followed by the operation ("head", "list", "put", ...): Strata's source requests per file.
pub const REQUESTS_PER_FILE: &str = "source requests per file: ";

/// A system and, for Strata, the write mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    Strata { through: bool },
    Peer(System),
}

impl Writer {
    pub fn system(self) -> System {
        match self {
            Writer::Strata { .. } => System::Strata,
            Writer::Peer(s) => s,
        }
    }

    /// The case of `shape` for this writer: "1 x 1024 MiB, write-back", "1000 x 1 MiB".
    pub fn case(self, shape: Shape) -> String {
        match self {
            Writer::Strata { through: false } => format!("{}, {MODE_BACK}", shape.label()),
            Writer::Strata { through: true } => format!("{}, {MODE_THROUGH}", shape.label()),
            Writer::Peer(_) => shape.label(),
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Writer::Strata { through: false } => "strata-wb",
            Writer::Strata { through: true } => "strata-wt",
            Writer::Peer(System::Rclone) => "rclone",
            Writer::Peer(System::S3fs) => "s3fs",
            Writer::Peer(_) => "other",
        }
    }
}

/// `strata-agent serve` with one dataset (writable in the write workload), mounted
/// through a volume.
pub(super) struct WritableAgent {
    child: ChildGuard,
    metrics: SocketAddr,
    pub(super) mount: PathBuf,
    cache: PathBuf,
}

impl WritableAgent {
    /// The agent's requests to the source so far, by operation (head, list, get, put, ...).
    fn source_requests(&self) -> Result<BTreeMap<String, f64>> {
        let text = agent_metrics(self.metrics, "the writable agent")?;
        let name = format!("{SOURCE_REQUESTS}_total{{");
        let mut out = BTreeMap::new();
        for line in text.lines().filter(|l| l.starts_with(&name)) {
            let op = line
                .split("op=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next());
            let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
            if let (Some(op), Some(value)) = (op, value) {
                *out.entry(op.to_string()).or_default() += value;
            }
        }
        Ok(out)
    }

    fn uploaded_files(&self) -> Result<f64> {
        let text = agent_metrics(self.metrics, "the writable agent")?;
        Ok(metric_sum(
            &text,
            &format!("{WRITE_UPLOADED_FILES}_total"),
            None,
        ))
    }

    /// Polls the agent's counters until `files` more files than `before` were uploaded and
    /// none is pending; returns when that was seen, or None at `deadline`.
    fn wait_uploaded(
        &self,
        before: f64,
        files: usize,
        deadline: Instant,
    ) -> Result<Option<Instant>> {
        loop {
            let text = agent_metrics(self.metrics, "the writable agent")?;
            let uploaded = metric_sum(&text, &format!("{WRITE_UPLOADED_FILES}_total"), None);
            let pending = metric_sum(&text, WRITE_PENDING_FILES, None);
            if uploaded - before >= files as f64 && pending == 0.0 {
                return Ok(Some(Instant::now()));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for WritableAgent {
    fn drop(&mut self) {
        // SIGTERM: the agent unmounts its datasets and exits.
        self.child.stop(Duration::from_secs(20));
        if is_mounted(&self.mount) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.mount)
                .output();
        }
        if self.cache.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.cache)
        {
            tracing::warn!(cache = %self.cache.display(), error = %e, "could not remove the writable agent's cache");
        }
    }
}

/// Where a measurement writes: the mount of `writer`, its process, and for Strata the agent.
#[derive(Clone, Copy)]
struct Target<'a> {
    writer: Writer,
    root: &'a Path,
    mount_pid: u32,
    agent: Option<&'a WritableAgent>,
}

/// The CPU counters read before and after one measurement.
struct Cpu {
    mount: f64,
    source: f64,
    harness: f64,
    machine: Option<(u64, u64)>,
}

impl Ctx<'_> {
    /// The write workload's shapes: the seq-large size as one file, and the small files
    /// by each number of writers.
    fn write_shapes(&self) -> Vec<Shape> {
        let cfg = self.cfg;
        let mut shapes = vec![Shape::Large {
            bytes: cfg.spec.seq_large_bytes,
        }];
        for &writers in &cfg.write_writers {
            shapes.push(Shape::Small {
                files: cfg.write_files,
                writers,
            });
        }
        shapes
    }

    /// The S3 server itself, not through the link: where the watcher polls.
    fn direct_store(&self) -> Result<std::sync::Arc<object_store::aws::AmazonS3>> {
        s3_store(&format!("http://{}", self.s3_addr), &self.creds)
    }

    fn cpu_now(&self, mount_pid: u32) -> Cpu {
        let cpu = |pids: &[u32]| pids.iter().filter_map(|p| cpu_seconds(*p)).sum::<f64>();
        Cpu {
            mount: cpu(&[mount_pid]),
            source: cpu(&[self.s3_pid, self.proxy_pid]),
            harness: cpu(&[std::process::id()]),
            machine: machine_cpu_ticks(),
        }
    }

    fn link_up_bytes(&self) -> Option<u64> {
        let addr = self.proxy_stats?;
        match crate::proxy::counts_at(addr) {
            Ok(c) => Some(c.upstream_bytes),
            Err(e) => {
                tracing::warn!(error = %e, "no byte counts from the proxy");
                None
            }
        }
    }

    /// Refuses to start a measurement that could fill the disk: the written bytes sit in
    /// two places at once (a cache or staging file, and the S3 server's volumes), plus
    /// room for garbage not yet vacuumed, and this disk is shared.
    fn check_room(&self, shape: Shape) -> Result<()> {
        let dir = &self.cfg.work_dir;
        let need = 2 * shape.total_bytes() + (512 << 20);
        let free = nix::sys::statvfs::statvfs(dir.as_path())
            .map(|s| s.blocks_available() * s.fragment_size())
            .map_err(|e| Error::io(dir, std::io::Error::from(e)))?;
        if free < need {
            return Err(Error::Config {
                field: "work dir",
                detail: format!(
                    "only {} MiB free on the disk of {}, and writing {} needs {} MiB; skipped",
                    free >> 20,
                    dir.display(),
                    shape.label(),
                    need >> 20
                ),
            });
        }
        Ok(())
    }

    /// Removes what a measurement left at the source and gives SeaweedFS the disk space
    /// back.
    pub(super) fn write_cleanup(&self, prefix: &str) {
        let removed = self
            .direct_store()
            .and_then(|s| self.rt.block_on(delete_prefix(s.as_ref(), prefix)));
        if let Err(e) = removed {
            tracing::warn!(prefix, error = %e, "could not delete the written objects");
        }
        // The filer hands the deleted chunks to the volume servers in the background.
        std::thread::sleep(Duration::from_secs(2));
        if let Err(e) = crate::s3server::vacuum(self.master_addr) {
            tracing::warn!(error = %e, "SeaweedFS vacuum failed");
        }
    }

    /// One shape on a fresh mount (or agent), whose cache is removed afterwards: rclone and
    /// s3fs keep every file written in their caches, and this disk has little room.
    fn write_on_fresh_mount(&mut self, writer: Writer, shape: Shape, run: u32) -> Result<()> {
        match writer {
            Writer::Strata { through } => {
                let agent = self.start_writable_agent(through, run)?;
                let target = Target {
                    writer,
                    root: &agent.mount,
                    mount_pid: agent.child.pid(),
                    agent: Some(&agent),
                };
                let r = self.write_measure(target, shape, run);
                if let Some(rss) = agent.child.peak_rss_bytes() {
                    self.record(
                        "memory",
                        WORKLOAD,
                        System::Strata,
                        "peak RSS",
                        "MiB",
                        false,
                        run,
                        rss as f64 / (1024.0 * 1024.0),
                        true,
                    );
                }
                // Stopped, unmounted, its cache removed.
                drop(agent);
                r
            }
            Writer::Peer(system) => {
                let m = self.mount_as(system, WORKLOAD, true)?;
                let target = Target {
                    writer,
                    root: &m.mountpoint,
                    mount_pid: m.pid(),
                    agent: None,
                };
                let r = self.write_measure(target, shape, run);
                self.record_rss(&m, WORKLOAD, run);
                drop(m);
                // Empties the cache dir the mount used.
                self.mount_paths(system, WORKLOAD)?;
                r
            }
        }
    }

    /// A failed measurement is written down and the next one goes on.
    fn note_step(&mut self, what: &str, run: u32, r: Result<()>) {
        if let Err(e) = r {
            self.note(WORKLOAD, format!("{what}, run {run}, failed: {e}"));
        }
    }

    fn start_writable_agent(&self, through: bool, run: u32) -> Result<WritableAgent> {
        let mode = if through { MODE_THROUGH } else { MODE_BACK };
        let config = serde_json::json!({
            "sources": [{
                "name": "bench",
                "uri": format!("s3://{}/", crate::data::BUCKET),
                "endpoint": self.endpoint,
                "region": "us-east-1",
                "writeMode": if through { "WriteThrough" } else { "WriteBack" },
            }],
            "cache": {"metadataTtl": "1h"},
        });
        self.start_dataset_agent(&format!("write-{mode}-run{run}"), &config)
    }

    /// `strata-agent serve` (fresh cache, S3 credentials in its environment) with the one
    /// dataset `config` PUT over its unix socket and mounted through a volume; `what` names
    /// its log (`logs/strata-<what>.log`).
    pub(super) fn start_dataset_agent(
        &self,
        what: &str,
        config: &serde_json::Value,
    ) -> Result<WritableAgent> {
        let cfg = self.cfg;
        let dir = cfg.work_dir.join("write-agent");
        let cache = dir.join("cache");
        if cache.exists() {
            std::fs::remove_dir_all(&cache).map_err(|e| Error::io(&cache, e))?;
        }
        let mount_root = dir.join("mnt");
        for d in [&cache, &mount_root] {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        let socket = dir.join("agent.sock");
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut c = std::process::Command::new(&cfg.programs.strata_agent);
        c.arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--metrics-listen")
            .arg(metrics.to_string())
            .arg("--mount-root")
            .arg(&mount_root)
            .arg("--cache-dir")
            .arg(&cache)
            .arg("--memory")
            .arg(cfg.quota.memory_bytes.to_string())
            .arg("--disk")
            .arg(cfg.quota.disk_bytes.to_string())
            .arg("--no-peers")
            .env("AWS_ACCESS_KEY_ID", &self.creds.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.creds.secret_key)
            .env("STRATA_LOG", "warn");
        let log = cfg.work_dir.join("logs").join(format!("strata-{what}.log"));
        let child = ChildGuard::spawn(&format!("strata-agent serve ({what})"), c, &log)?;
        let mut agent = WritableAgent {
            child,
            metrics,
            mount: PathBuf::new(),
            cache,
        };
        let api = AgentClient::unix(&socket).with_timeout(Duration::from_secs(60));
        wait_until(
            "the agent",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                agent.child.check_alive().map_err(|e| e.to_string())?;
                self.rt
                    .block_on(api.ready())
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        )?;
        let agent_error = |step: &str, e: strata_agent::api::client::ClientError| Error::Command {
            command: format!("{step} on the agent ({what})"),
            detail: e.to_string(),
        };
        self.rt
            .block_on(api.put_dataset(NAMESPACE, DATASET, config))
            .map_err(|e| agent_error("PUT dataset", e))?;
        let volume = self
            .rt
            .block_on(api.acquire_volume(NAMESPACE, DATASET, "bench-volume", None))
            .map_err(|e| agent_error("acquire volume", e))?;
        agent.mount = volume.mount_path.clone();
        if !is_mounted(&agent.mount) {
            return Err(Error::Config {
                field: "agent",
                detail: format!(
                    "the agent said the dataset is mounted at {}, but it is not in the mount table",
                    agent.mount.display()
                ),
            });
        }
        Ok(agent)
    }

    /// One shape on one writer: write it into `root`, wait until the source has it whole,
    /// record, check a sample of the bytes, and remove it again.
    fn write_measure(&mut self, target: Target<'_>, shape: Shape, run: u32) -> Result<()> {
        let top = format!("write-{run}-{}", target.writer.slug());
        let prefix = format!("{top}/{}", shape.slug());
        let result = self.write_measure_in(&target, shape, &prefix, run);
        self.write_cleanup(&top);
        result
    }

    fn write_measure_in(
        &mut self,
        target: &Target<'_>,
        shape: Shape,
        prefix: &str,
        run: u32,
    ) -> Result<()> {
        let cfg = self.cfg;
        let Target {
            writer,
            root,
            mount_pid,
            agent,
        } = *target;
        let system = writer.system();
        let case = writer.case(shape);
        self.check_room(shape)?;
        let dir = root.join(prefix);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let content = Content::new(u64::from(run));
        let direct = self.direct_store()?;
        self.settle()?;
        let uploaded_before = agent.map(|a| a.uploaded_files()).transpose()?;
        let requests_before = agent.map(|a| a.source_requests()).transpose()?;
        let cpu_before = self.cpu_now(mount_pid);
        let link_before = self.link_up_bytes();
        let start = Instant::now();
        let deadline = start + cfg.write_limit;
        let watcher = {
            let store = direct.clone();
            let awaited = Awaited::new(prefix, shape);
            self.rt
                .spawn(async move { wait_whole(store.as_ref(), awaited, POLL, deadline).await })
        };
        let wrote = write_files(&dir, shape, &content, false, cfg.write_limit);
        let closed = Instant::now();
        let wrote = match wrote {
            Ok(w) if w.complete => w,
            other => {
                watcher.abort();
                let detail = match other {
                    Ok(w) => format!(
                        "the writer stopped at the {:?} limit after {} of {} files",
                        cfg.write_limit,
                        w.files,
                        shape.files().len()
                    ),
                    Err(e) => format!("the writer failed: {e}"),
                };
                return Err(Error::Command {
                    command: format!("{} {case}", system.label()),
                    detail,
                });
            }
        };
        let agent_done = match (agent, uploaded_before) {
            (Some(a), Some(before)) => a.wait_uploaded(before, wrote.files, deadline)?,
            _ => None,
        };
        let at_source = self.rt.block_on(watcher).map_err(|e| Error::Command {
            command: "the bucket watcher".into(),
            detail: e.to_string(),
        })??;
        let requests_after = agent.map(|a| a.source_requests()).transpose()?;
        let cpu_after = self.cpu_now(mount_pid);
        let link_after = self.link_up_bytes();
        let data = shape.total_bytes() as f64;
        let secs = |t: Instant| t.duration_since(start).as_secs_f64();
        let complete = at_source.is_some();
        let mut figures = vec![
            (WRITER_S, "s", false, wrote.seconds, true),
            (WRITER_MIBS, "MiB/s", true, wrote.mib_per_s(), true),
        ];
        if let Some(t) = at_source {
            figures.push((SOURCE_S, "s", false, secs(t), true));
            figures.push((
                AFTER_CLOSE_S,
                "s",
                false,
                t.saturating_duration_since(closed).as_secs_f64(),
                true,
            ));
        }
        if let Some(t) = agent_done {
            figures.push((AGENT_S, "s", false, secs(t), true));
        }
        if let (Some(a), Some(b)) = (link_before, link_after) {
            figures.push((LINK_UP, "x", false, (b - a) as f64 / data, complete));
        }
        figures.push((
            CPU_MOUNT,
            "s",
            false,
            cpu_after.mount - cpu_before.mount,
            complete,
        ));
        figures.push((
            CPU_SOURCE,
            "s",
            false,
            cpu_after.source - cpu_before.source,
            complete,
        ));
        figures.push((
            CPU_HARNESS,
            "s",
            false,
            cpu_after.harness - cpu_before.harness,
            complete,
        ));
        if let (Some((b0, t0)), Some((b1, t1))) = (cpu_before.machine, cpu_after.machine)
            && t1 > t0
        {
            figures.push((
                BUSY,
                "%",
                false,
                (b1 - b0) as f64 / (t1 - t0) as f64 * 100.0,
                complete,
            ));
        }
        for (metric, unit, hib, value, done) in figures {
            self.record(WORKLOAD, &case, system, metric, unit, hib, run, value, done);
        }
        // What the agent asked of the source per file written (Strata's counters).
        if let (Some(before), Some(after)) = (requests_before, requests_after) {
            for (op, n) in &after {
                let d = n - before.get(op).copied().unwrap_or(0.0);
                if d > 0.0 {
                    self.record(
                        WORKLOAD,
                        &case,
                        system,
                        &format!("{REQUESTS_PER_FILE}{op}"),
                        "requests",
                        false,
                        run,
                        d / wrote.files as f64,
                        complete,
                    );
                }
            }
        }
        match at_source {
            None => self.note(
                WORKLOAD,
                format!(
                    "{} {case} run {run}: not every object was whole at the source within {:?} of the first open",
                    system.label(),
                    cfg.write_limit
                ),
            ),
            Some(_) => {
                if let Err(e) =
                    self.rt
                        .block_on(verify_sample(direct.as_ref(), prefix, shape, &content))
                {
                    self.note(
                        WORKLOAD,
                        format!("{} {case} run {run}: {e}", system.label()),
                    );
                }
            }
        }
        Ok(())
    }

    /// The local-disk reference: the files of `shape` written, fsynced and closed by as
    /// many writers on the disk the caches are on.
    fn write_local(&mut self, shape: Shape, run: u32) -> Result<()> {
        let cfg = self.cfg;
        self.check_room(shape)?;
        let dir = cfg.work_dir.join("write-local");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        self.settle()?;
        let content = Content::new(u64::from(run));
        let local = write_files(&dir, shape, &content, true, cfg.write_limit);
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let local = local?;
        let case = format!("{}, {CASE_LOCAL}", shape.label());
        for (metric, unit, hib, value) in [
            (WRITER_S, "s", false, local.seconds),
            (WRITER_MIBS, "MiB/s", true, local.mib_per_s()),
        ] {
            self.record(
                WORKLOAD,
                &case,
                System::LocalFile,
                metric,
                unit,
                hib,
                run,
                value,
                local.complete,
            );
        }
        Ok(())
    }

    /// The raw-PUT ceiling through the link: the files of `shape` PUT from memory, 8 in
    /// flight, and for the large file also with the 4 parts in flight Strata's uploader
    /// keeps per file. Recorded under the data's label: writers play no part in it.
    fn write_raw(&mut self, shape: Shape, run: u32) -> Result<()> {
        self.check_room(shape)?;
        let content = Content::new(u64::from(run));
        let mut ceilings = vec![(CASE_RAW, UPLOADS_IN_FLIGHT)];
        if matches!(shape, Shape::Large { .. }) {
            ceilings.push((CASE_RAW_PARTS, PARTS_IN_FLIGHT));
        }
        let store = s3_store(&self.endpoint, &self.creds)?;
        for (label, in_flight) in ceilings {
            let top = format!("write-{run}-raw-{in_flight}");
            let prefix = format!("{top}/{}", shape.slug());
            self.settle()?;
            let before = self.link_up_bytes();
            let put = self.rt.block_on(raw_puts(
                store.as_ref(),
                &prefix,
                shape,
                &content,
                in_flight,
            ));
            let after = self.link_up_bytes();
            self.write_cleanup(&top);
            let secs = put?;
            let case = format!("{}, {label}", shape.data_label());
            self.record(
                WORKLOAD,
                &case,
                System::ObjectStore,
                SOURCE_S,
                "s",
                false,
                run,
                secs,
                true,
            );
            if let (Some(a), Some(b)) = (before, after) {
                self.record(
                    WORKLOAD,
                    &case,
                    System::ObjectStore,
                    LINK_UP,
                    "x",
                    false,
                    run,
                    (b - a) as f64 / shape.total_bytes() as f64,
                    true,
                );
            }
        }
        Ok(())
    }

    /// One run of the write workload. Per shape, in this order: the local disk, Strata
    /// write-back, the raw-PUT ceiling, Strata write-through, then the peers. Each
    /// reference sits next to the Strata figure it is held to: this shared disk's own
    /// speed drifts by several times within minutes (a GiB written and fsynced in 1.3 s in
    /// one quick run, 6.5 s forty minutes into another), and so does the S3 server's,
    /// which writes to the same disk.
    pub(super) fn write_run(&mut self, run: u32) {
        let systems = self.cfg.systems.clone();
        for shape in self.write_shapes() {
            let r = self.write_local(shape, run);
            self.note_step(&format!("local disk, {}", shape.label()), run, r);
            let mut steps: Vec<Option<Writer>> = Vec::new();
            if systems.contains(&System::Strata) {
                steps.push(Some(Writer::Strata { through: false }));
            }
            steps.push(None); // the raw-PUT ceiling
            if systems.contains(&System::Strata) {
                steps.push(Some(Writer::Strata { through: true }));
            }
            for peer in [System::Rclone, System::S3fs] {
                if systems.contains(&peer) {
                    steps.push(Some(Writer::Peer(peer)));
                }
            }
            for step in steps {
                match step {
                    Some(writer) => {
                        let r = self.write_on_fresh_mount(writer, shape, run);
                        self.note_step(
                            &format!("{} {}", writer.system().label(), writer.case(shape)),
                            run,
                            r,
                        );
                    }
                    None => {
                        let r = self.write_raw(shape, run);
                        self.note_step(&format!("raw PUTs, {}", shape.data_label()), run, r);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_name_the_mode_for_strata_only() {
        let small = Shape::Small {
            files: 1000,
            writers: 8,
        };
        assert_eq!(
            Writer::Strata { through: false }.case(small),
            "1000 x 1 MiB by 8 writers, write-back"
        );
        assert_eq!(
            Writer::Strata { through: true }.case(Shape::Large { bytes: 1 << 30 }),
            "1 x 1024 MiB, write-through"
        );
        assert_eq!(
            Writer::Peer(System::S3fs).case(small),
            "1000 x 1 MiB by 8 writers"
        );
    }
}
