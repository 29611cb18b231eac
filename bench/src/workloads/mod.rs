//! Workload drivers: fio for large files, a shuffled multi-reader for many small files, `find`
//! for listings, plain ranged GETs through object_store as the cold floor, and a writer with
//! the raw-PUT ceiling and a bucket watcher for writes.

pub mod epoch;
pub mod fio;
pub mod floor;
pub mod listing;
pub mod restart;
pub mod write;
