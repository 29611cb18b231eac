//! The agent's side of the holder socket.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};

use crate::proto::{MAX_PACKET, Reply, Request};
use crate::{Error, Result};

/// What the agent asks the holder to mount, or to hand over if it holds it already.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AttachRequest {
    pub mountpoint: PathBuf,
    pub fsname: String,
    pub allow_other: bool,
    /// Mount writable (a dataset with a source that takes writes); read-only otherwise.
    #[serde(default)]
    pub writable: bool,
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

/// A connection to the holder. The holder counts the agent as gone when it closes, so
/// keep it open for as long as the agent serves its mounts.
#[derive(Debug)]
pub struct HolderClient {
    socket: PathBuf,
    /// One request and its reply at a time.
    conn: Mutex<OwnedFd>,
    /// The same socket, for [`HolderClient::wait_closed`] to watch without the lock.
    watch: OwnedFd,
}

/// How long [`connect_or_spawn`] waits for a freshly spawned holder.
const SPAWN_WAIT: Duration = Duration::from_secs(5);

/// Connects to the holder on `socket`; if none listens, calls `spawn` (which starts a
/// detached holder process) and retries for up to 5 s.
///
/// `spawn` runs in the caller: a process that has files open on a FUSE mount nobody
/// serves should not fork/exec, because exec closes inherited descriptors and each
/// close of a FUSE file waits for FLUSH (the integration tests trip over this).
pub fn connect_or_spawn(
    socket: &Path,
    spawn: impl FnOnce() -> std::io::Result<()>,
) -> Result<HolderClient> {
    match HolderClient::connect(socket) {
        Err(Error::NotRunning(_)) => {}
        other => return other,
    }
    spawn().map_err(|source| Error::Io {
        context: format!("could not start a holder for {}", socket.display()),
        source,
    })?;
    let deadline = Instant::now() + SPAWN_WAIT;
    loop {
        match HolderClient::connect(socket) {
            Err(Error::NotRunning(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(Error::NotRunning(p)) => {
                return Err(Error::Refused(format!(
                    "a holder was started but nothing listens on {} after {}s; see the holder's log",
                    p.display(),
                    SPAWN_WAIT.as_secs()
                )));
            }
            other => return other,
        }
    }
}

impl HolderClient {
    pub fn connect(socket: &Path) -> Result<Self> {
        let io = |context: String| {
            move |e: Errno| Error::Io {
                context,
                source: e.into(),
            }
        };
        let addr = UnixAddr::new(socket).map_err(io(format!(
            "socket path {} (at most 107 bytes)",
            socket.display()
        )))?;
        let fd = socket_cloexec().map_err(io("creating a unix socket".into()))?;
        loop {
            match connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
                Ok(()) => break,
                Err(Errno::EINTR) => continue,
                Err(Errno::ENOENT | Errno::ECONNREFUSED) => {
                    return Err(Error::NotRunning(socket.to_path_buf()));
                }
                Err(e) => return Err(io(format!("connecting to {}", socket.display()))(e)),
            }
        }
        let watch = fd.try_clone().map_err(|source| Error::Io {
            context: "duplicating the holder socket".into(),
            source,
        })?;
        Ok(HolderClient {
            socket: socket.to_path_buf(),
            conn: Mutex::new(fd),
            watch,
        })
    }

    /// Blocks until the holder closes the connection (it stopped or died: every mount it
    /// held is gone with it). Replies in flight do not wake it.
    pub fn wait_closed(&self) {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        loop {
            // Not POLLIN: a reply waiting to be read must not wake this loop.
            let rdhup = PollFlags::from_bits_retain(libc::POLLRDHUP);
            let mut fds = [PollFd::new(self.watch.as_fd(), rdhup)];
            match poll(&mut fds, PollTimeout::NONE) {
                // Only hang-up, error or RDHUP can be reported (nix's revents() does not
                // know POLLRDHUP, so the count is what tells).
                Ok(n) if n > 0 => return,
                Ok(_) => {}
                Err(Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }

    /// The socket this client is connected to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn attach(&self, req: &AttachRequest) -> Result<Attached> {
        let mut req = req.clone();
        // The holder runs with another working directory; it never guesses ours.
        req.mountpoint = std::path::absolute(&req.mountpoint).map_err(|source| Error::Io {
            context: format!("mount point {}", req.mountpoint.display()),
            source,
        })?;
        let mountpoint = req.mountpoint.clone();
        let (reply, mut fds) = self.call(&Request::Attach(req))?;
        match reply {
            Reply::Ok { taken_over, .. } => {
                let fuse_fd = fds.pop().ok_or_else(|| {
                    Error::Refused(format!(
                        "attach {}: the reply carried no /dev/fuse descriptor",
                        mountpoint.display()
                    ))
                })?;
                Ok(Attached {
                    fuse_fd,
                    taken_over: taken_over.unwrap_or(false),
                })
            }
            Reply::Err { message } => Err(Error::Refused(message)),
        }
    }

    pub fn list(&self) -> Result<Vec<HeldMount>> {
        match self.call(&Request::List)?.0 {
            Reply::Ok { mounts, .. } => Ok(mounts.unwrap_or_default()),
            Reply::Err { message } => Err(Error::Refused(message)),
        }
    }

    pub fn unmount(&self, mountpoint: &Path) -> Result<()> {
        let mountpoint = std::path::absolute(mountpoint).map_err(|source| Error::Io {
            context: format!("mount point {}", mountpoint.display()),
            source,
        })?;
        match self.call(&Request::Unmount { mountpoint })?.0 {
            Reply::Ok { .. } => Ok(()),
            Reply::Err { message } => Err(Error::Refused(message)),
        }
    }

    fn call(&self, req: &Request) -> Result<(Reply, Vec<OwnedFd>)> {
        let payload = serde_json::to_vec(req).expect("requests serialize");
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let io = |what: &str, e: Errno| Error::Io {
            context: format!("{what} {}", self.socket.display()),
            source: e.into(),
        };
        crate::fdpass::send(conn.as_fd(), &payload, None).map_err(|e| io("sending to", e))?;
        let mut buf = vec![0u8; MAX_PACKET];
        let (n, fds) =
            crate::fdpass::recv(conn.as_fd(), &mut buf).map_err(|e| io("receiving from", e))?;
        if n == 0 {
            return Err(Error::Io {
                context: format!(
                    "the holder on {} closed the connection",
                    self.socket.display()
                ),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            });
        }
        let reply = serde_json::from_slice(&buf[..n]).map_err(|e| {
            Error::Refused(format!(
                "unreadable reply from {} ({e}); is the holder the same version as the agent?",
                self.socket.display()
            ))
        })?;
        Ok((reply, fds))
    }
}

pub(crate) fn socket_cloexec() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
}
