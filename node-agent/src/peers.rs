//! The agent's side of the cluster cache: blocks to and from peers over their HTTP API
//! (the node secret), and where the member list comes from: `--peers`, `--peers-file`
//! (outside Kubernetes), or the StrataNodes of the cluster (each agent writes its own,
//! with its endpoint and a heartbeat).

use crate::cli_values::parse_duration;
use crate::cluster::{BlockRequest, Cluster, Member, PeerTransport};
use crate::http::client::{AgentClient, PeerBlocksQuery, read_token_file};
use crate::{Error, Result};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

/// How often `--peers-file` is read again.
pub const PEERS_FILE_RELOAD: Duration = Duration::from_secs(2);
/// How often the node secret is read again for requests to peers (a rotated Secret).
const TOKEN_RELOAD: Duration = Duration::from_secs(5);

/// Flags of the cluster cache (`strata-agent serve`).
#[derive(clap::Args, Debug, Clone)]
pub struct PeerFlags {
    /// Other agents to share blocks with, outside Kubernetes: NAME=URL,... (this agent may
    /// be listed too; it is recognised by --node-name). Needs --peer-token-file, the secret
    /// every agent shares.
    #[arg(long, env = "STRATA_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// A file listing the cluster's agents, one `NAME URL` per line (`#` starts a comment),
    /// read again every 2 s, so agents can join and leave while it runs.
    #[arg(long, env = "STRATA_PEERS_FILE")]
    pub peers_file: Option<PathBuf>,
    /// How long a peer may take to start answering a block request (connect and answer
    /// headers, which a live agent sends at once), and how long its connection may stay
    /// silent (TCP keepalive probes unanswered) before it is taken as gone: the next owner
    /// or the source is asked instead and the peer skipped for 10 s. A live owner waiting
    /// on a slow source is waited for.
    #[arg(long, env = "STRATA_PEER_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub peer_timeout: Duration,
    /// Never share blocks with other agents, even when the cluster lists some.
    #[arg(long, env = "STRATA_NO_PEERS")]
    pub no_peers: bool,
}

/// Where the member list comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// A fixed list (`--peers`).
    Static(Vec<Member>),
    /// A file read again every [`PEERS_FILE_RELOAD`] (`--peers-file`), plus the fixed list.
    File(PathBuf, Vec<Member>),
    /// The StrataNodes of the Kubernetes cluster.
    Kubernetes,
}

impl PeerFlags {
    /// The membership these flags ask for, if any (`in_cluster`: a Kubernetes node name was
    /// given, so StrataNodes list the members).
    pub fn membership(&self, in_cluster: bool) -> Result<Option<Membership>> {
        if self.no_peers {
            return Ok(None);
        }
        let fixed = self
            .peers
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| parse_member(p, "peers"))
            .collect::<Result<Vec<_>>>()?;
        Ok(match (&self.peers_file, fixed.is_empty()) {
            (Some(file), _) => Some(Membership::File(file.clone(), fixed)),
            (None, false) => Some(Membership::Static(fixed)),
            (None, true) if in_cluster => Some(Membership::Kubernetes),
            (None, true) => None,
        })
    }
}

/// `NAME=URL` (flag) or `NAME URL` (file line).
fn parse_member(text: &str, field: &str) -> Result<Member> {
    let text = text.trim();
    let (name, url) = text
        .split_once('=')
        .or_else(|| text.split_once(char::is_whitespace))
        .map(|(n, u)| (n.trim(), u.trim()))
        .ok_or_else(|| {
            Error::invalid(
                field,
                format!("{text:?} is not NAME=URL (for example node-2=http://10.0.0.6:7070)"),
            )
        })?;
    if name.is_empty() || !url.starts_with("http://") || url.len() <= "http://".len() {
        return Err(Error::invalid(
            field,
            format!("{text:?}: a member is a name and an http://HOST:PORT URL"),
        ));
    }
    Ok(Member {
        name: name.to_string(),
        url: url.trim_end_matches('/').to_string(),
    })
}

/// The members a peers file lists.
pub fn read_peers_file(path: &Path) -> Result<Vec<Member>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading --peers-file {}", path.display()), e))?;
    text.lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .map(|line| parse_member(line, "peers-file"))
        .collect()
}

/// Keeps `cluster`'s members equal to `fixed` plus what `file` lists, reading it again
/// every [`PEERS_FILE_RELOAD`]. A file that cannot be read keeps the last members.
pub async fn follow_peers_file(cluster: Arc<Cluster>, file: PathBuf, fixed: Vec<Member>) {
    let mut last_error = None;
    loop {
        match read_peers_file(&file) {
            Ok(listed) => {
                last_error = None;
                cluster.set_members(fixed.iter().cloned().chain(listed));
            }
            Err(e) => {
                let message = e.to_string();
                if last_error.as_ref() != Some(&message) {
                    tracing::warn!(error = %message, "peers file not read; keeping the last members");
                }
                last_error = Some(message);
            }
        }
        tokio::time::sleep(PEERS_FILE_RELOAD).await;
    }
}

/// Blocks to and from peers over their HTTP API, with the node secret.
pub struct HttpPeers {
    token_file: PathBuf,
    token: Mutex<(Option<String>, Instant)>,
    dead_after: Duration,
}

impl HttpPeers {
    /// Reads the node secret from `token_file` (again every few seconds). A peer whose
    /// connection stays silent for about `dead_after` (TCP keepalive probes unanswered) is
    /// taken as gone; a live one may take as long as its source to send the blocks.
    pub fn new(token_file: &Path, dead_after: Duration) -> Result<Self> {
        let token = read_token_file(token_file).map_err(|e| {
            Error::io(
                format!("reading --peer-token-file {}", token_file.display()),
                e,
            )
        })?;
        Ok(HttpPeers {
            token_file: token_file.to_path_buf(),
            token: Mutex::new((Some(token), Instant::now())),
            dead_after,
        })
    }

    fn client(&self, peer: &Member) -> strata_engine::Result<AgentClient> {
        let token = {
            let mut token = self.token.lock().expect("peer token");
            if token.1.elapsed() >= TOKEN_RELOAD {
                // A file being rewritten keeps the old secret for now.
                if let Ok(t) = read_token_file(&self.token_file) {
                    token.0 = Some(t);
                }
                token.1 = Instant::now();
            }
            token.0.clone()
        };
        AgentClient::from_url(&peer.url, token)
            .map(|c| c.with_keepalive(self.dead_after))
            .map_err(|e| peer_error(peer, e))
    }
}

fn peer_error(peer: &Member, e: impl std::fmt::Display) -> strata_engine::Error {
    strata_engine::Error::Peer {
        peer: peer.name.clone(),
        message: e.to_string(),
    }
}

fn query(request: &BlockRequest) -> PeerBlocksQuery {
    let mtime = request
        .mtime
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    PeerBlocksQuery {
        path: request.path.as_str().to_string(),
        source: request.version.source.clone(),
        key: request.version.key.clone(),
        etag: request.version.etag.clone(),
        size: request.version.size,
        mtime,
        block_size: request.block_size,
        first: request.first,
        count: request.count,
        from: request.from.clone(),
        wait: false,
    }
}

#[async_trait::async_trait]
impl PeerTransport for HttpPeers {
    async fn fetch(
        &self,
        peer: &Member,
        request: &BlockRequest,
    ) -> strata_engine::Result<BoxStream<'static, strata_engine::Result<Bytes>>> {
        let client = self.client(peer)?;
        let body = client
            .peer_blocks(&request.namespace, &request.name, &query(request))
            .await
            .map_err(|e| peer_error(peer, e))?;
        let peer = peer.clone();
        Ok(futures::stream::unfold(body, move |mut body| {
            let peer = peer.clone();
            async move {
                let chunk = body.next_chunk().await?;
                Some((chunk.map_err(|e| peer_error(&peer, e)), body))
            }
        })
        .boxed())
    }

    async fn fill(
        &self,
        peer: &Member,
        request: &BlockRequest,
        wait: bool,
    ) -> strata_engine::Result<bool> {
        // The caller bounds the wait.
        let client = self
            .client(peer)?
            .with_timeout(Duration::from_secs(24 * 3600));
        client
            .peer_fill(&request.namespace, &request.name, &query(request), wait)
            .await
            .map_err(|e| peer_error(peer, e))
    }
}

/// Keeps `cluster`'s members equal to the StrataNodes that have an endpoint and reported
/// within `stale_after` (a watch on the API server, re-evaluated every few seconds as
/// heartbeats age).
#[cfg(feature = "node-status")]
pub async fn follow_strata_nodes(
    cluster: Arc<Cluster>,
    client: kube::Client,
    stale_after: Duration,
) {
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    use strata_crds::StrataNode;

    let api: kube::Api<StrataNode> = kube::Api::all(client);
    let (reader, writer) = reflector::store();
    let events = reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    let follow = tokio::spawn(async move {
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            if let Err(e) = event {
                tracing::warn!(error = %e, "watching StrataNodes for cluster members; retrying");
            }
        }
    });
    let _stop_with_us = AbortOnDrop(follow);
    loop {
        let now = k8s_openapi::jiff::Timestamp::now();
        let nodes = reader.state();
        let live = nodes.iter().filter_map(|node| {
            let url = node.spec.endpoint.clone()?;
            let heartbeat = node.status.as_ref()?.last_heartbeat.as_ref()?.0;
            let age = Duration::try_from(now.duration_since(heartbeat)).unwrap_or_default();
            (age <= stale_after).then(|| Member {
                name: node.spec.node_name.clone(),
                url,
            })
        });
        cluster.set_members(live.collect::<Vec<_>>());
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(feature = "node-status")]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

#[cfg(feature = "node-status")]
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse_from_flags_and_files() {
        let m = parse_member("node-2=http://10.0.0.6:7070/", "peers").unwrap();
        assert_eq!(m.name, "node-2");
        assert_eq!(m.url, "http://10.0.0.6:7070");
        let m = parse_member("  node-3   http://10.0.0.7:7070 ", "peers-file").unwrap();
        assert_eq!(m.url, "http://10.0.0.7:7070");
        for bad in [
            "node-2",
            "=http://x:1",
            "node-2=https://x:1",
            "node-2=10.0.0.6:7070",
        ] {
            let e = parse_member(bad, "peers").unwrap_err().to_string();
            assert!(e.contains("peers"), "{bad}: {e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("peers");
        std::fs::write(
            &file,
            "# the bench's nodes\nnode-1 http://10.77.0.2:7070\n\nnode-2 http://10.77.0.3:7070 # second\n",
        )
        .unwrap();
        let names: Vec<String> = read_peers_file(&file)
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(names, ["node-1", "node-2"]);
    }

    #[test]
    fn membership_follows_the_flags() {
        let flags = |peers: &[&str], file: Option<&str>, no_peers| PeerFlags {
            peers: peers.iter().map(|s| s.to_string()).collect(),
            peers_file: file.map(PathBuf::from),
            peer_timeout: Duration::from_secs(5),
            no_peers,
        };
        assert_eq!(flags(&[], None, false).membership(false).unwrap(), None);
        assert_eq!(
            flags(&[], None, false).membership(true).unwrap(),
            Some(Membership::Kubernetes)
        );
        assert_eq!(flags(&[], None, true).membership(true).unwrap(), None);
        assert!(matches!(
            flags(&["a=http://x:1"], None, false).membership(true).unwrap(),
            Some(Membership::Static(m)) if m.len() == 1
        ));
        assert!(matches!(
            flags(&[], Some("/p"), false).membership(false).unwrap(),
            Some(Membership::File(..))
        ));
    }
}
