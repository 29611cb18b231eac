//! Belady's MIN, the offline yardstick: on a miss, keep the blocks whose next use comes soonest
//! and evict (or do not admit) the one used farthest in the future. With equal block sizes this
//! is the optimum; with unequal sizes (the last block of an object, small files) it is the
//! classic near-optimal bound, not a proven one.

use std::collections::{BTreeSet, HashMap};

use super::{Access, HitCounts};

pub const NAME: &str = "belady (optimum)";

/// Position of each access's next use of the same key (`usize::MAX` = never again).
fn next_uses(trace: &[Access]) -> Vec<usize> {
    let mut next = vec![usize::MAX; trace.len()];
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for (i, a) in trace.iter().enumerate().rev() {
        if let Some(&j) = seen.get(&a.key) {
            next[i] = j;
        }
        seen.insert(a.key, i);
    }
    next
}

pub fn replay(capacity: u64, trace: &[Access]) -> HitCounts {
    let next = next_uses(trace);
    let mut counts = HitCounts::default();
    // key -> (next use, size); ordered set of (next use, key) to find the farthest quickly.
    let mut cached: HashMap<u64, (usize, u64)> = HashMap::new();
    let mut by_next: BTreeSet<(usize, u64)> = BTreeSet::new();
    let mut used = 0u64;
    for (i, a) in trace.iter().enumerate() {
        if let Some(entry) = cached.get_mut(&a.key) {
            counts.record(a.size, true);
            by_next.remove(&(entry.0, a.key));
            entry.0 = next[i];
            by_next.insert((next[i], a.key));
            continue;
        }
        counts.record(a.size, false);
        if next[i] == usize::MAX || a.size > capacity {
            continue; // never read again, or cannot fit: not admitted
        }
        // Evict farther-used blocks while they are used later than this one and space is short.
        let mut victims = Vec::new();
        let mut freed = 0u64;
        for &(their_next, key) in by_next.iter().rev() {
            if used - freed + a.size <= capacity || their_next < next[i] {
                break;
            }
            victims.push((their_next, key));
            freed += cached[&key].1;
        }
        if used - freed + a.size > capacity {
            continue; // the new block is the one used farthest: bypass it, evict nothing
        }
        for v in victims {
            by_next.remove(&v);
            cached.remove(&v.1);
        }
        used = used - freed + a.size;
        cached.insert(a.key, (next[i], a.size));
        by_next.insert((next[i], a.key));
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(keys: &[u64]) -> Vec<Access> {
        keys.iter().map(|&key| Access { key, size: 1 }).collect()
    }

    #[test]
    fn textbook_example() {
        // Reference string 7 0 1 2 0 3 0 4 2 3 0 3 2 with 3 frames: OPT has 9 faults (4 hits)
        // when every miss is loaded; with bypass allowed it can only do as well or better.
        let t = trace(&[7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2]);
        let c = replay(3, &t);
        assert_eq!(c.requests, 13);
        assert!(c.hits >= 4, "{c:?}");
        // Every key's first access is a compulsory miss (5 distinct keys), so at most 8 hits.
        assert!(c.hits <= 8);
    }

    #[test]
    fn keeps_the_block_reused_soonest() {
        // Capacity 2: A B C A B -> bypassing C keeps both A and B: 2 hits.
        let t = trace(&[1, 2, 3, 1, 2]);
        assert_eq!(replay(2, &t).hits, 2);
    }

    #[test]
    fn respects_capacity_with_unequal_sizes() {
        let t = vec![
            Access { key: 1, size: 6 },
            Access { key: 2, size: 6 },
            Access { key: 1, size: 6 },
            Access { key: 2, size: 6 },
        ];
        let c = replay(10, &t);
        assert_eq!(c.hits, 1, "only one 6-byte block fits in 10 bytes: {c:?}");
    }
}
