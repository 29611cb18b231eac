//! Eviction from the disk tier: one block at a time as the policy picks (never a pinned
//! or leased one), and the data TTL.

use std::fs;
use std::sync::Arc;

use super::{CachedObject, DatasetCache, now_secs};

impl DatasetCache {
    /// Removes one block from disk (hole punched, removal recorded). With `evicting`, only
    /// if the object is neither pinned nor leased, checked under the object's lock, the
    /// one under which [`Self::complete_file`] takes its lease: a file handed to FUSE
    /// passthrough never has a block punched out of it (the hole would read as zeros).
    /// Returns whether a block was dropped.
    pub(super) fn drop_block(&self, obj: &Arc<CachedObject>, index: u64, evicting: bool) -> bool {
        let mut st = obj.state.lock().expect("object state");
        // A removed object's files are gone (or belong to its successor) and its bytes
        // were given back when it was removed; an instance no longer counted leaves the
        // files to the dataset's new instance.
        if st.removed || (evicting && !obj.is_evictable()) || !self.is_counted() {
            return false;
        }
        if st.blocks.remove(&index).is_none() {
            return false;
        }
        let len = obj.block_len(index);
        self.node.release(self, len);
        self.policy
            .lock()
            .expect("policy")
            .remove(&(obj.id.clone(), index));
        self.node.memory_remove_where(|k| {
            k.object == obj.id && k.index == index && k.dataset == self.id
        });
        // A block being written keeps the object (and its files).
        let now_empty = st.blocks.is_empty() && st.writing.is_empty();
        if now_empty {
            st.removed = true;
            let _ = fs::remove_file(&obj.meta_path);
            let _ = fs::remove_file(&obj.data_path);
        } else {
            obj.punch_hole(index);
            if let Err(e) = obj.record_in_sidecar(&mut st, index, None) {
                tracing::warn!(dataset = %self.id, error = %e, "cannot update cache sidecar");
            }
        }
        drop(st);
        if now_empty {
            let mut objects = self.objects.write().expect("objects");
            // Unless a new object of the same version took its place meanwhile.
            if objects.get(&obj.id).is_some_and(|o| Arc::ptr_eq(o, obj)) {
                objects.remove(&obj.id);
            }
        }
        self.publish_metrics();
        true
    }

    /// Evicts one block chosen by the policy; false when nothing is evictable.
    pub(super) fn evict_one(&self) -> bool {
        loop {
            let victim = self.policy.lock().expect("policy").evict();
            let Some((id, index)) = victim else {
                return false;
            };
            let obj = self.objects.read().expect("objects").get(&id).cloned();
            if let Some(obj) = obj
                && self.drop_block(&obj, index, true)
            {
                self.node.metrics.evicted("disk", 1);
                return true;
            }
        }
    }

    /// Drops blocks nobody read for longer than the data TTL (pinned ones stay).
    /// Returns the number of blocks dropped.
    pub fn expire(&self) -> u64 {
        let Some(ttl) = *self.data_ttl.lock().expect("ttl") else {
            return 0;
        };
        let cutoff = now_secs().saturating_sub(ttl.as_secs());
        let objects: Vec<Arc<CachedObject>> = self
            .objects
            .read()
            .expect("objects")
            .values()
            .cloned()
            .collect();
        let mut dropped = 0;
        for obj in objects {
            if !obj.is_evictable() {
                continue;
            }
            let stale: Vec<u64> = obj
                .state
                .lock()
                .expect("object state")
                .blocks
                .iter()
                .filter(|(_, m)| m.last_access < cutoff || ttl.is_zero())
                .map(|(i, _)| *i)
                .collect();
            for index in stale {
                if self.drop_block(&obj, index, true) {
                    dropped += 1;
                }
            }
        }
        if dropped > 0 {
            self.node.metrics.evicted("disk", dropped);
        }
        dropped
    }
}
