//! Loopback ports.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on right now (the OS picks it; a race with another process taking
/// it first is possible but rare on loopback).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Waits until something accepts connections on `127.0.0.1:port`; panics naming `what` after
/// `limit`.
pub fn wait_for_port(what: &str, port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on 127.0.0.1:{port} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a server quietly (no stdin, output discarded) and waits until it listens on
/// `127.0.0.1:port`; panics naming `what` and how to install it when it cannot start.
pub fn start_server(command: &mut Command, what: &str, install: &str, port: u16) -> Child {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}; {install}"));
    wait_for_port(what, port, Duration::from_secs(60));
    child
}
