//! Directory prefetch: once enough small files of a directory were read whole, its other
//! small files are fetched in the background, as a training data loader reads every file
//! of its shards.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::{DatasetView, FileStat, PRELOAD_MAX_FETCHES};
use crate::path::DatasetPath;

/// Directories whose reads are tracked for directory prefetch at once, per dataset.
const MAX_TRACKED_DIRECTORIES: usize = 4096;
/// A directory prefetched once is not prefetched again for this long.
const DIRECTORY_PREFETCH_INTERVAL: Duration = Duration::from_secs(600);

/// Directory prefetch state of one directory.
#[derive(Debug, Clone, Copy)]
pub(super) enum DirectoryScan {
    /// Small files read whole so far.
    Counting(u32),
    Running,
    Done(Instant),
}

impl DatasetView {
    /// Called when a reader has read a whole file: counts small files read whole per
    /// directory and starts the directory's prefetch at the trigger count.
    pub(super) fn note_whole_read(self: &Arc<Self>, stat: &FileStat) {
        let trigger = self.readahead.directory_trigger_files;
        if trigger == 0 || stat.size == 0 || stat.size > self.block_size() {
            return;
        }
        let Some(dir) = stat.path.parent() else {
            return;
        };
        let start = {
            let mut scans = self.directory_scans.lock().expect("directory scans");
            if scans.len() >= MAX_TRACKED_DIRECTORIES && !scans.contains_key(&dir) {
                scans.retain(|_, s| matches!(s, DirectoryScan::Running));
            }
            let scan = scans
                .entry(dir.clone())
                .or_insert(DirectoryScan::Counting(0));
            let count = match *scan {
                DirectoryScan::Counting(n) => n + 1,
                DirectoryScan::Done(at) if at.elapsed() >= DIRECTORY_PREFETCH_INTERVAL => 1,
                DirectoryScan::Running | DirectoryScan::Done(_) => return,
            };
            *scan = if count >= trigger {
                DirectoryScan::Running
            } else {
                DirectoryScan::Counting(count)
            };
            count >= trigger
        };
        if start {
            let view = self.clone();
            self.handle
                .spawn(async move { view.prefetch_directory(dir).await });
        }
    }

    /// Fetches the small files of `dir` that are not cached yet, in listing order, within
    /// the byte limits, with the agent-wide number of fetches in flight.
    async fn prefetch_directory(self: Arc<Self>, dir: DatasetPath) {
        let budget = self
            .readahead
            .directory_bytes
            .min(self.cache.disk_budget() / 4);
        let bs = self.block_size();
        let mut files = 0u64;
        if budget > 0 {
            match self.list(&dir).await {
                Ok(listing) => {
                    let mut bytes = 0u64;
                    let mut wanted: Vec<FileStat> = Vec::new();
                    listing.visit(0, |_, e| {
                        if e.is_dir() || e.size() == 0 || e.size() > bs {
                            return true;
                        }
                        let stat = e.stat();
                        if stat
                            .version
                            .as_ref()
                            .is_none_or(|v| self.cache.has_block(v, 0))
                        {
                            return true;
                        }
                        bytes += stat.size;
                        if bytes > budget {
                            return false;
                        }
                        wanted.push(stat);
                        true
                    });
                    let fetched = AtomicU64::new(0);
                    futures::stream::iter(wanted)
                        .for_each_concurrent(PRELOAD_MAX_FETCHES, |f| {
                            let view = self.clone();
                            let fetched = &fetched;
                            async move {
                                let Ok(_permit) = view.readahead.directory_fetches.acquire().await
                                else {
                                    return;
                                };
                                if view.get_block(&f, 0).await.is_ok() {
                                    fetched.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        })
                        .await;
                    files = fetched.into_inner();
                }
                Err(e) => {
                    tracing::debug!(dataset = %self.id, dir = %dir, error = %e,
                        "directory prefetch: cannot list the directory");
                }
            }
        }
        self.metrics.directory_prefetched(&self.id, files);
        tracing::debug!(dataset = %self.id, dir = %dir, files, "directory prefetch done");
        self.directory_scans
            .lock()
            .expect("directory scans")
            .insert(dir, DirectoryScan::Done(Instant::now()));
    }
}
