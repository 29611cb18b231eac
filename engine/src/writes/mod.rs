//! Writes to a dataset: they land on this node and reach the source in the background.
//!
//! A file opened for writing becomes a *local file*: a staging file under the dataset's
//! write directory (`<cache>/writes/<namespace>~<name>/`), copied up from the source
//! first when an existing object is opened without truncation. `close` and `fsync`
//! commit it: its data is synced and a record in the [`journal`] says it is to be
//! uploaded, before the call returns. Deletes, renames and directories are journaled the
//! same way. An uploader ([`upload`]) works through the operations owed to the source in
//! journal order per path, a few at once, retrying with backoff; an object appears at
//! the source only whole (one PUT, or a multipart upload completed at the end).
//!
//! Until its operations reached the source, the journal's view of a path (the
//! *overlay*) is what `stat`, listings and reads see on this node. After a kill, the
//! journal gives back every committed file and owed operation, and uploads resume.

mod journal;
mod local;
mod replay;
mod state;
pub(crate) mod upload;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

pub use journal::{Base, MovedObject, Record};
pub use local::{LOCAL_ETAG_PREFIX, LocalFile};

use crate::config::WriteMode;
use crate::dataset::{EntryKind, FileStat};
use crate::metrics::Metrics;
use crate::path::DatasetPath;
use crate::source::Source;
use crate::{Error, Result};
use journal::{Journal, from_nanos, mtime_ns, nanos, object_of};
use local::LocalState;
use replay::{live_records, remove_strays, replay};

/// How long a writer waits for uploads to free room under the dirty-bytes bound before
/// it gets ENOSPC.
pub const DIRTY_WAIT: Duration = Duration::from_secs(30);

/// Records appended to a journal before it is rewritten with only what is live.
const COMPACT_AFTER_RECORDS: u64 = 100_000;

/// How long a write-through `close` or `fsync` waits for the source before it fails
/// with EIO (the change stays in the journal and is uploaded later all the same).
pub const WRITE_THROUGH_WAIT: Duration = Duration::from_secs(60);

/// Told each path whose change reached the source.
pub type SyncedHook = dyn Fn(&DatasetPath) + Send + Sync;

/// What the journal says about a path on this node.
#[derive(Debug, Clone)]
pub enum Overlay {
    /// A file written here.
    File(Arc<LocalFile>),
    /// A source object renamed here, not copied at the source yet (read from where it was).
    Moved(FileStat),
    /// A directory made here.
    Dir,
    /// Removed here, not deleted at the source yet.
    Gone,
}

/// An operation owed to the source.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Upload {
        id: u64,
    },
    Delete {
        path: DatasetPath,
    },
    Copy {
        from: DatasetPath,
        to: DatasetPath,
        etag: String,
    },
}

#[derive(Debug)]
struct PendingOp {
    op: Op,
    since: SystemTime,
    attempts: u32,
    retry_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    entries: BTreeMap<DatasetPath, Overlay>,
    files: HashMap<u64, Arc<LocalFile>>,
    ops: BTreeMap<u64, PendingOp>,
    /// Operations under way, with the paths each holds.
    running: HashMap<u64, Vec<DatasetPath>>,
    next_id: u64,
    next_seq: u64,
    dirty_bytes: u64,
}

/// Counters of the uploads since the agent started, and the last failure.
#[derive(Debug, Default)]
struct Totals {
    uploaded_files: AtomicU64,
    uploaded_bytes: AtomicU64,
    failures: AtomicU64,
    conflicts: AtomicU64,
    last_error: Mutex<Option<(String, SystemTime)>>,
    last_conflict: Mutex<Option<Conflict>>,
}

/// An upload that found the object changed at the source (see [`WriteUsage`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// The dataset path uploaded.
    pub path: String,
    /// The dataset path the upstream version was kept under.
    pub kept_as: String,
    pub time: SystemTime,
}

/// What one dataset's writes on this node amount to (node status, metrics).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteUsage {
    /// Paths with a change not at the source yet.
    pub pending_files: u64,
    /// Bytes of the files waiting for upload.
    pub pending_bytes: u64,
    /// When the oldest change not at the source yet was made.
    pub oldest_pending: Option<SystemTime>,
    /// Files and bytes uploaded since the agent started.
    pub uploaded_files: u64,
    pub uploaded_bytes: u64,
    /// Failed attempts (each retried) and conflicts met since the agent started.
    pub failures: u64,
    pub conflicts: u64,
    /// The last failure, until an operation succeeds.
    pub last_error: Option<(String, SystemTime)>,
    /// The last conflict met since the agent started.
    pub last_conflict: Option<Conflict>,
}

/// A staging file being filled (see [`DatasetWrites::new_staging`]).
#[derive(Debug)]
pub struct Staging {
    id: u64,
    path: PathBuf,
    file: std::fs::File,
}

impl Staging {
    /// The open staging file.
    pub fn file(&self) -> &std::fs::File {
        &self.file
    }

    /// Removes a staging file not put anywhere (a failed copy-up).
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One dataset's writes on this node. Kept by the agent across reconfigurations of the
/// dataset (one journal, one uploader).
pub struct DatasetWrites {
    dataset: String,
    dir: PathBuf,
    journal: Mutex<Journal>,
    state: Mutex<State>,
    sources: RwLock<Vec<(Arc<Source>, WriteMode)>>,
    dirty_limit: AtomicU64,
    dirty_wait: Mutex<Duration>,
    /// Wakes the uploader: an operation was added or finished.
    work: Notify,
    /// Wakes writers waiting for room or for their upload.
    progress: Notify,
    totals: Totals,
    metrics: Arc<Metrics>,
    /// Held by a copy-up (and a rename) of a path: two openers get one local file.
    pub(crate) copy_up: tokio::sync::Mutex<()>,
    /// Forgets the metadata cache's view of a path whose change reached the source.
    on_synced: OnceLock<Mutex<Weak<SyncedHook>>>,
    /// False until [`Self::settle`]: replayed files are all kept, for the write handles a
    /// takeover may find again.
    settled: std::sync::atomic::AtomicBool,
    /// Directories made here where the source had nothing, when, and the names under each
    /// that reached the source since (see [`Self::known_absent`]).
    made_empty: Mutex<HashMap<DatasetPath, (Instant, HashSet<String>)>>,
}

impl std::fmt::Debug for DatasetWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatasetWrites")
            .field("dataset", &self.dataset)
            .finish()
    }
}

impl DatasetWrites {
    /// Opens the writes of `dataset` ("ns/name") under `dir`: replays the journal and
    /// starts the uploader on the current tokio runtime.
    pub fn open(
        dataset: &str,
        dir: &Path,
        sources: Vec<(Arc<Source>, WriteMode)>,
        dirty_limit: u64,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>> {
        let files_dir = dir.join("files");
        std::fs::create_dir_all(&files_dir).map_err(|e| Error::cache_io(&files_dir, e))?;
        let (mut journal, records) = Journal::open(&dir.join("journal"))?;
        let state = replay(&files_dir, records)?;
        // Start small: only what is live.
        journal.rewrite(&live_records(&state))?;
        remove_strays(&files_dir, &state);
        let pending = state.ops.len();
        let writes = Arc::new(DatasetWrites {
            dataset: dataset.to_string(),
            dir: dir.to_path_buf(),
            journal: Mutex::new(journal),
            state: Mutex::new(state),
            sources: RwLock::new(sources),
            dirty_limit: AtomicU64::new(dirty_limit),
            dirty_wait: Mutex::new(DIRTY_WAIT),
            work: Notify::new(),
            progress: Notify::new(),
            totals: Totals::default(),
            metrics,
            copy_up: tokio::sync::Mutex::new(()),
            on_synced: OnceLock::new(),
            settled: std::sync::atomic::AtomicBool::new(false),
            made_empty: Mutex::new(HashMap::new()),
        });
        if pending > 0 {
            tracing::info!(dataset = %dataset, operations = pending,
                "write journal replayed; resuming uploads");
        }
        tokio::spawn(upload::run(Arc::downgrade(&writes)));
        Ok(writes)
    }

    /// The sources (and how each takes writes) after a reconfiguration.
    pub fn set_sources(&self, sources: Vec<(Arc<Source>, WriteMode)>, dirty_limit: u64) {
        *self.sources.write().expect("sources") = sources;
        self.dirty_limit.store(dirty_limit, Ordering::Relaxed);
        self.work.notify_one();
    }

    /// How long a writer waits for room under the dirty-bytes bound before ENOSPC
    /// ([`DIRTY_WAIT`] unless set; tests shorten it).
    pub fn set_dirty_wait(&self, wait: Duration) {
        *self.dirty_wait.lock().expect("dirty wait") = wait;
    }

    /// Calls `f` with each path whose change reached the source (the view forgets what
    /// its metadata cache knew of it). Replaces an earlier callback.
    pub fn on_synced(&self, f: &Arc<SyncedHook>) {
        let weak = Arc::downgrade(f);
        let slot = self.on_synced.get_or_init(|| Mutex::new(weak.clone()));
        *slot.lock().expect("on_synced") = weak;
    }

    fn synced(&self, path: &DatasetPath) {
        // At the source now: no longer known absent under a directory made empty here.
        if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
            let mut made = self.made_empty.lock().expect("made empty");
            if let Some((_, reached)) = made.get_mut(&parent) {
                reached.insert(name.to_string());
            }
        }
        let f = self
            .on_synced
            .get()
            .and_then(|s| s.lock().expect("on_synced").upgrade());
        if let Some(f) = f {
            f(path);
        }
    }

    /// The directory of this dataset's journal and staging files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How the source of `path` takes writes, and the source; EROFS when it does not.
    pub fn mode_of(&self, path: &DatasetPath) -> Result<(Arc<Source>, String, WriteMode)> {
        let sources = self.sources.read().expect("sources");
        let found = sources
            .iter()
            .filter_map(|(s, m)| {
                path.strip_prefix(s.mount_path())
                    .map(|rel| (s.clone(), rel.to_string(), *m))
            })
            .max_by_key(|(s, _, _)| s.mount_path().as_str().len());
        match found {
            Some((s, rel, mode)) if !mode.is_read_only() && !rel.is_empty() => Ok((s, rel, mode)),
            _ => Err(Error::refused(
                path,
                libc::EROFS,
                "read-only (its source's writeMode is ReadOnly)",
            )),
        }
    }

    /// The local file with this id, if the node still keeps it.
    pub fn file(&self, id: u64) -> Option<Arc<LocalFile>> {
        self.state.lock().expect("writes").files.get(&id).cloned()
    }

    /// What this node's journal says about `path`, if anything; a path below a local
    /// file or directory that is not listed itself is a directory when something below it
    /// is local.
    pub fn lookup(&self, path: &DatasetPath) -> Option<Overlay> {
        let st = self.state.lock().expect("writes");
        if let Some(o) = st.entries.get(path) {
            return Some(o.clone());
        }
        st.below(path)
            .any(|(_, o)| !matches!(o, Overlay::Gone))
            .then_some(Overlay::Dir)
    }

    /// The overlay's children of `dir`: name and what it is (`None`: hidden), or `None`
    /// when the journal has nothing below `dir`.
    pub fn children(&self, dir: &DatasetPath) -> Option<Vec<(String, Overlay)>> {
        let st = self.state.lock().expect("writes");
        let mut out: BTreeMap<String, Overlay> = BTreeMap::new();
        for (p, o) in st.below(dir) {
            let Some(rel) = p.strip_prefix(dir) else {
                continue;
            };
            match rel.split_once('/') {
                None => {
                    out.insert(rel.to_string(), o.clone());
                }
                Some((first, _)) if !matches!(o, Overlay::Gone) => {
                    if !matches!(out.get(first), Some(Overlay::File(_) | Overlay::Moved(_))) {
                        out.insert(first.to_string(), Overlay::Dir);
                    }
                }
                Some(_) => {}
            }
        }
        (!out.is_empty()).then(|| out.into_iter().collect())
    }

    /// A new empty local file at `path` (created, or opened with O_TRUNC over `base`),
    /// claimed by the caller as one writer (see [`Self::remove_writer`]).
    pub fn create(&self, path: &DatasetPath, base: Base, mode: u32) -> Result<Arc<LocalFile>> {
        self.mode_of(path)?;
        let staging = self.new_staging()?;
        self.stage(staging, path, base, mode)
    }

    /// A staging file not in the journal yet, for a copy-up to fill before [`Self::stage`]
    /// puts it at its path (a kill before that leaves a stray, removed at the next start).
    pub fn new_staging(&self) -> Result<Staging> {
        let id = {
            let mut st = self.state.lock().expect("writes");
            st.next_id += 1;
            st.next_id
        };
        let path = self.dir.join("files").join(id.to_string());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| Error::cache_io(&path, e))?;
        Ok(Staging { id, path, file })
    }

    /// Puts a staging file at `path` as a local file, claimed by the caller as one writer.
    pub fn stage(
        &self,
        staging: Staging,
        path: &DatasetPath,
        base: Base,
        mode: u32,
    ) -> Result<Arc<LocalFile>> {
        let Staging {
            id,
            path: staged,
            file,
        } = staging;
        let size = file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| Error::cache_io(&staged, e))?;
        self.reserve_now(size)?;
        let local = Arc::new(LocalFile {
            id,
            staging: staged,
            file,
            state: Mutex::new(LocalState {
                path: Some(path.clone()),
                size,
                mtime: SystemTime::now(),
                mode: mode & 0o7777,
                base: base.clone(),
                // Claimed by the caller that is about to write it (`remove_writer`).
                writers: 1,
                generation: 1,
                committed: 0,
                uploaded: 0,
                committed_as: None,
                sent: Vec::new(),
                dirty_since: Some(SystemTime::now()),
            }),
        });
        let record = Record::Stage {
            id,
            path: path.to_string(),
            base,
            mode: mode & 0o7777,
        };
        let mut st = self.state.lock().expect("writes");
        if let Err(e) = self.append(&[record]) {
            st.dirty_bytes = st.dirty_bytes.saturating_sub(size);
            return Err(e);
        }
        if let Some(Overlay::File(old)) = st
            .entries
            .insert(path.clone(), Overlay::File(local.clone()))
        {
            old.state.lock().expect("local file").path = None;
        }
        st.files.insert(id, local.clone());
        drop(st);
        self.drop_detached();
        Ok(local)
    }

    /// Ends the wait for write handles of a previous agent (its mounts were taken over,
    /// or there were none): a replayed file that stands nowhere and has no writer now is
    /// let go; one written after its last commit (or never committed) by a writer that did
    /// not come back is committed as it is, as a disk keeps what was written before a
    /// crash; files at the source as they are are let go.
    pub fn settle(self: &Arc<Self>) {
        if self.settled.swap(true, Ordering::SeqCst) {
            return;
        }
        let files: Vec<Arc<LocalFile>> = self
            .state
            .lock()
            .expect("writes")
            .files
            .values()
            .cloned()
            .collect();
        let mut orphaned = Vec::new();
        for f in files {
            let fs = f.state.lock().expect("local file");
            if fs.writers > 0 {
                continue;
            }
            if fs.path.is_some() && fs.generation > fs.committed {
                drop(fs);
                orphaned.push(f);
            } else {
                drop(fs);
                self.drop_if_synced(f.id);
            }
        }
        if orphaned.is_empty() {
            return;
        }
        tracing::info!(dataset = %self.dataset, files = orphaned.len(),
            "files written before a restart and not closed since are committed as they are");
        let w = self.clone();
        tokio::spawn(async move {
            for f in orphaned {
                if let Err(e) = w.commit(&f).await {
                    tracing::warn!(dataset = %w.dataset, error = %e,
                        "a file written before a restart could not be committed");
                }
                w.drop_if_synced(f.id);
            }
        });
    }

    /// Marks one more writer of `file` (a write handle a new agent took over).
    pub fn add_writer(&self, file: &LocalFile) {
        file.state.lock().expect("local file").writers += 1;
    }

    /// The local file at `path`, claimed as one more writer, if there is one. Taken under
    /// the lock that letting a file go takes: a file found here is not let go under its
    /// new writer.
    pub fn claim(&self, path: &DatasetPath) -> Option<Arc<LocalFile>> {
        let st = self.state.lock().expect("writes");
        match st.entries.get(path) {
            Some(Overlay::File(f)) => {
                f.state.lock().expect("local file").writers += 1;
                Some(f.clone())
            }
            _ => None,
        }
    }

    /// Writes `data` at `offset`, waiting up to [`DIRTY_WAIT`] for room under the
    /// dirty-bytes bound (then ENOSPC: nothing written).
    pub async fn write(&self, file: &LocalFile, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset + data.len() as u64;
        let grow = end.saturating_sub(file.size());
        self.reserve(grow).await?;
        let written = std::os::unix::fs::FileExt::write_all_at(&file.file, data, offset);
        let mut st = file.state.lock().expect("local file");
        if let Err(e) = written {
            drop(st);
            self.release_bytes(grow);
            return Err(Error::cache_io(&file.staging, e));
        }
        // Another writer may have grown the file meanwhile: count only what is new.
        let grown = end.saturating_sub(st.size);
        st.size = st.size.max(end);
        LocalFile::touch(&mut st);
        // Released once the file's lock is let go: the locks are taken writes' state
        // first, then a file's (`drop_if_synced`), never the other way round.
        drop(st);
        if grown < grow {
            self.release_bytes(grow - grown);
        }
        Ok(())
    }

    /// Truncates or extends `file` to `size`.
    pub async fn set_len(&self, file: &LocalFile, size: u64) -> Result<()> {
        let old = file.size();
        if size > old {
            self.reserve(size - old).await?;
        }
        file.file
            .set_len(size)
            .map_err(|e| Error::cache_io(&file.staging, e))?;
        let mut st = file.state.lock().expect("local file");
        let shrunk = st.size.saturating_sub(size);
        st.size = size;
        LocalFile::touch(&mut st);
        drop(st); // before taking writes' state: see `write`
        if shrunk > 0 {
            self.release_bytes(shrunk);
        }
        Ok(())
    }

    /// Makes `file` durable as it is (close, fsync): synced to disk and journaled for
    /// upload. A write-through source waits until the source has it.
    pub async fn commit(self: &Arc<Self>, file: &Arc<LocalFile>) -> Result<()> {
        let (generation, path) = {
            let st = file.state.lock().expect("local file");
            (st.generation, st.path.clone())
        };
        let Some(path) = path else {
            return Ok(()); // unlinked or replaced: nothing to upload
        };
        let through = self.mode_of(&path)?.2 == WriteMode::WriteThrough;
        if generation > file.state.lock().expect("local file").committed {
            let f = file.clone();
            // The staging file as this commit finds it, looked at before the sync: a write
            // after the look changes its time (it was looked at: the next change gets a
            // time of its own) and tells a replay the file changed since.
            let meta = tokio::task::spawn_blocking(move || {
                let meta = f.file.metadata()?;
                f.file.sync_data()?;
                Ok::<_, std::io::Error>(meta)
            })
            .await
            .map_err(|e| Error::Task(e.to_string()))?
            .map_err(|e| Error::cache_io(&file.staging, e))?;
            let committed_as = (meta.len(), mtime_ns(&meta));
            {
                let mut st = self.state.lock().expect("writes");
                let seq = st.next_seq();
                self.append(&[Record::Commit {
                    seq,
                    id: file.id,
                    size: committed_as.0,
                    mtime_ns: Some(committed_as.1),
                }])?;
                st.push_op(seq, Op::Upload { id: file.id });
                let mut fs = file.state.lock().expect("local file");
                if generation >= fs.committed {
                    fs.committed = generation;
                    fs.committed_as = Some(committed_as);
                }
            }
            self.work.notify_one();
        }
        if through {
            self.wait_uploaded(file, generation).await?;
        }
        Ok(())
    }

    async fn wait_uploaded(&self, file: &LocalFile, generation: u64) -> Result<()> {
        let deadline = Instant::now() + WRITE_THROUGH_WAIT;
        loop {
            let progressed = self.progress.notified();
            if file.state.lock().expect("local file").uploaded >= generation {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline.into(), progressed)
                .await
                .is_err()
            {
                let last = self.totals.last_error.lock().expect("last error").clone();
                let why = last.map(|(m, _)| m).unwrap_or_else(|| "no answer".into());
                return Err(Error::refused(
                    &file.stat(DatasetPath::root()).path,
                    libc::EIO,
                    &format!(
                        "the source did not take the file within {}s ({why}); it stays in the node's journal and is uploaded when the source answers",
                        WRITE_THROUGH_WAIT.as_secs()
                    ),
                ));
            }
        }
    }

    /// A write handle of `file` closed: once it was the last and the file is at the
    /// source as it is, the node stops keeping it.
    pub fn remove_writer(&self, file: &LocalFile) {
        file.state.lock().expect("local file").writers -= 1;
        self.drop_if_synced(file.id);
    }

    /// Removes the file at `path` (`at_source`: the source may hold it).
    pub fn unlink(&self, path: &DatasetPath, at_source: bool) -> Result<()> {
        self.mode_of(path)?;
        let mut st = self.state.lock().expect("writes");
        let seq = st.next_seq();
        self.append(&[Record::Unlink {
            seq,
            path: path.to_string(),
        }])?;
        st.apply_unlink(seq, path, at_source);
        drop(st);
        self.drop_detached();
        self.work.notify_one();
        Ok(())
    }

    /// Renames the file `from` to `to`. `remote` is `from`'s source object when the
    /// file is not local: it is copied at the source, then deleted. EAGAIN when the
    /// caller saw a local file (no `remote`, or a stat with a local ETag) that was uploaded
    /// and let go since: look again.
    pub fn rename(
        &self,
        from: &DatasetPath,
        to: &DatasetPath,
        remote: Option<&FileStat>,
    ) -> Result<()> {
        let (from_source, ..) = self.mode_of(from)?;
        let (to_source, ..) = self.mode_of(to)?;
        if !Arc::ptr_eq(&from_source, &to_source) {
            return Err(Error::refused(
                to,
                libc::EXDEV,
                "in another source than the file (tools such as mv then copy and delete)",
            ));
        }
        let mut st = self.state.lock().expect("writes");
        // The caller's look at a local file: its stat is no source object to copy.
        let looked_local = remote.is_none_or(|s| {
            s.etag
                .as_deref()
                .is_some_and(|e| e.starts_with(LOCAL_ETAG_PREFIX))
        });
        let remote = match st.entries.get(from) {
            Some(Overlay::File(_)) => None,
            _ if looked_local => {
                // Local when the caller looked, uploaded and let go since.
                return Err(Error::refused(
                    from,
                    libc::EAGAIN,
                    "uploaded meanwhile; look it up again",
                ));
            }
            _ => remote,
        };
        // The copy comes before the delete of what it copies (operations on one path run
        // in this order).
        let copy = remote.map(|stat| {
            (
                st.next_seq(),
                MovedObject {
                    size: stat.size,
                    mtime_ns: nanos(stat.mtime),
                    etag: stat.etag.clone().unwrap_or_default(),
                    object: object_of(stat),
                },
            )
        });
        let seq = st.next_seq();
        let upload = match st.entries.get(from) {
            Some(Overlay::File(f)) if f.state.lock().expect("local file").committed > 0 => {
                Some(st.next_seq())
            }
            _ => None,
        };
        let record = Record::Rename {
            seq,
            from: from.to_string(),
            to: to.to_string(),
            copy: copy.clone(),
            upload,
        };
        self.append(std::slice::from_ref(&record))?;
        st.apply_rename(seq, from, to, copy, upload, remote);
        drop(st);
        self.drop_detached();
        self.work.notify_one();
        Ok(())
    }

    /// A directory made on this node (shown until removed; at the source it exists once
    /// a file in it is uploaded).
    /// `empty_at_source`: the source was asked and had nothing at `path` or below it.
    pub fn mkdir(&self, path: &DatasetPath, empty_at_source: bool) -> Result<()> {
        self.mode_of(path)?;
        let mut st = self.state.lock().expect("writes");
        self.append(&[Record::Mkdir {
            path: path.to_string(),
        }])?;
        st.entries.insert(path.clone(), Overlay::Dir);
        drop(st);
        if empty_at_source {
            self.made_empty
                .lock()
                .expect("made empty")
                .insert(path.clone(), (Instant::now(), HashSet::new()));
        }
        Ok(())
    }

    /// Whether `path` is known to be absent at the source without asking it: it is in a
    /// directory this node made within `ttl` (the metadata TTL) where the source had
    /// nothing, and no change of this node put it there since. A job writing its output
    /// into a new directory then creates each file without the two round trips of a
    /// lookup (HEAD, then LIST for a directory). Another writer's object under that
    /// directory shows once `ttl` passed, as any metadata cached that long would.
    pub fn known_absent(&self, path: &DatasetPath, ttl: Duration) -> bool {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return false;
        };
        let mut made = self.made_empty.lock().expect("made empty");
        match made.get(&parent) {
            Some((at, _)) if at.elapsed() > ttl => {
                made.remove(&parent);
                false
            }
            Some((_, reached)) => !reached.contains(name),
            None => false,
        }
    }

    /// Removes an empty directory (the caller checked it is empty).
    pub fn rmdir(&self, path: &DatasetPath, at_source: bool) -> Result<()> {
        self.mode_of(path)?;
        let mut st = self.state.lock().expect("writes");
        self.append(&[Record::Rmdir {
            path: path.to_string(),
        }])?;
        st.apply_rmdir(path, at_source);
        drop(st);
        self.made_empty.lock().expect("made empty").remove(path);
        Ok(())
    }

    /// This dataset's writes on this node now.
    pub fn usage(&self) -> WriteUsage {
        let st = self.state.lock().expect("writes");
        let mut paths = HashSet::new();
        let mut bytes = 0;
        let mut oldest: Option<SystemTime> = None;
        for p in st.ops.values() {
            oldest = Some(oldest.map_or(p.since, |o| o.min(p.since)));
            match &p.op {
                Op::Upload { id } => {
                    if let Some(f) = st.files.get(id) {
                        let fs = f.state.lock().expect("local file");
                        if fs.committed > fs.uploaded {
                            bytes += fs.size;
                            if let Some(path) = &fs.path {
                                paths.insert(path.clone());
                            }
                        }
                    }
                }
                Op::Delete { path } => {
                    paths.insert(path.clone());
                }
                Op::Copy { to, .. } => {
                    paths.insert(to.clone());
                }
            }
        }
        let t = &self.totals;
        WriteUsage {
            pending_files: paths.len() as u64,
            pending_bytes: bytes,
            oldest_pending: oldest,
            uploaded_files: t.uploaded_files.load(Ordering::Relaxed),
            uploaded_bytes: t.uploaded_bytes.load(Ordering::Relaxed),
            failures: t.failures.load(Ordering::Relaxed),
            conflicts: t.conflicts.load(Ordering::Relaxed),
            last_error: t.last_error.lock().expect("last error").clone(),
            last_conflict: t.last_conflict.lock().expect("last conflict").clone(),
        }
    }

    /// Waits until every operation owed to the source reached it, or `timeout` passed
    /// (then false).
    pub async fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let progressed = self.progress.notified();
            let idle = {
                let st = self.state.lock().expect("writes");
                st.ops.is_empty() && st.running.is_empty()
            };
            if idle {
                return true;
            }
            if tokio::time::timeout_at(deadline.into(), progressed)
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    /// True when nothing is owed to the source, nothing is under way and no file is kept
    /// on the node (the journal holds nothing a restart would need).
    pub fn is_idle(&self) -> bool {
        let st = self.state.lock().expect("writes");
        st.ops.is_empty() && st.running.is_empty() && st.files.is_empty()
    }

    /// Bytes of local files now, and the bound.
    pub fn dirty_bytes(&self) -> (u64, u64) {
        let st = self.state.lock().expect("writes");
        (st.dirty_bytes, self.dirty_limit.load(Ordering::Relaxed))
    }

    fn append(&self, records: &[Record]) -> Result<()> {
        self.journal.lock().expect("journal").append(records)
    }

    fn reserve_now(&self, bytes: u64) -> Result<()> {
        let mut st = self.state.lock().expect("writes");
        let limit = self.dirty_limit.load(Ordering::Relaxed);
        if bytes > 0 && st.dirty_bytes + bytes > limit {
            return Err(self.no_space(st.dirty_bytes, limit));
        }
        st.dirty_bytes += bytes;
        Ok(())
    }

    async fn reserve(&self, bytes: u64) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let deadline = Instant::now() + *self.dirty_wait.lock().expect("dirty wait");
        loop {
            let progressed = self.progress.notified();
            {
                let mut st = self.state.lock().expect("writes");
                let limit = self.dirty_limit.load(Ordering::Relaxed);
                if st.dirty_bytes + bytes <= limit {
                    st.dirty_bytes += bytes;
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Err(self.no_space(st.dirty_bytes, limit));
                }
            }
            let _ = tokio::time::timeout_at(deadline.into(), progressed).await;
        }
    }

    fn no_space(&self, used: u64, limit: u64) -> Error {
        Error::refused(
            &DatasetPath::root(),
            libc::ENOSPC,
            &format!(
                "{used} bytes of dataset {} wait for upload, the most its policy's quota allows ({limit}); raise the quota or wait for the source",
                self.dataset
            ),
        )
    }

    fn release_bytes(&self, bytes: u64) {
        let mut st = self.state.lock().expect("writes");
        st.dirty_bytes = st.dirty_bytes.saturating_sub(bytes);
        drop(st);
        self.progress.notify_waiters();
    }

    /// Lets go of local files that stand nowhere any more (unlinked, or replaced by a
    /// rename or a new file) and have no writer.
    fn drop_detached(&self) {
        let detached: Vec<u64> = {
            let st = self.state.lock().expect("writes");
            st.files
                .values()
                .filter(|f| {
                    let fs = f.state.lock().expect("local file");
                    fs.path.is_none() && fs.writers == 0
                })
                .map(|f| f.id)
                .collect()
        };
        for id in detached {
            self.drop_if_synced(id);
        }
    }

    /// Rewrites the journal with only what is live once it has grown by this many records
    /// since the last rewrite (at start, or here).
    pub(super) fn compact_if_due(&self) {
        let st = self.state.lock().expect("writes");
        let mut journal = self.journal.lock().expect("journal");
        if journal.appended() < COMPACT_AFTER_RECORDS {
            return;
        }
        if let Err(e) = journal.rewrite(&live_records(&st)) {
            tracing::warn!(dataset = %self.dataset, error = %e,
                "the write journal could not be compacted; it keeps growing until the next try");
        }
    }

    /// Stops keeping local file `id` once nothing needs it: no writer, no path, or at the
    /// source as it is with no operation left on it.
    fn drop_if_synced(&self, id: u64) {
        if !self.settled.load(Ordering::SeqCst) {
            return; // a write handle of the previous agent may still come back for it
        }
        let mut st = self.state.lock().expect("writes");
        let Some(file) = st.files.get(&id).cloned() else {
            return;
        };
        let fs = file.state.lock().expect("local file");
        let owed = st
            .ops
            .values()
            .any(|p| matches!(p.op, Op::Upload { id: i } if i == id));
        let synced = fs.uploaded >= fs.generation && !owed;
        if fs.writers > 0 || (fs.path.is_some() && !synced) {
            return;
        }
        let path = fs.path.clone();
        let size = fs.size;
        drop(fs);
        if self.append(&[Record::Dropped { id }]).is_err() {
            return; // kept; tried again at the next release or upload
        }
        st.files.remove(&id);
        if let Some(p) = &path {
            // The metadata cache forgets the path before the overlay stops answering for
            // it: the other way round, a stat in between got the cache's answer from before
            // the file was made ("not found"), and an open or unlink of a file just closed
            // failed with ENOENT. (The hook takes only the metadata cache's locks.)
            self.synced(p);
            if matches!(st.entries.get(p), Some(Overlay::File(f)) if f.id == id) {
                st.entries.remove(p);
            }
        }
        st.dirty_bytes = st.dirty_bytes.saturating_sub(size);
        drop(st);
        let _ = std::fs::remove_file(&file.staging);
        self.progress.notify_waiters();
    }
}

#[cfg(test)]
mod tests;
