//! Mounting and unmounting: the mount options, the handle that unmounts (detaching a busy
//! mount point), and the checks a mount point must pass first.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};
use strata_holder::{AttachRequest, HolderClient};

use super::filesystem::StrataFs;
use super::state::FsState;
use super::takeover::{Restored, TakeoverLog};
use crate::dataset::DatasetView;
use crate::{Error, Result};

/// A mount holder to mount through, so that mounts outlive this agent: the holder keeps
/// each `/dev/fuse` connection, and a new agent takes it over (docs/architecture.md,
/// "Mounts that outlive the agent").
#[derive(Debug, Clone)]
pub struct Holder {
    pub client: Arc<HolderClient>,
    /// Where the takeover logs are kept: tmpfs (`/run`), never the cache disk.
    pub state_dir: PathBuf,
}

impl Holder {
    /// The takeover log of the mount at `mountpoint`.
    fn log_path(&self, mountpoint: &Path) -> PathBuf {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(mountpoint.as_os_str().as_encoded_bytes());
        let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        self.state_dir.join(format!("{name}.log"))
    }
}

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Let every user read the mount (`allow_other`); needed when pods run as non-root.
    pub allow_other: bool,
    /// Open fully cached files in passthrough mode when the kernel allows it.
    pub passthrough: bool,
    /// fuser worker threads reading requests from /dev/fuse.
    pub threads: usize,
    /// Shown as the file system source in /proc/mounts (default "strata:<ns>/<name>").
    pub fsname: Option<String>,
    /// Mount through this holder, so the mount outlives the agent (None: the agent owns
    /// the mount, which dies with it).
    pub holder: Option<Holder>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: true,
            passthrough: true,
            threads: 4,
            fsname: None,
            holder: None,
        }
    }
}

/// A mounted file system. Unmounts on [`MountHandle::unmount`] or when dropped.
pub struct MountHandle {
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
    fs: Arc<FsState>,
    holder: Option<Holder>,
    taken_over: bool,
}

impl std::fmt::Debug for MountHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountHandle")
            .field("mountpoint", &self.mountpoint)
            .finish()
    }
}

impl MountHandle {
    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Serves the mount from the dataset's new view (its configuration changed): new
    /// lookups and opens use it, open files keep reading what they opened.
    pub fn use_view(&self, view: Arc<DatasetView>) {
        self.fs.replace_view(view);
    }

    /// Opens served in passthrough mode so far, and opens where passthrough was refused.
    pub fn passthrough_counts(&self) -> (u64, u64) {
        (
            self.fs.passthrough_ok.load(Ordering::Relaxed),
            self.fs.passthrough_refused.load(Ordering::Relaxed),
        )
    }

    /// FUSE_READ requests the agent has answered so far: reads of a file opened in
    /// passthrough mode go to the backing file in the kernel and never count.
    pub fn reads_served(&self) -> u64 {
        self.fs.reads.load(Ordering::Relaxed)
    }

    /// True when this agent took the mount over from a previous one (through the holder).
    pub fn taken_over(&self) -> bool {
        self.taken_over
    }

    /// Unmounts and waits for the session thread to end.
    pub fn unmount(mut self) -> Result<()> {
        self.do_unmount()
    }

    /// Leaves the mount to its holder for the next agent: nothing is unmounted and no
    /// passthrough backing id is closed (they belong to the connection, and files open
    /// in passthrough mode keep using them). The agent exits after this.
    pub fn leave_to_holder(mut self) {
        if self.holder.is_some() {
            std::mem::forget(self.session.take());
            std::mem::forget(self.fs.clone());
        }
    }

    fn do_unmount(&mut self) -> Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let failed = |e: std::io::Error| Error::Mount {
            mountpoint: self.mountpoint.clone(),
            message: format!("unmount failed: {e}"),
        };
        if let Some(holder) = &self.holder {
            // The holder detaches the mount and closes its copy of the connection; the
            // session ends when the kernel drops the connection (at once unless a file
            // is still open under the detached mount).
            holder
                .client
                .unmount(&self.mountpoint)
                .map_err(|e| Error::Mount {
                    mountpoint: self.mountpoint.clone(),
                    message: format!("unmount failed: {e}"),
                })?;
            if let Some(log) = &self.fs.log {
                log.remove();
            }
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(session.join());
            });
            if rx.recv_timeout(BUSY_UNMOUNT_WAIT).is_err() {
                tracing::warn!(mountpoint = %self.mountpoint.display(),
                    "files under the detached mount point are still open; \
                     reads of them fail once the agent exits");
            }
            tracing::info!(mountpoint = %self.mountpoint.display(), "unmounted");
            return Ok(());
        }
        // fuser unmounts with a plain umount(2), which fails while a process has a file
        // open or its working directory under the mount point; the agent would then exit
        // and leave a dead mount behind ("Transport endpoint is not connected") that also
        // blocks the next mount there. Detached instead, the mount point is free at once
        // and the open files are served until their users let go (or the wait ends).
        // MNT_EXPIRE unmounts nothing on a first call: it fails with EBUSY if the mount
        // is in use (EAGAIN if not), which is what tells the two cases apart.
        match nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_EXPIRE) {
            Err(nix::errno::Errno::EBUSY) => {
                nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH)
                    .map_err(|e| failed(e.into()))?;
                tracing::warn!(mountpoint = %self.mountpoint.display(),
                    "mount point busy (a file open or a working directory under it): detached; \
                     its open files are served for up to {BUSY_UNMOUNT_WAIT:?} more");
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let _ = tx.send(session.join());
                });
                match rx.recv_timeout(BUSY_UNMOUNT_WAIT) {
                    Ok(joined) => joined.map_err(failed)?,
                    Err(_) => tracing::warn!(mountpoint = %self.mountpoint.display(),
                        "files under the detached mount point are still open; \
                         reads of them fail once the agent exits"),
                }
            }
            // Not in use, or not root (fuser then goes through fusermount3, which detaches
            // a busy mount itself).
            _ => session.umount_and_join().map_err(failed)?,
        }
        tracing::info!(mountpoint = %self.mountpoint.display(), "unmounted");
        Ok(())
    }
}

/// How long an unmount of a busy mount point keeps serving its open files after
/// detaching it.
const BUSY_UNMOUNT_WAIT: Duration = Duration::from_secs(5);

impl Drop for MountHandle {
    fn drop(&mut self) {
        if self.holder.is_some() && self.session.is_some() {
            // Held mounts outlive the agent: see `leave_to_holder`.
            std::mem::forget(self.session.take());
            std::mem::forget(self.fs.clone());
            return;
        }
        if let Err(e) = self.do_unmount() {
            tracing::warn!(error = %e, "unmount on drop failed");
        }
    }
}

/// Checks that a mount point exists, is a directory and is not already a mount point.
pub fn check_mountpoint(mountpoint: &Path) -> Result<PathBuf> {
    let err = |message: String| Error::Mount {
        mountpoint: mountpoint.to_path_buf(),
        message,
    };
    let meta = std::fs::metadata(mountpoint).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            err("does not exist; create it first (mkdir -p)".into())
        }
        std::io::ErrorKind::NotConnected => err(
            "is a dead FUSE mount (its agent exited); clean it up with `fusermount3 -u` or `umount -l`"
                .into(),
        ),
        _ => err(format!("cannot be accessed: {e}")),
    })?;
    if !meta.is_dir() {
        return Err(err("is not a directory".into()));
    }
    let canonical = std::fs::canonicalize(mountpoint).map_err(|e| err(e.to_string()))?;
    if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
        let wanted = canonical.to_string_lossy();
        let busy = info.lines().any(|l| {
            l.split(' ')
                .nth(4)
                .map(unescape_mountinfo)
                .is_some_and(|p| p == wanted)
        });
        if busy {
            return Err(err(
                "is busy: something is already mounted there; unmount it first (umount or fusermount3 -u)".into(),
            ));
        }
    }
    Ok(canonical)
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo (octal).
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mounts a dataset read-only at `mountpoint` and serves it in the background. Must be
/// called inside a tokio runtime (requests are served on it).
pub fn mount(
    view: Arc<DatasetView>,
    mountpoint: &Path,
    options: MountOptions,
) -> Result<MountHandle> {
    if let Some(holder) = options.holder.clone() {
        return mount_held(view, mountpoint, options, holder);
    }
    let canonical = check_mountpoint(mountpoint)?;
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| Error::Task("mount must be called inside a tokio runtime".into()))?;
    let state = Arc::new(FsState::new(
        view.clone(),
        handle,
        options.passthrough,
        None,
    ));
    let fs = StrataFs {
        state: state.clone(),
    };
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::DefaultPermissions,
        MountOption::FSName(
            options
                .fsname
                .clone()
                .unwrap_or_else(|| format!("strata:{}", view.id())),
        ),
        MountOption::Subtype("strata".into()),
    ];
    if view.writes().is_none() {
        // No source takes writes: the kernel refuses them before they reach the agent.
        cfg.mount_options.insert(0, MountOption::RO);
    }
    if options.allow_other {
        cfg.acl = SessionACL::All;
    }
    cfg.n_threads = Some(options.threads.max(1));
    cfg.clone_fd = options.threads > 1;
    let session = fuser::spawn_mount(fs, &canonical, &cfg).map_err(|e| Error::Mount {
        mountpoint: mountpoint.to_path_buf(),
        message: match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => {
                format!("{e}: mounting FUSE needs root (or CAP_SYS_ADMIN) and /dev/fuse")
            }
            Some(libc::ENOENT) | Some(libc::ENODEV) => {
                format!(
                    "{e}: /dev/fuse is missing (modprobe fuse; in a container, pass the device)"
                )
            }
            _ => e.to_string(),
        },
    })?;
    tracing::info!(dataset = %view.id(), mountpoint = %canonical.display(), "mounted");
    Ok(MountHandle {
        mountpoint: canonical,
        session: Some(session),
        fs: state,
        holder: None,
        taken_over: false,
    })
}

/// [`mount`] through a holder: a new mount, or the holder's live one taken over from the
/// agent that served it before (no second INIT; node ids and open handles restored from
/// its takeover log, and the requests it left unanswered asked for again).
fn mount_held(
    view: Arc<DatasetView>,
    mountpoint: &Path,
    options: MountOptions,
    holder: Holder,
) -> Result<MountHandle> {
    let failed = |message: String| Error::Mount {
        mountpoint: mountpoint.to_path_buf(),
        message,
    };
    // Not `check_mountpoint`: the holder may hold a mount there already, and refuses a
    // path some other file system is mounted on.
    let canonical = std::fs::canonicalize(mountpoint).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => failed("does not exist; create it first (mkdir -p)".into()),
        _ => failed(format!("cannot be accessed: {e}")),
    })?;
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|_| Error::Task("mount must be called inside a tokio runtime".into()))?;
    let attached = holder
        .client
        .attach(&AttachRequest {
            mountpoint: canonical.clone(),
            fsname: options
                .fsname
                .clone()
                .unwrap_or_else(|| format!("strata:{}", view.id())),
            allow_other: options.allow_other,
            writable: view.writes().is_some(),
        })
        .map_err(|e| failed(e.to_string()))?;
    let log_path = holder.log_path(&canonical);
    let acl = if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    let mut cfg = Config::default();
    cfg.n_threads = Some(options.threads.max(1));
    // Every worker reads the holder's descriptor: requests read on a clone only this
    // process holds would fail with ECONNABORTED when it dies, and RESEND cannot bring
    // them back.
    cfg.clone_fd = false;
    let session = if attached.taken_over {
        let (log, restored) = match TakeoverLog::open(&log_path) {
            Ok(opened) => opened,
            Err(e) => {
                tracing::error!(mountpoint = %canonical.display(), log = %log_path.display(), error = %e,
                    "the takeover log is missing: node ids and open files of the previous agent \
                     are unknown, and requests about them fail");
                let log = TakeoverLog::create(&log_path).map_err(|e| failed(e.to_string()))?;
                (log, Restored::default())
            }
        };
        let state = Arc::new(FsState::new(
            view.clone(),
            rt.clone(),
            options.passthrough,
            Some(Arc::new(log)),
        ));
        let session = fuser::Session::from_fd_initialized(
            StrataFs {
                state: state.clone(),
            },
            attached.fuse_fd,
            acl,
            cfg,
        );
        let passthrough_files = state.restore(&restored, |id| session.adopt_backing(id));
        // Requests the dead agent read and never answered are queued again; before the
        // workers start, or a request of theirs would be processed twice.
        if restored.resend {
            if let Err(e) = session.notifier().resend() {
                tracing::warn!(mountpoint = %canonical.display(), error = %e,
                    "asking the kernel to resend unanswered requests failed; readers the previous agent was serving may hang");
            }
        } else {
            tracing::warn!(mountpoint = %canonical.display(),
                "the kernel cannot resend requests (Linux < 6.9): readers the previous agent was serving hang until interrupted");
        }
        tracing::info!(mountpoint = %canonical.display(), inodes = restored.inodes.len(),
            handles = restored.opens.len(), passthrough = passthrough_files.len(),
            records = restored.records, torn = restored.torn,
            "took the mount over from the previous agent");
        let st = state.clone();
        rt.spawn(async move { st.retake_leases(passthrough_files).await });
        (session, state)
    } else {
        let log = match TakeoverLog::create(&log_path) {
            Ok(log) => Some(Arc::new(log)),
            Err(e) => {
                tracing::error!(mountpoint = %canonical.display(), log = %log_path.display(), error = %e,
                    "cannot create the takeover log: this mount will not survive an agent restart");
                None
            }
        };
        let state = Arc::new(FsState::new(view.clone(), rt, options.passthrough, log));
        let session = fuser::Session::from_fd(
            StrataFs {
                state: state.clone(),
            },
            attached.fuse_fd,
            acl,
            cfg,
        )
        .map_err(|e| failed(format!("FUSE handshake failed: {e}")))?;
        (session, state)
    };
    let (session, state) = session;
    let session = session
        .spawn()
        .map_err(|e| failed(format!("starting the FUSE session: {e}")))?;
    tracing::info!(dataset = %view.id(), mountpoint = %canonical.display(), taken_over = attached.taken_over, "mounted");
    Ok(MountHandle {
        mountpoint: canonical,
        session: Some(session),
        fs: state,
        holder: Some(holder),
        taken_over: attached.taken_over,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescaping() {
        assert_eq!(unescape_mountinfo("/mnt/with\\040space"), "/mnt/with space");
        assert_eq!(unescape_mountinfo("/mnt/ünï"), "/mnt/ünï");
        assert_eq!(unescape_mountinfo("/a\\134b"), "/a\\b");
    }

    #[test]
    fn mount_point_checks_name_the_problem() {
        let err = check_mountpoint(Path::new("/definitely/missing"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/definitely/missing") && err.contains("does not exist"),
            "{err}"
        );
        let f = tempfile::NamedTempFile::new().unwrap();
        let err = check_mountpoint(f.path()).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
        // "/" is always a mount point.
        let err = check_mountpoint(Path::new("/")).unwrap_err().to_string();
        assert!(err.contains("busy"), "{err}");
    }
}
