//! The FUSE file system over a [`DatasetView`](crate::dataset::DatasetView): read-only,
//! or writable through the engine's write journal when a source has a writeMode.
//!
//! Requests are dispatched by fuser's worker threads and served on the tokio runtime, so
//! slow fetches never block other requests. Fully cached files are opened in passthrough
//! mode (the kernel reads the cache file directly); other files are served by the engine
//! with `FOPEN_KEEP_CACHE` when the object did not change since the last open.
//!
//! - `mount`: options, the mount handle and unmounting, mount point checks;
//! - `filesystem`: the FUSE operations (`impl Filesystem`), errors as errnos;
//! - `changes`: the operations that change the dataset (create, write, rename, ...);
//! - `state`: what is kept between requests (handles, open directories, attributes);
//! - `inodes`: inode numbers and the kernel's lookup counts;
//! - `passthrough`: backing files and the leases that keep them from eviction.

mod changes;
mod filesystem;
mod inodes;
mod mount;
mod passthrough;
mod state;
mod takeover;

pub use mount::{Holder, MountHandle, MountOptions, check_mountpoint, mount};

/// Largest read/write request the kernel may send (1 MiB).
pub const MAX_REQUEST_BYTES: u32 = 1 << 20;
