//! The FUSE operations that change a dataset (create, mknod, write, truncate, flush,
//! fsync, unlink, mkdir, rmdir, rename), served by the engine's write journal. Each answers
//! once the change is journaled; `flush` and `fsync` once the file is durable there (or,
//! write-through, at the source).
//!
//! A request the kernel sent again after a takeover (FUSE_NOTIFY_RESEND) may find its
//! change already made by the agent that died before answering: a create that finds its
//! file, an unlink that finds nothing, are then answered as the first agent would have.

use std::sync::Arc;
use std::time::SystemTime;

use fuser::{FileAttr, TimeOrNow};

use super::passthrough::OpenFile;
use super::state::FsState;
use crate::path::DatasetPath;
use strata_engine::writes::LocalFile;
use strata_engine::{Error, Result};

/// The bit the kernel sets in the id of a request it sends again after a takeover
/// (FUSE_UNIQUE_RESEND).
pub(super) const RESENT: u64 = 1 << 63;

impl OpenFile {
    /// EIO for a write handle whose file the journal lost across a restart.
    fn check_write_kept(&self) -> Result<()> {
        if self.write_lost {
            return Err(Error::refused(
                &self.reader.stat().path,
                libc::EIO,
                "was open for writing before the agent restarted, and the write journal no longer has its file",
            ));
        }
        Ok(())
    }
}

impl FsState {
    fn writes(&self, path: &DatasetPath) -> Result<Arc<strata_engine::writes::DatasetWrites>> {
        self.view().writes().cloned().ok_or_else(|| {
            Error::refused(
                path,
                libc::EROFS,
                "read-only (no source of the dataset has a writeMode)",
            )
        })
    }

    /// Opens `path` for writing: handle `fh` over its local file.
    pub(super) async fn open_write(
        &self,
        ino: u64,
        path: &DatasetPath,
        truncate: bool,
        fh: u64,
        unique: u64,
    ) -> Result<bool> {
        let local = self.view().open_for_write(path, truncate).await?;
        Ok(self.add_write_handle(ino, path, local, fh, unique))
    }

    /// Creates `path` and opens it for writing as handle `fh`; its inode and attributes.
    pub(super) async fn create(
        &self,
        path: &DatasetPath,
        mode: u32,
        flags: i32,
        fh: u64,
        unique: u64,
    ) -> Result<(u64, FileAttr, bool)> {
        let exclusive = flags & libc::O_EXCL != 0;
        let created = self.view().create_file(path, mode, exclusive).await;
        let local = match created {
            Ok(l) => l,
            // Made by the agent that died before answering.
            Err(e) if e.errno() == libc::EEXIST && unique & RESENT != 0 => {
                self.view().open_for_write(path, false).await?
            }
            Err(e) => return Err(e),
        };
        let stat = local.stat(path.clone());
        let ino = self.looked_up(path, stat.etag.as_deref());
        let direct = self.add_write_handle(ino, path, local, fh, unique);
        Ok((ino, self.attr(ino, &stat), direct))
    }

    /// Registers a write handle; true when it must use direct I/O (the inode is open in
    /// passthrough mode on a cached version: the kernel allows no other page cache).
    fn add_write_handle(
        &self,
        ino: u64,
        path: &DatasetPath,
        local: Arc<LocalFile>,
        fh: u64,
        unique: u64,
    ) -> bool {
        // The file came claimed as one writer: this handle's, released on `release`.
        let direct = {
            let mut io = self.io.lock().expect("io");
            let entry = io.entry(ino).or_default();
            let direct = entry
                .backing
                .as_ref()
                .is_some_and(|(_, b)| b.strong_count() > 0);
            // Counted like any open through the page cache (`release` takes it back).
            if !direct {
                entry.cached_opens += 1;
            }
            direct
        };
        let reader = Arc::new(self.view().open_local(path, local.clone()));
        let open = Arc::new(OpenFile {
            reader,
            ino,
            passthrough: None,
            _lease: None,
            direct,
            write: Some(local),
            write_lost: false,
        });
        self.add_handle(fh, open, unique);
        direct
    }

    /// Writes through handle `open`.
    pub(super) async fn write(&self, open: &OpenFile, offset: u64, data: &[u8]) -> Result<()> {
        let path = &open.reader.stat().path;
        open.check_write_kept()?;
        let Some(local) = &open.write else {
            return Err(Error::refused(path, libc::EBADF, "not open for writing"));
        };
        self.writes(path)?.write(local, offset, data).await
    }

    /// flush and fsync: the handle's file made durable.
    pub(super) async fn commit(&self, open: &OpenFile) -> Result<()> {
        open.check_write_kept()?;
        let Some(local) = &open.write else {
            return Ok(());
        };
        self.writes(&open.reader.stat().path)?.commit(local).await
    }

    /// The attributes of inode `ino` through one of its open handles (a write handle's
    /// as written), with no link: for a file removed while open.
    pub(super) fn open_unlinked_attr(&self, ino: u64) -> Option<FileAttr> {
        let open = {
            let handles = self.handles.lock().expect("handles");
            let mut of_ino = handles.values().filter(|o| o.ino == ino);
            let first = of_ino.next()?.clone();
            match first.write {
                Some(_) => first,
                None => of_ino.find(|o| o.write.is_some()).cloned().unwrap_or(first),
            }
        };
        let stat = open.reader.stat();
        let stat = match &open.write {
            Some(local) => local.stat(stat.path.clone()),
            None => stat.clone(),
        };
        let mut attr = self.attr(ino, &stat);
        attr.nlink = 0;
        Some(attr)
    }

    /// A write handle closed.
    pub(super) fn release_write(&self, open: &OpenFile) {
        if let (Some(local), Some(w)) = (&open.write, self.view().writes()) {
            w.remove_writer(local);
        }
    }

    /// setattr: size through the handle (or the path), mode and mtime of a local file.
    pub(super) async fn set_attr(
        &self,
        path: &DatasetPath,
        open: Option<Arc<OpenFile>>,
        size: Option<u64>,
        mode: Option<u32>,
        mtime: Option<TimeOrNow>,
    ) -> Result<()> {
        if let Some(size) = size {
            if let Some(o) = &open {
                o.check_write_kept()?;
            }
            match open.as_ref().and_then(|o| o.write.clone()) {
                Some(local) => self.writes(path)?.set_len(&local, size).await?,
                None => self.view().truncate(path, size).await?,
            }
        }
        if mode.is_some() || mtime.is_some() {
            let mtime = mtime.map(|t| match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => SystemTime::now(),
            });
            // Kept while the file is on this node; object stores keep neither.
            if let Some(strata_engine::writes::Overlay::File(local)) =
                self.view().writes().and_then(|w| w.lookup(path))
            {
                local.set_attr(mtime, mode);
            }
        }
        Ok(())
    }

    /// mknod of a regular file: created empty and committed, like an open-create-close.
    pub(super) async fn mknod(
        &self,
        path: &DatasetPath,
        mode: u32,
        unique: u64,
    ) -> Result<(u64, FileAttr)> {
        let writes = self.writes(path)?.clone();
        match self.view().create_file(path, mode, true).await {
            Ok(local) => {
                let committed = writes.commit(&local).await;
                writes.remove_writer(&local);
                committed?;
            }
            // Made by the agent that died before answering.
            Err(e) if e.errno() == libc::EEXIST && unique & RESENT != 0 => {}
            Err(e) => return Err(e),
        }
        let stat = self.view().stat(path).await?;
        let ino = self.looked_up(path, stat.etag.as_deref());
        Ok((ino, self.attr(ino, &stat)))
    }

    pub(super) async fn unlink(&self, path: &DatasetPath, unique: u64) -> Result<()> {
        match self.view().remove_file(path).await {
            Err(e) if e.is_not_found() && unique & RESENT != 0 => Ok(()),
            other => other,
        }
    }

    pub(super) async fn mkdir(&self, path: &DatasetPath, unique: u64) -> Result<(u64, FileAttr)> {
        match self.view().make_dir(path).await {
            Err(e) if e.errno() == libc::EEXIST && unique & RESENT != 0 => {}
            other => other?,
        }
        let stat = self.view().stat(path).await?;
        let ino = self.looked_up(path, None);
        Ok((ino, self.attr(ino, &stat)))
    }

    pub(super) async fn rmdir(&self, path: &DatasetPath, unique: u64) -> Result<()> {
        match self.view().remove_dir(path).await {
            Err(e) if e.is_not_found() && unique & RESENT != 0 => Ok(()),
            other => other,
        }
    }

    pub(super) async fn rename(
        &self,
        from: &DatasetPath,
        to: &DatasetPath,
        no_replace: bool,
        unique: u64,
    ) -> Result<()> {
        if no_replace && self.view().stat(to).await.is_ok() {
            return Err(Error::refused(
                to,
                libc::EEXIST,
                "exists (RENAME_NOREPLACE)",
            ));
        }
        match self.view().rename(from, to).await {
            Err(e)
                if e.is_not_found()
                    && unique & RESENT != 0
                    && self.view().stat(to).await.is_ok() => {}
            other => other?,
        }
        self.inodes.write().expect("inodes").moved(from, to);
        Ok(())
    }
}
