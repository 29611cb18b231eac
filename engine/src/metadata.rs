//! Metadata cache: stat and list results with a TTL. Entries older than the TTL are
//! never served (so an object changed upstream is seen once its TTL passes); entries in
//! the last quarter of their life are served and flagged for a background refresh, so
//! hot paths do not stall on expiry. Negative entries ("not found") expire the same way.
//! A lookup also says how long a copy of the answer may be kept by another cache (the
//! kernel's, through FUSE): while fresh, until its refresh window starts, so that the
//! next use comes back here and starts the background refresh; while stale, until it
//! expires. An answer is then never kept anywhere longer than it is valid here.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<V> {
    /// Fresh value, and until when a copy of it may be kept (its refresh window's start).
    Fresh(V, Instant),
    /// Value still valid but should be refreshed in the background, and until when a
    /// copy may be kept (its expiry).
    Stale(V, Instant),
    /// Nothing valid cached.
    Missing,
}

/// A TTL map; values are cheap to clone (wrap big ones in `Arc`).
pub struct TtlCache<K, V> {
    ttl: Mutex<Duration>,
    map: Mutex<HashMap<K, (V, Instant)>>,
    max_entries: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// A cache whose entries live `ttl`, holding at most `max_entries` (older entries are
    /// dropped first when full).
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        TtlCache {
            ttl: Mutex::new(ttl),
            map: Mutex::new(HashMap::new()),
            max_entries,
        }
    }

    /// Changes the TTL (applies to existing entries too).
    pub fn set_ttl(&self, ttl: Duration) {
        *self.ttl.lock().expect("ttl") = ttl;
    }

    /// The TTL.
    pub fn ttl(&self) -> Duration {
        *self.ttl.lock().expect("ttl")
    }

    /// Looks a key up.
    pub fn get(&self, key: &K) -> Lookup<V> {
        let ttl = self.ttl();
        let mut map = self.map.lock().expect("ttl cache");
        let Some((v, at)) = map.get(key) else {
            return Lookup::Missing;
        };
        let age = at.elapsed();
        let refresh = ttl.mul_f64(0.75);
        if age >= ttl {
            map.remove(key);
            Lookup::Missing
        } else if age >= refresh {
            Lookup::Stale(v.clone(), later(*at, ttl))
        } else {
            Lookup::Fresh(v.clone(), later(*at, refresh))
        }
    }

    /// Until when a copy of a value inserted now may be kept (see [`Lookup::Fresh`]).
    pub fn keep_new_until(&self) -> Instant {
        later(Instant::now(), self.ttl().mul_f64(0.75))
    }

    /// Inserts or replaces a value, timestamped now.
    pub fn insert(&self, key: K, value: V) {
        let ttl = self.ttl();
        let mut map = self.map.lock().expect("ttl cache");
        if map.len() >= self.max_entries && !map.contains_key(&key) {
            // Drop expired entries first, then the oldest half.
            map.retain(|_, (_, at)| at.elapsed() < ttl);
            if map.len() >= self.max_entries {
                let mut ages: Vec<Instant> = map.values().map(|(_, at)| *at).collect();
                ages.sort();
                let cutoff = ages[ages.len() / 2];
                map.retain(|_, (_, at)| *at > cutoff);
            }
        }
        map.insert(key, (value, Instant::now()));
    }

    /// Takes every entry of `other` still valid, with the time it was fetched, over any
    /// entry of the same key here.
    pub fn adopt(&self, other: &TtlCache<K, V>) {
        let ttl = other.ttl();
        let entries: Vec<(K, (V, Instant))> = other
            .map
            .lock()
            .expect("ttl cache")
            .iter()
            .filter(|(_, (_, at))| at.elapsed() < ttl)
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        let mut map = self.map.lock().expect("ttl cache");
        for (k, e) in entries {
            if map.len() < self.max_entries || map.contains_key(&k) {
                map.insert(k, e);
            }
        }
    }

    /// Removes one key.
    pub fn remove(&self, key: &K) {
        self.map.lock().expect("ttl cache").remove(key);
    }

    /// Removes everything.
    pub fn clear(&self) {
        self.map.lock().expect("ttl cache").clear();
    }

    /// Number of entries (including expired ones not yet dropped).
    pub fn len(&self) -> usize {
        self.map.lock().expect("ttl cache").len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `at + d`, or a century later where that does not fit in an `Instant`.
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(Duration::from_secs(100 * 365 * 86400)))
        .unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_and_flags_stale() {
        let c = TtlCache::new(Duration::from_millis(200), 10);
        let before = Instant::now();
        c.insert("a", 1);
        let after = Instant::now();
        let Lookup::Fresh(1, keep) = c.get(&"a") else {
            panic!("not fresh")
        };
        assert!(
            keep >= before + Duration::from_millis(150)
                && keep <= after + Duration::from_millis(150),
            "a copy of a fresh value is kept until its refresh window"
        );
        std::thread::sleep(Duration::from_millis(160));
        let Lookup::Stale(1, expires) = c.get(&"a") else {
            panic!("not stale")
        };
        let window = expires - keep;
        assert!(
            window > Duration::from_millis(45) && window < Duration::from_millis(55),
            "a copy of a stale value is kept until it expires: {window:?}"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get(&"a"), Lookup::Missing);
    }

    #[test]
    fn bounded() {
        let c = TtlCache::new(Duration::from_secs(60), 10);
        for i in 0..100 {
            c.insert(i, i);
        }
        assert!(c.len() <= 10);
        assert!(matches!(c.get(&99), Lookup::Fresh(99, _)));
    }
}
