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
        vec![Box::new(Lru::new()), Box::new(S3Fifo::new())]
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
        let lru_r = simulate(&mut lru, 50, trace.clone());
        let fifo_r = simulate(&mut fifo, 50, trace);
        // After the scan, S3-FIFO still has the working set; LRU lost all of it.
        assert!(fifo_r.hits >= 160 + 35, "s3fifo {fifo_r:?}");
        assert_eq!(lru_r.hits, 160, "lru {lru_r:?}");
    }
}
