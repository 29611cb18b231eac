//! A WebDAV server (wsgidav, `pip install wsgidav cheroot`; `scripts/setup.sh` installs it)
//! serving a local directory over plain HTTP on loopback: what an `http(s)://` source reads
//! (GET with ranges, HEAD, and PROPFIND listings).

use std::path::Path;
use std::process::{Child, Command};

use strata_wire::config::SourceConfig;

use crate::net::{free_port, start_server};

/// A running server, killed when dropped.
pub struct WebDav {
    child: Child,
    port: u16,
}

impl WebDav {
    /// Serves `root` read-only and anonymously.
    pub fn start(root: &Path) -> WebDav {
        let port = free_port();
        let child = start_server(
            Command::new("wsgidav")
                .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--root"])
                .arg(root)
                .args(["--auth", "anonymous", "--no-config", "-q"]),
            "wsgidav",
            "run scripts/setup.sh (pip install wsgidav cheroot)",
            port,
        );
        WebDav { child, port }
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// An `http://` source over `path` (relative, ending in `/`) of the served tree.
    pub fn source(&self, name: &str, path: &str) -> SourceConfig {
        SourceConfig {
            name: name.into(),
            uri: format!("{}{path}", self.url()),
            ..SourceConfig::default()
        }
    }
}

impl Drop for WebDav {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
