//! The cluster cache between real agents in one process: three `strata-agent serve` with
//! their own caches, listening on loopback, members from a `--peers-file`, sharing blocks
//! over their HTTP API with the node secret. (The multi-node suite with network
//! namespaces, FUSE mounts and an S3 server behind a WAN link is e2e/tests/cluster_cache.rs.)

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use strata_testkit::agent::{TOKEN, TestAgent, TestAgentOptions, raw_http};

/// 1 MiB blocks: a placement group (16 MiB) is 16 blocks, so a 40 MiB file spans three.
const BLOCK: u64 = 1 << 20;

fn write_source(root: &Path) -> BTreeMap<String, (u64, String)> {
    let mut files = BTreeMap::new();
    // 30 small files (one placement group each) and three groups of the big one: every
    // node owns some of the 33 groups (all but one in 3 x (2/3)^33, about 4e-6).
    let mut sizes: Vec<(String, usize)> = (0..30)
        .map(|i| (format!("shards/shard-{i:02}.bin"), (512 << 10) + i * 4097))
        .collect();
    sizes.push(("big/whole.bin".into(), 40 << 20));
    for (seed, (rel, size)) in sizes.into_iter().enumerate() {
        let data = strata_testkit::data::content(seed as u64 + 1, size);
        let path = root.join(&rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &data).unwrap();
        files.insert(rel, (size as u64, hex::encode(Sha256::digest(&data))));
    }
    files
}

async fn metric(agent: &TestAgent, name: &str) -> f64 {
    let (status, _, body) = raw_http(
        agent.metrics,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Cluster {
    agents: Vec<TestAgent>,
    files: BTreeMap<String, (u64, String)>,
    _dir: tempfile::TempDir,
}

/// Starts `n` agents over one shared source directory, lists them all in the peers file,
/// registers the dataset on each and waits until every agent sees all of them.
async fn cluster(n: usize, replicas: u32) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    let files = write_source(&source);
    let peers_file = dir.path().join("peers");
    std::fs::write(&peers_file, "").unwrap();
    let mut agents = Vec::new();
    for i in 0..n {
        agents.push(
            TestAgent::start_opts(TestAgentOptions {
                node_name: Some(format!("node-{i}")),
                peers_file: Some(peers_file.clone()),
                peer_timeout: Duration::from_secs(2),
                ..TestAgentOptions::default()
            })
            .await,
        );
    }
    let listing: String = agents
        .iter()
        .enumerate()
        .map(|(i, a)| format!("node-{i} http://{}\n", a.listen))
        .collect();
    std::fs::write(&peers_file, listing).unwrap();
    let config = serde_json::json!({
        "sources": [{"name": "local", "uri": format!("file://{}", source.display())}],
        "cache": {"blockSize": BLOCK, "replicas": replicas}
    });
    for a in &agents {
        a.local()
            .put_dataset("ml", "shared", &config)
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for a in &agents {
        while metric(a, "strata_cluster_members").await as usize != n {
            assert!(Instant::now() < deadline, "agents did not see each other");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Cluster {
        agents,
        files,
        _dir: dir,
    }
}

/// Reads every file through `agent`'s API and checks its bytes.
async fn read_all(agent: &TestAgent, files: &BTreeMap<String, (u64, String)>) {
    let client = agent.local().with_timeout(Duration::from_secs(60));
    for (rel, (_, sha)) in files {
        let bytes = client
            .read("ml", "shared", &format!("/{rel}"))
            .await
            .unwrap_or_else(|e| panic!("reading {rel} on {}: {e}", agent.listen));
        assert_eq!(&hex::encode(Sha256::digest(&bytes)), sha, "{rel}");
    }
}

const SOURCE_BYTES: &str = "strata_block_bytes_total{origin=\"source\"}";
const PEER_BYTES: &str = "strata_block_bytes_total{origin=\"peer\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_agents_fetch_each_block_from_the_source_once() {
    let c = cluster(3, 1).await;
    let total: u64 = c.files.values().map(|(size, _)| size).sum();
    futures::future::join_all(c.agents.iter().map(|a| read_all(a, &c.files))).await;

    let mut from_source = 0.0;
    let mut from_peers = 0.0;
    for a in &c.agents {
        from_source += metric(a, SOURCE_BYTES).await;
        from_peers += metric(a, PEER_BYTES).await;
    }
    // Each block crossed from the source once for the whole cluster; the other two copies
    // came from its owner.
    assert_eq!(from_source as u64, total, "bytes fetched from the source");
    assert_eq!(from_peers as u64, 2 * total, "bytes fetched from peers");
    // Every agent owns a share: nobody fetched everything.
    for a in &c.agents {
        let own = metric(a, SOURCE_BYTES).await as u64;
        assert!(own > 0 && own < total, "one agent fetched {own} of {total}");
    }
    // The peer route is for agents: a reader without the node secret is refused.
    let (status, _, _) = raw_http(
        c.agents[0].listen,
        "GET /v1/peer/datasets/ml/shared/blocks?path=/big/whole.bin&source=local&key=big/whole.bin&etag=x&size=1&mtime=0&blockSize=1048576&first=0&count=1&from=x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 401);
    // An agent that cuts the file into other blocks (its policy changed first) is refused,
    // not answered with bytes from other offsets.
    let big = c.files["big/whole.bin"].0;
    let stat = c.agents[0]
        .local()
        .stat("ml", "shared", "/big/whole.bin")
        .await
        .unwrap();
    let query = strata_agent::http::client::PeerBlocksQuery {
        path: "/big/whole.bin".into(),
        source: "local".into(),
        key: "big/whole.bin".into(),
        etag: stat["etag"].as_str().unwrap().to_string(),
        size: big,
        mtime: 0,
        block_size: BLOCK * 2,
        first: 0,
        count: 1,
        from: "node-9".into(),
        wait: false,
    };
    let err = match c.agents[0]
        .tcp(Some(TOKEN))
        .peer_blocks("ml", "shared", &query)
        .await
    {
        Ok(_) => panic!("blocks of another size were served"),
        Err(e) => e,
    };
    assert_eq!(err.status().map(|s| s.as_u16()), Some(400), "{err}");
    assert!(err.to_string().contains("blockSize"), "{err}");
    for a in c.agents {
        a.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_owner_is_skipped_for_the_source() {
    let mut c = cluster(3, 1).await;
    // node-2 dies but stays listed (as a node whose StrataNode has not aged out yet).
    c.agents.pop().unwrap().stop().await;
    let total: u64 = c.files.values().map(|(size, _)| size).sum();
    let started = Instant::now();
    futures::future::join_all(c.agents.iter().map(|a| read_all(a, &c.files))).await;
    let elapsed = started.elapsed();
    let mut from_source = 0.0;
    for a in &c.agents {
        from_source += metric(a, SOURCE_BYTES).await;
        assert!(
            metric(
                a,
                "strata_peer_requests_total{op=\"fetch\",result=\"error\"}"
            )
            .await
                >= 1.0,
            "the dead owner was never asked"
        );
    }
    // The dead node's share was fetched by both readers; nothing else twice.
    assert!(
        (from_source as u64) >= total && (from_source as u64) < 2 * total,
        "{from_source} bytes from the source for {total}"
    );
    // A refused connection is skipped at once, not after the timeout per block.
    assert!(elapsed < Duration::from_secs(30), "reads took {elapsed:?}");
    for a in c.agents {
        a.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_two_replicas_a_lost_owner_costs_no_source_fetch() {
    let mut c = cluster(3, 2).await;
    let total: u64 = c.files.values().map(|(size, _)| size).sum();
    // node-0 reads everything: every group's first owner fetches it, the second gets a copy.
    read_all(&c.agents[0], &c.files).await;
    // Copies are pushed in the background: wait until node-1 and node-2 stop fetching.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut last, mut steady) = (-1.0, 0);
    while steady < 4 {
        let mut held = 0.0;
        for a in &c.agents[1..] {
            held += metric(a, SOURCE_BYTES).await + metric(a, PEER_BYTES).await;
        }
        steady = if held == last { steady + 1 } else { 0 };
        last = held;
        assert!(
            Instant::now() < deadline,
            "copies still being pushed after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Every block is on node-0 and on one or two of the others, so together they hold
    // more than one copy of the data (exactly one if no copy had been pushed).
    assert!(
        last as u64 > total,
        "{last} bytes on node-1 and node-2 for {total}"
    );
    let cluster_total: f64 = {
        let mut s = 0.0;
        for a in &c.agents {
            s += metric(a, SOURCE_BYTES).await;
        }
        s
    };
    assert_eq!(
        cluster_total as u64, total,
        "each block fetched from the source once"
    );
    let mut before = 0.0;
    for a in &c.agents[1..] {
        before += metric(a, SOURCE_BYTES).await;
    }
    // node-0 goes; node-1 reads everything: from its own copies and node-2's.
    let node0 = c.agents.remove(0);
    node0.stop().await;
    read_all(&c.agents[0], &c.files).await;
    let mut after = 0.0;
    for a in &c.agents {
        after += metric(a, SOURCE_BYTES).await;
    }
    assert_eq!(after, before, "a block was fetched from the source again");
    for a in c.agents {
        a.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_preload_has_each_owner_fetch_its_share() {
    let c = cluster(3, 1).await;
    let total: u64 = c.files.values().map(|(size, _)| size).sum();
    let last = c.agents[0]
        .local()
        .with_timeout(Duration::from_secs(120))
        .preload("ml", "shared", &["/**".to_string()], |_| {})
        .await
        .unwrap();
    assert!(last.done && last.error.is_none(), "{last:?}");
    assert_eq!(last.bytes_done, total);
    // Progress per node: every node fetched a share, and the shares add up.
    assert_eq!(last.by_node.len(), 3, "{:?}", last.by_node);
    assert_eq!(last.by_node.values().sum::<u64>(), total);
    let mut from_source = 0.0;
    for (i, a) in c.agents.iter().enumerate() {
        let own = metric(a, SOURCE_BYTES).await;
        assert_eq!(own as u64, last.by_node[&format!("node-{i}")], "node-{i}");
        from_source += own;
    }
    assert_eq!(from_source as u64, total);
    // The node that ran the preload holds its share only, not a copy of everything.
    assert_eq!(metric(&c.agents[0], PEER_BYTES).await, 0.0);
    // Reads anywhere now come from the owners: nothing more from the source.
    futures::future::join_all(c.agents.iter().map(|a| read_all(a, &c.files))).await;
    let mut after = 0.0;
    for a in &c.agents {
        after += metric(a, SOURCE_BYTES).await;
    }
    assert_eq!(
        after as u64, total,
        "a read after the preload went to the source"
    );
    for a in c.agents {
        a.stop().await;
    }
}
