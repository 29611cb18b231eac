//! A real S3 server for tests: moto in server mode on loopback (`pip install 'moto[server]'`;
//! `scripts/setup.sh` installs it). It does not check signatures, so any key works.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::sync::Arc;

use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as StorePath;
use strata_wire::config::{Credentials, SourceConfig};

use crate::net::{free_port, start_server};

/// A moto S3 server on 127.0.0.1, killed when dropped.
pub struct S3Server {
    child: Child,
    pub port: u16,
}

impl S3Server {
    /// Starts `moto_server` (install: `pip install 'moto[server]'`).
    pub fn start() -> S3Server {
        let port = free_port();
        let child = start_server(
            Command::new("moto_server").args(["-H", "127.0.0.1", "-p", &port.to_string()]),
            "moto_server",
            "install it with `pip install 'moto[server]'` (scripts/setup.sh)",
            port,
        );
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
