//! Sources other than S3, read from real servers through a real FUSE mount (run as root):
//! `gs://` from fake-gcs-server, `az://` from Azurite with an account key and with a SAS
//! token, `http://` from a WebDAV server (wsgidav). Every byte read through the mount equals the source.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use strata_agent::config::{CacheSettings, DatasetConfig};
use strata_agent::fuse::{MountOptions, mount};
use strata_testkit::azurite::Azurite;
use strata_testkit::gcs::FakeGcs;
use strata_testkit::webdav::WebDav;

/// Sizes around the 1 MiB block, several blocks, an empty file, nested directories.
fn files() -> Vec<(String, Vec<u8>)> {
    vec![
        ("empty".into(), vec![]),
        ("one-byte".into(), content(1, 1)),
        ("train/block-minus-1.bin".into(), content(2, MIB - 1)),
        ("train/block-plus-1.bin".into(), content(3, MIB + 1)),
        ("train/deep/multi.bin".into(), content(4, 3 * MIB + 12_345)),
        ("labels/labels.csv".into(), content(5, 4_096)),
    ]
}

/// Mounts `dataset` on a fresh agent and reads every file through the mount.
async fn read_through_mount(dataset: DatasetConfig) -> BTreeMap<String, Vec<u8>> {
    require_fuse();
    let cache_dir = tempdir();
    let mnt = tempdir();
    let agent = agent(cache_dir.path(), 64 << 20, 1 << 30).await;
    let view = agent.add_dataset(dataset).await.expect("add the dataset");
    let handle = mount(view, mnt.path(), MountOptions::default()).expect("mount");
    let root = mnt.path().to_path_buf();
    let got = tokio::task::spawn_blocking(move || walk(&root))
        .await
        .expect("walk");
    handle.unmount().expect("unmount");
    got
}

/// The mount showed exactly `expected`, byte for byte.
fn assert_same(got: &BTreeMap<String, Vec<u8>>, expected: &BTreeMap<String, Vec<u8>>, how: &str) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{how}: the listing"
    );
    for (path, bytes) in expected {
        assert!(got[path] == *bytes, "{how}: {path} differs");
    }
}

fn settings() -> CacheSettings {
    CacheSettings {
        metadata_ttl: Duration::from_secs(300),
        ..one_mib_blocks()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn az_sources_read_through_the_mount_with_a_key_and_with_a_sas_token() {
    let azurite = Azurite::start();
    azurite.create_container("corpus");
    let files = files();
    let uploads: Vec<_> = files
        .iter()
        .map(|(k, v)| (format!("ds/{k}"), v.clone()))
        .collect();
    azurite.upload("corpus", &uploads).await;
    let expected: BTreeMap<String, Vec<u8>> = files.into_iter().collect();
    for (how, credentials) in [
        ("account key", azurite.key_credentials()),
        ("SAS token", azurite.sas_credentials()),
    ] {
        let source = azurite.source("lake", "az://corpus/ds/", credentials);
        let got = read_through_mount(dataset("az", vec![source], settings())).await;
        assert_same(&got, &expected, how);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sources_read_through_the_mount() {
    let served = tempdir();
    let files = files();
    write_tree(
        &served.path().join("ds"),
        &files
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>(),
    );
    let server = WebDav::start(served.path());
    let source = server.source("web", "ds/");
    let got = read_through_mount(dataset("web", vec![source], settings())).await;
    assert_same(&got, &files.into_iter().collect(), "http");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gs_sources_read_through_the_mount() {
    let gcs = FakeGcs::start();
    gcs.create_bucket("corpus");
    let files = files();
    let uploads: Vec<_> = files
        .iter()
        .map(|(k, v)| (format!("ds/{k}"), v.clone()))
        .collect();
    gcs.upload("corpus", &uploads);
    let source = gcs.source("lake", "gs://corpus/ds/");
    let got = read_through_mount(dataset("gs", vec![source], settings())).await;
    assert_same(&got, &files.into_iter().collect(), "gs");
}
