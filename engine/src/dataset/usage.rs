//! What a dataset reports: cache usage and totals, requests sent, the last failed source
//! request; pins; dropping the cache.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::DatasetView;
use crate::Result;
use crate::cache::{CacheUsage, PinRuleUsage};
use crate::source::RequestCounts;

/// Cache usage of a dataset, as reported to the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatasetUsage {
    /// Bytes cached on this node's disk tier.
    pub cached_bytes: u64,
    /// Bytes cached in this node's memory tier.
    pub memory_bytes: u64,
    /// Object versions with cached blocks.
    pub cached_files: u64,
    /// Cached bytes that are pinned.
    pub pinned_bytes: u64,
    /// Reads served from the cache.
    pub hits: u64,
    /// Reads that went to a source.
    pub misses: u64,
    /// Size of the whole dataset, once known (after [`DatasetView::scan`] or a preload of
    /// everything).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    /// Number of files in the dataset, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// Each pin rule in force and what it holds on this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pins: Vec<PinRuleUsage>,
}

impl DatasetView {
    /// Requests sent to all sources so far.
    pub fn request_counts(&self) -> RequestCounts {
        self.sources
            .iter()
            .fold(RequestCounts::default(), |acc, s| {
                let c = s.request_counts();
                RequestCounts {
                    gets: acc.gets + c.gets,
                    heads: acc.heads + c.heads,
                    lists: acc.lists + c.lists,
                    bytes: acc.bytes + c.bytes,
                }
            })
    }

    /// Passes `result` on, remembering a failed source request for the node report. A
    /// "not found" is an answer, not a failure.
    pub(super) fn noted<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result
            && !e.is_not_found()
        {
            *self.last_source_error.lock().expect("source error") =
                Some((e.to_string(), SystemTime::now()));
        }
        result
    }

    /// The last failed source request (reads, listings, lookups) since the previous call,
    /// with its time. Messages are already scrubbed of credentials.
    pub fn take_source_error(&self) -> Option<(String, SystemTime)> {
        self.last_source_error.lock().expect("source error").take()
    }

    /// Walks every source (streamed listings, nothing kept) to learn the dataset's total
    /// size and file count, reported by [`Self::usage`] afterwards.
    pub async fn scan(&self) -> Result<(u64, u64)> {
        let mut bytes = 0;
        let mut files = 0;
        for s in &self.sources {
            s.list_recursive("", |o| {
                bytes += o.size;
                files += 1;
            })
            .await?;
        }
        *self.totals.lock().expect("totals") = Some((bytes, files));
        Ok((bytes, files))
    }

    /// Cache usage of this dataset on this node.
    pub fn usage(&self) -> DatasetUsage {
        let CacheUsage {
            disk_bytes,
            memory_bytes,
            cached_objects,
            pinned_bytes,
            hits,
            misses,
        } = self.cache.usage();
        let totals = *self.totals.lock().expect("totals");
        DatasetUsage {
            cached_bytes: disk_bytes,
            memory_bytes,
            cached_files: cached_objects,
            pinned_bytes,
            hits,
            misses,
            total_bytes: totals.map(|t| t.0),
            files: totals.map(|t| t.1),
            pins: self.cache.pin_usage(),
        }
    }

    pub fn cache_metrics_passthrough(&self, result: &str) {
        self.cache.metrics().passthrough_open(result);
    }

    /// Drops everything cached for this dataset (data and metadata).
    pub fn drop_cache(&self) {
        self.cache.drop_all();
        self.stats.clear();
        self.listings.clear();
    }
}
