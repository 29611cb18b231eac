//! A small HTTP client for the agent's API, over its unix socket (the local
//! CSI plugin) or over TCP with a bearer token (preload/pin jobs, peers).
//!
//! One connection per request: the callers make a handful of calls, and a
//! fresh connection never trips over an agent that restarted in between.

use super::types::{
    ErrorBody, HealthStatus, MigrationProgress, MigrationRequest, PathsRequest, PinAnswer,
    PreloadProgress, VolumeInfo, VolumeMount, VolumeRelease,
};
use bytes::Bytes;
pub use http::StatusCode;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Characters kept as they are in a query value; everything else is %-encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// Errors of [`AgentClient`] calls.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("agent URL {url:?} is not usable: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error(
        "cannot reach the agent at {endpoint}: {source} (is `strata-agent serve` running there?)"
    )]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with the agent at {endpoint} failed: {source}")]
    Http {
        endpoint: String,
        #[source]
        source: hyper::Error,
    },
    #[error("the agent at {endpoint} did not answer within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    /// The agent answered with an error status; `message` and `field` are its JSON body.
    #[error("agent answered {status}: {message}")]
    Status {
        status: StatusCode,
        message: String,
        field: Option<String>,
    },
    #[error("cannot decode the agent's answer to {what}: {source}")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// The HTTP status of an error answer, if the agent gave one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when the agent could not be reached at all (as opposed to answering with an error).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. } | ClientError::Http { .. } | ClientError::Timeout { .. }
        )
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[derive(Clone)]
enum Transport {
    Unix(PathBuf),
    Tcp {
        authority: String,
        token: Option<String>,
    },
}

/// Client of one agent. Cheap to clone.
#[derive(Clone)]
pub struct AgentClient {
    transport: Transport,
    timeout: Duration,
    /// The Kubernetes Job this client works for, sent with preloads so the agent reports
    /// their progress under it.
    job: Option<String>,
    /// Block fetches a preload keeps in flight (None: the agent's default).
    concurrency: Option<u32>,
    /// Preloads keep their blocks on the agent asked, not on the blocks' owners.
    here: bool,
    /// TCP keepalive probing (peers): a peer that stops answering is noticed within about
    /// this long even while its answer is slow to come.
    keepalive: Option<Duration>,
}

impl fmt::Debug for AgentClient {
    // Hand-written so that the token never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentClient")
            .field("endpoint", &self.endpoint())
            .finish()
    }
}

impl AgentClient {
    /// Talks to the agent's unix socket (no token: the socket's file permissions are the guard).
    pub fn unix(socket: impl Into<PathBuf>) -> Self {
        AgentClient {
            transport: Transport::Unix(socket.into()),
            timeout: Duration::from_secs(30),
            job: None,
            concurrency: None,
            here: false,
            keepalive: None,
        }
    }

    /// Parses `unix:///run/strata/agent.sock`, a bare absolute socket path, or
    /// `http://host:port` (which takes the bearer token).
    pub fn from_url(url: &str, token: Option<String>) -> Result<Self> {
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = url.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(invalid(
                    "a unix socket URL needs an absolute path: unix:///run/strata/agent.sock",
                ));
            }
            return Ok(Self::unix(path));
        }
        if url.starts_with('/') {
            return Ok(Self::unix(url));
        }
        if let Some(rest) = url.strip_prefix("http://") {
            let authority = rest.trim_end_matches('/');
            if authority.is_empty() || authority.contains('/') {
                return Err(invalid("expected http://HOST:PORT with no path"));
            }
            return Ok(AgentClient {
                transport: Transport::Tcp {
                    authority: authority.to_string(),
                    token,
                },
                timeout: Duration::from_secs(30),
                job: None,
                concurrency: None,
                here: false,
                keepalive: None,
            });
        }
        if url.starts_with("https://") {
            return Err(invalid(
                "https is not supported by the agent API; use http:// with --token-file",
            ));
        }
        Err(invalid(
            "expected unix:///path/to/agent.sock or http://HOST:PORT",
        ))
    }

    /// Limit for one whole request/answer (not for streamed preloads, which can run for hours).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Names the Kubernetes Job whose preloads this client asks for.
    pub fn with_job(mut self, job: Option<String>) -> Self {
        self.job = job;
        self
    }

    /// Probes the TCP connection (keepalive) so that a peer gone from the network is
    /// noticed within about `dead_after`, while a live one may take as long as its source
    /// does to answer.
    pub fn with_keepalive(mut self, dead_after: Duration) -> Self {
        self.keepalive = Some(dead_after);
        self
    }

    /// Preloads keep their blocks on the agent asked (a pin Job's), not on their owners.
    pub fn with_here(mut self, here: bool) -> Self {
        self.here = here;
        self
    }

    /// Block fetches the agent keeps in flight for this client's preloads.
    pub fn with_concurrency(mut self, concurrency: Option<u32>) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Where this client connects, for messages.
    pub fn endpoint(&self) -> String {
        match &self.transport {
            Transport::Unix(path) => format!("unix://{}", path.display()),
            Transport::Tcp { authority, .. } => format!("http://{authority}"),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<http::Response<hyper::body::Incoming>> {
        let endpoint = self.endpoint();
        let (host, token) = match &self.transport {
            Transport::Unix(_) => ("localhost".to_string(), None),
            Transport::Tcp { authority, token } => (authority.clone(), token.clone()),
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, host);
        if let Some(token) = token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::InvalidUrl {
                url: path.to_string(),
                reason: e.to_string(),
            })?;

        let connect_err = |source| ClientError::Connect {
            endpoint: endpoint.clone(),
            source,
        };
        let http_err = |source| ClientError::Http {
            endpoint: endpoint.clone(),
            source,
        };
        let mut sender = match &self.transport {
            Transport::Unix(socket) => {
                let stream = tokio::net::UnixStream::connect(socket)
                    .await
                    .map_err(connect_err)?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(http_err)?;
                tokio::spawn(conn);
                sender
            }
            Transport::Tcp { authority, .. } => {
                let stream = tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .map_err(connect_err)?;
                if let Some(dead_after) = self.keepalive {
                    // First probe after half, then two more a quarter apart: silence for
                    // about `dead_after` ends the connection.
                    let quarter = (dead_after / 4).max(Duration::from_secs(1));
                    let probes = socket2::TcpKeepalive::new()
                        .with_time((dead_after / 2).max(Duration::from_secs(1)))
                        .with_interval(quarter)
                        .with_retries(2);
                    socket2::SockRef::from(&stream)
                        .set_tcp_keepalive(&probes)
                        .map_err(connect_err)?;
                }
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(http_err)?;
                tokio::spawn(conn);
                sender
            }
        };
        sender.send_request(request).await.map_err(http_err)
    }

    /// Sends a request and reads the whole answer, turning error statuses into [`ClientError::Status`].
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes)> {
        let call = async {
            let response = self.send(method, path, body).await?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|source| ClientError::Http {
                    endpoint: self.endpoint(),
                    source,
                })?
                .to_bytes();
            Ok::<_, ClientError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| ClientError::Timeout {
                endpoint: self.endpoint(),
                timeout: self.timeout,
            })??;
        if status.is_client_error() || status.is_server_error() {
            return Err(status_error(status, &bytes));
        }
        Ok((status, bytes))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T> {
        let (_, bytes) = self.exchange(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            what: path.to_string(),
            source,
        })
    }

    fn encode<B: Serialize>(body: &B) -> Vec<u8> {
        // Our own request types always serialize.
        serde_json::to_vec(body).unwrap_or_default()
    }

    /// `GET /readyz`: Ok when the agent is up and has loaded its datasets.
    pub async fn ready(&self) -> Result<HealthStatus> {
        self.json(Method::GET, "/readyz", None).await
    }

    /// `GET /healthz`: Ok when the agent process answers.
    pub async fn health(&self) -> Result<HealthStatus> {
        self.json(Method::GET, "/healthz", None).await
    }

    /// `GET /v1/datasets/{ns}/{name}`: the dataset's summary as JSON.
    pub async fn dataset(&self, namespace: &str, name: &str) -> Result<serde_json::Value> {
        self.json(Method::GET, &dataset_path(namespace, name, ""), None)
            .await
    }

    /// `GET /v1/datasets`: summaries of every dataset the agent serves.
    pub async fn datasets(&self) -> Result<serde_json::Value> {
        self.json(Method::GET, "/v1/datasets", None).await
    }

    /// `PUT /v1/datasets/{ns}/{name}`: adds or replaces a dataset (any serializable `DatasetConfig`).
    pub async fn put_dataset<C: Serialize>(
        &self,
        namespace: &str,
        name: &str,
        config: &C,
    ) -> Result<serde_json::Value> {
        self.json(
            Method::PUT,
            &dataset_path(namespace, name, ""),
            Some(Self::encode(config)),
        )
        .await
    }

    /// `DELETE /v1/datasets/{ns}/{name}`.
    pub async fn delete_dataset(&self, namespace: &str, name: &str) -> Result<()> {
        self.exchange(Method::DELETE, &dataset_path(namespace, name, ""), None)
            .await
            .map(|_| ())
    }

    /// `GET /v1/datasets/{ns}/{name}/usage`.
    pub async fn usage(&self, namespace: &str, name: &str) -> Result<serde_json::Value> {
        self.json(Method::GET, &dataset_path(namespace, name, "/usage"), None)
            .await
    }

    /// `GET .../stat?path=`.
    pub async fn stat(&self, namespace: &str, name: &str, path: &str) -> Result<serde_json::Value> {
        let uri = format!(
            "{}?path={}",
            dataset_path(namespace, name, "/stat"),
            query(path)
        );
        self.json(Method::GET, &uri, None).await
    }

    /// `GET .../list?path=`.
    pub async fn list(&self, namespace: &str, name: &str, path: &str) -> Result<serde_json::Value> {
        let uri = format!(
            "{}?path={}",
            dataset_path(namespace, name, "/list"),
            query(path)
        );
        self.json(Method::GET, &uri, None).await
    }

    /// `GET .../read?path=`, whole file.
    pub async fn read(&self, namespace: &str, name: &str, path: &str) -> Result<Bytes> {
        let uri = format!(
            "{}?path={}",
            dataset_path(namespace, name, "/read"),
            query(path)
        );
        self.exchange(Method::GET, &uri, None).await.map(|(_, b)| b)
    }

    /// `PUT .../volumes/{volumeId}`: makes sure the dataset is mounted on this node and records the volume.
    pub async fn acquire_volume(
        &self,
        namespace: &str,
        name: &str,
        volume_id: &str,
        owner: Option<&str>,
    ) -> Result<VolumeMount> {
        let mut uri = dataset_path(namespace, name, &format!("/volumes/{}", query(volume_id)));
        if let Some(owner) = owner {
            uri.push_str(&format!("?owner={}", query(owner)));
        }
        self.json(Method::PUT, &uri, None).await
    }

    /// `DELETE /v1/volumes/{volumeId}`: forgets the volume, unmounting its dataset when it was the last one.
    /// Idempotent: an unknown volume is not an error.
    pub async fn release_volume(&self, volume_id: &str) -> Result<VolumeRelease> {
        self.json(
            Method::DELETE,
            &format!("/v1/volumes/{}", query(volume_id)),
            None,
        )
        .await
    }

    /// `GET /v1/volumes`.
    pub async fn volumes(&self) -> Result<Vec<VolumeInfo>> {
        self.json(Method::GET, "/v1/volumes", None).await
    }

    /// `POST .../pin`; with `modified_within` only files modified that recently, by exact path.
    pub async fn pin(
        &self,
        namespace: &str,
        name: &str,
        paths: &[String],
        modified_within: Option<&str>,
    ) -> Result<PinAnswer> {
        let body = Self::encode(&PathsRequest {
            paths: paths.to_vec(),
            modified_within: modified_within.map(str::to_string),
            job: None,
            concurrency: None,
            here: false,
        });
        self.json(
            Method::POST,
            &dataset_path(namespace, name, "/pin"),
            Some(body),
        )
        .await
    }

    /// `POST .../unpin`.
    pub async fn unpin(&self, namespace: &str, name: &str, paths: &[String]) -> Result<PinAnswer> {
        let body = Self::encode(&PathsRequest {
            paths: paths.to_vec(),
            modified_within: None,
            job: None,
            concurrency: None,
            here: false,
        });
        self.json(
            Method::POST,
            &dataset_path(namespace, name, "/unpin"),
            Some(body),
        )
        .await
    }

    /// `POST .../preload`: streams progress to `on_progress` and returns the final line.
    /// A preload that ends with an `error` line is returned as an error.
    pub async fn preload(
        &self,
        namespace: &str,
        name: &str,
        paths: &[String],
        on_progress: impl FnMut(&PreloadProgress),
    ) -> Result<PreloadProgress> {
        self.preload_selected(namespace, name, paths, None, on_progress)
            .await
    }

    /// [`Self::preload`] of only the files modified within `modified_within` (e.g. `14d`).
    pub async fn preload_selected(
        &self,
        namespace: &str,
        name: &str,
        paths: &[String],
        modified_within: Option<&str>,
        mut on_progress: impl FnMut(&PreloadProgress),
    ) -> Result<PreloadProgress> {
        let body = Self::encode(&PathsRequest {
            paths: paths.to_vec(),
            modified_within: modified_within.map(str::to_string),
            job: self.job.clone(),
            concurrency: self.concurrency,
            here: self.here,
        });
        let uri = dataset_path(namespace, name, "/preload");
        let last: Option<PreloadProgress> = self.post_stream(&uri, body, &mut on_progress).await?;
        let last = last.unwrap_or_default();
        if let Some(error) = &last.error {
            return Err(ClientError::Status {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: format!("preload stopped: {error}"),
                field: None,
            });
        }
        if !last.done {
            return Err(ClientError::Status {
                status: StatusCode::BAD_GATEWAY,
                message: "the agent closed the preload stream before it finished".to_string(),
                field: None,
            });
        }
        Ok(last)
    }

    /// POSTs `body` to `uri` and reads the answer's progress lines (newline-delimited
    /// JSON), telling `on_progress` of each; returns the last one.
    async fn post_stream<T: DeserializeOwned>(
        &self,
        uri: &str,
        body: Vec<u8>,
        on_progress: &mut impl FnMut(&T),
    ) -> Result<Option<T>> {
        let response = tokio::time::timeout(self.timeout, self.send(Method::POST, uri, Some(body)))
            .await
            .map_err(|_| ClientError::Timeout {
                endpoint: self.endpoint(),
                timeout: self.timeout,
            })??;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(status_error(status, &bytes));
        }
        let mut pending: Vec<u8> = Vec::new();
        let mut last: Option<T> = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|source| ClientError::Http {
                endpoint: self.endpoint(),
                source,
            })?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.extend_from_slice(data);
            while let Some(newline) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=newline).collect();
                let line = &line[..line.len() - 1];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let progress: T =
                    serde_json::from_slice(line).map_err(|source| ClientError::Decode {
                        what: uri.to_string(),
                        source,
                    })?;
                on_progress(&progress);
                last = Some(progress);
            }
        }
        Ok(last)
    }

    /// `POST /v1/datasets/{namespace}/{name}/migrations/{migration}`: runs the dataset's
    /// migration `migration` on this agent (or joins the run under way), telling
    /// `on_progress` as it goes; returns the final progress. An error the copy stopped on
    /// is returned as an error.
    pub async fn migrate(
        &self,
        namespace: &str,
        name: &str,
        migration: &str,
        mut on_progress: impl FnMut(&MigrationProgress),
    ) -> Result<MigrationProgress> {
        let body = Self::encode(&MigrationRequest {
            job: self.job.clone(),
        });
        let uri = dataset_path(
            namespace,
            name,
            &format!("/migrations/{}", query(migration)),
        );
        let last: Option<MigrationProgress> =
            self.post_stream(&uri, body, &mut on_progress).await?;
        let last = last.unwrap_or_default();
        if let Some(error) = &last.error {
            return Err(ClientError::Status {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: format!("migration stopped: {error}"),
                field: None,
            });
        }
        if !last.done {
            return Err(ClientError::Status {
                status: StatusCode::BAD_GATEWAY,
                message: "the agent closed the migration stream before it finished".to_string(),
                field: None,
            });
        }
        Ok(last)
    }
}

/// The blocks of one object version that an agent asks a peer for (see
/// `GET /v1/peer/datasets/{namespace}/{name}/blocks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerBlocksQuery {
    /// The file's dataset path.
    pub path: String,
    /// Source name, key, ETag and size: the exact object version.
    pub source: String,
    pub key: String,
    pub etag: String,
    pub size: u64,
    /// The file's modification time, Unix milliseconds.
    pub mtime: i64,
    /// Block size, first block and number of blocks.
    pub block_size: u64,
    pub first: u64,
    pub count: u64,
    /// The asking agent's member name.
    pub from: String,
    /// (`fill` only) answer once the blocks are stored.
    #[serde(default)]
    pub wait: bool,
}

impl PeerBlocksQuery {
    fn encode(&self) -> String {
        format!(
            "path={}&source={}&key={}&etag={}&size={}&mtime={}&blockSize={}&first={}&count={}&from={}",
            query(&self.path),
            query(&self.source),
            query(&self.key),
            query(&self.etag),
            self.size,
            self.mtime,
            self.block_size,
            self.first,
            self.count,
            query(&self.from)
        )
    }
}

/// A streamed answer body, chunk by chunk.
pub struct BodyChunks {
    body: hyper::body::Incoming,
    endpoint: String,
}

impl BodyChunks {
    /// The next chunk of data; `None` at the end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes>> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => return Some(Ok(data)),
                    // Trailers: nothing for us.
                    Err(_) => continue,
                },
                Err(source) => {
                    return Some(Err(ClientError::Http {
                        endpoint: self.endpoint.clone(),
                        source,
                    }));
                }
            }
        }
    }
}

impl AgentClient {
    /// `GET /v1/peer/datasets/{ns}/{name}/blocks?...`: blocks from a peer agent, streamed
    /// as the peer has them. Only the connection and the status are awaited here (no
    /// timeout: the caller bounds the wait, chunk by chunk).
    pub async fn peer_blocks(
        &self,
        namespace: &str,
        name: &str,
        blocks: &PeerBlocksQuery,
    ) -> Result<BodyChunks> {
        let uri = format!(
            "{}?{}",
            peer_path(namespace, name, "/blocks"),
            blocks.encode()
        );
        let response = self.send(Method::GET, &uri, None).await?;
        let status = response.status();
        if !status.is_success() {
            let bytes = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(status_error(status, &bytes));
        }
        Ok(BodyChunks {
            body: response.into_body(),
            endpoint: self.endpoint(),
        })
    }

    /// `POST /v1/peer/datasets/{ns}/{name}/fill?...`: asks a peer to fetch and keep blocks
    /// it owns too. True when it took the work on. With `wait` the peer answers once they
    /// are stored (the client's timeout applies).
    pub async fn peer_fill(
        &self,
        namespace: &str,
        name: &str,
        blocks: &PeerBlocksQuery,
        wait: bool,
    ) -> Result<bool> {
        let mut uri = format!(
            "{}?{}",
            peer_path(namespace, name, "/fill"),
            blocks.encode()
        );
        if wait {
            uri.push_str("&wait=true");
        }
        let answer: serde_json::Value = self.json(Method::POST, &uri, None).await?;
        Ok(answer
            .get("accepted")
            .and_then(|a| a.as_bool())
            .unwrap_or(false))
    }
}

fn peer_path(namespace: &str, name: &str, suffix: &str) -> String {
    format!(
        "/v1/peer/datasets/{}/{}{}",
        query(namespace),
        query(name),
        suffix
    )
}

fn dataset_path(namespace: &str, name: &str, suffix: &str) -> String {
    format!(
        "/v1/datasets/{}/{}{}",
        query(namespace),
        query(name),
        suffix
    )
}

fn query(value: &str) -> String {
    utf8_percent_encode(value, QUERY_VALUE).to_string()
}

fn status_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => ClientError::Status {
            status,
            message: body.error,
            field: body.field,
        },
        Err(_) => ClientError::Status {
            status,
            message: String::from_utf8_lossy(bytes)
                .trim()
                .chars()
                .take(300)
                .collect(),
            field: None,
        },
    }
}

/// Reads a bearer token file (as mounted from a Secret), trimming the trailing newline.
pub fn read_token_file(path: &Path) -> std::io::Result<String> {
    let token = std::fs::read_to_string(path)?;
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("token file {} is empty", path.display()),
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_agent_urls() {
        assert_eq!(
            AgentClient::from_url("unix:///run/a.sock", None)
                .unwrap()
                .endpoint(),
            "unix:///run/a.sock"
        );
        assert_eq!(
            AgentClient::from_url("/run/a.sock", None)
                .unwrap()
                .endpoint(),
            "unix:///run/a.sock"
        );
        assert_eq!(
            AgentClient::from_url("http://10.0.0.1:7070/", Some("t".into()))
                .unwrap()
                .endpoint(),
            "http://10.0.0.1:7070"
        );
        for bad in ["unix://rel.sock", "https://x:1", "ftp://x", "http://x:1/v1"] {
            assert!(
                matches!(
                    AgentClient::from_url(bad, None),
                    Err(ClientError::InvalidUrl { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_never_shows_the_token() {
        let client = AgentClient::from_url("http://h:1", Some("s3cr3t".into())).unwrap();
        assert!(!format!("{client:?}").contains("s3cr3t"));
    }

    #[test]
    fn encodes_query_values() {
        assert_eq!(query("/a b/ü?&x"), "/a%20b/%C3%BC%3F%26x");
    }

    #[test]
    fn error_answers_keep_field() {
        let e = status_error(
            StatusCode::NOT_FOUND,
            br#"{"error":"no dataset ml/x","field":"name"}"#,
        );
        match e {
            ClientError::Status {
                status,
                message,
                field,
            } => {
                assert_eq!(status, StatusCode::NOT_FOUND);
                assert_eq!(message, "no dataset ml/x");
                assert_eq!(field.as_deref(), Some("name"));
            }
            other => panic!("{other:?}"),
        }
    }
}
