//! Listings over a mount, counted, with a time limit: `find DIR -type f` (the list
//! workload) and `ls DIR` (list-huge).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ListResult {
    pub entries: usize,
    pub seconds: f64,
    /// False when `find` was stopped at the time limit.
    pub complete: bool,
}

pub fn find_files(dir: &Path, expected: usize, limit: Duration) -> Result<ListResult> {
    let mut find = Command::new("find");
    find.arg(dir).args(["-type", "f"]);
    count_lines(find, "find", expected, limit, None)
}

/// `ls DIR | wc -l`: the names of one directory, sorted by `ls` (one per line into a pipe:
/// no colours, no stat of the entries). `mount_pid` is the FUSE daemon serving `dir`: see
/// [`count_lines`].
pub fn ls_entries(
    dir: &Path,
    expected: usize,
    limit: Duration,
    mount_pid: Option<u32>,
) -> Result<ListResult> {
    let mut ls = Command::new("ls");
    ls.arg(dir);
    count_lines(ls, "ls", expected, limit, mount_pid)
}

/// Runs `command` and counts the lines it prints, killed at `limit`. A command blocked in
/// a FUSE request cannot die until the file system answers (s3fs answers a readdir only
/// once it has sent a HEAD for every object); if it is still there 10 s after the kill,
/// the mount's daemon `mount_pid` is killed too, which fails the request.
fn count_lines(
    mut command: Command,
    program: &str,
    expected: usize,
    limit: Duration,
    mount_pid: Option<u32>,
) -> Result<ListResult> {
    let start = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| Error::Spawn {
            what: program.into(),
            program: program.into(),
            source,
        })?;
    let pid = child.id();
    let stdout = child.stdout.take().expect("stdout is piped");
    // A watchdog kills the command at the limit; the count read so far is reported as
    // incomplete.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        let program = program.to_string();
        std::thread::spawn(move || {
            while start.elapsed() < limit {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let killed = Instant::now();
            while killed.elapsed() < Duration::from_secs(10) {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Some(daemon) = mount_pid {
                tracing::warn!(
                    %program,
                    daemon,
                    "still blocked in the mount after the kill; killing the mount's daemon"
                );
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(daemon as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            true
        })
    };
    let entries = BufReader::new(stdout).split(b'\n').count();
    let _ = child.wait();
    let seconds = start.elapsed().as_secs_f64();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let timed_out = watchdog.join().unwrap_or(true);
    Ok(ListResult {
        entries,
        seconds,
        complete: !timed_out && entries == expected,
    })
}
