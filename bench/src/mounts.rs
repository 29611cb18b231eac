//! The systems under test, each mounted from the same bucket through the same link:
//! Strata's `strata-agent mount`, `rclone mount --vfs-cache-mode full` and `s3fs -o use_cache`
//! (for writing: `--vfs-cache-mode writes`, and s3fs without `ro`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::data::BUCKET;
use crate::process::{ChildGuard, run_checked, wait_until};
use crate::s3server::S3Credentials;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    Strata,
    Rclone,
    S3fs,
    /// Plain ranged GETs through object_store: no cache, the cold floor.
    ObjectStore,
    /// The same bytes read from a local file: the reference for fully cached data.
    LocalFile,
    /// Plain TCP from memory to memory between two nodes' namespaces: the ceiling of a
    /// peer read (cluster workload).
    RawTcp,
}

impl System {
    pub fn label(self) -> &'static str {
        match self {
            System::Strata => "Strata",
            System::Rclone => "rclone",
            System::S3fs => "s3fs",
            System::ObjectStore => "object_store GETs",
            System::LocalFile => "local file",
            System::RawTcp => "raw TCP",
        }
    }

    pub fn is_mount(self) -> bool {
        matches!(self, System::Strata | System::Rclone | System::S3fs)
    }
}

impl std::str::FromStr for System {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "strata" => Ok(System::Strata),
            "rclone" => Ok(System::Rclone),
            "s3fs" => Ok(System::S3fs),
            "object-store" | "object_store" => Ok(System::ObjectStore),
            "local" | "local-file" => Ok(System::LocalFile),
            "raw-tcp" => Ok(System::RawTcp),
            other => Err(format!(
                "unknown system `{other}`; expected strata, rclone, s3fs, object-store or local"
            )),
        }
    }
}

/// Programs used for each system.
#[derive(Debug, Clone)]
pub struct Programs {
    pub strata_agent: PathBuf,
    pub rclone: PathBuf,
    pub s3fs: PathBuf,
}

/// Cache sizes given to every caching system: the same quota for all.
#[derive(Debug, Clone, Copy)]
pub struct CacheQuota {
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

/// What every mount needs: where the data is, where to mount, where to cache.
#[derive(Debug, Clone)]
pub struct MountRequest<'a> {
    pub system: System,
    pub endpoint_url: &'a str,
    pub creds: &'a S3Credentials,
    pub mountpoint: &'a Path,
    pub cache_dir: &'a Path,
    pub log: &'a Path,
    pub quota: CacheQuota,
    pub programs: &'a Programs,
    /// Strata only: the mount holder's socket (None: the agent's default, /run/strata).
    pub holder_socket: Option<&'a Path>,
    /// Strata only: the agent's STRATA_LOG filter.
    pub strata_log: &'a str,
    /// rclone and s3fs only: mounted for writing (rclone `--vfs-cache-mode writes`, s3fs
    /// without `ro`). Strata's writable mounts come from `strata-agent serve` (the write
    /// workload), whose datasets carry a write mode.
    pub writable: bool,
}

/// A live FUSE mount; unmounted and its process stopped when dropped.
#[derive(Debug)]
pub struct Mounted {
    pub system: System,
    pub mountpoint: PathBuf,
    child: ChildGuard,
}

impl Mounted {
    pub fn mount(req: &MountRequest<'_>) -> Result<Self> {
        for dir in [req.mountpoint, req.cache_dir] {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        if is_mounted(req.mountpoint) {
            return Err(Error::Config {
                field: "mountpoint",
                detail: format!(
                    "{} is still mounted from an earlier run; unmount it (umount -l)",
                    req.mountpoint.display()
                ),
            });
        }
        let command = mount_command(req)?;
        let mut child = ChildGuard::spawn(req.system.label(), command, req.log)?;
        wait_until(
            &format!(
                "{} mount at {}",
                req.system.label(),
                req.mountpoint.display()
            ),
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                child.check_alive().map_err(|e| e.to_string())?;
                if is_mounted(req.mountpoint) {
                    Ok(())
                } else {
                    Err("not in /proc/self/mountinfo yet".to_string())
                }
            },
        )?;
        Ok(Self {
            system: req.system,
            mountpoint: req.mountpoint.to_path_buf(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn peak_rss_bytes(&self) -> Option<u64> {
        self.child.peak_rss_bytes()
    }

    pub fn check_alive(&mut self) -> Result<()> {
        self.child.check_alive()
    }

    /// SIGKILL the mount's process and reap it. The mount stays in the mount table: a
    /// Strata holder keeps it alive, a peer's is left dead.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Makes `child` (a restarted daemon for this mount) the process stopped on drop.
    pub fn replace_process(&mut self, child: ChildGuard) {
        self.child = child;
    }
}

/// The command that mounts `req.system` at `req.mountpoint`; the same every time for the
/// same request (what a supervisor runs again).
pub fn mount_command(req: &MountRequest<'_>) -> Result<Command> {
    match req.system {
        System::Strata => strata_command(req),
        System::Rclone => rclone_command(req),
        System::S3fs => s3fs_command(req),
        other => Err(Error::Config {
            field: "system",
            detail: format!("{} is not a mount", other.label()),
        }),
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // Strata unmounts itself on SIGTERM; rclone and s3fs do too, but a lazy unmount first
        // makes sure nothing hangs on a busy mount.
        if self.system != System::Strata {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mountpoint)
                .output();
        }
        self.child.stop(Duration::from_secs(20));
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .output();
        }
    }
}

/// True if `path` is a mount point (listed in /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| mp == wanted)
}

fn strata_command(req: &MountRequest<'_>) -> Result<Command> {
    if req.writable {
        return Err(Error::Config {
            field: "writable",
            detail: "`strata-agent mount` takes no write mode; mount a writable dataset through `strata-agent serve`".into(),
        });
    }
    let mut c = Command::new(&req.programs.strata_agent);
    c.arg("mount")
        .arg(format!("s3://{BUCKET}/"))
        .arg(req.mountpoint)
        .arg("--endpoint")
        .arg(req.endpoint_url)
        .args(["--region", "us-east-1"])
        .arg("--cache-dir")
        .arg(req.cache_dir)
        .arg("--memory")
        .arg(req.quota.memory_bytes.to_string())
        .arg("--disk")
        .arg(req.quota.disk_bytes.to_string())
        // Long enough that the warm listing is served from the metadata cache.
        .args(["--metadata-ttl", "1h"])
        // Credentials through the environment, never on a command line.
        .env("AWS_ACCESS_KEY_ID", &req.creds.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &req.creds.secret_key)
        .env("STRATA_LOG", req.strata_log);
    if let Some(socket) = req.holder_socket {
        c.arg("--holder-socket").arg(socket);
    }
    Ok(c)
}

fn rclone_command(req: &MountRequest<'_>) -> Result<Command> {
    // Config through environment variables so no credential lands on a command line or a file.
    let mut c = Command::new(&req.programs.rclone);
    c.arg("mount")
        .arg(format!("bench:{BUCKET}"))
        .arg(req.mountpoint)
        .args(if req.writable {
            ["--vfs-cache-mode", "writes"].as_slice()
        } else {
            ["--vfs-cache-mode", "full", "--read-only"].as_slice()
        })
        .arg("--cache-dir")
        .arg(req.cache_dir)
        .arg("--vfs-cache-max-size")
        .arg(req.quota.disk_bytes.to_string())
        .args(["--dir-cache-time", "1h", "--config", "/dev/null"])
        .env("RCLONE_CONFIG_BENCH_TYPE", "s3")
        .env("RCLONE_CONFIG_BENCH_PROVIDER", "SeaweedFS")
        .env("RCLONE_CONFIG_BENCH_ENDPOINT", req.endpoint_url)
        .env("RCLONE_CONFIG_BENCH_ACCESS_KEY_ID", &req.creds.access_key)
        .env(
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY",
            &req.creds.secret_key,
        )
        .env("RCLONE_CONFIG_BENCH_REGION", "us-east-1");
    Ok(c)
}

fn s3fs_command(req: &MountRequest<'_>) -> Result<Command> {
    let passwd = req.cache_dir.with_extension("s3fs-passwd");
    write_private(
        &passwd,
        &format!("{}:{}\n", req.creds.access_key, req.creds.secret_key),
    )?;
    let mut c = Command::new(&req.programs.s3fs);
    c.arg(BUCKET)
        .arg(req.mountpoint)
        .arg("-f")
        .arg("-o")
        .arg(format!(
            "url={},use_path_request_style,passwd_file={},use_cache={},{}stat_cache_expire=3600,dbglevel=warn",
            req.endpoint_url,
            passwd.display(),
            req.cache_dir.display(),
            if req.writable { "" } else { "ro," }
        ));
    Ok(c)
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(text.as_bytes()).map_err(|e| Error::io(path, e))
}

/// Version strings of the peers, for the report.
pub fn version_of(program: &Path, arg: &str) -> String {
    let mut c = Command::new(program);
    c.arg(arg);
    run_checked(c)
        .ok()
        .and_then(|out| out.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string())
}
