//! The write workload's drivers: a writer that writes one large file or many small ones
//! into a directory (a mount, or the local disk for the reference) and times what it sees,
//! the raw-PUT ceiling (the same bytes PUT from memory through object_store), and a watcher
//! that polls the bucket until every object is there whole.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use rand::{RngCore, SeedableRng};

use crate::{Error, Result};

/// Every `write(2)` of the writer, and the size of each small file.
pub const WRITE_BYTES: usize = 1 << 20;
/// The raw-PUT ceiling's multipart part size: the size Strata's uploader uses.
pub const PART_BYTES: usize = 8 << 20;
/// The distinct 1 MiB chunks the written content cycles through (incompressible, and no two
/// neighbouring writes of a file alike).
const POOL_CHUNKS: usize = 61;

/// What is written: one large file by one writer, or many files of [`WRITE_BYTES`] by
/// `writers` writers at once (file `i` by writer `i % writers`, each in name order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Large { bytes: u64 },
    Small { files: usize, writers: usize },
}

impl Shape {
    /// "1 x 1024 MiB", "1000 x 1 MiB by 8 writers": the case label in the report.
    pub fn label(self) -> String {
        match self {
            Shape::Large { .. } => self.data_label(),
            Shape::Small { writers, .. } => format!(
                "{} by {writers} writer{}",
                self.data_label(),
                if writers == 1 { "" } else { "s" }
            ),
        }
    }

    /// The files alone, whoever writes them: "1000 x 1 MiB" (the references' case label).
    pub fn data_label(self) -> String {
        match self {
            Shape::Large { bytes } => format!("1 x {} MiB", bytes >> 20),
            Shape::Small { files, .. } => format!("{files} x 1 MiB"),
        }
    }

    /// A name usable in a path.
    pub fn slug(self) -> String {
        match self {
            Shape::Large { .. } => "large".into(),
            Shape::Small { writers, .. } => format!("small-{writers}"),
        }
    }

    pub fn writers(self) -> usize {
        match self {
            Shape::Large { .. } => 1,
            Shape::Small { writers, .. } => writers.max(1),
        }
    }

    /// (file name, size) of every file, sorted by name.
    pub fn files(self) -> Vec<(String, u64)> {
        match self {
            Shape::Large { bytes } => vec![("large.bin".to_string(), bytes)],
            Shape::Small { files, .. } => (0..files)
                .map(|i| (format!("file-{i:05}.bin"), WRITE_BYTES as u64))
                .collect(),
        }
    }

    pub fn total_bytes(self) -> u64 {
        match self {
            Shape::Large { bytes } => bytes,
            Shape::Small { files, .. } => files as u64 * WRITE_BYTES as u64,
        }
    }
}

/// The bytes written: file `i`'s chunk `c` is one of [`POOL_CHUNKS`] random 1 MiB chunks,
/// so the content is incompressible without generating a GiB per run.
#[derive(Clone)]
pub struct Content {
    pool: Bytes,
}

impl Content {
    pub fn new(seed: u64) -> Self {
        let mut pool = vec![0u8; POOL_CHUNKS * WRITE_BYTES];
        rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut pool);
        Self { pool: pool.into() }
    }

    /// `len` (at most [`WRITE_BYTES`]) bytes of file `file` from `offset`, a multiple of
    /// [`WRITE_BYTES`].
    pub fn chunk(&self, file: usize, offset: u64, len: usize) -> Bytes {
        let c = (file * 7 + (offset / WRITE_BYTES as u64) as usize) % POOL_CHUNKS;
        let start = c * WRITE_BYTES;
        self.pool.slice(start..start + len.min(WRITE_BYTES))
    }

    /// `len` bytes of file `file` from any `offset`.
    pub fn range(&self, file: usize, offset: u64, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut pos = offset;
        while out.len() < len {
            let base = pos - pos % WRITE_BYTES as u64;
            let skip = (pos - base) as usize;
            let chunk = self.chunk(file, base, WRITE_BYTES);
            let take = (WRITE_BYTES - skip).min(len - out.len());
            out.extend_from_slice(&chunk[skip..skip + take]);
            pos += take as u64;
        }
        out
    }
}

/// What the writer saw.
#[derive(Debug, Clone, Copy)]
pub struct WriteOutcome {
    /// From the first open to the last close returning.
    pub seconds: f64,
    pub files: usize,
    pub bytes: u64,
    /// False when the time limit stopped the writer before the last file.
    pub complete: bool,
}

impl WriteOutcome {
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.seconds
    }
}

/// Writes every file of `shape` into `dir` (which must exist), each in [`WRITE_BYTES`]
/// writes and then closed, by `shape.writers()` threads at once; with `fsync`, each file is
/// fsynced before its close (the local-disk reference: a close on a write-back mount is
/// durable on the node). A failed close (a write-through mount's upload) is an error. A
/// writer starts no new file after `limit`.
pub fn write_files(
    dir: &Path,
    shape: Shape,
    content: &Content,
    fsync: bool,
    limit: Duration,
) -> Result<WriteOutcome> {
    let files = shape.files();
    let writers = shape.writers();
    let start = Instant::now();
    let done: Vec<Result<WriteOutcome>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let files = &files;
                s.spawn(move || {
                    let mine = files.iter().enumerate().skip(w).step_by(writers);
                    write_some(dir, mine, content, fsync, start, limit)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("writer thread panicked"))
            .collect()
    });
    let mut out = WriteOutcome {
        seconds: start.elapsed().as_secs_f64(),
        files: 0,
        bytes: 0,
        complete: true,
    };
    for d in done {
        let d = d?;
        out.files += d.files;
        out.bytes += d.bytes;
        out.complete &= d.complete;
    }
    Ok(out)
}

/// One writer's files, one after another.
fn write_some<'a>(
    dir: &Path,
    files: impl Iterator<Item = (usize, &'a (String, u64))>,
    content: &Content,
    fsync: bool,
    start: Instant,
    limit: Duration,
) -> Result<WriteOutcome> {
    let mut out = WriteOutcome {
        seconds: 0.0,
        files: 0,
        bytes: 0,
        complete: true,
    };
    for (i, (name, size)) in files {
        if start.elapsed() >= limit {
            out.complete = false;
            break;
        }
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut offset = 0u64;
        while offset < *size {
            let len = (size - offset).min(WRITE_BYTES as u64) as usize;
            f.write_all(&content.chunk(i, offset, len))
                .map_err(|e| Error::io(&path, e))?;
            offset += len as u64;
        }
        if fsync {
            f.sync_all().map_err(|e| Error::io(&path, e))?;
        }
        // Dropping a File ignores close's error; a FUSE close (flush) reports the upload's.
        nix::unistd::close(f.into_raw_fd())
            .map_err(|e| Error::io(&path, std::io::Error::from(e)))?;
        out.files += 1;
        out.bytes += size;
    }
    Ok(out)
}

/// The raw-PUT ceiling: the files of `shape` PUT under `prefix` from memory, `in_flight`
/// requests at once (small files: PUTs; the large file: one multipart upload of
/// [`PART_BYTES`] parts, `in_flight` parts at once). Returns the seconds until the last
/// object was complete.
pub async fn raw_puts(
    store: &dyn ObjectStore,
    prefix: &str,
    shape: Shape,
    content: &Content,
    in_flight: usize,
) -> Result<f64> {
    let start = Instant::now();
    match shape {
        Shape::Large { bytes } => {
            let key = format!("{prefix}/large.bin");
            let loc = ObjectPath::from(key.as_str());
            let upload = store
                .put_multipart(&loc)
                .await
                .map_err(|e| Error::store("multipart upload", &key, &e))?;
            let mut parts = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            let mut offset = 0u64;
            while offset < bytes {
                let len = (bytes - offset).min(WRITE_BYTES as u64) as usize;
                if offset.is_multiple_of(PART_BYTES as u64) {
                    parts
                        .wait_for_capacity(in_flight)
                        .await
                        .map_err(|e| Error::store("multipart upload", &key, &e))?;
                }
                parts.put(content.chunk(0, offset, len));
                offset += len as u64;
            }
            parts
                .finish()
                .await
                .map_err(|e| Error::store("multipart upload", &key, &e))?;
        }
        Shape::Small { .. } => {
            futures::stream::iter(shape.files().into_iter().enumerate())
                .map(|(i, (name, size))| {
                    let key = format!("{prefix}/{name}");
                    let body = content.chunk(i, 0, size as usize);
                    async move {
                        store
                            .put(&ObjectPath::from(key.as_str()), PutPayload::from(body))
                            .await
                            .map(drop)
                            .map_err(|e| Error::store("put", &key, &e))
                    }
                })
                .buffer_unordered(in_flight)
                .try_collect::<()>()
                .await?;
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

/// The objects still awaited under a prefix: full key -> size.
#[derive(Debug, Clone)]
pub struct Awaited {
    prefix: String,
    missing: BTreeMap<String, u64>,
}

impl Awaited {
    pub fn new(prefix: &str, shape: Shape) -> Self {
        Self {
            prefix: prefix.to_string(),
            missing: shape
                .files()
                .into_iter()
                .map(|(name, size)| (format!("{prefix}/{name}"), size))
                .collect(),
        }
    }

    pub fn is_done(&self) -> bool {
        self.missing.is_empty()
    }

    pub fn missing(&self) -> usize {
        self.missing.len()
    }

    /// Takes note of an object the source listed: awaited no more if it has the whole
    /// size (a peer may create an empty object first and fill it at close).
    pub fn seen(&mut self, key: &str, size: u64) {
        if self.missing.get(key) == Some(&size) {
            self.missing.remove(key);
        }
    }

    /// Where a listing may start (exclusive): just before the first key still awaited,
    /// so that a poll lists only the part not yet seen whole.
    pub fn list_offset(&self) -> Option<String> {
        let first = self.missing.keys().next()?;
        // The byte string just below `first`: the same without its last character, which
        // sorts before it and after everything that sorts before it with that stem.
        let mut below = first.clone();
        below.pop();
        (below.len() > self.prefix.len()).then_some(below)
    }
}

/// Polls `store` (the S3 server's own endpoint, not the link) every `every` until every
/// object of `awaited` is there whole; returns when that was seen, or None at `deadline`.
pub async fn wait_whole(
    store: &dyn ObjectStore,
    mut awaited: Awaited,
    every: Duration,
    deadline: Instant,
) -> Result<Option<Instant>> {
    loop {
        if awaited.missing() == 1 {
            let key = awaited.missing.keys().next().cloned().unwrap_or_default();
            match store.head(&ObjectPath::from(key.as_str())).await {
                Ok(meta) => awaited.seen(&key, meta.size),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::store("head", &key, &e)),
            }
        } else {
            let prefix = ObjectPath::from(awaited.prefix.as_str());
            let listing = match awaited.list_offset() {
                Some(offset) => store.list_with_offset(Some(&prefix), &ObjectPath::from(offset)),
                None => store.list(Some(&prefix)),
            };
            let metas: Vec<_> = listing
                .try_collect()
                .await
                .map_err(|e| Error::store("list", &awaited.prefix, &e))?;
            for m in metas {
                awaited.seen(m.location.as_ref(), m.size);
            }
        }
        if awaited.is_done() {
            return Ok(Some(Instant::now()));
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                missing = awaited.missing(),
                prefix = %awaited.prefix,
                "objects still not whole at the source at the time limit"
            );
            return Ok(None);
        }
        tokio::time::sleep(every).await;
    }
}

/// Reads back a sample of what reached the source (up to 8 small files whole, or 8 ranges
/// of 1 MiB of the large file) and compares it with what was written.
pub async fn verify_sample(
    store: &dyn ObjectStore,
    prefix: &str,
    shape: Shape,
    content: &Content,
) -> Result<()> {
    let wrong = |key: &str, what: String| Error::Parse {
        what: format!("object {key} at the source"),
        detail: what,
    };
    match shape {
        Shape::Large { bytes } => {
            let key = format!("{prefix}/large.bin");
            let loc = ObjectPath::from(key.as_str());
            let blocks = bytes / WRITE_BYTES as u64;
            for k in 0..8u64 {
                // Spread over the file, and the very end.
                let block = if k == 7 {
                    blocks.saturating_sub(1)
                } else {
                    k * blocks / 8
                };
                let off = block * WRITE_BYTES as u64;
                let len = (bytes - off).min(WRITE_BYTES as u64);
                let got = store
                    .get_range(&loc, off..off + len)
                    .await
                    .map_err(|e| Error::store("get_range", &key, &e))?;
                if got[..] != content.range(0, off, len as usize)[..] {
                    return Err(wrong(&key, format!("bytes {off}..{} differ", off + len)));
                }
            }
        }
        Shape::Small { files, .. } => {
            for i in (0..files).step_by((files / 8).max(1)).take(8) {
                let key = format!("{prefix}/file-{i:05}.bin");
                let got = store
                    .get(&ObjectPath::from(key.as_str()))
                    .await
                    .map_err(|e| Error::store("get", &key, &e))?
                    .bytes()
                    .await
                    .map_err(|e| Error::store("get", &key, &e))?;
                if got[..] != content.range(i, 0, WRITE_BYTES)[..] {
                    return Err(wrong(
                        &key,
                        format!("{} bytes, not what was written", got.len()),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Deletes every object under `prefix`; returns how many.
pub async fn delete_prefix(store: &dyn ObjectStore, prefix: &str) -> Result<usize> {
    let metas: Vec<_> = store
        .list(Some(&ObjectPath::from(prefix)))
        .try_collect()
        .await
        .map_err(|e| Error::store("list", prefix, &e))?;
    let n = metas.len();
    let locations = futures::stream::iter(metas.into_iter().map(|m| Ok(m.location))).boxed();
    store
        .delete_stream(locations)
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| Error::store("delete", prefix, &e))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_name_their_files() {
        let small = Shape::Small {
            files: 1000,
            writers: 1,
        };
        assert_eq!(small.label(), "1000 x 1 MiB by 1 writer");
        assert_eq!(small.data_label(), "1000 x 1 MiB");
        let eight = Shape::Small {
            files: 1000,
            writers: 8,
        };
        assert_eq!(eight.label(), "1000 x 1 MiB by 8 writers");
        assert_ne!(eight.slug(), small.slug());
        let files = small.files();
        assert_eq!(files.len(), 1000);
        assert_eq!(files[999], ("file-00999.bin".into(), 1 << 20));
        assert!(files.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
        assert_eq!(small.total_bytes(), 1000 << 20);
        let large = Shape::Large { bytes: 1 << 30 };
        assert_eq!(large.label(), "1 x 1024 MiB");
        assert_eq!(large.files(), [("large.bin".to_string(), 1 << 30)]);
    }

    #[test]
    fn content_ranges_agree_with_the_chunks_written() {
        let c = Content::new(1);
        let mib = WRITE_BYTES as u64;
        assert_ne!(c.chunk(0, 0, WRITE_BYTES), c.chunk(0, mib, WRITE_BYTES));
        assert_ne!(c.chunk(0, 0, WRITE_BYTES), c.chunk(1, 0, WRITE_BYTES));
        let mut written = Vec::new();
        for off in [0, mib, 2 * mib] {
            written.extend_from_slice(&c.chunk(3, off, WRITE_BYTES));
        }
        let from = mib - 10;
        assert_eq!(
            c.range(3, from, WRITE_BYTES + 20),
            written[from as usize..from as usize + WRITE_BYTES + 20]
        );
    }

    #[test]
    fn only_whole_objects_count_and_listing_resumes_before_the_first_missing() {
        let mut a = Awaited::new(
            "w/p",
            Shape::Small {
                files: 3,
                writers: 1,
            },
        );
        assert_eq!(a.list_offset().as_deref(), Some("w/p/file-00000.bi"));
        // An empty placeholder (s3fs creates one at open) is not the file.
        a.seen("w/p/file-00000.bin", 0);
        a.seen("w/p/file-00001.bin", 1 << 20);
        a.seen("w/p/other", 1 << 20);
        assert_eq!(a.missing(), 2);
        assert_eq!(a.list_offset().as_deref(), Some("w/p/file-00000.bi"));
        a.seen("w/p/file-00000.bin", 1 << 20);
        assert_eq!(a.list_offset().as_deref(), Some("w/p/file-00002.bi"));
        assert!("w/p/file-00002.bi" < "w/p/file-00002.bin");
        a.seen("w/p/file-00002.bin", 1 << 20);
        assert!(a.is_done());
        assert_eq!(a.list_offset(), None);
    }

    #[test]
    fn the_writer_writes_what_the_content_says_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let c = Content::new(2);
        let shape = Shape::Large {
            bytes: 3 * WRITE_BYTES as u64 + 5,
        };
        let out = write_files(dir.path(), shape, &c, true, Duration::from_secs(60)).unwrap();
        assert!(out.complete);
        assert_eq!((out.files, out.bytes), (1, shape.total_bytes()));
        let got = std::fs::read(dir.path().join("large.bin")).unwrap();
        assert_eq!(got, c.range(0, 0, got.len()));
        let small = Shape::Small {
            files: 7,
            writers: 3,
        };
        let out = write_files(dir.path(), small, &c, false, Duration::from_secs(60)).unwrap();
        assert!(out.complete);
        assert_eq!((out.files, out.bytes), (7, 7 << 20));
        for i in [0, 4, 6] {
            let got = std::fs::read(dir.path().join(format!("file-{i:05}.bin"))).unwrap();
            assert_eq!(got, c.range(i, 0, WRITE_BYTES), "file {i}");
        }
        let out = write_files(dir.path(), small, &c, false, Duration::ZERO).unwrap();
        assert!(!out.complete, "a zero limit stops before the first file");
        assert_eq!(out.files, 0);
    }
}
