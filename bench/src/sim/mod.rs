//! The eviction study: access traces replayed through the engine's eviction policies (the real
//! `strata_agent::eviction` code, driven the way its block cache drives it) and through Belady's
//! offline optimum, at several cache sizes; the figure is the byte hit ratio.

pub mod belady;
pub mod trace;

use serde::{Deserialize, Serialize};
use strata_agent::config::EvictionKind;
use strata_agent::eviction::{EvictionPolicy, new_policy};

pub use trace::{Access, Trace};

/// Every policy the engine offers. The match makes a new `EvictionKind` a compile error here,
/// so the study cannot silently skip it.
pub fn engine_policies() -> Vec<EvictionKind> {
    let all = [EvictionKind::Lru, EvictionKind::S3Fifo, EvictionKind::Arc];
    for kind in all {
        match kind {
            EvictionKind::Lru | EvictionKind::S3Fifo | EvictionKind::Arc => {}
        }
    }
    all.to_vec()
}

/// Byte and request hit counts of one replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct HitCounts {
    pub hit_bytes: u64,
    pub total_bytes: u64,
    pub hits: u64,
    pub requests: u64,
}

impl HitCounts {
    pub fn byte_hit_ratio(&self) -> f64 {
        if self.total_bytes == 0 {
            0.0
        } else {
            self.hit_bytes as f64 / self.total_bytes as f64
        }
    }

    fn record(&mut self, size: u64, hit: bool) {
        self.requests += 1;
        self.total_bytes += size;
        if hit {
            self.hits += 1;
            self.hit_bytes += size;
        }
    }
}

/// Replays a trace through an engine policy with a byte capacity. The protocol is the block
/// cache's (and `strata_agent::eviction::simulate`'s): a hit is `access`, a miss is `insert`
/// followed by `evict` until the policy's bytes fit the capacity; a block larger than the whole
/// cache is read through.
pub fn replay_policy(
    policy: &mut dyn EvictionPolicy<u64>,
    capacity: u64,
    trace: &[Access],
) -> HitCounts {
    let mut counts = HitCounts::default();
    for a in trace {
        let hit = policy.contains(&a.key);
        counts.record(a.size, hit);
        if hit {
            policy.access(&a.key);
            continue;
        }
        if a.size > capacity {
            continue;
        }
        policy.insert(a.key, a.size);
        while policy.bytes() > capacity {
            if policy.evict().is_none() {
                break;
            }
        }
    }
    counts
}

/// One row of the study: a trace, a cache size, a policy, its byte hit ratio.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HitRatioPoint {
    pub trace: String,
    /// Cache size as a fraction of the trace's footprint (unique bytes, scans excluded).
    pub cache_fraction: f64,
    pub cache_bytes: u64,
    pub policy: String,
    pub byte_hit_ratio: f64,
    pub request_hit_ratio: f64,
}

/// Runs every engine policy and Belady over each trace at each cache size.
pub fn run_study(traces: &[Trace]) -> Vec<HitRatioPoint> {
    let mut points = Vec::new();
    for t in traces {
        for &fraction in &t.cache_fractions {
            let capacity = (t.footprint_bytes as f64 * fraction) as u64;
            let mut row = |policy: String, c: HitCounts| {
                points.push(HitRatioPoint {
                    trace: t.name.clone(),
                    cache_fraction: fraction,
                    cache_bytes: capacity,
                    policy,
                    byte_hit_ratio: c.byte_hit_ratio(),
                    request_hit_ratio: c.hits as f64 / c.requests.max(1) as f64,
                });
            };
            for kind in engine_policies() {
                let mut policy = new_policy::<u64>(kind);
                let name = policy.name().to_string();
                let counts = replay_policy(policy.as_mut(), capacity, &t.accesses);
                row(name, counts);
            }
            row(
                belady::NAME.to_string(),
                belady::replay(capacity, &t.accesses),
            );
        }
        tracing::info!(trace = %t.name, "eviction study done");
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The yardstick must bound every real policy from above, on any trace.
    #[test]
    fn belady_is_never_beaten_on_uniform_blocks() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for round in 0..20 {
            let trace: Vec<Access> = (0..3000)
                .map(|_| Access {
                    key: rng.random_range(0..200u64),
                    size: 4096,
                })
                .collect();
            let capacity = 4096 * (10 + round * 5);
            let opt = belady::replay(capacity, &trace);
            for kind in engine_policies() {
                let mut p = new_policy::<u64>(kind);
                let c = replay_policy(p.as_mut(), capacity, &trace);
                assert!(
                    c.hit_bytes <= opt.hit_bytes,
                    "{} beat the optimum: {c:?} > {opt:?}",
                    p.name()
                );
                assert_eq!(c.total_bytes, opt.total_bytes);
            }
        }
    }

    #[test]
    fn study_covers_every_policy_and_size() {
        let t = trace::zipf_with_scans(&trace::ZipfSpec {
            name: "tiny".into(),
            objects: 200,
            requests: 2000,
            skew: 1.0,
            scan_every: 500,
            scan_fraction: 0.1,
            seed: 3,
        });
        let points = run_study(std::slice::from_ref(&t));
        assert_eq!(
            points.len(),
            t.cache_fractions.len() * (engine_policies().len() + 1)
        );
        for p in &points {
            assert!((0.0..=1.0).contains(&p.byte_hit_ratio), "{p:?}");
        }
        // A bigger cache never does worse for the optimum.
        let opt: Vec<f64> = points
            .iter()
            .filter(|p| p.policy == belady::NAME)
            .map(|p| p.byte_hit_ratio)
            .collect();
        assert!(opt.windows(2).all(|w| w[0] <= w[1] + 1e-9), "{opt:?}");
    }
}
