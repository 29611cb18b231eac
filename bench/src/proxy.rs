//! A WAN-like TCP link: a proxy that delays every chunk in each direction by a fixed one-way
//! time, keeping order and not limiting throughput (a long, fat pipe). New connections also pay
//! one round trip before their first byte goes upstream, as a TCP handshake over the link would.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::process::{ChildGuard, free_port, wait_until};
use crate::{Error, Result};

/// Chunks in flight per direction: at least 128 MiB even if every read returned only 64 KiB
/// (a 25 ms link at ~5 GB/s), so the delay line itself is never the bottleneck.
const IN_FLIGHT_CHUNKS: usize = 2048;
/// Most bytes one read takes off a socket. The link costs a real client no CPU, but this proxy
/// shares the machine's two cores with every system under test: 256 KiB reads took ~25% less
/// of its CPU than 64 KiB ones (60-66 against 79-86 ticks per GiB) for the same delay.
const READ_CHUNK: usize = 256 * 1024;

/// Bytes that crossed the link, per direction.
#[derive(Debug, Default)]
pub struct LinkCounters {
    pub upstream_bytes: AtomicU64,
    pub downstream_bytes: AtomicU64,
    pub connections: AtomicU64,
}

/// Accepts on `listener` forever, forwarding each connection to `upstream` through the delay line.
pub async fn serve(
    listener: TcpListener,
    upstream: SocketAddr,
    one_way: Duration,
    counters: Arc<LinkCounters>,
) -> Result<()> {
    loop {
        let (client, peer) = listener
            .accept()
            .await
            .map_err(|e| Error::io(format!("proxy accept on {upstream}"), e))?;
        counters.connections.fetch_add(1, Ordering::Relaxed);
        let counters = counters.clone();
        tokio::spawn(async move {
            if let Err(e) = forward(client, upstream, one_way, counters).await {
                tracing::debug!(%peer, error = %e, "proxied connection ended with an error");
            }
        });
    }
}

async fn forward(
    client: TcpStream,
    upstream: SocketAddr,
    one_way: Duration,
    counters: Arc<LinkCounters>,
) -> std::io::Result<()> {
    // The client's connect() already returned (loopback); holding its bytes for one round trip
    // is what a SYN / SYN-ACK over the link would have cost before it could send them.
    tokio::time::sleep(one_way * 2).await;
    let server = TcpStream::connect(upstream).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_rd, client_wr) = client.into_split();
    let (server_rd, server_wr) = server.into_split();
    let c1 = counters.clone();
    let up = delay_line(client_rd, server_wr, one_way, move |n| {
        c1.upstream_bytes.fetch_add(n, Ordering::Relaxed);
    });
    let down = delay_line(server_rd, client_wr, one_way, move |n| {
        counters.downstream_bytes.fetch_add(n, Ordering::Relaxed);
    });
    let (a, b) = tokio::join!(up, down);
    a.and(b)
}

/// Reads chunks as they arrive, stamps each with its due time, and writes it when due, in order.
async fn delay_line(
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    one_way: Duration,
    count: impl Fn(u64) + Send + 'static,
) -> std::io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(IN_FLIGHT_CHUNKS);
    let reader = async move {
        loop {
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            let n = rd.read_buf(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            if tx
                .send((Instant::now() + one_way, buf.freeze()))
                .await
                .is_err()
            {
                return Ok(()); // writer is gone (peer closed)
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            sleep_until(due).await;
            wr.write_all(&chunk).await?;
            count(chunk.len() as u64);
        }
        // Reader saw EOF and everything queued was delivered: pass the half-close on.
        wr.shutdown().await
    };
    let (r, w) = tokio::join!(reader, writer);
    r.and(w)
}

/// Answers every connection on `listener` with the counters as one line, `upstream
/// downstream connections`, and closes it: how the harness reads a proxy process's counts.
pub async fn serve_stats(listener: TcpListener, counters: Arc<LinkCounters>) -> Result<()> {
    loop {
        let (mut s, _) = listener
            .accept()
            .await
            .map_err(|e| Error::io("proxy stats accept", e))?;
        let line = format!(
            "{} {} {}\n",
            counters.upstream_bytes.load(Ordering::Relaxed),
            counters.downstream_bytes.load(Ordering::Relaxed),
            counters.connections.load(Ordering::Relaxed)
        );
        let _ = s.write_all(line.as_bytes()).await;
        let _ = s.shutdown().await;
    }
}

/// A snapshot of a proxy process's [`LinkCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCount {
    pub upstream_bytes: u64,
    pub downstream_bytes: u64,
    pub connections: u64,
}

/// The proxy running as a separate process (`strata-bench proxy`), so its CPU use is not mixed
/// with the harness's and it serves every system under test the same way.
#[derive(Debug)]
pub struct DelayProxyProcess {
    _child: ChildGuard,
    pub listen: SocketAddr,
    pub one_way: Duration,
    /// Where it answers with its byte counts (see [`serve_stats`]), if asked to.
    stats: Option<SocketAddr>,
}

impl DelayProxyProcess {
    pub fn start(upstream: SocketAddr, one_way: Duration, log: &Path) -> Result<Self> {
        Self::start_on([127, 0, 0, 1].into(), upstream, one_way, log, false)
    }

    /// The proxy listening on `ip` (a free port), with a counts port on loopback if `stats`.
    pub fn start_on(
        ip: std::net::IpAddr,
        upstream: SocketAddr,
        one_way: Duration,
        log: &Path,
        stats: bool,
    ) -> Result<Self> {
        let port = free_port()?;
        Self::start_listening(SocketAddr::new(ip, port), upstream, one_way, log, stats)
    }

    /// The proxy listening on `listen` exactly (an HDFS datanode's proxy must have the port
    /// the namenode hands out).
    pub fn start_at(
        listen: SocketAddr,
        upstream: SocketAddr,
        one_way: Duration,
        log: &Path,
    ) -> Result<Self> {
        Self::start_listening(listen, upstream, one_way, log, false)
    }

    fn start_listening(
        listen: SocketAddr,
        upstream: SocketAddr,
        one_way: Duration,
        log: &Path,
        stats: bool,
    ) -> Result<Self> {
        let stats = if stats {
            Some(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
        } else {
            None
        };
        let exe = std::env::current_exe().map_err(|e| Error::io("current executable", e))?;
        let mut command = Command::new(exe);
        command
            .arg("proxy")
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--upstream")
            .arg(upstream.to_string())
            .arg("--delay")
            .arg(humantime::format_duration(one_way).to_string());
        if let Some(stats) = stats {
            command.arg("--stats-listen").arg(stats.to_string());
        }
        let mut child = ChildGuard::spawn("delaying TCP proxy", command, log)?;
        wait_until(
            "delaying TCP proxy",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                child.check_alive().map_err(|e| e.to_string())?;
                std::net::TcpStream::connect(listen)
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        )?;
        Ok(Self {
            _child: child,
            listen,
            one_way,
            stats,
        })
    }

    /// The bytes that crossed the link so far (needs `stats` at start).
    pub fn counts(&self) -> Result<LinkCount> {
        let addr = self.stats.ok_or_else(|| Error::Config {
            field: "proxy",
            detail: "this proxy was started without a counts port".into(),
        })?;
        counts_at(addr)
    }

    /// Where it answers with its byte counts, if started with them.
    pub fn stats_addr(&self) -> Option<SocketAddr> {
        self.stats
    }

    pub fn pid(&self) -> u32 {
        self._child.pid()
    }

    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.listen)
    }
}

/// The byte counts of the proxy process whose counts port is `addr`.
pub fn counts_at(addr: SocketAddr) -> Result<LinkCount> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| Error::io(format!("proxy counts at {addr}"), e))?;
    let mut line = String::new();
    s.read_to_string(&mut line)
        .map_err(|e| Error::io(format!("proxy counts at {addr}"), e))?;
    let n: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    match n[..] {
        [up, down, conns] => Ok(LinkCount {
            upstream_bytes: up,
            downstream_bytes: down,
            connections: conns,
        }),
        _ => Err(Error::Parse {
            what: format!("proxy counts at {addr}"),
            detail: format!("{line:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server behind the proxy: the reply to each message takes a full round trip
    /// (2 x one-way), the first one also the handshake's, and bytes arrive intact and in order.
    #[tokio::test]
    async fn delays_each_direction_and_keeps_order() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let one_way = Duration::from_millis(40);
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        let counters = Arc::new(LinkCounters::default());
        tokio::spawn(serve(proxy, echo_addr, one_way, counters.clone()));

        let mut s = TcpStream::connect(proxy_addr).await.unwrap();
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let start = std::time::Instant::now();
        s.write_all(&payload[..10]).await.unwrap();
        let mut got = vec![0u8; 10];
        s.read_exact(&mut got).await.unwrap();
        let first = start.elapsed();
        assert!(first >= one_way * 4, "first reply after {first:?}");
        assert!(
            first < one_way * 4 + Duration::from_millis(400),
            "{first:?}"
        );

        let start = std::time::Instant::now();
        let (mut r, mut w) = s.into_split();
        let sent = payload.clone();
        let writer = tokio::spawn(async move { w.write_all(&sent).await.unwrap() });
        let mut back = vec![0u8; payload.len()];
        r.read_exact(&mut back).await.unwrap();
        writer.await.unwrap();
        let rtt = start.elapsed();
        assert!(rtt >= one_way * 2, "round trip after {rtt:?}");
        assert_eq!(back, payload, "bytes reordered or corrupted");
        assert_eq!(
            counters.downstream_bytes.load(Ordering::Relaxed),
            10 + payload.len() as u64
        );
    }
}
