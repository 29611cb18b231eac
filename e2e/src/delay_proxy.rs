//! A WAN in front of a server: a TCP proxy that holds every chunk for a fixed one-way delay in
//! each direction (order kept, throughput not limited), and counts the bytes it carried, so a
//! test can say how many bytes crossed the WAN. New connections also pay one round trip
//! before their first byte goes upstream, as a TCP handshake over the link would.
//!
//! It runs on its own small tokio runtime, so it serves synchronous and asynchronous tests
//! alike and stops (every connection closed) when dropped.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::{Error, Result};

/// Most bytes one read takes off a socket.
const READ_CHUNK: usize = 256 * 1024;
/// Chunks queued per direction: the delay line never limits throughput (64 MiB in flight at
/// least, far more than a test's 25 ms link carries).
const IN_FLIGHT_CHUNKS: usize = 1024;

/// The link's state: its delay and what crossed it.
#[derive(Debug, Default)]
struct Link {
    to_clients: AtomicU64,
    from_clients: AtomicU64,
    connections: AtomicU64,
    /// The one-way delay in microseconds, read for every chunk (so it can change).
    one_way_us: AtomicU64,
}

impl Link {
    fn one_way(&self) -> Duration {
        Duration::from_micros(self.one_way_us.load(Ordering::Relaxed))
    }
}

/// The proxy; stops on drop.
#[derive(Debug)]
pub struct DelayProxy {
    addr: SocketAddr,
    link: Arc<Link>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl DelayProxy {
    /// Listens on `listen_ip` (a free port) and forwards to `upstream` with `one_way` delay
    /// each way.
    pub fn start(listen_ip: IpAddr, upstream: SocketAddr, one_way: Duration) -> Result<Self> {
        let err = |what: &str, e: std::io::Error| Error::Proxy(format!("{what}: {e}"));
        let listener = std::net::TcpListener::bind((listen_ip, 0))
            .map_err(|e| err(&format!("binding {listen_ip}"), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| err("setting the listener non-blocking", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| err("the listener's address", e))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("delay-proxy")
            .enable_all()
            .build()
            .map_err(|e| err("starting its runtime", e))?;
        let link = Arc::new(Link::default());
        link.one_way_us
            .store(one_way.as_micros() as u64, Ordering::Relaxed);
        let accepting = link.clone();
        runtime.spawn(async move {
            let listener = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("delay proxy on {addr}: {e}");
                    return;
                }
            };
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    // Out of descriptors, most likely: wait instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                accepting.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(forward(client, upstream, accepting.clone()));
            }
        });
        Ok(DelayProxy {
            addr,
            link,
            runtime: Some(runtime),
        })
    }

    /// `http://<ip>:<port>`, the endpoint to give clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bytes delivered to clients so far: what the server sent across the WAN (bodies,
    /// headers and all).
    pub fn bytes_to_clients(&self) -> u64 {
        self.link.to_clients.load(Ordering::SeqCst)
    }

    /// Bytes delivered to the server so far.
    pub fn bytes_from_clients(&self) -> u64 {
        self.link.from_clients.load(Ordering::SeqCst)
    }

    /// Changes the one-way delay, for bytes that arrive from now on (a WAN that slows down).
    pub fn set_one_way(&self, one_way: Duration) {
        self.link
            .one_way_us
            .store(one_way.as_micros() as u64, Ordering::Relaxed);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.link.connections.load(Ordering::SeqCst)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        // Does not block, so it may run inside an async test too.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn forward(client: TcpStream, upstream: SocketAddr, c: Arc<Link>) {
    // The client's connect() returned at once; holding its bytes for a round trip is what the
    // SYN / SYN-ACK over the link would have cost.
    tokio::time::sleep(c.one_way() * 2).await;
    let Ok(server) = TcpStream::connect(upstream).await else {
        return; // the client sees the connection close
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_rd, client_wr) = client.into_split();
    let (server_rd, server_wr) = server.into_split();
    let up = c.clone();
    tokio::join!(
        delay_line(client_rd, server_wr, c.clone(), move |n| {
            up.from_clients.fetch_add(n, Ordering::SeqCst);
        }),
        delay_line(server_rd, client_wr, c.clone(), move |n| {
            c.to_clients.fetch_add(n, Ordering::SeqCst);
        }),
    );
}

/// Reads chunks as they arrive, stamps each with its due time, writes it when due, in order;
/// `count` sees each chunk's size once it is written.
async fn delay_line(
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    link: Arc<Link>,
    count: impl Fn(u64) + Send + 'static,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT_CHUNKS);
    let reader = async move {
        loop {
            let mut buf = Vec::with_capacity(READ_CHUNK);
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if tx
                .send((Instant::now() + link.one_way(), buf))
                .await
                .is_err()
            {
                return; // the writer is gone: the other side closed
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            sleep_until(due).await;
            // Counted before the write: once the receiver has the bytes, the count already
            // includes them (counting after raced a reader that checked at once).
            count(chunk.len() as u64);
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // The reader saw EOF and everything queued was delivered: pass the half-close on.
        let _ = wr.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// An echo server behind the proxy: a reply takes at least a round trip, arrives
    /// intact, and every byte is counted in each direction.
    #[test]
    fn delays_and_counts_both_directions() {
        let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in echo.incoming() {
                let mut s = s.unwrap();
                std::thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let _ = std::io::copy(&mut r, &mut s);
                });
            }
        });
        let one_way = Duration::from_millis(30);
        let proxy = DelayProxy::start([127, 0, 0, 1].into(), upstream, one_way).unwrap();
        let mut s = std::net::TcpStream::connect(proxy.addr()).unwrap();
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let start = std::time::Instant::now();
        let mut writer = s.try_clone().unwrap();
        let sent = payload.clone();
        let w = std::thread::spawn(move || writer.write_all(&sent).unwrap());
        let mut back = vec![0u8; payload.len()];
        s.read_exact(&mut back).unwrap();
        w.join().unwrap();
        let took = start.elapsed();
        // At least the round trip of the data itself: the handshake's round trip began at
        // accept, before `start`, and on a loaded machine may be mostly over by then.
        assert!(took >= one_way * 2, "echo after {took:?}");
        assert_eq!(back, payload);
        assert_eq!(proxy.bytes_to_clients(), payload.len() as u64);
        assert_eq!(proxy.bytes_from_clients(), payload.len() as u64);
        assert_eq!(proxy.connections(), 1);
    }
}
