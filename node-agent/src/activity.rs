//! The agent's record of the preload and pin runs it executed for Jobs, and of failed
//! source reads, per dataset: the HTTP API writes it, the StrataNode report carries it to
//! the operator.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use strata_wire::api::types::PreloadProgress;

/// Runs kept per dataset (the newest; one per Job name).
pub const MAX_RUNS_PER_DATASET: usize = 8;
/// Longest error message kept (the report is a Kubernetes object; keep it small).
const MAX_MESSAGE_CHARS: usize = 1024;

/// Where a preload or pin run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunPhase {
    Running,
    Succeeded,
    Failed,
}

/// One preload (or the fetch of a pin) that a Job asked this agent for.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRunRecord {
    /// Name of the Kubernetes Job (sent by `strata-agent preload|pin --job`).
    pub job: String,
    pub phase: RunPhase,
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub started: SystemTime,
    pub finished: Option<SystemTime>,
    /// Why it failed (scrubbed of credentials).
    pub message: Option<String>,
    id: u64,
}

/// The last failed read or listing of one of a dataset's sources.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceErrorRecord {
    /// What failed, scrubbed of credentials and signed URLs.
    pub message: String,
    pub time: SystemTime,
}

/// What the board holds about one dataset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DatasetActivity {
    /// Newest first.
    pub runs: Vec<JobRunRecord>,
    pub last_error: Option<SourceErrorRecord>,
}

/// Per dataset: the preload/pin runs this agent executed for Jobs and the last
/// source error it met. The API server writes it; the StrataNode reporter reads it.
#[derive(Debug, Default)]
pub struct ActivityBoard {
    datasets: Mutex<BTreeMap<(String, String), DatasetActivity>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// A run in progress on the board; dropped without [`RunHandle::finish`] it counts as failed.
#[derive(Debug)]
pub struct RunHandle {
    board: Arc<ActivityBoard>,
    key: (String, String),
    id: u64,
    finished: bool,
}

/// A message as it may appear in a report: scrubbed, on one line, bounded.
fn report_message(text: &str) -> String {
    let text = crate::source::scrub(text, &[]).replace('\n', " ");
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

impl ActivityBoard {
    fn with<T>(&self, ns: &str, name: &str, f: impl FnOnce(&mut DatasetActivity) -> T) -> T {
        let mut datasets = self.datasets.lock().expect("activity board");
        f(datasets
            .entry((ns.to_string(), name.to_string()))
            .or_default())
    }

    /// Records the start of a run for `job`; it replaces an earlier run of the same Job.
    pub fn start_run(self: &Arc<Self>, ns: &str, name: &str, job: &str) -> RunHandle {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.with(ns, name, |a| {
            a.runs.retain(|r| r.job != job);
            a.runs.insert(
                0,
                JobRunRecord {
                    job: job.to_string(),
                    phase: RunPhase::Running,
                    files_done: 0,
                    files_total: 0,
                    bytes_done: 0,
                    bytes_total: 0,
                    started: SystemTime::now(),
                    finished: None,
                    message: None,
                    id,
                },
            );
            a.runs.truncate(MAX_RUNS_PER_DATASET);
        });
        RunHandle {
            board: self.clone(),
            key: (ns.to_string(), name.to_string()),
            id,
            finished: false,
        }
    }

    /// Records a failed read or listing of one of the dataset's sources.
    pub fn source_failed(&self, ns: &str, name: &str, message: &str) {
        let record = SourceErrorRecord {
            message: report_message(message),
            time: SystemTime::now(),
        };
        self.with(ns, name, |a| a.last_error = Some(record));
    }

    /// The sources answered at `at`: an error recorded before then is over.
    pub fn sources_ok(&self, ns: &str, name: &str, at: SystemTime) {
        self.with(ns, name, |a| {
            if a.last_error.as_ref().is_some_and(|e| e.time <= at) {
                a.last_error = None;
            }
        });
    }

    /// What the board holds about a dataset (empty when nothing happened).
    pub fn snapshot(&self, ns: &str, name: &str) -> DatasetActivity {
        self.datasets
            .lock()
            .expect("activity board")
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// Forgets datasets the agent no longer serves.
    pub fn retain(&self, mut keep: impl FnMut(&str, &str) -> bool) {
        self.datasets
            .lock()
            .expect("activity board")
            .retain(|(ns, name), _| keep(ns, name));
    }
}

impl RunHandle {
    fn update(&self, f: impl FnOnce(&mut JobRunRecord)) {
        let (ns, name) = &self.key;
        self.board.with(ns, name, |a| {
            if let Some(run) = a.runs.iter_mut().find(|r| r.id == self.id) {
                f(run);
            }
        });
    }

    /// Records the progress so far.
    pub fn progress(&self, p: &PreloadProgress) {
        self.update(|run| {
            run.files_done = p.files_done;
            run.files_total = p.files_total;
            run.bytes_done = p.bytes_done;
            run.bytes_total = p.bytes_total;
        });
    }

    /// Records the end: `error` is None for a run that fetched everything.
    pub fn finish(mut self, last: &PreloadProgress, error: Option<&str>) {
        self.progress(last);
        self.close(error.map(report_message));
    }

    fn close(&mut self, message: Option<String>) {
        self.finished = true;
        self.update(|run| {
            run.phase = if message.is_some() {
                RunPhase::Failed
            } else {
                RunPhase::Succeeded
            };
            run.finished = Some(SystemTime::now());
            run.message = message;
        });
    }
}

impl Drop for RunHandle {
    fn drop(&mut self) {
        if !self.finished {
            self.close(Some(
                "the agent stopped tracking the run before it ended".into(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_board_keeps_the_latest_run_per_job_and_scrubs_errors() {
        let board = Arc::new(ActivityBoard::default());
        let first = board.start_run("ml", "x", "preload-x-1");
        first.progress(&PreloadProgress {
            files_done: 1,
            files_total: 2,
            bytes_done: 10,
            bytes_total: 20,
            ..Default::default()
        });
        drop(first); // the handler went away without finishing
        let runs = board.snapshot("ml", "x").runs;
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].phase, RunPhase::Failed);
        assert_eq!((runs[0].bytes_done, runs[0].bytes_total), (10, 20));

        // A retry of the same Job replaces it; other Jobs are kept, newest first.
        let retry = board.start_run("ml", "x", "preload-x-1");
        for i in 0..MAX_RUNS_PER_DATASET + 2 {
            board
                .start_run("ml", "x", &format!("pin-x-{i}"))
                .finish(&PreloadProgress::default(), None);
        }
        retry.finish(
            &PreloadProgress {
                files_done: 2,
                files_total: 2,
                bytes_done: 20,
                bytes_total: 20,
                done: true,
                ..Default::default()
            },
            None,
        );
        let runs = board.snapshot("ml", "x").runs;
        assert_eq!(runs.len(), MAX_RUNS_PER_DATASET);
        assert_eq!(runs[0].job, format!("pin-x-{}", MAX_RUNS_PER_DATASET + 1));
        assert!(
            runs.iter().all(|r| r.job != "preload-x-1"),
            "evicted as the oldest"
        );
        assert!(runs.iter().all(|r| r.phase == RunPhase::Succeeded));

        let before = SystemTime::now() - Duration::from_secs(1);
        board.source_failed(
            "ml",
            "x",
            &format!(
                "GET https://b.s3.amazonaws.com/k?X-Amz-Signature=abcdef0123 failed\n{}",
                "x".repeat(5000)
            ),
        );
        let error = board.snapshot("ml", "x").last_error.unwrap();
        assert!(!error.message.contains("abcdef0123"), "{}", error.message);
        assert!(!error.message.contains('\n'));
        assert!(error.message.chars().count() <= MAX_MESSAGE_CHARS + 3);
        board.sources_ok("ml", "x", before); // a probe that started before the error
        assert!(board.snapshot("ml", "x").last_error.is_some());
        board.sources_ok("ml", "x", SystemTime::now());
        assert!(board.snapshot("ml", "x").last_error.is_none());
        board.retain(|_, name| name != "x");
        assert_eq!(board.snapshot("ml", "x"), DatasetActivity::default());
    }
}
