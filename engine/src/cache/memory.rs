//! The node-wide memory tier: blocks of every dataset under one eviction policy and
//! capacity, with each dataset's share counted.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::{BlockCache, BlockKey};
use crate::eviction::EvictionPolicy;

pub(super) struct MemoryTier {
    pub(super) map: HashMap<BlockKey, Bytes>,
    pub(super) policy: Box<dyn EvictionPolicy<BlockKey>>,
    pub(super) capacity: u64,
    pub(super) per_dataset: HashMap<Arc<str>, u64>,
}

impl BlockCache {
    /// Bytes in the memory tier.
    pub fn memory_used(&self) -> u64 {
        self.memory.lock().expect("memory tier").policy.bytes()
    }

    pub(super) fn memory_get(&self, key: &BlockKey) -> Option<Bytes> {
        let mut m = self.memory.lock().expect("memory tier");
        let b = m.map.get(key).cloned()?;
        m.policy.access(key);
        Some(b)
    }

    pub(super) fn memory_put(&self, key: BlockKey, data: Bytes) {
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

    pub(super) fn memory_remove_where(&self, f: impl Fn(&BlockKey) -> bool) {
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

    pub(super) fn memory_bytes_of(&self, dataset: &str) -> u64 {
        let m = self.memory.lock().expect("memory tier");
        m.per_dataset.get(dataset).copied().unwrap_or(0)
    }
}
