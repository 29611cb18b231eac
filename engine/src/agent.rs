//! The node-wide agent: one block cache (memory + disk tiers) shared by every dataset
//! configured on this node.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::cache::{BlockCache, DatasetCache, DatasetCacheSettings};
use crate::cluster::Cluster;
use crate::config::{DatasetConfig, MigrationConfig};
use crate::dataset::{DatasetView, READAHEAD_UNIT, ReadaheadLimits, pin_refresh_period};
use crate::metrics::Metrics;
use crate::writes::DatasetWrites;
use crate::{Error, Result};

/// Block fetches all directory prefetches keep in flight together: half of a source's
/// default concurrency, so the reader's own misses still get through at once.
const DIRECTORY_PREFETCH_FETCHES: usize = 32;

/// Node-level settings (set at install time; datasets get shares of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Directory of the disk tier (created if missing).
    pub cache_dir: PathBuf,
    /// Memory tier size in bytes.
    pub memory_bytes: u64,
    /// Disk tier size in bytes (0 disables the disk tier).
    pub disk_bytes: u64,
    /// Most bytes read ahead for one open file (default 64 MiB).
    pub readahead_per_file_bytes: u64,
    /// Most bytes read ahead over all open files (default 256 MiB).
    pub readahead_total_bytes: u64,
    /// Small files of a directory read whole before the directory's other small files are
    /// prefetched (default 4; 0 turns directory prefetch off).
    pub directory_prefetch_files: u32,
    /// Most bytes one directory prefetch fetches (default 1 GiB).
    pub directory_prefetch_bytes: u64,
    /// Which host directories `file://` sources may name.
    pub local_paths: LocalPaths,
    /// The ephemeral disk tier (its directory and size), for datasets whose policy's
    /// persistence is Ephemeral; none: such datasets are refused.
    pub ephemeral: Option<(PathBuf, u64)>,
}

/// Which host directories `file://` sources may name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LocalPaths {
    /// Any directory the agent can read (standalone `strata-agent mount`).
    #[default]
    Any,
    /// Only these directories and what is under them (a cluster: the admin's allow list,
    /// which the operator also mounts read-only into the agent's pod). Empty: none.
    Under(Vec<PathBuf>),
}

impl LocalPaths {
    /// Refuses a dataset with a `file://` source outside the allowed directories. Paths
    /// are compared after resolving symlinks and `..`, component by component.
    pub fn check(&self, config: &DatasetConfig) -> Result<()> {
        let LocalPaths::Under(allowed) = self else {
            return Ok(());
        };
        for (i, source) in config.sources.iter().enumerate() {
            let Some(dir) = crate::source::local_dir(&source.uri) else {
                continue;
            };
            let resolved = std::fs::canonicalize(dir).unwrap_or_else(|_| PathBuf::from(dir));
            let inside = allowed.iter().any(|root| {
                let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.clone());
                resolved.starts_with(&root) && !resolved.components().any(|c| c.as_os_str() == "..")
            });
            if !inside {
                let list = if allowed.is_empty() {
                    "none are allowed".to_string()
                } else {
                    format!(
                        "allowed: {}",
                        allowed
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                return Err(Error::config(
                    format!("sources[{i}].uri"),
                    format!(
                        "local path {dir:?} is not under a host path this node serves ({list}); \
                         the cluster admin sets them with the chart value \
                         node.localSources.allowedHostPaths (agent flag --allow-local-path)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl AgentConfig {
    /// Settings with default readahead limits.
    pub fn new(cache_dir: impl Into<PathBuf>, memory_bytes: u64, disk_bytes: u64) -> Self {
        AgentConfig {
            cache_dir: cache_dir.into(),
            memory_bytes,
            disk_bytes,
            readahead_per_file_bytes: 128 << 20,
            readahead_total_bytes: 256 << 20,
            directory_prefetch_files: 4,
            directory_prefetch_bytes: 1 << 30,
            local_paths: LocalPaths::Any,
            ephemeral: None,
        }
    }
}

/// A dataset's (namespace, name).
type DatasetKey = (String, String);

/// The agent: datasets by (namespace, name) over one node cache.
pub struct Agent {
    config: AgentConfig,
    cache: Arc<BlockCache>,
    // The ephemeral disk tier beside `cache` (sharing its memory tier), if the node has one.
    ephemeral_cache: Option<Arc<BlockCache>>,
    metrics: Arc<Metrics>,
    readahead: ReadaheadLimits,
    datasets: Mutex<BTreeMap<(String, String), Arc<DatasetView>>>,
    // Each dataset's background upkeep: data TTL expiry and pin re-evaluation.
    upkeep: Mutex<BTreeMap<DatasetKey, Vec<JoinHandle<()>>>>,
    // Held while a dataset is added, replaced or removed: a removal between reading the
    // current view and installing its replacement would leave a view over a detached
    // cache.
    reconfiguring: tokio::sync::Mutex<()>,
    // The cluster this agent shares blocks with (set once; none: a node of its own).
    cluster: std::sync::OnceLock<Arc<Cluster>>,
    // Each dataset's writes: one journal and uploader whatever views replace each other,
    // kept after the dataset is removed until its uploads are done.
    writes: Mutex<BTreeMap<DatasetKey, Arc<DatasetWrites>>>,
    /// Each dataset's migrations (kept apart from its view, whose config has none, so a
    /// Migration coming or going does not rebuild the view).
    migrations: Mutex<BTreeMap<DatasetKey, Vec<MigrationConfig>>>,
    // Set while mounts a previous agent left are being taken over: journals opened
    // meanwhile keep every replayed file until the write handles are found again.
    takeover_pending: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("config", &self.config)
            .finish()
    }
}

impl Agent {
    /// Creates the agent (the cache directory is created; nothing is indexed until a
    /// dataset is added, which rebuilds that dataset's index from disk).
    pub async fn new(config: AgentConfig) -> Result<Arc<Self>> {
        Self::with_metrics(config, Arc::new(Metrics::new())).await
    }

    /// Like [`Agent::new`] with a given metrics registry.
    pub async fn with_metrics(config: AgentConfig, metrics: Arc<Metrics>) -> Result<Arc<Self>> {
        let cache = BlockCache::new(
            &config.cache_dir,
            config.memory_bytes,
            config.disk_bytes,
            metrics.clone(),
        )?;
        let ephemeral_cache = match &config.ephemeral {
            Some((dir, bytes)) => {
                // Cached data of an ephemeral tier does not outlive the agent by design.
                empty_dir(dir)?;
                Some(BlockCache::beside(&cache, dir, *bytes, metrics.clone())?)
            }
            None => None,
        };
        let units = (config.readahead_total_bytes / READAHEAD_UNIT)
            .min(Semaphore::MAX_PERMITS as u64) as usize;
        Ok(Arc::new(Agent {
            readahead: ReadaheadLimits {
                per_file_bytes: config.readahead_per_file_bytes,
                total: Arc::new(Semaphore::new(units)),
                total_bytes: config.readahead_total_bytes,
                sequential_readers: Arc::default(),
                directory_trigger_files: config.directory_prefetch_files,
                directory_bytes: config.directory_prefetch_bytes,
                directory_fetches: Arc::new(Semaphore::new(DIRECTORY_PREFETCH_FETCHES)),
            },
            config,
            cache,
            ephemeral_cache,
            metrics,
            datasets: Mutex::new(BTreeMap::new()),
            upkeep: Mutex::new(BTreeMap::new()),
            reconfiguring: tokio::sync::Mutex::new(()),
            cluster: std::sync::OnceLock::new(),
            writes: Mutex::new(BTreeMap::new()),
            migrations: Mutex::new(BTreeMap::new()),
            takeover_pending: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// Node settings.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The metrics registry (text exposition: `metrics().encode()`).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The node cache.
    pub fn block_cache(&self) -> &Arc<BlockCache> {
        &self.cache
    }

    /// The ephemeral disk tier, if the node has one.
    pub fn ephemeral_block_cache(&self) -> Option<&Arc<BlockCache>> {
        self.ephemeral_cache.as_ref()
    }

    /// Shares blocks with `cluster`'s other agents from now on, for every dataset (set
    /// once; later calls are ignored).
    pub fn join_cluster(&self, cluster: Arc<Cluster>) {
        if self.cluster.set(cluster.clone()).is_ok() {
            for view in self.datasets() {
                view.join_cluster(cluster.clone());
            }
        }
    }

    /// The cluster this agent shares blocks with.
    pub fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.get().cloned()
    }

    /// Adds a dataset, or replaces it when its configuration changed (the cache is kept
    /// when the block size is unchanged; settings such as quota and pins apply in place).
    /// Returns the view to serve it through.
    pub async fn add_dataset(&self, mut config: DatasetConfig) -> Result<Arc<DatasetView>> {
        config.validate()?;
        let migrations = std::mem::take(&mut config.migrations);
        self.config.local_paths.check(&config)?;
        let key = (config.namespace.clone(), config.name.clone());
        let id = format!("{}/{}", config.namespace, config.name);
        let settings = DatasetCacheSettings {
            block_size: config.cache.block_size,
            quota: config.cache.quota,
            eviction: config.cache.eviction,
            pins: config.cache.pins.clone(),
            data_ttl: config.cache.data_ttl,
            memory: config.cache.uses_memory(),
            disk: config.cache.uses_disk(),
        };
        let _reconfiguring = self.reconfiguring.lock().await;
        self.set_migrations(&key, migrations);
        let existing = self.datasets.lock().expect("datasets").get(&key).cloned();
        if let Some(old) = &existing
            && old.config() == &config
        {
            return Ok(old.clone());
        }
        let node_cache = self.node_cache(&config)?;
        let cache = match &existing {
            // Settings apply in place, except a new block size, new tiers or another disk
            // tier (persistence): a new cache.
            Some(old)
                if old.block_size() == config.cache.block_size
                    && old.config().cache.tiers == config.cache.tiers
                    && old.config().cache.ephemeral == config.cache.ephemeral =>
            {
                old.cache().update(&settings)?;
                old.cache().clone()
            }
            _ => {
                let cache = node_cache;
                let id2 = id.clone();
                tokio::task::spawn_blocking(move || DatasetCache::open(cache, &id2, settings))
                    .await
                    .map_err(|e| Error::Task(e.to_string()))??
            }
        };
        let view = DatasetView::new(
            config,
            cache.clone(),
            self.readahead.clone(),
            self.metrics.clone(),
        )?;
        if let Some(cluster) = self.cluster.get() {
            view.join_cluster(cluster.clone());
        }
        self.attach_writes(&key, &view)?;
        // Not for a writable dataset: the disk tier may hold versions older than what
        // this node uploaded since, and a copy-up of one after a restart would write on the
        // wrong version (the crash test saw appends land on them).
        if view.writes().is_none() {
            view.seed_metadata_from_cache();
        }
        if let Some(old) = &existing {
            if old.config().sources == view.config().sources {
                view.adopt_metadata(old);
            }
            // A new cache (the block size changed): the old view's work would only fill
            // the old one, which no longer counts.
            if !Arc::ptr_eq(old.cache(), &cache) {
                old.close();
            }
        }
        self.datasets
            .lock()
            .expect("datasets")
            .insert(key.clone(), view.clone());
        self.start_upkeep(key, &view);
        tracing::info!(dataset = %id, "dataset configured");
        Ok(view)
    }

    /// Removes a removed dataset's write journal when nothing in it is owed to the source
    /// any more; one with changes still to send is kept, and its uploads go on.
    fn drop_writes_if_done(&self, key: &DatasetKey) {
        let mut all = self.writes.lock().expect("writes");
        let Some(writes) = all.get(key) else { return };
        if !writes.is_idle() {
            tracing::warn!(dataset = %format!("{}/{}", key.0, key.1),
                "dataset removed with changes not at the source yet; its uploads go on");
            return;
        }
        let dir = writes.dir().to_path_buf();
        all.remove(key);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove a removed dataset's write journal");
        }
    }

    /// The disk tier a dataset's blocks go to: the ephemeral one for an ephemeral cache.
    fn node_cache(&self, config: &DatasetConfig) -> Result<Arc<BlockCache>> {
        if !config.cache.ephemeral {
            return Ok(self.cache.clone());
        }
        self.ephemeral_cache.clone().ok_or_else(|| {
            Error::config(
                "cache.ephemeral",
                "the dataset's policy asks for an ephemeral cache and this node has no \
                 ephemeral disk tier; the cluster admin gives nodes one with the chart value \
                 node.cache.ephemeral.size (agent flags --ephemeral-cache-dir and \
                 --ephemeral-disk), or use a Persistent policy",
            )
        })
    }

    /// Empties the ephemeral disk tier (the agent stops: its cached data goes with it).
    /// The datasets on it serve from their sources afterwards.
    pub fn discard_ephemeral_cache(&self) {
        if let Some(c) = &self.ephemeral_cache
            && let Err(e) = empty_dir(c.root())
        {
            tracing::warn!(error = %e, "could not empty the ephemeral cache");
        }
    }

    /// Mounts of a previous agent are about to be taken over (a held restart): the write
    /// journals opened until [`Self::takeover_done`] let go of no file, since a write
    /// handle the kernel still has open may be found again.
    pub fn expect_takeover(&self) {
        self.takeover_pending
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every mount was taken over (or given up): the files no handle came back for are
    /// settled (see [`DatasetWrites::settle`]).
    pub fn takeover_done(&self) {
        self.takeover_pending
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let all: Vec<_> = self
            .writes
            .lock()
            .expect("writes")
            .values()
            .cloned()
            .collect();
        for w in all {
            w.settle();
        }
    }

    /// Gives the view its dataset's writes: the ones already open, or new ones when a
    /// source takes writes or a journal from before a restart is there.
    fn attach_writes(&self, key: &DatasetKey, view: &Arc<DatasetView>) -> Result<()> {
        let config = view.config();
        let modes: Vec<_> = view
            .sources()
            .iter()
            .zip(&config.sources)
            .map(|(s, c)| (s.clone(), c.write_mode))
            .collect();
        let limit = config.cache.quota.unwrap_or(self.cache.disk_capacity());
        let mut all = self.writes.lock().expect("writes");
        let writes = match all.get(key) {
            Some(w) => {
                w.set_sources(modes, limit);
                w.clone()
            }
            None => {
                let dir = self.cache.writes_dir(view.id());
                let writable = modes.iter().any(|(_, m)| !m.is_read_only());
                if !writable && !dir.join("journal").exists() {
                    return Ok(());
                }
                let w = DatasetWrites::open(view.id(), &dir, modes, limit, self.metrics.clone())?;
                if !self
                    .takeover_pending
                    .load(std::sync::atomic::Ordering::SeqCst)
                {
                    w.settle();
                }
                all.insert(key.clone(), w.clone());
                w
            }
        };
        view.attach_writes(writes);
        Ok(())
    }

    /// Starts a dataset's background upkeep (stopping that of the view it replaces): the
    /// data TTL's expiry, and the pin rules' re-evaluation once at once and then every
    /// [`pin_refresh_period`].
    fn start_upkeep(&self, key: (String, String), view: &Arc<DatasetView>) {
        let mut upkeep = self.upkeep.lock().expect("upkeep");
        for old in upkeep.remove(&key).into_iter().flatten() {
            old.abort();
        }
        let mut tasks: Vec<JoinHandle<()>> = Vec::new();
        if view.cache().data_ttl().is_some() {
            let weak = Arc::downgrade(view.cache());
            tasks.push(tokio::spawn(async move {
                loop {
                    let Some(cache) = weak.upgrade() else { return };
                    let Some(ttl) = cache.data_ttl() else { return };
                    let tick = (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
                    let c = cache.clone();
                    let _ = tokio::task::spawn_blocking(move || c.expire()).await;
                    drop(cache);
                    tokio::time::sleep(tick).await;
                }
            }));
        }
        {
            let weak = Arc::downgrade(view);
            let period = pin_refresh_period(view.config().cache.metadata_ttl);
            tasks.push(tokio::spawn(async move {
                loop {
                    let Some(view) = weak.upgrade() else { return };
                    // Rules may be added at run time, so the task runs with none too.
                    let refreshed = if view.pins().is_empty() {
                        Ok(Default::default())
                    } else {
                        view.refresh_pins().await
                    };
                    match refreshed {
                        Ok(r) if r.over_quota_files > 0 => {
                            tracing::warn!(dataset = %view.id(), pinned_files = r.files,
                                fetched_files = r.fetched_files, over_quota_files = r.over_quota_files,
                                "the pin rules match more than the dataset's quota holds; \
                                 raise the CachePolicy's quota or narrow its pin rules");
                        }
                        Ok(r) if r.fetched_files > 0 || !r.failed.is_empty() => {
                            tracing::info!(dataset = %view.id(), pinned_files = r.files,
                                fetched_files = r.fetched_files, fetched_bytes = r.fetched_bytes,
                                failed = r.failed.len(), "pin rules re-evaluated");
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(dataset = %view.id(), error = %e,
                                "pin rules not re-evaluated; trying again next period");
                        }
                    }
                    drop(view);
                    tokio::time::sleep(period).await;
                }
            }));
        }
        upkeep.insert(key, tasks);
    }

    /// The dataset with this namespace and name.
    pub fn dataset(&self, namespace: &str, name: &str) -> Option<Arc<DatasetView>> {
        self.datasets
            .lock()
            .expect("datasets")
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every configured dataset.
    pub fn datasets(&self) -> Vec<Arc<DatasetView>> {
        self.datasets
            .lock()
            .expect("datasets")
            .values()
            .cloned()
            .collect()
    }

    fn set_migrations(&self, key: &DatasetKey, migrations: Vec<MigrationConfig>) {
        let mut all = self.migrations.lock().expect("migrations");
        if migrations.is_empty() {
            all.remove(key);
        } else {
            all.insert(key.clone(), migrations);
        }
    }

    /// The migration `migration` of a dataset, as the operator last configured it.
    pub fn migration(
        &self,
        namespace: &str,
        name: &str,
        migration: &str,
    ) -> Option<MigrationConfig> {
        let key = (namespace.to_string(), name.to_string());
        let all = self.migrations.lock().expect("migrations");
        all.get(&key)?.iter().find(|m| m.name == migration).cloned()
    }

    /// Removes a dataset; with `drop_cache` its cached data is deleted too (otherwise it
    /// stays on disk and is picked up again if the dataset comes back).
    pub async fn remove_dataset(
        &self,
        namespace: &str,
        name: &str,
        drop_cache: bool,
    ) -> Result<()> {
        let _reconfiguring = self.reconfiguring.lock().await;
        let key = (namespace.to_string(), name.to_string());
        let view = self.datasets.lock().expect("datasets").remove(&key);
        self.set_migrations(&key, Vec::new());
        for h in self
            .upkeep
            .lock()
            .expect("upkeep")
            .remove(&key)
            .into_iter()
            .flatten()
        {
            h.abort();
        }
        let Some(view) = view else {
            return Err(Error::DatasetNotFound {
                namespace: namespace.into(),
                name: name.into(),
            });
        };
        view.close();
        if drop_cache {
            self.drop_writes_if_done(&key);
        }
        let cache = view.cache().clone();
        // Nothing of an ephemeral cache outlives its dataset on the node.
        let ephemeral = view.config().cache.ephemeral.then(|| {
            self.ephemeral_cache
                .as_ref()
                .map(|c| c.dataset_dir(view.id()))
        });
        tokio::task::spawn_blocking(move || {
            // Detached first: writes still in flight then find no space, instead of
            // creating files among those being deleted.
            cache.detach();
            if drop_cache || ephemeral.is_some() {
                cache.drop_all();
                cache.forget_run_time_pins();
            }
            if let Some(Some(dir)) = ephemeral
                && let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %dir.display(), error = %e,
                    "could not remove a removed dataset's ephemeral cache");
            }
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?;
        Ok(())
    }
}

/// Removes everything in `dir` (created if missing), keeping `dir` itself: an emptyDir
/// volume's mount point cannot be removed.
fn empty_dir(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::cache_io(dir, e))?;
    for entry in std::fs::read_dir(dir).map_err(|e| Error::cache_io(dir, e))? {
        let path = entry.map_err(|e| Error::cache_io(dir, e))?.path();
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| Error::cache_io(&path, e))?;
    }
    Ok(())
}
