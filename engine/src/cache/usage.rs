//! Usage figures of a dataset's cache and the metrics that publish them.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::DatasetCache;

/// Usage of one dataset's cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheUsage {
    /// Bytes on disk.
    pub disk_bytes: u64,
    /// Bytes in memory.
    pub memory_bytes: u64,
    /// Object versions with at least one block on disk.
    pub cached_objects: u64,
    /// Bytes on disk that are pinned.
    pub pinned_bytes: u64,
    /// Reads served from memory or disk.
    pub hits: u64,
    /// Reads that had to go to the source.
    pub misses: u64,
}

impl DatasetCache {
    /// Bytes this dataset holds on disk (what [`Self::usage`] reports, without walking
    /// the cached objects).
    pub fn disk_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Usage figures.
    pub fn usage(&self) -> CacheUsage {
        let objects = self.objects.read().expect("objects");
        let mut pinned = 0;
        for o in objects.values() {
            if o.pinned.load(Ordering::Relaxed) {
                let st = o.state.lock().expect("object state");
                pinned += st.blocks.keys().map(|i| o.block_len(*i)).sum::<u64>();
            }
        }
        CacheUsage {
            disk_bytes: self.disk_bytes(),
            memory_bytes: self.node.memory_bytes_of(&self.id),
            cached_objects: objects.len() as u64,
            pinned_bytes: pinned,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    pub(super) fn publish_metrics(&self) {
        self.node
            .metrics
            .set_cached_bytes(&self.id, "disk", self.used.load(Ordering::Relaxed));
        self.node
            .metrics
            .set_cached_bytes(&self.id, "memory", self.node.memory_bytes_of(&self.id));
    }
}
