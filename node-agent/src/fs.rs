//! The read-only FUSE file system over a [`DatasetView`].
//!
//! Requests are dispatched by fuser's worker threads and served on the tokio runtime, so
//! slow fetches never block other requests. Fully cached files are opened in passthrough
//! mode (the kernel reads the cache file directly); other files are served by the engine
//! with `FOPEN_KEEP_CACHE` when the object did not change since the last open.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    BackingId, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, Request,
    SessionACL,
};

use tracing::Instrument;

use crate::cache::PassthroughLease;
use crate::dataset::{DatasetView, DirListing, FileReader, FileStat};
use crate::path::DatasetPath;
use crate::{Error, Result};

/// Largest read/write request the kernel may send (1 MiB).
pub const MAX_REQUEST_BYTES: u32 = 1 << 20;

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
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: true,
            passthrough: true,
            threads: 4,
            fsname: None,
        }
    }
}

/// A mounted file system. Unmounts on [`MountHandle::unmount`] or when dropped.
pub struct MountHandle {
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
    fs: Arc<FsState>,
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

    /// Opens served in passthrough mode so far, and opens where passthrough was refused.
    pub fn passthrough_counts(&self) -> (u64, u64) {
        (
            self.fs.passthrough_ok.load(Ordering::Relaxed),
            self.fs.passthrough_refused.load(Ordering::Relaxed),
        )
    }

    /// Unmounts and waits for the session thread to end.
    pub fn unmount(mut self) -> Result<()> {
        self.do_unmount()
    }

    fn do_unmount(&mut self) -> Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let failed = |e: std::io::Error| Error::Mount {
            mountpoint: self.mountpoint.clone(),
            message: format!("unmount failed: {e}"),
        };
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
    let canonical = check_mountpoint(mountpoint)?;
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| Error::Task("mount must be called inside a tokio runtime".into()))?;
    let state = Arc::new(FsState::new(view.clone(), handle, options.passthrough));
    let fs = StrataFs {
        state: state.clone(),
    };
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::RO,
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
    })
}

struct OpenFile {
    reader: Arc<FileReader>,
    ino: u64,
    passthrough: Option<(Arc<BackingId>, PassthroughLease)>,
    // Opened with FOPEN_DIRECT_IO (does not count as a cached open).
    direct: bool,
}

#[derive(Default)]
struct InodeIo {
    backing: Option<(String, Weak<BackingId>)>,
    cached_opens: usize,
}

/// A directory listing and until when it is valid.
type TimedListing = (Arc<DirListing>, Instant);

struct FsState {
    view: Arc<DatasetView>,
    rt: tokio::runtime::Handle,
    passthrough: AtomicBool,
    inodes: RwLock<InodeTable>,
    handles: Mutex<HashMap<u64, Arc<OpenFile>>>,
    io: Mutex<HashMap<u64, InodeIo>>,
    last_etag: Mutex<HashMap<u64, String>>,
    // Open directories, with the listing their first read took: every later read of the
    // handle continues in that listing, so a listing refreshed between two reads cannot
    // make an entry show twice or not at all. With it, until when the listing is valid.
    dirs: Mutex<HashMap<u64, Option<TimedListing>>>,
    next_fh: AtomicU64,
    passthrough_ok: AtomicU64,
    passthrough_refused: AtomicU64,
    uid: u32,
    gid: u32,
    /// Object stores keep no directory times; directories show the mount time
    /// instead of 1970.
    mounted_at: SystemTime,
}

use std::sync::atomic::AtomicBool;

/// Inode numbers of the paths the kernel knows. A path's number is its hash
/// ([`path_ino`]), the `d_ino` plain readdir shows for it, so `readdir` and `stat` agree;
/// a sequential number (below 2^63, apart from the hashes) when that one is taken by
/// another version of the path still open, or by a hash collision. An entry goes when
/// the kernel forgets every lookup of it, so a walk over millions of objects does not
/// keep millions of entries after the kernel dropped them.
struct InodeTable {
    // Path and the kernel's lookup count (entries sent by lookup and readdirplus).
    by_ino: HashMap<u64, (DatasetPath, u64)>,
    by_path: HashMap<DatasetPath, u64>,
    next: u64,
}

impl InodeTable {
    fn ino_for(&mut self, path: &DatasetPath) -> u64 {
        if let Some(i) = self.by_path.get(path) {
            return *i;
        }
        let hashed = path_ino(path);
        let i = if self.by_ino.contains_key(&hashed) {
            self.next += 1;
            self.next - 1
        } else {
            hashed
        };
        self.by_ino.insert(i, (path.clone(), 0));
        self.by_path.insert(path.clone(), i);
        i
    }

    /// The inode of `path`, counted as one more lookup the kernel holds.
    fn looked_up(&mut self, path: &DatasetPath) -> u64 {
        let i = self.ino_for(path);
        if let Some(e) = self.by_ino.get_mut(&i) {
            e.1 += 1;
        }
        i
    }

    /// The kernel dropped `n` lookups of `ino`; true if the entry is gone.
    fn forget(&mut self, ino: u64, n: u64) -> bool {
        if ino == 1 {
            return false;
        }
        let Some(e) = self.by_ino.get_mut(&ino) else {
            return false;
        };
        e.1 = e.1.saturating_sub(n);
        if e.1 > 0 {
            return false;
        }
        if let Some((path, _)) = self.by_ino.remove(&ino)
            && self.by_path.get(&path) == Some(&ino)
        {
            self.by_path.remove(&path);
        }
        true
    }
}

/// The inode number of `path`, unless taken (see [`InodeTable`]): also the `d_ino` of
/// plain readdir entries the kernel has not looked up, which must not create table
/// entries (readdir does not count as a lookup, so nothing would forget them). The high
/// bit keeps it apart from the table's sequential numbers.
fn path_ino(path: &DatasetPath) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    h.finish() | (1 << 63)
}

impl FsState {
    fn new(view: Arc<DatasetView>, rt: tokio::runtime::Handle, passthrough: bool) -> Self {
        let mut table = InodeTable {
            by_ino: HashMap::new(),
            by_path: HashMap::new(),
            next: 2,
        };
        table.by_ino.insert(1, (DatasetPath::root(), 1));
        table.by_path.insert(DatasetPath::root(), 1);
        FsState {
            view,
            rt,
            passthrough: AtomicBool::new(passthrough),
            inodes: RwLock::new(table),
            handles: Mutex::new(HashMap::new()),
            io: Mutex::new(HashMap::new()),
            last_etag: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            passthrough_ok: AtomicU64::new(0),
            passthrough_refused: AtomicU64::new(0),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            mounted_at: SystemTime::now(),
        }
    }

    /// Opens `ino` in passthrough mode if its version (`etag`) is fully cached and the
    /// kernel allows it; gives `reply` back if it did not.
    async fn open_passthrough(
        &self,
        ino: u64,
        reader: &Arc<FileReader>,
        etag: &str,
        fh: u64,
        path: &DatasetPath,
        reply: ReplyOpen,
    ) -> Option<ReplyOpen> {
        // The kernel allows one backing file per inode, and refuses passthrough while the
        // inode has cached (non-passthrough) opens; every decision below is taken under
        // the `io` lock so that concurrent opens agree.
        let cached_open = self
            .io
            .lock()
            .expect("io")
            .get(&ino)
            .is_some_and(|e| e.cached_opens > 0);
        if cached_open {
            return Some(reply);
        }
        let Some((file, lease)) = self.view.cached_file(reader.stat()).await else {
            return Some(reply);
        };
        let mut io = self.io.lock().expect("io");
        let entry = io.entry(ino).or_default();
        let alive = entry
            .backing
            .as_ref()
            .and_then(|(t, w)| w.upgrade().map(|b| (t.clone(), b)));
        let backing = match alive {
            Some((t, b)) if t == etag => Ok(b),
            Some(_) => return Some(reply),
            None if entry.cached_opens > 0 => return Some(reply),
            None => reply.open_backing(&file).map(Arc::new),
        };
        match backing {
            Ok(b) => {
                entry.backing = Some((etag.to_string(), Arc::downgrade(&b)));
                drop(io);
                let open = Arc::new(OpenFile {
                    reader: reader.clone(),
                    ino,
                    passthrough: Some((b.clone(), lease)),
                    direct: false,
                });
                self.handles.lock().expect("handles").insert(fh, open);
                self.passthrough_ok.fetch_add(1, Ordering::Relaxed);
                self.view.cache_metrics_passthrough("ok");
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &b);
                None
            }
            Err(e) => {
                drop(io);
                self.passthrough_refused.fetch_add(1, Ordering::Relaxed);
                self.view.cache_metrics_passthrough("refused");
                tracing::warn!(path = %path, error = %e,
                    "FUSE passthrough refused; serving this file through the agent");
                Some(reply)
            }
        }
    }

    /// The listing a read of open directory `fh` at `offset` continues in: the handle's
    /// own, taken by its first read (or again when it starts over at offset 0, as
    /// `rewinddir` does), and until when it is valid.
    async fn dir_listing(&self, fh: u64, path: &DatasetPath, offset: u64) -> Result<TimedListing> {
        if offset > 0
            && let Some(Some(listing)) = self.dirs.lock().expect("dirs").get(&fh)
        {
            return Ok(listing.clone());
        }
        let listing = self.view.list_until(path).await?;
        if let Some(slot) = self.dirs.lock().expect("dirs").get_mut(&fh) {
            *slot = Some(listing.clone());
        }
        Ok(listing)
    }

    fn path_of(&self, ino: INodeNo) -> Option<DatasetPath> {
        self.inodes
            .read()
            .expect("inodes")
            .by_ino
            .get(&ino.0)
            .map(|(path, _)| path.clone())
    }

    fn ino_for(&self, path: &DatasetPath) -> u64 {
        if let Some(i) = self.inodes.read().expect("inodes").by_path.get(path) {
            return *i;
        }
        self.inodes.write().expect("inodes").ino_for(path)
    }

    /// The inode of `path` (now at version `etag`), counted as one more lookup the kernel
    /// holds. A new number if the current one has handles of another version open: the
    /// kernel keeps one passthrough backing file and one page cache per inode, so two
    /// versions open at once need two inodes. The old number lives on for its open
    /// handles until the kernel forgets it.
    fn looked_up(&self, path: &DatasetPath, etag: Option<&str>) -> u64 {
        let mut inodes = self.inodes.write().expect("inodes");
        if let (Some(etag), Some(&ino)) = (etag, inodes.by_path.get(path))
            && self.open_with_other_version(ino, etag)
        {
            inodes.by_path.remove(path);
        }
        inodes.looked_up(path)
    }

    /// Whether inode `ino` has handles open on a version other than `etag`.
    fn open_with_other_version(&self, ino: u64, etag: &str) -> bool {
        let io = self.io.lock().expect("io");
        let Some(entry) = io.get(&ino) else {
            return false;
        };
        let backing = entry
            .backing
            .as_ref()
            .is_some_and(|(t, w)| w.strong_count() > 0 && t != etag);
        backing
            || (entry.cached_opens > 0
                && self
                    .last_etag
                    .lock()
                    .expect("etags")
                    .get(&ino)
                    .is_some_and(|t| t != etag))
    }

    fn known_ino(&self, path: &DatasetPath) -> Option<u64> {
        self.inodes
            .read()
            .expect("inodes")
            .by_path
            .get(path)
            .copied()
    }

    fn forget(&self, ino: u64, n: u64) {
        if self.inodes.write().expect("inodes").forget(ino, n) {
            self.last_etag.lock().expect("etags").remove(&ino);
        }
    }

    fn ttl(&self) -> Duration {
        self.view.metadata_ttl()
    }

    /// How long the kernel may keep an answer valid here until `valid_until`.
    fn ttl_until(valid_until: Instant) -> Duration {
        valid_until.saturating_duration_since(Instant::now())
    }

    fn attr(&self, ino: u64, stat: &FileStat) -> FileAttr {
        let (kind, perm, nlink) = if stat.is_dir() {
            (FileType::Directory, 0o555, 2)
        } else {
            (FileType::RegularFile, 0o444, 1)
        };
        let mtime = if stat.mtime == SystemTime::UNIX_EPOCH {
            self.mounted_at
        } else {
            stat.mtime
        };
        FileAttr {
            ino: INodeNo(ino),
            size: stat.size,
            blocks: stat.size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: MAX_REQUEST_BYTES,
            flags: 0,
        }
    }
}

fn errno(e: &Error) -> Errno {
    Errno::from_i32(e.errno())
}

struct StrataFs {
    state: Arc<FsState>,
}

impl Filesystem for StrataFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_REQUEST_BYTES);
        let _ = config.set_max_readahead(MAX_REQUEST_BYTES);
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_AUTO_INVAL_DATA,
        ] {
            let _ = config.add_capabilities(flag);
        }
        if self.state.passthrough.load(Ordering::Relaxed) {
            let ok = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            if !ok {
                tracing::warn!(
                    "the kernel does not offer FUSE passthrough; cached files are served through the agent"
                );
                self.state.passthrough.store(false, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let st = self.state.clone();
        let Some(parent_path) = st.path_of(parent) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let Some(path) = name.to_str().and_then(|n| parent_path.join(n).ok()) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let span = tracing::debug_span!("lookup", path = %path);
        self.state.rt.spawn(
            async move {
                match st.view.stat_until(&path).await {
                    Ok((stat, valid_until)) => {
                        let ino = st.looked_up(&path, stat.etag.as_deref());
                        let ttl = FsState::ttl_until(valid_until);
                        reply.entry(&ttl, &st.attr(ino, &stat), Generation(0));
                    }
                    Err(e) => {
                        if !e.is_not_found() {
                            tracing::warn!(path = %path, error = %e, "lookup failed");
                        }
                        reply.error(errno(&e));
                    }
                }
            }
            .instrument(span),
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let st = self.state.clone();
        if let Some(fh) = fh {
            let open = st.handles.lock().expect("handles").get(&fh.0).cloned();
            if let Some(open) = open {
                reply.attr(&st.ttl(), &st.attr(ino.0, open.reader.stat()));
                return;
            }
        }
        let Some(path) = st.path_of(ino) else {
            reply.error(Errno::ENOENT);
            return;
        };
        self.state.rt.spawn(async move {
            match st.view.stat_until(&path).await {
                Ok((stat, valid_until)) => {
                    reply.attr(&FsState::ttl_until(valid_until), &st.attr(ino.0, &stat))
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            reply.error(Errno::EROFS);
            return;
        }
        let st = self.state.clone();
        let Some(path) = st.path_of(ino) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let span = tracing::debug_span!("open", path = %path, ino = ino.0);
        self.state.rt.spawn(
            async move {
                let reader = match st.view.open(&path).await {
                    Ok(r) => Arc::new(r),
                    Err(e) => {
                        reply.error(errno(&e));
                        return;
                    }
                };
                let etag = reader.stat().etag.clone().unwrap_or_default();
                if st.open_with_other_version(ino.0, &etag) {
                    // The object changed while this inode is open on its old version. The
                    // kernel would refuse this open (one backing file per inode) or mix the
                    // two in one page cache; ESTALE makes it look the name up again, and
                    // `lookup` gives the new version an inode of its own.
                    reply.error(Errno::ESTALE);
                    return;
                }
                let fh = st.next_fh.fetch_add(1, Ordering::Relaxed);
                // Twice at most: see "its download completed" below.
                let mut tried_passthrough = 0;
                let mut reply = reply;
                loop {
                    tried_passthrough += 1;
                    if st.passthrough.load(Ordering::Relaxed) {
                        match st
                            .open_passthrough(ino.0, &reader, &etag, fh, &path, reply)
                            .await
                        {
                            None => return,
                            Some(not_opened) => reply = not_opened,
                        }
                    }
                    // Served by the agent.
                    let mut io = st.io.lock().expect("io");
                    let entry = io.entry(ino.0).or_default();
                    let passthrough_open = entry
                        .backing
                        .as_ref()
                        .is_some_and(|(_, w)| w.strong_count() > 0);
                    if passthrough_open && tried_passthrough < 2 {
                        // Open in passthrough mode on this version (another was ruled out
                        // above): its download completed for another opener since this one
                        // looked. The kernel refuses any other kind of open of this inode now,
                        // so look again: the file is complete.
                        drop(io);
                        continue;
                    }
                    if passthrough_open {
                        // Still not (passthrough refused meanwhile): direct I/O, the last resort.
                        drop(io);
                        let open = Arc::new(OpenFile {
                            reader,
                            ino: ino.0,
                            passthrough: None,
                            direct: true,
                        });
                        st.handles.lock().expect("handles").insert(fh, open);
                        reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
                        return;
                    }
                    entry.cached_opens += 1;
                    drop(io);
                    let keep = {
                        let mut last = st.last_etag.lock().expect("etags");
                        let same = last.get(&ino.0).is_some_and(|t| *t == etag);
                        last.insert(ino.0, etag);
                        same
                    };
                    let open = Arc::new(OpenFile {
                        reader,
                        ino: ino.0,
                        passthrough: None,
                        direct: false,
                    });
                    st.handles.lock().expect("handles").insert(fh, open);
                    let flags = if keep {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    };
                    reply.opened(FileHandle(fh), flags);
                    return;
                }
            }
            .instrument(span),
        );
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let open = self
            .state
            .handles
            .lock()
            .expect("handles")
            .get(&fh.0)
            .cloned();
        let Some(open) = open else {
            reply.error(Errno::EBADF);
            return;
        };
        // Most reads fall in the block the reader just served: answered here, without a
        // hand-over to the runtime (a wake-up that waits for a core while the 2 cores of a
        // busy node are taken).
        if let Some(data) = open.reader.read_held(offset, size as u64) {
            reply.data(&data);
            return;
        }
        self.state.rt.spawn(async move {
            match open.reader.read(offset, size as u64).await {
                Ok(data) => reply.data(&data),
                Err(e) => {
                    tracing::warn!(path = %open.reader.stat().path, offset, error = %e, "read failed");
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let open = self.state.handles.lock().expect("handles").remove(&fh.0);
        if let Some(open) = open {
            let mut io = self.state.io.lock().expect("io");
            if let Some(e) = io.get_mut(&open.ino)
                && open.passthrough.is_none()
                && !open.direct
            {
                e.cached_opens = e.cached_opens.saturating_sub(1);
            }
            drop(io);
            // Dropping the last Arc<BackingId> closes the backing file in the kernel.
            drop(open);
            let mut io = self.state.io.lock().expect("io");
            if let Some(e) = io.get_mut(&_ino.0) {
                if e.backing
                    .as_ref()
                    .is_some_and(|(_, w)| w.strong_count() == 0)
                {
                    e.backing = None;
                }
                if e.backing.is_none() && e.cached_opens == 0 {
                    io.remove(&_ino.0);
                }
            }
        }
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.state.forget(ino.0, nlookup);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fh = self.state.next_fh.fetch_add(1, Ordering::Relaxed);
        self.state.dirs.lock().expect("dirs").insert(fh, None);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let st = self.state.clone();
        let Some(path) = st.path_of(ino) else {
            reply.error(Errno::ENOENT);
            return;
        };
        self.state.rt.spawn(async move {
            let (listing, _) = match st.dir_listing(fh.0, &path, offset).await {
                Ok(l) => l,
                Err(e) => {
                    reply.error(errno(&e));
                    return;
                }
            };
            let parent_ino = path.parent().map(|p| st.ino_for(&p)).unwrap_or(1);
            let total = listing.entries.len() as u64 + 2;
            for i in offset..total {
                let full = match i {
                    0 => reply.add(ino, 1, FileType::Directory, "."),
                    1 => reply.add(INodeNo(parent_ino), 2, FileType::Directory, ".."),
                    _ => {
                        let e = &listing.entries[(i - 2) as usize];
                        let kind = if e.stat.is_dir() {
                            FileType::Directory
                        } else {
                            FileType::RegularFile
                        };
                        let child = st
                            .known_ino(&e.stat.path)
                            .unwrap_or_else(|| path_ino(&e.stat.path));
                        reply.add(INodeNo(child), i + 1, kind, &e.name)
                    }
                };
                if full {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let st = self.state.clone();
        let Some(path) = st.path_of(ino) else {
            reply.error(Errno::ENOENT);
            return;
        };
        self.state.rt.spawn(async move {
            let (listing, valid_until) = match st.dir_listing(fh.0, &path, offset).await {
                Ok(l) => l,
                Err(e) => {
                    reply.error(errno(&e));
                    return;
                }
            };
            // An open directory can be read long after its listing was taken: the kernel
            // keeps these entries only while the listing is valid.
            let ttl = FsState::ttl_until(valid_until);
            let dir_stat = FileStat {
                path: path.clone(),
                kind: crate::dataset::EntryKind::Directory,
                size: 0,
                mtime: SystemTime::UNIX_EPOCH,
                version: None,
                etag: None,
            };
            let parent_ino = path.parent().map(|p| st.ino_for(&p)).unwrap_or(1);
            let total = listing.entries.len() as u64 + 2;
            for i in offset..total {
                let full = match i {
                    0 => reply.add(ino, 1, ".", &ttl, &st.attr(ino.0, &dir_stat), Generation(0)),
                    1 => reply.add(
                        INodeNo(parent_ino),
                        2,
                        "..",
                        &ttl,
                        &st.attr(parent_ino, &dir_stat),
                        Generation(0),
                    ),
                    _ => {
                        let e = &listing.entries[(i - 2) as usize];
                        // Counted before the reply can reach the kernel; taken back if
                        // the buffer was full and the entry not sent.
                        let child = st.looked_up(&e.stat.path, e.stat.etag.as_deref());
                        let full = reply.add(
                            INodeNo(child),
                            i + 1,
                            &e.name,
                            &ttl,
                            &st.attr(child, &e.stat),
                            Generation(0),
                        );
                        if full {
                            st.forget(child, 1);
                        }
                        full
                    }
                };
                if full {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.state.dirs.lock().expect("dirs").remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Called by every `df`: the running total, not a walk over every cached object.
        let used = self.state.view.cache().disk_bytes();
        let bsize = 4096u64;
        let quota = self.state.view.config().cache.quota;
        let capacity = quota
            .unwrap_or(u64::MAX)
            .min(self.state.view_node_capacity());
        let blocks = capacity / bsize;
        let free = capacity.saturating_sub(used) / bsize;
        let files = self.state.inodes.read().expect("inodes").by_ino.len() as u64;
        reply.statfs(
            blocks,
            free,
            free,
            files,
            u64::from(u32::MAX),
            bsize as u32,
            255,
            bsize as u32,
        );
    }
}

impl FsState {
    fn view_node_capacity(&self) -> u64 {
        self.view.cache().node_disk_capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> InodeTable {
        InodeTable {
            by_ino: HashMap::new(),
            by_path: HashMap::new(),
            next: 2,
        }
    }

    #[test]
    fn a_looked_up_path_gets_the_number_plain_readdir_shows() {
        let mut t = table();
        let a = DatasetPath::parse("/d/a").unwrap();
        let ino = t.looked_up(&a);
        assert_eq!(ino, path_ino(&a), "readdir would show another d_ino");
        // Forgotten and looked up again: the same number.
        assert!(t.forget(ino, 1));
        assert_eq!(t.looked_up(&a), path_ino(&a));
        // The number still held by another version of the path (its entry moved aside
        // while a handle is open): a sequential one, apart from the hashes.
        t.by_path.remove(&a);
        let other = t.looked_up(&a);
        assert_ne!(other, ino);
        assert!(other < 1 << 63);
    }

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
