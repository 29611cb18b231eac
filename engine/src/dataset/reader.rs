//! An open file ([`FileReader`]): reads keep the version seen at open time, and
//! sequential reads start readahead of the next blocks.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;

use super::fetch::{SharedBlock, slice_blocks};
use super::readahead::{
    BudgetShare, READAHEAD_BLOCKS, READAHEAD_UNIT, ReadPlan, ReadaheadPlanner, ReadaheadState,
    split_spans,
};
use super::{DatasetView, FileStat};
use crate::cache::ObjectVersion;
use crate::path::DatasetPath;
use crate::writes::{LocalFile, Overlay};
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
        let mut reader = FileReader::new(self.clone(), stat);
        if reader.stat.version.is_none()
            && let Some(Overlay::File(local)) = self.writes().and_then(|w| w.lookup(path))
        {
            reader.local = Some(local);
        }
        Ok(reader)
    }

    /// A reader of a file written on this node (reads come from its staging file).
    pub fn open_local(self: &Arc<Self>, path: &DatasetPath, local: Arc<LocalFile>) -> FileReader {
        let mut reader = FileReader::new(self.clone(), local.stat(path.clone()));
        reader.local = Some(local);
        reader
    }

    /// A file as an earlier open saw it (`stat` kept from then): reads keep that version,
    /// and nothing is asked of the source until a read needs a block. For handles a new
    /// agent takes over from one that died.
    pub fn reopen(self: &Arc<Self>, stat: FileStat) -> FileReader {
        FileReader::new(self.clone(), stat)
    }
}

type Prefetch = (SharedBlock, Arc<BudgetShare>);

impl Drop for FileReader {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if st.readahead.counted {
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
    // A file written on this node: read from its staging file, not the cache.
    local: Option<Arc<LocalFile>>,
    state: Mutex<ReaderState>,
}

struct ReaderState {
    readahead: ReadaheadState,
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
    recent: VecDeque<(u64, Bytes, Option<Arc<BudgetShare>>)>,
    // Bytes served so far if the first read started at offset 0, for directory prefetch
    // (None once the file was read whole, or when the reader started elsewhere).
    served_from_start: Option<u64>,
}

impl ReaderState {
    /// Takes the planner's new state for a read, counting the reader in or out of
    /// `sequential_readers` and forgetting what was fetched or noted ahead that no longer
    /// applies.
    fn advance(&mut self, plan: &ReadPlan, sequential_readers: &AtomicUsize) {
        match (self.readahead.counted, plan.state.counted) {
            (false, true) => {
                sequential_readers.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                sequential_readers.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        self.readahead = plan.state;
        if plan.restart {
            self.prefetched.clear();
            self.held_ahead.clear();
        }
        self.prefetched.retain(|i, _| *i >= plan.keep_from);
        self.held_ahead.retain(|i| *i >= plan.keep_from);
    }

    /// Where each block of a read comes from. A prefetched block stays listed until a read
    /// of it completes (it then moves to `recent`): the other kernel reads of the same
    /// block that arrive while it is on its way wait for the same fetch instead of reading
    /// it from the cache.
    fn wanted(&mut self, blocks: Range<u64>) -> Vec<(u64, Wanted)> {
        blocks
            .map(|i| {
                // Read now: not to be loaded ahead again (a reordered read can reach a held
                // block before the reader nears it).
                self.held_ahead.remove(&i);
                if let Some((_, b, _)) = self.recent.iter().find(|(ri, _, _)| *ri == i) {
                    return (i, Wanted::Ready(b.clone()));
                }
                match self.prefetched.get(&i) {
                    Some((f, _)) => (i, Wanted::Prefetched(f.clone())),
                    None => (i, Wanted::Fetch),
                }
            })
            .collect()
    }

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

impl FileReader {
    fn new(view: Arc<DatasetView>, stat: FileStat) -> Self {
        FileReader {
            view,
            stat,
            local: None,
            state: Mutex::new(ReaderState {
                readahead: ReadaheadState::default(),
                prefetched: HashMap::new(),
                held_ahead: BTreeSet::new(),
                recent: VecDeque::new(),
                served_from_start: None,
            }),
        }
    }

    /// The stat seen at open time.
    pub fn stat(&self) -> &FileStat {
        &self.stat
    }

    /// The local file read, when the file was written on this node.
    pub fn local(&self) -> Option<&Arc<LocalFile>> {
        self.local.as_ref()
    }

    /// The dataset.
    pub fn view(&self) -> &Arc<DatasetView> {
        &self.view
    }

    /// The readahead planner of this file, with the agent's limits.
    fn planner(&self, file_size: u64) -> ReadaheadPlanner {
        let limits = &self.view.readahead;
        ReadaheadPlanner {
            file_size,
            block_size: self.view.block_size(),
            per_file_bytes: limits.per_file_bytes,
            total_bytes: limits.total_bytes,
            max_span_blocks: self.view.max_span_blocks(),
        }
    }

    /// Most blocks this reader may read ahead now: `--readahead`, or an equal share of the
    /// total budget among the files being read in order.
    fn window_cap(&self, file_size: u64) -> u64 {
        let readers = self
            .view
            .readahead
            .sequential_readers
            .load(Ordering::Relaxed);
        self.planner(file_size).window_cap(readers)
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
                || st.readahead.window < self.window_cap(size)
                || offset.abs_diff(st.readahead.next_offset) > bs
            {
                return None;
            }
            let (_, data, _) = st.recent.back()?;
            let skip = (offset - block * bs) as usize;
            let out = data.slice(skip..skip + (end - offset) as usize);
            st.readahead.next_offset = st.readahead.next_offset.max(end);
            (out, st.note_served(offset, end - offset, size))
        };
        self.view.metrics.observe_read(started.elapsed());
        if read_whole {
            self.view.note_whole_read(&self.stat);
        }
        Some(out)
    }

    /// Starts fetching `blocks` ahead of the reader, as far as the readahead budget
    /// allows (`units` of it per block); returns the blocks started.
    fn fetch_ahead(&self, st: &mut ReaderState, blocks: Range<u64>, units: u32) -> Range<u64> {
        let mut shares = Vec::new();
        for _ in blocks.clone() {
            match BudgetShare::try_take(&self.view.readahead, &self.view.metrics, units) {
                Some(share) => shares.push(share),
                None => break,
            }
        }
        let started = blocks.start..blocks.start + shares.len() as u64;
        if started.is_empty() {
            return started;
        }
        let futures = self.view.fetch_blocks(&self.stat, started.clone());
        for ((i, fut), share) in started.clone().zip(futures).zip(shares) {
            READAHEAD_BLOCKS.fetch_add(1, Ordering::Relaxed);
            // The fetch runs on whether or not the reader still wants it: its share of the
            // budget is held until it lands.
            let landing = (fut.clone(), share.clone());
            tokio::spawn(async move {
                let (fut, share) = landing;
                let _ = fut.await;
                drop(share);
            });
            st.prefetched.insert(i, (fut, share));
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

    /// Starts the fetches `plan` asks for ahead of the reader: the blocks of its window not
    /// fetched yet, in whole requests, as far as the budget allows, and the blocks a tier
    /// holds once the reader nears them. Returns the blocks the window's requests cover
    /// (from the first block requested to the end of the last), if any.
    fn fetch_window(
        &self,
        st: &mut ReaderState,
        planner: &ReadaheadPlanner,
        plan: &ReadPlan,
        version: &ObjectVersion,
        units: u32,
    ) -> Option<Range<u64>> {
        let mut issued: Option<Range<u64>> = None;
        let missing: Vec<u64> = plan
            .ahead
            .clone()
            .filter(|i| !st.prefetched.contains_key(i) && !st.held_ahead.contains(i))
            .collect();
        'spans: for span in planner.requests(plan, &missing) {
            // Blocks a tier already holds are not loaded ahead: a reader that stops
            // before them (as the reader of one range of a file split between
            // readers does) would have read them from disk for nothing. They are
            // loaded a few blocks ahead of the reader instead (below).
            let (held, to_fetch): (Vec<u64>, Vec<u64>) =
                span.partition(|i| self.view.cache.has_block(version, *i));
            st.held_ahead.extend(held);
            for run in split_spans(&to_fetch, u64::MAX) {
                let fetched = self.fetch_ahead(st, run.clone(), units);
                if fetched.is_empty() {
                    break 'spans; // total budget exhausted: read on demand
                }
                let from = issued.as_ref().map_or(run.start, |r| r.start);
                let to = issued
                    .as_ref()
                    .map_or(fetched.end, |r| r.end.max(fetched.end));
                issued = Some(from..to);
                if fetched.end < run.end {
                    break 'spans;
                }
            }
        }
        let near: Vec<u64> = st
            .held_ahead
            .range(plan.held_near.clone())
            .copied()
            .collect();
        for i in near {
            if !self.view.cache.has_block(version, i) {
                // Evicted since the window reached it, and likely the blocks after
                // it too: the window fetches them again (each checked anew) in
                // large requests, not the reader a block at a time from here.
                st.held_ahead.clear();
                break;
            }
            st.held_ahead.remove(&i);
            if self.fetch_ahead(st, i..i + 1, units).is_empty() {
                break;
            }
        }
        issued
    }

    /// Keeps block `index`, just read, in `recent` (see `ReaderState::recent`) unless it is
    /// there already.
    fn keep_recent(&self, st: &mut ReaderState, index: u64, block: &Bytes, units: u32) {
        if st.recent.iter().any(|(ri, _, _)| *ri == index) {
            return;
        }
        // The block's own share of the readahead budget, or the one of the block it
        // replaces, else one if the budget has room.
        let own = st.prefetched.remove(&index).map(|(_, share)| share);
        let replaced = match st.recent.len() {
            RECENT_BLOCKS.. => st.recent.pop_front().and_then(|(_, _, share)| share),
            _ => None,
        };
        let share = own
            .or(replaced)
            .or_else(|| BudgetShare::try_take(&self.view.readahead, &self.view.metrics, units));
        st.recent.push_back((index, block.clone(), share));
    }

    /// Reads `len` bytes at `offset`.
    pub async fn read(&self, offset: u64, len: u64) -> Result<Bytes> {
        if let Some(local) = &self.local {
            let local = local.clone();
            return tokio::task::spawn_blocking(move || local.read_at(offset, len))
                .await
                .map_err(|e| Error::Task(e.to_string()))?;
        }
        let Some(version) = self.stat.version.clone() else {
            return Err(Error::IsDirectory {
                path: self.stat.path.to_string(),
            });
        };
        let started = Instant::now();
        let bs = self.view.block_size();
        let units = bs.div_ceil(READAHEAD_UNIT) as u32;
        let planner = self.planner(version.size);
        let (plan, wanted, preallocate) = {
            let mut st = self.state.lock().expect("reader");
            let limits = &self.view.readahead;
            let readers = limits.sequential_readers.load(Ordering::Relaxed);
            let plan = planner.plan(st.readahead, offset, len, readers);
            if plan.read.is_empty() {
                return Ok(Bytes::new());
            }
            st.advance(&plan, &limits.sequential_readers);
            let wanted = st.wanted(plan.read.clone());
            let ahead = self.fetch_window(&mut st, &planner, &plan, &version, units);
            // What this read starts fetching, on demand or ahead, if anything.
            let on_demand = wanted
                .iter()
                .find(|(_, w)| matches!(w, Wanted::Fetch))
                .map(|(i, _)| *i);
            let issued_end = ahead
                .as_ref()
                .map_or(plan.read.end, |a| a.end.max(plan.read.end));
            let preallocate = on_demand
                .or(ahead.map(|a| a.start))
                .map(|from| from..issued_end);
            (plan, wanted, preallocate)
        };
        let (first, last, end) = (plan.read.start, plan.read.end - 1, plan.end);
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
            if let Some(b) = blocks.last() {
                self.keep_recent(&mut st, last, b, units);
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
