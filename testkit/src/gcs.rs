//! fake-gcs-server, a GCS API emulator (a Go program; `scripts/setup.sh` builds it into
//! `~/.cache/strata/bin`), serving buckets from memory over plain HTTP on loopback.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command};

use strata_wire::config::{Credentials, SourceConfig};

use crate::net::{free_port, start_server};

/// The emulator does not check tokens; any bearer token is accepted.
const TOKEN: &str = "fake-gcs-token";

/// Where the program is: `STRATA_FAKE_GCS_SERVER`, or the setup script's place.
fn program() -> PathBuf {
    crate::cached_tool("STRATA_FAKE_GCS_SERVER", "bin/fake-gcs-server")
}

/// A running emulator, killed when dropped.
pub struct FakeGcs {
    child: Child,
    port: u16,
}

impl FakeGcs {
    /// Starts the emulator on a free loopback port and waits until it listens.
    pub fn start() -> FakeGcs {
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let child = start_server(
            Command::new(program())
                .args([
                    "-scheme",
                    "http",
                    "-host",
                    "127.0.0.1",
                    "-port",
                    &port.to_string(),
                ])
                .args(["-backend", "memory", "-public-host", &address])
                .args([
                    "-external-url",
                    &format!("http://{address}"),
                    "-log-level",
                    "error",
                ]),
            "fake-gcs-server",
            "run scripts/setup.sh or set STRATA_FAKE_GCS_SERVER",
            port,
        );
        FakeGcs { child, port }
    }

    /// The base URL a source's `endpoint` takes.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (the JSON API's insert).
    pub fn create_bucket(&self, name: &str) {
        let body = format!("{{\"name\":\"{name}\"}}");
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        write!(
            stream,
            "POST /storage/v1/b?project=test HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "create bucket {name}: {answer}"
        );
    }

    /// A bearer token the emulator takes.
    pub fn credentials(&self) -> Credentials {
        Credentials {
            token: Some(TOKEN.into()),
            ..Credentials::default()
        }
    }

    /// A `gs://` source over this emulator.
    pub fn source(&self, name: &str, uri: &str) -> SourceConfig {
        SourceConfig {
            name: name.into(),
            uri: uri.into(),
            endpoint: Some(self.endpoint()),
            credentials: Some(self.credentials()),
            ..SourceConfig::default()
        }
    }

    /// Uploads files (key, content) into `bucket` with the JSON API's media upload (the
    /// emulator does not take the XML API's PUT that object_store writes with).
    pub fn upload(&self, bucket: &str, files: &[(String, Vec<u8>)]) {
        for (key, data) in files {
            let name: String = key
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
            write!(
                stream,
                "POST /upload/storage/v1/b/{bucket}/o?uploadType=media&name={name} HTTP/1.1\r\n\
                 Host: 127.0.0.1:{}\r\nContent-Type: application/octet-stream\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                self.port,
                data.len()
            )
            .expect("send");
            stream.write_all(data).expect("send the body");
            let mut answer = String::new();
            stream.read_to_string(&mut answer).expect("read");
            assert!(answer.starts_with("HTTP/1.1 200"), "upload {key}: {answer}");
        }
    }
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
