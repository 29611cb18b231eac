//! The write journal of one dataset on one node: every change a writer made durable
//! (a file closed or fsynced, a delete, a rename, a directory), and every operation that
//! reached the source since. Replayed at start, it gives back the files not uploaded yet
//! and the operations still owed to the source.
//!
//! Records are framed by [`crate::frames`] and appended with one `write(2)` followed by
//! `fdatasync`: a change is in the journal before the call that made it durable returns.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::frames;
use crate::{Error, Result};

/// What an upload of a file expects at the source, so that a change made upstream
/// meanwhile is noticed (a conflict) rather than overwritten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Base {
    /// A new file: nothing at its path.
    New,
    /// The object version (ETag) the file started from or was last uploaded as.
    Version(String),
    /// Whatever is there is replaced (the file was renamed onto the path).
    Replace,
}

/// A source object a rename moves: the copy at the source takes this version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MovedObject {
    pub size: u64,
    pub mtime_ns: i64,
    pub etag: String,
    /// Where the object is read from until the copy is made (its source and key there,
    /// and the version's ETag): a replayed rename reads the same object version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<(String, String, String)>,
}

/// One entry of the journal. `seq` numbers the operations owed to the source; `Done`
/// says one reached it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "camelCase")]
pub enum Record {
    /// Local file `id` now stands at `path` (empty: nowhere, a file removed while open,
    /// kept for its open handles).
    Stage {
        id: u64,
        path: String,
        base: Base,
        mode: u32,
    },
    /// File `id` is durable as it is now: upload it (operation `seq`). `mtime_ns` is its
    /// staging file's modification time as the commit found it: a replay that finds
    /// another size or time knows it was written after this commit, and uploads it only
    /// once it is committed again.
    Commit {
        seq: u64,
        id: u64,
        size: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtime_ns: Option<i64>,
    },
    /// File `id` is being sent to the source, as `etag` (written before the upload
    /// completes): after a kill before `Uploaded`, the object found at the source with
    /// this ETag is this node's own, not a change made upstream.
    Sending { id: u64, etag: String },
    /// File `id` reached the source as `etag`: its new base.
    Uploaded { id: u64, etag: String },
    /// `path` was removed: delete it at the source (operation `seq`).
    Unlink { seq: u64, path: String },
    /// File `from` was renamed `to`: operation `seq` deletes `from` at the source, after
    /// `copy` copied a source object there, or `upload` uploaded the local file.
    Rename {
        seq: u64,
        from: String,
        to: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        copy: Option<(u64, MovedObject)>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        upload: Option<u64>,
    },
    /// A directory made on this node.
    Mkdir { path: String },
    /// A directory removed on this node.
    Rmdir { path: String },
    /// Operation `seq` reached the source.
    Done { seq: u64 },
    /// Local file `id` is no longer kept (uploaded and closed, or removed).
    Dropped { id: u64 },
    /// The highest local-file id and operation number handed out so far (first in a
    /// rewritten journal): numbers of files let go are not given out again, so that a
    /// new file never takes the identity (`local:<id>`) an old one showed.
    Numbers { next_id: u64, next_seq: u64 },
}

/// The journal file.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Records appended since the journal was opened or last rewritten.
    appended: u64,
}

impl Journal {
    /// Opens (or creates) the journal at `path` and returns its whole records; a torn
    /// tail (a kill mid-append) is cut off.
    pub fn open(path: &Path) -> Result<(Self, Vec<Record>)> {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::cache_io(path, e)),
        };
        let (records, valid) = frames::read_all::<Record>(&data);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::cache_io(path, e))?;
        if valid < data.len() {
            tracing::warn!(journal = %path.display(), dropped_bytes = data.len() - valid,
                "write journal ends in a torn record (the agent was killed mid-append); cut off");
            file.set_len(valid as u64)
                .map_err(|e| Error::cache_io(path, e))?;
        }
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
                appended: 0,
            },
            records,
        ))
    }

    /// Appends records and waits until they are on disk.
    pub fn append(&mut self, records: &[Record]) -> Result<()> {
        let mut buf = Vec::new();
        for r in records {
            buf.extend(frames::frame(r));
        }
        self.file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::cache_io(&self.path, e))?;
        self.appended += records.len() as u64;
        Ok(())
    }

    /// Records appended since the journal was opened or last rewritten.
    pub fn appended(&self) -> u64 {
        self.appended
    }

    /// Replaces the journal with `records` (what is live), atomically.
    pub fn rewrite(&mut self, records: &[Record]) -> Result<()> {
        let tmp = self.path.with_extension("new");
        let mut buf = Vec::new();
        for r in records {
            buf.extend(frames::frame(r));
        }
        let write = || -> std::io::Result<File> {
            let mut f = File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                File::open(dir)?.sync_all()?;
            }
            OpenOptions::new().append(true).open(&self.path)
        };
        self.file = write().map_err(|e| Error::cache_io(&self.path, e))?;
        self.appended = 0;
        Ok(())
    }
}

/// The object version a stat reads, as a rename's record keeps it.
pub(super) fn object_of(stat: &crate::dataset::FileStat) -> Option<(String, String, String)> {
    stat.version
        .as_ref()
        .map(|v| (v.source.clone(), v.key.clone(), v.etag.clone()))
}

/// A file's modification time in nanoseconds.
pub(super) fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
}

pub(super) fn nanos(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

pub(super) fn from_nanos(n: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(n.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut j, none) = Journal::open(&path).unwrap();
        assert!(none.is_empty());
        let stage = Record::Stage {
            id: 1,
            path: "/a".into(),
            base: Base::New,
            mode: 0o644,
        };
        let commit = Record::Commit {
            seq: 1,
            id: 1,
            size: 3,
            mtime_ns: Some(1),
        };
        j.append(&[stage.clone(), commit.clone()]).unwrap();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&frames::frame(&Record::Done { seq: 1 })[..5])
            .unwrap();
        let (mut j, records) = Journal::open(&path).unwrap();
        assert_eq!(records, [stage.clone(), commit]);
        j.append(&[Record::Dropped { id: 1 }]).unwrap();
        let (_, records) = Journal::open(&path).unwrap();
        assert_eq!(records.len(), 3, "appends after the cut are whole");
        let (mut j, _) = Journal::open(&path).unwrap();
        j.rewrite(std::slice::from_ref(&stage)).unwrap();
        j.append(&[Record::Mkdir { path: "/d".into() }]).unwrap();
        let (_, records) = Journal::open(&path).unwrap();
        assert_eq!(records[0], stage);
        assert_eq!(records.len(), 2);
    }
}
