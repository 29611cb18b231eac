//! The mount holder: keeps each dataset's `/dev/fuse` connection open while agents
//! restart, crash or upgrade, and hands it to the next agent over a unix socket.
//! See docs/design/mount-takeover.md.

mod client;
pub use client::{AttachRequest, Attached, HeldMount, HolderClient};

/// Errors of the holder and its client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no mount holder listens on {0}")]
    NotRunning(std::path::PathBuf),
    #[error("mount holder: {0}")]
    Refused(String),
    #[error("mount holder {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;
