//! A file written on this node: its content in a staging file under the dataset's write
//! directory, until it is uploaded and closed.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use super::journal::Base;
use crate::dataset::{EntryKind, FileStat};
use crate::path::DatasetPath;
use crate::{Error, Result};

/// The ETag of a local file's stat: `local:<id>`, a version of its own (a new local file
/// at a path is a new version); never an object version at a source.
pub const LOCAL_ETAG_PREFIX: &str = "local:";

/// One local file. Readers and writers share its open descriptor, which stays valid
/// after the staging file is removed (an open file keeps its content, as on any disk).
#[derive(Debug)]
pub struct LocalFile {
    pub(super) id: u64,
    pub(super) staging: PathBuf,
    pub(super) file: File,
    pub(super) state: Mutex<LocalState>,
}

#[derive(Debug)]
pub(super) struct LocalState {
    /// Where the file stands now (none once unlinked or replaced).
    pub(super) path: Option<DatasetPath>,
    pub(super) size: u64,
    pub(super) mtime: SystemTime,
    pub(super) mode: u32,
    pub(super) base: Base,
    /// Open write handles.
    pub(super) writers: usize,
    /// Bumped by every change of the content; an upload that saw another generation
    /// at its end is dropped (the file changed under it and is committed again).
    pub(super) generation: u64,
    /// The generation the last commit made durable, and the one last uploaded.
    pub(super) committed: u64,
    pub(super) uploaded: u64,
    /// The staging file's size and modification time (ns) at the last commit.
    pub(super) committed_as: Option<(u64, i64)>,
    /// ETags of uploads sent since the last one known to have reached the source (see
    /// `Record::Sending`).
    pub(super) sent: Vec<String>,
    /// When the oldest change not at the source yet was made.
    pub(super) dirty_since: Option<SystemTime>,
}

impl LocalFile {
    /// The file as `stat` shows it: no object version (reads come from the staging file),
    /// ETag `local:<id>`.
    pub fn stat(&self, path: DatasetPath) -> FileStat {
        let st = self.state.lock().expect("local file");
        FileStat {
            path,
            kind: EntryKind::File,
            size: st.size,
            mtime: st.mtime,
            version: None,
            etag: Some(format!("{LOCAL_ETAG_PREFIX}{}", self.id)),
        }
    }

    /// Its size now.
    pub fn size(&self) -> u64 {
        self.state.lock().expect("local file").size
    }

    /// Its permission bits (kept on this node only; object stores have none).
    pub fn mode(&self) -> u32 {
        self.state.lock().expect("local file").mode
    }

    /// A number that names this local file among the dataset's (for inode versions).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Reads up to `len` bytes at `offset` (fewer at the end of the file).
    pub fn read_at(&self, offset: u64, len: u64) -> Result<bytes::Bytes> {
        let size = self.size();
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(bytes::Bytes::new());
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        let mut got = 0;
        while got < buf.len() {
            match self.file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break, // a hole past the data written: zeros, as on disk
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::cache_io(&self.staging, e)),
            }
        }
        Ok(buf.into())
    }

    /// Sets mtime and/or mode (on this node).
    pub fn set_attr(&self, mtime: Option<SystemTime>, mode: Option<u32>) {
        let mut st = self.state.lock().expect("local file");
        if let Some(t) = mtime {
            st.mtime = t;
        }
        if let Some(m) = mode {
            st.mode = m & 0o7777;
        }
    }

    /// The content equals its base (a copy-up): nothing to upload until it changes.
    pub fn mark_clean(&self) {
        let mut st = self.state.lock().expect("local file");
        st.committed = st.generation;
        st.uploaded = st.generation;
        st.dirty_since = None;
        st.committed_as = None;
    }

    pub(super) fn touch(st: &mut LocalState) {
        st.generation += 1;
        st.mtime = SystemTime::now();
        st.dirty_since.get_or_insert(st.mtime);
    }
}
