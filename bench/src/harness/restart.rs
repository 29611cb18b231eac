//! The restart workload: the mount's daemon is SIGKILLed while a reader reads the seq-large
//! object. Strata's agent is started again at once with the same command, 20 times, and takes
//! the mount over from its holder; rclone and s3fs are killed once, and what their reader, a
//! new open and the same command run again see is written down.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::Ctx;
use crate::mounts::{CacheQuota, MountRequest, Mounted, System, is_mounted, mount_command};
use crate::process::{ChildGuard, drop_page_caches, wait_until};
use crate::results::RestartOutcome;
use crate::stats::median;
use crate::workloads::restart::{
    OnError, READ_SIZE, ReadCall, Reader, calls_overlapping, longest_call_overlapping,
};
use crate::{Error, Result};

pub const RESTARTS: u32 = 20;
pub const CASE: &str = "SIGKILL + restart at once";
/// How long the reader runs after each takeover before the next SIGKILL.
const AFTER_TAKEOVER: Duration = Duration::from_secs(1);
/// Reading before the first SIGKILL: the reference for the longest read without a restart.
const BEFORE: Duration = Duration::from_secs(2);
/// What a takeover line of the agent's log says.
const TOOK_OVER: &str = "took the mount over";

impl Ctx<'_> {
    pub(super) fn restart_session(&mut self, system: System, run: u32) -> Result<()> {
        let outcome = if system == System::Strata {
            self.strata_restarts(run)?
        } else {
            self.peer_kill(system, run)?
        };
        if system == System::Strata {
            let all = outcome.stalls_ms.len() == RESTARTS as usize;
            let figures = [
                ("longest read, p50", median(&outcome.stalls_ms)),
                (
                    "longest read, max",
                    outcome.stalls_ms.iter().copied().reduce(f64::max),
                ),
                ("takeover, p50", median(&outcome.takeover_ms)),
            ];
            for (metric, value) in figures {
                if let Some(v) = value {
                    self.record("restart", CASE, system, metric, "ms", false, run, v, all);
                }
            }
        }
        if outcome.installed {
            for (metric, v) in [
                ("failed reads", outcome.failed_reads),
                ("wrong bytes", outcome.wrong_bytes),
            ] {
                self.record(
                    "restart", CASE, system, metric, "count", false, run, v as f64, true,
                );
            }
        }
        self.out.restart.push(outcome);
        Ok(())
    }

    fn restart_files(&self) -> (PathBuf, u64) {
        let cfg = self.cfg;
        (
            cfg.work_dir.join("local").join(cfg.spec.seq_key()),
            cfg.spec.seq_large_bytes,
        )
    }

    fn strata_restarts(&mut self, run: u32) -> Result<RestartOutcome> {
        let cfg = self.cfg;
        let (local, size) = self.restart_files();
        let p = self.mount_paths(System::Strata, "restart")?;
        // A holder of its own under the work dir, not the node's /run/strata one.
        let holder_dir = cfg.work_dir.join("holder");
        std::fs::create_dir_all(&holder_dir).map_err(|e| Error::io(&holder_dir, e))?;
        let socket = holder_dir.join("holder.sock");
        if socket.exists() && std::os::unix::net::UnixStream::connect(&socket).is_err() {
            // Left by a holder that is gone: nobody answers on it.
            std::fs::remove_file(&socket).map_err(|e| Error::io(&socket, e))?;
        }
        // Caches smaller than the object: it is never fully on disk (a fully cached file is
        // opened in passthrough mode and read by the kernel, never waiting on an agent), and
        // most reads of each pass are fetched through the link again.
        let quota = CacheQuota {
            memory_bytes: cfg.quota.memory_bytes.min(size / 16),
            disk_bytes: cfg.quota.disk_bytes.min(size / 4),
        };
        let agent_log = |i: u32| p.logs.join(format!("strata-restart-agent-{i:02}.log"));
        let first_log = agent_log(0);
        let req = MountRequest {
            system: System::Strata,
            endpoint_url: &self.endpoint,
            creds: &self.creds,
            mountpoint: &p.mountpoint,
            cache_dir: &p.cache,
            log: &first_log,
            quota,
            programs: &cfg.programs,
            holder_socket: Some(&socket),
            strata_log: "info",
            writable: false,
        };
        let mut m = Mounted::mount(&req)?;
        let file = m.mountpoint.join(cfg.spec.seq_key());
        let mut out = RestartOutcome {
            system: System::Strata,
            link: self.link.clone(),
            run,
            installed: true,
            restarts: 0,
            stalls_ms: Vec::new(),
            takeover_ms: Vec::new(),
            restarts_with_a_waiting_read: 0,
            longest_read_before_ms: None,
            reads: 0,
            mib_read: 0.0,
            failed_reads: 0,
            wrong_bytes: 0,
            seen: Vec::new(),
        };
        // One open and close first: the agent answers FLUSH with ENOSYS and the kernel sends
        // no more. Otherwise starting the next agent would wait on the dead one: its exec
        // closes the copies of the reader's descriptors, and a close sends FLUSH.
        read_head(&file).map_err(|e| Error::io(&file, e))?;
        drop_page_caches()?;
        let reader = Reader::start(file, local, size, OnError::Reopen);
        let started = Instant::now();
        std::thread::sleep(BEFORE);
        let before_end = Instant::now();
        let mut rounds = Vec::new();
        for i in 1..=RESTARTS {
            // A pass over the object may come round again: its pages must come from the agent.
            drop_page_caches()?;
            let kill_at = Instant::now();
            m.kill();
            // The same command at once, as a supervisor would run it; only its log is new.
            let log = agent_log(i);
            let command = mount_command(&MountRequest {
                log: &log,
                ..req.clone()
            })?;
            let child = ChildGuard::spawn("Strata (restarted)", command, &log)?;
            m.replace_process(child);
            let took = wait_until(
                &format!("restarted agent {i} taking the mount over"),
                Duration::from_secs(60),
                Duration::from_millis(5),
                || {
                    m.check_alive().map_err(|e| e.to_string())?;
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if text.contains(TOOK_OVER) {
                        Ok(Instant::now())
                    } else {
                        Err(format!("its log ({}) does not say it yet", log.display()))
                    }
                },
            );
            let took_at = match took {
                Ok(t) => t,
                Err(e) => {
                    out.seen.push(format!(
                        "restart {i}: {e}; stopped after {} restarts",
                        i - 1
                    ));
                    break;
                }
            };
            std::thread::sleep(AFTER_TAKEOVER);
            rounds.push((kill_at, took_at, Instant::now()));
        }
        let calls = reader.stop(Duration::from_secs(60));
        let mounts = mount_count(&m.mountpoint);
        drop(m);
        // SIGTERM unmounted; the holder, holding nothing, exits.
        let holder_gone = wait_until(
            "the holder to exit",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || match std::os::unix::net::UnixStream::connect(&socket) {
                Err(_) => Ok(()),
                Ok(_) => Err("still answering".into()),
            },
        )
        .is_ok();

        out.restarts = rounds.len() as u32;
        out.longest_read_before_ms =
            longest_call_overlapping(&calls, started, before_end).map(|d| d.as_secs_f64() * 1000.0);
        for (kill_at, took_at, end) in &rounds {
            let longest = longest_call_overlapping(&calls, *kill_at, *end).unwrap_or_default();
            out.stalls_ms.push(longest.as_secs_f64() * 1000.0);
            out.takeover_ms
                .push(took_at.duration_since(*kill_at).as_secs_f64() * 1000.0);
            if calls_overlapping(&calls, *kill_at, *took_at) > 0 {
                out.restarts_with_a_waiting_read += 1;
            }
        }
        tally(&mut out, &calls);
        out.seen.push(format!(
            "{} SIGKILLs, each followed at once by the same `strata-agent mount` command; a read call was waiting on the agent during {} of the gaps",
            out.restarts, out.restarts_with_a_waiting_read
        ));
        out.seen.extend(error_summary(&calls));
        out.seen.push(format!(
            "afterwards: {mounts} mount at the mount point; SIGTERM unmounted it{}",
            if holder_gone {
                " and the holder exited"
            } else {
                ", but the holder still answered 10 s later"
            }
        ));
        out.seen.push(format!(
            "agent logs: {}/strata-restart-agent-NN.log; holder log: {}",
            p.logs.display(),
            holder_dir.join("holder.log").display()
        ));
        Ok(out)
    }

    fn peer_kill(&mut self, system: System, run: u32) -> Result<RestartOutcome> {
        let cfg = self.cfg;
        let (local, size) = self.restart_files();
        let p = self.mount_paths(system, "restart")?;
        let mut out = RestartOutcome {
            system,
            link: self.link.clone(),
            run,
            installed: true,
            restarts: 1,
            stalls_ms: Vec::new(),
            takeover_ms: Vec::new(),
            restarts_with_a_waiting_read: 0,
            longest_read_before_ms: None,
            reads: 0,
            mib_read: 0.0,
            failed_reads: 0,
            wrong_bytes: 0,
            seen: Vec::new(),
        };
        let req = MountRequest {
            system,
            endpoint_url: &self.endpoint,
            creds: &self.creds,
            mountpoint: &p.mountpoint,
            cache_dir: &p.cache,
            log: &p.log,
            quota: cfg.quota,
            programs: &cfg.programs,
            holder_socket: None,
            strata_log: "warn",
            writable: false,
        };
        let mut m = match Mounted::mount(&req) {
            Err(Error::Spawn { program, .. }) => {
                out.installed = false;
                out.seen
                    .push(format!("not installed here (`{program}` not found)"));
                return Ok(out);
            }
            other => other?,
        };
        let file = m.mountpoint.join(cfg.spec.seq_key());
        drop_page_caches()?;
        let reader = Reader::start(file.clone(), local.clone(), size, OnError::Stop);
        std::thread::sleep(BEFORE);
        let kill_at = Instant::now();
        m.kill();
        let _ = wait_until(
            "the reader's first failure",
            Duration::from_secs(30),
            Duration::from_millis(5),
            || {
                if reader.finished() {
                    Ok(())
                } else {
                    Err(String::new())
                }
            },
        );
        let calls = reader.calls();
        let after: Vec<&ReadCall> = calls.iter().filter(|c| c.end() > kill_at).collect();
        let ms = |t: Instant| t.duration_since(kill_at).as_secs_f64() * 1000.0;
        match after.iter().find(|c| c.error.is_some()) {
            Some(c) => {
                let ok_after = after.iter().filter(|c| c.error.is_none()).count();
                out.seen.push(format!(
                    "the reader's {} failed {:.0} ms after the SIGKILL{}",
                    c.error.as_ref().map(|e| e.describe()).unwrap_or_default(),
                    ms(c.end()),
                    if ok_after > 0 {
                        format!(" ({ok_after} read call(s) ending after the SIGKILL returned data first)")
                    } else {
                        String::new()
                    }
                ));
            }
            None => out.seen.push(format!(
                "no error within 30 s of the SIGKILL: {} reads after it, the reader {}",
                after.len(),
                if reader.finished() {
                    "stopped"
                } else {
                    "still blocked in a read"
                }
            )),
        }
        // The mount afterwards: a new open, a stat, and the mount table.
        let f = file.clone();
        out.seen.push(format!(
            "then a new open and read of the file: {}",
            probe(move || read_head(&f).map(|_| ()))
        ));
        let mp = m.mountpoint.clone();
        out.seen.push(format!(
            "stat of the mount point: {}",
            probe(move || std::fs::metadata(&mp).map(|_| ()))
        ));
        out.seen.push(format!(
            "the mount table still lists it: {}",
            if is_mounted(&m.mountpoint) {
                "yes (a dead mount, until unmounted)"
            } else {
                "no"
            }
        ));
        // The same command again, on the dead mount.
        let again_log = p
            .logs
            .join(format!("{system:?}-restart-again.log").to_lowercase());
        let command = mount_command(&req)?;
        let started = Instant::now();
        let mut again = ChildGuard::spawn(system.label(), command, &again_log)?;
        let exited = wait_until(
            "the restarted daemon",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || match again.check_alive() {
                Err(_) => Ok(()),
                Ok(()) => Err(String::new()),
            },
        )
        .is_ok();
        if exited {
            out.seen.push(format!(
                "the same command again exited after {:.1} s: {}",
                started.elapsed().as_secs_f64(),
                telling_line(&again.log_tail(20))
            ));
        } else {
            let mp = m.mountpoint.clone();
            out.seen.push(format!(
                "the same command again was still running after 20 s; {} mounts listed at the mount point, stat: {}",
                mount_count(&m.mountpoint),
                probe(move || std::fs::metadata(&mp).map(|_| ()))
            ));
        }
        drop(again);
        let mut umount = std::process::Command::new("umount");
        umount.arg("-l").arg(&m.mountpoint);
        let unmounted = crate::process::run_checked(umount);
        // Every stacked mount off, so that the next session finds the directory free.
        for _ in 0..3 {
            if !is_mounted(&m.mountpoint) {
                break;
            }
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&m.mountpoint)
                .output();
        }
        let remount = format!(
            "{}-restart-after-umount.log",
            format!("{system:?}").to_lowercase()
        );
        let remount_log = p.logs.join(remount);
        let again_req = MountRequest {
            log: &remount_log,
            ..req.clone()
        };
        let started = Instant::now();
        let fresh = Mounted::mount(&again_req).and_then(|n| {
            let secs = started.elapsed().as_secs_f64();
            let f = n.mountpoint.join(cfg.spec.seq_key());
            let head = read_head(&f).map_err(|e| Error::io(&f, e))?;
            let want = read_head(&local).map_err(|e| Error::io(&local, e))?;
            Ok((secs, head == want))
        });
        out.seen.push(format!(
            "after `umount -l` ({}), the same command: {}",
            match unmounted {
                Ok(_) => "ok".to_string(),
                Err(e) => format!("failed: {e}"),
            },
            match fresh {
                Ok((secs, true)) =>
                    format!("mounted in {secs:.1} s and a new open read the right bytes"),
                Ok((secs, false)) => {
                    format!("mounted in {secs:.1} s but a new open read wrong bytes")
                }
                Err(e) => format!("failed: {e}"),
            }
        ));
        // A reader still blocked after all this is left behind (and said so).
        let calls = reader.stop(Duration::from_secs(10));
        tally(&mut out, &calls);
        drop(m);
        Ok(out)
    }
}

fn tally(out: &mut RestartOutcome, calls: &[ReadCall]) {
    out.reads = calls.iter().filter(|c| c.error.is_none()).count() as u64;
    out.mib_read = calls.iter().map(|c| c.bytes as f64).sum::<f64>() / (1024.0 * 1024.0);
    out.failed_reads = calls.iter().filter(|c| c.error.is_some()).count() as u64;
    out.wrong_bytes = calls.iter().map(|c| c.wrong).sum();
}

/// "N x read: EIO (...)" for each distinct failure.
fn error_summary(calls: &[ReadCall]) -> Vec<String> {
    let mut seen: Vec<(String, usize)> = Vec::new();
    for e in calls.iter().filter_map(|c| c.error.as_ref()) {
        let d = e.describe();
        match seen.iter_mut().find(|(s, _)| *s == d) {
            Some((_, n)) => *n += 1,
            None => seen.push((d, 1)),
        }
    }
    seen.into_iter()
        .map(|(d, n)| format!("{n} x {d}"))
        .collect()
}

/// The first MiB of a file, through a new open.
fn read_head(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; READ_SIZE];
    let mut f = std::fs::File::open(path)?;
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Runs `f` on a thread of its own and describes the outcome; a call still blocked after
/// 10 s is reported as such and left behind.
fn probe(f: impl FnOnce() -> std::io::Result<()> + Send + 'static) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => format!("ok ({:.0} ms)", start.elapsed().as_secs_f64() * 1000.0),
        Ok(Err(e)) => crate::workloads::restart::ReadError::from_io("", &e)
            .describe()
            .trim_start_matches(": ")
            .to_string(),
        Err(_) => "still blocked after 10 s".into(),
    }
}

/// The log line that says why a daemon exited: the first that reads like an error, else the
/// last one.
fn telling_line(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let error = lines.iter().find(|l| {
        let l = l.to_lowercase();
        ["unable", "error", "fatal", "failed"]
            .iter()
            .any(|w| l.contains(w))
    });
    error
        .or(lines.last())
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| "(empty log)".into())
}

/// How many mounts the mount table lists at `path` (a takeover must not stack them).
fn mount_count(path: &Path) -> usize {
    let wanted = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(&wanted))
        .count()
}
