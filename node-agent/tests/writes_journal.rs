//! The write journal against a real S3 server (moto) behind a proxy that can cut it off:
//! a source outage keeps writes landing on the node and uploads resume; a restarted agent
//! resumes what the last one owed; the dirty-bytes bound makes writers wait, then ENOSPC,
//! with nothing lost; a file changed upstream meanwhile is kept under a conflict name;
//! write-through returns once the source has the file.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use object_store::ObjectStoreExt;
use strata_agent::agent::Agent;
use strata_agent::config::{CacheSettings, WriteMode};
use strata_agent::dataset::DatasetView;
use strata_agent::writes::DatasetWrites;
use strata_testkit::proxy::CountingProxy;

struct Fixture {
    s3: S3Server,
    proxy: CountingProxy,
    cache_dir: tempfile::TempDir,
}

impl Fixture {
    fn new(bucket: &str) -> Fixture {
        let s3 = S3Server::start();
        s3.create_bucket(bucket);
        let proxy = CountingProxy::start(&format!("127.0.0.1:{}", s3.port));
        Fixture {
            s3,
            proxy,
            cache_dir: tempdir(),
        }
    }

    async fn agent(
        &self,
        bucket: &str,
        mode: WriteMode,
        quota: Option<u64>,
    ) -> (Arc<Agent>, Arc<DatasetView>, Arc<DatasetWrites>) {
        let mut source = self.s3.source("s3", &format!("s3://{bucket}/"), "/");
        source.endpoint = Some(self.proxy.endpoint());
        source.write_mode = mode;
        source.max_retries = Some(0);
        let cfg = dataset(
            "journal",
            vec![source],
            CacheSettings {
                quota,
                ..one_mib_blocks()
            },
        );
        let agent = agent(self.cache_dir.path(), 64 << 20, 1 << 30).await;
        let view = agent.add_dataset(cfg).await.unwrap();
        let writes = view.writes().expect("a writable dataset").clone();
        (agent, view, writes)
    }

    async fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let store = self.s3.store(bucket);
        match store.get(&object_store::path::Path::from(key)).await {
            Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("{key}: {e}"),
        }
    }

    async fn keys(&self, bucket: &str) -> Vec<String> {
        use futures::TryStreamExt;
        use object_store::ObjectStore;
        let store = self.s3.store(bucket);
        let mut keys: Vec<String> = store
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        keys.sort();
        keys
    }
}

/// Writes `data` as the whole file `path` and closes it (create, write, commit).
async fn write_file(view: &Arc<DatasetView>, path: &str, data: &[u8]) -> strata_engine::Result<()> {
    let writes = view.writes().unwrap().clone();
    let file = view.create_file(&p(path), 0o644, false).await?;
    let result = async {
        writes.write(&file, 0, data).await?;
        writes.commit(&file).await
    }
    .await;
    writes.remove_writer(&file);
    result
}

async fn read(view: &Arc<DatasetView>, path: &str) -> Vec<u8> {
    let r = view.open(&p(path)).await.unwrap();
    r.read(0, u64::MAX / 2).await.unwrap().to_vec()
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_outage_keeps_writes_on_the_node_and_uploads_resume() {
    let f = Fixture::new("outage");
    let (_agent, view, writes) = f.agent("outage", WriteMode::WriteBack, None).await;
    f.proxy.set_down(true);
    let data = content(1, 3 * MIB + 17);
    write_file(&view, "/during-outage.bin", &data)
        .await
        .unwrap();
    // Served on this node while the source is away.
    assert_eq!(read(&view, "/during-outage.bin").await, data);
    wait_for("a failed upload", || writes.usage().failures > 0).await;
    let usage = writes.usage();
    assert_eq!(usage.pending_files, 1, "{usage:?}");
    assert_eq!(usage.pending_bytes, data.len() as u64);
    assert!(usage.oldest_pending.is_some());
    let (message, _) = usage.last_error.clone().expect("the failure is reported");
    assert!(
        !message.contains("testing-secret"),
        "credential in {message}"
    );
    assert_eq!(f.object("outage", "during-outage.bin").await, None);
    f.proxy.set_down(false);
    assert!(
        writes.drain(Duration::from_secs(60)).await,
        "uploads did not resume"
    );
    assert_eq!(f.object("outage", "during-outage.bin").await, Some(data));
    let usage = writes.usage();
    assert_eq!((usage.pending_files, usage.last_error), (0, None));
    // Removed with nothing left to send: nothing of its writes stays on the node.
    let dir = writes.dir().to_path_buf();
    assert!(dir.exists());
    _agent
        .remove_dataset("test", "journal", true)
        .await
        .unwrap();
    assert!(
        !dir.exists(),
        "{} left after the dataset was removed",
        dir.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_agent_resumes_what_the_last_one_owed_the_source() {
    let f = Fixture::new("restart");
    f.s3.upload("restart", &[("old".to_string(), b"old".to_vec())])
        .await;
    {
        let (_agent, view, _writes) = f.agent("restart", WriteMode::WriteBack, None).await;
        // Listed while the source answers; then it goes away.
        assert_eq!(read(&view, "/old").await, b"old");
        f.proxy.set_down(true);
        write_file(&view, "/a", b"first").await.unwrap();
        write_file(&view, "/b", b"second").await.unwrap();
        view.rename(&p("/b"), &p("/c")).await.unwrap();
        view.remove_file(&p("/old")).await.unwrap();
        view.make_dir(&p("/d")).await.unwrap();
    }
    // The first agent is gone (its uploader stops once nothing holds its journal).
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.proxy.set_down(false);
    let (_agent, view, writes) = f.agent("restart", WriteMode::WriteBack, None).await;
    // The journal's view is back before anything reached the source.
    assert_eq!(read(&view, "/c").await, b"second");
    assert!(view.stat(&p("/d")).await.unwrap().is_dir());
    assert!(writes.drain(Duration::from_secs(60)).await);
    assert_eq!(f.keys("restart").await, ["a", "c"]);
    assert_eq!(f.object("restart", "a").await.unwrap(), b"first");
    assert_eq!(f.object("restart", "c").await.unwrap(), b"second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_dirty_quota_makes_writers_wait_then_enospc_and_loses_nothing() {
    let f = Fixture::new("quota");
    let (_agent, view, writes) = f
        .agent("quota", WriteMode::WriteBack, Some(MIB as u64))
        .await;
    f.proxy.set_down(true);
    let a = content(2, 768 << 10);
    write_file(&view, "/a", &a).await.unwrap();
    writes.set_dirty_wait(Duration::from_secs(2));
    let started = Instant::now();
    let err = write_file(&view, "/b", &content(3, 512 << 10))
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");
    assert!(started.elapsed() >= Duration::from_secs(2), "did not wait");
    assert!(err.to_string().contains("quota"), "{err}");
    assert_eq!(read(&view, "/a").await, a, "a stored file changed");
    // The source comes back while the next writer waits: it goes on once `a` is up.
    writes.set_dirty_wait(Duration::from_secs(60));
    let b = content(4, 512 << 10);
    let (v, b2) = (view.clone(), b.clone());
    let writer = tokio::spawn(async move { write_file(&v, "/b", &b2).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!writer.is_finished(), "the writer did not wait for room");
    f.proxy.set_down(false);
    writer.await.unwrap().unwrap();
    assert!(writes.drain(Duration::from_secs(60)).await);
    assert_eq!(f.object("quota", "a").await.unwrap(), a);
    assert_eq!(f.object("quota", "b").await.unwrap(), b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_changed_upstream_meanwhile_is_kept_under_a_conflict_name() {
    let f = Fixture::new("conflict");
    f.s3.upload("conflict", &[("doc".to_string(), b"v1".to_vec())])
        .await;
    let (_agent, view, writes) = f.agent("conflict", WriteMode::WriteBack, None).await;
    // Opened for appending: copied up from v1.
    let file = view.open_for_write(&p("/doc"), false).await.unwrap();
    writes.write(&file, 2, b" + local").await.unwrap();
    // Someone else writes v2 at the source before this node uploads.
    f.s3.upload("conflict", &[("doc".to_string(), b"v2 upstream".to_vec())])
        .await;
    writes.commit(&file).await.unwrap();
    writes.remove_writer(&file);
    assert!(writes.drain(Duration::from_secs(60)).await);
    assert_eq!(f.object("conflict", "doc").await.unwrap(), b"v1 + local");
    let keys = f.keys("conflict").await;
    let kept: Vec<_> = keys
        .iter()
        .filter(|k| k.starts_with("doc.conflict-"))
        .collect();
    assert_eq!(kept.len(), 1, "{keys:?}");
    assert_eq!(f.object("conflict", kept[0]).await.unwrap(), b"v2 upstream");
    assert_eq!(writes.usage().conflicts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_through_returns_once_the_source_has_the_file() {
    let f = Fixture::new("through");
    let (_agent, view, _writes) = f.agent("through", WriteMode::WriteThrough, None).await;
    let data = content(5, 9 * MIB + 3);
    write_file(&view, "/t.bin", &data).await.unwrap();
    // No drain: close returned, so the object is there.
    assert_eq!(f.object("through", "t.bin").await, Some(data));
}
