//! A training epoch as a data loader does it: every file of the set once, in a shuffled order,
//! by N parallel readers.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct EpochResult {
    pub files: usize,
    pub bytes: u64,
    pub seconds: f64,
    /// False when the time limit stopped the epoch before every file was read.
    pub complete: bool,
}

impl EpochResult {
    pub fn files_per_s(&self) -> f64 {
        self.files as f64 / self.seconds
    }
}

/// The order of one epoch: the same for every system (seeded by the epoch number).
pub fn shuffled(files: &[String], epoch: u64) -> Vec<String> {
    let mut order = files.to_vec();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(0x5eed_0000 + epoch));
    order
}

/// Reads each file whole, `readers` at a time; stops starting new files after `limit`.
/// Bytes read are checked against `expected_size` so a short read cannot pass as fast.
pub fn run_epoch(
    root: &Path,
    order: &[String],
    readers: usize,
    limit: Duration,
    expected_size: impl Fn(&str) -> u64 + Sync,
) -> Result<EpochResult> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let results: Vec<Result<(usize, u64)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..readers)
            .map(|_| {
                let next = next.clone();
                let expected_size = &expected_size;
                scope.spawn(move || -> Result<(usize, u64)> {
                    let mut buf = Vec::with_capacity(256 * 1024);
                    let (mut files, mut bytes) = (0usize, 0u64);
                    loop {
                        if start.elapsed() >= limit {
                            break;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(rel) = order.get(i) else { break };
                        let path: PathBuf = root.join(rel);
                        buf.clear();
                        let n = std::fs::File::open(&path)
                            .and_then(|mut f| f.read_to_end(&mut buf))
                            .map_err(|e| Error::io(&path, e))?;
                        if n as u64 != expected_size(rel) {
                            return Err(Error::Parse {
                                what: path.display().to_string(),
                                detail: format!("read {n} bytes, expected {}", expected_size(rel)),
                            });
                        }
                        files += 1;
                        bytes += n as u64;
                    }
                    Ok((files, bytes))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("reader thread panicked"))
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let (mut files, mut bytes) = (0, 0);
    for r in results {
        let (f, b) = r?;
        files += f;
        bytes += b;
    }
    Ok(EpochResult {
        files,
        bytes,
        seconds,
        complete: files == order.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_file_once_and_checks_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
        for (i, n) in names.iter().enumerate() {
            std::fs::write(dir.path().join(n), vec![1u8; i + 1]).unwrap();
        }
        let size = |rel: &str| rel[1..].parse::<u64>().unwrap() + 1;
        let order = shuffled(&names, 1);
        assert_ne!(order, names, "not shuffled");
        assert_eq!(order, shuffled(&names, 1), "not deterministic");
        let r = run_epoch(dir.path(), &order, 4, Duration::from_secs(60), size).unwrap();
        assert_eq!(r.files, 50);
        assert_eq!(r.bytes, (1..=50).sum::<u64>());
        assert!(r.complete);
        std::fs::write(dir.path().join("f3"), b"x").unwrap();
        assert!(run_epoch(dir.path(), &order, 2, Duration::from_secs(60), size).is_err());
    }
}
