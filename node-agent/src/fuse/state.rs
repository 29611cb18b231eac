//! What the file system keeps between requests: inodes, open handles, directory
//! listings of open directories, and the attributes it answers with.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use fuser::{FileAttr, FileType, INodeNo};

use super::MAX_REQUEST_BYTES;
use super::inodes::InodeTable;
use super::passthrough::{InodeIo, OpenFile};
use crate::dataset::{DatasetView, DirListing, FileStat};
use crate::path::DatasetPath;

/// A directory listing and until when it is valid.
pub(super) type TimedListing = (Arc<DirListing>, Instant);

/// The file system's state, shared by the FUSE operations and the mount handle.
pub(super) struct FsState {
    pub(super) view: Arc<DatasetView>,
    pub(super) rt: tokio::runtime::Handle,
    pub(super) passthrough: AtomicBool,
    pub(super) inodes: RwLock<InodeTable>,
    pub(super) handles: Mutex<HashMap<u64, Arc<OpenFile>>>,
    pub(super) io: Mutex<HashMap<u64, InodeIo>>,
    pub(super) last_etag: Mutex<HashMap<u64, String>>,
    // Open directories, with the listing their first read took: every later read of the
    // handle continues in that listing, so a listing refreshed between two reads cannot
    // make an entry show twice or not at all. With it, until when the listing is valid.
    pub(super) dirs: Mutex<HashMap<u64, Option<TimedListing>>>,
    pub(super) next_fh: AtomicU64,
    pub(super) passthrough_ok: AtomicU64,
    pub(super) passthrough_refused: AtomicU64,
    /// FUSE_READ requests the agent answered (a passthrough file's reads never count).
    pub(super) reads: AtomicU64,
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// Object stores keep no directory times; directories show the mount time
    /// instead of 1970.
    pub(super) mounted_at: SystemTime,
}

impl FsState {
    pub(super) fn new(
        view: Arc<DatasetView>,
        rt: tokio::runtime::Handle,
        passthrough: bool,
    ) -> Self {
        FsState {
            view,
            rt,
            passthrough: AtomicBool::new(passthrough),
            inodes: RwLock::new(InodeTable::with_root()),
            handles: Mutex::new(HashMap::new()),
            io: Mutex::new(HashMap::new()),
            last_etag: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            passthrough_ok: AtomicU64::new(0),
            passthrough_refused: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            mounted_at: SystemTime::now(),
        }
    }

    /// The listing a read of open directory `fh` at `offset` continues in: the handle's
    /// own, taken by its first read (or again when it starts over at offset 0, as
    /// `rewinddir` does), and until when it is valid. It may still be coming in from the
    /// source (see [`DatasetView::open_listing`]).
    pub(super) async fn dir_listing(
        &self,
        fh: u64,
        path: &DatasetPath,
        offset: u64,
    ) -> strata_engine::Result<TimedListing> {
        if offset > 0
            && let Some(Some(listing)) = self.dirs.lock().expect("dirs").get(&fh)
        {
            return Ok(listing.clone());
        }
        let listing = self.view.open_listing(path).await?;
        if let Some(slot) = self.dirs.lock().expect("dirs").get_mut(&fh) {
            *slot = Some(listing.clone());
        }
        Ok(listing)
    }

    /// The handle's listing when a read at `offset` needs no wait: it holds the entry at
    /// `offset` already, or is complete.
    pub(super) fn ready_listing(&self, fh: u64, offset: u64) -> Option<TimedListing> {
        if offset == 0 {
            return None;
        }
        let dirs = self.dirs.lock().expect("dirs");
        let (listing, until) = dirs.get(&fh)?.as_ref()?;
        let index = offset.saturating_sub(2) as usize;
        (listing.len() > index || listing.is_complete()).then(|| (listing.clone(), *until))
    }

    pub(super) fn path_of(&self, ino: INodeNo) -> Option<DatasetPath> {
        self.inodes
            .read()
            .expect("inodes")
            .by_ino
            .get(&ino.0)
            .map(|(path, _)| path.clone())
    }

    pub(super) fn ino_for(&self, path: &DatasetPath) -> u64 {
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
    pub(super) fn looked_up(&self, path: &DatasetPath, etag: Option<&str>) -> u64 {
        let mut inodes = self.inodes.write().expect("inodes");
        if let (Some(etag), Some(&ino)) = (etag, inodes.by_path.get(path))
            && self.open_with_other_version(ino, etag)
        {
            inodes.by_path.remove(path);
        }
        inodes.looked_up(path)
    }

    /// Whether inode `ino` has handles open on a version other than `etag`.
    pub(super) fn open_with_other_version(&self, ino: u64, etag: &str) -> bool {
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

    pub(super) fn forget(&self, ino: u64, n: u64) {
        if self.inodes.write().expect("inodes").forget(ino, n) {
            self.last_etag.lock().expect("etags").remove(&ino);
        }
    }

    pub(super) fn ttl(&self) -> Duration {
        self.view.metadata_ttl()
    }

    /// How long the kernel may keep an answer valid here until `valid_until`.
    pub(super) fn ttl_until(valid_until: Instant) -> Duration {
        valid_until.saturating_duration_since(Instant::now())
    }

    pub(super) fn attr(&self, ino: u64, stat: &FileStat) -> FileAttr {
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

impl FsState {
    pub(super) fn view_node_capacity(&self) -> u64 {
        self.view.cache().node_disk_capacity()
    }
}
