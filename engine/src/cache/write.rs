//! Storing fetched blocks: on disk when there is room (data first, then the journal
//! entry that makes it visible), else in memory; disk space preallocated in file order.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::object::{BlockMeta, ObjectState};
use super::{CachedObject, DatasetCache, ObjectVersion, now_secs};
use crate::block_writer::BlockBuffer;
use crate::path::DatasetPath;

impl DatasetCache {
    /// An empty buffer for a fetched block of `len` bytes, from the node's pool.
    pub fn block_buffer(&self, len: usize) -> BlockBuffer {
        self.node.writer.buffers().take(len)
    }

    /// Stores a block fetched from the source: on disk when there is room, else in memory
    /// (each only when the dataset's tiers include it).
    /// Never fails; problems are logged and counted. Blocking.
    /// `mtime` is the object's last-modified time, kept so a restarted agent can answer
    /// `stat` for cached files without asking the source.
    pub fn put(
        &self,
        version: &ObjectVersion,
        path: &DatasetPath,
        mtime: SystemTime,
        index: u64,
        data: Bytes,
    ) {
        if !self.is_counted() {
            // Removed or replaced: nothing is served from this instance's tiers any more.
            return;
        }
        let id: Arc<str> = version.id();
        if self.disk_enabled && self.put_disk(&id, version, path, mtime, index, &data) {
            return;
        }
        // No room on disk, or no disk tier for this dataset: memory, if the dataset may use
        // it; else the block was served read-through and is not kept.
        if self.memory_enabled {
            self.node
                .memory_put(self.memory_key(&id, index), data, self.memory_share());
        }
    }

    fn object_for(
        &self,
        id: &Arc<str>,
        version: &ObjectVersion,
        path: &DatasetPath,
        mtime: SystemTime,
    ) -> Arc<CachedObject> {
        let live = |o: &Arc<CachedObject>| !o.state.lock().expect("object state").removed;
        if let Some(o) = self.objects.read().expect("objects").get(id)
            && live(o)
        {
            return o.clone();
        }
        let mut objects = self.objects.write().expect("objects");
        if objects.get(id).is_some_and(|o| !live(o)) {
            objects.remove(id);
        }
        objects
            .entry(id.clone())
            .or_insert_with(|| {
                let sub = self.dir.join(&id[..2]);
                let obj = CachedObject {
                    id: id.clone(),
                    version: version.clone(),
                    path: path.clone(),
                    mtime_ms: mtime
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(0),
                    cached_at: now_secs(),
                    data_path: sub.join(format!("{id}.data")),
                    meta_path: sub.join(format!("{id}.meta")),
                    block_size: self.block_size,
                    pinned: AtomicBool::new(self.is_pinned(path, mtime)),
                    leases: AtomicUsize::new(0),
                    state: Mutex::new(ObjectState::default()),
                };
                Arc::new(obj)
            })
            .clone()
    }

    fn put_disk(
        &self,
        id: &Arc<str>,
        version: &ObjectVersion,
        path: &DatasetPath,
        mtime: SystemTime,
        index: u64,
        data: &Bytes,
    ) -> bool {
        let obj = self.object_for(id, version, path, mtime);
        let len = data.len() as u64;
        if len != obj.block_len(index) {
            return false;
        }
        {
            // Claimed before space is reserved: the eviction that makes room may take
            // this object's other blocks, and a block being written keeps the object
            // (and its files) in the index.
            let mut st = obj.state.lock().expect("object state");
            if st.blocks.contains_key(&index) || st.writing.contains(&index) {
                return true; // stored already, or being stored by another fetch
            }
            if st.removed {
                return false; // dropped a moment ago: read through this once
            }
            st.writing.insert(index);
        }
        if !self.node.reserve(self, len) {
            obj.state
                .lock()
                .expect("object state")
                .writing
                .remove(&index);
            self.release_unwritten(version, index);
            return false;
        }
        let result = (|| -> std::io::Result<()> {
            // The data goes in without the object's lock, so the blocks of one object
            // (a long GET delivers several at once) reach the disk side by side.
            let written = obj
                .open_data_file()
                .and_then(|f| {
                    self.node
                        .writer
                        .write_at(&obj.data_path, &f, data, index * self.block_size)
                })
                .map(|()| crc32c::crc32c(data));
            let mut st = obj.state.lock().expect("object state");
            st.writing.remove(&index);
            let crc = written?;
            if st.removed {
                // The whole cache was dropped while this block was being written.
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "cache dropped during the write",
                ));
            }
            // Block data first, then the sidecar that makes it visible.
            st.blocks.insert(
                index,
                BlockMeta {
                    crc,
                    last_access: now_secs(),
                    reads: 0,
                    verified: true,
                },
            );
            if let Err(e) = obj.record_in_sidecar(&mut st, index, Some(crc)) {
                st.blocks.remove(&index);
                return Err(e);
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                if obj.is_evictable() {
                    self.policy
                        .lock()
                        .expect("policy")
                        .insert((id.clone(), index), len);
                }
                self.publish_metrics();
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                self.node.release(self, len);
                true
            }
            Err(e) => {
                self.node.release(self, len);
                self.node.metrics.disk_write_error();
                // Log the first failures and then every 100th, so a full disk does not
                // flood the log.
                let n = self.write_failures_logged.fetch_add(1, Ordering::Relaxed);
                if n < 5 || n.is_multiple_of(100) {
                    tracing::warn!(dataset = %self.id, file = %obj.data_path.display(), error = %e,
                        "cannot write to the disk cache; serving read-through");
                }
                false
            }
        }
    }

    /// Allocates the disk space of blocks `blocks` of `version` before they are fetched, in
    /// file order. Parallel fetches finish in any order, and a file system allocates a
    /// block where it stands when it is written, so without this a sequentially read object
    /// lies scattered on disk and a later sequential read of it (FUSE passthrough reads the
    /// file directly) is a random read for the disk: 0.5x the speed of a contiguous copy,
    /// measured. Only when the disk tier has room without evicting; the space stays
    /// uncounted until the block is written ([`Self::put`]), and
    /// [`Self::release_unwritten`] gives it back if the block never is. Blocking, cheap
    /// (unwritten extents, no data written).
    pub fn preallocate(
        &self,
        version: &ObjectVersion,
        path: &DatasetPath,
        mtime: SystemTime,
        blocks: std::ops::Range<u64>,
    ) {
        if !self.disk_enabled || version.size == 0 || blocks.is_empty() || !self.is_counted() {
            return;
        }
        let start = blocks.start * self.block_size;
        let end = (blocks.end * self.block_size).min(version.size);
        if start >= end {
            return;
        }
        let len = end - start;
        let quota = self.quota.load(Ordering::Relaxed);
        if self.used.load(Ordering::Relaxed).saturating_add(len) > quota
            || self.node.disk_used().saturating_add(len) > self.node.disk_capacity()
        {
            return;
        }
        let id: Arc<str> = version.id();
        let obj = self.object_for(&id, version, path, mtime);
        if blocks.clone().all(|i| {
            obj.state
                .lock()
                .expect("object state")
                .blocks
                .contains_key(&i)
        }) {
            return;
        }
        // No lock held from here: allocating never touches written data, and the file
        // system orders this against concurrent block writes itself.
        let result = obj.open_data_file().and_then(|f| {
            nix::fcntl::fallocate(
                &f,
                nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                start as i64,
                len as i64,
            )
            .map_err(std::io::Error::from)
        });
        if let Err(e) = result {
            // Not supported (tmpfs before 6.x, some overlays) or no space: blocks are
            // allocated as they are written instead.
            tracing::debug!(dataset = %self.id, file = %obj.data_path.display(), error = %e,
                "cannot preallocate cache blocks");
        }
    }

    /// Gives back the space [`Self::preallocate`] took for a block that was not stored
    /// (its fetch failed, or the tier had no room for it after all).
    pub fn release_unwritten(&self, version: &ObjectVersion, index: u64) {
        // An instance no longer counted leaves the files alone: a new instance of the
        // dataset may be using them.
        if !self.disk_enabled || !self.is_counted() {
            return;
        }
        let id: Arc<str> = version.id();
        let Some(obj) = self.objects.read().expect("objects").get(&id).cloned() else {
            return;
        };
        let st = obj.state.lock().expect("object state");
        if st.blocks.contains_key(&index) || st.writing.contains(&index) {
            return;
        }
        // The file itself stays (other blocks may be in flight into it); a data file that
        // never got a block has no sidecar and is removed when the index is next rebuilt.
        obj.punch_hole(index);
    }
}
