//! Readahead: the limits every dataset of an agent shares, and the planner that decides,
//! from a reader's past reads alone, which blocks a read needs and which to fetch ahead.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::DatasetView;
use crate::metrics::{Metrics, ReadaheadHeld};

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

/// One block's share of the readahead budget: its permits, and its bytes in the
/// `strata_readahead_bytes` gauge, both given back when the last holder lets go. A block
/// fetched ahead is held by its reader until read (then as one of the reader's recent
/// blocks, while the budget has room) and, while it is on its way, by a task waiting for
/// its fetch: a fetch the reader gave up (a seek, a close) keeps its buffer until the bytes
/// land, so it keeps its share until then too.
pub(super) struct BudgetShare {
    _permit: OwnedSemaphorePermit,
    _held: ReadaheadHeld,
}

impl BudgetShare {
    /// Takes `units` of the budget (a block's worth, [`READAHEAD_UNIT`] bytes each), if the
    /// budget has them.
    pub(super) fn try_take(
        limits: &ReadaheadLimits,
        metrics: &Metrics,
        units: u32,
    ) -> Option<Arc<BudgetShare>> {
        let permit = limits.total.clone().try_acquire_many_owned(units).ok()?;
        Some(Arc::new(BudgetShare {
            _permit: permit,
            _held: metrics.readahead_held(u64::from(units) * READAHEAD_UNIT),
        }))
    }
}

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

/// How far from the end of the furthest read so far a read may start and still count as in
/// order: the kernel's readahead for a FUSE file can be several MiB of requests at once
/// (`read_ahead_kb` of the mount's bdi), served by the agent's threads in any order.
const REORDER_BYTES: u64 = 16 << 20;

/// Blocks a tier holds are loaded this many blocks ahead of the reader (not a whole
/// window ahead; see `ReaderState::held_ahead`): enough to keep a reader of cached blocks
/// served by the agent at disk speed (one block ahead read ~10% slower on the test machine).
const HELD_AHEAD_BLOCKS: u64 = 4;

/// What a reader remembers between reads, for readahead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ReadaheadState {
    /// Where the furthest read so far ended: a read that starts near it is in order.
    pub(super) next_offset: u64,
    /// Blocks kept fetched ahead of the reader; 0 while it reads out of order. Doubles
    /// with each read in order, up to [`ReadaheadPlanner::window_cap`].
    pub(super) window: u64,
    /// Whether the reader counts in [`ReadaheadLimits::sequential_readers`].
    pub(super) counted: bool,
}

/// Plans the readahead of one open file: which blocks a read needs and which to fetch
/// ahead of it. Figures only; no I/O, no waiting (the reader does both).
#[derive(Debug, Clone, Copy)]
pub(super) struct ReadaheadPlanner {
    /// Size of the file.
    pub(super) file_size: u64,
    /// Block size of the dataset.
    pub(super) block_size: u64,
    /// Most bytes read ahead for one file ([`ReadaheadLimits::per_file_bytes`]).
    pub(super) per_file_bytes: u64,
    /// The agent's readahead budget ([`ReadaheadLimits::total_bytes`]).
    pub(super) total_bytes: u64,
    /// Most blocks in one request ahead ([`DatasetView::max_span_blocks`]).
    pub(super) max_span_blocks: u64,
}

/// What one read does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ReadPlan {
    /// The blocks the read covers; empty for a read of nothing or past the end of the file.
    pub(super) read: Range<u64>,
    /// Where the read ends, clamped at the end of the file.
    pub(super) end: u64,
    /// The read broke the order: what was fetched or noted ahead no longer applies.
    pub(super) restart: bool,
    /// Blocks before this one are further behind the reader than a reordered read could
    /// be: what was fetched ahead of them is not needed any more.
    pub(super) keep_from: u64,
    /// The window ahead of the reader that should be fetched (some of it may be already).
    /// Not below the furthest read so far: a reordered read behind it must not fetch again
    /// what the reader already had.
    pub(super) ahead: Range<u64>,
    /// Most blocks in one request ahead.
    pub(super) span: u64,
    /// Blocks a tier holds that fall in here are loaded now.
    pub(super) held_near: Range<u64>,
    /// The reader's state after this read.
    pub(super) state: ReadaheadState,
}

impl ReadaheadPlanner {
    /// Blocks in the file.
    fn block_count(&self) -> u64 {
        self.file_size.div_ceil(self.block_size)
    }

    /// Most blocks one reader may read ahead while `readers` files are read in order over
    /// the agent: the per-file bound, or an equal share of the total budget.
    pub(super) fn window_cap(&self, readers: usize) -> u64 {
        let readers = readers.max(1) as u64;
        let share = self.per_file_bytes.min(self.total_bytes / readers);
        (share / self.block_size).max(1)
    }

    /// Plans a read of `len` bytes at `offset` by a reader in `state`; `readers` is the
    /// number of files read in order over the agent now (this one included when
    /// `state.counted`).
    pub(super) fn plan(
        &self,
        state: ReadaheadState,
        offset: u64,
        len: u64,
        readers: usize,
    ) -> ReadPlan {
        let bs = self.block_size;
        let end = offset.saturating_add(len).min(self.file_size);
        if offset >= end {
            let at = offset / bs;
            return ReadPlan {
                read: at..at,
                end,
                restart: false,
                keep_from: 0,
                ahead: at..at,
                span: 0,
                held_near: at..at,
                state,
            };
        }
        let first = offset / bs;
        let after = (end - 1) / bs + 1;
        // The kernel issues several reads at once and the FUSE threads take them in any
        // order, so "sequential" allows reordering: anything within what the kernel may
        // have in flight of where the furthest read so far ended.
        let reorder = bs.max(REORDER_BYTES);
        let sequential = offset.abs_diff(state.next_offset) <= reorder;
        let state = if sequential {
            let readers = readers + usize::from(!state.counted);
            ReadaheadState {
                next_offset: state.next_offset.max(end),
                window: (state.window * 2).clamp(1, self.window_cap(readers)),
                counted: true,
            }
        } else {
            ReadaheadState {
                next_offset: end,
                window: 0,
                counted: false,
            }
        };
        let (ahead, span, held_near) = if state.window > 0 {
            let ahead_end = (after + state.window).min(self.block_count());
            let ahead_from = after.max(state.next_offset.div_ceil(bs)).min(ahead_end);
            let span = (state.window / 4).clamp(1, self.max_span_blocks);
            (
                ahead_from..ahead_end,
                span,
                after..after + HELD_AHEAD_BLOCKS,
            )
        } else {
            (after..after, 0, after..after)
        };
        ReadPlan {
            read: first..after,
            end,
            restart: !sequential,
            keep_from: state.next_offset.saturating_sub(reorder) / bs,
            ahead,
            span,
            held_near,
            state,
        }
    }

    /// Cuts the blocks of `plan.ahead` still missing (ascending) into requests of at most
    /// `plan.span` adjacent blocks. Steady reading frees one block at a time: a last
    /// request shorter than a span waits until a whole one's worth is missing, so
    /// requests stay large (not at the end of the file).
    pub(super) fn requests(&self, plan: &ReadPlan, missing: &[u64]) -> Vec<Range<u64>> {
        let mut spans = split_spans(missing, plan.span);
        if spans
            .last()
            .is_some_and(|s| s.end - s.start < plan.span && s.end < self.block_count())
        {
            spans.pop();
        }
        spans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// 1 MiB blocks, a 1 GiB file, 8 MiB per file, a 1 GiB budget, 16-block requests.
    fn planner() -> ReadaheadPlanner {
        ReadaheadPlanner {
            file_size: 1 << 30,
            block_size: MIB,
            per_file_bytes: 8 * MIB,
            total_bytes: 1 << 30,
            max_span_blocks: 16,
        }
    }

    /// Reads `count` blocks in order from `from`, one block a read, returning each window.
    fn read_in_order(
        p: &ReadaheadPlanner,
        mut state: ReadaheadState,
        from: u64,
        count: u64,
    ) -> (ReadaheadState, Vec<u64>) {
        let mut windows = Vec::new();
        for i in from..from + count {
            state = p.plan(state, i * MIB, MIB, 1).state;
            windows.push(state.window);
        }
        (state, windows)
    }

    #[test]
    fn reading_in_order_doubles_the_window_up_to_its_bound() {
        let p = planner();
        let (state, windows) = read_in_order(&p, ReadaheadState::default(), 0, 6);
        assert_eq!(windows, [1, 2, 4, 8, 8, 8]);
        assert!(state.counted);
        assert_eq!(state.next_offset, 6 * MIB);

        let plan = p.plan(state, 6 * MIB, MIB, 1);
        assert_eq!(plan.read, 6..7);
        assert!(!plan.restart);
        assert_eq!(plan.ahead, 7..15);
        assert_eq!(plan.span, 2);
        assert_eq!(plan.held_near, 7..11);
    }

    #[test]
    fn the_first_read_at_offset_zero_fetches_one_block_ahead() {
        let plan = planner().plan(ReadaheadState::default(), 0, 128 << 10, 0);
        assert_eq!(plan.read, 0..1);
        assert_eq!(plan.end, 128 << 10);
        assert_eq!(plan.ahead, 1..2);
        assert_eq!(plan.span, 1);
        assert!(plan.state.counted);
    }

    #[test]
    fn a_random_jump_resets_the_window() {
        let p = planner();
        let (state, _) = read_in_order(&p, ReadaheadState::default(), 0, 5);
        let plan = p.plan(state, 500 * MIB, 256 << 10, 1);
        assert!(plan.restart);
        assert_eq!(plan.read, 500..501);
        assert!(plan.ahead.is_empty());
        assert!(plan.held_near.is_empty());
        assert_eq!(
            plan.state,
            ReadaheadState {
                next_offset: 500 * MIB + (256 << 10),
                window: 0,
                counted: false,
            }
        );
        // Reading on from there grows a new window from one block.
        let again = p.plan(plan.state, plan.end, MIB, 0);
        assert!(!again.restart);
        assert_eq!(again.state.window, 1);
    }

    #[test]
    fn a_reordered_read_stays_in_order_and_fetches_nothing_behind() {
        let p = planner();
        let (state, _) = read_in_order(&p, ReadaheadState::default(), 0, 10);
        // The kernel's read of block 8 arrives after the one of block 9.
        let plan = p.plan(state, 8 * MIB, MIB, 1);
        assert!(!plan.restart);
        assert_eq!(plan.read, 8..9);
        assert_eq!(plan.state.next_offset, 10 * MIB);
        assert_eq!(plan.ahead, 10..17);
    }

    #[test]
    fn reads_and_windows_stop_at_the_end_of_the_file() {
        let p = ReadaheadPlanner {
            file_size: 10 * MIB + 512,
            ..planner()
        };
        let (state, _) = read_in_order(&p, ReadaheadState::default(), 0, 5);
        let plan = p.plan(state, 5 * MIB, MIB, 1);
        assert_eq!(plan.ahead, 6..11);
        let plan = p.plan(plan.state, 10 * MIB, 4 * MIB, 1);
        assert_eq!(plan.read, 10..11);
        assert_eq!(plan.end, 10 * MIB + 512);
        assert!(plan.ahead.is_empty());
        // A short last request is sent at the end of the file, not held back.
        let plan = p.plan(state, 5 * MIB, MIB, 1);
        assert_eq!(p.requests(&plan, &[10]), vec![10..11]);
    }

    #[test]
    fn zero_length_and_past_the_end_reads_plan_nothing() {
        let p = planner();
        let (state, _) = read_in_order(&p, ReadaheadState::default(), 0, 3);
        for (offset, len) in [
            (MIB, 0),
            (1 << 30, MIB),
            ((1 << 30) + 5, 1),
            (u64::MAX, u64::MAX),
        ] {
            let plan = p.plan(state, offset, len, 1);
            assert!(plan.read.is_empty(), "{offset} {len}");
            assert!(plan.ahead.is_empty(), "{offset} {len}");
            assert_eq!(plan.state, state, "{offset} {len}");
        }
    }

    #[test]
    fn the_window_keeps_to_the_per_file_bound_and_an_equal_share() {
        let p = ReadaheadPlanner {
            per_file_bytes: 4 * MIB,
            ..planner()
        };
        let (_, windows) = read_in_order(&p, ReadaheadState::default(), 0, 6);
        assert_eq!(windows, [1, 2, 4, 4, 4, 4]);
        assert_eq!(p.window_cap(0), 4);

        // 8 MiB over four files read in order: 2 MiB each, this reader counted among them.
        let shared = ReadaheadPlanner {
            total_bytes: 8 * MIB,
            ..planner()
        };
        assert_eq!(shared.window_cap(4), 2);
        let mut state = ReadaheadState::default();
        for i in 0..4 {
            state = shared
                .plan(state, i * MIB, MIB, 3 + usize::from(state.counted))
                .state;
        }
        assert_eq!(state.window, 2);
        // Never below one block.
        assert_eq!(shared.window_cap(100), 1);
    }

    #[test]
    fn requests_are_whole_spans_of_adjacent_blocks() {
        let p = planner();
        let (state, _) = read_in_order(&p, ReadaheadState::default(), 0, 6);
        let plan = p.plan(state, 6 * MIB, MIB, 1);
        assert_eq!(plan.span, 2);
        // A lone last block waits until a whole request is missing.
        assert_eq!(p.requests(&plan, &[7, 8, 9, 11, 12]), [7..9, 9..10, 11..13]);
        assert_eq!(p.requests(&plan, &[7, 8, 9, 12]), [7..9, 9..10]);
        assert!(p.requests(&plan, &[]).is_empty());
    }
}
