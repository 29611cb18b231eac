//! Source credentials never leave the agent: the real `strata-agent serve` binary runs with
//! STRATA_LOG=trace over datasets whose sources fail in every way a user meets (credentials
//! refused by a real S3 server, missing bucket, closed endpoint, a server that echoes the
//! signed request back in its error), and neither its log output nor any API answer, health
//! or metrics text contains the access key, the secret, the session token or a signature.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{S3Server, content, free_port, tempdir};

const KEY_ID: &str = "AKIASTRATATESTKEY7Q";
// '/' and '+' so URL-encoded copies are searched for too.
const SECRET: &str = "strata/Test+Secret/9xQvL2mPz";
const SESSION: &str = "FQoGstrataSESSIONtoken77aa";
const TOKEN: &str = "agent-token-for-credential-test";

/// Every spelling of a credential that would count as a leak.
fn needles() -> Vec<String> {
    let mut out = Vec::new();
    for s in [KEY_ID, SECRET, SESSION, TOKEN] {
        out.push(s.to_string());
        out.push(
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
                .to_string(),
        );
    }
    out.push(SECRET.replace('/', "%2F"));
    out
}

/// Places where a signature or token would follow: each must be followed by the scrubber's
/// marker, never by a value.
const VALUE_MARKERS: [&str; 5] = [
    "x-amz-signature=",
    "signature=",
    "x-amz-security-token:",
    "x-amz-credential=",
    "credential=",
];

fn assert_clean(what: &str, text: &str) {
    let lower = text.to_ascii_lowercase();
    for marker in VALUE_MARKERS {
        for (i, _) in lower.match_indices(marker) {
            let rest = lower[i + marker.len()..].trim_start();
            assert!(
                rest.starts_with("<redacted>"),
                "{what} has a value after {marker:?}:\n{}",
                excerpt(text, marker)
            );
        }
    }
    for needle in needles() {
        assert!(
            !lower.contains(&needle.to_ascii_lowercase()),
            "{what} contains {needle:?}:\n{}",
            excerpt(text, &needle)
        );
    }
}

fn excerpt(text: &str, needle: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let i = lower.find(&needle.to_ascii_lowercase()).unwrap_or(0);
    let mut start = i.saturating_sub(300);
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = (i + 300).min(text.len());
    while !text.is_char_boundary(end) {
        end += 1;
    }
    text[start..end].to_string()
}

/// moto with request authentication on: unknown access keys get InvalidAccessKeyId (403).
struct AuthMoto {
    child: Child,
    port: u16,
}

impl AuthMoto {
    fn start() -> AuthMoto {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server not found: pip install 'moto[server]'");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        AuthMoto { child, port }
    }
}

impl Drop for AuthMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An "S3" that answers every request 403 with the request itself (request line, signed
/// query, Authorization header) in the error body: the worst an upstream error can echo.
fn start_echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(500) {
            let Ok(mut stream) = stream else { continue };
            stream.set_read_timeout(Some(Duration::from_secs(2))).ok();
            let mut buf = vec![0u8; 16384];
            let n = stream.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).replace(['<', '>', '&'], "_");
            let body = format!(
                "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>denied: {request}</Message></Error>"
            );
            let _ = write!(
                stream,
                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

fn dataset_file(dir: &Path, name: &str, bucket: &str, endpoint: &str) {
    let cfg = serde_json::json!({
        "namespace": "tenant",
        "name": name,
        "sources": [{
            "name": "s3",
            "uri": format!("s3://{bucket}/data/"),
            "endpoint": endpoint,
            "region": "us-east-1",
            "credentials": {
                "accessKeyId": KEY_ID,
                "secretAccessKey": SECRET,
                "sessionToken": SESSION,
            },
            "maxRetries": 0,
        }],
        "cache": {"blockSize": 65536},
    });
    std::fs::write(dir.join(format!("{name}.json")), cfg.to_string()).unwrap();
}

fn http(addr: SocketAddr, method: &str, target: &str, token: bool) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let auth = if token {
        format!("Authorization: Bearer {TOKEN}\r\n")
    } else {
        String::new()
    };
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: agent\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_appear_in_no_log_line_answer_or_metric() {
    let s3 = S3Server::start();
    s3.create_bucket("good");
    s3.upload(
        "good",
        &[
            ("data/a.bin".to_string(), content(1, 200_000)),
            ("data/b.bin".to_string(), content(2, 10)),
        ],
    )
    .await;
    let auth_moto = AuthMoto::start();
    let echo = start_echo_server();

    let dir = tempdir();
    let datasets = dir.path().join("datasets");
    std::fs::create_dir_all(&datasets).unwrap();
    dataset_file(&datasets, "good", "good", &s3.endpoint());
    dataset_file(
        &datasets,
        "missing-bucket",
        "no-such-bucket",
        &s3.endpoint(),
    );
    dataset_file(
        &datasets,
        "wrong-credentials",
        "any",
        &format!("http://127.0.0.1:{}", auth_moto.port),
    );
    dataset_file(
        &datasets,
        "bad-endpoint",
        "good",
        &format!("http://127.0.0.1:{}", free_port()),
    );
    dataset_file(&datasets, "echoing", "good", &format!("http://{echo}"));
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let (listen, metrics) = (free_port(), free_port());
    let log_path = dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_strata-agent"))
        .arg("serve")
        .args(["--socket", dir.path().join("agent.sock").to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{listen}")])
        .args([
            "--peer-token-file",
            dir.path().join("token").to_str().unwrap(),
        ])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .args(["--mount-root", dir.path().join("mounts").to_str().unwrap()])
        .args(["--datasets-dir", datasets.to_str().unwrap()])
        .args(["--datasets-rescan", "1s"])
        .args(["--cache-dir", dir.path().join("cache").to_str().unwrap()])
        .args(["--memory", "16Mi", "--disk", "64Mi"])
        .env("STRATA_LOG", "trace")
        // Not from the environment: the only credentials are the datasets' own.
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let metrics_addr: SocketAddr = format!("127.0.0.1:{metrics}").parse().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{listen}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if TcpStream::connect(metrics_addr).is_ok()
            && http(metrics_addr, "GET", "/readyz", false).0 == 200
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agent not ready: {}",
            std::fs::read_to_string(&log_path).unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut answers = Vec::new();
    // The good dataset works with these credentials.
    let (status, body) = http(
        api,
        "GET",
        "/v1/datasets/tenant/good/read?path=/a.bin",
        true,
    );
    assert_eq!(status, 200, "{}", &body[..body.len().min(500)]);
    // Every dataset, every failing call, every open page.
    for name in [
        "good",
        "missing-bucket",
        "wrong-credentials",
        "bad-endpoint",
        "echoing",
    ] {
        for target in [
            format!("/v1/datasets/tenant/{name}"),
            format!("/v1/datasets/tenant/{name}/list?path=/"),
            format!("/v1/datasets/tenant/{name}/stat?path=/a.bin"),
            format!("/v1/datasets/tenant/{name}/read?path=/a.bin"),
            format!("/v1/datasets/tenant/{name}/usage"),
        ] {
            let (status, body) = http(api, "GET", &target, true);
            answers.push((target, status, body));
        }
        let (status, body) = http(
            api,
            "POST",
            &format!("/v1/datasets/tenant/{name}/preload"),
            true,
        );
        answers.push((format!("preload {name}"), status, body));
    }
    for target in ["/v1/datasets", "/v1/volumes"] {
        let (status, body) = http(api, "GET", target, true);
        answers.push((target.to_string(), status, body));
    }
    for target in ["/metrics", "/healthz", "/readyz"] {
        let (status, body) = http(metrics_addr, "GET", target, false);
        assert_eq!(status, 200, "{target}");
        answers.push((target.to_string(), status, body));
    }
    // Wait for one more rescan so every failing config was retried and logged again.
    std::thread::sleep(Duration::from_millis(1500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stopped = Instant::now();
    while agent.try_wait().unwrap().is_none() {
        if stopped.elapsed() > Duration::from_secs(30) {
            let _ = agent.kill();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs = std::fs::read_to_string(&log_path).unwrap();

    // The failures really happened and were logged at some level with their cause.
    let lines = logs.lines().count();
    assert!(lines > 50, "only {lines} log lines at trace:\n{logs}");
    assert!(
        logs.contains("TRACE"),
        "STRATA_LOG=trace gave no trace lines"
    );
    let failed: Vec<&(String, u16, String)> =
        answers.iter().filter(|(_, s, _)| *s >= 400).collect();
    assert!(failed.len() >= 8, "too few failing calls: {answers:#?}");
    for name in [
        "missing-bucket",
        "wrong-credentials",
        "bad-endpoint",
        "echoing",
    ] {
        assert!(logs.contains(name), "no log line about {name}");
    }
    // Each failure is the real one: refused key, missing bucket, closed port.
    for cause in ["InvalidAccessKeyId", "NoSuchBucket", "onnect"] {
        assert!(logs.contains(cause), "no {cause} in the log");
    }
    // The echo server really sent the signature back: the agent saw it and scrubbed it.
    assert!(
        logs.contains("echoing") && logs.contains("AccessDenied") || logs.contains("denied"),
        "the echoing source's error was not logged"
    );

    assert_clean("agent log (STRATA_LOG=trace)", &logs);
    for (what, status, body) in &answers {
        assert_clean(&format!("answer to {what} ({status})"), body);
    }
    // The metrics name datasets, never their sources' secrets.
    let metrics_text = &answers.iter().find(|(w, _, _)| w == "/metrics").unwrap().2;
    assert!(metrics_text.contains("tenant/good"), "{metrics_text}");
}
