//! Prometheus metrics of the cache engine. One registry per process; every name is a
//! constant here and documented in docs/metrics.md. Counters get `_total` appended by the
//! exposition format.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels: `tier` = memory|disk. Cache hits.
pub const CACHE_HITS: &str = "strata_cache_hits";
/// Labels: `tier` = memory|disk. Cache misses (a disk miss means a source fetch).
pub const CACHE_MISSES: &str = "strata_cache_misses";
/// Labels: `tier`. Blocks evicted (quota pressure or data TTL).
pub const CACHE_EVICTIONS: &str = "strata_cache_evictions";
/// Labels: `dataset`, `source`. Bytes received from a source.
pub const SOURCE_READ_BYTES: &str = "strata_source_read_bytes";
/// Labels: `dataset`, `source`, `op` = get|head|list. Requests sent to a source.
pub const SOURCE_REQUESTS: &str = "strata_source_requests";
/// Ranged GETs in flight right now (all sources).
pub const FETCHES_IN_FLIGHT: &str = "strata_fetches_in_flight";
/// Seconds per ranged GET to a source.
pub const FETCH_DURATION_SECONDS: &str = "strata_fetch_duration_seconds";
/// Seconds per read served by the engine (FUSE or HTTP), any tier.
pub const READ_DURATION_SECONDS: &str = "strata_read_duration_seconds";
/// Labels: `dataset`, `tier`. Bytes held in a cache tier.
pub const CACHED_BYTES: &str = "strata_cached_bytes";
/// Cache writes to disk that failed (disk full, I/O error); the read was still served.
pub const DISK_WRITE_ERRORS: &str = "strata_disk_write_errors";
/// Blocks read back from disk whose checksum did not match (dropped and refetched).
pub const CHECKSUM_FAILURES: &str = "strata_checksum_failures";
/// Labels: `result` = ok|refused|unavailable. FUSE opens in passthrough mode.
pub const PASSTHROUGH_OPENS: &str = "strata_passthrough_opens";
/// Labels: `dataset`. Small files fetched ahead of the reader by directory prefetch.
pub const DIRECTORY_PREFETCH_FILES: &str = "strata_directory_prefetch_files";
/// Bytes of blocks held on the readahead budget right now (at most `--readahead-total`).
pub const READAHEAD_BYTES: &str = "strata_readahead_bytes";
/// Labels: `origin` = memory|disk|peer|source. Blocks handed out by where they came from:
/// memory and disk count blocks served from this node's tiers (to its readers or to peers),
/// peer and source the blocks this node fetched. Passthrough reads are the kernel's and not
/// counted.
pub const BLOCKS_BY_ORIGIN: &str = "strata_blocks";
/// Labels: `origin` = memory|disk|peer|source. Bytes of those blocks.
pub const BLOCK_BYTES_BY_ORIGIN: &str = "strata_block_bytes";
/// Labels: `op` = fetch|fill, `result` = ok|error|timeout. Requests this node sent to peers.
pub const PEER_REQUESTS: &str = "strata_peer_requests";
/// Seconds per block request answered by a peer (the whole run of blocks).
pub const PEER_FETCH_SECONDS: &str = "strata_peer_fetch_seconds";
/// Bytes of blocks this node sent to peers that asked for them.
pub const PEER_SERVED_BYTES: &str = "strata_peer_served_bytes";
/// Live cluster members this node places blocks over, itself included (1 without peers).
pub const CLUSTER_MEMBERS: &str = "strata_cluster_members";
/// Labels: `dataset`. Files (and, below, bytes) of writes that reached the source.
pub const WRITE_UPLOADED_FILES: &str = "strata_write_uploaded_files";
/// Labels: `dataset`. Bytes uploaded by the write journal.
pub const WRITE_UPLOADED_BYTES: &str = "strata_write_uploaded_bytes";
/// Labels: `dataset`. Failed attempts to send a change to the source (each retried).
pub const WRITE_FAILURES: &str = "strata_write_failures";
/// Labels: `dataset`. Uploads that found the object changed upstream (kept under a
/// conflict name).
pub const WRITE_CONFLICTS: &str = "strata_write_conflicts";
/// Labels: `dataset`. Paths with a change not at the source yet.
pub const WRITE_PENDING_FILES: &str = "strata_write_pending_files";
/// Labels: `dataset`. Bytes of files waiting for upload.
pub const WRITE_PENDING_BYTES: &str = "strata_write_pending_bytes";
/// Labels: `dataset`. Age of the oldest change not at the source yet (0 when none).
pub const WRITE_OLDEST_PENDING_SECONDS: &str = "strata_write_oldest_pending_seconds";

type Labels = Vec<(String, String)>;

/// All engine metrics plus the registry they are in.
pub struct Metrics {
    registry: Mutex<Registry>,
    hits: Family<Labels, Counter>,
    misses: Family<Labels, Counter>,
    evictions: Family<Labels, Counter>,
    source_bytes: Family<Labels, Counter>,
    source_requests: Family<Labels, Counter>,
    in_flight: Gauge,
    fetch_seconds: Histogram,
    read_seconds: Histogram,
    cached_bytes: Family<Labels, Gauge>,
    disk_write_errors: Counter,
    checksum_failures: Counter,
    passthrough: Family<Labels, Counter>,
    directory_prefetch_files: Family<Labels, Counter>,
    readahead_bytes: Gauge,
    blocks_by_origin: Family<Labels, Counter>,
    block_bytes_by_origin: Family<Labels, Counter>,
    peer_requests: Family<Labels, Counter>,
    peer_fetch_seconds: Histogram,
    peer_served_bytes: Counter,
    cluster_members: Gauge,
    write_uploaded_files: Family<Labels, Counter>,
    write_uploaded_bytes: Family<Labels, Counter>,
    write_failures: Family<Labels, Counter>,
    write_conflicts: Family<Labels, Counter>,
    write_pending_files: Family<Labels, Gauge>,
    write_pending_bytes: Family<Labels, Gauge>,
    write_oldest_pending: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Decrements the in-flight gauge when dropped.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Bytes counted in the readahead gauge until dropped.
pub(crate) struct ReadaheadHeld {
    gauge: Gauge,
    bytes: i64,
}

impl Drop for ReadaheadHeld {
    fn drop(&mut self) {
        self.gauge.dec_by(self.bytes);
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            hits: Family::default(),
            misses: Family::default(),
            evictions: Family::default(),
            source_bytes: Family::default(),
            source_requests: Family::default(),
            in_flight: Gauge::default(),
            // 1 ms .. ~16 s
            fetch_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            // 10 µs .. ~10 s
            read_seconds: Histogram::new(exponential_buckets(0.00001, 2.7, 15)),
            cached_bytes: Family::default(),
            disk_write_errors: Counter::default(),
            checksum_failures: Counter::default(),
            passthrough: Family::default(),
            directory_prefetch_files: Family::default(),
            readahead_bytes: Gauge::default(),
            blocks_by_origin: Family::default(),
            block_bytes_by_origin: Family::default(),
            peer_requests: Family::default(),
            // 0.5 ms .. ~8 s
            peer_fetch_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 15)),
            peer_served_bytes: Counter::default(),
            cluster_members: Gauge::default(),
            write_uploaded_files: Family::default(),
            write_uploaded_bytes: Family::default(),
            write_failures: Family::default(),
            write_conflicts: Family::default(),
            write_pending_files: Family::default(),
            write_pending_bytes: Family::default(),
            write_oldest_pending: Family::default(),
        };
        registry.register(CACHE_HITS, "Block cache hits per tier", m.hits.clone());
        registry.register(
            CACHE_MISSES,
            "Block cache misses per tier",
            m.misses.clone(),
        );
        registry.register(
            CACHE_EVICTIONS,
            "Blocks evicted per tier",
            m.evictions.clone(),
        );
        registry.register(
            SOURCE_READ_BYTES,
            "Bytes read from each source",
            m.source_bytes.clone(),
        );
        registry.register(
            SOURCE_REQUESTS,
            "Requests sent to each source by operation",
            m.source_requests.clone(),
        );
        registry.register(
            FETCHES_IN_FLIGHT,
            "Ranged GETs in flight",
            m.in_flight.clone(),
        );
        registry.register(
            FETCH_DURATION_SECONDS,
            "Duration of ranged GETs to sources",
            m.fetch_seconds.clone(),
        );
        registry.register(
            READ_DURATION_SECONDS,
            "Duration of reads served by the engine",
            m.read_seconds.clone(),
        );
        registry.register(
            CACHED_BYTES,
            "Bytes cached per dataset and tier",
            m.cached_bytes.clone(),
        );
        registry.register(
            DISK_WRITE_ERRORS,
            "Failed writes to the disk tier (served read-through)",
            m.disk_write_errors.clone(),
        );
        registry.register(
            CHECKSUM_FAILURES,
            "Blocks whose checksum failed on read from disk",
            m.checksum_failures.clone(),
        );
        registry.register(
            PASSTHROUGH_OPENS,
            "FUSE opens in passthrough mode by result",
            m.passthrough.clone(),
        );
        registry.register(
            DIRECTORY_PREFETCH_FILES,
            "Small files fetched ahead of the reader by directory prefetch",
            m.directory_prefetch_files.clone(),
        );
        registry.register(
            READAHEAD_BYTES,
            "Bytes of blocks held on the readahead budget",
            m.readahead_bytes.clone(),
        );
        registry.register(
            BLOCKS_BY_ORIGIN,
            "Blocks handed to this node's readers by origin (memory, disk, peer, source)",
            m.blocks_by_origin.clone(),
        );
        registry.register(
            BLOCK_BYTES_BY_ORIGIN,
            "Bytes of blocks handed to this node's readers by origin",
            m.block_bytes_by_origin.clone(),
        );
        registry.register(
            PEER_REQUESTS,
            "Block requests sent to peers by operation and result",
            m.peer_requests.clone(),
        );
        registry.register(
            PEER_FETCH_SECONDS,
            "Duration of block fetches answered by peers",
            m.peer_fetch_seconds.clone(),
        );
        registry.register(
            PEER_SERVED_BYTES,
            "Bytes of blocks sent to peers",
            m.peer_served_bytes.clone(),
        );
        registry.register(
            CLUSTER_MEMBERS,
            "Live cluster members blocks are placed over, this node included",
            m.cluster_members.clone(),
        );
        // A node of its own until it joins a cluster.
        m.cluster_members.set(1);
        registry.register(
            WRITE_UPLOADED_FILES,
            "Files the write journal uploaded to the source",
            m.write_uploaded_files.clone(),
        );
        registry.register(
            WRITE_UPLOADED_BYTES,
            "Bytes the write journal uploaded to the source",
            m.write_uploaded_bytes.clone(),
        );
        registry.register(
            WRITE_FAILURES,
            "Failed attempts to send a change to the source (each retried)",
            m.write_failures.clone(),
        );
        registry.register(
            WRITE_CONFLICTS,
            "Uploads that found the object changed upstream (its version kept under a conflict name)",
            m.write_conflicts.clone(),
        );
        registry.register(
            WRITE_PENDING_FILES,
            "Paths with a change not at the source yet",
            m.write_pending_files.clone(),
        );
        registry.register(
            WRITE_PENDING_BYTES,
            "Bytes of files waiting for upload",
            m.write_pending_bytes.clone(),
        );
        registry.register(
            WRITE_OLDEST_PENDING_SECONDS,
            "Age of the oldest change not at the source yet (0 when none)",
            m.write_oldest_pending.clone(),
        );
        // Known label sets start at 0, so a rate over them has a start and dashboards see
        // every series before the first peer request.
        for origin in ["memory", "disk", "peer", "source"] {
            let labels = vec![("origin".to_string(), origin.to_string())];
            let _ = m.blocks_by_origin.get_or_create(&labels);
            let _ = m.block_bytes_by_origin.get_or_create(&labels);
        }
        for op in ["fetch", "fill"] {
            for result in ["ok", "error", "timeout"] {
                let _ = m.peer_requests.get_or_create(&vec![
                    ("op".to_string(), op.to_string()),
                    ("result".to_string(), result.to_string()),
                ]);
            }
        }
        *m.registry.lock().expect("metrics registry") = registry;
        m
    }

    /// Lets other subsystems (HTTP API, CSI) register their metrics in the same registry.
    pub fn register_with(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.registry.lock().expect("metrics registry"));
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = encode(&mut out, &self.registry.lock().expect("metrics registry"));
        out
    }

    fn tier(tier: &str) -> Labels {
        vec![("tier".into(), tier.into())]
    }

    pub(crate) fn hit(&self, tier: &str) {
        self.hits.get_or_create(&Self::tier(tier)).inc();
    }
    pub(crate) fn miss(&self, tier: &str) {
        self.misses.get_or_create(&Self::tier(tier)).inc();
    }
    pub(crate) fn evicted(&self, tier: &str, n: u64) {
        self.evictions.get_or_create(&Self::tier(tier)).inc_by(n);
    }
    pub(crate) fn source_bytes(&self, dataset: &str, source: &str, n: u64) {
        self.source_bytes
            .get_or_create(&vec![
                ("dataset".into(), dataset.into()),
                ("source".into(), source.into()),
            ])
            .inc_by(n);
    }
    pub(crate) fn source_request(&self, dataset: &str, source: &str, op: &str) {
        self.source_requests
            .get_or_create(&vec![
                ("dataset".into(), dataset.into()),
                ("source".into(), source.into()),
                ("op".into(), op.into()),
            ])
            .inc();
    }
    pub(crate) fn fetch_started(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }
    pub(crate) fn observe_fetch(&self, d: Duration) {
        self.fetch_seconds.observe(d.as_secs_f64());
    }
    pub(crate) fn observe_read(&self, d: Duration) {
        self.read_seconds.observe(d.as_secs_f64());
    }
    pub(crate) fn set_cached_bytes(&self, dataset: &str, tier: &str, bytes: u64) {
        self.cached_bytes
            .get_or_create(&vec![
                ("dataset".into(), dataset.into()),
                ("tier".into(), tier.into()),
            ])
            .set(bytes as i64);
    }
    pub(crate) fn disk_write_error(&self) {
        self.disk_write_errors.inc();
    }
    pub(crate) fn checksum_failure(&self) {
        self.checksum_failures.inc();
    }
    pub(crate) fn directory_prefetched(&self, dataset: &str, files: u64) {
        self.directory_prefetch_files
            .get_or_create(&vec![("dataset".into(), dataset.into())])
            .inc_by(files);
    }
    /// Counts `bytes` in the readahead gauge while the answer lives.
    pub(crate) fn readahead_held(&self, bytes: u64) -> ReadaheadHeld {
        let bytes = bytes as i64;
        self.readahead_bytes.inc_by(bytes);
        ReadaheadHeld {
            gauge: self.readahead_bytes.clone(),
            bytes,
        }
    }
    /// Bytes held on the readahead budget now (the `strata_readahead_bytes` gauge).
    pub fn readahead_bytes(&self) -> u64 {
        self.readahead_bytes.get().max(0) as u64
    }
    /// A block handed to a reader, from `origin` (memory|disk|peer|source).
    pub(crate) fn block_from(&self, origin: &'static str, bytes: usize) {
        let labels = vec![("origin".to_string(), origin.to_string())];
        self.blocks_by_origin.get_or_create(&labels).inc();
        self.block_bytes_by_origin
            .get_or_create(&labels)
            .inc_by(bytes as u64);
    }
    pub(crate) fn peer_request(&self, op: &'static str, result: &'static str) {
        self.peer_requests
            .get_or_create(&vec![
                ("op".to_string(), op.to_string()),
                ("result".to_string(), result.to_string()),
            ])
            .inc();
    }
    pub(crate) fn observe_peer_fetch(&self, d: Duration) {
        self.peer_fetch_seconds.observe(d.as_secs_f64());
    }
    /// Bytes sent to a peer that asked for blocks.
    pub fn peer_served(&self, bytes: u64) {
        self.peer_served_bytes.inc_by(bytes);
    }
    pub(crate) fn set_cluster_members(&self, n: usize) {
        self.cluster_members.set(n as i64);
    }
    pub(crate) fn write_uploaded(&self, dataset: &str, bytes: u64) {
        let l = vec![("dataset".to_string(), dataset.to_string())];
        self.write_uploaded_files.get_or_create(&l).inc();
        self.write_uploaded_bytes.get_or_create(&l).inc_by(bytes);
    }
    pub(crate) fn write_failed(&self, dataset: &str) {
        let l = vec![("dataset".to_string(), dataset.to_string())];
        self.write_failures.get_or_create(&l).inc();
    }
    pub(crate) fn write_conflict(&self, dataset: &str) {
        let l = vec![("dataset".to_string(), dataset.to_string())];
        self.write_conflicts.get_or_create(&l).inc();
    }
    pub(crate) fn set_write_pending(&self, dataset: &str, files: u64, bytes: u64, oldest: f64) {
        let l = vec![("dataset".to_string(), dataset.to_string())];
        self.write_pending_files.get_or_create(&l).set(files as i64);
        self.write_pending_bytes.get_or_create(&l).set(bytes as i64);
        self.write_oldest_pending.get_or_create(&l).set(oldest);
        // A writable dataset's counters are exposed from the start, at 0, so that a rate()
        // over them has a first sample before the first upload or failure.
        self.write_uploaded_files.get_or_create(&l).inc_by(0);
        self.write_uploaded_bytes.get_or_create(&l).inc_by(0);
        self.write_failures.get_or_create(&l).inc_by(0);
        self.write_conflicts.get_or_create(&l).inc_by(0);
    }
    pub fn passthrough_open(&self, result: &str) {
        self.passthrough
            .get_or_create(&vec![("result".into(), result.into())])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_documented_names() {
        let m = Metrics::new();
        m.hit("memory");
        m.miss("disk");
        m.source_bytes("ns/d", "s3", 10);
        m.set_cached_bytes("ns/d", "disk", 5);
        let text = m.encode();
        for name in [
            "strata_cache_hits_total{tier=\"memory\"} 1",
            "strata_cache_misses_total{tier=\"disk\"} 1",
            "strata_source_read_bytes_total{dataset=\"ns/d\",source=\"s3\"} 10",
            "strata_cached_bytes{dataset=\"ns/d\",tier=\"disk\"} 5",
            "strata_fetch_duration_seconds_bucket",
            "strata_fetches_in_flight 0",
            "strata_readahead_bytes 0",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
