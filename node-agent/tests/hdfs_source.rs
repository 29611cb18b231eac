//! `hdfs://` sources from a real HDFS (a MiniDFSCluster: one namenode, one datanode, on
//! loopback) beside an `s3://` source (moto) in one dataset, read through a real FUSE
//! mount (run as root): the bytes equal both sources', and the metadata cache and the
//! readahead treat the two alike (the same reads cost the same requests, a second pass
//! none).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use strata_agent::config::{CacheSettings, SourceConfig};
use strata_agent::fuse::{MountOptions, mount};
use strata_testkit::hdfs::MiniDfs;

/// Sizes around the 1 MiB block, a file read with readahead, an empty file, nested
/// directories.
fn files() -> Vec<(String, Vec<u8>)> {
    vec![
        ("empty".into(), vec![]),
        ("one-byte".into(), content(1, 1)),
        ("train/block-minus-1.bin".into(), content(2, MIB - 1)),
        ("train/block-plus-1.bin".into(), content(3, MIB + 1)),
        ("train/deep/large.bin".into(), content(4, 9 * MIB + 12_345)),
        ("labels/labels.csv".into(), content(5, 4_096)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hdfs_source_reads_beside_s3_alike_through_one_mount() {
    require_fuse();
    let hdfs = MiniDfs::start();
    let s3 = S3Server::start();
    s3.create_bucket("corpus");
    let files = files();
    for (k, v) in &files {
        hdfs.put(&format!("/warehouse/ds/{k}"), v).await;
    }
    let uploads: Vec<_> = files
        .iter()
        .map(|(k, v)| (format!("ds/{k}"), v.clone()))
        .collect();
    s3.upload("corpus", &uploads).await;

    let lake = SourceConfig {
        name: "lake".into(),
        uri: format!("{}/warehouse/ds/", hdfs.url()),
        mount_path: "/lake".into(),
        ..Default::default()
    };
    let cloud = s3.source("cloud", "s3://corpus/ds/", "/cloud");
    let cache_dir = tempdir();
    let mnt = tempdir();
    let agent = agent(cache_dir.path(), 64 << 20, 1 << 30).await;
    let view = agent
        .add_dataset(dataset(
            "lake",
            vec![lake, cloud],
            CacheSettings {
                metadata_ttl: Duration::from_secs(300),
                ..one_mib_blocks()
            },
        ))
        .await
        .expect("add the dataset");
    view.check_sources().await.expect("both sources answer");
    let handle = mount(view.clone(), mnt.path(), MountOptions::default()).expect("mount");
    let root = mnt.path().to_path_buf();
    let walk_both = move || {
        let r = root.clone();
        async move {
            tokio::task::spawn_blocking(move || (walk(&r.join("lake")), walk(&r.join("cloud"))))
                .await
                .expect("walk")
        }
    };

    let (from_hdfs, from_s3) = walk_both().await;
    let expected: BTreeMap<String, Vec<u8>> = files.into_iter().collect();
    for (how, got) in [("hdfs", &from_hdfs), ("s3", &from_s3)] {
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{how}: the listing"
        );
        for (path, bytes) in &expected {
            assert!(got[path] == *bytes, "{how}: {path} differs");
        }
    }
    let counts = |name: &str| {
        view.sources()
            .iter()
            .find(|s| s.name() == name)
            .expect("source")
            .request_counts()
    };
    let (lake, cloud) = (counts("lake"), counts("cloud"));
    // The same files cost the same data requests: the readahead plans alike.
    assert_eq!(
        (lake.gets, lake.bytes),
        (cloud.gets, cloud.bytes),
        "reads of the same files: hdfs {lake:?}, s3 {cloud:?}"
    );
    assert!(lake.bytes >= expected.values().map(|v| v.len() as u64).sum::<u64>());

    // Again, with the kernel's page cache dropped: served from the agent's caches, with
    // no request to either source (metadata and data cached alike).
    drop_page_cache();
    let (again_hdfs, again_s3) = walk_both().await;
    assert!(again_hdfs == from_hdfs && again_s3 == from_s3);
    assert_eq!(counts("lake"), lake, "hdfs: the second pass");
    assert_eq!(counts("cloud"), cloud, "s3: the second pass");
    handle.unmount().expect("unmount");
}
