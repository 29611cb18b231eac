//! What the file system keeps between requests: inodes, open handles, directory
//! listings of open directories, and the attributes it answers with.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use fuser::{FileAttr, FileType, INodeNo};

use super::MAX_REQUEST_BYTES;
use super::changes::RESENT;
use super::inodes::InodeTable;
use super::passthrough::{InodeIo, OpenFile};
use super::takeover::{FH_BLOCK, OpenRecord, Record, Restored, SavedStat, TakeoverLog};
use crate::cache::PassthroughLease;
use crate::dataset::{DatasetView, DirListing, FileStat};
use crate::path::DatasetPath;

/// A directory listing and until when it is valid.
pub(super) type TimedListing = (Arc<DirListing>, Instant);

/// The file system's state, shared by the FUSE operations and the mount handle.
pub(super) struct FsState {
    /// The dataset as configured now: a new configuration (a source switched to its
    /// migration target, new cache settings) replaces it under the live mount. Open files
    /// keep the reader they opened.
    current_view: RwLock<Arc<DatasetView>>,
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
    /// Whether the kernel re-queues unanswered requests on FUSE_NOTIFY_RESEND (granted at
    /// INIT; kept in the takeover log since a new agent sees no INIT).
    pub(super) resend: AtomicBool,
    /// The takeover log, for mounts a new agent can take over.
    pub(super) log: Option<Arc<TakeoverLog>>,
    /// Leases of passthrough files a previous agent opened, taken again after a takeover
    /// (by file handle).
    pub(super) restored_leases: Mutex<HashMap<u64, PassthroughLease>>,
    /// Handles a previous agent recorded for OPEN requests it may not have answered, by
    /// request id: a resent OPEN gets its handle, not a second one.
    pub(super) resent_opens: Mutex<HashMap<u64, u64>>,
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
        log: Option<Arc<TakeoverLog>>,
    ) -> Self {
        let mut inodes = InodeTable::with_root();
        inodes.log = log.clone();
        FsState {
            current_view: RwLock::new(view),
            rt,
            passthrough: AtomicBool::new(passthrough),
            inodes: RwLock::new(inodes),
            handles: Mutex::new(HashMap::new()),
            io: Mutex::new(HashMap::new()),
            last_etag: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            resend: AtomicBool::new(false),
            log,
            restored_leases: Mutex::new(HashMap::new()),
            resent_opens: Mutex::new(HashMap::new()),
            passthrough_ok: AtomicU64::new(0),
            passthrough_refused: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            mounted_at: SystemTime::now(),
        }
    }

    /// The dataset as configured now.
    pub(super) fn view(&self) -> Arc<DatasetView> {
        self.current_view.read().expect("view").clone()
    }

    /// Serves the mount from `view` from now on (the dataset's configuration changed).
    pub(super) fn replace_view(&self, view: Arc<DatasetView>) {
        *self.current_view.write().expect("view") = view;
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
        let listing = self.view().open_listing(path).await?;
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
            inodes.renumber(path);
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
        self.view().metadata_ttl()
    }

    /// How long the kernel may keep an answer valid here until `valid_until`.
    pub(super) fn ttl_until(valid_until: Instant) -> Duration {
        valid_until.saturating_duration_since(Instant::now())
    }

    pub(super) fn attr(&self, ino: u64, stat: &FileStat) -> FileAttr {
        let writable = self.view().writes().is_some();
        let (kind, perm, nlink) = match (stat.is_dir(), writable) {
            (true, false) => (FileType::Directory, 0o555, 2),
            (false, false) => (FileType::RegularFile, 0o444, 1),
            // Object stores keep no owner or mode: anyone the pod runs as may write.
            (true, true) => (FileType::Directory, 0o777, 2),
            (false, true) => (
                FileType::RegularFile,
                self.local_mode(stat).unwrap_or(0o666),
                1,
            ),
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
    /// The mode of a file written on this node (chmod is kept there, not at the source).
    fn local_mode(&self, stat: &FileStat) -> Option<u16> {
        let id = stat
            .etag
            .as_deref()?
            .strip_prefix(strata_engine::writes::LOCAL_ETAG_PREFIX)?
            .parse()
            .ok()?;
        Some(self.view().writes()?.file(id)?.mode() as u16)
    }

    pub(super) fn view_node_capacity(&self) -> u64 {
        self.view().cache().node_disk_capacity()
    }
}

/// A fault for tests: with `STRATA_TEST_CRASH_AFTER_OPEN_RECORD=PATH`, the agent exits at
/// once (no destructors, no core dump) right after recording an open of PATH and before
/// answering it, the moment a kill can
/// otherwise only hit by chance (node-agent/tests/takeover_mount.rs).
fn crash_after_open_record(path: &str) {
    static TARGET: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let target = TARGET.get_or_init(|| std::env::var("STRATA_TEST_CRASH_AFTER_OPEN_RECORD").ok());
    if target.as_deref() == Some(path) {
        eprintln!(
            "strata-agent: STRATA_TEST_CRASH_AFTER_OPEN_RECORD: exiting after recording the open of {path}"
        );
        std::process::exit(101);
    }
}

/// File handles and the takeover log.
impl FsState {
    /// A new file handle number.
    pub(super) fn new_fh(&self) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        // Half way through a block, the next one is reserved in the log: well before it
        // is used, even by opens racing this one.
        if fh % FH_BLOCK == FH_BLOCK / 2
            && let Some(log) = &self.log
        {
            log.append(&Record::Handles {
                upto: fh - FH_BLOCK / 2 + 2 * FH_BLOCK,
            });
        }
        fh
    }

    /// Records an open handle (for the OPEN request `unique`); in the takeover log first,
    /// before its reply goes out.
    pub(super) fn add_handle(&self, fh: u64, open: Arc<OpenFile>, unique: u64) {
        let mut handles = self.handles.lock().expect("handles");
        if let Some(log) = &self.log {
            let mut record = open.record(fh);
            record.unique = unique & !RESENT;
            log.append(&Record::Open(record));
            crash_after_open_record(open.reader.stat().path.as_str());
        }
        handles.insert(fh, open);
    }

    /// For an OPEN the kernel sent again after a takeover: the handle the previous agent
    /// recorded for it, if it got that far (its reply never reached the kernel).
    pub(super) fn resent_open(&self, unique: u64) -> Option<(u64, Arc<OpenFile>)> {
        if unique & RESENT == 0 {
            return None;
        }
        let fh = self
            .resent_opens
            .lock()
            .expect("resent opens")
            .remove(&(unique & !RESENT))?;
        let open = self.handles.lock().expect("handles").get(&fh).cloned()?;
        tracing::info!(
            fh,
            "a resent OPEN gets the handle the previous agent recorded for it"
        );
        Some((fh, open))
    }

    /// Forgets an open handle.
    pub(super) fn remove_handle(&self, fh: u64) -> Option<Arc<OpenFile>> {
        let mut handles = self.handles.lock().expect("handles");
        let open = handles.remove(&fh);
        if open.is_some()
            && let Some(log) = &self.log
        {
            log.append(&Record::Release { fh });
        }
        drop(handles);
        self.restored_leases.lock().expect("leases").remove(&fh);
        open
    }

    /// What INIT granted, for the takeover log.
    pub(super) fn log_init(&self) {
        if let Some(log) = &self.log {
            log.append(&Record::Init {
                passthrough: self.passthrough.load(Ordering::Relaxed),
                resend: self.resend.load(Ordering::Relaxed),
            });
            log.append(&Record::Handles { upto: FH_BLOCK });
        }
    }

    /// Takes over what a previous agent's log says the kernel refers to: node ids, and
    /// open handles with the passthrough backing ids they hold (`adopt` wraps an id of
    /// this connection). Returns the handles opened in passthrough mode, whose leases
    /// [`FsState::retake_leases`] takes again.
    pub(super) fn restore(
        &self,
        restored: &Restored,
        adopt: impl Fn(u32) -> fuser::BackingId,
    ) -> Vec<(u64, FileStat)> {
        self.passthrough
            .store(restored.passthrough, Ordering::Relaxed);
        self.resend.store(restored.resend, Ordering::Relaxed);
        self.next_fh.store(restored.next_fh, Ordering::Relaxed);
        self.inodes
            .write()
            .expect("inodes")
            .restore(&restored.inodes);
        let mut backings: HashMap<u32, Arc<fuser::BackingId>> = HashMap::new();
        let mut passthrough = Vec::new();
        let mut resent = self.resent_opens.lock().expect("resent opens");
        for (&fh, open) in &restored.opens {
            let Some(stat) = open.stat.to_stat() else {
                continue;
            };
            if open.unique != 0 {
                resent.insert(open.unique, fh);
            }
            let etag = stat.etag.clone().unwrap_or_default();
            let backing = open.backing.map(|id| {
                backings
                    .entry(id)
                    .or_insert_with(|| Arc::new(adopt(id)))
                    .clone()
            });
            let mut io = self.io.lock().expect("io");
            let entry = io.entry(open.ino).or_default();
            match &backing {
                Some(b) => {
                    entry.backing = Some((etag.clone(), Arc::downgrade(b)));
                    passthrough.push((fh, stat.clone()));
                }
                None if !open.direct => {
                    entry.cached_opens += 1;
                    self.last_etag.lock().expect("etags").insert(open.ino, etag);
                }
                None => {}
            }
            drop(io);
            // A file written on this node: its local file again, by id.
            let local = stat
                .etag
                .as_deref()
                .unwrap_or_default()
                .strip_prefix(strata_engine::writes::LOCAL_ETAG_PREFIX)
                .and_then(|id| id.parse().ok())
                .and_then(|id| self.view().writes()?.file(id));
            let path = stat.path.clone();
            let reader = match &local {
                Some(l) => Arc::new(self.view().open_local(&stat.path, l.clone())),
                None => Arc::new(self.view().reopen(stat)),
            };
            let write = match (open.write, local, self.view().writes()) {
                (true, Some(l), Some(w)) => {
                    w.add_writer(&l);
                    Some(l)
                }
                _ => None,
            };
            let write_lost = open.write && write.is_none();
            if write_lost {
                tracing::error!(path = %path, fh,
                    "a file open for writing before the restart is no longer in the write journal; its writes and its close fail with EIO");
            }
            self.handles.lock().expect("handles").insert(
                fh,
                Arc::new(OpenFile {
                    reader,
                    ino: open.ino,
                    passthrough: backing,
                    _lease: None,
                    direct: open.direct,
                    write,
                    write_lost,
                }),
            );
        }
        drop(resent);
        // Everything restored is rewritten: the log then starts with exactly this.
        self.compact_log();
        passthrough
    }

    /// Takes the eviction leases of files a previous agent opened in passthrough mode
    /// again (they ended with it); a file evicted meanwhile keeps being read by the
    /// kernel from the backing file it holds open.
    pub(super) async fn retake_leases(&self, files: Vec<(u64, FileStat)>) {
        for (fh, stat) in files {
            if let Some((_, lease)) = self.view().cached_file(&stat).await
                && self.handles.lock().expect("handles").contains_key(&fh)
            {
                self.restored_leases
                    .lock()
                    .expect("leases")
                    .insert(fh, lease);
            }
        }
    }

    /// Rewrites the takeover log once it has grown large.
    pub(super) fn compact_log_if_due(&self) {
        if self.log.as_ref().is_some_and(|l| l.compaction_due()) {
            self.compact_log();
        }
    }

    /// Rewrites the takeover log with what is live, holding every table it describes.
    fn compact_log(&self) {
        let Some(log) = &self.log else {
            return;
        };
        let inodes = self.inodes.write().expect("inodes");
        let handles = self.handles.lock().expect("handles");
        let next_fh = self.next_fh.load(Ordering::Relaxed);
        let mut records = vec![
            Record::Init {
                passthrough: self.passthrough.load(Ordering::Relaxed),
                resend: self.resend.load(Ordering::Relaxed),
            },
            Record::Handles {
                upto: next_fh - next_fh % FH_BLOCK + 2 * FH_BLOCK,
            },
        ];
        records.extend(inodes.records());
        records.extend(
            handles
                .iter()
                .map(|(&fh, open)| Record::Open(open.record(fh))),
        );
        if let Err(e) = log.rewrite(&records) {
            tracing::warn!(log = %log.path().display(), error = %e,
                "rewriting the takeover log failed; it keeps growing");
        }
    }
}

impl OpenFile {
    /// This handle as a takeover log record.
    pub(super) fn record(&self, fh: u64) -> OpenRecord {
        OpenRecord {
            fh,
            ino: self.ino,
            backing: self.passthrough.as_ref().map(|b| b.id()),
            direct: self.direct,
            stat: SavedStat::of(self.reader.stat()),
            unique: 0,
            write: self.write.is_some(),
        }
    }
}
