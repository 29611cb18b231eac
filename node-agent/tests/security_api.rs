//! The agent's TCP API against callers that should not get in, and against request input
//! that tries to leave a dataset: every `/v1` endpoint refuses a missing token (401) and a
//! wrong one (403) without acting, the peer token reads and does nothing else, and no request path, query
//! `path=`, URL segment or glob reads a file outside the dataset's source.

use strata_testkit::agent as support;

use std::net::SocketAddr;

use proptest::prelude::*;
use support::{TOKEN, TestAgent, raw_http};

/// A file next to the source directory: no request may ever return it.
const CANARY: &str = "CANARY-outside-the-dataset-7f3a";

/// Every `/v1` route the agent serves (method, target, body), plus an unknown one.
const PEER_BLOCKS: &str = "/v1/peer/datasets/ml/imagenet/blocks?path=/train/b.bin&source=local&key=train/b.bin&etag=x&size=65536&mtime=0&blockSize=65536&first=0&count=1&from=node-x";
const PEER_FILL: &str = "/v1/peer/datasets/ml/imagenet/fill?path=/train/b.bin&source=local&key=train/b.bin&etag=x&size=65536&mtime=0&blockSize=65536&first=0&count=1&from=node-x";

fn every_endpoint() -> Vec<(&'static str, &'static str, &'static str)> {
    let paths = r#"{"paths":["/train/**"]}"#;
    vec![
        ("GET", "/v1/datasets", ""),
        ("GET", "/v1/datasets/ml/imagenet", ""),
        ("PUT", "/v1/datasets/ml/intruder", "{}"),
        ("DELETE", "/v1/datasets/ml/imagenet", ""),
        ("GET", "/v1/datasets/ml/imagenet/stat?path=/train", ""),
        ("GET", "/v1/datasets/ml/imagenet/list?path=/", ""),
        ("GET", "/v1/datasets/ml/imagenet/read?path=/train/b.bin", ""),
        ("POST", "/v1/datasets/ml/imagenet/preload", paths),
        ("POST", "/v1/datasets/ml/imagenet/pin", paths),
        ("POST", "/v1/datasets/ml/imagenet/unpin", paths),
        ("GET", "/v1/datasets/ml/imagenet/usage", ""),
        ("PUT", "/v1/datasets/ml/imagenet/volumes/vol-1", ""),
        ("DELETE", "/v1/datasets/ml/imagenet/volumes/vol-1", ""),
        ("DELETE", "/v1/volumes/vol-1", ""),
        ("GET", "/v1/volumes", ""),
        // The cluster cache's block routes: the peer token only.
        ("GET", PEER_BLOCKS, ""),
        ("POST", PEER_FILL, ""),
        ("GET", "/v1/no-such-route", ""),
    ]
}

fn request(method: &str, target: &str, auth: Option<&str>, body: &str) -> String {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "{method} {target} HTTP/1.1\r\nHost: agent\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn call(addr: SocketAddr, method: &str, target: &str, auth: Option<&str>) -> (u16, String) {
    let body = every_endpoint()
        .into_iter()
        .find(|(m, t, _)| *m == method && *t == target)
        .map(|(_, _, b)| b)
        .unwrap_or("");
    let (status, _, body) = raw_http(addr, &request(method, target, auth, body)).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_endpoint_refuses_missing_and_wrong_tokens() {
    let agent = TestAgent::start().await;
    agent.add_dataset("ml", "imagenet").await;
    let bearer = format!("Bearer {TOKEN}");
    let wrong_tokens = [
        "Bearer wrong".to_string(),
        format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
        format!("Bearer {TOKEN}x"),
        format!("Bearer {}", TOKEN.to_uppercase()),
    ];
    let not_bearer = [
        "Bearer ".to_string(),
        format!("Basic {TOKEN}"),
        TOKEN.to_string(),
        format!("Token {TOKEN}"),
    ];
    for (method, target, _) in every_endpoint() {
        let (status, body) = call(agent.listen, method, target, None).await;
        assert_eq!(status, 401, "{method} {target} without a token: {body}");
        for auth in &not_bearer {
            let (status, body) = call(agent.listen, method, target, Some(auth)).await;
            assert_eq!(status, 401, "{method} {target} with {auth:?}: {body}");
        }
        for auth in &wrong_tokens {
            let (status, body) = call(agent.listen, method, target, Some(auth)).await;
            assert_eq!(status, 403, "{method} {target} with {auth:?}: {body}");
            assert!(!body.contains(TOKEN), "the answer echoes a token: {body}");
        }
    }
    // Nothing refused had an effect: the dataset is still there, unpinned, no volume, no
    // intruder dataset.
    let local = agent.local();
    let summary = local.dataset("ml", "imagenet").await.unwrap();
    assert_eq!(summary["pins"], serde_json::json!([]), "{summary}");
    assert_eq!(summary["volumes"], serde_json::json!([]), "{summary}");
    assert!(local.dataset("ml", "intruder").await.is_err());

    // The peer token (the node secret agents share) reads: list, get, stat, list a
    // directory, read, usage, and the block routes of the cluster cache. Everything else
    // is 403 and does nothing: registering or removing datasets, volumes, preload, pin,
    // unpin.
    let peer_may = |method: &str, target: &str| {
        (method == "GET" && !target.starts_with("/v1/volumes")) || target.starts_with("/v1/peer/")
    };
    for (method, target, _) in every_endpoint() {
        let (status, body) = call(agent.listen, method, target, Some(&bearer)).await;
        if target == "/v1/no-such-route" {
            assert_eq!(status, 404, "{body}");
        } else if peer_may(method, target) {
            assert!(
                status < 300,
                "{method} {target} with the peer token: {status} {body}"
            );
        } else {
            assert_eq!(status, 403, "{method} {target} with the peer token: {body}");
        }
    }
    let summary = local.dataset("ml", "imagenet").await.unwrap();
    assert_eq!(summary["pins"], serde_json::json!([]), "{summary}");
    assert_eq!(summary["volumes"], serde_json::json!([]), "{summary}");
    assert!(local.dataset("ml", "intruder").await.is_err());

    // The metrics port never serves /v1, with or without the token.
    for auth in [None, Some(bearer.as_str())] {
        let (status, _) = call(agent.metrics, "GET", "/v1/datasets", auth).await;
        assert_eq!(status, 404);
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_unix_socket_is_the_only_tokenless_way_in() {
    let agent = TestAgent::start().await;
    // The socket is a file (0660, root and the group only), not a TCP port: the agent
    // listens on exactly the two configured TCP ports and nothing else.
    let meta = std::fs::symlink_metadata(&agent.socket).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
    let ports = listening_tcp_ports();
    assert!(ports.contains(&agent.listen.port()));
    assert!(ports.contains(&agent.metrics.port()));
    // A TCP request that claims to come "from the socket" (forwarding headers, a unix
    // Host) is still a TCP request.
    for extra in [
        "X-Forwarded-For: 127.0.0.1\r\n",
        "Host: unix\r\n",
        "X-Real-IP: 127.0.0.1\r\n",
    ] {
        let (status, _, _) = raw_http(
            agent.listen,
            &format!("GET /v1/volumes HTTP/1.1\r\nHost: agent\r\n{extra}Connection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 401, "{extra}");
    }
    agent.stop().await;
}

/// Ports in LISTEN state in this network namespace.
fn listening_tcp_ports() -> Vec<u16> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.get(3) == Some(&"0A")
                && let Some(port) = cols[1].rsplit(':').next()
            {
                out.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    out
}

/// Pieces that, put together, try every known way out of a directory.
fn hostile_piece() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "..",
        ".",
        "",
        "%2e%2e",
        "%2E%2e",
        "%2e.",
        ".%2e",
        "%252e%252e",
        "%2f",
        "%2F",
        "%5c",
        "\\",
        "..\\..",
        "%00",
        "\u{0}",
        "%c0%ae%c0%ae",
        "%c0%af",
        "\u{2024}\u{2024}",
        "\u{ff0e}\u{ff0e}",
        "\u{2215}",
        "\u{2044}",
        "..;",
        ";..",
        "%3b",
        "canary.txt",
        "source",
        "train",
        "a.bin",
        "%",
        "%%",
        "?",
        "#",
        "&path=..",
        "%26path%3d..",
    ])
    .prop_map(str::to_string)
}

fn hostile_path() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        prop::collection::vec(hostile_piece(), 0..8),
        prop::sample::select(vec!["/", "//", "/./", "\\"]),
    )
        .prop_map(|(lead, pieces, sep)| {
            let joined = pieces.join(sep);
            if lead { format!("/{joined}") } else { joined }
        })
}

/// Percent-encodes what a request target may not carry raw.
fn encode_query_value(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Keeps `%` sequences as they are (to test the server's decoding) and encodes the rest.
fn encode_raw_keeping_percents(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'#')
        .add(b'<')
        .add(b'>')
        .add(b'`')
        .add(b'{')
        .add(b'}')
        .add(b'\\')
        .add(b'^')
        .add(b'|');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_request_input_reads_outside_the_dataset() {
    let agent = TestAgent::start().await;
    agent.add_dataset("ml", "imagenet").await;
    let outside = agent.source.parent().unwrap();
    std::fs::write(outside.join("canary.txt"), CANARY).unwrap();
    std::fs::write(outside.join("token-copy"), CANARY).unwrap();
    let bearer = format!("Bearer {TOKEN}");
    let addr = agent.listen;
    let handle = tokio::runtime::Handle::current();

    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(
        &(
            hostile_path(),
            any::<bool>(),
            prop::sample::select(vec!["read", "stat", "list"]),
        ),
        |(path, raw, op)| {
            let query = if raw {
                encode_raw_keeping_percents(&path)
            } else {
                encode_query_value(&path)
            };
            let target = format!("/v1/datasets/ml/imagenet/{op}?path={query}");
            let (status, body) = tokio::task::block_in_place(|| {
                handle.block_on(async {
                    let (s, _, b) =
                        raw_http(addr, &request("GET", &target, Some(&bearer), "")).await;
                    (s, String::from_utf8_lossy(&b).into_owned())
                })
            });
            prop_assert!(status < 500, "{target}: {status} {body}");
            prop_assert!(!body.contains(CANARY), "{target} read the canary: {body}");
            if status == 200 && op == "list" {
                // Only the source's own entries, never its parent's.
                for outside in ["canary.txt", "token-copy", "\"source\"", "\"datasets\""] {
                    prop_assert!(!body.contains(outside), "{target} listed outside: {body}");
                }
            }
            Ok(())
        },
    );
    result.unwrap();

    // A path through a regular file (found by the run above once) is not found, not a
    // source failure.
    for op in ["read", "stat", "list"] {
        let target = format!("/v1/datasets/ml/imagenet/{op}?path=train%2Fa.bin%2Fchild");
        let (status, body) = call(addr, "GET", &target, Some(&bearer)).await;
        assert_eq!(status, 404, "{target}: {body}");
    }

    // URL path segments: namespace and name never resolve to anything but a dataset.
    let result = runner.run(&(hostile_path(), hostile_path()), |(ns, name)| {
        let target = format!(
            "/v1/datasets/{}/{}/list?path=/",
            encode_raw_keeping_percents(&ns)
                .replace('/', "%2F")
                .replace('?', "%3F"),
            encode_raw_keeping_percents(&name)
                .replace('/', "%2F")
                .replace('?', "%3F"),
        );
        let (status, body) = tokio::task::block_in_place(|| {
            handle.block_on(async {
                let (s, _, b) = raw_http(addr, &request("GET", &target, Some(&bearer), "")).await;
                (s, String::from_utf8_lossy(&b).into_owned())
            })
        });
        prop_assert!(status < 500, "{target}: {status} {body}");
        prop_assert!(
            status == 400 || status == 404,
            "{target} answered {status}: {body}"
        );
        prop_assert!(!body.contains(CANARY));
        Ok(())
    });
    result.unwrap();

    // Pin globs: refused, or stored as a normalized absolute glob without "..".
    let result = runner.run(&hostile_path(), |glob| {
        let body = serde_json::json!({ "paths": [glob] }).to_string();
        let (status, answer) = tokio::task::block_in_place(|| {
            handle.block_on(async {
                let (s, _, b) = raw_http(
                    addr,
                    &request("POST", "/v1/datasets/ml/imagenet/pin", Some(&bearer), &body),
                )
                .await;
                (s, String::from_utf8_lossy(&b).into_owned())
            })
        });
        prop_assert!(
            status == 200 || status == 400,
            "{glob:?}: {status} {answer}"
        );
        Ok(())
    });
    result.unwrap();
    let summary = agent.local().dataset("ml", "imagenet").await.unwrap();
    for pin in summary["pins"].as_array().unwrap() {
        let pin = pin.as_str().unwrap();
        assert!(pin.starts_with('/'), "{pin}");
        assert!(!pin.split('/').any(|c| c == ".." || c == "."), "{pin}");
        assert!(!pin.contains('\\') && !pin.contains('\0'), "{pin}");
    }
    // A preload of every pinned glob caches nothing but the dataset's own bytes.
    let total = walk_size(&agent.source);
    let usage = agent.local().usage("ml", "imagenet").await.unwrap();
    let cached = usage["cachedBytes"].as_u64().unwrap();
    assert!(cached <= total, "{usage} > {total}");
    agent.stop().await;
}

fn walk_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            walk_size(&e.path())
        } else {
            m.len()
        };
    }
    total
}
