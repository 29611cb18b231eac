//! The takeover log of a mount: what the kernel refers to (node ids it was given, open
//! file handles, the INIT it negotiated), written ahead of every reply that hands one
//! out, so that a new agent can take a live `/dev/fuse` connection over from one that
//! died (docs/design/mount-takeover.md).
//!
//! One append-only file per mount under the holder's directory on `/run` (tmpfs: it
//! outlives the process, not a reboot, and neither does the mount). Each record is
//! `[u32 len][u32 crc32c][JSON]`, appended with one `write(2)` while the lock of the state
//! it describes is held, so the file and the tables never disagree ([`strata_engine::frames`]). A record torn by a
//! kill ends the log: its reply was never sent. Lookup counts are not logged: inodes
//! restored from the log are kept until the mount goes (a bounded leak, never an early
//! drop of a node id the kernel still uses).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::cache::ObjectVersion;
use crate::dataset::{EntryKind, FileStat};
use crate::path::DatasetPath;
use strata_engine::frames::{self, frame};

/// File handles are reserved in blocks of this many, so that a new agent never hands out
/// a number an open directory of the old one still has (those are not logged).
pub(super) const FH_BLOCK: u64 = 4096;

/// A log this large is rewritten with only what is live.
const COMPACT_AT_BYTES: u64 = 64 << 20;

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "camelCase")]
pub(super) enum Record {
    /// What FUSE_INIT granted.
    Init { passthrough: bool, resend: bool },
    /// A node id handed to the kernel for `path`.
    Inode { ino: u64, path: String },
    /// The kernel forgot every lookup of `ino`.
    Drop { ino: u64 },
    /// File handles up to `upto` (excluded) may be in use.
    Handles { upto: u64 },
    /// An open file handle.
    Open(OpenRecord),
    /// A file handle the kernel released.
    Release { fh: u64 },
}

/// How a handle was opened, and the file as it was then.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct OpenRecord {
    pub(super) fh: u64,
    pub(super) ino: u64,
    /// Passthrough backing id, when opened in passthrough mode.
    pub(super) backing: Option<u32>,
    /// Opened with FOPEN_DIRECT_IO.
    pub(super) direct: bool,
    pub(super) stat: SavedStat,
    /// The OPEN request's id (0 once rewritten): if the agent died before its reply went
    /// out, the kernel sends the request again, marked, and gets this same handle.
    #[serde(default)]
    pub(super) unique: u64,
    /// Opened for writing (its local file is found again by the stat's `local:` ETag).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) write: bool,
}

/// A [`FileStat`] in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SavedStat {
    path: String,
    size: u64,
    mtime_ns: u64,
    etag: Option<String>,
    /// source, key, etag, size of the object version.
    version: Option<(String, String, String, u64)>,
}

impl SavedStat {
    pub(super) fn of(stat: &FileStat) -> Self {
        SavedStat {
            path: stat.path.as_str().to_string(),
            size: stat.size,
            mtime_ns: stat
                .mtime
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
            etag: stat.etag.clone(),
            version: stat
                .version
                .as_ref()
                .map(|v| (v.source.clone(), v.key.clone(), v.etag.clone(), v.size)),
        }
    }

    pub(super) fn to_stat(&self) -> Option<FileStat> {
        Some(FileStat {
            path: DatasetPath::parse(&self.path).ok()?,
            kind: EntryKind::File,
            size: self.size,
            mtime: SystemTime::UNIX_EPOCH + Duration::from_nanos(self.mtime_ns),
            version: self
                .version
                .as_ref()
                .map(|(s, k, e, n)| ObjectVersion::new(s.clone(), k.clone(), e.clone(), *n)),
            etag: self.etag.clone(),
        })
    }
}

/// What a log says the kernel still refers to.
#[derive(Debug, Default)]
pub(super) struct Restored {
    pub(super) passthrough: bool,
    pub(super) resend: bool,
    pub(super) inodes: HashMap<u64, String>,
    pub(super) opens: BTreeMap<u64, OpenRecord>,
    /// The first file handle a new agent may hand out.
    pub(super) next_fh: u64,
    pub(super) records: usize,
    /// The last record was cut short (the agent died writing it).
    pub(super) torn: bool,
}

/// The log of one mount, appended to by the FUSE operations.
pub(super) struct TakeoverLog {
    path: PathBuf,
    file: Mutex<File>,
    bytes: AtomicU64,
    // Set after a write failed (e.g. /run full): the log no longer describes the mount,
    // so a takeover must not trust it.
    broken: AtomicBool,
}

impl std::fmt::Debug for TakeoverLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TakeoverLog")
            .field("path", &self.path)
            .finish()
    }
}

impl TakeoverLog {
    /// A new, empty log at `path` (replacing one left by an earlier mount there).
    pub(super) fn create(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)?;
        Ok(Self::with_file(path, file, 0))
    }

    /// Reads the log at `path` and keeps appending to it.
    pub(super) fn open(path: &Path) -> std::io::Result<(Self, Restored)> {
        let data = std::fs::read(path)?;
        let (restored, valid) = replay(&data);
        let file = OpenOptions::new().write(true).open(path)?;
        // A torn tail is cut off, or the next record would follow garbage.
        file.set_len(valid as u64)?;
        let file = OpenOptions::new().append(true).open(path)?;
        Ok((Self::with_file(path, file, valid as u64), restored))
    }

    fn with_file(path: &Path, file: File, bytes: u64) -> Self {
        TakeoverLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            bytes: AtomicU64::new(bytes),
            broken: AtomicBool::new(false),
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record`. Call it while holding the lock of the table it describes, before
    /// the reply that depends on it is sent.
    pub(super) fn append(&self, record: &Record) {
        if self.broken.load(Ordering::Relaxed) {
            return;
        }
        let frame = frame(record);
        let mut file = self.file.lock().expect("takeover log");
        if let Err(e) = file.write_all(&frame) {
            if !self.broken.swap(true, Ordering::Relaxed) {
                // A log missing records would make the next agent misread node ids:
                // without one it knows it knows nothing.
                let _ = std::fs::remove_file(&self.path);
                tracing::error!(log = %self.path.display(), error = %e,
                    "cannot write the takeover log; this mount will not survive an agent restart");
            }
            return;
        }
        self.bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
    }

    /// Whether the log has grown large enough to be rewritten.
    pub(super) fn compaction_due(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) >= COMPACT_AT_BYTES
    }

    /// Replaces the log with `records` (what is live). Call it holding the locks of every
    /// table the records describe, so no append slips between the snapshot and the swap.
    pub(super) fn rewrite(&self, records: &[Record]) -> std::io::Result<()> {
        let tmp = self.path.with_extension("compact");
        let mut out = File::create(&tmp)?;
        let mut bytes = 0u64;
        let mut buf = Vec::with_capacity(1 << 20);
        for r in records {
            buf.extend_from_slice(&frame(r));
            if buf.len() >= 1 << 20 {
                out.write_all(&buf)?;
                bytes += buf.len() as u64;
                buf.clear();
            }
        }
        out.write_all(&buf)?;
        bytes += buf.len() as u64;
        drop(out);
        let mut file = self.file.lock().expect("takeover log");
        std::fs::rename(&tmp, &self.path)?;
        *file = OpenOptions::new().append(true).open(&self.path)?;
        self.bytes.store(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Removes the log (the mount is gone).
    pub(super) fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Replays a log; also returns the length of its valid prefix.
fn replay(data: &[u8]) -> (Restored, usize) {
    let mut restored = Restored {
        next_fh: 1,
        ..Restored::default()
    };
    let mut at = 0;
    while at < data.len() {
        let Some(record) = frames::read_frame::<Record>(&data[at..]) else {
            restored.torn = true;
            break;
        };
        let (len, record) = record;
        at += len;
        restored.records += 1;
        match record {
            Record::Init {
                passthrough,
                resend,
            } => {
                restored.passthrough = passthrough;
                restored.resend = resend;
            }
            Record::Inode { ino, path } => {
                restored.inodes.insert(ino, path);
            }
            Record::Drop { ino } => {
                restored.inodes.remove(&ino);
            }
            Record::Handles { upto } => restored.next_fh = restored.next_fh.max(upto),
            Record::Open(open) => {
                restored.next_fh = restored.next_fh.max(open.fh + 1);
                restored.opens.insert(open.fh, open);
            }
            Record::Release { fh } => {
                restored.opens.remove(&fh);
            }
        }
    }
    (restored, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_record(fh: u64, ino: u64) -> Record {
        Record::Open(OpenRecord {
            fh,
            ino,
            backing: Some(3),
            direct: false,
            unique: 0,
            write: false,
            stat: SavedStat {
                path: "/d/a".into(),
                size: 10,
                mtime_ns: 5,
                etag: Some("e".into()),
                version: Some(("s".into(), "d/a".into(), "e".into(), 10)),
            },
        })
    }

    #[test]
    fn a_log_replays_what_is_live_and_stops_at_a_torn_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.log");
        let log = TakeoverLog::create(&path).unwrap();
        log.append(&Record::Init {
            passthrough: true,
            resend: true,
        });
        log.append(&Record::Inode {
            ino: 7,
            path: "/d/a".into(),
        });
        log.append(&Record::Inode {
            ino: 8,
            path: "/d/b".into(),
        });
        log.append(&Record::Drop { ino: 8 });
        log.append(&Record::Handles { upto: FH_BLOCK });
        log.append(&open_record(4, 7));
        log.append(&open_record(5, 7));
        log.append(&Record::Release { fh: 4 });
        drop(log);
        // The agent died in the middle of a record.
        let good = std::fs::metadata(&path).unwrap().len();
        let torn = frame(&Record::Inode {
            ino: 9,
            path: "/d/c".into(),
        });
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&torn[..torn.len() - 3])
            .unwrap();

        let (log, r) = TakeoverLog::open(&path).unwrap();
        assert!(r.passthrough && r.resend && r.torn);
        assert_eq!(r.inodes, HashMap::from([(7, "/d/a".to_string())]));
        assert_eq!(r.opens.keys().copied().collect::<Vec<_>>(), vec![5]);
        assert_eq!(r.next_fh, FH_BLOCK);
        // The torn tail is gone, and what the new agent appends is read back.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
        log.append(&Record::Release { fh: 5 });
        let (_, r) = TakeoverLog::open(&path).unwrap();
        assert!(!r.torn && r.opens.is_empty());
    }

    #[test]
    fn a_rewritten_log_keeps_only_what_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.log");
        let log = TakeoverLog::create(&path).unwrap();
        for ino in 10..1000 {
            log.append(&Record::Inode {
                ino,
                path: format!("/f{ino}"),
            });
            log.append(&Record::Drop { ino });
        }
        let before = std::fs::metadata(&path).unwrap().len();
        log.rewrite(&[
            Record::Inode {
                ino: 3,
                path: "/x".into(),
            },
            open_record(9, 3),
        ])
        .unwrap();
        log.append(&Record::Release { fh: 9 });
        assert!(std::fs::metadata(&path).unwrap().len() < before / 10);
        let (_, r) = TakeoverLog::open(&path).unwrap();
        assert_eq!(r.inodes.len(), 1);
        assert!(r.opens.is_empty());
        assert_eq!(r.next_fh, 10);
    }

    #[test]
    fn a_saved_stat_gives_back_the_version_it_was_opened_on() {
        let stat = FileStat {
            path: DatasetPath::parse("/d/a").unwrap(),
            kind: EntryKind::File,
            size: 42,
            mtime: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            version: Some(ObjectVersion::new("s3", "d/a", "\"abc\"", 42)),
            etag: Some("\"abc\"".into()),
        };
        let back = SavedStat::of(&stat).to_stat().unwrap();
        assert_eq!(back, stat);
    }
}
