//! An open file ([`FileReader`]): reads keep the version seen at open time, and
//! sequential reads start readahead of the next blocks.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;

use super::fetch::{SharedBlock, slice_blocks};
use super::readahead::{READAHEAD_BLOCKS, READAHEAD_UNIT, split_spans};
use super::{DatasetView, FileStat};
use crate::path::DatasetPath;
use crate::{Error, Result};

impl DatasetView {
    /// Opens a file for sequential reading with readahead.
    pub async fn open(self: &Arc<Self>, path: &DatasetPath) -> Result<FileReader> {
        let stat = self.stat(path).await?;
        if stat.is_dir() {
            return Err(Error::IsDirectory {
                path: path.to_string(),
            });
        }
        Ok(FileReader::new(self.clone(), stat))
    }
}

type Prefetch = (SharedBlock, OwnedSemaphorePermit);

impl Drop for FileReader {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if st.counted {
            self.view
                .readahead
                .sequential_readers
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Where a block of a read comes from.
enum Wanted {
    Ready(Bytes),
    Prefetched(SharedBlock),
    Fetch,
}

/// An open file: reads keep the version seen at open time, and sequential reads trigger
/// readahead of the next blocks (parallel ranged GETs), bounded per file and in total.
pub struct FileReader {
    view: Arc<DatasetView>,
    stat: FileStat,
    state: Mutex<ReaderState>,
}

struct ReaderState {
    next_offset: u64,
    window: u64,
    prefetched: HashMap<u64, Prefetch>,
    // Blocks in the readahead window that a tier already held when the window reached
    // them: loaded `HELD_AHEAD_BLOCKS` ahead of the reader, not with the window.
    held_ahead: BTreeSet<u64>,
    // The blocks read last (newest at the back), so the many kernel requests (128 KiB -
    // 1 MiB) that fall in one block do not each look it up again. Two, because the kernel
    // sends reads two at a time and the one for the end of a block often comes after the
    // first read of the next: with one kept, that late read went to the disk tier for the
    // whole block (5-40 ms, ~40 times per GiB, on the benchmark rig). Counted in the
    // readahead budget when it has room; kept even when it has none, or every kernel
    // request would read the whole block again.
    recent: VecDeque<(u64, Bytes, Option<OwnedSemaphorePermit>)>,
    // Whether this reader counts in `ReadaheadLimits::sequential_readers`.
    counted: bool,
    // Bytes served so far if the first read started at offset 0, for directory prefetch
    // (None once the file was read whole, or when the reader started elsewhere).
    served_from_start: Option<u64>,
}

impl ReaderState {
    /// Counts bytes served; true once, when the file has been read whole from its start.
    fn note_served(&mut self, offset: u64, len: u64, size: u64) -> bool {
        let served = match self.served_from_start {
            None if offset == 0 => len,
            None => return false,
            Some(n) if n >= size => return false,
            Some(n) => n + len,
        };
        self.served_from_start = Some(served);
        served >= size
    }
}

/// Blocks a reader keeps after reading them (see `ReaderState::recent`).
const RECENT_BLOCKS: usize = 2;

/// Blocks a tier holds are loaded this many blocks ahead of the reader (not a whole
/// window ahead; see `ReaderState::held_ahead`): enough to keep a reader of cached blocks
/// served by the agent at disk speed (one block ahead read ~10% slower on the test machine).
const HELD_AHEAD_BLOCKS: u64 = 4;

/// How far from the end of the furthest read so far a read may start and still count as in
/// order: the kernel's readahead for a FUSE file can be several MiB of requests at once
/// (`read_ahead_kb` of the mount's bdi), served by the agent's threads in any order.
const REORDER_BYTES: u64 = 16 << 20;

impl FileReader {
    fn new(view: Arc<DatasetView>, stat: FileStat) -> Self {
        FileReader {
            view,
            stat,
            state: Mutex::new(ReaderState {
                next_offset: 0,
                window: 0,
                prefetched: HashMap::new(),
                held_ahead: BTreeSet::new(),
                recent: VecDeque::new(),
                counted: false,
                served_from_start: None,
            }),
        }
    }

    /// The stat seen at open time.
    pub fn stat(&self) -> &FileStat {
        &self.stat
    }

    /// The dataset.
    pub fn view(&self) -> &Arc<DatasetView> {
        &self.view
    }

    /// Most blocks this reader may read ahead now: `--readahead`, or an equal share of the
    /// total budget among the files being read in order.
    fn window_cap(&self) -> u64 {
        let limits = &self.view.readahead;
        let readers = limits.sequential_readers.load(Ordering::Relaxed).max(1) as u64;
        let share = limits.per_file_bytes.min(limits.total_bytes / readers);
        (share / self.view.block_size()).max(1)
    }

    /// [`Self::read`] when it can be answered at once from the block this reader just
    /// served, as most of the kernel's reads in a block are: no task, no wait, and nothing
    /// for readahead to do (the window is full and the reader is in the same block).
    /// `None` when it cannot; then call [`Self::read`].
    pub fn read_held(&self, offset: u64, len: u64) -> Option<Bytes> {
        let started = Instant::now();
        let size = self.stat.version.as_ref()?.size;
        let end = offset.saturating_add(len).min(size);
        let bs = self.view.block_size();
        let block = offset / bs;
        if offset >= end || (end - 1) / bs != block {
            return None;
        }
        let (out, read_whole) = {
            let mut st = self.state.lock().expect("reader");
            let newest = st.recent.back().map(|(i, _, _)| *i);
            if newest != Some(block)
                || st.window < self.window_cap()
                || offset.abs_diff(st.next_offset) > bs
            {
                return None;
            }
            let (_, data, _) = st.recent.back()?;
            let skip = (offset - block * bs) as usize;
            let out = data.slice(skip..skip + (end - offset) as usize);
            st.next_offset = st.next_offset.max(end);
            (out, st.note_served(offset, end - offset, size))
        };
        self.view.metrics.observe_read(started.elapsed());
        if read_whole {
            self.view.note_whole_read(&self.stat);
        }
        Some(out)
    }

    /// Starts fetching `blocks` ahead of the reader, as far as the readahead budget
    /// allows (`units` permits per block); returns the blocks started.
    fn fetch_ahead(&self, st: &mut ReaderState, blocks: Range<u64>, units: u32) -> Range<u64> {
        let mut permits = Vec::new();
        for _ in blocks.clone() {
            match self
                .view
                .readahead
                .total
                .clone()
                .try_acquire_many_owned(units)
            {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let started = blocks.start..blocks.start + permits.len() as u64;
        if started.is_empty() {
            return started;
        }
        let futures = self.view.fetch_blocks(&self.stat, started.clone());
        for ((i, fut), permit) in started.clone().zip(futures).zip(permits) {
            READAHEAD_BLOCKS.fetch_add(1, Ordering::Relaxed);
            st.prefetched.insert(i, (fut, permit));
        }
        started
    }

    /// Drops the readahead fetch `fetch` of `block` (giving its budget back), unless a
    /// newer one replaced it meanwhile.
    fn forget_prefetch(&self, block: u64, fetch: &SharedBlock) {
        let mut st = self.state.lock().expect("reader");
        if st
            .prefetched
            .get(&block)
            .is_some_and(|(f, _)| f.ptr_eq(fetch))
        {
            st.prefetched.remove(&block);
        }
    }

    /// Reads `len` bytes at `offset`.
    pub async fn read(&self, offset: u64, len: u64) -> Result<Bytes> {
        let Some(version) = self.stat.version.clone() else {
            return Err(Error::IsDirectory {
                path: self.stat.path.to_string(),
            });
        };
        let started = Instant::now();
        let end = offset.saturating_add(len).min(version.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let bs = self.view.block_size();
        let first = offset / bs;
        let last = (end - 1) / bs;
        let units = bs.div_ceil(READAHEAD_UNIT) as u32;
        let (wanted, preallocate) = {
            let mut st = self.state.lock().expect("reader");
            // The kernel issues several reads at once and the FUSE threads take them in
            // any order, so "sequential" allows reordering: anything within what the
            // kernel may have in flight of where the furthest read so far ended.
            let reorder = bs.max(REORDER_BYTES);
            let sequential = offset.abs_diff(st.next_offset) <= reorder;
            let limits = &self.view.readahead;
            if sequential {
                st.next_offset = st.next_offset.max(end);
                if !st.counted {
                    st.counted = true;
                    limits.sequential_readers.fetch_add(1, Ordering::Relaxed);
                }
                st.window = (st.window * 2).clamp(1, self.window_cap());
            } else {
                if std::mem::take(&mut st.counted) {
                    limits.sequential_readers.fetch_sub(1, Ordering::Relaxed);
                }
                st.next_offset = end;
                st.window = 0;
                st.prefetched.clear();
                st.held_ahead.clear();
            }
            // Blocks further behind the reader than a reordered read could be are not
            // needed any more.
            let behind = st.next_offset.saturating_sub(reorder) / bs;
            st.prefetched.retain(|i, _| *i >= behind);
            st.held_ahead.retain(|i| *i >= behind);
            // A prefetched block stays listed until a read of it completes (it then moves
            // to `recent`): the other kernel reads of the same block that arrive while it
            // is on its way wait for the same fetch instead of reading it from the cache.
            let wanted: Vec<(u64, Wanted)> = (first..=last)
                .map(|i| {
                    // Read now: not to be loaded ahead again (a reordered read can reach
                    // a held block before the reader nears it).
                    st.held_ahead.remove(&i);
                    if let Some((_, b, _)) = st.recent.iter().find(|(ri, _, _)| *ri == i) {
                        return (i, Wanted::Ready(b.clone()));
                    }
                    match st.prefetched.get(&i) {
                        Some((f, _)) => (i, Wanted::Prefetched(f.clone())),
                        None => (i, Wanted::Fetch),
                    }
                })
                .collect();
            // The first block this read starts fetching (on demand or ahead), if any.
            let mut fetch_from = wanted
                .iter()
                .find(|(_, w)| matches!(w, Wanted::Fetch))
                .map(|(i, _)| *i);
            let count = version.block_count(bs);
            let ahead_end = if st.window > 0 {
                (last + 1 + st.window).min(count)
            } else {
                last + 1
            };
            let mut issued_end = last + 1;
            if st.window > 0 {
                let span = (st.window / 4).clamp(1, self.view.max_span_blocks());
                // Not below the furthest read so far: a reordered read behind it must not
                // fetch again what the reader already had.
                let ahead_from = (last + 1).max(st.next_offset.div_ceil(bs));
                let missing: Vec<u64> = (ahead_from..ahead_end)
                    .filter(|i| !st.prefetched.contains_key(i) && !st.held_ahead.contains(i))
                    .collect();
                let mut spans = split_spans(&missing, span);
                // Steady reading frees one block at a time: wait until a whole request's
                // worth is missing, so requests stay large (not at the end of the file).
                if spans
                    .last()
                    .is_some_and(|s| s.end - s.start < span && s.end < count)
                {
                    spans.pop();
                }
                'spans: for span in spans {
                    // Blocks a tier already holds are not loaded ahead: a reader that stops
                    // before them (as the reader of one range of a file split between
                    // readers does) would have read them from disk for nothing. They are
                    // loaded a few blocks ahead of the reader instead (below).
                    let (held, to_fetch): (Vec<u64>, Vec<u64>) =
                        span.partition(|i| self.view.cache.has_block(&version, *i));
                    st.held_ahead.extend(held);
                    for run in split_spans(&to_fetch, u64::MAX) {
                        let fetched = self.fetch_ahead(&mut st, run.clone(), units);
                        if fetched.is_empty() {
                            break 'spans; // total budget exhausted: read on demand
                        }
                        fetch_from.get_or_insert(run.start);
                        issued_end = issued_end.max(fetched.end);
                        if fetched.end < run.end {
                            break 'spans;
                        }
                    }
                }
                let near: Vec<u64> = st
                    .held_ahead
                    .range(last + 1..last + 1 + HELD_AHEAD_BLOCKS)
                    .copied()
                    .collect();
                for i in near {
                    if !self.view.cache.has_block(&version, i) {
                        // Evicted since the window reached it, and likely the blocks after
                        // it too: the window fetches them again (each checked anew) in
                        // large requests, not the reader a block at a time from here.
                        st.held_ahead.clear();
                        break;
                    }
                    st.held_ahead.remove(&i);
                    if self.fetch_ahead(&mut st, i..i + 1, units).is_empty() {
                        break;
                    }
                }
            }
            let preallocate = fetch_from.map(|from| from..issued_end);
            (wanted, preallocate)
        };
        if let Some(blocks) = preallocate {
            // Before any of these fetches lands (a round trip away): their disk space in
            // file order, so the cached file is contiguous for later reads. Outside the
            // reader's lock: it opens and extends a file.
            self.view
                .cache
                .preallocate(&version, &self.stat.path, self.stat.mtime, blocks);
        }
        let blocks = futures::future::try_join_all(wanted.into_iter().map(|(i, w)| {
            let view = self.view.clone();
            let stat = self.stat.clone();
            async move {
                match w {
                    Wanted::Ready(b) => Ok(b),
                    Wanted::Prefetched(f) => match f.clone().await {
                        Ok(b) => Ok(b),
                        // Readahead guessed ahead of time; if its fetch failed (a source
                        // hiccup), the read that needs the block fetches it itself, and
                        // only that fetch's error, if any, is the answer.
                        Err(_) => {
                            self.forget_prefetch(i, &f);
                            view.get_block(&stat, i).await
                        }
                    },
                    Wanted::Fetch => view.get_block(&stat, i).await,
                }
            }
        }))
        .await?;
        let read_whole = {
            let mut st = self.state.lock().expect("reader");
            if let Some(b) = blocks.last()
                && st.recent.iter().all(|(ri, _, _)| *ri != last)
            {
                // The block's own readahead permit, or the one of the block it replaces,
                // else one if the budget has room.
                let own = st.prefetched.remove(&last).map(|(_, p)| p);
                let replaced = match st.recent.len() {
                    RECENT_BLOCKS.. => st.recent.pop_front().and_then(|(_, _, p)| p),
                    _ => None,
                };
                let permit = own.or(replaced).or_else(|| {
                    self.view
                        .readahead
                        .total
                        .clone()
                        .try_acquire_many_owned(units)
                        .ok()
                });
                st.recent.push_back((last, b.clone(), permit));
            }
            st.note_served(offset, end - offset, version.size)
        };
        let out = slice_blocks(&blocks, first * bs, offset, end);
        self.view.metrics.observe_read(started.elapsed());
        if read_whole {
            self.view.note_whole_read(&self.stat);
        }
        Ok(out)
    }
}
