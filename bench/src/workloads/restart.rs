//! The restart workload's reader: one thread reading a large file sequentially in 1 MiB
//! reads, timing every read call and checking every byte against the local copy, while the
//! harness kills and restarts the mount's daemon.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub const READ_SIZE: usize = 1 << 20;

/// One read (or open) call of the reader.
#[derive(Debug, Clone)]
pub struct ReadCall {
    pub start: Instant,
    pub took: Duration,
    pub bytes: usize,
    /// Bytes that differed from the local copy.
    pub wrong: u64,
    pub error: Option<ReadError>,
}

impl ReadCall {
    pub fn end(&self) -> Instant {
        self.start + self.took
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadError {
    /// "read" or "open".
    pub call: String,
    pub errno: Option<i32>,
    pub text: String,
}

impl ReadError {
    pub fn from_io(call: &str, e: &std::io::Error) -> Self {
        Self {
            call: call.into(),
            errno: e.raw_os_error(),
            text: e.to_string(),
        }
    }

    /// "read: ENOTCONN (Transport endpoint is not connected)".
    pub fn describe(&self) -> String {
        let text = self
            .text
            .split(" (os error")
            .next()
            .unwrap_or(&self.text)
            .to_string();
        match self.errno {
            Some(n) => format!(
                "{}: {:?} ({text})",
                self.call,
                nix::errno::Errno::from_raw(n)
            ),
            None => format!("{}: {text}", self.call),
        }
    }
}

/// What the reader does after a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Open the file again at the same offset and carry on (Strata: every failure counted).
    Reopen,
    /// Stop reading (a peer whose daemon is gone: the harness probes the mount itself).
    Stop,
}

/// A running reader; `stop` ends it and returns every call it made.
pub struct Reader {
    calls: Arc<Mutex<Vec<ReadCall>>>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Reader {
    /// Reads `file` from start to end over and over (a new open each pass), comparing with
    /// `reference`, a local file of the same bytes.
    pub fn start(file: PathBuf, reference: PathBuf, size: u64, on_error: OnError) -> Self {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (calls, stop) = (calls.clone(), stop.clone());
            std::thread::spawn(move || read_loop(&file, &reference, size, on_error, &calls, &stop))
        };
        Self {
            calls,
            stop,
            thread,
        }
    }

    /// A copy of the calls so far.
    pub fn calls(&self) -> Vec<ReadCall> {
        self.calls.lock().expect("reader lock").clone()
    }

    pub fn finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Stops the reader, waiting at most `wait` for its current call: one blocked on a dead
    /// mount may never return and is left behind.
    pub fn stop(self, wait: Duration) -> Vec<ReadCall> {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + wait;
        while !self.thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.thread.is_finished() {
            let _ = self.thread.join();
        }
        self.calls.lock().expect("reader lock").clone()
    }
}

fn read_loop(
    file: &std::path::Path,
    reference: &std::path::Path,
    size: u64,
    on_error: OnError,
    calls: &Mutex<Vec<ReadCall>>,
    stop: &AtomicBool,
) {
    let push = |c: ReadCall| calls.lock().expect("reader lock").push(c);
    let local = match File::open(reference) {
        Ok(f) => f,
        Err(e) => {
            push(ReadCall {
                start: Instant::now(),
                took: Duration::ZERO,
                bytes: 0,
                wrong: 0,
                error: Some(ReadError::from_io("open of the local copy", &e)),
            });
            return;
        }
    };
    let mut buf = vec![0u8; READ_SIZE];
    let mut want = vec![0u8; READ_SIZE];
    let mut pos = 0u64;
    let mut open: Option<File> = None;
    while !stop.load(Ordering::Relaxed) {
        let f = match open.as_mut() {
            Some(f) => f,
            None => {
                let start = Instant::now();
                let opened =
                    File::open(file).and_then(|mut f| f.seek(SeekFrom::Start(pos)).map(|_| f));
                match opened {
                    Ok(f) => open.insert(f),
                    Err(e) => {
                        push(ReadCall {
                            start,
                            took: start.elapsed(),
                            bytes: 0,
                            wrong: 0,
                            error: Some(ReadError::from_io("open", &e)),
                        });
                        if on_error == OnError::Stop {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                }
            }
        };
        let start = Instant::now();
        let got = f.read(&mut buf);
        let took = start.elapsed();
        match got {
            Ok(0) if pos >= size => {
                // End of a pass: the next starts with a new open.
                open = None;
                pos = 0;
            }
            Ok(0) => {
                push(ReadCall {
                    start,
                    took,
                    bytes: 0,
                    wrong: 0,
                    error: Some(ReadError {
                        call: "read".into(),
                        errno: None,
                        text: format!("end of file at byte {pos} of {size}"),
                    }),
                });
                if on_error == OnError::Stop {
                    return;
                }
                open = None;
            }
            Ok(n) => {
                let wrong = match local.read_exact_at(&mut want[..n], pos) {
                    Ok(()) if buf[..n] == want[..n] => 0,
                    Ok(()) => buf[..n]
                        .iter()
                        .zip(&want[..n])
                        .filter(|(a, b)| a != b)
                        .count() as u64,
                    // Past the local copy's end: every byte is one too many.
                    Err(_) => n as u64,
                };
                push(ReadCall {
                    start,
                    took,
                    bytes: n,
                    wrong,
                    error: None,
                });
                pos += n as u64;
            }
            Err(e) => {
                push(ReadCall {
                    start,
                    took,
                    bytes: 0,
                    wrong: 0,
                    error: Some(ReadError::from_io("read", &e)),
                });
                if on_error == OnError::Stop {
                    return;
                }
                open = None;
            }
        }
    }
}

/// The longest call that was in progress at some moment in `[from, to)`.
pub fn longest_call_overlapping(
    calls: &[ReadCall],
    from: Instant,
    to: Instant,
) -> Option<Duration> {
    calls
        .iter()
        .filter(|c| c.end() > from && c.start < to)
        .map(|c| c.took)
        .max()
}

/// Calls that were in progress at some moment in `[from, to)`.
pub fn calls_overlapping(calls: &[ReadCall], from: Instant, to: Instant) -> usize {
    calls
        .iter()
        .filter(|c| c.end() > from && c.start < to)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(base: Instant, start_ms: u64, took_ms: u64) -> ReadCall {
        ReadCall {
            start: base + Duration::from_millis(start_ms),
            took: Duration::from_millis(took_ms),
            bytes: READ_SIZE,
            wrong: 0,
            error: None,
        }
    }

    #[test]
    fn a_call_started_before_the_window_and_ending_in_it_counts() {
        let t = Instant::now();
        let calls = [
            call(t, 0, 5),
            call(t, 10, 400),
            call(t, 410, 3),
            call(t, 900, 50),
        ];
        let from = t + Duration::from_millis(100);
        let to = t + Duration::from_millis(800);
        assert_eq!(
            longest_call_overlapping(&calls, from, to),
            Some(Duration::from_millis(400))
        );
        assert_eq!(calls_overlapping(&calls, from, to), 2);
        let later = t + Duration::from_millis(2000);
        assert_eq!(longest_call_overlapping(&calls, later, later), None);
    }

    #[test]
    fn errors_name_the_errno() {
        let e = std::io::Error::from_raw_os_error(nix::errno::Errno::ENOTCONN as i32);
        let d = ReadError::from_io("read", &e).describe();
        assert_eq!(d, "read: ENOTCONN (Transport endpoint is not connected)");
    }
}
