//! Child processes the harness starts (S3 server, proxy, mounts), stopped when dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{Error, Result};

/// A running child whose stdout and stderr go to a log file. Dropping it sends SIGTERM, waits a
/// little, then SIGKILL: the harness never leaves servers or mounts behind.
#[derive(Debug)]
pub struct ChildGuard {
    what: String,
    child: Child,
    log: PathBuf,
}

impl ChildGuard {
    pub fn spawn(what: &str, mut command: Command, log: &Path) -> Result<Self> {
        let out = File::create(log).map_err(|e| Error::io(log, e))?;
        let err = out.try_clone().map_err(|e| Error::io(log, e))?;
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let program = command.get_program().to_string_lossy().into_owned();
        let child = command.spawn().map_err(|source| Error::Spawn {
            what: what.to_string(),
            program,
            source,
        })?;
        tracing::debug!(what, pid = child.id(), log = %log.display(), "started");
        Ok(Self {
            what: what.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the tail of the log if the child has already exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(Error::Command {
                command: self.what.clone(),
                detail: format!("exited with {status}; log tail:\n{}", self.log_tail(15)),
            }),
            Ok(None) => Ok(()),
            Err(e) => Err(Error::io(&self.log, e)),
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Peak resident set size (VmHWM) in bytes, while the process is alive.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        peak_rss_bytes(self.child.id())
    }

    /// SIGKILL now, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL after `grace`; returns whether it stopped on SIGTERM.
    pub fn stop(&mut self, grace: Duration) -> bool {
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            sleep(Duration::from_millis(50));
        }
        tracing::warn!(what = %self.what, "did not stop on SIGTERM; killing");
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// VmHWM of a live process, in bytes.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix("VmHWM:")?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    })
}

/// CPU time (user + system) a live process has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its ')' are plain.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; in
    // USER_HZ, which is 100 on Linux whatever the kernel's tick.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// (busy, total) CPU time of the whole machine so far, in USER_HZ ticks, from /proc/stat.
pub fn machine_cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle and iowait
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Resident memory of a process now (VmRSS), if it is still there.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix("VmRSS:")?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    })
}

/// Runs a command to completion and returns its stdout; a non-zero exit is an error with stderr.
pub fn run_checked(mut command: Command) -> Result<String> {
    let shown = format!("{command:?}");
    let output = command.output().map_err(|source| Error::Spawn {
        what: shown.clone(),
        program: command.get_program().to_string_lossy().into_owned(),
        source,
    })?;
    if !output.status.success() {
        return Err(Error::Command {
            command: shown,
            detail: {
                // Some tools (fio) put their error in stdout; keep the end of both.
                let tail = |b: &[u8]| {
                    let t = String::from_utf8_lossy(b);
                    let t = t.trim();
                    t[t.len().saturating_sub(600)..].to_string()
                };
                format!(
                    "{}: {} {}",
                    output.status,
                    tail(&output.stderr),
                    tail(&output.stdout)
                )
            },
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Picks a free TCP port on loopback (the OS's choice; closed again before use).
pub fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("127.0.0.1:0", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::io("127.0.0.1:0", e))
}

/// Flushes dirty pages and drops the kernel's page, dentry and inode caches (needs root).
pub fn drop_page_caches() -> Result<()> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .map_err(|e| Error::io("/proc/sys/vm/drop_caches", e))
}

/// Waits until `ready` returns Ok, polling every `every`, for at most `limit`.
pub fn wait_until<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut ready: impl FnMut() -> std::result::Result<T, String>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        match ready() {
            Ok(value) => return Ok(value),
            Err(detail) if start.elapsed() >= limit => {
                return Err(Error::NotReady {
                    what: what.to_string(),
                    waited: start.elapsed(),
                    detail,
                });
            }
            Err(_) => sleep(every),
        }
    }
}
