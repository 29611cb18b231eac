//! The disk tier's index: rebuilt at start from the journals (sidecars) so a restarted
//! agent serves what it had, and what it holds, newest version per path.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::object::{BlockMeta, ObjectState};
use super::{CachedObject, DatasetCache, ObjectVersion, now_secs};
use crate::path::DatasetPath;
use crate::sidecar::{self, JournalState};

impl DatasetCache {
    pub(super) fn load_index(&self) {
        let Ok(read_dir) = walk_files(&self.dir) else {
            return;
        };
        let mut loaded = 0u64;
        for path in read_dir {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".meta") {
                continue;
            }
            match self.load_object(&path) {
                Ok(true) => loaded += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(dataset = %self.id, sidecar = %path.display(), error = %e,
                        "discarding unreadable cache entry");
                    let _ = fs::remove_file(&path);
                    let _ = fs::remove_file(path.with_extension("data"));
                }
            }
        }
        // Data files without a sidecar hold nothing usable.
        if let Ok(files) = walk_files(&self.dir) {
            for p in files {
                if p.extension().is_some_and(|e| e == "data") && !p.with_extension("meta").exists()
                {
                    let _ = fs::remove_file(&p);
                }
            }
        }
        if loaded > 0 {
            tracing::info!(dataset = %self.id, objects = loaded,
                bytes = self.used.load(Ordering::Relaxed), "rebuilt the disk cache index");
        }
    }

    fn load_object(&self, meta_path: &Path) -> std::io::Result<bool> {
        let loaded = sidecar::load(meta_path)?;
        let header = &loaded.header;
        let data_path = meta_path.with_extension("data");
        let data_len = fs::metadata(&data_path)?.len();
        if header.block_size != self.block_size || data_len != header.size {
            return Err(std::io::Error::other("block size or length changed"));
        }
        let path = DatasetPath::parse(&header.path).map_err(std::io::Error::other)?;
        let version = ObjectVersion::new(
            header.source.clone(),
            header.key.clone(),
            header.etag.clone(),
            header.size,
        );
        let id: Arc<str> = version.id();
        let last_access = fs::metadata(meta_path)?
            .modified()
            .ok()
            .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or_else(now_secs);
        let obj = Arc::new(CachedObject {
            id: id.clone(),
            path,
            mtime_ms: header.mtime_ms,
            cached_at: last_access,
            data_path,
            meta_path: meta_path.to_path_buf(),
            block_size: self.block_size,
            pinned: AtomicBool::new(false),
            leases: AtomicUsize::new(0),
            state: Mutex::new(ObjectState::default()),
            version,
        });
        let pinned =
            self.pins
                .read()
                .expect("pins")
                .pins(&obj.path, obj.mtime_ms, super::pins::now_ms());
        obj.pinned.store(pinned, Ordering::Relaxed);
        let mut bytes = 0;
        {
            let mut st = obj.state.lock().expect("object state");
            st.journal = JournalState::loaded(&loaded);
            let mut policy = self.policy.lock().expect("policy");
            for (&index, &crc) in &loaded.blocks {
                if index >= obj.version.block_count(self.block_size) {
                    continue;
                }
                let len = obj.block_len(index);
                bytes += len;
                st.blocks.insert(
                    index,
                    BlockMeta {
                        crc,
                        last_access,
                        reads: 0,
                        verified: false,
                    },
                );
                if !pinned {
                    policy.insert((id.clone(), index), len);
                }
            }
        }
        if bytes == 0 {
            let _ = fs::remove_file(meta_path);
            let _ = fs::remove_file(&obj.data_path);
            return Ok(false);
        }
        if !self.count(bytes) {
            return Ok(false);
        }
        if (loaded.blocks.len() as u64) < obj.version.block_count(self.block_size) {
            obj.punch_missing(&loaded.blocks);
        }
        self.objects.write().expect("objects").insert(id, obj);
        Ok(true)
    }

    /// What is on disk, newest version per path: (path, version, last-modified). A
    /// restarted agent seeds its metadata cache from this so cached files are served
    /// without asking the source (for one metadata TTL).
    pub fn cached_versions(&self) -> Vec<(DatasetPath, ObjectVersion, SystemTime)> {
        let objects = self.objects.read().expect("objects");
        let mut newest: HashMap<&DatasetPath, &Arc<CachedObject>> = HashMap::new();
        for o in objects.values() {
            let e = newest.entry(&o.path).or_insert(o);
            if o.cached_at > e.cached_at {
                *e = o;
            }
        }
        newest
            .into_values()
            .map(|o| {
                let mtime = UNIX_EPOCH + Duration::from_millis(o.mtime_ms.max(0) as u64);
                (o.path.clone(), o.version.clone(), mtime)
            })
            .collect()
    }
}

fn walk_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let entry = entry?;
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                out.push(entry.path());
            }
        }
    }
    Ok(out)
}
