//! The agent's HTTP routing, authentication and request parsing (the same warp filter `serve`
//! runs on TCP), driven with arbitrary methods, URL segments, query strings, bodies and
//! `Authorization` headers (none, made up, the peer token, a job credential of the dataset's
//! namespace or of another). Invariants: each caller succeeds only where its role allows (no
//! credential: /healthz and /readyz; a job of namespace `ml`: preload, pin, unpin and usage of
//! `ml/data`; another namespace's job: nothing; the peer token: reads, never a change), nothing
//! registers or removes a dataset or takes a volume over TCP, no request makes the server fail
//! (5xx), and no answer contains the bytes of a file outside the dataset's source directory or
//! a token.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use strata_agent::agent::{Agent, AgentConfig};
use strata_agent::http::auth::{TcpAuth, TokenReviewer};
use strata_agent::http::{Access, ApiState, api_routes};
use strata_agent::config::{CacheSettings, DatasetConfig, SourceConfig};
use strata_agent::fuse::MountOptions;
use strata_agent::mounts::MountRegistry;
use warp::filters::BoxedFilter;
use warp::reply::Response;

/// The peer token.
const TOKEN: &str = "fuzz-token-8d1e";
/// Job credentials the in-process reviewer knows: namespace `ml` (the dataset's) and `other`.
const JOB_ML: &str = "job-credential-of-ml-51c0";
const JOB_OTHER: &str = "job-credential-of-other-93aa";
const CANARY: &str = "CANARY-outside-the-dataset";

/// Stands in for the API server's TokenReview (tested for real in e2e/tests).
struct Reviewer;

#[async_trait::async_trait]
impl TokenReviewer for Reviewer {
    async fn review(&self, token: &str) -> strata_agent::Result<Option<String>> {
        Ok(match token {
            JOB_ML => Some("ml".into()),
            JOB_OTHER => Some("other".into()),
            _ => None,
        })
    }
}

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
                    policy: Some("warm".into()),
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
                    migrations: Vec::new(),
                })
                .await
                .unwrap();
            let mounts = Arc::new(
                MountRegistry::new(&dir.path().join("mounts"), MountOptions::default()).unwrap(),
            );
            let state = ApiState::new(agent, mounts);
            state.set_ready();
            let peer_file = dir.path().join("peer-token");
            std::fs::write(&peer_file, TOKEN).unwrap();
            let auth = TcpAuth::new(Some(peer_file), Some(Arc::new(Reviewer))).unwrap();
            let routes = api_routes(state, Access::Tcp(Arc::new(auth)));
            // The fixture itself is sound: the peer token reads inside files, the symlink to
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
    made_up_token: String,
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
    let mut request = warp::test::request()
        .method(method)
        .path(&target)
        .body(&input.body);
    let caller = match input.auth % 5 {
        0 => Caller::Nobody,
        1 => {
            let value = format!("Bearer {}", input.made_up_token);
            if [TOKEN, JOB_ML, JOB_OTHER].contains(&input.made_up_token.trim())
                || warp::http::HeaderValue::from_str(&value).is_err()
            {
                return;
            }
            request = request.header("authorization", value);
            Caller::Nobody
        }
        2 => {
            request = request.header("authorization", format!("Bearer {TOKEN}"));
            Caller::Peer
        }
        3 => {
            request = request.header("authorization", format!("Bearer {JOB_ML}"));
            Caller::JobOfMl
        }
        _ => {
            request = request.header("authorization", format!("Bearer {JOB_OTHER}"));
            Caller::Nobody
        }
    };
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
    // A token the request carried only in its Authorization header is never echoed (one the
    // fuzzer also wrote into the URL or body may come back in an error naming that input).
    let sent = format!("{target} {}", String::from_utf8_lossy(&input.body));
    for token in [TOKEN, JOB_ML, JOB_OTHER] {
        assert!(
            sent.contains(token) || !body.contains(token),
            "{method} {target} echoed a token"
        );
    }
    if status.is_success() {
        // The route is what the server routes on: the target up to its first '?' (a tail
        // the fuzzer wrote may carry a '?', and what follows it is query, not path).
        let path = target.split('?').next().unwrap_or_default();
        let open = matches!(path, "/healthz" | "/readyz");
        let allowed = open
            || match caller {
                Caller::Nobody => false,
                // Reads only; and no route that names a volume.
                Caller::Peer => method == "GET" && !path.contains("/volumes"),
                // Its own namespace's dataset, and only what a job does.
                Caller::JobOfMl => {
                    let route = path.strip_prefix("/v1/datasets/ml/data/").unwrap_or("");
                    (method == "POST" && ["preload", "pin", "unpin"].contains(&route))
                        || (method == "GET" && route == "usage")
                }
            };
        assert!(
            allowed,
            "{method} {target} as {caller:?} succeeded: {status} {body}"
        );
    }
});

/// Who the request claims to be, as far as the invariants care.
#[derive(Debug, Clone, Copy)]
enum Caller {
    /// No credential, a made-up one, or a job of a namespace with no dataset here.
    Nobody,
    /// The peer token.
    Peer,
    /// A job credential of the dataset's namespace.
    JobOfMl,
}
