//! A TCP proxy on loopback that counts the HTTP requests passing through it: what a server
//! saw, for tests that assert a request was *not* made.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

/// Forwards `127.0.0.1:port()` to an upstream address and counts requests (ends of request
/// headers, so it counts exactly for requests without bodies: GET, HEAD, PROPFIND without
/// body, DELETE).
pub struct CountingProxy {
    port: u16,
    requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    down: Arc<AtomicBool>,
}

impl CountingProxy {
    /// Starts forwarding to `upstream` (e.g. `127.0.0.1:9000`).
    pub fn start(upstream: &str) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let requests = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let down = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_string();
        let (counter, stopped, outage) = (requests.clone(), stop.clone(), down.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                if outage.load(Ordering::Relaxed) {
                    continue; // dropped: the connection is reset
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let counter = counter.clone();
                let (client_read, server_write) = (client.try_clone(), server.try_clone());
                let (Ok(client_read), Ok(server_write)) = (client_read, server_write) else {
                    continue;
                };
                let outage = outage.clone();
                thread::spawn(move || copy_counting(client_read, server_write, &counter, &outage));
                thread::spawn(move || copy(server, client));
            }
        });
        CountingProxy {
            port,
            requests,
            stop,
            down,
        }
    }

    /// An outage (`true`): new connections are dropped, and a kept-alive one is closed at
    /// its next request, as when the server's host goes away; `false` ends it.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// `http://127.0.0.1:PORT`, the address to give clients.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests forwarded so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Client to server, counting each blank line that ends a request's headers (the four bytes
/// may be split across reads).
fn copy_counting(mut from: TcpStream, mut to: TcpStream, counter: &AtomicU64, down: &AtomicBool) {
    let mut buf = [0u8; 64 * 1024];
    let mut tail: Vec<u8> = Vec::with_capacity(3);
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if down.load(Ordering::SeqCst) {
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
            return;
        }
        let mut seen = tail.clone();
        seen.extend_from_slice(&buf[..n]);
        let ends = seen.windows(4).filter(|w| *w == b"\r\n\r\n").count();
        counter.fetch_add(ends as u64, Ordering::SeqCst);
        tail = seen[seen.len().saturating_sub(3)..].to_vec();
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}
