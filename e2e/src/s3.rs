//! moto's S3 server on loopback, for suites that need a real S3 endpoint.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// How long moto may take to listen (it imports a lot of Python on a loaded machine).
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// A `moto_server` process; killed on drop. moto checks no signatures, so objects are uploaded
/// with plain PUTs while Strata still signs its requests with whatever credentials it is given.
#[derive(Debug)]
pub struct MotoS3 {
    child: Child,
    addr: SocketAddr,
}

impl MotoS3 {
    /// Starts moto on a free loopback port, its output in `log`.
    pub fn start(log: &Path) -> Result<MotoS3> {
        let io = |what: &str, e: std::io::Error| Error::S3(format!("{what}: {e}"));
        let port = TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| io("finding a free port", e))?
            .port();
        let out = std::fs::File::create(log).map_err(|e| io("creating its log", e))?;
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| io("its log", e))?)
            .stderr(out)
            .spawn()
            .map_err(|e| io("starting moto_server", e))?;
        let mut server = MotoS3 {
            child,
            addr: ([127, 0, 0, 1], port).into(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(server.addr).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(Error::S3(format!(
                    "moto_server exited ({status}); log: {}",
                    log.display()
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::S3(format!(
                    "moto_server did not listen on {} in {START_TIMEOUT:?}",
                    server.addr
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates `bucket`.
    pub fn create_bucket(&self, bucket: &str) -> Result<()> {
        self.put(&format!("/{bucket}"), b"")
    }

    /// Uploads `body` as `bucket/key`.
    pub fn put_object(&self, bucket: &str, key: &str, body: &[u8]) -> Result<()> {
        self.put(&format!("/{bucket}/{key}"), body)
    }

    /// The object `bucket/key`, or `None` when there is none: a signed GET (moto answers
    /// an unsigned GET of an existing object with 403; any key pair will do).
    pub async fn get_object(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>> {
        use object_store::ObjectStoreExt;
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("e2e")
            .with_secret_access_key("e2e-secret")
            .build()
            .map_err(|e| Error::S3(format!("GET {bucket}/{key}: {e}")))?;
        let failed = |e: object_store::Error| Error::S3(format!("GET {bucket}/{key}: {e}"));
        match store.get(&object_store::path::Path::from(key)).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(failed)?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(failed(e)),
        }
    }

    fn put(&self, path: &str, body: &[u8]) -> Result<()> {
        let mut response = String::new();
        TcpStream::connect(self.addr)
            .and_then(|mut s| {
                write!(
                    s,
                    "PUT {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    self.addr,
                    body.len()
                )?;
                s.write_all(body)?;
                s.read_to_string(&mut response)
            })
            .map_err(|e| Error::S3(format!("PUT {path}: {e}")))?;
        if !response.starts_with("HTTP/1.1 200") {
            return Err(Error::S3(format!(
                "PUT {path}: {}",
                response.lines().next().unwrap_or("no answer")
            )));
        }
        Ok(())
    }
}

impl Drop for MotoS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), so every file differs and block mix-ups
/// show in checksums.
pub fn generated_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}
