//! Disk space: reserving room for a block within the dataset's quota and the node's
//! capacity (evicting to make it), giving it back, and counting a dataset's bytes in the
//! node's total only while the dataset is live.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::{BlockCache, DatasetCache};

impl BlockCache {
    /// Makes room for `bytes` in `ds`: first within the dataset's own quota, then within
    /// the node's disk capacity (evicting from the dataset itself first, then from the
    /// dataset using the most evictable bytes). Pinned and open-in-passthrough blocks are
    /// never candidates. Returns false when the space cannot be found.
    pub(super) fn reserve(&self, ds: &DatasetCache, bytes: u64) -> bool {
        let _guard = self.reserve_lock.lock().expect("reserve lock");
        if bytes > self.disk_capacity || !*ds.counted.lock().expect("counted") {
            return false;
        }
        let quota = ds.quota.load(Ordering::Relaxed);
        if quota != u64::MAX {
            let q = quota;
            if bytes > q {
                return false;
            }
            while ds.used.load(Ordering::Relaxed) + bytes > q {
                if !ds.evict_one() {
                    return false;
                }
            }
        }
        while self.disk_used.load(Ordering::Relaxed) + bytes > self.disk_capacity {
            if ds.evict_one() {
                continue;
            }
            let others: Vec<Arc<DatasetCache>> = self
                .datasets
                .lock()
                .expect("datasets")
                .values()
                .filter_map(Weak::upgrade)
                .filter(|o| o.id != ds.id)
                .collect();
            let victim = others
                .iter()
                .max_by_key(|o| o.policy.lock().expect("policy").bytes());
            match victim {
                Some(o) if o.evict_one() => continue,
                _ => return false,
            }
        }
        ds.count(bytes)
    }

    pub(super) fn release(&self, ds: &DatasetCache, bytes: u64) {
        let counted = ds.counted.lock().expect("counted");
        // A dataset no longer counted gave its bytes back all at once (`uncount`); what
        // its writes still in flight release then is not taken from the node again.
        let taken = ds
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(bytes))
            })
            .unwrap_or(0)
            .min(bytes);
        if *counted {
            self.disk_used.fetch_sub(taken, Ordering::Relaxed);
        }
    }
}

impl DatasetCache {
    /// Disk bytes this dataset may hold: its quota within the node's disk tier (0 when the
    /// disk tier is off).
    pub fn disk_budget(&self) -> u64 {
        if !self.disk_enabled {
            return 0;
        }
        self.quota
            .load(Ordering::Relaxed)
            .min(self.node.disk_capacity)
    }

    pub(super) fn is_counted(&self) -> bool {
        *self.counted.lock().expect("counted")
    }

    /// Counts `bytes` more as this dataset's, in its total and the node's; false (nothing
    /// counted) once the dataset is no longer counted.
    pub(super) fn count(&self, bytes: u64) -> bool {
        let counted = self.counted.lock().expect("counted");
        if *counted {
            self.used.fetch_add(bytes, Ordering::Relaxed);
            self.node.disk_used.fetch_add(bytes, Ordering::Relaxed);
        }
        *counted
    }

    /// Stops counting this dataset's bytes in the node's total (it was removed, or
    /// replaced by a new instance that counts the files itself): they are taken off at
    /// once, no space is reserved for it any more, and what its writes still in flight
    /// give back is not taken off twice.
    pub(super) fn uncount(&self) {
        let mut counted = self.counted.lock().expect("counted");
        if *counted {
            *counted = false;
            self.node
                .disk_used
                .fetch_sub(self.used.swap(0, Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}
