//! The mount holder: keeps each dataset's `/dev/fuse` connection open while agents
//! restart, crash or upgrade, and hands it to the next agent over a unix socket.
//! See docs/design/mount-takeover.md, section 4.
//!
//! # Protocol
//!
//! A unix `SOCK_SEQPACKET` socket (mode 0600; only the holder's own uid may connect,
//! checked with `SO_PEERCRED`). Each packet is one JSON object; a reply may carry one
//! descriptor (`SCM_RIGHTS`). Requests, tagged by `op`:
//!
//! - `{"op":"attach","mountpoint":P,"fsname":S,"allow_other":B,"writable":W}`: if the
//!   holder does not hold `P`, it mounts it (`fuse.strata`, nodev, nosuid, read-only
//!   unless `writable`) and replies with a
//!   copy of the new `/dev/fuse` fd and `taken_over: false`; the kernel's FUSE_INIT waits
//!   on it for the agent. If it holds `P` and no live connection serves it, it replies with
//!   a copy of the kept fd and `taken_over: true`: the connection is initialized, the agent
//!   skips the handshake and sends FUSE_NOTIFY_RESEND before it reads. A mount served by
//!   another live connection is refused.
//! - `{"op":"list"}`: every held mount.
//! - `{"op":"unmount","mountpoint":P}`: lazy unmount and forget `P` (unknown `P` is fine).
//!
//! Replies: `{"status":"ok",...}` or `{"status":"err","message":M}`, where `M` names the
//! mount point and what to do.
//!
//! # Lifecycle of a mount
//!
//! 1. *Attached*: one connection owns it. The holder never reads its fd then.
//! 2. *Orphaned*: the owning connection closed (the agent exited or was killed; the
//!    kernel closes a dead process's sockets). Requests queue in the kernel, readers block.
//!    An `attach` from any connection takes it over.
//! 3. *EIO*: orphaned longer than `orphan_timeout`. The holder sends FUSE_NOTIFY_RESEND
//!    once (requests the dead agent had read come back) and answers every request itself:
//!    EIO, or success for RELEASE/RELEASEDIR/FLUSH/DESTROY, nothing for FORGET and
//!    INTERRUPT. An `attach` still takes it over, between two requests.
//! 4. *Gone*: `unmount`, or the kernel reports the connection gone (ENODEV).
//!
//! Several agents may be connected at once (e.g. two standalone `strata-agent mount`
//! processes), each owning its own mounts; the design note's "one agent at a time" holds
//! per mount: an old and a new agent never read the same connection at once.
//!
//! If the holder itself exits, every mount it holds loses its connection (ENOTCONN), so
//! it is kept small and is not upgraded together with the agent.

mod client;
mod eio;
mod fdpass;
mod mountinfo;
mod proto;
mod server;

use std::path::PathBuf;
use std::time::Duration;

pub use client::{AttachRequest, Attached, HeldMount, HolderClient, connect_or_spawn};
pub use server::{HolderConfig, run};

/// Where the holder listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/strata/holder.sock";

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
    #[error("another mount holder already listens on {0}; stop it first or use another --socket")]
    AlreadyRunning(std::path::PathBuf),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The holder's command line, for `strata-holder` and the agent's hidden
/// `strata-agent holder` subcommand alike.
#[derive(Debug, Clone, clap::Args)]
pub struct HolderArgs {
    /// Unix socket agents connect to.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// How long a mount whose agent died waits for a new one before requests get EIO.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub orphan_timeout: Duration,
    /// Exit once no mounts are held and no agent is connected.
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

/// Logs to stderr, filtered by `STRATA_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
