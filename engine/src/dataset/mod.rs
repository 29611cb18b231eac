//! A dataset as the engine serves it: several sources under one namespace, a metadata
//! cache and a share of the block cache. Every entry point (FUSE, HTTP, preload jobs)
//! goes through [`DatasetView`].
//!
//! The view is split by role: `entry` (stats and entries as returned), `listing` (a
//! directory's one compact copy, filled page by page), `metadata` (stat, list, the
//! metadata cache), `fetch` (blocks from a tier or a source, single
//! flight), `reader` ([`FileReader`]), `readahead` (the readahead planner and limits),
//! `preload`, `prefetch` (directory prefetch), `pins` (pin rules and their re-evaluation)
//! and `usage` (usage, source errors).

mod changes;
mod entry;
mod fetch;
mod listing;
mod metadata;
mod pins;
mod prefetch;
mod preload;
mod readahead;
mod reader;
mod usage;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use crate::cache::DatasetCache;
use crate::cluster::Cluster;
use crate::config::DatasetConfig;
use crate::metadata::TtlCache;
use crate::metrics::Metrics;
use crate::path::DatasetPath;
use crate::singleflight::SingleFlight;
use crate::source::Source;
use crate::writes::{DatasetWrites, SyncedHook};
use crate::{Error, Result};

pub use entry::{DirEntry, EntryKind, FileStat};
pub use fetch::MAX_SPAN_BYTES;
pub use listing::{DirListing, EntryRef};
pub use pins::{PinRefresh, pin_refresh_period};
pub use preload::{PRELOAD_MAX_FETCHES, Placement, PreloadProgress, PreloadReport};
pub use readahead::{READAHEAD_BLOCKS, READAHEAD_UNIT, ReadaheadLimits};
pub use reader::FileReader;
pub use usage::DatasetUsage;

use fetch::BlockResult;
use prefetch::DirectoryScan;

/// Copies pushed by other owners that one dataset fetches at once; more are refused (the
/// copy is then made when a reader needs it).
const PEER_FILLS: usize = 16;

/// Most metadata entries kept per dataset (stat and listings each).
const MAX_METADATA_ENTRIES: usize = 200_000;
/// Stripes of the invalidation stamps (see `DatasetView::invalidations`).
const INVALIDATION_STRIPES: usize = 256;

/// A dataset as served by this node.
pub struct DatasetView {
    config: DatasetConfig,
    id: String,
    sources: Vec<Arc<Source>>,
    cache: Arc<DatasetCache>,
    stats: TtlCache<DatasetPath, Option<FileStat>>,
    listings: TtlCache<DatasetPath, Arc<DirListing>>,
    meta_flights: SingleFlight<DatasetPath, Result<Option<FileStat>>>,
    // Bumped by every invalidation of a path hashed to it: a stat fetched across one is
    // fetched again, never kept (it may be the answer from before a change made here).
    invalidations: Box<[std::sync::atomic::AtomicU64]>,
    // Listings on their way in (one per directory, however many read it), until complete
    // and in `listings`.
    growing: Mutex<HashMap<DatasetPath, Arc<DirListing>>>,
    block_flights: SingleFlight<fetch::FlightKey, BlockResult>,
    // The cluster this node's agent is part of (none: every block is this node's).
    cluster: std::sync::OnceLock<Arc<Cluster>>,
    // Copies other owners asked this node to keep, fetched at once (more are refused).
    fills: Arc<tokio::sync::Semaphore>,
    refreshing: Mutex<std::collections::HashSet<DatasetPath>>,
    readahead: ReadaheadLimits,
    directory_scans: Mutex<HashMap<DatasetPath, DirectoryScan>>,
    // The last failed request to a source (not a "not found") since the reporter took it.
    last_source_error: Mutex<Option<(String, SystemTime)>>,
    metrics: Arc<Metrics>,
    totals: Mutex<Option<(u64, u64)>>,
    // Cancelled when the dataset is removed from the agent: preloads stop.
    removed: CancellationToken,
    // Writes to the dataset on this node (writable sources only), and the hook through
    // which they tell the metadata cache what reached the source.
    writes: std::sync::OnceLock<Arc<DatasetWrites>>,
    synced_hook: std::sync::OnceLock<Arc<SyncedHook>>,
    handle: tokio::runtime::Handle,
}

impl std::fmt::Debug for DatasetView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatasetView").field("id", &self.id).finish()
    }
}

impl DatasetView {
    /// Builds a view. Used by [`crate::agent::Agent::add_dataset`]; sources are built but
    /// not contacted.
    pub fn new(
        config: DatasetConfig,
        cache: Arc<DatasetCache>,
        readahead: ReadaheadLimits,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>> {
        config.validate()?;
        let id = format!("{}/{}", config.namespace, config.name);
        let sources = config
            .sources
            .iter()
            .map(|s| Source::new(s, &id, metrics.clone()).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        Self::with_sources(config, sources, cache, readahead, metrics)
    }

    /// Builds a view over already built sources (tests use this to wrap stores).
    pub fn with_sources(
        config: DatasetConfig,
        sources: Vec<Arc<Source>>,
        cache: Arc<DatasetCache>,
        readahead: ReadaheadLimits,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>> {
        let id = format!("{}/{}", config.namespace, config.name);
        let ttl = config.cache.metadata_ttl;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Task("DatasetView must be created inside a tokio runtime".into())
        })?;
        let stats = TtlCache::new(ttl, MAX_METADATA_ENTRIES);
        Ok(Arc::new(DatasetView {
            config,
            id,
            sources,
            cache,
            stats,
            listings: TtlCache::new(ttl, MAX_METADATA_ENTRIES / 10),
            meta_flights: SingleFlight::default(),
            invalidations: (0..INVALIDATION_STRIPES)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
            growing: Mutex::new(HashMap::new()),
            block_flights: SingleFlight::default(),
            cluster: std::sync::OnceLock::new(),
            fills: Arc::new(tokio::sync::Semaphore::new(PEER_FILLS)),
            refreshing: Mutex::new(Default::default()),
            readahead,
            directory_scans: Mutex::new(HashMap::new()),
            last_source_error: Mutex::new(None),
            metrics,
            totals: Mutex::new(None),
            removed: CancellationToken::new(),
            writes: std::sync::OnceLock::new(),
            synced_hook: std::sync::OnceLock::new(),
            handle,
        }))
    }

    /// Marks the dataset removed from the agent: preloads under way stop with
    /// [`Error::DatasetRemoved`] (their fetches would fill a cache nobody serves from).
    pub fn close(&self) {
        self.removed.cancel();
    }

    /// Places this dataset's blocks over `cluster` from now on (set once, by the agent).
    pub fn join_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// Serves writes through `writes` from now on (set once, by the agent): the
    /// journal's view of a path comes before the source's.
    pub fn attach_writes(self: &Arc<Self>, writes: Arc<DatasetWrites>) {
        let view = Arc::downgrade(self);
        let hook: Arc<SyncedHook> = Arc::new(move |p: &DatasetPath| {
            if let Some(v) = view.upgrade() {
                v.invalidate(p);
            }
        });
        writes.on_synced(&hook);
        let _ = self.synced_hook.set(hook);
        let _ = self.writes.set(writes);
    }

    /// This dataset's writes on this node, when a source takes writes.
    pub fn writes(&self) -> Option<&Arc<DatasetWrites>> {
        self.writes.get()
    }

    /// The cluster this dataset's blocks are placed over, if any.
    pub fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.get().cloned()
    }

    /// "namespace/name".
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Namespace.
    pub fn namespace(&self) -> &str {
        &self.config.namespace
    }

    /// Name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The configuration this view was built from.
    pub fn config(&self) -> &DatasetConfig {
        &self.config
    }

    /// The sources.
    pub fn sources(&self) -> &[Arc<Source>] {
        &self.sources
    }

    /// The block cache share of this dataset.
    pub fn cache(&self) -> &Arc<DatasetCache> {
        &self.cache
    }

    /// Block size.
    pub fn block_size(&self) -> u64 {
        self.cache.block_size()
    }

    /// Contacts every source once; errors name the source.
    pub async fn check_sources(&self) -> Result<()> {
        for s in &self.sources {
            s.check().await?;
        }
        Ok(())
    }
}
