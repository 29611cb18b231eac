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
pub use client::connect_or_spawn;

/// How the holder runs.
#[derive(Debug, Clone)]
pub struct HolderConfig {
    pub socket: std::path::PathBuf,
    pub orphan_timeout: std::time::Duration,
    pub exit_when_idle: bool,
}

/// Flags of the holder (`strata-holder`, `strata-agent holder`).
#[derive(clap::Args, Debug, Clone)]
pub struct HolderArgs {
    #[arg(long)]
    pub socket: std::path::PathBuf,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub orphan_timeout: std::time::Duration,
    #[arg(long)]
    pub exit_when_idle: bool,
}

impl HolderArgs {
    pub fn into_config(self) -> HolderConfig {
        HolderConfig {
            socket: self.socket,
            orphan_timeout: self.orphan_timeout,
            exit_when_idle: self.exit_when_idle,
        }
    }
}

/// Runs the holder until it is stopped.
pub fn run(_config: HolderConfig) -> Result<()> {
    Err(Error::Refused("not built yet".into()))
}
