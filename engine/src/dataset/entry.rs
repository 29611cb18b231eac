//! What stat and list return: [`FileStat`], [`DirEntry`] (a listing is in `listing`).

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::cache::ObjectVersion;
use crate::path::DatasetPath;

/// File or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EntryKind {
    /// A regular file (an object).
    File,
    /// A directory (a source root, a common prefix or a path above mount paths).
    Directory,
}

/// What `stat` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileStat {
    /// The normalized path.
    #[serde(serialize_with = "ser_path")]
    pub path: DatasetPath,
    /// File or directory.
    pub kind: EntryKind,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Last modification time (the epoch for synthetic directories).
    #[serde(serialize_with = "ser_time")]
    pub mtime: SystemTime,
    /// The object version, for files.
    #[serde(skip)]
    pub version: Option<ObjectVersion>,
    /// ETag (or version) of a file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

fn ser_path<S: serde::Serializer>(p: &DatasetPath, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(p.as_str())
}

fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> std::result::Result<S::Ok, S::Error> {
    let dt: chrono::DateTime<chrono::Utc> = (*t).into();
    s.serialize_str(&dt.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

impl FileStat {
    pub(super) fn dir(path: DatasetPath) -> Self {
        FileStat {
            path,
            kind: EntryKind::Directory,
            size: 0,
            mtime: SystemTime::UNIX_EPOCH,
            version: None,
            etag: None,
        }
    }

    /// True for directories.
    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Directory
    }
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DirEntry {
    /// Entry name (one path component).
    pub name: String,
    /// Its stat.
    pub stat: FileStat,
}
