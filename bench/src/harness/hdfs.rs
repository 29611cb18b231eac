//! The hdfs workload (issue 25): an on-prem HDFS lake read across the WAN beside S3, and a
//! migration from it to S3.
//!
//! A MiniDFSCluster (`scripts/minidfs`, one namenode and one datanode, 128 MiB blocks as HDFS's
//! default) sits behind the same delaying link as the S3 server: clients reach the namenode
//! through one proxy, and the datanode (listening on 127.0.0.1:P, calling itself 127.0.0.2)
//! through a second proxy on 127.0.0.2:P, with `dfs.client.use.datanode.hostname` so block
//! streams take it. The seq-large object and the epoch-small files are copied into it from
//! the S3 server, not through the link, with `strata-agent migrate`.
//!
//! For each source, a fresh `strata-agent serve` with the one dataset (s3:// or hdfs://
//! through the link), mounted with a volume: seq-large read whole by one reader, epoch-small
//! by 8 readers, cold (empty cache) then warm (after a settle, page cache dropped); and the
//! raw ceiling, the same bytes as object_store GETs through the link (8 MiB ranges 16 in
//! flight; 64 files in flight). Then the migration: `strata-agent migrate` of the epoch-small
//! files from hdfs:// to s3:// (both through the link, 16 at once) against the raw copy ceiling
//! (GET from HDFS and PUT to S3 through the same link, 16 at once, nothing verified).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use strata_agent::config::{Credentials, SourceConfig};

use super::Ctx;
use crate::data::BUCKET;
use crate::mounts::System;
use crate::process::{free_port, run_checked};
use crate::proxy::DelayProxyProcess;
use crate::workloads::{epoch, floor};
use crate::{Error, Result};

pub const WORKLOAD: &str = "hdfs";
/// HDFS's default block size (MiniDFS's own is 1 MiB, which makes a block stream per MiB).
const BLOCK_SIZE: u64 = 128 << 20;
/// Where the datanode's proxy listens (its port is the datanode's).
const DATANODE_PROXY_IP: [u8; 4] = [127, 0, 0, 2];
/// Objects copied at once, by the migration and by the raw copy.
const COPY_CONCURRENCY: usize = 16;
/// Readers of an epoch through the mount.
const EPOCH_READERS: usize = 8;
/// How long an epoch or a migration may take before it is cut short.
const LIMIT: Duration = Duration::from_secs(900);

/// The source kinds compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    S3,
    Hdfs,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::S3 => "s3://",
            Kind::Hdfs => "hdfs://",
        }
    }
}

/// `"<source> <what> <cold|warm>"`, e.g. "hdfs:// seq-large cold".
pub fn case(kind: Kind, what: &str, warm: bool) -> String {
    format!(
        "{} {what} {}",
        kind.label(),
        if warm { "warm" } else { "cold" }
    )
}

/// The migration's case.
pub const CASE_MIGRATE: &str = "migrate epoch-small hdfs:// → s3://";

/// A running MiniDFSCluster behind the link.
struct Lake {
    child: Child,
    /// The cluster shuts down when its stdin closes.
    _stdin: ChildStdin,
    /// The namenode through the link.
    _namenode_proxy: DelayProxyProcess,
    _datanode_proxy: DelayProxyProcess,
    /// hdfs:// URL of the namenode itself, and through the link.
    direct: String,
    linked: String,
    _dir: tempfile::TempDir,
}

impl Drop for Lake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn minidfs_package() -> PathBuf {
    if let Some(path) = std::env::var_os("STRATA_MINIDFS") {
        return path.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/strata/minidfs")
}

/// The hdfs:// source config: through the link, block streams through the datanode's proxy.
fn hdfs_source(url: &str, through_link: bool) -> SourceConfig {
    let mut options = std::collections::BTreeMap::new();
    if through_link {
        options.insert(
            "dfs.client.use.datanode.hostname".to_string(),
            "true".to_string(),
        );
    }
    SourceConfig {
        name: "lake".into(),
        uri: format!("{url}/{BUCKET}/"),
        options,
        ..SourceConfig::default()
    }
}

impl Ctx<'_> {
    fn s3_source(&self, endpoint: &str) -> SourceConfig {
        SourceConfig {
            name: "bench".into(),
            uri: format!("s3://{BUCKET}/"),
            endpoint: Some(endpoint.to_string()),
            region: Some("us-east-1".into()),
            credentials: Some(Credentials {
                access_key_id: Some(self.creds.access_key.clone()),
                secret_access_key: Some(self.creds.secret_key.clone()),
                ..Credentials::default()
            }),
            ..SourceConfig::default()
        }
    }

    /// Starts the MiniDFS and its two proxies.
    fn start_lake(&self) -> Result<Lake> {
        let cfg = self.cfg;
        let package = minidfs_package();
        // The build script returns at once when the package matches the sources.
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/minidfs/build.sh");
        if script.exists() || !package.join("minidfs.jar").exists() {
            run_checked({
                let mut c = Command::new("bash");
                c.arg(&script);
                c
            })?;
        }
        let dir = tempfile::Builder::new()
            .prefix("strata-bench-minidfs-")
            .tempdir_in(&cfg.work_dir)
            .map_err(|e| Error::io(&cfg.work_dir, e))?;
        let datanode_port = free_port()?;
        let log_path = cfg.work_dir.join("logs").join("minidfs.log");
        let log = std::fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;
        let mut child = Command::new("java")
            .arg("-cp")
            .arg(format!(
                "{}:{}/*",
                package.join("minidfs.jar").display(),
                package.join("lib").display()
            ))
            .arg("dev.strata.MiniDfs")
            .args(["--port", "0", "--datanodes", "1"])
            .args(["--block-size", &BLOCK_SIZE.to_string()])
            .args(["--datanode-port", &datanode_port.to_string()])
            .args([
                "--datanode-hostname",
                &std::net::Ipv4Addr::from(DATANODE_PROXY_IP).to_string(),
            ])
            .arg("--dir")
            .arg(dir.path().join("data"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| Error::io("java (MiniDFS)", e))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout)
                .lines()
                .map_while(std::result::Result::ok)
            {
                if let Some(url) = line.strip_prefix("MINIDFS READY ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let direct = rx
            .recv_timeout(Duration::from_secs(180))
            .map_err(|_| Error::Command {
                command: "MiniDFS".into(),
                detail: format!("not ready in 180 s; see {}", log_path.display()),
            })?;
        let namenode: SocketAddr =
            direct
                .trim_start_matches("hdfs://")
                .parse()
                .map_err(|e| Error::Parse {
                    what: "the MiniDFS URL".into(),
                    detail: format!("{direct}: {e}"),
                })?;
        let logs = cfg.work_dir.join("logs");
        let namenode_proxy = DelayProxyProcess::start_on(
            [127, 0, 0, 1].into(),
            namenode,
            self.delay,
            &logs.join("proxy-namenode.log"),
            false,
        )?;
        let datanode_proxy = DelayProxyProcess::start_at(
            SocketAddr::from((DATANODE_PROXY_IP, datanode_port)),
            SocketAddr::from(([127, 0, 0, 1], datanode_port)),
            self.delay,
            &logs.join("proxy-datanode.log"),
        )?;
        let linked = format!("hdfs://{}", namenode_proxy.listen);
        Ok(Lake {
            child,
            _stdin: stdin,
            _namenode_proxy: namenode_proxy,
            _datanode_proxy: datanode_proxy,
            direct,
            linked,
            _dir: dir,
        })
    }

    /// `strata-agent migrate --config` of `path` from `from` to `to`; returns its seconds.
    fn migrate(
        &self,
        from: &SourceConfig,
        to: &SourceConfig,
        path: &str,
        what: &str,
    ) -> Result<f64> {
        let file = self.cfg.work_dir.join(format!("migration-{what}.yaml"));
        let config = serde_json::json!({
            "from": from, "to": to, "path": path, "concurrency": COPY_CONCURRENCY,
        });
        // Credentials inside: readable by this user only.
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::remove_file(&file);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
                .and_then(|mut f| f.write_all(config.to_string().as_bytes()))
                .map_err(|e| Error::io(&file, e))?;
        }
        let mut c = Command::new(&self.cfg.programs.strata_agent);
        c.arg("migrate").arg("--config").arg(&file);
        let started = Instant::now();
        let out = run_checked(c);
        let _ = std::fs::remove_file(&file);
        let out = out?;
        tracing::info!(
            what,
            last = out.lines().last().unwrap_or_default(),
            "migrated"
        );
        Ok(started.elapsed().as_secs_f64())
    }

    /// The seq-large object and the epoch-small files, copied into HDFS (not through the
    /// link).
    fn fill_lake(&self, lake: &Lake) -> Result<()> {
        let from = self.s3_source(&format!("http://{}", self.s3_addr));
        let to = hdfs_source(&lake.direct, false);
        let spec = self.cfg.spec;
        let seq_dir = spec.seq_key().rsplit_once('/').map(|(d, _)| d.to_string());
        for path in [seq_dir.unwrap_or_default(), spec.epoch_prefix()] {
            let seconds = self.migrate(&from, &to, &path, "fill")?;
            tracing::info!(path, seconds, "copied into HDFS");
        }
        Ok(())
    }

    fn raw_store(&self, source: &SourceConfig) -> Result<(Arc<dyn ObjectStore>, String)> {
        let built = strata_store::build(source, &strata_store::Tuning::reads(3)).map_err(|e| {
            Error::Config {
                field: "hdfs",
                detail: e.to_string(),
            }
        })?;
        Ok((built.store, built.prefix))
    }

    /// The reads of one source through a fresh agent and mount, and the raw ceiling.
    fn hdfs_reads(&mut self, kind: Kind, source: &SourceConfig, run: u32) -> Result<()> {
        let spec = self.cfg.spec;
        let config = serde_json::json!({
            "sources": [source],
            "cache": {"metadataTtl": "1h"},
        });
        let agent = self.start_dataset_agent(
            &format!("hdfs-{}-run{run}", kind.label().trim_end_matches("://")),
            &config,
        )?;
        let seq = [spec.seq_key()];
        let epoch_keys = spec.epoch_keys();
        let epoch_order = epoch::shuffled(&epoch_keys, u64::from(run));
        for warm in [false, true] {
            if warm {
                self.settle()?;
            }
            let r = epoch::run_epoch(&agent.mount, &seq, 1, LIMIT, |_| spec.seq_large_bytes)?;
            self.record_mib(
                kind,
                "seq-large",
                warm,
                System::Strata,
                run,
                r.bytes,
                r.seconds,
                r.complete,
            );
            if warm {
                self.settle()?;
            }
            let r = epoch::run_epoch(
                &agent.mount,
                &epoch_order,
                EPOCH_READERS,
                LIMIT,
                super::size_of_epoch_key,
            )?;
            self.record_mib(
                kind,
                "epoch-small",
                warm,
                System::Strata,
                run,
                r.bytes,
                r.seconds,
                r.complete,
            );
        }
        drop(agent);
        let (store, prefix) = self.raw_store(source)?;
        let rt = self.rt;
        let mib_s = rt.block_on(floor::sequential_gets(
            store.as_ref(),
            &format!("{prefix}{}", spec.seq_key()),
            spec.seq_large_bytes,
            16,
        ))?;
        self.record(
            WORKLOAD,
            &case(kind, "seq-large", false),
            System::ObjectStore,
            "throughput",
            "MiB/s",
            true,
            run,
            mib_s,
            true,
        );
        let keys: Vec<String> = epoch_keys.iter().map(|k| format!("{prefix}{k}")).collect();
        let (files, seconds) = rt.block_on(floor::whole_gets(store.as_ref(), &keys, 64))?;
        let bytes: u64 = epoch_keys[..files]
            .iter()
            .map(|k| super::size_of_epoch_key(k))
            .sum();
        self.record_mib(
            kind,
            "epoch-small",
            false,
            System::ObjectStore,
            run,
            bytes,
            seconds,
            true,
        );
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn record_mib(
        &mut self,
        kind: Kind,
        what: &str,
        warm: bool,
        system: System,
        run: u32,
        bytes: u64,
        seconds: f64,
        complete: bool,
    ) {
        self.record(
            WORKLOAD,
            &case(kind, what, warm),
            system,
            "throughput",
            "MiB/s",
            true,
            run,
            bytes as f64 / (1024.0 * 1024.0) / seconds,
            complete,
        );
    }

    /// The epoch-small files from HDFS to S3, both through the link: `strata-agent migrate`,
    /// then the raw copy; both removed from the bucket after.
    fn hdfs_migration(&mut self, lake: &Lake, run: u32) -> Result<()> {
        let spec = self.cfg.spec;
        let bytes = spec.epoch_bytes();
        let from = hdfs_source(&lake.linked, true);
        let mut to = self.s3_source(&self.endpoint);
        let migrated = format!("migrated-run{run}");
        to.uri = format!("s3://{BUCKET}/{migrated}/");
        let seconds = self.migrate(&from, &to, &spec.epoch_prefix(), "hdfs-to-s3")?;
        self.record(
            WORKLOAD,
            CASE_MIGRATE,
            System::Strata,
            "throughput",
            "MiB/s",
            true,
            run,
            bytes as f64 / (1024.0 * 1024.0) / seconds,
            true,
        );
        let (source, source_prefix) = self.raw_store(&from)?;
        let mut raw_target = self.s3_source(&self.endpoint);
        raw_target.uri = format!("s3://{BUCKET}/rawcopy-run{run}/");
        let (target, target_prefix) = self.raw_store(&raw_target)?;
        let keys = spec.epoch_keys();
        let started = Instant::now();
        let copied: u64 = self.rt.block_on(
            futures::stream::iter(&keys)
                .map(|key| {
                    let (source, target) = (&source, &target);
                    let (from, to) = (
                        ObjectPath::from(format!("{source_prefix}{key}")),
                        ObjectPath::from(format!("{target_prefix}{key}")),
                    );
                    async move {
                        let bytes = source
                            .get(&from)
                            .await
                            .map_err(|e| Error::store("get", key, &e))?
                            .bytes()
                            .await
                            .map_err(|e| Error::store("get", key, &e))?;
                        let len = bytes.len() as u64;
                        target
                            .put(&to, bytes.into())
                            .await
                            .map_err(|e| Error::store("put", key, &e))?;
                        Ok::<u64, Error>(len)
                    }
                })
                .buffer_unordered(COPY_CONCURRENCY)
                .try_fold(0u64, |acc, n| async move { Ok(acc + n) }),
        )?;
        let seconds = started.elapsed().as_secs_f64();
        self.record(
            WORKLOAD,
            CASE_MIGRATE,
            System::ObjectStore,
            "throughput",
            "MiB/s",
            true,
            run,
            copied as f64 / (1024.0 * 1024.0) / seconds,
            true,
        );
        for prefix in [migrated, format!("rawcopy-run{run}")] {
            self.write_cleanup(&prefix);
        }
        Ok(())
    }

    /// The whole workload for one run: the lake, its reads beside S3's, the migration.
    pub(super) fn hdfs_run(&mut self, run: u32) {
        let lake = match self.start_lake().and_then(|lake| {
            self.fill_lake(&lake)?;
            Ok(lake)
        }) {
            Ok(lake) => lake,
            Err(e) => {
                self.note(WORKLOAD, format!("run {run}: HDFS did not start: {e}"));
                return;
            }
        };
        let s3 = self.s3_source(&self.endpoint.clone());
        let hdfs = hdfs_source(&lake.linked, true);
        for (kind, source) in [(Kind::S3, s3), (Kind::Hdfs, hdfs)] {
            if let Err(e) = self.hdfs_reads(kind, &source, run) {
                self.note(WORKLOAD, format!("{} reads, run {run}: {e}", kind.label()));
            }
        }
        if let Err(e) = self.hdfs_migration(&lake, run) {
            self.note(WORKLOAD, format!("migration, run {run}: {e}"));
        }
    }
}
