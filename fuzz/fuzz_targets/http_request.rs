//! The agent's HTTP routing and request parsing (the same warp filter `serve` runs on TCP),
//! driven with arbitrary methods, URL segments, query strings, headers and bodies. Invariants:
//! without the exact bearer token nothing but /healthz and /readyz succeeds, no request
//! makes the server fail (5xx), and no answer contains the bytes of a file outside the
//! dataset's source directory.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use strata_agent::agent::{Agent, AgentConfig};
use strata_agent::api::server::{Access, ApiState, api_routes};
use strata_agent::config::{CacheSettings, DatasetConfig, SourceConfig};
use strata_agent::fs::MountOptions;
use strata_agent::mounts::MountRegistry;
use warp::filters::BoxedFilter;
use warp::reply::Response;

const TOKEN: &str = "fuzz-token-8d1e";
const CANARY: &str = "CANARY-outside-the-dataset";

struct Fixture {
    runtime: tokio::runtime::Runtime,
    routes: BoxedFilter<(Response,)>,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        std::fs::create_dir_all(source.join("train/nested")).unwrap();
        std::fs::write(source.join("train/a.txt"), b"inside a").unwrap();
        std::fs::write(source.join("train/nested/b.txt"), b"inside b").unwrap();
        std::fs::write(dir.path().join("canary.txt"), CANARY).unwrap();
        std::os::unix::fs::symlink(dir.path().join("canary.txt"), source.join("link")).unwrap();
        let routes = runtime.block_on(async {
            let agent = Agent::new(AgentConfig::new(
                dir.path().join("cache"),
                8 << 20,
                16 << 20,
            ))
            .await
            .unwrap();
            agent
                .add_dataset(DatasetConfig {
                    namespace: "ml".into(),
                    name: "data".into(),
                    uid: None,
                    sources: vec![SourceConfig {
                        name: "local".into(),
                        uri: format!("file://{}", source.display()),
                        mount_path: "/".into(),
                        ..Default::default()
                    }],
                    cache: CacheSettings {
                        block_size: 65536,
                        ..Default::default()
                    },
                })
                .await
                .unwrap();
            let mounts = Arc::new(
                MountRegistry::new(&dir.path().join("mounts"), MountOptions::default()).unwrap(),
            );
            let state = ApiState::new(agent, mounts);
            state.set_ready();
            let routes = api_routes(state, Access::token(TOKEN));
            // The fixture itself is sound: the token reads inside files, the symlink to
            // the canary is absent, no token is refused.
            let get = |target: &str, token: bool| {
                let mut r = warp::test::request().path(target);
                if token {
                    r = r.header("authorization", format!("Bearer {TOKEN}"));
                }
                r.reply(&routes)
            };
            let ok = get("/v1/datasets/ml/data/read?path=/train/a.txt", true).await;
            assert_eq!(
                (ok.status().as_u16(), &ok.body()[..]),
                (200, &b"inside a"[..])
            );
            let link = get("/v1/datasets/ml/data/read?path=/link", true).await;
            assert_eq!(link.status().as_u16(), 404);
            let refused = get("/v1/datasets/ml/data/read?path=/train/a.txt", false).await;
            assert_eq!(refused.status().as_u16(), 401);
            routes
        });
        Fixture {
            runtime,
            routes,
            _dir: dir,
        }
    })
}

#[derive(Arbitrary, Debug)]
struct Input {
    method: u8,
    route: u8,
    ns: String,
    name: String,
    tail: String,
    query: String,
    auth: u8,
    wrong_token: String,
    range: Option<String>,
    body: Vec<u8>,
}

const METHODS: [&str; 6] = ["GET", "PUT", "POST", "DELETE", "HEAD", "PATCH"];

/// Keeps '%' escapes as the fuzzer wrote them; encodes what a URI may not carry.
fn uri_part(s: &str) -> String {
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
        .add(b'|')
        .add(b'[')
        .add(b']');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

fuzz_target!(|input: Input| {
    let fx = fixture();
    let method = METHODS[input.method as usize % METHODS.len()];
    let (ns, name) = (uri_part(&input.ns), uri_part(&input.name));
    let tail = uri_part(&input.tail);
    let path = match input.route % 10 {
        0 => format!("/v1/datasets/ml/data/{tail}"),
        1 => format!("/v1/datasets/{ns}/{name}/{tail}"),
        2 => format!("/v1/datasets/{ns}/{name}"),
        3 => format!("/v1/datasets/ml/data/volumes/{tail}"),
        4 => format!("/v1/volumes/{tail}"),
        5 => format!("/{tail}"),
        6 => "/v1/datasets/ml/data/read".to_string(),
        7 => "/v1/datasets/ml/data/list".to_string(),
        8 => "/v1/datasets/ml/data/stat".to_string(),
        _ => format!("/v1/{tail}"),
    };
    let target = format!("{path}?{}", uri_part(&input.query));
    if target.parse::<warp::http::Uri>().is_err() {
        return;
    }
    let authorized = input.auth % 3 == 2;
    // Trusted callers may change the agent (add datasets over any directory, mount FUSE,
    // remove datasets): the fuzzer may only do that without the token.
    let mutating = matches!(method, "PUT" | "DELETE");
    if authorized && mutating {
        return;
    }
    let mut request = warp::test::request()
        .method(method)
        .path(&target)
        .body(&input.body);
    match input.auth % 3 {
        0 => {}
        1 => {
            let value = format!("Bearer {}", input.wrong_token);
            if input.wrong_token.trim() == TOKEN
                || warp::http::HeaderValue::from_str(&value).is_err()
            {
                return;
            }
            request = request.header("authorization", value);
        }
        _ => request = request.header("authorization", format!("Bearer {TOKEN}")),
    }
    if let Some(range) = &input.range {
        if warp::http::HeaderValue::from_str(range).is_err() {
            return;
        }
        request = request.header("range", range.as_str());
    }
    let response = fx.runtime.block_on(request.reply(&fx.routes));
    let status = response.status();
    let body = String::from_utf8_lossy(response.body());
    assert!(
        !status.is_server_error(),
        "{method} {target}: {status} {body}"
    );
    assert!(
        !body.contains(CANARY),
        "{method} {target} read outside: {body}"
    );
    assert!(!body.contains(TOKEN), "{method} {target} echoed the token");
    if !authorized && status.is_success() {
        let open = matches!(path.as_str(), "/healthz" | "/readyz");
        assert!(
            open,
            "{method} {target} succeeded without the token: {status} {body}"
        );
    }
});
