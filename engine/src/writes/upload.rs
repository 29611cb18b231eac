//! The uploader: works through the operations owed to the source, in journal order per
//! path and a few at once, retrying failures with backoff until the source answers.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use md5::{Digest, Md5};
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};

use super::journal::{Base, Record};
use super::{DatasetWrites, LocalFile, Op, Overlay};
use crate::path::DatasetPath;
use crate::{Error, Result};

/// Operations under way at once per dataset.
const MAX_RUNNING: usize = 8;
/// Files up to this size go up in one PUT; larger ones in parts of this size.
pub(crate) const PART_BYTES: u64 = 8 << 20;
/// Parts of one multipart upload in flight at once.
const PART_CONCURRENCY: usize = 4;
/// Backoff of a failed operation: doubled per attempt up to the cap.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What a finished operation changes.
struct Finished {
    /// An upload: the file, the generation it carried, its ETag and size, and the path
    /// it went to.
    uploaded: Option<(Arc<LocalFile>, u64, String, u64, DatasetPath)>,
    /// The path the source now has as this node shows it.
    synced: Option<DatasetPath>,
}

/// The uploader's loop: starts what may start, then waits for news or the next retry.
pub(super) async fn run(writes: Weak<DatasetWrites>) {
    loop {
        let Some(w) = writes.upgrade() else { return };
        let news = w.work.notified();
        tokio::pin!(news);
        news.as_mut().enable();
        w.compact_if_due();
        let wait = w.start_ready().min(Duration::from_secs(1));
        let u = w.usage();
        let age = u
            .oldest_pending
            .and_then(|t| t.elapsed().ok())
            .map_or(0.0, |d| d.as_secs_f64());
        w.metrics
            .set_write_pending(&w.dataset, u.pending_files, u.pending_bytes, age);
        let _ = tokio::time::timeout(wait, news).await;
    }
}

impl DatasetWrites {
    /// Starts every operation that may start now; returns how long until a retry is due.
    fn start_ready(self: &Arc<Self>) -> Duration {
        let mut next_retry = Duration::from_secs(3600);
        let now = Instant::now();
        let mut st = self.state.lock().expect("writes");
        let mut held = std::collections::HashSet::new();
        let mut start = Vec::new();
        let mut running = st.running.len();
        for (seq, p) in &st.ops {
            // A running operation holds the paths it started on (an upload's file may have
            // been renamed since: it still writes the old name, which a delete must wait for).
            if let Some(paths) = st.running.get(seq) {
                held.extend(paths.iter().cloned());
                continue;
            }
            let paths: Vec<DatasetPath> = match &p.op {
                Op::Upload { id } => st
                    .files
                    .get(id)
                    .and_then(|f| f.state.lock().expect("local file").path.clone())
                    .into_iter()
                    .collect(),
                Op::Delete { path } => vec![path.clone()],
                Op::Copy { from, to, .. } => vec![from.clone(), to.clone()],
            };
            let blocked = paths.iter().any(|p| held.contains(p));
            held.extend(paths.iter().cloned());
            if blocked {
                continue;
            }
            if let Some(at) = p.retry_at
                && at > now
            {
                next_retry = next_retry.min(at - now);
                continue;
            }
            if running >= MAX_RUNNING {
                break;
            }
            running += 1;
            start.push((*seq, p.op.clone(), paths));
        }
        for (seq, op, paths) in start {
            let at = paths.first().cloned();
            st.running.insert(seq, paths);
            let w = self.clone();
            tokio::spawn(async move { w.run_op(seq, op, at).await });
        }
        next_retry
    }

    /// Runs one operation; `at` is the path an upload was scheduled for.
    async fn run_op(self: Arc<Self>, seq: u64, op: Op, at: Option<DatasetPath>) {
        let result = match &op {
            Op::Upload { id } => match at {
                Some(path) => self.upload(*id, path).await,
                None => Ok(Finished {
                    uploaded: None,
                    synced: None,
                }),
            },
            Op::Delete { path } => self.delete(path).await,
            Op::Copy { from, to, etag } => self.copy(from, to, etag).await,
        };
        let result = result.and_then(|f| self.finish(seq, f));
        if let (Ok(()), Op::Upload { id }) = (&result, &op) {
            // Also when this one had nothing left to send (an earlier one sent it).
            self.drop_if_synced(*id);
        }
        let mut st = self.state.lock().expect("writes");
        st.running.remove(&seq);
        if let Err(e) = result {
            self.totals.failures.fetch_add(1, Ordering::Relaxed);
            self.metrics.write_failed(&self.dataset);
            *self.totals.last_error.lock().expect("last error") =
                Some((e.to_string(), SystemTime::now()));
            if let Some(p) = st.ops.get_mut(&seq) {
                let backoff = FIRST_BACKOFF
                    .saturating_mul(1 << p.attempts.min(5))
                    .min(MAX_BACKOFF);
                p.attempts += 1;
                p.retry_at = Some(Instant::now() + backoff);
                tracing::warn!(dataset = %self.dataset, error = %e, attempt = p.attempts,
                    retry_in = ?backoff, "a change did not reach the source; retrying");
            }
        }
        drop(st);
        self.work.notify_one();
        self.progress.notify_waiters();
    }

    /// Journals an operation's success and applies it.
    fn finish(&self, seq: u64, f: Finished) -> Result<()> {
        let mut records = Vec::new();
        if let Some((file, _, etag, _, _)) = &f.uploaded {
            records.push(Record::Uploaded {
                id: file.id,
                etag: etag.clone(),
            });
        }
        records.push(Record::Done { seq });
        // The metadata cache forgets the path before the overlay stops answering for it:
        // the other way round, a stat in between got the cache's answer from before the
        // change (the old object of a file deleted here).
        if let Some(p) = &f.synced {
            self.synced(p);
        }
        {
            let mut st = self.state.lock().expect("writes");
            self.append(&records)?;
            // Removed directories above a deleted path are let go with it once nothing
            // below them is owed (`apply_done`): their parents' listings, cached while
            // objects were under them, are forgotten first (else `rm -rf` of a tree just
            // written found a removed subdirectory still listed: ENOTEMPTY).
            if let Some(Op::Delete { path }) = st.ops.get(&seq).map(|p| &p.op) {
                let mut dir = path.parent();
                while let Some(d) = dir {
                    if !matches!(st.entries.get(&d), Some(Overlay::Gone)) {
                        break;
                    }
                    self.synced(&d);
                    dir = d.parent();
                }
            }
            st.apply_done(seq);
        }
        *self.totals.last_error.lock().expect("last error") = None;
        if let Some((file, generation, etag, size, path)) = f.uploaded {
            {
                let mut fs = file.state.lock().expect("local file");
                // Renamed meanwhile: the new path has nothing yet (its upload is owed).
                fs.sent.clear();
                if fs.path.as_ref() == Some(&path) {
                    fs.uploaded = fs.uploaded.max(generation);
                    fs.base = Base::Version(etag);
                    if fs.uploaded >= fs.generation {
                        fs.dirty_since = None;
                    }
                }
            }
            self.totals.uploaded_files.fetch_add(1, Ordering::Relaxed);
            self.totals
                .uploaded_bytes
                .fetch_add(size, Ordering::Relaxed);
            self.metrics.write_uploaded(&self.dataset, size);
            self.drop_if_synced(file.id);
        }
        Ok(())
    }

    /// Uploads local file `id` as it is now, whole, to `path` (where it stood when the
    /// upload was scheduled); `uploaded: None` when there is nothing to upload (removed,
    /// renamed, already up to date, or changed meanwhile: the change is committed again).
    async fn upload(&self, id: u64, path: DatasetPath) -> Result<Finished> {
        let nothing = Finished {
            uploaded: None,
            synced: None,
        };
        let Some(file) = self.state.lock().expect("writes").files.get(&id).cloned() else {
            return Ok(nothing);
        };
        let (generation, size, base) = {
            let fs = file.state.lock().expect("local file");
            match &fs.path {
                // Renamed since it was scheduled: the rename owes the upload to the new name.
                // Written since its last commit: what is there now was neither closed nor
                // fsynced (a partial object); the next commit uploads it.
                Some(p)
                    if *p == path
                        && fs.committed > fs.uploaded
                        && fs.generation == fs.committed =>
                {
                    (fs.generation, fs.size, fs.base.clone())
                }
                _ => return Ok(nothing),
            }
        };
        let (source, rel, _) = self.mode_of(&path)?;
        let (store, loc) = source.write_target(&rel)?;
        self.keep_upstream_on_conflict(&source, &store, &loc, &path, &base, &file)
            .await?;
        let unchanged = || file.state.lock().expect("local file").generation == generation;
        let (result, expected) = if size <= PART_BYTES {
            let data = read(&file, 0, size).await?;
            if !unchanged() {
                return Ok(nothing);
            }
            let expected = hex::encode(Md5::digest(&data));
            self.sending(&file, &expected)?;
            source.count_write_request("put");
            let put = store
                .put(&loc, PutPayload::from(data))
                .await
                .map_err(|e| source.write_error(e))?;
            (put, expected)
        } else {
            source.count_write_request("multipart");
            let upload = store
                .put_multipart(&loc)
                .await
                .map_err(|e| source.write_error(e))?;
            let mut parts = WriteMultipart::new_with_chunk_size(upload, PART_BYTES as usize);
            let mut digests = Vec::new();
            let mut offset = 0;
            while offset < size {
                let n = PART_BYTES.min(size - offset);
                let chunk = match read(&file, offset, n).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = parts.abort().await;
                        return Err(e);
                    }
                };
                digests.extend(Md5::digest(&chunk));
                if let Err(e) = parts.wait_for_capacity(PART_CONCURRENCY).await {
                    return Err(source.write_error(e));
                }
                parts.write(&chunk);
                offset += n;
            }
            if !unchanged() {
                // Never completed: the source shows no part of it.
                let _ = parts.abort().await;
                return Ok(nothing);
            }
            let count = size.div_ceil(PART_BYTES);
            let expected = format!("{}-{count}", hex::encode(Md5::digest(&digests)));
            if let Err(e) = self.sending(&file, &expected) {
                let _ = parts.abort().await;
                return Err(e);
            }
            let put = parts.finish().await.map_err(|e| source.write_error(e))?;
            (put, expected)
        };
        let etag = result.e_tag.unwrap_or_default();
        check_etag(&etag, &expected).map_err(|why| {
            Error::refused(
                &path,
                libc::EIO,
                &format!("uploaded, but the source's checksum differs ({why}); uploading again"),
            )
        })?;
        Ok(Finished {
            uploaded: Some((file, generation, etag, size, path)),
            synced: None,
        })
    }

    /// The conflict rule: when the object at the source is no longer the one this file
    /// started from (or a new file's path was taken meanwhile), the upstream version is
    /// kept under `<name>.conflict-<UTC time>` before the local one is uploaded. An
    /// upstream object that is this very content is no conflict: this node's own upload,
    /// made before a kill kept it from journaling it (the file's base is from before).
    async fn keep_upstream_on_conflict(
        &self,
        source: &crate::source::Source,
        store: &Arc<dyn object_store::ObjectStore>,
        loc: &object_store::path::Path,
        path: &DatasetPath,
        base: &Base,
        file: &Arc<LocalFile>,
    ) -> Result<()> {
        if *base == Base::Replace {
            return Ok(());
        }
        source.count_write_request("head");
        let upstream = match store.head(loc).await {
            Ok(meta) => meta,
            Err(object_store::Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(source.write_error(e)),
        };
        let upstream_etag = upstream.e_tag.unwrap_or_default();
        if let Base::Version(ours) = base
            && unquote(ours) == unquote(&upstream_etag)
        {
            return Ok(());
        }
        let sent_here = file
            .state
            .lock()
            .expect("local file")
            .sent
            .iter()
            .any(|e| unquote(e).eq_ignore_ascii_case(unquote(&upstream_etag)));
        if sent_here {
            tracing::info!(dataset = %self.dataset, path = %path,
                "the source holds an upload this node sent before a restart: no conflict");
            return Ok(());
        }
        let size = file.size();
        if upstream.size == size
            && unquote(&upstream_etag).eq_ignore_ascii_case(&md5_etag(file, size).await?)
        {
            tracing::info!(dataset = %self.dataset, path = %path,
                "the source already holds this content (uploaded before a restart): no conflict");
            return Ok(());
        }
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        let kept = object_store::path::Path::from(format!("{loc}.conflict-{stamp}"));
        source.count_write_request("copy");
        store
            .copy(loc, &kept)
            .await
            .map_err(|e| source.write_error(e))?;
        self.totals.conflicts.fetch_add(1, Ordering::Relaxed);
        *self.totals.last_conflict.lock().expect("last conflict") = Some(super::Conflict {
            path: path.to_string(),
            kept_as: format!("{path}.conflict-{stamp}"),
            time: SystemTime::now(),
        });
        self.metrics.write_conflict(&self.dataset);
        tracing::warn!(dataset = %self.dataset, path = %path, kept_as = %kept,
            "the file changed at the source while this node held changes to it; the source's version is kept under the conflict name and this node's is uploaded");
        Ok(())
    }

    /// Journals that `file` is about to reach the source as `etag` (kept until an
    /// upload is known to have landed).
    fn sending(&self, file: &LocalFile, etag: &str) -> Result<()> {
        let _st = self.state.lock().expect("writes");
        self.append(&[Record::Sending {
            id: file.id,
            etag: etag.to_string(),
        }])?;
        let mut fs = file.state.lock().expect("local file");
        // Bounded: only the uploads since the last one known to have landed count.
        if fs.sent.len() >= 16 {
            fs.sent.remove(0);
        }
        fs.sent.push(etag.to_string());
        Ok(())
    }

    async fn delete(&self, path: &DatasetPath) -> Result<Finished> {
        let (source, rel, _) = self.mode_of(path)?;
        let (store, loc) = source.write_target(&rel)?;
        source.count_write_request("delete");
        match store.delete(&loc).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(Finished {
                uploaded: None,
                synced: Some(path.clone()),
            }),
            Err(e) => Err(source.write_error(e)),
        }
    }

    async fn copy(&self, from: &DatasetPath, to: &DatasetPath, etag: &str) -> Result<Finished> {
        let (source, from_rel, _) = self.mode_of(from)?;
        let (_, to_rel, _) = self.mode_of(to)?;
        let (store, from_loc) = source.write_target(&from_rel)?;
        let (_, to_loc) = source.write_target(&to_rel)?;
        source.count_write_request("copy");
        match store.copy(&from_loc, &to_loc).await {
            Ok(()) => {}
            // Gone already: copied before a kill, and its delete ran since.
            Err(object_store::Error::NotFound { .. }) => {
                tracing::warn!(dataset = %self.dataset, from = %from, to = %to, etag,
                    "a renamed file was no longer at the source to copy; assuming the copy was made before a restart");
            }
            Err(e) => return Err(source.write_error(e)),
        }
        Ok(Finished {
            uploaded: None,
            synced: Some(to.clone()),
        })
    }
}

/// The ETag S3 gives `file`'s first `size` bytes as this uploader sends them: the MD5 of
/// the whole up to [`PART_BYTES`], else the MD5 of the parts' MD5s and their count.
async fn md5_etag(file: &Arc<LocalFile>, size: u64) -> Result<String> {
    if size <= PART_BYTES {
        return Ok(hex::encode(Md5::digest(read(file, 0, size).await?)));
    }
    let mut digests = Vec::new();
    let mut offset = 0;
    while offset < size {
        let n = PART_BYTES.min(size - offset);
        digests.extend(Md5::digest(read(file, offset, n).await?));
        offset += n;
    }
    Ok(format!(
        "{}-{}",
        hex::encode(Md5::digest(&digests)),
        size.div_ceil(PART_BYTES)
    ))
}

async fn read(file: &Arc<LocalFile>, offset: u64, len: u64) -> Result<bytes::Bytes> {
    let f = file.clone();
    tokio::task::spawn_blocking(move || f.read_at(offset, len))
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

fn unquote(etag: &str) -> &str {
    etag.trim_matches('"')
}

/// Compares the store's ETag with the MD5 form computed here, where the store uses that
/// form (S3 and its peers: the MD5, or the MD5 of the parts' MD5s and their count);
/// other stores' ETags are not checksums and pass.
/// Whether a store's ETag is in the MD5 form [`check_etag`] can check.
pub(crate) fn etag_is_md5(etag: &str) -> bool {
    let got = unquote(etag).to_ascii_lowercase();
    let (hash, parts) = got.split_once('-').unwrap_or((&got, ""));
    hash.len() == 32
        && hash.bytes().all(|b| b.is_ascii_hexdigit())
        && parts.bytes().all(|b| b.is_ascii_digit())
}

pub(crate) fn check_etag(got: &str, expected: &str) -> std::result::Result<(), String> {
    let got = unquote(got).to_ascii_lowercase();
    let (hash, parts) = got.split_once('-').unwrap_or((&got, ""));
    let md5_form = hash.len() == 32
        && hash.bytes().all(|b| b.is_ascii_hexdigit())
        && parts.bytes().all(|b| b.is_ascii_digit());
    if !md5_form || got == expected {
        Ok(())
    } else {
        Err(format!("ETag {got}, expected {expected}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_etags_are_checked_and_others_pass() {
        let md5 = hex::encode(Md5::digest(b"abc"));
        assert!(check_etag(&format!("\"{md5}\""), &md5).is_ok());
        assert!(
            check_etag(
                "\"900150983cd24fb0d6963f7d28e17f73\"",
                "0cc175b9c0f1b6a831c399e269772661"
            )
            .is_err()
        );
        assert!(
            check_etag(
                "0cc175b9c0f1b6a831c399e269772661-2",
                "0cc175b9c0f1b6a831c399e269772661-3"
            )
            .is_err()
        );
        assert!(
            check_etag("1700000000-42-abc", &md5).is_ok(),
            "a local store's ETag"
        );
        assert!(check_etag("", &md5).is_ok());
    }
}
