//! An object version (source, key, ETag, size) and what the disk tier holds of it: one
//! sparse data file, its journal (the sidecar) and the blocks present with their checksums.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use sha2::{Digest, Sha256};

use super::now_secs;
use crate::path::DatasetPath;
use crate::sidecar::{self, JournalState, SidecarHeader};

/// One version of one object of a source.
#[derive(Debug, Clone)]
pub struct ObjectVersion {
    /// Source name.
    pub source: String,
    /// Key relative to the source prefix.
    pub key: String,
    /// ETag (or version / size+mtime) identifying the content.
    pub etag: String,
    /// Size in bytes.
    pub size: u64,
    /// [`ObjectVersion::id`], hashed once: every memory-tier lookup needs it.
    pub(crate) id: OnceLock<Arc<str>>,
}

impl PartialEq for ObjectVersion {
    fn eq(&self, other: &Self) -> bool {
        (&self.source, &self.key, &self.etag, self.size)
            == (&other.source, &other.key, &other.etag, other.size)
    }
}

impl Eq for ObjectVersion {}

impl std::hash::Hash for ObjectVersion {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (&self.source, &self.key, &self.etag, self.size).hash(state);
    }
}

impl ObjectVersion {
    /// The version of `key` in `source` with this ETag and size.
    pub fn new(
        source: impl Into<String>,
        key: impl Into<String>,
        etag: impl Into<String>,
        size: u64,
    ) -> Self {
        ObjectVersion {
            source: source.into(),
            key: key.into(),
            etag: etag.into(),
            size,
            id: OnceLock::new(),
        }
    }

    /// Stable file-name-safe identity of this version (computed on first use; the fields
    /// are not changed after a version is made).
    pub fn id(&self) -> Arc<str> {
        self.id
            .get_or_init(|| {
                let mut h = Sha256::new();
                h.update(self.source.as_bytes());
                h.update([0]);
                h.update(self.key.as_bytes());
                h.update([0]);
                h.update(self.etag.as_bytes());
                h.update([0]);
                h.update(self.size.to_le_bytes());
                Arc::from(hex::encode(&h.finalize()[..16]))
            })
            .clone()
    }

    /// Number of blocks of `block_size`.
    pub fn block_count(&self, block_size: u64) -> u64 {
        self.size.div_ceil(block_size)
    }

    /// Byte range of block `index`.
    pub fn block_range(&self, block_size: u64, index: u64) -> std::ops::Range<u64> {
        let start = index * block_size;
        start..(start + block_size).min(self.size)
    }
}

/// Memory tier key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockKey {
    /// "namespace/name".
    pub dataset: Arc<str>,
    /// [`ObjectVersion::id`].
    pub object: Arc<str>,
    /// Block index.
    pub index: u64,
    /// Block size: a dataset re-created with another block size must not find the old
    /// instance's blocks (nor the old one the new one's) under the same index.
    pub block_size: u64,
}

pub(super) type DiskKey = (Arc<str>, u64);

#[derive(Debug, Clone, Copy)]
pub(super) struct BlockMeta {
    pub(super) crc: u32,
    pub(super) last_access: u64,
    pub(super) reads: u32,
    // Written or checked by this process: the file holds what the checksum says. Blocks
    // found on disk at start are checked before a passthrough open trusts them.
    pub(super) verified: bool,
}

#[derive(Debug, Default)]
pub(super) struct ObjectState {
    pub(super) blocks: BTreeMap<u64, BlockMeta>,
    // Blocks being written right now (not in `blocks` until their data is on disk).
    pub(super) writing: BTreeSet<u64>,
    // Left the index (its last block was evicted, or the cache was dropped) and its files
    // are gone: nothing may be written into it any more, or the bytes would be counted
    // against the quota with no indexed block to ever give them back.
    pub(super) removed: bool,
    pub(super) journal: JournalState,
}

/// An object version with some blocks on disk.
#[derive(Debug)]
pub struct CachedObject {
    pub(super) id: Arc<str>,
    pub(super) version: ObjectVersion,
    pub(super) path: DatasetPath,
    pub(super) mtime_ms: i64,
    pub(super) cached_at: u64,
    pub(super) data_path: PathBuf,
    pub(super) meta_path: PathBuf,
    pub(super) block_size: u64,
    pub(super) pinned: AtomicBool,
    pub(super) leases: AtomicUsize,
    pub(super) state: Mutex<ObjectState>,
}

impl CachedObject {
    pub(super) fn block_len(&self, index: u64) -> u64 {
        let r = self.version.block_range(self.block_size, index);
        r.end - r.start
    }

    pub(super) fn sidecar_header(&self) -> SidecarHeader {
        SidecarHeader {
            format: sidecar::FORMAT,
            source: self.version.source.clone(),
            key: self.version.key.clone(),
            etag: self.version.etag.clone(),
            size: self.version.size,
            block_size: self.block_size,
            path: self.path.as_str().to_string(),
            mtime_ms: self.mtime_ms,
            blocks: Vec::new(),
        }
    }

    /// Records in the sidecar that block `index` was stored with checksum `crc` (or, with
    /// `None`, removed); `state.blocks` already says so.
    pub(super) fn record_in_sidecar(
        &self,
        state: &mut ObjectState,
        index: u64,
        crc: Option<u32>,
    ) -> std::io::Result<()> {
        let ObjectState {
            blocks, journal, ..
        } = state;
        sidecar::record_change(
            &self.meta_path,
            &self.sidecar_header(),
            journal,
            index,
            crc,
            blocks.iter().map(|(i, m)| (*i, m.crc)),
            blocks.len() as u64,
        )
    }

    /// The object's data file, created at the object's size if missing.
    pub(super) fn open_data_file(&self) -> std::io::Result<File> {
        if let Some(parent) = self.data_path.parent() {
            fs::create_dir_all(parent)?;
        }
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&self.data_path)?;
        if f.metadata()?.len() != self.version.size {
            f.set_len(self.version.size)?;
        }
        Ok(f)
    }

    /// Frees the disk space of block `index` (the file keeps its size). Best effort.
    pub(super) fn punch_hole(&self, index: u64) {
        if let Ok(f) = OpenOptions::new().write(true).open(&self.data_path) {
            let _ = nix::fcntl::fallocate(
                &f,
                nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                    | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                (index * self.block_size) as i64,
                self.block_len(index) as i64,
            );
        }
    }

    /// Frees the space of every block not in `present`: space allocated for blocks
    /// whose fetch never finished (a preload stopped, a crash) would otherwise stay
    /// taken on disk, counted nowhere. Best effort.
    pub(super) fn punch_missing(&self, present: &BTreeMap<u64, u32>) {
        let Ok(f) = OpenOptions::new().write(true).open(&self.data_path) else {
            return;
        };
        let count = self.version.block_count(self.block_size);
        let mut index = 0;
        while index < count {
            if present.contains_key(&index) {
                index += 1;
                continue;
            }
            let start = index;
            while index < count && !present.contains_key(&index) {
                index += 1;
            }
            let from = start * self.block_size;
            let to = (index * self.block_size).min(self.version.size);
            let _ = nix::fcntl::fallocate(
                &f,
                nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                    | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                from as i64,
                (to - from) as i64,
            );
        }
    }

    /// Marks block `index` (or every block) as read now, for the data TTL.
    pub(super) fn touch(&self, index: Option<u64>) {
        let now = now_secs();
        let mut st = self.state.lock().expect("object state");
        match index {
            Some(i) => st
                .blocks
                .get_mut(&i)
                .into_iter()
                .for_each(|m| m.last_access = now),
            None => st.blocks.values_mut().for_each(|m| m.last_access = now),
        }
    }

    pub(super) fn is_evictable(&self) -> bool {
        !self.pinned.load(Ordering::Relaxed) && self.leases.load(Ordering::Relaxed) == 0
    }

    /// The dataset path this object was cached under.
    pub fn path(&self) -> &DatasetPath {
        &self.path
    }
}
