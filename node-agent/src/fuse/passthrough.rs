//! FUSE passthrough: the kernel reads a fully cached file directly from the disk tier.
//! One backing file per inode, shared by its concurrent opens, and a lease that keeps
//! eviction away from the file while it is open.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use fuser::{BackingId, FileHandle, FopenFlags, ReplyOpen};

use super::state::FsState;
use crate::cache::PassthroughLease;
use crate::dataset::FileReader;
use strata_engine::writes::LocalFile;

pub(super) struct OpenFile {
    pub(super) reader: Arc<FileReader>,
    pub(super) ino: u64,
    pub(super) passthrough: Option<Arc<BackingId>>,
    // Keeps eviction away from the backing file while the handle is open (None for a
    // handle taken over from a previous agent: see `FsState::restored_leases`).
    pub(super) _lease: Option<PassthroughLease>,
    // Opened with FOPEN_DIRECT_IO (does not count as a cached open).
    pub(super) direct: bool,
    // A write handle: the local file its writes go to.
    pub(super) write: Option<Arc<LocalFile>>,
    // A write handle taken over from a previous agent whose local file the journal no
    // longer has: its writes and its close fail (EIO) rather than claim a success.
    pub(super) write_lost: bool,
}

#[derive(Default)]
pub(super) struct InodeIo {
    pub(super) backing: Option<(String, Weak<BackingId>)>,
    pub(super) cached_opens: usize,
}

impl FsState {
    /// Opens `ino` in passthrough mode if its version (`etag`) is fully cached and the
    /// kernel allows it; gives `reply` back if it did not.
    pub(super) async fn open_passthrough(
        &self,
        ino: u64,
        reader: &Arc<FileReader>,
        fh: u64,
        unique: u64,
        reply: ReplyOpen,
    ) -> Option<ReplyOpen> {
        let etag = reader.stat().etag.as_deref().unwrap_or_default();
        let path = &reader.stat().path;
        // The kernel allows one backing file per inode, and refuses passthrough while the
        // inode has cached (non-passthrough) opens; every decision below is taken under
        // the `io` lock so that concurrent opens agree.
        let cached_open = self
            .io
            .lock()
            .expect("io")
            .get(&ino)
            .is_some_and(|e| e.cached_opens > 0);
        if cached_open {
            return Some(reply);
        }
        let Some((file, lease)) = self.view().cached_file(reader.stat()).await else {
            return Some(reply);
        };
        let mut io = self.io.lock().expect("io");
        let entry = io.entry(ino).or_default();
        let alive = entry
            .backing
            .as_ref()
            .and_then(|(t, w)| w.upgrade().map(|b| (t.clone(), b)));
        let backing = match alive {
            Some((t, b)) if t == etag => Ok(b),
            Some(_) => return Some(reply),
            None if entry.cached_opens > 0 => return Some(reply),
            None => reply.open_backing(&file).map(Arc::new),
        };
        match backing {
            Ok(b) => {
                entry.backing = Some((etag.to_string(), Arc::downgrade(&b)));
                drop(io);
                let open = Arc::new(OpenFile {
                    reader: reader.clone(),
                    ino,
                    passthrough: Some(b.clone()),
                    _lease: Some(lease),
                    direct: false,
                    write: None,
                    write_lost: false,
                });
                self.add_handle(fh, open, unique);
                self.passthrough_ok.fetch_add(1, Ordering::Relaxed);
                self.view().cache_metrics_passthrough("ok");
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &b);
                None
            }
            Err(e) => {
                drop(io);
                self.passthrough_refused.fetch_add(1, Ordering::Relaxed);
                self.view().cache_metrics_passthrough("refused");
                tracing::warn!(path = %path, error = %e,
                    "FUSE passthrough refused; serving this file through the agent");
                Some(reply)
            }
        }
    }
}
