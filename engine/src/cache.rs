//! The block cache: a node-wide memory tier and a disk tier with per-dataset shares.
//!
//! Blocks are keyed by (dataset, object version, block index); an object version is
//! (source, key, ETag). On disk each object version is one sparse data file of the
//! object's size plus a sidecar (`.meta`, see [`crate::sidecar`]): an append-only journal
//! of the blocks present and their crc32c. A block is written into the data file first
//! and only then recorded in the sidecar: a crash can lose a block but never expose a
//! torn one. Checksums are verified whenever a block is read back; a bad block is dropped
//! (hole punched, removal recorded) and reported as a miss.
//!
//! A fully cached object version is therefore one ordinary local file that the FUSE
//! layer can hand to the kernel in passthrough mode ([`DatasetCache::complete_file`]).
//!
//! The disk tier never fails a read: when a write fails (disk full, I/O error) the block
//! is kept in memory instead and the read is served anyway.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::block_writer::{BlockBuffer, BlockWriter};
use crate::config::EvictionKind;
use crate::eviction::{EvictionPolicy, S3Fifo, new_policy};
use crate::glob::PathGlobs;
use crate::metrics::Metrics;
use crate::path::DatasetPath;
use crate::sidecar::{self, JournalState, SidecarHeader};
use crate::{Error, Result};

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

type DiskKey = (Arc<str>, u64);

#[derive(Debug, Clone, Copy)]
struct BlockMeta {
    crc: u32,
    last_access: u64,
    reads: u32,
    // Written or checked by this process: the file holds what the checksum says. Blocks
    // found on disk at start are checked before a passthrough open trusts them.
    verified: bool,
}

#[derive(Debug, Default)]
struct ObjectState {
    blocks: BTreeMap<u64, BlockMeta>,
    // Blocks being written right now (not in `blocks` until their data is on disk).
    writing: BTreeSet<u64>,
    // Left the index (its last block was evicted, or the cache was dropped) and its files
    // are gone: nothing may be written into it any more, or the bytes would be counted
    // against the quota with no indexed block to ever give them back.
    removed: bool,
    journal: JournalState,
}

/// An object version with some blocks on disk.
#[derive(Debug)]
pub struct CachedObject {
    id: Arc<str>,
    version: ObjectVersion,
    path: DatasetPath,
    mtime_ms: i64,
    cached_at: u64,
    data_path: PathBuf,
    meta_path: PathBuf,
    block_size: u64,
    pinned: AtomicBool,
    leases: AtomicUsize,
    state: Mutex<ObjectState>,
}

impl CachedObject {
    fn block_len(&self, index: u64) -> u64 {
        let r = self.version.block_range(self.block_size, index);
        r.end - r.start
    }

    fn sidecar_header(&self) -> SidecarHeader {
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
    fn record_in_sidecar(
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
    fn open_data_file(&self) -> std::io::Result<File> {
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
    fn punch_hole(&self, index: u64) {
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
    fn punch_missing(&self, present: &BTreeMap<u64, u32>) {
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
    fn touch(&self, index: Option<u64>) {
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

    fn is_evictable(&self) -> bool {
        !self.pinned.load(Ordering::Relaxed) && self.leases.load(Ordering::Relaxed) == 0
    }

    /// The dataset path this object was cached under.
    pub fn path(&self) -> &DatasetPath {
        &self.path
    }
}

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

struct MemoryTier {
    map: HashMap<BlockKey, Bytes>,
    policy: Box<dyn EvictionPolicy<BlockKey>>,
    capacity: u64,
    per_dataset: HashMap<Arc<str>, u64>,
}

/// Node-wide cache: memory tier and the disk tier's total capacity.
pub struct BlockCache {
    root: PathBuf,
    memory: Mutex<MemoryTier>,
    disk_capacity: u64,
    disk_used: AtomicU64,
    // Serializes space reservations so concurrent writers cannot overshoot quotas.
    reserve_lock: Mutex<()>,
    datasets: Mutex<HashMap<String, Weak<DatasetCache>>>,
    metrics: Arc<Metrics>,
    writer: BlockWriter,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("root", &self.root)
            .field("disk_capacity", &self.disk_capacity)
            .finish()
    }
}

impl BlockCache {
    /// A node cache rooted at `root` (created if missing) with the given tier sizes.
    pub fn new(
        root: &Path,
        memory_bytes: u64,
        disk_bytes: u64,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>> {
        fs::create_dir_all(root).map_err(|e| Error::cache_io(root, e))?;
        Ok(Arc::new(BlockCache {
            root: root.to_path_buf(),
            memory: Mutex::new(MemoryTier {
                map: HashMap::new(),
                policy: Box::new(S3Fifo::new()),
                capacity: memory_bytes,
                per_dataset: HashMap::new(),
            }),
            disk_capacity: disk_bytes,
            disk_used: AtomicU64::new(0),
            reserve_lock: Mutex::new(()),
            datasets: Mutex::new(HashMap::new()),
            metrics,
            writer: BlockWriter::default(),
        }))
    }

    /// Bytes on disk over all datasets.
    pub fn disk_used(&self) -> u64 {
        self.disk_used.load(Ordering::Relaxed)
    }

    /// Disk tier capacity.
    pub fn disk_capacity(&self) -> u64 {
        self.disk_capacity
    }

    /// Bytes in the memory tier.
    pub fn memory_used(&self) -> u64 {
        self.memory.lock().expect("memory tier").policy.bytes()
    }

    /// The directory holding a dataset's disk tier.
    pub fn dataset_dir(&self, dataset_id: &str) -> PathBuf {
        let safe: String = dataset_id
            .chars()
            .map(|c| if c == '/' { '~' } else { c })
            .collect();
        self.root.join("datasets").join(safe)
    }

    fn memory_get(&self, key: &BlockKey) -> Option<Bytes> {
        let mut m = self.memory.lock().expect("memory tier");
        let b = m.map.get(key).cloned()?;
        m.policy.access(key);
        Some(b)
    }

    fn memory_put(&self, key: BlockKey, data: Bytes) {
        let size = data.len() as u64;
        let mut m = self.memory.lock().expect("memory tier");
        if size > m.capacity || m.map.contains_key(&key) {
            return;
        }
        *m.per_dataset.entry(key.dataset.clone()).or_default() += size;
        m.policy.insert(key.clone(), size);
        m.map.insert(key, data);
        let mut evicted = 0;
        while m.policy.bytes() > m.capacity {
            let Some(victim) = m.policy.evict() else {
                break;
            };
            if let Some(b) = m.map.remove(&victim)
                && let Some(d) = m.per_dataset.get_mut(&victim.dataset)
            {
                *d = d.saturating_sub(b.len() as u64);
            }
            evicted += 1;
        }
        drop(m);
        if evicted > 0 {
            self.metrics.evicted("memory", evicted);
        }
    }

    fn memory_remove_where(&self, f: impl Fn(&BlockKey) -> bool) {
        let mut m = self.memory.lock().expect("memory tier");
        let keys: Vec<BlockKey> = m.map.keys().filter(|k| f(k)).cloned().collect();
        for k in keys {
            m.policy.remove(&k);
            if let Some(b) = m.map.remove(&k)
                && let Some(d) = m.per_dataset.get_mut(&k.dataset)
            {
                *d = d.saturating_sub(b.len() as u64);
            }
        }
    }

    fn memory_bytes_of(&self, dataset: &str) -> u64 {
        let m = self.memory.lock().expect("memory tier");
        m.per_dataset.get(dataset).copied().unwrap_or(0)
    }

    /// Makes room for `bytes` in `ds`: first within the dataset's own quota, then within
    /// the node's disk capacity (evicting from the dataset itself first, then from the
    /// dataset using the most evictable bytes). Pinned and open-in-passthrough blocks are
    /// never candidates. Returns false when the space cannot be found.
    fn reserve(&self, ds: &DatasetCache, bytes: u64) -> bool {
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

    fn release(&self, ds: &DatasetCache, bytes: u64) {
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

/// Settings of one dataset's cache.
#[derive(Debug, Clone)]
pub struct DatasetCacheSettings {
    /// Block size in bytes.
    pub block_size: u64,
    /// This dataset's share of the disk tier.
    pub quota: Option<u64>,
    /// Eviction policy.
    pub eviction: EvictionKind,
    /// Pinned globs from the configuration.
    pub pins: Vec<String>,
    /// Drop blocks not read for this long.
    pub data_ttl: Option<Duration>,
}

/// One dataset's share of the block cache.
pub struct DatasetCache {
    id: Arc<str>,
    node: Arc<BlockCache>,
    dir: PathBuf,
    disk_enabled: bool,
    block_size: u64,
    quota: AtomicU64,
    data_ttl: Mutex<Option<Duration>>,
    eviction: Mutex<EvictionKind>,
    policy: Mutex<Box<dyn EvictionPolicy<DiskKey>>>,
    objects: RwLock<HashMap<Arc<str>, Arc<CachedObject>>>,
    config_pins: Mutex<Vec<String>>,
    extra_pins: Mutex<Vec<String>>,
    pins: RwLock<PathGlobs>,
    used: AtomicU64,
    // Whether `used` counts in the node's total: false once the dataset was removed or
    // replaced, after which no space is reserved for it. Changes of `used` and of the
    // node's total happen together under this lock.
    counted: Mutex<bool>,
    hits: AtomicU64,
    misses: AtomicU64,
    write_failures_logged: AtomicU64,
}

impl std::fmt::Debug for DatasetCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatasetCache")
            .field("id", &self.id)
            .field("dir", &self.dir)
            .finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl DatasetCache {
    /// Opens (or creates) a dataset's disk tier and rebuilds its index from the sidecars,
    /// so a restarted agent serves what it had. Sidecars whose block size differs from the
    /// current one, or whose data file is missing, are discarded.
    pub fn open(
        node: Arc<BlockCache>,
        id: &str,
        settings: DatasetCacheSettings,
    ) -> Result<Arc<Self>> {
        let dir = node.dataset_dir(id);
        let pins = PathGlobs::new(&settings.pins)?;
        let disk_enabled = match fs::create_dir_all(&dir) {
            Ok(()) => node.disk_capacity > 0,
            Err(e) => {
                tracing::warn!(dataset = id, dir = %dir.display(), error = %e,
                    "cannot create the dataset's cache directory; serving read-through");
                false
            }
        };
        let ds = Arc::new(DatasetCache {
            id: Arc::from(id),
            node: node.clone(),
            dir,
            disk_enabled,
            block_size: settings.block_size,
            quota: AtomicU64::new(settings.quota.unwrap_or(u64::MAX)),
            data_ttl: Mutex::new(settings.data_ttl),
            eviction: Mutex::new(settings.eviction),
            policy: Mutex::new(new_policy(settings.eviction)),
            objects: RwLock::new(HashMap::new()),
            config_pins: Mutex::new(settings.pins.clone()),
            extra_pins: Mutex::new(Vec::new()),
            pins: RwLock::new(pins),
            used: AtomicU64::new(0),
            counted: Mutex::new(true),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            write_failures_logged: AtomicU64::new(0),
        });
        // If a previous instance of this dataset is still registered (config replaced),
        // its bytes are handed over: subtract them before re-adding from disk.
        let previous = node
            .datasets
            .lock()
            .expect("datasets")
            .insert(id.to_string(), Arc::downgrade(&ds));
        if let Some(prev) = previous.and_then(|w| w.upgrade()) {
            prev.uncount();
            let id = prev.id.clone();
            node.memory_remove_where(|k| k.dataset == id);
            // The old instance becomes inert; its files are re-indexed below.
            *prev.policy.lock().expect("policy") = new_policy(EvictionKind::Lru);
            prev.objects.write().expect("objects").clear();
        }
        if ds.disk_enabled {
            ds.load_index();
        }
        ds.publish_metrics();
        Ok(ds)
    }

    fn load_index(&self) {
        let Ok(read_dir) = walk_files(&self.dir) else {
            return;
        };
        let mut loaded = 0u64;
        for path in read_dir {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".meta") {
                continue;
            }
            match self.load_object(&path) {
                Ok(true) => loaded += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(dataset = %self.id, sidecar = %path.display(), error = %e,
                        "discarding unreadable cache entry");
                    let _ = fs::remove_file(&path);
                    let _ = fs::remove_file(path.with_extension("data"));
                }
            }
        }
        // Data files without a sidecar hold nothing usable.
        if let Ok(files) = walk_files(&self.dir) {
            for p in files {
                if p.extension().is_some_and(|e| e == "data") && !p.with_extension("meta").exists()
                {
                    let _ = fs::remove_file(&p);
                }
            }
        }
        if loaded > 0 {
            tracing::info!(dataset = %self.id, objects = loaded,
                bytes = self.used.load(Ordering::Relaxed), "rebuilt the disk cache index");
        }
    }

    fn load_object(&self, meta_path: &Path) -> std::io::Result<bool> {
        let loaded = sidecar::load(meta_path)?;
        let header = &loaded.header;
        let data_path = meta_path.with_extension("data");
        let data_len = fs::metadata(&data_path)?.len();
        if header.block_size != self.block_size || data_len != header.size {
            return Err(std::io::Error::other("block size or length changed"));
        }
        let path = DatasetPath::parse(&header.path).map_err(std::io::Error::other)?;
        let version = ObjectVersion::new(
            header.source.clone(),
            header.key.clone(),
            header.etag.clone(),
            header.size,
        );
        let id: Arc<str> = version.id();
        let last_access = fs::metadata(meta_path)?
            .modified()
            .ok()
            .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or_else(now_secs);
        let obj = Arc::new(CachedObject {
            id: id.clone(),
            path,
            mtime_ms: header.mtime_ms,
            cached_at: last_access,
            data_path,
            meta_path: meta_path.to_path_buf(),
            block_size: self.block_size,
            pinned: AtomicBool::new(false),
            leases: AtomicUsize::new(0),
            state: Mutex::new(ObjectState::default()),
            version,
        });
        let pinned = self.pins.read().expect("pins").matches(&obj.path);
        obj.pinned.store(pinned, Ordering::Relaxed);
        let mut bytes = 0;
        {
            let mut st = obj.state.lock().expect("object state");
            st.journal = JournalState::loaded(&loaded);
            let mut policy = self.policy.lock().expect("policy");
            for (&index, &crc) in &loaded.blocks {
                if index >= obj.version.block_count(self.block_size) {
                    continue;
                }
                let len = obj.block_len(index);
                bytes += len;
                st.blocks.insert(
                    index,
                    BlockMeta {
                        crc,
                        last_access,
                        reads: 0,
                        verified: false,
                    },
                );
                if !pinned {
                    policy.insert((id.clone(), index), len);
                }
            }
        }
        if bytes == 0 {
            let _ = fs::remove_file(meta_path);
            let _ = fs::remove_file(&obj.data_path);
            return Ok(false);
        }
        if !self.count(bytes) {
            return Ok(false);
        }
        if (loaded.blocks.len() as u64) < obj.version.block_count(self.block_size) {
            obj.punch_missing(&loaded.blocks);
        }
        self.objects.write().expect("objects").insert(id, obj);
        Ok(true)
    }

    /// "namespace/name".
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Block size of this dataset.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// The node's disk tier capacity.
    pub fn node_disk_capacity(&self) -> u64 {
        self.node.disk_capacity
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.node.metrics
    }

    fn memory_key(&self, object: &Arc<str>, index: u64) -> BlockKey {
        BlockKey {
            dataset: self.id.clone(),
            object: object.clone(),
            index,
            block_size: self.block_size,
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

    /// An empty buffer for a fetched block of `len` bytes, from the node's pool.
    pub fn block_buffer(&self, len: usize) -> BlockBuffer {
        self.node.writer.buffers().take(len)
    }

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
        on_disk
            || self
                .node
                .memory
                .lock()
                .expect("memory tier")
                .map
                .contains_key(&self.memory_key(&id, index))
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
            tracing::warn!(dataset = %self.id, path = %obj.path, block = index,
                file = %obj.data_path.display(), "checksum mismatch on cached block; dropped and refetching");
            self.node.metrics.checksum_failure();
            self.drop_block(&obj, index, false);
            self.node.metrics.miss("disk");
            return None;
        }
        self.node.metrics.hit("disk");
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
        if promote {
            // Read twice from disk: worth a memory slot.
            self.node
                .memory_put(self.memory_key(id, index), bytes.clone());
        }
        Some(bytes)
    }

    /// Counts a read that went to the source.
    pub fn record_miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Stores a block fetched from the source: on disk when there is room, else in memory.
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
        self.node.memory_put(self.memory_key(&id, index), data);
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
                    pinned: AtomicBool::new(self.pins.read().expect("pins").matches(path)),
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

    /// Marks block `index` of object `id` as read now, for the data TTL.
    fn touch(&self, id: &Arc<str>, index: u64) {
        let obj = self.objects.read().expect("objects").get(id).cloned();
        if let Some(obj) = obj {
            obj.touch(Some(index));
        }
    }

    /// Removes one block from disk (hole punched, removal recorded). With `evicting`, only
    /// if the object is neither pinned nor leased, checked under the object's lock, the
    /// one under which [`Self::complete_file`] takes its lease: a file handed to FUSE
    /// passthrough never has a block punched out of it (the hole would read as zeros).
    /// Returns whether a block was dropped.
    fn drop_block(&self, obj: &Arc<CachedObject>, index: u64, evicting: bool) -> bool {
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
    fn evict_one(&self) -> bool {
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

    /// The data TTL, if any.
    pub fn data_ttl(&self) -> Option<Duration> {
        *self.data_ttl.lock().expect("ttl")
    }

    /// Applies changed settings in place (quota, eviction policy, pins, data TTL). The
    /// block size cannot change in place: open a new cache for that.
    pub fn update(&self, settings: &DatasetCacheSettings) -> Result<()> {
        PathGlobs::new(&settings.pins)?;
        self.quota
            .store(settings.quota.unwrap_or(u64::MAX), Ordering::Relaxed);
        *self.data_ttl.lock().expect("ttl") = settings.data_ttl;
        let changed = {
            let mut e = self.eviction.lock().expect("eviction");
            let changed = *e != settings.eviction;
            *e = settings.eviction;
            changed
        };
        if changed {
            *self.policy.lock().expect("policy") = new_policy(settings.eviction);
            let objects: Vec<Arc<CachedObject>> = self
                .objects
                .read()
                .expect("objects")
                .values()
                .cloned()
                .collect();
            for obj in objects {
                if obj.is_evictable() {
                    self.set_in_policy(&obj, true);
                }
            }
        }
        *self.config_pins.lock().expect("pins") = settings.pins.clone();
        self.apply_pins()?;
        // A smaller quota takes effect now, not at the next write.
        let q = self.quota.load(Ordering::Relaxed);
        let _guard = self.node.reserve_lock.lock().expect("reserve lock");
        while self.used.load(Ordering::Relaxed) > q {
            if !self.evict_one() {
                break;
            }
        }
        Ok(())
    }

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

    /// What is on disk, newest version per path: (path, version, last-modified). A
    /// restarted agent seeds its metadata cache from this so cached files are served
    /// without asking the source (for one metadata TTL).
    pub fn cached_versions(&self) -> Vec<(DatasetPath, ObjectVersion, SystemTime)> {
        let objects = self.objects.read().expect("objects");
        let mut newest: HashMap<&DatasetPath, &Arc<CachedObject>> = HashMap::new();
        for o in objects.values() {
            let e = newest.entry(&o.path).or_insert(o);
            if o.cached_at > e.cached_at {
                *e = o;
            }
        }
        newest
            .into_values()
            .map(|o| {
                let mtime = UNIX_EPOCH + Duration::from_millis(o.mtime_ms.max(0) as u64);
                (o.path.clone(), o.version.clone(), mtime)
            })
            .collect()
    }

    /// Adds pin globs at run time (on top of the configured ones).
    pub fn pin(&self, globs: &[String]) -> Result<()> {
        PathGlobs::new(globs)?;
        {
            let mut extra = self.extra_pins.lock().expect("pins");
            for g in globs {
                if !extra.contains(g) {
                    extra.push(g.clone());
                }
            }
        }
        self.apply_pins()
    }

    /// Removes run-time pin globs (configured pins stay).
    pub fn unpin(&self, globs: &[String]) -> Result<()> {
        self.extra_pins
            .lock()
            .expect("pins")
            .retain(|g| !globs.contains(g));
        self.apply_pins()
    }

    /// All pin globs in force.
    pub fn pins(&self) -> Vec<String> {
        let mut all = self.config_pins.lock().expect("pins").clone();
        all.extend(self.extra_pins.lock().expect("pins").iter().cloned());
        all
    }

    /// True if the path is pinned.
    pub fn is_pinned(&self, path: &DatasetPath) -> bool {
        self.pins.read().expect("pins").matches(path)
    }

    fn apply_pins(&self) -> Result<()> {
        let globs = PathGlobs::new(&self.pins())?;
        *self.pins.write().expect("pins") = globs.clone();
        let objects: Vec<Arc<CachedObject>> = self
            .objects
            .read()
            .expect("objects")
            .values()
            .cloned()
            .collect();
        for obj in objects {
            let now = globs.matches(&obj.path);
            let before = obj.pinned.swap(now, Ordering::Relaxed);
            if now != before && obj.leases.load(Ordering::Relaxed) == 0 {
                self.set_in_policy(&obj, !now);
            }
        }
        self.publish_metrics();
        Ok(())
    }

    fn set_in_policy(&self, obj: &CachedObject, present: bool) {
        let st = obj.state.lock().expect("object state");
        self.set_in_policy_locked(obj, &st, present);
    }

    fn set_in_policy_locked(&self, obj: &CachedObject, st: &ObjectState, present: bool) {
        let mut policy = self.policy.lock().expect("policy");
        for index in st.blocks.keys() {
            let key = (obj.id.clone(), *index);
            if present {
                policy.insert(key, obj.block_len(*index));
            } else {
                policy.remove(&key);
            }
        }
    }

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

    /// Drops everything this dataset has cached, on disk and in memory.
    pub fn drop_all(&self) {
        let objects: Vec<Arc<CachedObject>> = self
            .objects
            .write()
            .expect("objects")
            .drain()
            .map(|(_, o)| o)
            .collect();
        *self.policy.lock().expect("policy") = new_policy(EvictionKind::Lru);
        let mut freed = 0;
        for obj in objects {
            let mut st = obj.state.lock().expect("object state");
            // Blocks still being written give their space back themselves.
            st.removed = true;
            freed += st.blocks.keys().map(|i| obj.block_len(*i)).sum::<u64>();
            let _ = fs::remove_file(&obj.meta_path);
            let _ = fs::remove_file(&obj.data_path);
        }
        self.node
            .release(self, freed.min(self.used.load(Ordering::Relaxed)));
        let id = self.id.clone();
        self.node.memory_remove_where(|k| k.dataset == id);
        self.publish_metrics();
    }

    /// Forgets the dataset at node level (its files stay unless [`Self::drop_all`] ran).
    pub fn detach(&self) {
        let mut datasets = self.node.datasets.lock().expect("datasets");
        if datasets
            .get(self.id.as_ref())
            .and_then(Weak::upgrade)
            .is_some_and(|d| std::ptr::eq(d.as_ref(), self))
        {
            datasets.remove(self.id.as_ref());
        }
        drop(datasets);
        self.uncount();
        let id = self.id.clone();
        self.node.memory_remove_where(|k| k.dataset == id);
    }

    fn is_counted(&self) -> bool {
        *self.counted.lock().expect("counted")
    }

    /// Counts `bytes` more as this dataset's, in its total and the node's; false (nothing
    /// counted) once the dataset is no longer counted.
    fn count(&self, bytes: u64) -> bool {
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
    fn uncount(&self) {
        let mut counted = self.counted.lock().expect("counted");
        if *counted {
            *counted = false;
            self.node
                .disk_used
                .fetch_sub(self.used.swap(0, Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    fn publish_metrics(&self) {
        self.node
            .metrics
            .set_cached_bytes(&self.id, "disk", self.used.load(Ordering::Relaxed));
        self.node
            .metrics
            .set_cached_bytes(&self.id, "memory", self.node.memory_bytes_of(&self.id));
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

fn walk_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let entry = entry?;
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                out.push(entry.path());
            }
        }
    }
    Ok(out)
}
