//! Complete files for FUSE passthrough: a version whose every block is on disk is one
//! local file, handed out with a lease that keeps eviction away while it is open.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::object::ObjectState;
use super::{CachedObject, DatasetCache, ObjectVersion};

impl DatasetCache {
    /// If every block of this version is on disk, verifies them (once per process) and
    /// returns the data file together with a lease that keeps its blocks from being
    /// evicted while the file is open (a punched hole would read as zeros).
    pub fn complete_file(&self, version: &ObjectVersion) -> Option<(File, PassthroughLease)> {
        if version.size == 0 || !self.disk_enabled {
            return None;
        }
        let id: Arc<str> = version.id();
        let obj = self.objects.read().expect("objects").get(&id).cloned()?;
        let weak = self
            .node
            .datasets
            .lock()
            .expect("datasets")
            .get(self.id.as_ref())
            .cloned()
            .unwrap_or_default();
        let mut bad = Vec::new();
        let lease = {
            let mut st = obj.state.lock().expect("object state");
            if st.blocks.len() as u64 != version.block_count(self.block_size) {
                return None;
            }
            if st.blocks.values().any(|m| !m.verified) {
                let f = File::open(&obj.data_path).ok()?;
                let mut buf = vec![0u8; self.block_size as usize];
                for (index, meta) in st.blocks.iter_mut().filter(|(_, m)| !m.verified) {
                    let len = obj.block_len(*index) as usize;
                    let ok = f
                        .read_exact_at(&mut buf[..len], index * self.block_size)
                        .is_ok()
                        && crc32c::crc32c(&buf[..len]) == meta.crc;
                    if ok {
                        meta.verified = true;
                    } else {
                        bad.push(*index);
                    }
                }
            }
            // Taken under the lock eviction checks leases under (see `drop_block`).
            bad.is_empty()
                .then(|| PassthroughLease::new(self, weak, &obj, &st))
        };
        let Some(lease) = lease else {
            self.node.metrics.checksum_failure();
            tracing::warn!(dataset = %self.id, path = %obj.path, blocks = ?bad,
                "checksum mismatch in cached file; dropped the bad blocks");
            for i in bad {
                self.drop_block(&obj, i, false);
            }
            return None;
        };
        let f = File::open(&obj.data_path).ok()?;
        Some((f, lease))
    }

    /// True if every block of this version is on disk (no verification).
    pub fn is_complete(&self, version: &ObjectVersion) -> bool {
        let id: Arc<str> = version.id();
        self.objects
            .read()
            .expect("objects")
            .get(&id)
            .is_some_and(|o| {
                o.state.lock().expect("object state").blocks.len() as u64
                    == version.block_count(self.block_size)
            })
    }

    /// Number of blocks of this version on disk.
    pub fn blocks_on_disk(&self, version: &ObjectVersion) -> u64 {
        let id: Arc<str> = version.id();
        self.objects
            .read()
            .expect("objects")
            .get(&id)
            .map(|o| o.state.lock().expect("object state").blocks.len() as u64)
            .unwrap_or(0)
    }

    /// The data file of a cached version, if any (for tests and diagnostics).
    pub fn data_file(&self, version: &ObjectVersion) -> Option<PathBuf> {
        let id: Arc<str> = version.id();
        self.objects
            .read()
            .expect("objects")
            .get(&id)
            .map(|o| o.data_path.clone())
    }
}

/// Keeps a fully cached object's blocks out of eviction while its file is open in
/// passthrough mode.
pub struct PassthroughLease {
    obj: Arc<CachedObject>,
    ds: Weak<DatasetCache>,
}

impl std::fmt::Debug for PassthroughLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassthroughLease")
            .field("object", &self.obj.id)
            .finish()
    }
}

impl PassthroughLease {
    /// Takes a lease on `obj`, whose state `st` the caller holds locked; `weak` is `ds`
    /// as the node knows it, looked up before taking that lock (the node's dataset map
    /// is never locked under an object's state).
    fn new(
        ds: &DatasetCache,
        weak: Weak<DatasetCache>,
        obj: &Arc<CachedObject>,
        st: &ObjectState,
    ) -> Self {
        if obj.leases.fetch_add(1, Ordering::Relaxed) == 0 && !obj.pinned.load(Ordering::Relaxed) {
            ds.set_in_policy_locked(obj, st, false);
        }
        PassthroughLease {
            obj: obj.clone(),
            ds: weak,
        }
    }
}

impl Drop for PassthroughLease {
    fn drop(&mut self) {
        // Read by the kernel while open, unseen by the agent: read now, for the data TTL.
        self.obj.touch(None);
        if self.obj.leases.fetch_sub(1, Ordering::Relaxed) == 1
            && !self.obj.pinned.load(Ordering::Relaxed)
            && let Some(ds) = self.ds.upgrade()
            && ds
                .objects
                .read()
                .expect("objects")
                .contains_key(&self.obj.id)
        {
            ds.set_in_policy(&self.obj, true);
        }
    }
}
