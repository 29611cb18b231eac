//! The agent's side of the holder socket. (API skeleton: filled in on branch `holder`.)

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// What the agent asks the holder to mount, or to hand over if it holds it already.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AttachRequest {
    pub mountpoint: PathBuf,
    pub fsname: String,
    pub allow_other: bool,
}

/// A connection handed to the agent.
#[derive(Debug)]
pub struct Attached {
    /// The agent's copy of the mount's /dev/fuse descriptor.
    pub fuse_fd: OwnedFd,
    /// True when the holder already held the mount (a previous agent served it and
    /// answered INIT): take it over without a handshake. False: a fresh mount whose INIT
    /// waits on the descriptor.
    pub taken_over: bool,
}

/// A mount the holder holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HeldMount {
    pub mountpoint: PathBuf,
    pub fsname: String,
    /// Served by a connected agent now.
    pub attached: bool,
    /// Answering requests with EIO because no agent came back in time.
    pub answering_eio: bool,
}

/// A connection to the holder. The holder counts the agent as gone when it closes.
#[derive(Debug)]
pub struct HolderClient {
    _socket: PathBuf,
}

impl HolderClient {
    pub fn connect(socket: &Path) -> Result<Self> {
        Err(Error::NotRunning(socket.to_path_buf()))
    }
    pub fn attach(&self, _req: &AttachRequest) -> Result<Attached> {
        Err(Error::Refused("not built yet".into()))
    }
    pub fn list(&self) -> Result<Vec<HeldMount>> {
        Ok(Vec::new())
    }
    pub fn unmount(&self, _mountpoint: &Path) -> Result<()> {
        Ok(())
    }
}

/// Connects to the holder at `socket`; if none listens, calls `spawn` and retries.
pub fn connect_or_spawn(
    socket: &Path,
    spawn: impl FnOnce() -> std::io::Result<()>,
) -> Result<HolderClient> {
    let _ = spawn;
    HolderClient::connect(socket)
}
