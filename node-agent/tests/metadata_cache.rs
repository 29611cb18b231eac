//! The metadata cache, counted at the server (a counting proxy in front of a real S3 server):
//! within the TTL a second stat of a path, missing or present, makes no request; after the
//! TTL it asks again.

mod common;

use std::time::Duration;

use common::*;
use strata_agent::config::CacheSettings;
use strata_testkit::proxy::CountingProxy;

const TTL: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stat_within_the_ttl_makes_no_request() {
    let s3 = S3Server::start();
    s3.create_bucket("meta");
    s3.upload("meta", &[("ds/a/present.bin".into(), content(1, 1000))])
        .await;
    let proxy = CountingProxy::start(&format!("127.0.0.1:{}", s3.port));
    let mut source = s3.source("s3", "s3://meta/ds/", "/");
    source.endpoint = Some(proxy.endpoint());
    let cache = tempdir();
    let agent = agent(cache.path(), 16 << 20, 64 << 20).await;
    let view = agent
        .add_dataset(dataset(
            "meta",
            vec![source],
            CacheSettings {
                metadata_ttl: TTL,
                ..Default::default()
            },
        ))
        .await
        .unwrap();

    let paths = ["/a/missing.bin", "/missing-dir/x", "/a/present.bin"];
    for path in paths {
        let first = view.stat(&p(path)).await;
        let seen = proxy.requests();
        let second = view.stat(&p(path)).await;
        assert_eq!(first.is_ok(), second.is_ok(), "{path}");
        assert_eq!(
            proxy.requests(),
            seen,
            "{path}: a second stat within the TTL reached the server"
        );
    }
    assert!(
        view.stat(&p("/a/missing.bin"))
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert!(view.stat(&p("/a/present.bin")).await.unwrap().size == 1000);

    // The count is real: past the TTL the same stat of a missing path asks the server again.
    let seen = proxy.requests();
    assert!(seen > 0, "the server saw no request at all");
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;
    assert!(
        view.stat(&p("/a/missing.bin"))
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert!(
        proxy.requests() > seen,
        "an expired negative entry was answered without asking the server"
    );
}
