//! Eviction policies behind one trait, usable on their own (see [`simulate`] for a trace
//! simulator). Policies only order entries; the caches decide when to evict (byte quotas)
//! and keep pinned entries out of the policy entirely, so a policy can never pick them.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::Hash;

use crate::config::EvictionKind;

/// Orders cache entries for eviction. Implementations are not thread safe by themselves;
/// callers wrap them in a lock.
pub trait EvictionPolicy<K>: Send {
    /// Short name ("lru", "s3fifo").
    fn name(&self) -> &'static str;
    /// A new entry of `size` bytes was admitted. Re-inserting a present key updates it.
    fn insert(&mut self, key: K, size: u64);
    /// An entry was read.
    fn access(&mut self, key: &K);
    /// An entry was removed by the cache for another reason (pinned, dropped, expired).
    fn remove(&mut self, key: &K) -> bool;
    /// Picks the next victim and forgets it; `None` when the policy holds nothing.
    fn evict(&mut self) -> Option<K>;
    /// Number of entries held.
    fn len(&self) -> usize;
    /// Bytes held.
    fn bytes(&self) -> u64;
    /// True when nothing is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// True if the key is held.
    fn contains(&self, key: &K) -> bool;
}

/// Creates the policy for a configured kind.
pub fn new_policy<K: Eq + Hash + Clone + Send + 'static>(
    kind: EvictionKind,
) -> Box<dyn EvictionPolicy<K>> {
    match kind {
        EvictionKind::Lru => Box::new(Lru::new()),
        EvictionKind::S3Fifo => Box::new(S3Fifo::new()),
        EvictionKind::Arc => Box::new(AdaptiveReplacement::new()),
    }
}

/// Least recently used.
#[derive(Debug)]
pub struct Lru<K> {
    seq: u64,
    entries: HashMap<K, (u64, u64)>, // key -> (seq, size)
    order: BTreeMap<u64, K>,
    bytes: u64,
}

impl<K: Eq + Hash + Clone> Default for Lru<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash + Clone> Lru<K> {
    /// An empty LRU.
    pub fn new() -> Self {
        Lru {
            seq: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            bytes: 0,
        }
    }
}

impl<K: Eq + Hash + Clone + Send> EvictionPolicy<K> for Lru<K> {
    fn name(&self) -> &'static str {
        "lru"
    }
    fn insert(&mut self, key: K, size: u64) {
        self.remove(&key);
        self.seq += 1;
        self.order.insert(self.seq, key.clone());
        self.entries.insert(key, (self.seq, size));
        self.bytes += size;
    }
    fn access(&mut self, key: &K) {
        if let Some((seq, _)) = self.entries.get_mut(key) {
            self.order.remove(seq);
            self.seq += 1;
            *seq = self.seq;
            self.order.insert(self.seq, key.clone());
        }
    }
    fn remove(&mut self, key: &K) -> bool {
        match self.entries.remove(key) {
            Some((seq, size)) => {
                self.order.remove(&seq);
                self.bytes -= size;
                true
            }
            None => false,
        }
    }
    fn evict(&mut self) -> Option<K> {
        let (_, key) = self.order.pop_first()?;
        if let Some((_, size)) = self.entries.remove(&key) {
            self.bytes -= size;
        }
        Some(key)
    }
    fn len(&self) -> usize {
        self.entries.len()
    }
    fn bytes(&self) -> u64 {
        self.bytes
    }
    fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

#[derive(Debug)]
struct FifoEntry {
    size: u64,
    freq: u8,
    queue: Queue,
    generation: u64,
}

/// S3-FIFO (Yang et al., SOSP 2023): a small probationary FIFO (10% of bytes), a main
/// FIFO with re-insertion of entries read since they were queued, and a ghost FIFO of
/// recently evicted keys. Entries read only once (a scan) leave through the small queue
/// without displacing the main queue.
#[derive(Debug)]
pub struct S3Fifo<K> {
    entries: HashMap<K, FifoEntry>,
    small: VecDeque<(K, u64)>,
    main: VecDeque<(K, u64)>,
    ghost: VecDeque<K>,
    ghost_set: HashSet<K>,
    small_bytes: u64,
    bytes: u64,
    generation: u64,
}

impl<K: Eq + Hash + Clone> Default for S3Fifo<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash + Clone> S3Fifo<K> {
    /// An empty S3-FIFO.
    pub fn new() -> Self {
        S3Fifo {
            entries: HashMap::new(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: VecDeque::new(),
            ghost_set: HashSet::new(),
            small_bytes: 0,
            bytes: 0,
            generation: 0,
        }
    }

    fn push(&mut self, key: K, queue: Queue) {
        self.generation += 1;
        let g = self.generation;
        if let Some(e) = self.entries.get_mut(&key) {
            e.generation = g;
            if e.queue == Queue::Small && queue == Queue::Main {
                self.small_bytes -= e.size;
            }
            e.queue = queue;
        }
        match queue {
            Queue::Small => self.small.push_back((key, g)),
            Queue::Main => self.main.push_back((key, g)),
        }
    }

    fn remember_ghost(&mut self, key: K) {
        if self.ghost_set.insert(key.clone()) {
            self.ghost.push_back(key);
        }
        // The ghost queue holds about as many keys as the main queue has entries.
        let limit = self.entries.len().max(64);
        while self.ghost.len() > limit {
            if let Some(old) = self.ghost.pop_front() {
                self.ghost_set.remove(&old);
            }
        }
    }

    /// Pops the live head of a queue (skipping stale queue slots).
    fn pop_live(&mut self, queue: Queue) -> Option<K> {
        loop {
            let (key, g) = match queue {
                Queue::Small => self.small.pop_front()?,
                Queue::Main => self.main.pop_front()?,
            };
            if self
                .entries
                .get(&key)
                .is_some_and(|e| e.generation == g && e.queue == queue)
            {
                return Some(key);
            }
        }
    }

    fn forget(&mut self, key: &K) -> Option<FifoEntry> {
        let e = self.entries.remove(key)?;
        self.bytes -= e.size;
        if e.queue == Queue::Small {
            self.small_bytes -= e.size;
        }
        Some(e)
    }
}

impl<K: Eq + Hash + Clone + Send> EvictionPolicy<K> for S3Fifo<K> {
    fn name(&self) -> &'static str {
        "s3fifo"
    }
    fn insert(&mut self, key: K, size: u64) {
        self.forget(&key);
        let queue = if self.ghost_set.remove(&key) {
            Queue::Main
        } else {
            Queue::Small
        };
        self.entries.insert(
            key.clone(),
            FifoEntry {
                size,
                freq: 0,
                queue,
                generation: 0,
            },
        );
        self.bytes += size;
        if queue == Queue::Small {
            self.small_bytes += size;
        }
        self.push(key, queue);
    }
    fn access(&mut self, key: &K) {
        if let Some(e) = self.entries.get_mut(key) {
            e.freq = (e.freq + 1).min(3);
        }
    }
    fn remove(&mut self, key: &K) -> bool {
        self.forget(key).is_some()
    }
    fn evict(&mut self) -> Option<K> {
        loop {
            if self.entries.is_empty() {
                self.small.clear();
                self.main.clear();
                return None;
            }
            let main_has = self.entries.len() as u64 > 0 && self.small_bytes < self.bytes;
            let from_small = self.small_bytes > self.bytes / 10 || !main_has;
            if from_small {
                let Some(key) = self.pop_live(Queue::Small) else {
                    // Small queue empty of live entries: fall through to main.
                    if let Some(k) = self.evict_main() {
                        return Some(k);
                    }
                    continue;
                };
                let freq = self.entries.get(&key).map(|e| e.freq).unwrap_or(0);
                if freq > 0 {
                    if let Some(e) = self.entries.get_mut(&key) {
                        e.freq = 0;
                    }
                    self.push(key, Queue::Main);
                    continue;
                }
                self.forget(&key);
                self.remember_ghost(key.clone());
                return Some(key);
            } else if let Some(k) = self.evict_main() {
                return Some(k);
            }
        }
    }
    fn len(&self) -> usize {
        self.entries.len()
    }
    fn bytes(&self) -> u64 {
        self.bytes
    }
    fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }
}

impl<K: Eq + Hash + Clone + Send> S3Fifo<K> {
    fn evict_main(&mut self) -> Option<K> {
        // Each pass either evicts or decrements a frequency, so this ends.
        loop {
            let key = self.pop_live(Queue::Main)?;
            let e = self.entries.get_mut(&key)?;
            if e.freq > 0 {
                e.freq -= 1;
                self.push(key, Queue::Main);
            } else {
                self.forget(&key);
                return Some(key);
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArcList {
    /// Cached, read once since admission (recency).
    T1,
    /// Cached, read again (frequency).
    T2,
    /// Ghost of an entry evicted from T1.
    B1,
    /// Ghost of an entry evicted from T2.
    B2,
}

/// ARC (Megiddo and Modha, FAST 2003), by bytes: two cached lists, T1 (seen once) and T2
/// (seen again), and two ghost lists of keys recently evicted from each. A miss that hits
/// a ghost moves the target size of T1 towards the list that would have kept it, so the
/// split between recency and frequency adapts to the workload. The policy is not told
/// the cache's capacity: it takes it to be the bytes held when the cache first asks for a
/// victim (the cache evicts only when full), and the largest such figure after that.
#[derive(Debug)]
pub struct AdaptiveReplacement<K> {
    entries: HashMap<K, (ArcList, u64, u64)>, // key -> (list, seq, size)
    lists: [BTreeMap<u64, K>; 4],
    list_bytes: [u64; 4],
    seq: u64,
    // Target bytes of T1.
    target: u64,
    capacity: u64,
}

impl<K: Eq + Hash + Clone> Default for AdaptiveReplacement<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash + Clone> AdaptiveReplacement<K> {
    /// An empty ARC.
    pub fn new() -> Self {
        AdaptiveReplacement {
            entries: HashMap::new(),
            lists: Default::default(),
            list_bytes: [0; 4],
            seq: 0,
            target: 0,
            capacity: 0,
        }
    }

    fn index(list: ArcList) -> usize {
        match list {
            ArcList::T1 => 0,
            ArcList::T2 => 1,
            ArcList::B1 => 2,
            ArcList::B2 => 3,
        }
    }

    fn bytes_of(&self, list: ArcList) -> u64 {
        self.list_bytes[Self::index(list)]
    }

    /// Takes `key` out of whatever list holds it; its list and size.
    fn unlink(&mut self, key: &K) -> Option<(ArcList, u64)> {
        let (list, seq, size) = self.entries.remove(key)?;
        let i = Self::index(list);
        self.lists[i].remove(&seq);
        self.list_bytes[i] -= size;
        Some((list, size))
    }

    /// Puts `key` at the most recent end of `list`.
    fn link(&mut self, key: K, list: ArcList, size: u64) {
        self.seq += 1;
        let i = Self::index(list);
        self.lists[i].insert(self.seq, key.clone());
        self.list_bytes[i] += size;
        self.entries.insert(key, (list, self.seq, size));
    }

    /// Moves the least recent entry of `from` (a cached list) to the ghost list `to`.
    fn demote(&mut self, from: ArcList, to: ArcList) -> Option<K> {
        let (_, key) = self.lists[Self::index(from)].pop_first()?;
        let (_, _, size) = self.entries.remove(&key)?;
        self.list_bytes[Self::index(from)] -= size;
        self.link(key.clone(), to, size);
        self.trim_ghosts();
        Some(key)
    }

    /// Bounds the ghosts as ARC does: T1 + B1 within the capacity, all four lists within
    /// twice the capacity.
    fn trim_ghosts(&mut self) {
        let c = self.capacity.max(1);
        let (t1, b1) = (Self::index(ArcList::T1), Self::index(ArcList::B1));
        while self.list_bytes[t1] + self.list_bytes[b1] > c {
            let Some((_, key)) = self.lists[b1].pop_first() else {
                break;
            };
            if let Some((_, _, size)) = self.entries.remove(&key) {
                self.list_bytes[b1] -= size;
            }
        }
        let b2 = Self::index(ArcList::B2);
        while self.list_bytes.iter().sum::<u64>() > 2 * c {
            let Some((_, key)) = self.lists[b2].pop_first() else {
                break;
            };
            if let Some((_, _, size)) = self.entries.remove(&key) {
                self.list_bytes[b2] -= size;
            }
        }
    }
}

impl<K: Eq + Hash + Clone + Send> EvictionPolicy<K> for AdaptiveReplacement<K> {
    fn name(&self) -> &'static str {
        "arc"
    }
    fn insert(&mut self, key: K, size: u64) {
        let b1 = self.bytes_of(ArcList::B1).max(1);
        let b2 = self.bytes_of(ArcList::B2).max(1);
        match self.unlink(&key) {
            // A miss that B1 remembers: recency would have kept it, grow T1's target.
            Some((ArcList::B1, _)) => {
                let delta = size.max(size.saturating_mul(b2) / b1);
                self.target = (self.target + delta).min(self.capacity);
                self.link(key, ArcList::T2, size);
            }
            // A miss that B2 remembers: frequency would have kept it, shrink T1's target.
            Some((ArcList::B2, _)) => {
                let delta = size.max(size.saturating_mul(b1) / b2);
                self.target = self.target.saturating_sub(delta);
                self.link(key, ArcList::T2, size);
            }
            // Re-inserting a cached key updates its size where it is.
            Some((list, _)) => self.link(key, list, size),
            None => self.link(key, ArcList::T1, size),
        }
    }
    fn access(&mut self, key: &K) {
        if let Some(&(list, _, size)) = self.entries.get(key)
            && matches!(list, ArcList::T1 | ArcList::T2)
        {
            self.unlink(key);
            self.link(key.clone(), ArcList::T2, size);
        }
    }
    fn remove(&mut self, key: &K) -> bool {
        // A ghost is forgotten too, but only a cached entry counts as removed.
        matches!(self.unlink(key), Some((ArcList::T1 | ArcList::T2, _)))
    }
    fn evict(&mut self) -> Option<K> {
        self.capacity = self.capacity.max(self.bytes());
        let t1 = self.bytes_of(ArcList::T1);
        let from_t1 =
            t1 > 0 && (t1 > self.target || self.lists[Self::index(ArcList::T2)].is_empty());
        if from_t1 {
            self.demote(ArcList::T1, ArcList::B1)
        } else {
            self.demote(ArcList::T2, ArcList::B2)
                .or_else(|| self.demote(ArcList::T1, ArcList::B1))
        }
    }
    fn len(&self) -> usize {
        self.lists[0].len() + self.lists[1].len()
    }
    fn bytes(&self) -> u64 {
        self.list_bytes[0] + self.list_bytes[1]
    }
    fn contains(&self, key: &K) -> bool {
        matches!(
            self.entries.get(key),
            Some((ArcList::T1 | ArcList::T2, _, _))
        )
    }
}

/// Result of [`simulate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimulationReport {
    /// Requests that hit.
    pub hits: u64,
    /// Requests that missed.
    pub misses: u64,
    /// Entries evicted.
    pub evictions: u64,
}

impl SimulationReport {
    /// hits / (hits + misses).
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

/// Replays a trace of (key, size) requests against a policy with a byte capacity, the
/// way the block cache drives it: a hit is an `access`, a miss an `insert` followed by
/// evictions until the bytes fit.
pub fn simulate<K: Eq + Hash + Clone>(
    policy: &mut dyn EvictionPolicy<K>,
    capacity: u64,
    trace: impl IntoIterator<Item = (K, u64)>,
) -> SimulationReport {
    let mut r = SimulationReport {
        hits: 0,
        misses: 0,
        evictions: 0,
    };
    for (key, size) in trace {
        if policy.contains(&key) {
            r.hits += 1;
            policy.access(&key);
            continue;
        }
        r.misses += 1;
        if size > capacity {
            continue;
        }
        policy.insert(key, size);
        while policy.bytes() > capacity {
            if policy.evict().is_none() {
                break;
            }
            r.evictions += 1;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both() -> Vec<Box<dyn EvictionPolicy<u64>>> {
        vec![
            Box::new(Lru::new()),
            Box::new(S3Fifo::new()),
            Box::new(AdaptiveReplacement::new()),
        ]
    }

    // The shared suite: every policy must pass these.

    #[test]
    fn suite_accounting_and_exactly_once_eviction() {
        for mut p in both() {
            for k in 0..100u64 {
                p.insert(k, k + 1);
            }
            assert_eq!(p.len(), 100, "{}", p.name());
            assert_eq!(p.bytes(), (1..=100).sum::<u64>(), "{}", p.name());
            for k in (0..100).step_by(3) {
                p.access(&k);
            }
            assert!(p.remove(&50));
            assert!(!p.remove(&50));
            assert!(!p.contains(&50));
            let mut seen = HashSet::new();
            while let Some(k) = p.evict() {
                assert!(k != 50, "{} evicted a removed key", p.name());
                assert!(seen.insert(k), "{} evicted {k} twice", p.name());
            }
            assert_eq!(seen.len(), 99, "{}", p.name());
            assert_eq!(p.bytes(), 0, "{}", p.name());
            assert!(p.is_empty());
            assert_eq!(p.evict(), None);
        }
    }

    #[test]
    fn suite_reinsert_updates_size() {
        for mut p in both() {
            p.insert(1, 10);
            p.insert(1, 30);
            assert_eq!(p.len(), 1, "{}", p.name());
            assert_eq!(p.bytes(), 30, "{}", p.name());
        }
    }

    #[test]
    fn suite_hot_entry_survives_pressure() {
        // A key read on every step must stay cached under any policy worth the name.
        for mut p in both() {
            let trace = (0..2000u64).flat_map(|i| [(0u64, 1u64), (i + 1, 1)]);
            let r = simulate(p.as_mut(), 50, trace);
            assert!(p.contains(&0), "{} lost the hot key", p.name());
            assert!(r.hits >= 1990, "{}: {r:?}", p.name());
        }
    }

    #[test]
    fn suite_removed_keys_are_never_victims() {
        // What the caches do with pinned blocks: remove them from the policy.
        for mut p in both() {
            for k in 0..20u64 {
                p.insert(k, 1);
            }
            for k in 0..10u64 {
                p.remove(&k);
            }
            while let Some(k) = p.evict() {
                assert!(k >= 10, "{} evicted pinned {k}", p.name());
            }
        }
    }

    #[test]
    fn lru_evicts_least_recent() {
        let mut p = Lru::new();
        for k in 0..3u64 {
            p.insert(k, 1);
        }
        p.access(&0);
        assert_eq!(p.evict(), Some(1));
        assert_eq!(p.evict(), Some(2));
        assert_eq!(p.evict(), Some(0));
    }

    #[test]
    fn s3fifo_is_scan_resistant_where_lru_is_not() {
        // A working set of 40 keys read repeatedly, interrupted by a long one-time scan.
        let mut trace = Vec::new();
        for _ in 0..5 {
            for k in 0..40u64 {
                trace.push((k, 1));
            }
        }
        for k in 1000..1400u64 {
            trace.push((k, 1));
        }
        for k in 0..40u64 {
            trace.push((k, 1));
        }
        let mut lru: Lru<u64> = Lru::new();
        let mut fifo: S3Fifo<u64> = S3Fifo::new();
        let trace_copy = trace.clone();
        let lru_r = simulate(&mut lru, 50, trace.clone());
        let fifo_r = simulate(&mut fifo, 50, trace);
        // After the scan, S3-FIFO still has the working set; LRU lost all of it.
        assert!(fifo_r.hits >= 160 + 35, "s3fifo {fifo_r:?}");
        assert_eq!(lru_r.hits, 160, "lru {lru_r:?}");
        // ARC keeps the working set in T2 (read more than once); the scan passes through T1.
        let mut arc: AdaptiveReplacement<u64> = AdaptiveReplacement::new();
        let arc_r = simulate(&mut arc, 50, trace_copy);
        assert!(arc_r.hits >= 160 + 35, "arc {arc_r:?}");
    }

    #[test]
    fn arc_adapts_its_target_to_ghost_hits() {
        // Ten keys read twice fill T2. A new key goes to T1 and, T1 being over its target
        // of 0, is the next victim; asked for again, its ghost in B1 raises the target and
        // it comes back into T2.
        let mut p: AdaptiveReplacement<u64> = AdaptiveReplacement::new();
        let warm = (0..10u64).chain(0..10).map(|k| (k, 1));
        simulate(&mut p, 10, warm.chain([(100, 1), (200, 1)]));
        assert_eq!(p.target, 0);
        assert!(!p.contains(&100));
        let r = simulate(&mut p, 10, [(100, 1)]);
        assert_eq!(r.misses, 1);
        assert!(p.target >= 1, "a B1 ghost hit must grow T1's target");
        assert!(p.contains(&100));
        assert_eq!(p.bytes(), 10);
    }
}
