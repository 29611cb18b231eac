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
//!
//! By role: `object` (object versions and what the disk tier knows of each), `index`
//! (rebuilding the index from the journals at start), `memory` (the node's memory
//! tier), `lookup` (reads from either tier), `write` (storing fetched blocks,
//! preallocation), `space` (reservation against quotas), `evict` (eviction, data TTL),
//! `pins`, `passthrough` (complete files and their leases) and `usage`.

mod evict;
mod index;
mod lookup;
mod memory;
mod object;
mod passthrough;
mod pins;
mod space;
mod usage;
mod write;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::block_writer::BlockWriter;
use crate::config::{EvictionKind, PinRule};
use crate::eviction::{EvictionPolicy, new_policy};
use crate::metrics::Metrics;
use crate::{Error, Result};

use memory::MemoryTier;
use object::DiskKey;
pub use object::{BlockKey, CachedObject, ObjectVersion};
pub use passthrough::PassthroughLease;
pub use pins::PinRuleUsage;
pub use usage::CacheUsage;

/// Node-wide cache: memory tier and the disk tier's total capacity.
pub struct BlockCache {
    root: PathBuf,
    // Shared with a disk tier beside this one (the ephemeral tier): one memory budget.
    memory: Arc<Mutex<MemoryTier>>,
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
            memory: Arc::new(Mutex::new(MemoryTier::new(memory_bytes))),
            disk_capacity: disk_bytes,
            disk_used: AtomicU64::new(0),
            reserve_lock: Mutex::new(()),
            datasets: Mutex::new(HashMap::new()),
            metrics,
            writer: BlockWriter::default(),
        }))
    }

    /// A second disk tier rooted at `root` (the ephemeral one) that shares `other`'s
    /// memory tier: the node's memory budget stays one.
    pub fn beside(
        other: &BlockCache,
        root: &Path,
        disk_bytes: u64,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>> {
        fs::create_dir_all(root).map_err(|e| Error::cache_io(root, e))?;
        Ok(Arc::new(BlockCache {
            root: root.to_path_buf(),
            memory: other.memory.clone(),
            disk_capacity: disk_bytes,
            disk_used: AtomicU64::new(0),
            reserve_lock: Mutex::new(()),
            datasets: Mutex::new(HashMap::new()),
            metrics,
            writer: BlockWriter::default(),
        }))
    }

    /// The directory the disk tier is rooted at.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Bytes on disk over all datasets.
    pub fn disk_used(&self) -> u64 {
        self.disk_used.load(Ordering::Relaxed)
    }

    /// Disk tier capacity.
    pub fn disk_capacity(&self) -> u64 {
        self.disk_capacity
    }

    /// The directory holding a dataset's disk tier.
    pub fn dataset_dir(&self, dataset_id: &str) -> PathBuf {
        self.root.join("datasets").join(dir_name(dataset_id))
    }

    /// The directory holding a dataset's write journal and staging files (apart from
    /// the disk tier: eviction never touches a write).
    pub fn writes_dir(&self, dataset_id: &str) -> PathBuf {
        self.root.join("writes").join(dir_name(dataset_id))
    }
}

fn dir_name(dataset_id: &str) -> String {
    dataset_id
        .chars()
        .map(|c| if c == '/' { '~' } else { c })
        .collect()
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
    /// Pin rules from the configuration.
    pub pins: Vec<PinRule>,
    /// Drop blocks not read for this long.
    pub data_ttl: Option<Duration>,
    /// Whether blocks may be held in the node's memory tier.
    pub memory: bool,
    /// Whether blocks may be written to the node's disk tier (without it nothing of the
    /// dataset is written under the cache directory).
    pub disk: bool,
}

/// One dataset's share of the block cache.
pub struct DatasetCache {
    id: Arc<str>,
    node: Arc<BlockCache>,
    dir: PathBuf,
    disk_enabled: bool,
    memory_enabled: bool,
    block_size: u64,
    quota: AtomicU64,
    data_ttl: Mutex<Option<Duration>>,
    eviction: Mutex<EvictionKind>,
    policy: Mutex<Box<dyn EvictionPolicy<DiskKey>>>,
    objects: RwLock<HashMap<Arc<str>, Arc<CachedObject>>>,
    config_pins: Mutex<Vec<PinRule>>,
    extra_pins: Mutex<Vec<PinRule>>,
    pins: RwLock<pins::PinSet>,
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
        let pins = pins::PinSet::new(&settings.pins, &[])?;
        // A dataset kept out of the disk tier gets no directory either: nothing of it is
        // written under the cache directory.
        let disk_enabled = settings.disk
            && match fs::create_dir_all(&dir) {
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
            memory_enabled: settings.memory,
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
        let run_time = ds.load_run_time_pins();
        if !run_time.is_empty() {
            *ds.pins.write().expect("pins") = pins::PinSet::new(&settings.pins, &run_time)?;
            *ds.extra_pins.lock().expect("pins") = run_time;
        }
        if ds.disk_enabled {
            ds.load_index();
        }
        ds.publish_metrics();
        Ok(ds)
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

    /// The data TTL, if any.
    pub fn data_ttl(&self) -> Option<Duration> {
        *self.data_ttl.lock().expect("ttl")
    }

    /// Applies changed settings in place (quota, eviction policy, pins, data TTL). The
    /// block size cannot change in place: open a new cache for that.
    pub fn update(&self, settings: &DatasetCacheSettings) -> Result<()> {
        pins::PinSet::new(&settings.pins, &[])?;
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
}
