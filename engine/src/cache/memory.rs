//! The node-wide memory tier: one capacity, and each dataset's blocks under that dataset's
//! own eviction policy and share, so a dataset streaming through memory evicts its own
//! blocks, not another dataset's hot set.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::{BlockCache, BlockKey};
use crate::config::EvictionKind;
use crate::eviction::{EvictionPolicy, new_policy};

/// What one dataset may hold in the memory tier.
#[derive(Debug, Clone, Copy)]
pub(super) struct MemoryShare {
    /// Most bytes of the dataset in memory (its policy's quota; the node's capacity bounds
    /// it anyway).
    pub(super) limit: u64,
    /// The dataset's eviction policy, which picks its victims in memory as on disk.
    pub(super) eviction: EvictionKind,
}

/// One dataset's blocks in memory, in its own policy.
struct DatasetMemory {
    policy: Box<dyn EvictionPolicy<BlockKey>>,
    eviction: EvictionKind,
}

pub(super) struct MemoryTier {
    map: HashMap<BlockKey, Bytes>,
    datasets: HashMap<Arc<str>, DatasetMemory>,
    capacity: u64,
    used: u64,
}

impl MemoryTier {
    pub(super) fn new(capacity: u64) -> Self {
        MemoryTier {
            map: HashMap::new(),
            datasets: HashMap::new(),
            capacity,
            used: 0,
        }
    }

    /// Evicts one block of `dataset` by its policy; false when it holds none.
    fn evict_from(&mut self, dataset: &Arc<str>) -> bool {
        let Some(victim) = self
            .datasets
            .get_mut(dataset)
            .and_then(|d| d.policy.evict())
        else {
            return false;
        };
        if let Some(b) = self.map.remove(&victim) {
            self.used = self.used.saturating_sub(b.len() as u64);
        }
        true
    }

    /// The dataset holding the most bytes in memory.
    fn largest(&self) -> Option<Arc<str>> {
        self.datasets
            .iter()
            .filter(|(_, d)| d.policy.bytes() > 0)
            .max_by_key(|(_, d)| d.policy.bytes())
            .map(|(id, _)| id.clone())
    }
}

impl BlockCache {
    /// Bytes in the memory tier.
    pub fn memory_used(&self) -> u64 {
        self.memory.lock().expect("memory tier").used
    }

    /// Whether the block is in memory (without counting an access).
    pub(super) fn memory_holds(&self, key: &BlockKey) -> bool {
        self.memory
            .lock()
            .expect("memory tier")
            .map
            .contains_key(key)
    }

    pub(super) fn memory_get(&self, key: &BlockKey) -> Option<Bytes> {
        let mut m = self.memory.lock().expect("memory tier");
        let b = m.map.get(key).cloned()?;
        if let Some(d) = m.datasets.get_mut(&key.dataset) {
            d.policy.access(key);
        }
        Some(b)
    }

    /// Keeps a block in memory within the dataset's share: past its share the dataset
    /// evicts its own blocks; past the node's capacity the dataset holding the most gives
    /// way.
    pub(super) fn memory_put(&self, key: BlockKey, data: Bytes, share: MemoryShare) {
        let size = data.len() as u64;
        let mut m = self.memory.lock().expect("memory tier");
        if size > m.capacity.min(share.limit) || m.map.contains_key(&key) {
            return;
        }
        let dataset = key.dataset.clone();
        let entry = m
            .datasets
            .entry(dataset.clone())
            .or_insert_with(|| DatasetMemory {
                policy: new_policy(share.eviction),
                eviction: share.eviction,
            });
        if entry.eviction != share.eviction {
            // The policy changed: its blocks start over under the new one.
            let old: Vec<BlockKey> = std::iter::from_fn(|| entry.policy.evict()).collect();
            entry.policy = new_policy(share.eviction);
            entry.eviction = share.eviction;
            for k in old {
                if let Some(b) = m.map.remove(&k) {
                    m.used = m.used.saturating_sub(b.len() as u64);
                }
            }
        }
        let entry = m.datasets.get_mut(&dataset).expect("just inserted");
        entry.policy.insert(key.clone(), size);
        m.map.insert(key, data);
        m.used += size;
        let mut evicted = 0;
        while m.datasets[&dataset].policy.bytes() > share.limit && m.evict_from(&dataset) {
            evicted += 1;
        }
        while m.used > m.capacity {
            let Some(victim) = m.largest() else {
                break;
            };
            if !m.evict_from(&victim) {
                break;
            }
            evicted += 1;
        }
        drop(m);
        if evicted > 0 {
            self.metrics.evicted("memory", evicted);
        }
    }

    pub(super) fn memory_remove_where(&self, f: impl Fn(&BlockKey) -> bool) {
        let mut m = self.memory.lock().expect("memory tier");
        let keys: Vec<BlockKey> = m.map.keys().filter(|k| f(k)).cloned().collect();
        for k in keys {
            if let Some(d) = m.datasets.get_mut(&k.dataset) {
                d.policy.remove(&k);
            }
            if let Some(b) = m.map.remove(&k) {
                m.used = m.used.saturating_sub(b.len() as u64);
            }
        }
    }

    pub(super) fn memory_bytes_of(&self, dataset: &str) -> u64 {
        let m = self.memory.lock().expect("memory tier");
        m.datasets
            .get(dataset)
            .map(|d| d.policy.bytes())
            .unwrap_or(0)
    }
}
