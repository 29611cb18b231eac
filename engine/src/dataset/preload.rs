//! Preload: every block of every file matching globs fetched into the cache, many
//! requests in flight over all files, bytes in flight bounded.

use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::readahead::{READAHEAD_UNIT, split_spans};
use super::{DatasetView, FileStat};
use crate::config::PinRule;
use crate::glob::PathGlobs;
use crate::path::DatasetPath;
use crate::{Error, Result};

/// Requests a preload keeps in flight (over all its files) unless told otherwise.
pub const PRELOAD_MAX_FETCHES: usize = 64;
/// Bytes of blocks a preload holds in flight.
const PRELOAD_MAX_BYTES: u64 = 256 << 20;

/// Which node keeps what a preload fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Each block group on its owners (a preload: cached once for the cluster).
    Owners,
    /// This node, the blocks coming from their owners or the source (pins: every node
    /// keeps what its rules pin).
    Here,
}

/// Progress of a preload, passed to the callback after each file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreloadProgress {
    /// Files done so far.
    pub files_done: u64,
    /// Bytes done so far.
    pub bytes_done: u64,
    /// Files matched.
    pub files_total: u64,
    /// Bytes matched.
    pub bytes_total: u64,
}

/// Result of a preload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreloadReport {
    /// Files now fully cached.
    pub files: u64,
    /// Bytes now cached.
    pub bytes: u64,
    /// Files that could not be cached, with the reason.
    pub failed: Vec<(String, String)>,
    /// Bytes preloaded per cluster member (each block group on its owner); empty without
    /// peers.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub by_node: std::collections::BTreeMap<String, u64>,
}

impl DatasetView {
    /// Fetches every block of every file matching the globs into the cache. `progress` is
    /// called after each file. Files that fail are reported, not fatal.
    pub async fn preload(
        self: &Arc<Self>,
        globs: &[String],
        progress: impl Fn(PreloadProgress) + Send + Sync,
    ) -> Result<PreloadReport> {
        self.preload_with(globs, PRELOAD_MAX_FETCHES, progress)
            .await
    }

    /// [`Self::preload`] with `fetches` requests in flight (at least 1), each of up to
    /// [`MAX_SPAN_BYTES`] of one file.
    pub async fn preload_with(
        self: &Arc<Self>,
        globs: &[String],
        fetches: usize,
        progress: impl Fn(PreloadProgress) + Send + Sync,
    ) -> Result<PreloadReport> {
        self.preload_selected(&PinRule::paths(globs), fetches, progress)
            .await
    }

    /// Preloads the files `selection` names now: those matching its globs and, with a
    /// window, modified within it. The sources are listed afresh, not from the metadata
    /// cache: a preload is asked to fetch what is there now, such as today's new files.
    pub async fn preload_selected(
        self: &Arc<Self>,
        selection: &PinRule,
        fetches: usize,
        progress: impl Fn(PreloadProgress) + Send + Sync,
    ) -> Result<PreloadReport> {
        self.preload_selected_to(selection, Placement::Owners, fetches, progress)
            .await
    }

    /// [`Self::preload_selected`], keeping the blocks where `placement` says: on their
    /// owners (a preload), or on this node (a pin Job: every node keeps what it pins).
    pub async fn preload_selected_to(
        self: &Arc<Self>,
        selection: &PinRule,
        placement: Placement,
        fetches: usize,
        progress: impl Fn(PreloadProgress) + Send + Sync,
    ) -> Result<PreloadReport> {
        let globs = PathGlobs::new(&selection.paths)?;
        let files = self.files_selected(selection, true).await?;
        let everything = selection.modified_within.is_none()
            && (globs.matches(&DatasetPath::root()) || globs.patterns().iter().any(|g| g == "/**"));
        self.preload_files(files, everything, placement, fetches, progress)
            .await
    }

    /// The files matching `selection` now (see [`Self::preload_selected`]); `fresh` lists
    /// the sources again instead of trusting cached listings.
    pub async fn files_selected(
        self: &Arc<Self>,
        selection: &PinRule,
        fresh: bool,
    ) -> Result<Vec<FileStat>> {
        let globs = PathGlobs::new(&selection.paths)?;
        let mut files = self.expand_globs(&globs, fresh).await?;
        if let Some(within) = selection.modified_within {
            let since = SystemTime::now()
                .checked_sub(within)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            files.retain(|f| f.mtime >= since);
        }
        Ok(files)
    }

    /// Fetches every block of `files`; `everything` says they are the whole dataset, so
    /// their totals are the dataset's; `placement` says which node keeps them.
    pub(super) async fn preload_files(
        self: &Arc<Self>,
        files: Vec<FileStat>,
        everything: bool,
        placement: Placement,
        fetches: usize,
        progress: impl Fn(PreloadProgress) + Send + Sync,
    ) -> Result<PreloadReport> {
        let files = Arc::new(files);
        let mut p = PreloadProgress {
            files_total: files.len() as u64,
            bytes_total: files.iter().map(|f| f.size).sum(),
            ..Default::default()
        };
        if everything {
            *self.totals.lock().expect("totals") = Some((p.bytes_total, p.files_total));
        }
        progress(p);
        let bs = self.block_size();
        let mut report = PreloadReport::default();
        // One stream of blocks over all files, so many small files keep as many fetches in
        // flight as one large file does: a preload over a high-latency link is bound by
        // round trips unless dozens of GETs are outstanding. Bytes in flight are bounded
        // too, so large blocks do not multiply into gigabytes of buffers.
        let budget = Arc::new(Semaphore::new(
            (PRELOAD_MAX_BYTES / READAHEAD_UNIT) as usize,
        ));
        // Each file's blocks in requests of up to MAX_SPAN_BYTES (see `fetch_blocks`).
        let span = self.max_span_blocks();
        let spans: Vec<Vec<Range<u64>>> = files
            .iter()
            .map(|f| {
                let count = f.version.as_ref().map_or(0, |v| v.block_count(bs));
                split_spans(&(0..count).collect::<Vec<_>>(), span)
            })
            .collect();
        let mut remaining: Vec<usize> = spans.iter().map(Vec::len).collect();
        let mut failed: Vec<Option<String>> = vec![None; files.len()];
        let mut by_node = std::collections::BTreeMap::new();
        let mut settle = |n: usize, error: Option<String>| {
            let f = &files[n];
            match error {
                None => {
                    report.files += 1;
                    report.bytes += f.size;
                    p.files_done += 1;
                    p.bytes_done += f.size;
                }
                Some(e) => report.failed.push((f.path.to_string(), e)),
            }
            progress(p);
        };
        // Directories and empty files have no blocks: done at once.
        for (n, _) in remaining.iter().enumerate().filter(|(_, c)| **c == 0) {
            settle(n, None);
        }
        let requests: Vec<(usize, Range<u64>)> = spans
            .into_iter()
            .enumerate()
            .flat_map(|(n, spans)| spans.into_iter().map(move |r| (n, r)))
            .collect();
        let shared = files.clone();
        let mut in_flight = futures::stream::iter(requests.into_iter().map(|(n, blocks)| {
            let view = self.clone();
            let budget = budget.clone();
            let files = shared.clone();
            async move {
                let f = &files[n];
                let len = f.version.as_ref().map_or(0, |v| {
                    v.block_range(bs, blocks.end - 1).end - v.block_range(bs, blocks.start).start
                });
                let units = len.div_ceil(READAHEAD_UNIT).max(1) as u32;
                let _permit = budget.acquire_many_owned(units).await;
                let clustered =
                    placement == Placement::Owners && view.cluster().is_some_and(|c| c.has_peers());
                if let (0, Some(version), false) = (blocks.start, f.version.clone(), clustered) {
                    // The whole file's space in file order before its blocks land in any
                    // order (see `DatasetCache::preallocate`). In a cluster the file's
                    // groups land on their owners, so nothing is set aside here.
                    let cache = view.cache.clone();
                    let (path, mtime) = (f.path.clone(), f.mtime);
                    let all = 0..version.block_count(bs);
                    let _ = tokio::task::spawn_blocking(move || {
                        cache.preallocate(&version, &path, mtime, all)
                    })
                    .await;
                }
                let (node, error) = match placement {
                    Placement::Owners => view.preload_group(f, blocks).await,
                    Placement::Here => view.fetch_here(f, blocks).await,
                };
                (n, node, len, error)
            }
        }))
        .buffer_unordered(fetches.max(1));
        loop {
            let next = tokio::select! {
                next = in_flight.next() => next,
                () = self.removed.cancelled() => {
                    return Err(Error::DatasetRemoved { dataset: self.id.clone() });
                }
            };
            let Some((n, node, len, error)) = next else {
                break;
            };
            if error.is_none() {
                *by_node.entry(node).or_default() += len;
            }
            if let Some(e) = error
                && failed[n].is_none()
            {
                failed[n] = Some(e.to_string());
            }
            remaining[n] -= 1;
            if remaining[n] == 0 {
                settle(n, failed[n].take());
            }
        }
        drop(in_flight);
        // Per node only in a cluster: alone, every byte is this node's.
        if by_node.len() > 1 || self.cluster().is_some_and(|c| c.has_peers()) {
            report.by_node = by_node;
        }
        Ok(report)
    }
}
