//! The holder's main loop: one thread, `poll(2)` over the listening socket, the agent
//! connections, a signalfd and the /dev/fuse descriptors of mounts answering EIO.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{Backlog, UnixAddr, bind, getsockopt, listen, sockopt};

use crate::client::{AttachRequest, HeldMount};
use crate::eio;
use crate::fdpass;
use crate::mountinfo;
use crate::proto::{MAX_PACKET, Reply, Request};
use crate::{Error, Result};

/// How the holder runs; see [`crate::HolderArgs`] for the command line.
#[derive(Debug, Clone)]
pub struct HolderConfig {
    /// The unix socket agents connect to (created mode 0600).
    pub socket: PathBuf,
    /// How long an orphaned mount's requests wait for a new agent before they get EIO.
    pub orphan_timeout: Duration,
    /// Exit once no mount is held and no agent is connected (after the first agent).
    pub exit_when_idle: bool,
}

struct Conn {
    fd: OwnedFd,
    pid: i32,
}

struct Held {
    /// Canonical path, as mounted.
    mountpoint: PathBuf,
    /// The (absolute) paths agents used for it, matched without touching the file
    /// system: stat on a mount whose agent is dead would block this very thread.
    aliases: Vec<PathBuf>,
    fsname: String,
    fd: OwnedFd,
    /// mountinfo `major:minor` right after mounting: tells our mount from a later one.
    dev: Option<String>,
    owner: Option<u64>,
    orphaned_at: Option<Instant>,
    eio: bool,
    counts: eio::Counts,
}

impl Held {
    fn matches(&self, path: &Path) -> bool {
        self.mountpoint == path || self.aliases.iter().any(|a| a == path)
    }
}

#[derive(Clone, Copy)]
enum Token {
    Listener,
    Signal,
    Conn(u64),
    Mount(u64),
}

struct Holder {
    config: HolderConfig,
    listener: OwnedFd,
    conns: HashMap<u64, Conn>,
    mounts: BTreeMap<u64, Held>,
    next_id: u64,
    seen_client: bool,
    /// Since when nothing is held and no agent connected (with `exit_when_idle`).
    idle_since: Option<Instant>,
    euid: u32,
    egid: u32,
    buf: eio::Buffer,
    packet: Vec<u8>,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(Errno) -> Error {
    let context = context.into();
    move |e| Error::Io {
        context,
        source: e.into(),
    }
}

/// How long a holder started with `exit_when_idle` stays with nothing to hold, so that an
/// agent restarting at once (a test, a supervisor) finds it still there.
const IDLE_GRACE: Duration = Duration::from_secs(2);

/// Runs the holder until a signal (SIGTERM/SIGINT) or, with `exit_when_idle`, until
/// nothing is left to hold. Call it before the process starts other threads: it blocks
/// SIGTERM and SIGINT in the calling thread to read them from a signalfd.
pub fn run(config: HolderConfig) -> Result<()> {
    let listener = listen_on(&config.socket)?;
    let socket_ino = std::fs::metadata(&config.socket).map(|m| m.ino()).ok();
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals
        .thread_block()
        .map_err(io_err("blocking SIGTERM/SIGINT"))?;
    let sigfd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(io_err("creating a signalfd"))?;
    tracing::info!(
        socket = %config.socket.display(),
        orphan_timeout = %humantime::format_duration(config.orphan_timeout),
        exit_when_idle = config.exit_when_idle,
        "mount holder listening"
    );
    let mut holder = Holder {
        config,
        listener,
        conns: HashMap::new(),
        mounts: BTreeMap::new(),
        next_id: 1,
        seen_client: false,
        idle_since: None,
        euid: nix::unistd::geteuid().as_raw(),
        egid: nix::unistd::getegid().as_raw(),
        buf: eio::Buffer::new(),
        packet: vec![0u8; MAX_PACKET],
    };
    let result = holder.run(&sigfd);
    // Remove the socket file only if it is still ours, so a successor's is left alone.
    let path = &holder.config.socket;
    if socket_ino.is_some() && std::fs::metadata(path).map(|m| m.ino()).ok() == socket_ino {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Binds the listening socket, replacing a stale socket file nobody answers on.
fn listen_on(path: &Path) -> Result<OwnedFd> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| Error::Io {
            context: format!("creating {}", parent.display()),
            source,
        })?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(Error::Refused(format!(
                "{} exists and is not a socket; remove it or choose another --socket",
                path.display()
            )));
        }
        match crate::HolderClient::connect(path) {
            Ok(_) => return Err(Error::AlreadyRunning(path.to_path_buf())),
            Err(Error::NotRunning(_)) => {
                tracing::info!(socket = %path.display(), "removing stale socket file");
                let _ = std::fs::remove_file(path);
            }
            Err(e) => return Err(e),
        }
    }
    let addr = UnixAddr::new(path).map_err(io_err(format!(
        "socket path {} (at most 107 bytes)",
        path.display()
    )))?;
    let fd = crate::client::socket_cloexec().map_err(io_err("creating a unix socket"))?;
    match bind(fd.as_raw_fd(), &addr) {
        Err(Errno::EADDRINUSE) => return Err(Error::AlreadyRunning(path.to_path_buf())),
        r => r.map_err(io_err(format!("binding {}", path.display())))?,
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        Error::Io {
            context: format!("chmod 0600 {}", path.display()),
            source,
        }
    })?;
    listen(&fd, Backlog::new(64).expect("valid backlog"))
        .map_err(io_err(format!("listening on {}", path.display())))?;
    Ok(fd)
}

/// Makes an absolute path canonical without touching the file system (`.`, `..`, `//`).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

fn set_nonblocking(fd: &OwnedFd, on: bool) -> nix::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_NONBLOCK
    } else {
        flags - OFlag::O_NONBLOCK
    };
    fcntl(fd, FcntlArg::F_SETFL(flags)).map(drop)
}

impl Holder {
    fn run(&mut self, sigfd: &SignalFd) -> Result<()> {
        loop {
            self.expire_orphans();
            let idle = self.config.exit_when_idle
                && self.seen_client
                && self.conns.is_empty()
                && self.mounts.is_empty();
            if !idle {
                self.idle_since = None;
            } else if self.idle_since.get_or_insert_with(Instant::now).elapsed() >= IDLE_GRACE {
                // The socket file goes first: an agent starting now finds no holder and
                // starts a new one instead of connecting to this one as it leaves. One
                // that connected just before is still in the backlog: take it and stay.
                let _ = std::fs::remove_file(&self.config.socket);
                if !self.accept_pending() {
                    tracing::info!("no mounts and no agents left; mount holder exiting");
                    return Ok(());
                }
            }
            let timeout = self
                .next_deadline()
                .map(|d| {
                    // Round up so the deadline has passed when poll returns.
                    let d = d.saturating_duration_since(Instant::now()) + Duration::from_millis(1);
                    PollTimeout::try_from(d.min(Duration::from_secs(3600)))
                        .unwrap_or(PollTimeout::NONE)
                })
                .unwrap_or(PollTimeout::NONE);

            let mut tokens = vec![Token::Listener, Token::Signal];
            let mut fds = vec![
                PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
            ];
            for (id, c) in &self.conns {
                tokens.push(Token::Conn(*id));
                fds.push(PollFd::new(c.fd.as_fd(), PollFlags::POLLIN));
            }
            // Only EIO-mode mounts: polling an agent's fd would wake this thread on
            // every request it serves.
            for (id, m) in self.mounts.iter().filter(|(_, m)| m.eio) {
                tokens.push(Token::Mount(*id));
                fds.push(PollFd::new(m.fd.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(io_err("poll")(e)),
            }
            let ready: Vec<(Token, PollFlags)> = tokens
                .into_iter()
                .zip(
                    fds.iter()
                        .map(|f| f.revents().unwrap_or(PollFlags::empty())),
                )
                .filter(|(_, r)| !r.is_empty())
                .collect();
            drop(fds);

            for (token, revents) in ready {
                match token {
                    Token::Signal => {
                        if let Ok(Some(info)) = sigfd.read_signal() {
                            let name = Signal::try_from(info.ssi_signo as i32)
                                .map(|s| s.as_str())
                                .unwrap_or("signal");
                            tracing::warn!(
                                "{name}: holder stopping: {} mounts lose their connection",
                                self.mounts.len()
                            );
                            // Detached rather than left as dead mounts: the paths answer
                            // again at once (empty), and nothing blocks the next mount.
                            for m in self.mounts.values() {
                                if let Err(e) = nix::mount::umount2(
                                    &m.mountpoint,
                                    nix::mount::MntFlags::MNT_DETACH,
                                ) {
                                    tracing::warn!(mountpoint = %m.mountpoint.display(), error = %e, "detaching failed");
                                }
                            }
                            return Ok(());
                        }
                    }
                    Token::Listener => self.accept(),
                    Token::Conn(id) => self.on_conn(id, revents),
                    Token::Mount(id) => self.serve_eio(id),
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.mounts
            .values()
            .filter(|m| !m.eio)
            .filter_map(|m| m.orphaned_at)
            .map(|t| t + self.config.orphan_timeout)
            .chain(self.idle_since.map(|t| t + IDLE_GRACE))
            .min()
    }

    /// Accepts a connection waiting in the backlog, if there is one.
    fn accept_pending(&mut self) -> bool {
        let mut fds = [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
        if !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0) {
            return false;
        }
        let before = self.conns.len();
        self.accept();
        self.conns.len() > before
    }

    fn expire_orphans(&mut self) {
        let now = Instant::now();
        let timeout = self.config.orphan_timeout;
        let mut gone = Vec::new();
        for (id, m) in self.mounts.iter_mut() {
            let Some(since) = m.orphaned_at else { continue };
            if m.eio || now < since + timeout {
                continue;
            }
            tracing::warn!(
                mountpoint = %m.mountpoint.display(),
                "no agent came back within {}; answering requests with EIO",
                humantime::format_duration(timeout)
            );
            m.eio = true;
            if let Err(e) = set_nonblocking(&m.fd, true) {
                tracing::warn!(mountpoint = %m.mountpoint.display(), "O_NONBLOCK on /dev/fuse: {e}");
            }
            // Requests the dead agent had read come back, to be answered with EIO.
            if eio::resend(m.fd.as_fd()) == eio::Outcome::Gone {
                gone.push(*id);
            }
        }
        for id in gone {
            self.drop_gone(id);
        }
    }

    fn serve_eio(&mut self, id: u64) {
        let Some(m) = self.mounts.get_mut(&id) else {
            return;
        };
        if !m.eio {
            return; // handed to an agent earlier in this round
        }
        if eio::serve(m.fd.as_fd(), &mut self.buf, &mut m.counts) == eio::Outcome::Gone {
            self.drop_gone(id);
        }
    }

    fn drop_gone(&mut self, id: u64) {
        if let Some(m) = self.mounts.remove(&id) {
            tracing::warn!(
                mountpoint = %m.mountpoint.display(),
                eio_replies = m.counts.eio,
                "the FUSE connection is gone (unmounted or aborted); no longer holding it"
            );
        }
    }

    fn accept(&mut self) {
        let fd = match fdpass::accept(self.listener.as_fd()) {
            Ok(fd) => fd,
            Err(Errno::EAGAIN | Errno::EINTR | Errno::ECONNABORTED) => return,
            Err(e) => {
                tracing::warn!("accepting an agent connection: {e}");
                return;
            }
        };
        let cred = match getsockopt(&fd, sockopt::PeerCredentials) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("SO_PEERCRED of a new connection: {e}; closing it");
                return;
            }
        };
        if cred.uid() != self.euid {
            tracing::warn!(
                pid = cred.pid(),
                uid = cred.uid(),
                "refusing a connection from another user"
            );
            let msg = format!(
                "refused: uid {} may not use this holder; run the agent as uid {}",
                cred.uid(),
                self.euid
            );
            let _ = fdpass::send(fd.as_fd(), &reply_bytes(&Reply::err(msg)), None);
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.seen_client = true;
        tracing::debug!(pid = cred.pid(), "agent connected");
        self.conns.insert(
            id,
            Conn {
                fd,
                pid: cred.pid(),
            },
        );
    }

    fn on_conn(&mut self, id: u64, revents: PollFlags) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        if !revents.contains(PollFlags::POLLIN) {
            self.close_conn(id);
            return;
        }
        let n = match fdpass::recv(conn.fd.as_fd(), &mut self.packet) {
            Ok((0, _)) => {
                self.close_conn(id);
                return;
            }
            Ok((n, _fds)) => n, // descriptors from agents are not expected; dropped
            Err(Errno::EAGAIN) => return,
            Err(e) => {
                tracing::warn!(
                    pid = conn.pid,
                    "reading from agent: {e}; closing the connection"
                );
                self.close_conn(id);
                return;
            }
        };
        let (reply, fd) = match serde_json::from_slice::<Request>(&self.packet[..n]) {
            Ok(Request::Attach(req)) => match self.attach(id, req) {
                Ok((fd, taken_over)) => (
                    Reply::Ok {
                        taken_over: Some(taken_over),
                        mounts: None,
                    },
                    Some(fd),
                ),
                Err(msg) => (Reply::err(msg), None),
            },
            Ok(Request::List) => (
                Reply::Ok {
                    taken_over: None,
                    mounts: Some(self.list()),
                },
                None,
            ),
            Ok(Request::Unmount { mountpoint }) => match self.unmount(&mountpoint) {
                Ok(()) => (Reply::ok(), None),
                Err(msg) => (Reply::err(msg), None),
            },
            Err(e) => (
                Reply::err(format!(
                    "unreadable request ({e}); is the agent the same version as the holder?"
                )),
                None,
            ),
        };
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        if let Err(e) = fdpass::send(
            conn.fd.as_fd(),
            &reply_bytes(&reply),
            fd.as_ref().map(|f| f.as_fd()),
        ) {
            tracing::warn!(
                pid = conn.pid,
                "replying to agent: {e}; closing the connection"
            );
            self.close_conn(id);
        }
    }

    fn close_conn(&mut self, id: u64) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        let now = Instant::now();
        let mut orphaned = 0;
        let entries = mountinfo::read().unwrap_or_default();
        let mut unmounted = Vec::new();
        for (mid, m) in self.mounts.iter_mut().filter(|(_, m)| m.owner == Some(id)) {
            m.owner = None;
            if !still_mounted(&entries, m) {
                unmounted.push(*mid);
                continue;
            }
            m.orphaned_at = Some(now);
            orphaned += 1;
            tracing::warn!(
                mountpoint = %m.mountpoint.display(),
                pid = conn.pid,
                "agent is gone; waiting up to {} for an agent",
                humantime::format_duration(self.config.orphan_timeout)
            );
        }
        for mid in unmounted {
            if let Some(m) = self.mounts.remove(&mid) {
                tracing::info!(mountpoint = %m.mountpoint.display(), "was unmounted meanwhile; no longer holding it");
            }
        }
        if orphaned == 0 {
            tracing::debug!(pid = conn.pid, "agent disconnected");
        }
    }

    fn find(&self, path: &Path) -> Option<u64> {
        self.mounts
            .iter()
            .find(|(_, m)| m.matches(path))
            .map(|(id, _)| *id)
    }

    /// Finds the held mount for `path`: first by the path as given (no syscalls), then
    /// by its canonical form. Returns the canonical path when it had to resolve it.
    fn resolve(&self, path: &Path) -> std::result::Result<(Option<u64>, PathBuf), String> {
        if !path.is_absolute() {
            return Err(format!(
                "mount point {} is not an absolute path",
                path.display()
            ));
        }
        let path = lexical(path);
        if let Some(id) = self.find(&path) {
            return Ok((Some(id), self.mounts[&id].mountpoint.clone()));
        }
        let canonical = std::fs::canonicalize(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "mount point {} does not exist; create the directory first",
                    path.display()
                )
            } else {
                format!("mount point {}: {e}", path.display())
            }
        })?;
        Ok((self.find(&canonical), canonical))
    }

    fn attach(
        &mut self,
        conn: u64,
        req: AttachRequest,
    ) -> std::result::Result<(OwnedFd, bool), String> {
        let pid = self.conns.get(&conn).map(|c| c.pid).unwrap_or(0);
        let alias = lexical(&req.mountpoint);
        let (held, canonical) = self.resolve(&req.mountpoint)?;
        if let Some(id) = held {
            let owner_pid = self.mounts[&id]
                .owner
                .filter(|o| *o != conn)
                .and_then(|o| self.conns.get(&o))
                .map(|c| c.pid);
            if let Some(owner_pid) = owner_pid {
                return Err(format!(
                    "{} is busy: served by another agent (pid {owner_pid}); stop it first",
                    canonical.display()
                ));
            }
            let entries =
                mountinfo::read().map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
            if still_mounted(&entries, &self.mounts[&id]) {
                let m = self.mounts.get_mut(&id).expect("found above");
                let fd = m.fd.try_clone().map_err(|e| {
                    format!(
                        "duplicating the /dev/fuse descriptor of {}: {e}",
                        m.mountpoint.display()
                    )
                })?;
                if m.eio {
                    // The agent's reads must block; O_NONBLOCK is shared with our copy.
                    set_nonblocking(&m.fd, false).map_err(|e| {
                        format!(
                            "clearing O_NONBLOCK on {}'s /dev/fuse: {e}",
                            m.mountpoint.display()
                        )
                    })?;
                    m.eio = false;
                }
                m.owner = Some(conn);
                m.orphaned_at = None;
                if !m.aliases.contains(&alias) {
                    m.aliases.push(alias);
                }
                tracing::info!(
                    mountpoint = %m.mountpoint.display(),
                    pid,
                    eio_replies = m.counts.eio,
                    "agent took over the mount"
                );
                m.counts = eio::Counts::default();
                return Ok((fd, true));
            }
            let m = self.mounts.remove(&id).expect("found above");
            tracing::info!(mountpoint = %m.mountpoint.display(), "was unmounted meanwhile; mounting it again");
        }
        let mut held = self.mount_fresh(&canonical, &req.fsname, req.allow_other, req.writable)?;
        let fd = held.fd.try_clone().map_err(|e| {
            format!(
                "duplicating the /dev/fuse descriptor of {}: {e}",
                canonical.display()
            )
        })?;
        held.owner = Some(conn);
        if alias != canonical {
            held.aliases.push(alias);
        }
        tracing::info!(mountpoint = %canonical.display(), fsname = %held.fsname, pid, "mounted");
        let id = self.next_id;
        self.next_id += 1;
        self.mounts.insert(id, held);
        Ok((fd, false))
    }

    fn mount_fresh(
        &self,
        path: &Path,
        fsname: &str,
        allow_other: bool,
        writable: bool,
    ) -> std::result::Result<Held, String> {
        let entries =
            mountinfo::read().map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
        if let Some(e) = mountinfo::find(&entries, path) {
            return Err(format!(
                "{} is already a mount point ({} from {}); unmount it first (umount -l {}) or choose another directory",
                path.display(),
                e.fstype,
                e.source,
                path.display()
            ));
        }
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("mount point {} is not a directory", path.display())),
            Err(e) => return Err(format!("mount point {}: {e}", path.display())),
        }
        // std opens with O_CLOEXEC.
        let fuse = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "/dev/fuse does not exist: load the fuse module (modprobe fuse)".to_string()
                }
                std::io::ErrorKind::PermissionDenied => {
                    "opening /dev/fuse: permission denied; run the holder as root".to_string()
                }
                _ => format!("opening /dev/fuse: {e}"),
            })?;
        let fd = OwnedFd::from(fuse);
        let fsname = if fsname.is_empty() { "strata" } else { fsname };
        let data = format!(
            "fd={},rootmode=40000,user_id={},group_id={},default_permissions{}",
            fd.as_raw_fd(),
            self.euid,
            self.egid,
            if allow_other { ",allow_other" } else { "" }
        );
        mount(
            Some(fsname),
            path,
            Some("fuse.strata"),
            if writable {
                MsFlags::MS_NODEV | MsFlags::MS_NOSUID
            } else {
                MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID
            },
            Some(data.as_str()),
        )
        .map_err(|e| match e {
            Errno::EPERM => format!(
                "mounting {}: operation not permitted; the holder needs root (CAP_SYS_ADMIN)",
                path.display()
            ),
            e => format!("mounting {}: {e}", path.display()),
        })?;
        let dev = mountinfo::read()
            .ok()
            .and_then(|entries| mountinfo::find(&entries, path))
            .map(|e| e.dev);
        Ok(Held {
            mountpoint: path.to_path_buf(),
            aliases: Vec::new(),
            fsname: fsname.to_string(),
            fd,
            dev,
            owner: None,
            orphaned_at: None,
            eio: false,
            counts: eio::Counts::default(),
        })
    }

    fn unmount(&mut self, path: &Path) -> std::result::Result<(), String> {
        let id = match self.resolve(path) {
            Ok((Some(id), _)) => id,
            // Not held (or not even there): nothing to do.
            Ok((None, _)) | Err(_) => return Ok(()),
        };
        let m = &self.mounts[&id];
        match umount2(&m.mountpoint, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
            Err(e) => {
                return Err(format!(
                    "unmounting {}: {e}; try umount -l {}",
                    m.mountpoint.display(),
                    m.mountpoint.display()
                ));
            }
        }
        let m = self.mounts.remove(&id).expect("found above");
        tracing::info!(mountpoint = %m.mountpoint.display(), "unmounted");
        Ok(())
    }

    fn list(&self) -> Vec<HeldMount> {
        self.mounts
            .values()
            .map(|m| HeldMount {
                mountpoint: m.mountpoint.clone(),
                fsname: m.fsname.clone(),
                attached: m.owner.is_some(),
                answering_eio: m.eio,
            })
            .collect()
    }
}

/// Our mount is still there: same mount point and, when known, the same connection.
fn still_mounted(entries: &[mountinfo::MountEntry], m: &Held) -> bool {
    entries.iter().any(|e| {
        e.mount_point == m.mountpoint
            && e.fstype == "fuse.strata"
            && m.dev.as_ref().is_none_or(|d| *d == e.dev)
    })
}

fn reply_bytes(reply: &Reply) -> Vec<u8> {
    serde_json::to_vec(reply).expect("replies serialize")
}
