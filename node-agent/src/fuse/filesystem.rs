//! The FUSE operations (`impl Filesystem`): each request is answered on the tokio
//! runtime, errors as the engine's errno.

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use fuser::{
    Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};
use tracing::Instrument;

use super::MAX_REQUEST_BYTES;
use super::inodes::path_text_ino;
use super::passthrough::OpenFile;
use super::state::FsState;
use crate::dataset::{DirListing, FileStat};
use crate::path::{DatasetPath, PathError};
use strata_engine::Error;

fn errno(e: &Error) -> Errno {
    Errno::from_i32(e.errno())
}

pub(super) struct StrataFs {
    pub(super) state: Arc<FsState>,
}

/// Logs a change that failed for a reason the user did not ask for (a refusal such as
/// EROFS or EEXIST is the answer, not news).
fn log_refused(op: &str, path: &DatasetPath, e: &Error) {
    if matches!(
        e,
        Error::Refused { .. }
            | Error::NotFound { .. }
            | Error::IsDirectory { .. }
            | Error::NotDirectory { .. }
    ) {
        tracing::debug!(op, path = %path, error = %e, "refused");
    } else {
        tracing::warn!(op, path = %path, error = %e, "failed");
    }
}

impl StrataFs {
    fn handle(&self, fh: FileHandle) -> Option<Arc<OpenFile>> {
        self.state
            .handles
            .lock()
            .expect("handles")
            .get(&fh.0)
            .cloned()
    }

    /// The path of `name` in directory `parent`: ENAMETOOLONG past NAME_MAX (or PATH_MAX),
    /// ENOENT for a name no object can have.
    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<DatasetPath, Errno> {
        let parent = self.state.path_of(parent).ok_or(Errno::ENOENT)?;
        join_name(&parent, name)
    }

    fn commit(&self, fh: FileHandle, reply: ReplyEmpty) {
        let Some(open) = self.handle(fh) else {
            reply.ok();
            return;
        };
        if open.write.is_none() {
            reply.ok();
            return;
        }
        let st = self.state.clone();
        self.state.rt.spawn(async move {
            match st.commit(&open).await {
                Ok(()) => reply.ok(),
                Err(e) => {
                    log_refused("commit", &open.reader.stat().path, &e);
                    reply.error(errno(&e));
                }
            }
        });
    }

    /// OPEN for writing (O_WRONLY, O_RDWR; O_TRUNC empties the file).
    fn open_for_write(&self, ino: INodeNo, flags: OpenFlags, unique: u64, reply: ReplyOpen) {
        if self.state.view().writes().is_none() {
            reply.error(Errno::EROFS);
            return;
        }
        let st = self.state.clone();
        if let Some((fh, open)) = st.resent_open(unique) {
            let flags = if open.direct {
                FopenFlags::FOPEN_DIRECT_IO
            } else {
                FopenFlags::empty()
            };
            reply.opened(FileHandle(fh), flags);
            return;
        }
        let Some(path) = st.path_of(ino) else {
            tracing::debug!(ino = ino.0, "open for writing: unknown inode");
            reply.error(Errno::ENOENT);
            return;
        };
        let truncate = flags.0 & libc::O_TRUNC != 0;
        let fh = st.new_fh();
        self.state.rt.spawn(async move {
            match st.open_write(ino.0, &path, truncate, fh, unique).await {
                Ok(direct) => {
                    let flags = if direct {
                        FopenFlags::FOPEN_DIRECT_IO
                    } else {
                        FopenFlags::empty()
                    };
                    reply.opened(FileHandle(fh), flags);
                }
                Err(e) => {
                    log_refused("open", &path, &e);
                    reply.error(errno(&e));
                }
            }
        });
    }
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
            // open(O_TRUNC) arrives as one OPEN with O_TRUNC, emptying the writer's own file.
            // Without it the kernel sends a SETATTR(size 0) on the path after the OPEN, which
            // is a truncate(2): it commits, and the empty file would reach the source as a
            // version no writer closed (the crash test's lister caught one).
            InitFlags::FUSE_ATOMIC_O_TRUNC,
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
        // FUSE_HAS_RESEND: the kernel re-queues requests a dead agent read (Linux 6.9+).
        let resend = config.capabilities().bits() & (1 << 39) != 0;
        self.state.resend.store(resend, Ordering::Relaxed);
        self.state.log_init();
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let st = self.state.clone();
        let Some(parent_path) = st.path_of(parent) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let path = match join_name(&parent_path, name) {
            Ok(path) => path,
            Err(e) => return reply.error(e),
        };
        let span = tracing::debug_span!("lookup", path = %path);
        self.state.rt.spawn(
            async move {
                match st.view().stat_until(&path).await {
                    Ok((stat, valid_until)) => {
                        let ino = st.looked_up(&path, stat.etag.as_deref());
                        let ttl = FsState::ttl_until(valid_until);
                        reply.entry(&ttl, &st.attr(ino, &stat), Generation(0));
                    }
                    Err(e) => {
                        if e.is_not_found() {
                            tracing::debug!(path = %path, "lookup: not found");
                        } else {
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
                let stat = open.reader.stat();
                match &open.write {
                    // Written through this handle: as it is now.
                    Some(local) => {
                        let now = local.stat(stat.path.clone());
                        reply.attr(&std::time::Duration::ZERO, &st.attr(ino.0, &now));
                    }
                    None => reply.attr(&st.ttl(), &st.attr(ino.0, stat)),
                }
                return;
            }
        }
        let Some(path) = st.path_of(ino) else {
            reply.error(Errno::ENOENT);
            return;
        };
        self.state.rt.spawn(async move {
            match st.view().stat_until(&path).await {
                Ok((stat, valid_until)) => {
                    reply.attr(&FsState::ttl_until(valid_until), &st.attr(ino.0, &stat))
                }
                // Removed while open (fstat does not name its handle): the file lives on
                // through its handles, with no link left.
                Err(e) if e.is_not_found() => match st.open_unlinked_attr(ino.0) {
                    Some(attr) => reply.attr(&std::time::Duration::ZERO, &attr),
                    None => reply.error(errno(&e)),
                },
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let st = self.state.clone();
        let unique = req.unique().0;
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            self.open_for_write(ino, flags, unique, reply);
            return;
        }
        // An OPEN the previous agent recorded but did not answer, sent again after a
        // takeover: the same handle, so none is left open that the kernel never knew.
        if let Some((fh, open)) = st.resent_open(unique) {
            match (&open.passthrough, open.direct) {
                (Some(backing), _) => {
                    reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), backing)
                }
                (None, true) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
                (None, false) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            }
            return;
        }
        let Some(path) = st.path_of(ino) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let span = tracing::debug_span!("open", path = %path, ino = ino.0);
        self.state.rt.spawn(
            async move {
                let reader = match st.view().open(&path).await {
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
                let fh = st.new_fh();
                // Twice at most: see "its download completed" below.
                let mut tried_passthrough = 0;
                let mut reply = reply;
                loop {
                    tried_passthrough += 1;
                    if st.passthrough.load(Ordering::Relaxed) {
                        match st.open_passthrough(ino.0, &reader, fh, unique, reply).await {
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
                            _lease: None,
                            direct: true,
                            write: None,
                            write_lost: false,
                        });
                        st.add_handle(fh, open, unique);
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
                        _lease: None,
                        direct: false,
                        write: None,
                        write_lost: false,
                    });
                    st.add_handle(fh, open, unique);
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
        self.state.reads.fetch_add(1, Ordering::Relaxed);
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
        let open = self.state.remove_handle(fh.0);
        if let Some(open) = open {
            self.state.release_write(&open);
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
        self.state.compact_log_if_due();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        if self.state.view().writes().is_none() {
            // ENOSYS makes the kernel stop sending FLUSH on this mount. A read-only file
            // system has nothing to flush, and a close (every exec closes inherited
            // descriptors) then never waits for an agent, not even while one restarts.
            reply.error(Errno::ENOSYS);
            return;
        }
        self.commit(fh, reply);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.commit(fh, reply);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        let Some(open) = self.handle(fh) else {
            reply.error(Errno::EBADF);
            return;
        };
        let st = self.state.clone();
        let data = data.to_vec();
        self.state.rt.spawn(async move {
            match st.write(&open, offset, &data).await {
                Ok(()) => reply.written(data.len() as u32),
                Err(e) => {
                    log_refused("write", &open.reader.stat().path, &e);
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        let path = match self.child(parent, name) {
            Ok(path) => path,
            Err(e) => return reply.error(e),
        };
        let st = self.state.clone();
        let unique = req.unique().0;
        let fh = st.new_fh();
        self.state.rt.spawn(async move {
            match st.create(&path, mode & !umask, flags, fh, unique).await {
                Ok((_, attr, direct)) => {
                    let flags = if direct {
                        FopenFlags::FOPEN_DIRECT_IO
                    } else {
                        FopenFlags::empty()
                    };
                    reply.created(
                        &std::time::Duration::ZERO,
                        &attr,
                        Generation(0),
                        FileHandle(fh),
                        flags,
                    )
                }
                Err(e) => {
                    log_refused("create", &path, &e);
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(path) = self.state.path_of(ino) else {
            reply.error(Errno::ENOENT);
            return;
        };
        // Object stores keep no owner: only the owner every file shows is accepted.
        if uid.is_some_and(|u| u != self.state.uid) || gid.is_some_and(|g| g != self.state.gid) {
            reply.error(Errno::EPERM);
            return;
        }
        let open = fh.and_then(|fh| self.handle(fh));
        let st = self.state.clone();
        self.state.rt.spawn(async move {
            let changed = if size.is_some() || mode.is_some() || mtime.is_some() {
                st.set_attr(&path, open, size, mode, mtime).await
            } else {
                Ok(())
            };
            let stat = match changed {
                Ok(()) => st.view().stat(&path).await,
                Err(e) => Err(e),
            };
            match stat {
                Ok(stat) => reply.attr(&std::time::Duration::ZERO, &st.attr(ino.0, &stat)),
                Err(e) => {
                    log_refused("setattr", &path, &e);
                    reply.error(errno(&e));
                }
            }
        });
    }

    /// A regular file is made empty; devices, FIFOs and sockets are what an object store
    /// cannot hold: EPERM, as Linux answers for a file system without the node type.
    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if self.state.view().writes().is_none() {
            return reply.error(Errno::EROFS);
        }
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let path = match self.child(parent, name) {
            Ok(path) => path,
            Err(e) => return reply.error(e),
        };
        let (st, unique) = (self.state.clone(), req.unique().0);
        self.state.rt.spawn(async move {
            match st.mknod(&path, mode & !umask & 0o7777, unique).await {
                Ok((_, attr)) => reply.entry(&std::time::Duration::ZERO, &attr, Generation(0)),
                Err(e) => {
                    log_refused("mknod", &path, &e);
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let path = match self.child(parent, name) {
            Ok(path) => path,
            Err(e) => return reply.error(e),
        };
        let (st, unique) = (self.state.clone(), req.unique().0);
        self.state.rt.spawn(async move {
            match st.unlink(&path, unique).await {
                Ok(()) => reply.ok(),
                Err(e) => {
                    log_refused("unlink", &path, &e);
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let path = match self.child(parent, name) {
            Ok(path) => path,
            Err(e) => return reply.error(e),
        };
        let (st, unique) = (self.state.clone(), req.unique().0);
        self.state.rt.spawn(async move {
            match st.mkdir(&path, unique).await {
                Ok((_, attr)) => reply.entry(&std::time::Duration::ZERO, &attr, Generation(0)),
                Err(e) => {
                    log_refused("mkdir", &path, &e);
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let path = match self.child(parent, name) {
            Ok(path) => path,
            Err(e) => return reply.error(e),
        };
        let (st, unique) = (self.state.clone(), req.unique().0);
        self.state.rt.spawn(async move {
            match st.rmdir(&path, unique).await {
                Ok(()) => reply.ok(),
                Err(e) => {
                    log_refused("rmdir", &path, &e);
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (from, to) = match (self.child(parent, name), self.child(newparent, newname)) {
            (Ok(from), Ok(to)) => (from, to),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        if flags
            .intersects(fuser::RenameFlags::RENAME_EXCHANGE | fuser::RenameFlags::RENAME_WHITEOUT)
        {
            reply.error(Errno::EINVAL);
            return;
        }
        let no_replace = flags.contains(fuser::RenameFlags::RENAME_NOREPLACE);
        let (st, unique) = (self.state.clone(), req.unique().0);
        self.state.rt.spawn(async move {
            match st.rename(&from, &to, no_replace, unique).await {
                Ok(()) => reply.ok(),
                Err(e) => {
                    log_refused("rename", &from, &e);
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.state.forget(ino.0, nlookup);
        self.state.compact_log_if_due();
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fh = self.state.new_fh();
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
        // Entries already in are answered here, without a hand-over to the runtime: a
        // large directory is read in thousands of replies of a page each.
        if let Some((listing, _)) = st.ready_listing(fh.0, offset) {
            fill_dir(&st, &mut reply, ino, &path, &listing, offset);
            reply.ok();
            return;
        }
        self.state.rt.spawn(async move {
            let listing = match st.dir_listing(fh.0, &path, offset).await {
                Ok((listing, _)) => listing,
                Err(e) => {
                    reply.error(errno(&e));
                    return;
                }
            };
            // Past "." and "..": the entry asked for, once the source's pages bring it.
            if offset >= 2
                && let Err(e) = listing.wait_for(offset as usize - 2).await
            {
                reply.error(errno(&e));
                return;
            }
            fill_dir(&st, &mut reply, ino, &path, &listing, offset);
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
        if let Some((listing, valid_until)) = st.ready_listing(fh.0, offset) {
            fill_dir_plus(&st, &mut reply, ino, &path, &listing, valid_until, offset);
            reply.ok();
            return;
        }
        self.state.rt.spawn(async move {
            let (listing, valid_until) = match st.dir_listing(fh.0, &path, offset).await {
                Ok(l) => l,
                Err(e) => {
                    reply.error(errno(&e));
                    return;
                }
            };
            if offset >= 2
                && let Err(e) = listing.wait_for(offset as usize - 2).await
            {
                reply.error(errno(&e));
                return;
            }
            fill_dir_plus(&st, &mut reply, ino, &path, &listing, valid_until, offset);
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
        let used = self.state.view().cache().disk_bytes();
        let bsize = 4096u64;
        let quota = self.state.view().config().cache.quota;
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

/// `parent`/`name`, or the errno for a name the dataset cannot hold.
fn join_name(parent: &DatasetPath, name: &OsStr) -> Result<DatasetPath, Errno> {
    let name = name.to_str().ok_or(Errno::ENOENT)?;
    parent.join(name).map_err(|e| match e {
        PathError::ComponentTooLong | PathError::TooLong => Errno::ENAMETOOLONG,
        _ => Errno::ENOENT,
    })
}

/// Fills a readdir reply from `offset` on: "." and "..", then the listing's entries in so
/// far (entry `i` has offset `i + 3`), until the reply is full.
fn fill_dir(
    st: &FsState,
    reply: &mut ReplyDirectory,
    ino: INodeNo,
    path: &DatasetPath,
    listing: &DirListing,
    offset: u64,
) {
    if offset == 0 && reply.add(ino, 1, FileType::Directory, ".") {
        return;
    }
    if offset <= 1 {
        let parent_ino = path.parent().map(|p| st.ino_for(&p)).unwrap_or(1);
        if reply.add(INodeNo(parent_ino), 2, FileType::Directory, "..") {
            return;
        }
    }
    // Each entry's path as text in one buffer, looked up under one lock: a large directory
    // is read in thousands of these replies, and building a path per entry was a good
    // part of a warm `ls`.
    let mut child = String::with_capacity(path.as_str().len() + 64);
    child.push_str(path.as_str());
    if !path.is_root() {
        child.push('/');
    }
    let dir_len = child.len();
    // Taken inside the listing's lock, as readdirplus and lookups take them.
    let mut inodes = None;
    listing.visit(offset.saturating_sub(2) as usize, |i, e| {
        let kind = if e.is_dir() {
            FileType::Directory
        } else {
            FileType::RegularFile
        };
        child.truncate(dir_len);
        child.push_str(e.name());
        let ino = inodes
            .get_or_insert_with(|| st.inodes.read().expect("inodes"))
            .by_path
            .get(child.as_str())
            .copied()
            .unwrap_or_else(|| path_text_ino(&child));
        !reply.add(INodeNo(ino), i as u64 + 3, kind, e.name())
    });
}

/// [`fill_dir`] with attributes: every entry sent counts as a lookup the kernel holds.
fn fill_dir_plus(
    st: &FsState,
    reply: &mut ReplyDirectoryPlus,
    ino: INodeNo,
    path: &DatasetPath,
    listing: &DirListing,
    valid_until: Instant,
    offset: u64,
) {
    // An open directory can be read long after its listing was taken: the kernel keeps
    // these entries only while the listing is valid.
    let ttl = FsState::ttl_until(valid_until);
    let dir_stat = FileStat {
        path: path.clone(),
        kind: crate::dataset::EntryKind::Directory,
        size: 0,
        mtime: SystemTime::UNIX_EPOCH,
        version: None,
        etag: None,
    };
    if offset == 0 && reply.add(ino, 1, ".", &ttl, &st.attr(ino.0, &dir_stat), Generation(0)) {
        return;
    }
    if offset <= 1 {
        let parent_ino = path.parent().map(|p| st.ino_for(&p)).unwrap_or(1);
        if reply.add(
            INodeNo(parent_ino),
            2,
            "..",
            &ttl,
            &st.attr(parent_ino, &dir_stat),
            Generation(0),
        ) {
            return;
        }
    }
    listing.visit(offset.saturating_sub(2) as usize, |i, e| {
        let stat = e.stat();
        // Counted before the reply can reach the kernel; taken back if the buffer was
        // full and the entry not sent.
        let child = st.looked_up(&stat.path, stat.etag.as_deref());
        let full = reply.add(
            INodeNo(child),
            i as u64 + 3,
            e.name(),
            &ttl,
            &st.attr(child, &stat),
            Generation(0),
        );
        if full {
            st.forget(child, 1);
        }
        !full
    });
}
