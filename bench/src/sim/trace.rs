//! Synthetic access traces at block granularity (4 MiB blocks, as the engine caches them).

use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

pub const BLOCK: u64 = 4 << 20;

/// One block read: key = object id << 24 | block index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub key: u64,
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct Trace {
    pub name: String,
    pub description: String,
    pub accesses: Vec<Access>,
    /// Unique bytes of the repeatedly read part (scans excluded): cache sizes are fractions of it.
    pub footprint_bytes: u64,
    pub cache_fractions: Vec<f64>,
}

impl Trace {
    pub fn total_bytes(&self) -> u64 {
        self.accesses.iter().map(|a| a.size).sum()
    }
}

/// Pushes the block accesses of reading object `id` of `size` bytes whole.
fn read_object(out: &mut Vec<Access>, id: u64, size: u64) {
    let blocks = size.div_ceil(BLOCK).max(1);
    for b in 0..blocks {
        let len = if b + 1 == blocks {
            size - b * BLOCK
        } else {
            BLOCK
        };
        out.push(Access {
            key: (id << 24) | b,
            size: len.max(1),
        });
    }
}

/// Object sizes like a mixed bucket: mostly small files, some multi-block ones.
fn object_size(rng: &mut StdRng) -> u64 {
    let r: f64 = rng.random();
    if r < 0.6 {
        rng.random_range(16 << 10..1 << 20)
    } else if r < 0.95 {
        rng.random_range(1 << 20..16 << 20)
    } else {
        rng.random_range(16 << 20..64 << 20)
    }
}

/// Zipf(skew) over `n` ranks by inverse CDF.
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, skew: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for k in 1..=n {
            acc += 1.0 / (k as f64).powf(skew);
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        Self { cdf }
    }

    /// A rank in 0..n (0 the most popular).
    pub fn sample(&self, rng: &mut StdRng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

#[derive(Debug, Clone)]
pub struct ZipfSpec {
    pub name: String,
    pub objects: usize,
    pub requests: usize,
    pub skew: f64,
    /// A scan every this many requests (0 = none).
    pub scan_every: usize,
    /// Each scan reads fresh objects worth this fraction of the footprint, once.
    pub scan_fraction: f64,
    pub seed: u64,
}

/// Whole-object reads with Zipf popularity, with periodic one-time scans of fresh large objects
/// (an ETL job or a backup reading through) mixed in.
pub fn zipf_with_scans(spec: &ZipfSpec) -> Trace {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let sizes: Vec<u64> = (0..spec.objects).map(|_| object_size(&mut rng)).collect();
    // Popularity rank -> object id, shuffled so popularity is unrelated to size or id.
    let mut ids: Vec<u64> = (0..spec.objects as u64).collect();
    ids.shuffle(&mut rng);
    let zipf = Zipf::new(spec.objects, spec.skew);
    let mut accesses = Vec::new();
    let mut touched = HashSet::new();
    let mut next_scan_id = 1u64 << 38;
    // Footprint of the Zipf part is known only after drawing; scans use an estimate from sizes.
    let all_bytes: u64 = sizes.iter().sum();
    for r in 0..spec.requests {
        if spec.scan_every > 0 && r > 0 && r % spec.scan_every == 0 {
            let mut left = (all_bytes as f64 * spec.scan_fraction) as u64;
            while left > 0 {
                let size = (64u64 << 20).min(left);
                read_object(&mut accesses, next_scan_id, size);
                next_scan_id += 1;
                left -= size;
            }
        }
        let id = ids[zipf.sample(&mut rng)];
        touched.insert(id);
        read_object(&mut accesses, id, sizes[id as usize]);
    }
    let footprint_bytes = touched.iter().map(|&id| sizes[id as usize]).sum();
    Trace {
        name: spec.name.clone(),
        description: format!(
            "{} whole-object reads, Zipf skew {} over {} objects (16 KiB-64 MiB){}",
            spec.requests,
            spec.skew,
            spec.objects,
            if spec.scan_every > 0 {
                format!(
                    "; every {} reads a one-time scan of {:.0}% of the footprint",
                    spec.scan_every,
                    spec.scan_fraction * 100.0
                )
            } else {
                String::new()
            }
        ),
        accesses,
        footprint_bytes,
        cache_fractions: vec![0.01, 0.02, 0.05, 0.1, 0.2, 0.4],
    }
}

/// A training job: every file of a data set once per epoch in a new shuffled order, with a small
/// set of hot files (labels, index) read between samples.
pub fn training_epochs(files: usize, epochs: usize, seed: u64) -> Trace {
    let mut rng = StdRng::seed_from_u64(seed);
    let sizes: Vec<u64> = (0..files).map(crate::data::epoch_file_size).collect();
    const HOT: u64 = 50;
    let hot_base = 1u64 << 38;
    let mut accesses = Vec::new();
    let mut order: Vec<usize> = (0..files).collect();
    for _ in 0..epochs {
        order.shuffle(&mut rng);
        for (n, &i) in order.iter().enumerate() {
            read_object(&mut accesses, i as u64, sizes[i]);
            if n % 10 == 0 {
                read_object(
                    &mut accesses,
                    hot_base + rng.random_range(0..HOT),
                    256 << 10,
                );
            }
        }
    }
    Trace {
        name: "training-epochs".into(),
        description: format!(
            "{epochs} epochs over {files} files of ~110 KiB in a new shuffled order each, plus {HOT} hot 256 KiB files read every 10 samples"
        ),
        accesses,
        footprint_bytes: sizes.iter().sum::<u64>() + HOT * (256 << 10),
        cache_fractions: vec![0.1, 0.25, 0.5, 0.75, 0.9, 1.0],
    }
}

/// The study's traces; `quick` shrinks them (same shapes, fewer requests).
pub fn standard_traces(quick: bool) -> Vec<Trace> {
    let (objects, requests, files) = if quick {
        (2_000, 20_000, 2_000)
    } else {
        (10_000, 100_000, 10_000)
    };
    let mut traces = Vec::new();
    for (i, skew) in [0.7, 0.9, 1.1].into_iter().enumerate() {
        traces.push(zipf_with_scans(&ZipfSpec {
            name: format!("zipf-{skew}+scans"),
            objects,
            requests,
            skew,
            scan_every: requests / 10,
            scan_fraction: 0.1,
            seed: 100 + i as u64,
        }));
    }
    traces.push(zipf_with_scans(&ZipfSpec {
        name: "zipf-0.9".into(),
        objects,
        requests,
        skew: 0.9,
        scan_every: 0,
        scan_fraction: 0.0,
        seed: 101,
    }));
    traces.push(training_epochs(files, 4, 200));
    traces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_is_skewed() {
        let z = Zipf::new(1000, 1.0);
        let mut rng = StdRng::seed_from_u64(1);
        let top = (0..10_000).filter(|_| z.sample(&mut rng) < 10).count();
        // With skew 1 over 1000 ranks the top 10 hold about 39% of the mass.
        assert!((3_400..4_400).contains(&top), "{top}");
    }

    #[test]
    fn objects_split_into_blocks_with_a_short_tail() {
        let mut out = Vec::new();
        read_object(&mut out, 7, BLOCK * 2 + 5);
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].size, 5);
        assert_eq!(out[0].key, 7 << 24);
        assert_eq!(out.iter().map(|a| a.size).sum::<u64>(), BLOCK * 2 + 5);
    }

    #[test]
    fn epochs_read_every_file_each_time() {
        let t = training_epochs(100, 3, 1);
        let samples = t.accesses.iter().filter(|a| a.key < 1 << 38).count();
        assert_eq!(samples, 300);
    }
}
