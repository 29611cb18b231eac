//! Readahead: the limits every dataset of an agent shares, and how a reader's blocks are
//! cut into requests.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Semaphore;

use super::DatasetView;

/// Readahead limits shared by every dataset of an agent.
#[derive(Debug, Clone)]
pub struct ReadaheadLimits {
    /// Most bytes read ahead for one open file.
    pub per_file_bytes: u64,
    /// Budget over all open files (bytes held by prefetches in flight or unread).
    pub total: Arc<Semaphore>,
    /// The same budget in bytes.
    pub total_bytes: u64,
    /// Files being read in order right now, over the agent: each one's window is at most
    /// an equal share of the budget, so one reader cannot take it all and leave the next
    /// ones to read block by block on demand.
    pub sequential_readers: Arc<AtomicUsize>,
    /// Directory prefetch: once this many small files (at most one block) of a directory
    /// have been read whole, the directory's other small files are fetched in the
    /// background, as a training data loader reads every file of its shards. 0 turns it off.
    pub directory_trigger_files: u32,
    /// Most bytes one directory prefetch fetches (also at most a quarter of the dataset's
    /// disk budget, so a prefetch cannot flush the cache).
    pub directory_bytes: u64,
    /// Block fetches all directory prefetches of the agent keep in flight together.
    pub directory_fetches: Arc<Semaphore>,
}

/// Units of the readahead budget semaphore (64 KiB each).
pub const READAHEAD_UNIT: u64 = 64 * 1024;

/// Bytes read through readahead over all readers (for tests and stats).
pub static READAHEAD_BLOCKS: AtomicU64 = AtomicU64::new(0);

impl DatasetView {
    /// Files being read in order right now, over the agent (each gets an equal share of
    /// the readahead budget).
    pub fn sequential_readers(&self) -> usize {
        self.readahead.sequential_readers.load(Ordering::Relaxed)
    }
}

/// Splits ascending block indexes into runs of adjacent blocks of at most `span` each.
pub(super) fn split_spans(indexes: &[u64], span: u64) -> Vec<Range<u64>> {
    let mut spans: Vec<Range<u64>> = Vec::new();
    for &i in indexes {
        match spans.last_mut() {
            Some(s) if s.end == i && s.end - s.start < span => s.end += 1,
            _ => spans.push(i..i + 1),
        }
    }
    spans
}
