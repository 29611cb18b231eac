//! Workload drivers: fio for large files, a shuffled multi-reader for many small files, `find`
//! for listings, and plain ranged GETs through object_store as the cold floor.

pub mod epoch;
pub mod fio;
pub mod floor;
pub mod listing;
pub mod restart;
