//! Who is calling the agent's API, and what each caller may do.
//!
//! | caller | how it proves it | may |
//! | --- | --- | --- |
//! | `Local` | reached the unix socket (file mode 0660) | everything: datasets (standalone), volumes (CSI) |
//! | `Peer` | the node secret (`--peer-token-file`) over TCP | read any dataset: list, get, stat, list dir, read, usage; peer block requests and fills |
//! | `Job` | a ServiceAccount token with the Strata audience, checked by a TokenReview | preload, pin, unpin, usage of its own namespace's datasets under a live CachePolicy; the migrations the operator configured for them |
//!
//! Registration (PUT/DELETE of datasets) and volumes are never served over TCP.

use crate::{Error, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the peer token file is read again, so a rotated Secret takes effect
/// without a restart (kubelet updates a mounted Secret within about a minute).
pub const PEER_TOKEN_RELOAD: Duration = Duration::from_secs(5);
/// How long a TokenReview answer is reused. A job token revoked at the API server (its pod
/// deleted) is refused at most this long after.
pub const REVIEW_CACHE_TTL: Duration = Duration::from_secs(30);
/// Reviewed tokens remembered at once; the cache is cleared when it fills.
const REVIEW_CACHE_ENTRIES: usize = 4096;

/// The audience the operator puts in job tokens (and the agent asks the TokenReview for).
pub const DEFAULT_JOB_AUDIENCE: &str = "strata.dev/agent";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The local unix socket.
    Local,
    /// Another agent (the node secret).
    Peer,
    /// A preload/pin Job of `namespace`.
    Job { namespace: String },
}

/// What a request does, for authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `GET /v1/datasets`.
    ListDatasets,
    /// A dataset's summary, stat, directory listing or bytes.
    Read,
    /// `PUT` or `DELETE /v1/datasets/...`.
    Register,
    /// Preload.
    Preload,
    /// Pin or unpin.
    Pin,
    /// Run a migration the operator configured (a Migration's Job).
    Migrate,
    /// Usage (bytes cached, hits, misses).
    Usage,
    /// Acquire, release or list volumes.
    Volumes,
    /// Blocks for another agent (`/v1/peer/...`): the cluster cache.
    PeerBlocks,
}

impl Action {
    fn describe(self) -> &'static str {
        match self {
            Action::ListDatasets => "listing datasets",
            Action::Read => "reading datasets",
            Action::Register => "registering or removing datasets",
            Action::Preload => "preloading",
            Action::Pin => "pinning",
            Action::Migrate => "migrating",
            Action::Usage => "reading usage",
            Action::Volumes => "acquiring or releasing volumes",
            Action::PeerBlocks => "serving blocks to other agents",
        }
    }
}

impl Caller {
    /// Whether this caller may do `action` on a dataset of `namespace` (`None` for routes
    /// that name no dataset). A job's further condition (a live policy) is checked by the
    /// caller of this function, which has the dataset at hand.
    pub fn may(&self, action: Action, namespace: Option<&str>) -> Result<()> {
        let refused = |message: String| Err(Error::Forbidden(message));
        match (self, action) {
            (Caller::Local, _) => Ok(()),
            (_, Action::Register) => refused(
                "datasets are registered by the Strata operator (the strata-datasets Secret, \
                 mounted as --datasets-dir) or over the agent's local unix socket, never over TCP"
                    .into(),
            ),
            (_, Action::Volumes) => refused(
                "volumes are acquired by the CSI plugin over the agent's local unix socket only"
                    .into(),
            ),
            (
                Caller::Peer,
                Action::ListDatasets | Action::Read | Action::Usage | Action::PeerBlocks,
            ) => Ok(()),
            (Caller::Peer, _) => refused(format!(
                "the peer credential does not allow {}",
                action.describe()
            )),
            (
                Caller::Job { namespace: own },
                Action::Preload | Action::Pin | Action::Usage | Action::Migrate,
            ) => match namespace {
                Some(ns) if ns == own => Ok(()),
                _ => refused(format!(
                    "a job credential of namespace {own} may only act on datasets of namespace {own}"
                )),
            },
            (Caller::Job { namespace: own }, _) => refused(format!(
                "a job credential (namespace {own}) allows preload, pin, unpin, usage and migrations only, \
                 not {}",
                action.describe()
            )),
        }
    }
}

/// Checks a job's ServiceAccount token (the Kubernetes TokenReview API in a cluster).
#[async_trait::async_trait]
pub trait TokenReviewer: Send + Sync {
    /// The namespace of the ServiceAccount that holds `token` when the token is valid for
    /// the Strata audience; `Ok(None)` when it is not. `Err` when it could not be checked.
    async fn review(&self, token: &str) -> Result<Option<String>>;
}

/// The node secret that agents present to each other, read again from its file every
/// [`PEER_TOKEN_RELOAD`]. Kept only as a SHA-256 so comparisons take the same time
/// whatever the token's length or first differing byte.
struct PeerToken {
    file: PathBuf,
    state: Mutex<PeerTokenState>,
}

struct PeerTokenState {
    digest: Option<[u8; 32]>,
    loaded_at: Instant,
}

impl PeerToken {
    fn load(file: PathBuf) -> Result<Self> {
        let token = super::client::read_token_file(&file)
            .map_err(|e| Error::io(format!("reading --peer-token-file {}", file.display()), e))?;
        Ok(PeerToken {
            file,
            state: Mutex::new(PeerTokenState {
                digest: Some(digest(&token)),
                loaded_at: Instant::now(),
            }),
        })
    }

    fn current(&self) -> Option<[u8; 32]> {
        let mut state = self.state.lock().expect("peer token");
        if state.loaded_at.elapsed() >= PEER_TOKEN_RELOAD {
            state.loaded_at = Instant::now();
            match super::client::read_token_file(&self.file) {
                Ok(token) => state.digest = Some(digest(&token)),
                // A Secret being swapped may be briefly unreadable: keep the last token.
                Err(e) => {
                    tracing::warn!(file = %self.file.display(), error = %e, "cannot read the peer token file again; keeping the last one")
                }
            }
        }
        state.digest
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Authenticates TCP callers: the peer token, then (when configured) a TokenReview.
pub struct TcpAuth {
    peer: Option<PeerToken>,
    jobs: Option<Arc<dyn TokenReviewer>>,
    reviewed: Mutex<HashMap<[u8; 32], Reviewed>>,
}

/// A TokenReview answer (the job's namespace, or refused) and when it was given.
type Reviewed = (Instant, Option<String>);

impl TcpAuth {
    /// `peer_token_file`: the node secret; `jobs`: how job tokens are checked (none: job
    /// tokens are refused).
    pub fn new(
        peer_token_file: Option<PathBuf>,
        jobs: Option<Arc<dyn TokenReviewer>>,
    ) -> Result<Self> {
        Ok(TcpAuth {
            peer: peer_token_file.map(PeerToken::load).transpose()?,
            jobs,
            reviewed: Mutex::new(HashMap::new()),
        })
    }

    /// The caller behind an `Authorization` header: 401 without a bearer token, 403 for a
    /// token that is neither the peer token nor a valid job token.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Caller> {
        let presented = header
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Error::Unauthorized)?;
        let presented_digest = digest(presented);
        if let Some(expected) = self.peer.as_ref().and_then(PeerToken::current)
            && same(&presented_digest, &expected)
        {
            return Ok(Caller::Peer);
        }
        let Some(reviewer) = &self.jobs else {
            return Err(Error::Forbidden("the bearer token was refused".into()));
        };
        if let Some(known) = self.cached(&presented_digest) {
            return known;
        }
        let answer = reviewer.review(presented).await.map_err(|e| {
            Error::Unavailable(format!(
                "cannot check the job credential now ({e}); retry shortly"
            ))
        })?;
        let mut reviewed = self.reviewed.lock().expect("reviewed tokens");
        if reviewed.len() >= REVIEW_CACHE_ENTRIES {
            reviewed.clear();
        }
        reviewed.insert(presented_digest, (Instant::now(), answer.clone()));
        drop(reviewed);
        Self::caller_of(answer)
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<Result<Caller>> {
        let reviewed = self.reviewed.lock().expect("reviewed tokens");
        let (at, answer) = reviewed.get(digest)?;
        (at.elapsed() < REVIEW_CACHE_TTL).then(|| Self::caller_of(answer.clone()))
    }

    fn caller_of(answer: Option<String>) -> Result<Caller> {
        match answer {
            Some(namespace) => Ok(Caller::Job { namespace }),
            None => Err(Error::Forbidden("the bearer token was refused".into())),
        }
    }
}

/// The namespace of a ServiceAccount user name (`system:serviceaccount:<ns>:<name>`).
pub fn service_account_namespace(username: &str) -> Option<&str> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains(':')).then_some(namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Option<&'static str>);

    #[async_trait::async_trait]
    impl TokenReviewer for Fixed {
        async fn review(&self, token: &str) -> Result<Option<String>> {
            Ok((token == "job-jwt")
                .then(|| self.0.map(str::to_string))
                .flatten())
        }
    }

    fn auth(dir: &tempfile::TempDir, reviewer: Option<&'static str>) -> TcpAuth {
        let file = dir.path().join("peer");
        std::fs::write(&file, "peer-secret\n").unwrap();
        let jobs = reviewer.map(|ns| Arc::new(Fixed(Some(ns))) as Arc<dyn TokenReviewer>);
        TcpAuth::new(Some(file), jobs).unwrap()
    }

    #[tokio::test]
    async fn callers_are_told_apart_by_their_token() {
        let dir = tempfile::tempdir().unwrap();
        let auth = auth(&dir, Some("team-a"));
        assert!(matches!(
            auth.authenticate(None).await,
            Err(Error::Unauthorized)
        ));
        assert!(matches!(
            auth.authenticate(Some("Basic abc")).await,
            Err(Error::Unauthorized)
        ));
        assert_eq!(
            auth.authenticate(Some("Bearer peer-secret")).await.unwrap(),
            Caller::Peer
        );
        assert_eq!(
            auth.authenticate(Some("Bearer job-jwt")).await.unwrap(),
            Caller::Job {
                namespace: "team-a".into()
            }
        );
        assert!(matches!(
            auth.authenticate(Some("Bearer peer-secre")).await,
            Err(Error::Forbidden(_))
        ));
        let no_jobs = self::auth(&dir, None);
        assert!(matches!(
            no_jobs.authenticate(Some("Bearer job-jwt")).await,
            Err(Error::Forbidden(_))
        ));
    }

    #[test]
    fn each_caller_may_do_its_own_job_only() {
        let job = Caller::Job {
            namespace: "a".into(),
        };
        for action in [Action::Preload, Action::Pin, Action::Usage] {
            assert!(job.may(action, Some("a")).is_ok(), "{action:?}");
            assert!(job.may(action, Some("b")).is_err(), "{action:?}");
        }
        for action in [
            Action::ListDatasets,
            Action::Read,
            Action::Register,
            Action::Volumes,
            Action::PeerBlocks,
        ] {
            assert!(job.may(action, Some("a")).is_err(), "{action:?}");
        }
        for action in [
            Action::ListDatasets,
            Action::Read,
            Action::Usage,
            Action::PeerBlocks,
        ] {
            assert!(Caller::Peer.may(action, Some("a")).is_ok(), "{action:?}");
        }
        for action in [
            Action::Register,
            Action::Volumes,
            Action::Preload,
            Action::Pin,
        ] {
            assert!(Caller::Peer.may(action, Some("a")).is_err(), "{action:?}");
        }
        let err = Caller::Peer
            .may(Action::Register, Some("a"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("strata-datasets"), "{err}");
        assert!(Caller::Local.may(Action::Register, None).is_ok());
    }

    #[test]
    fn service_account_names_give_their_namespace() {
        assert_eq!(
            service_account_namespace("system:serviceaccount:ml:default"),
            Some("ml")
        );
        for other in [
            "system:node:n1",
            "admin",
            "system:serviceaccount::x",
            "system:serviceaccount:ml:",
            "system:serviceaccount:ml:a:b",
        ] {
            assert_eq!(service_account_namespace(other), None, "{other}");
        }
    }

    #[tokio::test]
    async fn a_rotated_peer_token_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let auth = auth(&dir, None);
        std::fs::write(dir.path().join("peer"), "rotated\n").unwrap();
        // Force the reload instead of waiting PEER_TOKEN_RELOAD.
        auth.peer.as_ref().unwrap().state.lock().unwrap().loaded_at =
            Instant::now().checked_sub(PEER_TOKEN_RELOAD).unwrap();
        assert!(auth.authenticate(Some("Bearer peer-secret")).await.is_err());
        assert_eq!(
            auth.authenticate(Some("Bearer rotated")).await.unwrap(),
            Caller::Peer
        );
    }
}
