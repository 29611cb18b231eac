//! strata-testkit: what Strata's tests share, instead of `#[path]` includes across crates.
//! A dev-dependency only; panics are its error handling (a test that cannot start its server
//! should fail saying why).
//!
//! - [`s3`]: a real S3 server (moto) on loopback, with uploads and source configs;
//! - [`azurite`]: the Azure Storage emulator on loopback, with account-SAS tokens signed by
//!   its well-known key;
//! - [`gcs`]: fake-gcs-server, the GCS API emulator, on loopback;
//! - [`hdfs`]: a real HDFS (Hadoop's MiniDFSCluster, in a JVM) on loopback;
//! - [`webdav`]: a WebDAV server (wsgidav) on loopback, what `http(s)://` sources read;
//! - `agent` (feature `agent`): a real `strata-agent serve` in-process over a local tree;
//! - [`proxy`]: a TCP proxy that counts the HTTP requests a server saw;
//! - [`net`]: free loopback ports and waiting for a server to listen;
//! - [`fuse`]: the FUSE tests' preconditions;
//! - [`data`]: deterministic test contents.

#![forbid(unsafe_code)]

#[cfg(feature = "agent")]
pub mod agent;
pub mod azurite;
pub mod data;
pub mod fuse;
pub mod gcs;
pub mod hdfs;
pub mod net;
pub mod proxy;
pub mod s3;
pub mod webdav;

/// A program `scripts/setup.sh` installs under `~/.cache/strata`: the path in `env` if set,
/// else `~/.cache/strata/<under_cache>`.
pub(crate) fn cached_tool(env: &str, under_cache: &str) -> std::path::PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return path.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    std::path::PathBuf::from(home)
        .join(".cache/strata")
        .join(under_cache)
}
