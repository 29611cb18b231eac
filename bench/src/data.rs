//! The generated data sets, uploaded to the S3 server and kept as local reference copies.
//!
//! Content is pseudo-random (incompressible) and derived from the object's name, so the local
//! copy used for the "local file" reference holds exactly the bytes the mounts serve.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::s3server::S3Credentials;
use crate::{Error, Result};

pub const BUCKET: &str = "bench";
const SEQ_PART: usize = 32 << 20;

/// Sizes of the three data sets; the full sizes are the ones in shared/BENCHMARKS.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSpec {
    pub seq_large_bytes: u64,
    pub epoch_files: usize,
    pub list_objects: usize,
}

impl DataSpec {
    pub const FULL: DataSpec = DataSpec {
        seq_large_bytes: 1 << 30,
        epoch_files: 10_000,
        list_objects: 100_000,
    };

    /// Object key of the large object; the size is part of every key so data sets of different
    /// sizes never mix in one bucket.
    pub fn seq_key(&self) -> String {
        format!("seq-{}/large.bin", self.seq_large_bytes)
    }

    pub fn epoch_prefix(&self) -> String {
        format!("epoch-{}", self.epoch_files)
    }

    /// Relative paths of the epoch-small files: shards of 1,000 like a sharded image set.
    pub fn epoch_keys(&self) -> Vec<String> {
        (0..self.epoch_files)
            .map(|i| {
                format!(
                    "{}/shard-{:03}/sample-{i:06}.bin",
                    self.epoch_prefix(),
                    i / 1000
                )
            })
            .collect()
    }

    pub fn list_prefix(&self) -> String {
        format!("list-{}", self.list_objects)
    }

    pub fn list_keys(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.list_objects)
            .map(|i| format!("{}/dir-{:03}/obj-{i:06}", self.list_prefix(), i / 1000))
    }

    pub fn epoch_bytes(&self) -> u64 {
        (0..self.epoch_files).map(epoch_file_size).sum()
    }
}

/// The prefix of list-huge's data set of `objects` objects, all in it, none below.
pub fn huge_prefix(objects: usize) -> String {
    format!("huge-{objects}")
}

/// ~110 KiB on average: 100 KiB plus a spread of up to 20 KiB.
pub fn epoch_file_size(index: usize) -> u64 {
    100 * 1024 + (index as u64 * 7919) % (20 * 1024)
}

fn seeded(name: &str, part: u64) -> SmallRng {
    // FNV-1a over the name: stable across platforms and releases (unlike DefaultHasher).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    SmallRng::seed_from_u64(h ^ part.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// The content of `len` bytes of object `name`, part `part`.
pub fn content(name: &str, part: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    seeded(name, part).fill_bytes(&mut buf);
    buf
}

pub fn s3_store(endpoint: &str, creds: &S3Credentials) -> Result<Arc<AmazonS3>> {
    let store = AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_bucket_name(BUCKET)
        .with_access_key_id(&creds.access_key)
        .with_secret_access_key(&creds.secret_key)
        .build()
        .map_err(|e| Error::store("configure", BUCKET, &e))?;
    Ok(Arc::new(store))
}

/// The data sets a run needs: a run of some workloads uploads only theirs.
#[derive(Debug, Clone, Copy)]
pub struct Wanted {
    pub seq: bool,
    pub epoch: bool,
    pub list: bool,
}

/// What was uploaded already, so a second harness run on the same work dir skips it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct UploadManifest {
    done: Vec<String>,
}

pub struct DataSets<'a> {
    pub spec: DataSpec,
    /// Which of seq-large (with random-4k), epoch-small (with preload) and list to have.
    pub wanted: Wanted,
    /// Sizes of the list-huge data sets to have (empty: none).
    pub list_huge: &'a [usize],
    pub store: Arc<AmazonS3>,
    /// Local reference copies (seq-large and epoch-small) live here.
    pub local_root: PathBuf,
    pub work_dir: &'a Path,
}

impl DataSets<'_> {
    fn manifest_path(&self) -> PathBuf {
        self.work_dir.join("uploaded.json")
    }

    fn manifest(&self) -> UploadManifest {
        std::fs::read(self.manifest_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn mark_done(&self, what: &str) -> Result<()> {
        let mut m = self.manifest();
        m.done.push(what.to_string());
        let path = self.manifest_path();
        std::fs::write(&path, serde_json::to_vec(&m).expect("manifest serializes"))
            .map_err(|e| Error::io(&path, e))
    }

    /// Uploads what is missing and writes the local copies. Returns seconds spent.
    pub async fn ensure(&self) -> Result<f64> {
        let start = Instant::now();
        let done = self.manifest().done;
        let seq = self.spec.seq_key();
        if self.wanted.seq && !done.contains(&seq) {
            self.upload_seq().await?;
            self.mark_done(&seq)?;
        }
        let epoch = self.spec.epoch_prefix();
        if self.wanted.epoch && !done.contains(&epoch) {
            self.upload_epoch().await?;
            self.mark_done(&epoch)?;
        }
        let list = self.spec.list_prefix();
        if self.wanted.list && !done.contains(&list) {
            self.upload_list().await?;
            self.mark_done(&list)?;
        }
        for &objects in self.list_huge {
            let prefix = huge_prefix(objects);
            if !done.contains(&prefix) {
                self.upload_huge(objects).await?;
                self.mark_done(&prefix)?;
            }
        }
        Ok(start.elapsed().as_secs_f64())
    }

    pub fn local_seq_path(&self) -> PathBuf {
        self.local_root.join(self.spec.seq_key())
    }

    async fn upload_seq(&self) -> Result<()> {
        let key = self.spec.seq_key();
        tracing::info!(%key, bytes = self.spec.seq_large_bytes, "uploading seq-large");
        let local = self.local_seq_path();
        let parent = local.parent().expect("key has a directory");
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let mut file = std::fs::File::create(&local).map_err(|e| Error::io(&local, e))?;
        let upload = self
            .store
            .put_multipart(&ObjectPath::from(key.as_str()))
            .await
            .map_err(|e| Error::store("multipart upload", &key, &e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, SEQ_PART);
        let mut offset = 0u64;
        let mut part = 0u64;
        while offset < self.spec.seq_large_bytes {
            let len = (self.spec.seq_large_bytes - offset).min(SEQ_PART as u64) as usize;
            let buf = content(&key, part, len);
            std::io::Write::write_all(&mut file, &buf).map_err(|e| Error::io(&local, e))?;
            writer
                .wait_for_capacity(4)
                .await
                .map_err(|e| Error::store("multipart upload", &key, &e))?;
            writer.write(&buf);
            offset += len as u64;
            part += 1;
        }
        writer
            .finish()
            .await
            .map_err(|e| Error::store("multipart upload", &key, &e))?;
        Ok(())
    }

    async fn upload_epoch(&self) -> Result<()> {
        tracing::info!(files = self.spec.epoch_files, "uploading epoch-small");
        let keys = self.spec.epoch_keys();
        futures::stream::iter(keys.into_iter().enumerate())
            .map(|(i, key)| async move {
                let buf = content(&key, 0, epoch_file_size(i) as usize);
                let local = self.local_root.join(&key);
                let parent = local.parent().expect("key has a directory");
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
                std::fs::write(&local, &buf).map_err(|e| Error::io(&local, e))?;
                self.put(&key, buf).await
            })
            .buffer_unordered(32)
            .try_collect::<()>()
            .await
    }

    async fn upload_list(&self) -> Result<()> {
        tracing::info!(objects = self.spec.list_objects, "uploading list");
        futures::stream::iter(self.spec.list_keys())
            .map(|key| async move {
                let body = key.as_bytes()[key.len().saturating_sub(16)..].to_vec();
                self.put(&key, body).await
            })
            .buffer_unordered(64)
            .try_collect::<()>()
            .await
    }

    /// `objects` empty objects in one prefix: what is measured is the listing, not bytes.
    async fn upload_huge(&self, objects: usize) -> Result<()> {
        let prefix = huge_prefix(objects);
        tracing::info!(objects, %prefix, "uploading list-huge");
        let start = Instant::now();
        futures::stream::iter(0..objects)
            .map(|i| {
                let key = format!("{prefix}/obj-{i:07}");
                async move { self.put(&key, Vec::new()).await }
            })
            .buffer_unordered(64)
            .try_collect::<()>()
            .await?;
        tracing::info!(
            objects,
            secs = start.elapsed().as_secs_f64(),
            "uploaded list-huge"
        );
        Ok(())
    }

    async fn put(&self, key: &str, body: Vec<u8>) -> Result<()> {
        self.store
            .put(&ObjectPath::from(key), PutPayload::from(body))
            .await
            .map(drop)
            .map_err(|e| Error::store("put", key, &e))
    }
}

/// Waits until a fresh SeaweedFS accepts writes (volume servers register a few seconds after the
/// S3 port opens); the first write also creates the bucket.
pub async fn wait_writable(store: &AmazonS3) -> Result<()> {
    let key = ObjectPath::from("ready-probe");
    let start = Instant::now();
    loop {
        match store.put(&key, PutPayload::from_static(b"ok")).await {
            Ok(_) => return Ok(()),
            Err(e) if start.elapsed().as_secs() > 90 => {
                return Err(Error::store("put", "ready-probe", &e));
            }
            Err(e) => {
                tracing::debug!(error = %e, "S3 server not writable yet");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_deterministic_and_distinct() {
        assert_eq!(content("a", 0, 64), content("a", 0, 64));
        assert_ne!(content("a", 0, 64), content("a", 1, 64));
        assert_ne!(content("a", 0, 64), content("b", 0, 64));
    }

    #[test]
    fn full_spec_matches_the_benchmark_definition() {
        let spec = DataSpec::FULL;
        let avg = spec.epoch_bytes() / spec.epoch_files as u64;
        assert!((105 * 1024..115 * 1024).contains(&avg), "average {avg}");
        assert_eq!(spec.list_keys().count(), 100_000);
        let keys = spec.epoch_keys();
        assert_eq!(keys.len(), 10_000);
        assert_eq!(keys[9_999], "epoch-10000/shard-009/sample-009999.bin");
    }
}
