//! Reading a block from the tiers: memory first, then disk (checksum verified; a bad
//! block is dropped and reported as a miss), with hits and misses counted.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::memory::MemoryShare;
use super::{BlockKey, DatasetCache, ObjectVersion, now_secs};

impl DatasetCache {
    pub(super) fn memory_key(&self, object: &Arc<str>, index: u64) -> BlockKey {
        BlockKey {
            dataset: self.id.clone(),
            object: object.clone(),
            index,
            block_size: self.block_size,
        }
    }

    /// What this dataset may hold in the memory tier: its quota (a share of each tier),
    /// under its own eviction policy.
    pub(super) fn memory_share(&self) -> MemoryShare {
        MemoryShare {
            limit: self.quota.load(Ordering::Relaxed),
            eviction: *self.eviction.lock().expect("eviction"),
        }
    }

    /// Looks a block up in memory, then on disk (verifying its checksum). Blocking: call
    /// from a blocking context when the disk may be touched. Meant to follow
    /// [`Self::get_memory_only`]: a memory miss here is not counted again.
    pub fn get(&self, version: &ObjectVersion, index: u64) -> Option<Bytes> {
        let id: Arc<str> = version.id();
        if let Some(b) = self.get_memory(&id, index, false) {
            return Some(b);
        }
        self.get_disk(&id, index)
    }

    /// Whether a block is held in either tier, without reading it or counting a hit or a
    /// miss (for prefetchers deciding what to fetch).
    pub fn has_block(&self, version: &ObjectVersion, index: u64) -> bool {
        let id: Arc<str> = version.id();
        let on_disk = self
            .objects
            .read()
            .expect("objects")
            .get(&id)
            .is_some_and(|o| {
                o.state
                    .lock()
                    .expect("object state")
                    .blocks
                    .contains_key(&index)
            });
        on_disk || self.node.memory_holds(&self.memory_key(&id, index))
    }

    /// Memory tier only (never blocks on I/O).
    pub fn get_memory_only(&self, version: &ObjectVersion, index: u64) -> Option<Bytes> {
        let id: Arc<str> = version.id();
        self.get_memory(&id, index, true)
    }

    // `count_miss` is false for the re-check done right before the disk lookup, so one
    // read counts one memory miss.
    fn get_memory(&self, id: &Arc<str>, index: u64, count_miss: bool) -> Option<Bytes> {
        match self.node.memory_get(&self.memory_key(id, index)) {
            Some(b) => {
                self.node.metrics.hit("memory");
                self.node.metrics.block_from("memory", b.len());
                self.hits.fetch_add(1, Ordering::Relaxed);
                // Keep the disk copy warm in its policy and for the data TTL too.
                self.policy
                    .lock()
                    .expect("policy")
                    .access(&(id.clone(), index));
                self.touch(id, index);
                Some(b)
            }
            None => {
                if count_miss {
                    self.node.metrics.miss("memory");
                }
                None
            }
        }
    }

    fn get_disk(&self, id: &Arc<str>, index: u64) -> Option<Bytes> {
        let obj = self.objects.read().expect("objects").get(id).cloned();
        let Some(obj) = obj else {
            self.node.metrics.miss("disk");
            return None;
        };
        let meta = obj
            .state
            .lock()
            .expect("object state")
            .blocks
            .get(&index)
            .copied();
        let Some(meta) = meta else {
            self.node.metrics.miss("disk");
            return None;
        };
        let len = obj.block_len(index) as usize;
        let mut buf = vec![0u8; len];
        let read = File::open(&obj.data_path)
            .and_then(|f| f.read_exact_at(&mut buf, index * self.block_size));
        if let Err(e) = read {
            tracing::warn!(dataset = %self.id, file = %obj.data_path.display(), error = %e,
                "cannot read cached block; refetching");
            // Gone or cut short: the block is lost. Anything else (out of file
            // descriptors, say) says nothing about the block, which stays.
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof
            ) {
                self.drop_block(&obj, index, false);
            }
            self.node.metrics.miss("disk");
            return None;
        }
        if crc32c::crc32c(&buf) != meta.crc {
            // Evicted (hole punched) or replaced while it was being read: a miss, not a
            // corrupt disk.
            let unchanged = {
                let st = obj.state.lock().expect("object state");
                !st.removed && st.blocks.get(&index).is_some_and(|m| m.crc == meta.crc)
            };
            if !unchanged {
                self.node.metrics.miss("disk");
                return None;
            }
            tracing::warn!(dataset = %self.id, path = %obj.path, block = index,
                file = %obj.data_path.display(), "checksum mismatch on cached block; dropped and refetching");
            self.node.metrics.checksum_failure();
            self.drop_block(&obj, index, false);
            self.node.metrics.miss("disk");
            return None;
        }
        self.node.metrics.hit("disk");
        self.node.metrics.block_from("disk", buf.len());
        self.hits.fetch_add(1, Ordering::Relaxed);
        let promote = {
            let mut st = obj.state.lock().expect("object state");
            match st.blocks.get_mut(&index) {
                Some(m) => {
                    m.last_access = now_secs();
                    m.reads += 1;
                    m.verified = true;
                    m.reads >= 2
                }
                None => false,
            }
        };
        self.policy
            .lock()
            .expect("policy")
            .access(&(id.clone(), index));
        let bytes = Bytes::from(buf);
        if promote && self.memory_enabled {
            // Read twice from disk: worth a memory slot.
            self.node.memory_put(
                self.memory_key(id, index),
                bytes.clone(),
                self.memory_share(),
            );
        }
        Some(bytes)
    }

    /// Counts a read that went to the source.
    pub fn record_miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks block `index` of object `id` as read now, for the data TTL.
    fn touch(&self, id: &Arc<str>, index: u64) {
        let obj = self.objects.read().expect("objects").get(id).cloned();
        if let Some(obj) = obj {
            obj.touch(Some(index));
        }
    }
}
