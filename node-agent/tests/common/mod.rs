//! Test harness: a real S3 server (moto) on loopback, generated data, agents on temp dirs.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as StorePath;
use strata_agent::agent::{Agent, AgentConfig};
use strata_agent::config::{CacheSettings, Credentials, DatasetConfig, SourceConfig};

/// A moto S3 server on 127.0.0.1, killed when dropped.
pub struct S3Server {
    child: Child,
    pub port: u16,
}

impl S3Server {
    /// Starts `moto_server` (install: `pip install 'moto[server]'`).
    pub fn start() -> S3Server {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server not found: install it with `pip install 'moto[server]'`");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        S3Server { child, port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (moto does not check signatures, so a plain PUT does).
    pub fn create_bucket(&self, bucket: &str) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "create bucket: {resp}");
    }

    pub fn store(&self, bucket: &str) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing-secret")
            .build()
            .unwrap()
    }

    /// Uploads files (key, content) in parallel.
    pub async fn upload(&self, bucket: &str, files: &[(String, Vec<u8>)]) {
        let store = Arc::new(self.store(bucket));
        futures::stream::iter(files.iter().cloned())
            .map(|(key, data)| {
                let store = store.clone();
                async move {
                    store
                        .put(&StorePath::parse(&key).unwrap(), data.into())
                        .await
                        .unwrap_or_else(|e| panic!("upload {key}: {e}"));
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
    }

    pub fn source(&self, name: &str, uri: &str, mount_path: &str) -> SourceConfig {
        SourceConfig {
            name: name.into(),
            uri: uri.into(),
            mount_path: mount_path.into(),
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            credentials: Some(Credentials {
                access_key_id: Some("testing".into()),
                secret_access_key: Some("testing-secret".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Deterministic pseudo-random bytes for a file.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes files under a local directory.
pub fn write_tree(root: &Path, files: &[(String, Vec<u8>)]) {
    for (k, v) in files {
        let p = root.join(k);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, v).unwrap();
    }
}

pub const MIB: usize = 1 << 20;

/// Cache settings with 1 MiB blocks (small test files span several), defaults otherwise.
pub fn one_mib_blocks() -> strata_agent::config::CacheSettings {
    strata_agent::config::CacheSettings {
        block_size: MIB as u64,
        ..Default::default()
    }
}

pub fn dataset(name: &str, sources: Vec<SourceConfig>, cache: CacheSettings) -> DatasetConfig {
    DatasetConfig {
        namespace: "test".into(),
        name: name.into(),
        uid: None,
        policy: None,
        sources,
        cache,
    }
}

pub fn local_source(name: &str, dir: &Path, mount_path: &str) -> SourceConfig {
    SourceConfig {
        name: name.into(),
        uri: dir.to_string_lossy().into_owned(),
        mount_path: mount_path.into(),
        ..Default::default()
    }
}

pub async fn agent(cache_dir: &Path, memory: u64, disk: u64) -> Arc<Agent> {
    Agent::new(AgentConfig::new(cache_dir, memory, disk))
        .await
        .unwrap()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn p(s: &str) -> strata_agent::path::DatasetPath {
    strata_agent::path::DatasetPath::parse(s).unwrap()
}

/// True when running as root with /dev/fuse (the FUSE tests need both).
pub fn require_fuse() {
    assert!(
        nix::unistd::geteuid().is_root() && Path::new("/dev/fuse").exists(),
        "FUSE tests need root and /dev/fuse (run as root; apt-get install fuse3)"
    );
}

pub fn path_buf(s: &str) -> PathBuf {
    PathBuf::from(s)
}
