//! What caching costs the disk. Alone in its test binary: it reads this process's I/O
//! counters, which other tests running alongside would add to.

mod common;

use common::*;
use strata_agent::config::CacheSettings;

/// Bytes this process has handed to write(2) and friends so far.
fn bytes_written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io");
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("wchar in /proc/self/io")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn caching_a_file_of_many_blocks_writes_its_bytes_about_once() {
    const BLOCK: u64 = 64 * 1024;
    let size = 256 * MIB; // 4,096 blocks
    let data = content(11, size);
    let src = tempdir();
    write_tree(src.path(), &[("big.bin".into(), data.clone())]);
    let cache_dir = tempdir();
    let cfg = dataset(
        "writes",
        vec![local_source("l", src.path(), "/")],
        CacheSettings {
            block_size: BLOCK,
            ..Default::default()
        },
    );
    {
        // No memory tier: every block goes to disk.
        let agent = agent(cache_dir.path(), 0, 1 << 30).await;
        let view = agent.add_dataset(cfg.clone()).await.unwrap();
        let before = bytes_written();
        let got = view.read(&p("/big.bin"), 0, u64::MAX).await.unwrap();
        let written = bytes_written() - before;
        eprintln!("caching {size} bytes wrote {written}");
        assert!(got[..] == data[..], "bytes differ");
        assert_eq!(view.usage().cached_bytes, size as u64);
        // The block list used to be rewritten whole for every block stored: for these
        // 4,096 blocks, 146 MB of sidecar writes on top of the 256 MiB of data.
        assert!(
            written < size as u64 + size as u64 / 100,
            "caching {size} bytes wrote {written}"
        );
    }
    // The journal holds every block: a restarted agent serves the file without a request.
    let agent = agent(cache_dir.path(), 0, 1 << 30).await;
    let view = agent.add_dataset(cfg).await.unwrap();
    let got = view.read(&p("/big.bin"), 0, u64::MAX).await.unwrap();
    assert!(got[..] == data[..], "bytes differ after the restart");
    assert_eq!(
        view.request_counts().total(),
        0,
        "{:?}",
        view.request_counts()
    );
}
