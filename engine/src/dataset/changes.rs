//! Changes to the dataset's namespace and files (FUSE create, open for writing,
//! truncate, unlink, mkdir, rmdir, rename): checked against what the dataset shows, then
//! handed to its [`DatasetWrites`].

use std::sync::Arc;

use super::{DatasetView, FileStat};
use crate::path::DatasetPath;
use crate::writes::{Base, DatasetWrites, LocalFile, Overlay};
use crate::{Error, Result};

impl DatasetView {
    fn writes_for(&self, path: &DatasetPath) -> Result<&Arc<DatasetWrites>> {
        let w = self.writes().ok_or_else(|| {
            Error::refused(
                path,
                libc::EROFS,
                "read-only (no source of the dataset has a writeMode)",
            )
        })?;
        w.mode_of(path)?;
        Ok(w)
    }

    async fn parent_is_dir(self: &Arc<Self>, path: &DatasetPath) -> Result<()> {
        let parent = path.parent().unwrap_or_else(DatasetPath::root);
        match self.stat_opt(&parent).await {
            Ok(Some((s, _))) if s.is_dir() => Ok(()),
            Ok(Some(_)) => Err(Error::NotDirectory {
                path: parent.to_string(),
            }),
            Ok(None) => Err(Error::NotFound {
                path: parent.to_string(),
            }),
            // The source is away: writes keep landing here (a directory is a prefix).
            Err(e) if e.is_unavailable() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The stat of a path a change would create, `None` also while the source is away:
    /// the change lands here, and if the path was taken at the source meanwhile, the
    /// upload keeps that version under a conflict name.
    async fn stat_unless_away(self: &Arc<Self>, path: &DatasetPath) -> Result<Option<FileStat>> {
        match self.stat_opt(path).await {
            Ok(s) => Ok(s.map(|(s, _)| s)),
            Err(e) if e.is_unavailable() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates the file `path` (FUSE create): a new empty local file, or with `exclusive`
    /// EEXIST when there is one; an existing file is opened truncated. Claimed as one
    /// writer, like [`Self::open_for_write`].
    pub async fn create_file(
        self: &Arc<Self>,
        path: &DatasetPath,
        mode: u32,
        exclusive: bool,
    ) -> Result<Arc<LocalFile>> {
        let w = self.writes_for(path)?;
        self.parent_is_dir(path).await?;
        match self.stat_unless_away(path).await? {
            Some(s) if s.is_dir() => Err(Error::IsDirectory {
                path: path.to_string(),
            }),
            Some(_) if exclusive => Err(Error::refused(path, libc::EEXIST, "exists")),
            Some(_) => self.open_for_write(path, true).await,
            None => w.create(path, Base::New, mode),
        }
    }

    /// The local file to write `path` through: the one on this node, or a new one copied
    /// up from the source (empty with `truncate`), claimed as one writer (the caller
    /// calls `remove_writer` when done).
    pub async fn open_for_write(
        self: &Arc<Self>,
        path: &DatasetPath,
        truncate: bool,
    ) -> Result<Arc<LocalFile>> {
        let w = self.writes_for(path)?.clone();
        // One copy-up of a path at a time: two openers get the same local file.
        let _one = w.copy_up.lock().await;
        if let Some(f) = w.claim(path) {
            if truncate
                && f.size() > 0
                && let Err(e) = w.set_len(&f, 0).await
            {
                w.remove_writer(&f);
                return Err(e);
            }
            return Ok(f);
        }
        // A file renamed here shows its old object until the copy at the source is made
        // and the old name deleted: a copy-up that meets that delete looks again (then it
        // finds the object at the new name).
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.copy_up(&w, path, truncate).await {
                Err(e) if e.is_not_found() && attempts < 3 => {
                    self.invalidate(path);
                }
                other => return other,
            }
        }
    }

    /// Opens the file `path` has now as a new local file: empty with `truncate`, else
    /// with the object's content, read block by block through the cache into a staging
    /// file that takes the path once whole.
    async fn copy_up(
        self: &Arc<Self>,
        w: &Arc<DatasetWrites>,
        path: &DatasetPath,
        truncate: bool,
    ) -> Result<Arc<LocalFile>> {
        let stat = self.stat(path).await?;
        if stat.is_dir() {
            return Err(Error::IsDirectory {
                path: path.to_string(),
            });
        }
        let base = match &stat.etag {
            Some(etag) => Base::Version(etag.clone()),
            None => Base::Replace,
        };
        if truncate {
            return w.create(path, base, 0o644);
        }
        let reader = self.open(path).await?;
        let staging = w.new_staging()?;
        let step = self.block_size();
        let mut offset = 0;
        while offset < stat.size {
            let chunk = match reader.read(offset, step).await {
                Ok(c) if !c.is_empty() => c,
                Ok(_) => break,
                Err(e) => {
                    staging.discard();
                    return Err(e);
                }
            };
            if let Err(e) = std::os::unix::fs::FileExt::write_all_at(staging.file(), &chunk, offset)
            {
                staging.discard();
                return Err(Error::refused(path, libc::EIO, &format!("copy-up: {e}")));
            }
            offset += chunk.len() as u64;
        }
        let local = w.stage(staging, path, base, 0o644)?;
        local.mark_clean();
        Ok(local)
    }

    /// Truncates or extends `path` to `size` (truncate(2) without an open file), durable
    /// when it returns.
    pub async fn truncate(self: &Arc<Self>, path: &DatasetPath, size: u64) -> Result<()> {
        let local = self.open_for_write(path, size == 0).await?;
        let w = self.writes_for(path)?.clone();
        let result = async {
            w.set_len(&local, size).await?;
            w.commit(&local).await
        }
        .await;
        w.remove_writer(&local);
        result
    }

    /// Removes the file `path`.
    pub async fn remove_file(self: &Arc<Self>, path: &DatasetPath) -> Result<()> {
        let w = self.writes_for(path)?;
        match self.stat_opt(path).await? {
            None => Err(Error::NotFound {
                path: path.to_string(),
            }),
            Some((s, _)) if s.is_dir() => Err(Error::IsDirectory {
                path: path.to_string(),
            }),
            Some(_) => w.unlink(path, true),
        }
    }

    /// Makes the directory `path`.
    pub async fn make_dir(self: &Arc<Self>, path: &DatasetPath) -> Result<()> {
        let w = self.writes_for(path)?;
        self.parent_is_dir(path).await?;
        // Nothing there, as the source says (not while it is away: then unknown).
        let empty_at_source = match self.stat_opt(path).await {
            Ok(Some(_)) => return Err(Error::refused(path, libc::EEXIST, "exists")),
            Ok(None) => true,
            Err(e) if e.is_unavailable() => false,
            Err(e) => return Err(e),
        };
        w.mkdir(path, empty_at_source)
    }

    /// Removes the empty directory `path`.
    pub async fn remove_dir(self: &Arc<Self>, path: &DatasetPath) -> Result<()> {
        let w = self.writes_for(path)?;
        match self.stat_opt(path).await? {
            None => {
                return Err(Error::NotFound {
                    path: path.to_string(),
                });
            }
            Some((s, _)) if !s.is_dir() => {
                return Err(Error::NotDirectory {
                    path: path.to_string(),
                });
            }
            Some(_) => {}
        }
        if !self.list(path).await?.is_empty() {
            return Err(Error::refused(path, libc::ENOTEMPTY, "not empty"));
        }
        // Made here and never at the source: forgotten. Unless removals below it are still
        // owed to the source (an upload may be landing there under it): then it stays
        // hidden until they are done.
        let local_only = matches!(w.lookup(path), Some(Overlay::Dir))
            && w.children(path).is_none()
            && self.fetch_stat(path.clone()).await?.is_none();
        // The parent's listing may be cached from while objects were under `path` (then
        // `rm -rf` of a tree just written found it still listed: ENOTEMPTY); forgotten
        // before the overlay stops answering for `path`.
        self.invalidate(path);
        w.rmdir(path, !local_only)
    }

    /// Renames the file `from` to `to` (directories: EXDEV, so tools copy and delete).
    pub async fn rename(self: &Arc<Self>, from: &DatasetPath, to: &DatasetPath) -> Result<()> {
        let w = self.writes_for(from)?.clone();
        self.writes_for(to)?;
        if from == to {
            return Ok(());
        }
        let Some((stat, _)) = self.stat_opt(from).await? else {
            return Err(Error::NotFound {
                path: from.to_string(),
            });
        };
        if stat.is_dir() {
            return Err(Error::refused(
                from,
                libc::EXDEV,
                "directories are not renamed on object stores (tools such as mv then copy and delete)",
            ));
        }
        self.parent_is_dir(to).await?;
        if let Some(dest) = self.stat_unless_away(to).await?
            && dest.is_dir()
        {
            return Err(Error::IsDirectory {
                path: to.to_string(),
            });
        }
        // No copy-up racing the rename of the same file.
        let _one = w.copy_up.lock().await;
        let remote = match w.lookup(from) {
            Some(Overlay::File(_)) => None,
            _ => Some(stat),
        };
        match w.rename(from, to, remote.as_ref()) {
            Err(e) if e.errno() == libc::EAGAIN => {
                // Uploaded and let go between the look and the rename: now a source
                // object (the metadata cache forgot the path when it was let go).
                let stat = self.stat(from).await?;
                w.rename(from, to, Some(&stat))
            }
            other => other,
        }
    }
}
