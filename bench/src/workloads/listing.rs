//! `find DIR -type f` over a mount, counted, with a time limit.

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
    let start = Instant::now();
    let mut child = Command::new("find")
        .arg(dir)
        .args(["-type", "f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| Error::Spawn {
            what: "find".into(),
            program: "find".into(),
            source,
        })?;
    let pid = child.id();
    let stdout = child.stdout.take().expect("stdout is piped");
    // A watchdog kills find at the limit; the count read so far is reported as incomplete.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
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
