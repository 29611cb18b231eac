//! Blocks of a file: from the memory tier, the disk tier, the block's owner in the cluster
//! or the source, one fetch per block however many readers ask (single flight), adjacent
//! missing blocks in one request, each block written to a tier before it is handed over.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::{BoxFuture, Shared};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};

use super::{DatasetView, EntryKind, FileStat};
use crate::cache::{ObjectVersion, PassthroughLease};
use crate::cluster::{BlockRequest, Cluster, Member, PlacementKey};
use crate::error::SourceErrorKind;
use crate::path::DatasetPath;
use crate::source::Source;
use crate::{Error, Result};

/// Longest silence between two parts of a peer's answer: the transport notices a dead
/// peer much sooner; this only ends an answer a live but stuck peer never completes.
const PEER_BODY_BACKSTOP: Duration = Duration::from_secs(120);

/// Largest ranged GET readahead and preload send for adjacent blocks
/// (see [`DatasetView::fetch_blocks`]).
pub const MAX_SPAN_BYTES: u64 = 16 << 20;

pub(super) type BlockResult = Result<Bytes>;
/// A block being fetched, shared by everyone waiting for it.
pub(super) type SharedBlock = Shared<BoxFuture<'static, BlockResult>>;
/// Where a group fetch hands over one block.
type BlockSender = tokio::sync::oneshot::Sender<BlockResult>;
/// A block flight: the object version's id, the block, and whether the flight may ask
/// peers. A flight that serves a peer never joins one that asks peers, so two agents that
/// disagree on membership cannot wait on each other.
pub(super) type FlightKey = (Arc<str>, u64, bool);

/// Where the missing blocks of one placement group come from.
#[derive(Debug, Clone)]
enum Route {
    /// This node fetches them from the source (it is the group's first owner, it has no
    /// peers, or it serves a peer), then asks the other owners in `push_to` to keep a copy.
    Source { push_to: Vec<Member> },
    /// Ask these owners in turn, then the source; after a source fetch, push to `push_to`.
    Peers {
        ask: Vec<Member>,
        push_to: Vec<Member>,
    },
}

impl Route {
    /// The route of a group owned by `owners` (best first), from `this` node; `serving` is
    /// the peer this fetch answers, if any.
    fn new(this: &str, owners: Vec<Member>, serving: Option<&str>) -> Route {
        let others = |skip: Option<&str>| -> Vec<Member> {
            owners
                .iter()
                .filter(|m| m.name != this && Some(m.name.as_str()) != skip)
                .cloned()
                .collect()
        };
        if serving.is_some() {
            return Route::Source {
                push_to: others(serving),
            };
        }
        match owners.iter().position(|m| m.name == this) {
            Some(0) => Route::Source {
                push_to: others(None),
            },
            Some(rank) => Route::Peers {
                ask: owners[..rank].to_vec(),
                push_to: others(None),
            },
            None => Route::Peers {
                ask: owners,
                push_to: Vec::new(),
            },
        }
    }

    fn asks_peers(&self) -> bool {
        matches!(self, Route::Peers { .. })
    }
}

impl DatasetView {
    /// Most blocks one readahead or preload request fetches ([`MAX_SPAN_BYTES`]).
    pub fn max_span_blocks(&self) -> u64 {
        (MAX_SPAN_BYTES / self.block_size()).max(1)
    }

    /// Block fetches (or loads from a tier) under way now.
    pub fn fetches_in_flight(&self) -> usize {
        self.block_flights.in_flight()
    }

    /// Reads `len` bytes at `offset` of a file (short at end of file).
    pub async fn read(
        self: &Arc<Self>,
        path: &DatasetPath,
        offset: u64,
        len: u64,
    ) -> Result<Bytes> {
        let stat = self.stat(path).await?;
        match self.read_stat(&stat, offset, len).await {
            Err(Error::Source {
                kind: SourceErrorKind::Changed,
                ..
            }) => {
                // The object changed under us: forget its metadata and read the new one.
                self.invalidate(path);
                let stat = self.stat(path).await?;
                self.read_stat(&stat, offset, len).await
            }
            other => other,
        }
    }

    /// Reads from a file whose stat is already known (an open file keeps its version).
    pub async fn read_stat(
        self: &Arc<Self>,
        stat: &FileStat,
        offset: u64,
        len: u64,
    ) -> Result<Bytes> {
        let started = Instant::now();
        let Some(version) = &stat.version else {
            return Err(Error::IsDirectory {
                path: stat.path.to_string(),
            });
        };
        let end = (offset.saturating_add(len)).min(version.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let bs = self.block_size();
        let first = offset / bs;
        let last = (end - 1) / bs;
        let blocks =
            futures::future::try_join_all((first..=last).map(|i| self.get_block(stat, i))).await?;
        let out = slice_blocks(&blocks, first * bs, offset, end);
        self.metrics.observe_read(started.elapsed());
        Ok(out)
    }

    /// One block: memory, then disk, then the source (one fetch however many ask): a run of
    /// one through [`Self::fetch_blocks`], so a single block and a readahead run share the
    /// source lookup, the miss count, the space release and the single flight.
    pub async fn get_block(self: &Arc<Self>, stat: &FileStat, index: u64) -> BlockResult {
        // A block in memory is answered at once, with no task and no flight.
        if let Some(version) = &stat.version
            && let Some(b) = self.cache.get_memory_only(version, index)
        {
            return Ok(b);
        }
        let fetch = self.fetch_blocks(stat, index..index + 1).pop();
        fetch.expect("one fetch per block asked").await
    }

    /// Blocks `blocks` of a file, each resolving as soon as its own bytes are in (and
    /// written to a tier). Blocks a tier holds are served from it, blocks being fetched
    /// are joined, and each run of adjacent missing blocks is fetched with one ranged GET
    /// (from a remote store): fewer, larger requests carry more over a high-latency link
    /// and cost a store (and its bill) less than one request per block. Measured on the
    /// benchmark link (25 ms, SeaweedFS): 16 GETs in flight carried 440 MiB/s as 4 MiB
    /// requests and 800 MiB/s as 16 MiB requests. This is the one fetch path: a single
    /// block ([`Self::get_block`]) is a run of one.
    pub fn fetch_blocks(self: &Arc<Self>, stat: &FileStat, blocks: Range<u64>) -> Vec<SharedBlock> {
        self.fetch_blocks_for(stat, blocks, None)
    }

    /// [`Self::fetch_blocks`] for this node's readers (`serving` None), or for the peer
    /// named `serving`, which gets what the tiers hold and the rest from the source (a
    /// peer's request is never passed on).
    fn fetch_blocks_for(
        self: &Arc<Self>,
        stat: &FileStat,
        blocks: Range<u64>,
        serving: Option<&str>,
    ) -> Vec<SharedBlock> {
        let Some(version) = stat.version.clone() else {
            let err = Error::IsDirectory {
                path: stat.path.to_string(),
            };
            return blocks
                .map(|_| futures::future::ready(Err(err.clone())).boxed().shared())
                .collect();
        };
        let Some(cluster) = self.cluster().filter(|c| c.has_peers()) else {
            let route = Route::Source {
                push_to: Vec::new(),
            };
            return self.start_flights(stat, &version, blocks, route);
        };
        // One flight per placement group: each has its own owners.
        let span = self.max_span_blocks();
        let mut flights = Vec::with_capacity((blocks.end - blocks.start) as usize);
        let mut first = blocks.start;
        while first < blocks.end {
            let group = first / span;
            let end = ((group + 1) * span).min(blocks.end);
            let key = PlacementKey::new(&self.id, &version, group);
            let owners = cluster.owners(&key, self.replicas(&cluster));
            let route = Route::new(cluster.self_name(), owners, serving);
            flights.extend(self.start_flights(stat, &version, first..end, route));
            first = end;
        }
        flights
    }

    fn start_flights(
        self: &Arc<Self>,
        stat: &FileStat,
        version: &ObjectVersion,
        blocks: Range<u64>,
        route: Route,
    ) -> Vec<SharedBlock> {
        let id = version.id();
        let asks_peers = route.asks_peers();
        let keys = blocks.map(|i| (id.clone(), i, asks_peers)).collect();
        let view = self.clone();
        let stat = stat.clone();
        let version = version.clone();
        self.block_flights.run_group(
            keys,
            move |senders| async move {
                let indexes = senders.into_iter().map(|((_, i, _), tx)| (i, tx)).collect();
                view.fetch_group(stat, version, indexes, route).await
            },
            |e| Err(Error::Task(e)),
        )
    }

    /// Owners of each block: the policy's replicas, or every member for `All`.
    fn replicas(&self, cluster: &Cluster) -> usize {
        match self.config.cache.replicas {
            crate::config::Replicas::Count(n) => n as usize,
            crate::config::Replicas::All => cluster.members().len(),
        }
    }

    /// The body of [`Self::fetch_blocks`]: serves the blocks a tier holds, fetches the rest.
    async fn fetch_group(
        self: Arc<Self>,
        stat: FileStat,
        version: ObjectVersion,
        blocks: Vec<(u64, BlockSender)>,
        route: Route,
    ) {
        let cache = self.cache.clone();
        let v = version.clone();
        let indexes: Vec<u64> = blocks.iter().map(|(i, _)| *i).collect();
        let held = tokio::task::spawn_blocking(move || {
            indexes.iter().map(|&i| cache.get(&v, i)).collect()
        })
        .await;
        let held: Vec<Option<Bytes>> = match held {
            Ok(held) => held,
            Err(e) => {
                for (_, tx) in blocks {
                    let _ = tx.send(Err(Error::Task(e.to_string())));
                }
                return;
            }
        };
        let mut runs: Vec<Vec<(u64, BlockSender)>> = Vec::new();
        for ((i, tx), hit) in blocks.into_iter().zip(held) {
            match (hit, runs.last_mut()) {
                (Some(b), _) => {
                    let _ = tx.send(Ok(b));
                }
                (None, Some(run)) if run.last().is_some_and(|(j, _)| j + 1 == i) => {
                    run.push((i, tx))
                }
                (None, _) => runs.push(vec![(i, tx)]),
            }
        }
        let Some(source) = self
            .sources
            .iter()
            .find(|s| s.name() == version.source)
            .cloned()
        else {
            for (_, tx) in runs.into_iter().flatten() {
                let _ = tx.send(Err(Error::NotFound {
                    path: stat.path.to_string(),
                }));
            }
            return;
        };
        for _ in runs.iter().flatten() {
            self.cache.record_miss();
        }
        futures::future::join_all(
            runs.into_iter()
                .map(|run| self.fetch_routed(&source, &stat, &version, run, &route)),
        )
        .await;
    }

    /// Fetches a run of adjacent missing blocks along `route`: from owners in turn, what
    /// they did not deliver from the source, and after a source fetch a copy to the other
    /// owners.
    async fn fetch_routed(
        self: &Arc<Self>,
        source: &Arc<Source>,
        stat: &FileStat,
        version: &ObjectVersion,
        mut run: Vec<(u64, BlockSender)>,
        route: &Route,
    ) {
        let (ask, push_to) = match route {
            Route::Source { push_to } => (&[][..], push_to),
            Route::Peers { ask, push_to } => (&ask[..], push_to),
        };
        let cluster = self.cluster();
        if let Some(cluster) = &cluster {
            for owner in ask {
                if run.is_empty() {
                    return;
                }
                if cluster.is_down(&owner.name) {
                    continue;
                }
                run = self
                    .fetch_from_peer(cluster, owner, stat, version, run)
                    .await;
            }
        }
        let (Some(&(first, _)), count) = (run.first(), run.len() as u64) else {
            return;
        };
        self.fetch_run(source, stat, version, run).await;
        if let Some(cluster) = cluster {
            self.push_to_owners(&cluster, stat, version, first..first + count, push_to);
        }
    }

    /// Asks `owner` for a run of blocks; returns the blocks it did not deliver (all of
    /// them when it failed, marking it down).
    async fn fetch_from_peer(
        self: &Arc<Self>,
        cluster: &Arc<Cluster>,
        owner: &Member,
        stat: &FileStat,
        version: &ObjectVersion,
        run: Vec<(u64, BlockSender)>,
    ) -> Vec<(u64, BlockSender)> {
        let first = run[0].0;
        let request = self.block_request(cluster, stat, version, first..first + run.len() as u64);
        let started = Instant::now();
        let timeout = cluster.timeout();
        let metrics = cluster.metrics().clone();
        let stream =
            match tokio::time::timeout(timeout, cluster.transport().fetch(owner, &request)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    metrics.peer_request("fetch", "error");
                    cluster.mark_down(owner, &e);
                    return run;
                }
                Err(_) => {
                    metrics.peer_request("fetch", "timeout");
                    cluster.mark_down(owner, &peer_timeout(owner, timeout));
                    return run;
                }
            };
        // A peer gone from the network ends the stream within about `timeout` (the
        // transport's business: TCP keepalive); a live owner waiting on a slow source is
        // waited for, up to a backstop.
        let (rest, failure) = self
            .store_stream(stat, version, stream, run, Some(PEER_BODY_BACKSTOP), "peer")
            .await;
        match failure {
            None if rest.is_empty() => {
                metrics.peer_request("fetch", "ok");
                metrics.observe_peer_fetch(started.elapsed());
            }
            failure => {
                let timed_out = matches!(&failure, Some(Error::Peer { message, .. }) if message.starts_with("no answer"));
                metrics.peer_request("fetch", if timed_out { "timeout" } else { "error" });
                let e = failure.unwrap_or_else(|| Error::Peer {
                    peer: owner.name.clone(),
                    message: "the answer ended early".into(),
                });
                cluster.mark_down(owner, &e);
            }
        }
        rest
    }

    fn block_request(
        &self,
        cluster: &Cluster,
        stat: &FileStat,
        version: &ObjectVersion,
        blocks: Range<u64>,
    ) -> BlockRequest {
        BlockRequest {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            path: stat.path.clone(),
            mtime: stat.mtime,
            version: version.clone(),
            block_size: self.block_size(),
            first: blocks.start,
            count: blocks.end - blocks.start,
            from: cluster.self_name().to_string(),
        }
    }

    /// Asks the other owners of blocks this node fetched from the source to keep a copy
    /// (they fetch it from this node), in the background.
    fn push_to_owners(
        &self,
        cluster: &Arc<Cluster>,
        stat: &FileStat,
        version: &ObjectVersion,
        blocks: Range<u64>,
        push_to: &[Member],
    ) {
        for owner in push_to {
            if cluster.is_down(&owner.name) {
                continue;
            }
            let request = self.block_request(cluster, stat, version, blocks.clone());
            let (cluster, owner) = (cluster.clone(), owner.clone());
            self.handle.spawn(async move {
                let answer = tokio::time::timeout(
                    cluster.timeout(),
                    cluster.transport().fill(&owner, &request, false),
                )
                .await;
                let result = match answer {
                    Ok(Ok(_)) => "ok",
                    Ok(Err(e)) => {
                        cluster.mark_down(&owner, &e);
                        "error"
                    }
                    Err(_) => {
                        cluster.mark_down(&owner, &peer_timeout(&owner, cluster.timeout()));
                        "timeout"
                    }
                };
                cluster.metrics().peer_request("fill", result);
            });
        }
    }

    /// Serves a peer's request for blocks: from the tiers, the rest from the source (never
    /// from a third node), in order, as each is ready.
    pub fn serve_peer(
        self: &Arc<Self>,
        request: &BlockRequest,
    ) -> Result<impl futures::Stream<Item = Result<Bytes>> + Send + Sync + 'static> {
        let stat = self.peer_stat(request)?;
        let blocks = request.first..request.first + request.count;
        let flights = self.fetch_blocks_for(&stat, blocks, Some(&request.from));
        let metrics = self.metrics.clone();
        Ok(futures::stream::unfold(
            flights.into_iter(),
            move |mut flights| {
                let metrics = metrics.clone();
                async move {
                    let block = flights.next()?.await;
                    if let Ok(b) = &block {
                        metrics.peer_served(b.len() as u64);
                    }
                    Some((block, flights))
                }
            },
        ))
    }

    /// A peer asks this node to keep a copy of blocks it owns too: fetched from the
    /// cluster (the asking owner first) in the background. False when too many fills are
    /// under way already (the copy is then made when a reader needs it).
    pub fn fill_from_peer(self: &Arc<Self>, request: &BlockRequest) -> Result<bool> {
        let stat = self.peer_stat(request)?;
        let Ok(permit) = self.fills.clone().try_acquire_owned() else {
            return Ok(false);
        };
        let flights = self.fetch_blocks(&stat, request.first..request.first + request.count);
        self.handle.spawn(async move {
            let _permit = permit;
            futures::future::join_all(flights).await;
        });
        Ok(true)
    }

    /// A preload on another node has this node fetch blocks it owns: answered once they
    /// are stored here (from a tier, a higher-ranked owner or the source).
    pub async fn fill_for_preload(self: &Arc<Self>, request: &BlockRequest) -> Result<()> {
        let stat = self.peer_stat(request)?;
        let flights = self.fetch_blocks(&stat, request.first..request.first + request.count);
        for result in futures::future::join_all(flights).await {
            result?;
        }
        Ok(())
    }

    /// Fetches blocks `blocks` into this node's cache (from their owners or the source).
    pub(super) async fn fetch_here(
        self: &Arc<Self>,
        stat: &FileStat,
        blocks: Range<u64>,
    ) -> (String, Option<Error>) {
        let here = self
            .cluster()
            .map_or_else(|| "local".to_string(), |c| c.self_name().to_string());
        let fetched = futures::future::join_all(self.fetch_blocks(stat, blocks)).await;
        (here, fetched.into_iter().find_map(|r| r.err()))
    }

    /// Preloads blocks `blocks` (one placement group) where they belong: on this node when
    /// it owns them (or has no peers), else on their first owner that answers, this node
    /// being the last resort. Returns the member that holds them now.
    pub(super) async fn preload_group(
        self: &Arc<Self>,
        stat: &FileStat,
        blocks: Range<u64>,
    ) -> (String, Option<Error>) {
        let cluster = self.cluster().filter(|c| c.has_peers());
        if let (Some(cluster), Some(version)) = (&cluster, &stat.version) {
            let key = PlacementKey::new(&self.id, version, blocks.start / self.max_span_blocks());
            let owners = cluster.owners(&key, self.replicas(cluster));
            if !owners.iter().any(|m| m.name == cluster.self_name()) {
                let request = self.block_request(cluster, stat, version, blocks.clone());
                for owner in owners.iter().filter(|o| !cluster.is_down(&o.name)) {
                    let filled = tokio::time::timeout(
                        crate::cluster::FILL_WAIT_TIMEOUT,
                        cluster.transport().fill(owner, &request, true),
                    )
                    .await;
                    match filled {
                        Ok(Ok(_)) => {
                            cluster.metrics().peer_request("fill", "ok");
                            return (owner.name.clone(), None);
                        }
                        Ok(Err(e)) => {
                            cluster.metrics().peer_request("fill", "error");
                            cluster.mark_down(owner, &e);
                        }
                        Err(_) => {
                            cluster.metrics().peer_request("fill", "timeout");
                            let e = peer_timeout(owner, crate::cluster::FILL_WAIT_TIMEOUT);
                            cluster.mark_down(owner, &e);
                        }
                    }
                }
            }
        }
        self.fetch_here(stat, blocks).await
    }

    /// The file a peer's request names, checked against this dataset.
    fn peer_stat(&self, request: &BlockRequest) -> Result<FileStat> {
        let version = &request.version;
        if !self.sources.iter().any(|s| s.name() == version.source) {
            return Err(Error::NotFound {
                path: request.path.to_string(),
            });
        }
        if request.block_size != self.block_size() {
            return Err(Error::config(
                "blockSize",
                format!(
                    "this agent cuts {} into blocks of {} bytes, the asking agent into {}: \
                     their configurations of the dataset differ (a policy change on its way)",
                    request.path,
                    self.block_size(),
                    request.block_size
                ),
            ));
        }
        let blocks = version.block_count(self.block_size());
        if request.count == 0
            || request.count > self.max_span_blocks()
            || request.first.saturating_add(request.count) > blocks
        {
            return Err(Error::config(
                "blocks",
                format!(
                    "blocks {}..+{} do not fit {} ({} blocks; at most {} per request)",
                    request.first,
                    request.count,
                    request.path,
                    blocks,
                    self.max_span_blocks()
                ),
            ));
        }
        Ok(FileStat {
            path: request.path.clone(),
            kind: EntryKind::File,
            size: version.size,
            mtime: request.mtime,
            version: Some(version.clone()),
            etag: Some(version.etag.clone()),
        })
    }

    /// Fetches adjacent blocks: one streamed GET from a remote store, cut into blocks as
    /// the bytes arrive; block by block from a local directory (a read each, nothing to
    /// save in requests).
    async fn fetch_run(
        self: &Arc<Self>,
        source: &Arc<Source>,
        stat: &FileStat,
        version: &ObjectVersion,
        run: Vec<(u64, BlockSender)>,
    ) {
        let bs = self.block_size();
        if source.is_local() {
            futures::future::join_all(run.into_iter().map(|(i, tx)| async move {
                let range = version.block_range(bs, i);
                let fetched = source.get_range(&version.key, &version.etag, range).await;
                match self.noted(fetched) {
                    Ok(data) => {
                        let _ = self.store_block(stat, version, i, data, tx, "source").await;
                    }
                    Err(e) => self.fail_blocks(version, vec![(i, tx)], e),
                }
            }))
            .await;
            return;
        }
        let (Some((first, _)), Some((last, _))) = (run.first(), run.last()) else {
            return;
        };
        let range = version.block_range(bs, *first).start..version.block_range(bs, *last).end;
        let stream = match source
            .get_range_stream(&version.key, &version.etag, range)
            .await
        {
            Ok(stream) => stream,
            Err(e) => {
                let e = self.noted::<()>(Err(e)).unwrap_err();
                return self.fail_blocks(version, run, e);
            }
        };
        let (rest, failure) = self
            .store_stream(stat, version, stream, run, None, "source")
            .await;
        if !rest.is_empty() {
            let e = failure.unwrap_or_else(|| {
                Error::Task(format!("{}: the source's response ended early", stat.path))
            });
            let e = self.noted::<()>(Err(e)).unwrap_err();
            self.fail_blocks(version, rest, e);
        }
    }

    /// Cuts a stream of adjacent blocks' bytes into blocks, each stored and handed over as
    /// soon as it is whole. Returns the blocks the stream did not complete, and its error
    /// (or a timeout: no chunk within `idle`).
    async fn store_stream(
        &self,
        stat: &FileStat,
        version: &ObjectVersion,
        mut stream: BoxStream<'static, Result<Bytes>>,
        run: Vec<(u64, BlockSender)>,
        idle: Option<Duration>,
        origin: &'static str,
    ) -> (Vec<(u64, BlockSender)>, Option<Error>) {
        let bs = self.block_size();
        let mut pending = run.into_iter().peekable();
        let mut stores = Vec::new();
        let mut buf = None;
        let mut failure = None;
        'body: loop {
            let next = match idle {
                Some(idle) => match tokio::time::timeout(idle, stream.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        failure = Some(Error::Peer {
                            peer: String::new(),
                            message: format!("no answer for {}s", idle.as_secs_f32()),
                        });
                        break;
                    }
                },
                None => stream.next().await,
            };
            let Some(chunk) = next else { break };
            let mut chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            while !chunk.is_empty() {
                let Some((index, _)) = pending.peek() else {
                    break 'body;
                };
                let block_range = version.block_range(bs, *index);
                let len = (block_range.end - block_range.start) as usize;
                let block = buf.get_or_insert_with(|| self.cache.block_buffer(len));
                let part = chunk.split_to((len - block.len()).min(chunk.len()));
                block.extend_from_slice(&part);
                if block.len() < len {
                    continue;
                }
                let block = buf.take().expect("a block being assembled").freeze();
                if let Some((i, tx)) = pending.next() {
                    stores.push(self.store_block(stat, version, i, block, tx, origin));
                }
            }
        }
        futures::future::join_all(stores).await;
        (pending.collect(), failure)
    }

    /// Writes a fetched block to a tier, then hands it to its waiters (so a reader that
    /// comes after the fetch finds it in a tier). Starts at once, not when awaited: the
    /// blocks of a long GET are stored and handed over while the rest of it arrives.
    fn store_block(
        &self,
        stat: &FileStat,
        version: &ObjectVersion,
        index: u64,
        data: Bytes,
        tx: BlockSender,
        origin: &'static str,
    ) -> tokio::task::JoinHandle<()> {
        self.metrics.block_from(origin, data.len());
        let cache = self.cache.clone();
        let (version, path, mtime) = (version.clone(), stat.path.clone(), stat.mtime);
        // A panic in `put` drops `tx`, and the waiters get the flight's "lost" error.
        tokio::task::spawn_blocking(move || {
            cache.put(&version, &path, mtime, index, data.clone());
            let _ = tx.send(Ok(data));
        })
    }

    /// Fails blocks whose fetch failed, giving back any disk space set aside for them.
    fn fail_blocks(&self, version: &ObjectVersion, blocks: Vec<(u64, BlockSender)>, error: Error) {
        let indexes: Vec<u64> = blocks.iter().map(|(i, _)| *i).collect();
        for (_, tx) in blocks {
            let _ = tx.send(Err(error.clone()));
        }
        let cache = self.cache.clone();
        let version = version.clone();
        tokio::task::spawn_blocking(move || {
            for i in indexes {
                cache.release_unwritten(&version, i);
            }
        });
    }

    /// If every block of the file is cached on disk: the local file (verified) and a lease
    /// that keeps it from eviction while open. For FUSE passthrough.
    pub async fn cached_file(
        self: &Arc<Self>,
        stat: &FileStat,
    ) -> Option<(std::fs::File, PassthroughLease)> {
        let version = stat.version.clone()?;
        let cache = self.cache.clone();
        tokio::task::spawn_blocking(move || cache.complete_file(&version))
            .await
            .ok()
            .flatten()
    }
}

fn peer_timeout(owner: &Member, timeout: Duration) -> Error {
    Error::Peer {
        peer: owner.name.clone(),
        message: format!("no answer for {}s", timeout.as_secs_f32()),
    }
}

pub(super) fn slice_blocks(blocks: &[Bytes], first_start: u64, offset: u64, end: u64) -> Bytes {
    let skip = (offset - first_start) as usize;
    let len = (end - offset) as usize;
    if blocks.len() == 1 {
        return blocks[0].slice(skip..skip + len);
    }
    let mut out = BytesMut::with_capacity(len);
    let mut skip = skip;
    for b in blocks {
        if skip >= b.len() {
            skip -= b.len();
            continue;
        }
        let take = (b.len() - skip).min(len - out.len());
        out.extend_from_slice(&b[skip..skip + take]);
        skip = 0;
        if out.len() == len {
            break;
        }
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slicing_across_blocks() {
        let blocks = vec![
            Bytes::from_static(b"abcd"),
            Bytes::from_static(b"efgh"),
            Bytes::from_static(b"ij"),
        ];
        assert_eq!(&slice_blocks(&blocks, 0, 2, 9)[..], b"cdefghi");
        assert_eq!(&slice_blocks(&blocks[1..], 4, 5, 7)[..], b"fg");
        assert_eq!(&slice_blocks(&blocks[..1], 0, 0, 4)[..], b"abcd");
    }
}
