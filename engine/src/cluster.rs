//! The cluster cache: which live agents own a block, and how to ask them for it.
//!
//! Membership comes from outside the engine (the Kubernetes API or a static list, see
//! `strata-agent`), and is set with [`Cluster::set_members`]. Placement is rendezvous
//! hashing: every member scores a block group by a hash of (member, group), and the
//! `replicas` best scores own it. A member joining or leaving moves only the groups it
//! wins or held. The unit of placement is a group of adjacent blocks of
//! [`crate::dataset::MAX_SPAN_BYTES`], so a readahead run stays one request.
//!
//! The bytes travel through a [`PeerTransport`] (the agent's HTTP API with the node secret);
//! an owner that fails or does not answer within the timeout is marked down for a while and
//! skipped, for the next owner or the source. A dead peer is never a reader's error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::stream::BoxStream;

use crate::cache::ObjectVersion;
use crate::metrics::Metrics;
use crate::path::DatasetPath;
use crate::{Error, Result};

/// How long a peer that failed a request is skipped before it is asked again.
pub const PEER_DOWN_FOR: Duration = Duration::from_secs(10);
/// How long a preload waits for an owner to fetch one group of blocks (up to 16 MiB from
/// the source) before fetching it itself.
pub const FILL_WAIT_TIMEOUT: Duration = Duration::from_secs(120);

/// One agent of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    /// Its name (the Kubernetes node name in a cluster), unique among members.
    pub name: String,
    /// Where its API answers peers, such as `http://10.0.0.5:7070`.
    pub url: String,
}

/// Blocks of one object version that a node asks a peer for (or asks it to keep).
#[derive(Debug, Clone)]
pub struct BlockRequest {
    /// Dataset namespace.
    pub namespace: String,
    /// Dataset name.
    pub name: String,
    /// The file, for the owner's cache index.
    pub path: DatasetPath,
    /// Its modification time, for the owner's cache index (and pin windows).
    pub mtime: SystemTime,
    /// The exact version: an owner never answers with other bytes.
    pub version: ObjectVersion,
    /// The asking node's block size: an owner with another one (a policy being changed)
    /// refuses, rather than cut the file differently.
    pub block_size: u64,
    /// First block.
    pub first: u64,
    /// Number of blocks (adjacent, within one placement group).
    pub count: u64,
    /// The asking member, which the owner does not push the blocks to.
    pub from: String,
}

/// How a node talks to its peers.
#[async_trait::async_trait]
pub trait PeerTransport: Send + Sync + 'static {
    /// The bytes of the requested blocks from `peer`, concatenated, as they arrive. The
    /// peer serves them from its tiers or fetches them from the source; it never asks a
    /// third node. The caller bounds the wait for the answer to start by the cluster's
    /// timeout; after that, a peer gone from the network must end the stream with an error
    /// within about that timeout (the HTTP transport probes its connection), while a live
    /// one may take as long as its source does.
    async fn fetch(
        &self,
        peer: &Member,
        request: &BlockRequest,
    ) -> Result<BoxStream<'static, Result<Bytes>>>;

    /// Asks `peer` to fetch and keep the requested blocks (from the cluster): without
    /// `wait`, only to take the work on (how a block reaches its other owners; false when
    /// the peer is too busy); with `wait`, answered once they are stored (a preload that
    /// has each owner fetch its own share).
    async fn fill(&self, peer: &Member, request: &BlockRequest, wait: bool) -> Result<bool>;
}

/// The live members and the placement over them.
pub struct Cluster {
    self_name: String,
    members: RwLock<Arc<[Member]>>,
    transport: Arc<dyn PeerTransport>,
    timeout: Duration,
    down: Mutex<HashMap<String, Instant>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("self", &self.self_name)
            .field("members", &self.members())
            .finish()
    }
}

impl Cluster {
    /// A cluster of this node alone until [`Self::set_members`]. `timeout` bounds how long a
    /// peer may take to start answering (and to send each next chunk).
    pub fn new(
        self_name: impl Into<String>,
        transport: Arc<dyn PeerTransport>,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let self_name = self_name.into();
        metrics.set_cluster_members(1);
        Arc::new(Cluster {
            members: RwLock::new(Arc::from(vec![Member {
                name: self_name.clone(),
                url: String::new(),
            }])),
            self_name,
            transport,
            timeout,
            down: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// This node's member name.
    pub fn self_name(&self) -> &str {
        &self.self_name
    }

    /// How long a peer may take to answer.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The transport to peers.
    pub fn transport(&self) -> &Arc<dyn PeerTransport> {
        &self.transport
    }

    /// Sets the live members (this node is always one, listed or not). Joins and leaves
    /// are logged.
    pub fn set_members(&self, members: impl IntoIterator<Item = Member>) {
        let mut next: Vec<Member> = members
            .into_iter()
            .filter(|m| m.name != self.self_name)
            .collect();
        next.push(Member {
            name: self.self_name.clone(),
            url: String::new(),
        });
        next.sort();
        next.dedup_by(|a, b| a.name == b.name);
        let mut current = self.members.write().expect("members");
        if current[..] == next[..] {
            return;
        }
        for m in next.iter().filter(|m| !current.contains(m)) {
            if m.name != self.self_name {
                tracing::info!(member = %m.name, url = %m.url, "cluster member joined");
            }
        }
        for m in current.iter().filter(|m| !next.contains(m)) {
            if m.name != self.self_name {
                tracing::info!(member = %m.name, "cluster member left");
            }
        }
        self.metrics.set_cluster_members(next.len());
        *current = Arc::from(next);
    }

    /// The live members, this node included, sorted by name.
    pub fn members(&self) -> Arc<[Member]> {
        self.members.read().expect("members").clone()
    }

    /// Whether other members are known (without them every block is this node's).
    pub fn has_peers(&self) -> bool {
        self.members.read().expect("members").len() > 1
    }

    /// The `replicas` owners of placement key `key`, best first.
    pub fn owners(&self, key: &PlacementKey, replicas: usize) -> Vec<Member> {
        let members = self.members();
        rank(&members, key)
            .into_iter()
            .take(replicas.max(1))
            .cloned()
            .collect()
    }

    /// Whether `peer` failed a request lately (it is then skipped).
    pub fn is_down(&self, peer: &str) -> bool {
        let mut down = self.down.lock().expect("down peers");
        match down.get(peer) {
            Some(since) if since.elapsed() < PEER_DOWN_FOR => true,
            Some(_) => {
                down.remove(peer);
                false
            }
            None => false,
        }
    }

    /// Skips `peer` for [`PEER_DOWN_FOR`].
    pub fn mark_down(&self, peer: &Member, error: &Error) {
        let newly = self
            .down
            .lock()
            .expect("down peers")
            .insert(peer.name.clone(), Instant::now())
            .is_none();
        if newly {
            tracing::warn!(peer = %peer.name, url = %peer.url, %error,
                "peer did not answer a block request; skipping it for {}s",
                PEER_DOWN_FOR.as_secs());
        }
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

/// What placement hashes for a group of blocks: the dataset, the object version and the
/// group's number. Hashed once; ranking a member costs one mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementKey(u64);

impl PlacementKey {
    /// The key of block group `group` of `version` in dataset `dataset` ("namespace/name").
    pub fn new(dataset: &str, version: &ObjectVersion, group: u64) -> Self {
        let mut h = Fnv::default();
        h.write(dataset.as_bytes());
        h.write(&[0]);
        h.write(version.id().as_bytes());
        h.write(&[0]);
        h.write(&group.to_le_bytes());
        PlacementKey(h.0)
    }

    /// A key from a raw number (tests, simulations).
    pub fn from_raw(raw: u64) -> Self {
        PlacementKey(raw)
    }
}

/// Members ranked for `key`, best first (rendezvous hashing: the highest score wins).
pub fn rank<'a>(members: &'a [Member], key: &PlacementKey) -> Vec<&'a Member> {
    let mut scored: Vec<(u64, &Member)> = members
        .iter()
        .map(|m| {
            let mut h = Fnv::default();
            h.write(m.name.as_bytes());
            (fmix64(h.0 ^ fmix64(key.0)), m)
        })
        .collect();
    // Ties (practically never) break by name, so every node ranks alike.
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.name.cmp(&b.1.name)));
    scored.into_iter().map(|(_, m)| m).collect()
}

/// FNV-1a, 64 bits: fixed across builds and platforms, so every agent (and an upgraded
/// one) places alike.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// MurmurHash3's finalizer: spreads FNV's weak low bits over the whole word.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                name: format!("node-{i}"),
                url: format!("http://10.0.0.{i}:7070"),
            })
            .collect()
    }

    fn first_owner(members: &[Member], key: u64) -> String {
        rank(members, &PlacementKey::from_raw(key))[0].name.clone()
    }

    #[test]
    fn groups_spread_evenly_over_members() {
        let three = members(3);
        let mut counts: HashMap<String, u32> = HashMap::new();
        for k in 0..30_000u64 {
            *counts.entry(first_owner(&three, k)).or_default() += 1;
        }
        for (name, n) in counts {
            assert!((9_000..11_000).contains(&n), "{name} owns {n} of 30000");
        }
    }

    #[test]
    fn a_joining_member_takes_only_its_share() {
        let three = members(3);
        let four = members(4);
        let keys = 40_000u64;
        let moved = (0..keys)
            .filter(|&k| first_owner(&three, k) != first_owner(&four, k))
            .count();
        // Every moved group moved to the newcomer, and about a quarter moved.
        for k in 0..keys {
            let (before, after) = (first_owner(&three, k), first_owner(&four, k));
            assert!(
                before == after || after == "node-3",
                "group {k}: {before} -> {after}"
            );
        }
        assert!(
            (9_000..11_000).contains(&moved),
            "{moved} of {keys} groups moved"
        );
    }

    #[test]
    fn a_leaving_member_moves_only_its_groups() {
        let three = members(3);
        let two: Vec<Member> = three[..2].to_vec();
        for k in 0..10_000u64 {
            let before = first_owner(&three, k);
            if before != "node-2" {
                assert_eq!(before, first_owner(&two, k), "group {k}");
            }
        }
    }

    #[test]
    fn second_owner_takes_over_from_the_first() {
        // With replicas 2, removing the first owner leaves the second one first.
        let three = members(3);
        for k in 0..1_000u64 {
            let ranked = rank(&three, &PlacementKey::from_raw(k));
            let survivors: Vec<Member> = three
                .iter()
                .filter(|m| m.name != ranked[0].name)
                .cloned()
                .collect();
            assert_eq!(first_owner(&survivors, k), ranked[1].name);
        }
    }

    #[test]
    fn placement_is_fixed_across_builds() {
        // Pinned values: an upgraded agent must place blocks where the old one did.
        let v = ObjectVersion::new("s3", "train/a.bin", "\"etag\"", 1 << 30);
        let key = PlacementKey::new("ml/imagenet", &v, 7);
        let ranked: Vec<String> = rank(&members(4), &key)
            .into_iter()
            .map(|m| m.name.clone())
            .collect();
        assert_eq!(ranked, PINNED_RANKING);
    }

    // Computed independently (Python: FNV-1a 64 and MurmurHash3's fmix64 over the same
    // bytes), not by this code.
    const PINNED_RANKING: [&str; 4] = ["node-2", "node-0", "node-3", "node-1"];

    #[test]
    fn set_members_keeps_self_and_dedups() {
        struct NoTransport;
        #[async_trait::async_trait]
        impl PeerTransport for NoTransport {
            async fn fetch(
                &self,
                _: &Member,
                _: &BlockRequest,
            ) -> Result<BoxStream<'static, Result<Bytes>>> {
                Err(Error::Task("no transport".into()))
            }
            async fn fill(&self, _: &Member, _: &BlockRequest, _: bool) -> Result<bool> {
                Err(Error::Task("no transport".into()))
            }
        }
        let c = Cluster::new(
            "node-1",
            Arc::new(NoTransport),
            Duration::from_secs(1),
            Arc::new(Metrics::new()),
        );
        assert!(!c.has_peers());
        let mut m = members(3);
        m.push(m[0].clone());
        c.set_members(m);
        let names: Vec<String> = c.members().iter().map(|m| m.name.clone()).collect();
        assert_eq!(names, ["node-0", "node-1", "node-2"]);
        assert!(c.has_peers());
        c.set_members(Vec::new());
        assert!(!c.has_peers());
    }
}
