//! The MiniDFS harness works end to end: a real HDFS starts, hdfs-native writes a file of
//! several blocks (the cluster's blocks are 1 MiB) and a small one, and reads and lists them
//! back. Needs `java` 17, and `mvn` with Maven Central the first time.

use std::time::Instant;

use strata_testkit::data::content;
use strata_testkit::hdfs::MiniDfs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hdfs_native_reads_back_what_it_wrote() {
    let started = Instant::now();
    let dfs = MiniDfs::start();
    eprintln!(
        "MiniDfs::start (with the package check) took {:.1?}",
        started.elapsed()
    );
    assert_eq!(dfs.url(), format!("hdfs://127.0.0.1:{}", dfs.port()));

    let large = content(1, 5 * 1024 * 1024);
    let small = content(2, 1000);
    let written = Instant::now();
    dfs.put("/data/large.bin", &large).await;
    dfs.put("/data/small.txt", &small).await;
    eprintln!("put 5 MiB + 1000 B in {:.1?}", written.elapsed());

    let client = dfs.client();
    for (path, expected) in [("/data/large.bin", &large), ("/data/small.txt", &small)] {
        let reader = client.read(path).await.expect("open for read");
        assert_eq!(reader.file_length(), expected.len(), "{path} length");
        let read = reader.read_range(0, expected.len()).await.expect("read");
        assert!(
            read[..] == expected[..],
            "{path} reads back different bytes"
        );
    }

    let mut listed: Vec<(String, usize)> = client
        .list_status("/data", false)
        .await
        .expect("list /data")
        .into_iter()
        .map(|status| (status.path, status.length))
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            ("/data/large.bin".to_string(), large.len()),
            ("/data/small.txt".to_string(), small.len()),
        ]
    );
}
