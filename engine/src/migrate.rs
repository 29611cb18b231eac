//! Copies the objects under a path of one source to another (the online migration of
//! issue 25, e.g. `hdfs://` to `s3://`), a few at once, each verified by checksum, and
//! resumable: a copied object carries the version it was copied from (object metadata
//! [`COPIED_FROM`]), so a copy started again after a kill skips every object whose target
//! still carries its source's current version, and copies only what was in flight or not
//! reached. An object appears at the target only whole (one PUT, or a multipart upload
//! completed at the end), so a kill never leaves a partial one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use md5::{Digest, Md5};
use object_store::{
    Attribute, AttributeValue, Attributes, GetOptions, ObjectStoreExt, PutMultipartOptions,
    PutOptions, PutPayload, WriteMultipart,
};
use serde::Serialize;

use crate::source::{ObjectInfo, Source};
use crate::writes::upload::{PART_BYTES, check_etag, etag_is_md5};
use crate::{Error, Result};

/// The object metadata a copied object carries: `<size>:<source version>`.
pub const COPIED_FROM: &str = "strata-copied-from";

/// Parts of one multipart copy in flight at once.
const PART_CONCURRENCY: usize = 4;

/// How a copy runs.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Objects copied at once.
    pub concurrency: usize,
}

/// Where a copy stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CopyProgress {
    /// Objects under the path at the source (once listed).
    pub objects_total: u64,
    /// Objects at the target as they are at the source: copied now or before.
    pub objects_done: u64,
    /// Of those, the ones found already copied (a resumed copy).
    pub objects_skipped: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
    /// Bytes this run sent to the target.
    pub bytes_copied: u64,
    /// Seconds since this run started.
    pub elapsed_seconds: f64,
}

impl CopyProgress {
    /// Bytes done out of the total, in percent (100 for an empty path).
    pub fn percent(&self) -> f64 {
        if self.bytes_total == 0 {
            return if self.objects_done >= self.objects_total {
                100.0
            } else {
                0.0
            };
        }
        self.bytes_done as f64 * 100.0 / self.bytes_total as f64
    }

    /// Bytes per second this run copied.
    pub fn rate(&self) -> f64 {
        if self.elapsed_seconds <= 0.0 {
            0.0
        } else {
            self.bytes_copied as f64 / self.elapsed_seconds
        }
    }

    /// Time left at this run's rate, once it has one.
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.rate();
        (rate > 0.0).then(|| {
            Duration::from_secs_f64(self.bytes_total.saturating_sub(self.bytes_done) as f64 / rate)
        })
    }
}

#[derive(Default)]
struct Counters {
    objects_done: AtomicU64,
    objects_skipped: AtomicU64,
    bytes_done: AtomicU64,
    bytes_copied: AtomicU64,
}

/// Copies every object under `rel` (relative to `from`'s prefix) to the same key under
/// `to`'s prefix; `progress` is told after each object. Fails with the first object that
/// could not be copied after the store's own retries (the objects copied before it stay
/// copied: run it again to resume).
pub async fn copy_tree(
    from: &Arc<Source>,
    to: &Arc<Source>,
    rel: &str,
    options: &CopyOptions,
    progress: impl Fn(&CopyProgress) + Send + Sync,
) -> Result<CopyProgress> {
    let started = Instant::now();
    let mut objects = Vec::new();
    from.list_recursive(rel, |o| objects.push(o)).await?;
    let bytes_total = objects.iter().map(|o| o.size).sum();
    let objects_total = objects.len() as u64;
    let counters = Counters::default();
    let snapshot = |counters: &Counters| CopyProgress {
        objects_total,
        objects_done: counters.objects_done.load(Ordering::Relaxed),
        objects_skipped: counters.objects_skipped.load(Ordering::Relaxed),
        bytes_total,
        bytes_done: counters.bytes_done.load(Ordering::Relaxed),
        bytes_copied: counters.bytes_copied.load(Ordering::Relaxed),
        elapsed_seconds: started.elapsed().as_secs_f64(),
    };
    progress(&snapshot(&counters));
    let shared = &counters;
    let mut copies = futures::stream::iter(objects)
        .map(|object| async move {
            let counters = shared;
            let copied = copy_one(from, to, &object).await?;
            counters.objects_done.fetch_add(1, Ordering::Relaxed);
            counters
                .bytes_done
                .fetch_add(object.size, Ordering::Relaxed);
            match copied {
                Copied::Sent => counters
                    .bytes_copied
                    .fetch_add(object.size, Ordering::Relaxed),
                Copied::AlreadyThere => counters.objects_skipped.fetch_add(1, Ordering::Relaxed),
            };
            Ok::<_, Error>(())
        })
        .buffer_unordered(options.concurrency.max(1));
    while let Some(result) = copies.next().await {
        result?;
        progress(&snapshot(&counters));
    }
    drop(copies);
    Ok(snapshot(&counters))
}

enum Copied {
    Sent,
    AlreadyThere,
}

/// The metadata value of a copy of `object`: its size and source version.
fn copied_from(object: &ObjectInfo) -> String {
    format!("{}:{}", object.size, object.etag)
}

async fn copy_one(from: &Source, to: &Source, object: &ObjectInfo) -> Result<Copied> {
    let (store, loc) = to.write_target(&object.key)?;
    let tag = copied_from(object);
    // Already copied, from this very version: a resumed copy skips it.
    to.count_write_request("head");
    match store
        .get_opts(
            &loc,
            GetOptions {
                head: true,
                ..GetOptions::default()
            },
        )
        .await
    {
        Ok(found) => {
            let carried = found
                .attributes
                .get(&Attribute::Metadata(COPIED_FROM.into()))
                .map(|v| v.as_ref().to_string());
            if found.meta.size == object.size && carried.as_deref() == Some(tag.as_str()) {
                return Ok(Copied::AlreadyThere);
            }
        }
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(to.write_error(e)),
    }
    let mut attributes = Attributes::new();
    attributes.insert(
        Attribute::Metadata(COPIED_FROM.into()),
        AttributeValue::from(tag),
    );
    // The MD5 of the whole content, for targets whose ETag is no checksum.
    let mut whole = Md5::new();
    let (etag, expected) = if object.size <= PART_BYTES {
        // An empty object has no byte range to read (stores refuse `0..0`).
        let data = if object.size == 0 {
            bytes::Bytes::new()
        } else {
            from.get_range(&object.key, &object.etag, 0..object.size)
                .await?
        };
        whole.update(&data);
        let expected = hex::encode(Md5::digest(&data));
        to.count_write_request("put");
        let put = store
            .put_opts(
                &loc,
                PutPayload::from(data),
                PutOptions {
                    attributes,
                    ..PutOptions::default()
                },
            )
            .await
            .map_err(|e| to.write_error(e))?;
        (put.e_tag.unwrap_or_default(), expected)
    } else {
        to.count_write_request("multipart");
        let upload = store
            .put_multipart_opts(
                &loc,
                PutMultipartOptions {
                    attributes,
                    ..PutMultipartOptions::default()
                },
            )
            .await
            .map_err(|e| to.write_error(e))?;
        let mut parts = WriteMultipart::new_with_chunk_size(upload, PART_BYTES as usize);
        let mut digests = Vec::new();
        let mut offset = 0;
        while offset < object.size {
            let end = (offset + PART_BYTES).min(object.size);
            let chunk = match from.get_range(&object.key, &object.etag, offset..end).await {
                Ok(c) => c,
                Err(e) => {
                    // Never completed: the target shows no part of it.
                    let _ = parts.abort().await;
                    return Err(e);
                }
            };
            digests.extend(Md5::digest(&chunk));
            whole.update(&chunk);
            if let Err(e) = parts.wait_for_capacity(PART_CONCURRENCY).await {
                return Err(to.write_error(e));
            }
            parts.write(&chunk);
            offset = end;
        }
        let count = object.size.div_ceil(PART_BYTES);
        let expected = format!("{}-{count}", hex::encode(Md5::digest(&digests)));
        let put = parts.finish().await.map_err(|e| to.write_error(e))?;
        (put.e_tag.unwrap_or_default(), expected)
    };
    let differs = |why: String| {
        Error::refused(
            &crate::path::DatasetPath::root(),
            libc::EIO,
            &format!(
                "{}: copied, but the target's checksum differs ({why})",
                object.key
            ),
        )
    };
    check_etag(&etag, &expected).map_err(differs)?;
    if !etag_is_md5(&etag) {
        // No checksum in the ETag (GCS, Azure, HDFS): read the copy back and hash it.
        let read = store.get(&loc).await.map_err(|e| to.write_error(e))?;
        let mut stream = read.into_stream();
        let mut back = Md5::new();
        while let Some(chunk) = stream.next().await {
            back.update(chunk.map_err(|e| to.write_error(e))?);
        }
        let (sent, got) = (hex::encode(whole.finalize()), hex::encode(back.finalize()));
        if sent != got {
            return Err(differs(format!("MD5 {got} read back, {sent} sent")));
        }
    }
    Ok(Copied::Sent)
}
