//! Checking a source from the operator: can it be reached, and (for object
//! stores with credentials) how many files and bytes does it hold. Results are
//! cached so node reports, which trigger many reconciles, do not re-list.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use object_store::path::Path as StorePath;
use strata_crds::{Scheme, Source, SourceUri};
use strata_store::{FailureKind, Tuning};
use strata_wire::scrub::credential_values;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::agent_config;
use crate::conditions::reason;
use crate::credentials::AgentCredentials;

/// How long a failed check is trusted before it is tried again.
const FAILURE_TTL: Duration = Duration::from_secs(20);

/// What checking one source found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceCheck {
    /// The source answered. Sizes are known when the operator could list it
    /// (object stores with credentials) within the listing timeout.
    Reachable {
        /// Total bytes under the prefix.
        total_bytes: Option<u64>,
        /// Objects under the prefix.
        files: Option<u64>,
        /// Set when the listing was cut short or not attempted.
        note: Option<String>,
    },
    /// The source lives on the nodes (file://); only the agents can check it.
    NodeLocal,
    /// The source did not answer or refused; `reason` is a condition reason.
    Failed {
        /// `SourceUnreachable` or `AccessDenied`.
        reason: &'static str,
        /// Scrubbed of credentials and signed URLs.
        message: String,
    },
}

/// Timeouts of a check.
#[derive(Clone, Copy, Debug)]
pub struct CheckLimits {
    /// Connect / first answer.
    pub check_timeout: Duration,
    /// Whole listing.
    pub listing_timeout: Duration,
    /// How long a successful result is reused.
    pub success_ttl: Duration,
}

type CachedCheck = (Instant, Timestamp, SourceCheck);

/// Cached check results, keyed by everything that affects the answer
/// (uri, endpoint, region, options and a hash of the credentials).
#[derive(Clone, Default)]
pub struct SourceChecker {
    cache: Arc<Mutex<HashMap<u64, CachedCheck>>>,
}

impl std::fmt::Debug for SourceChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SourceChecker")
    }
}

fn cache_key(source: &Source, creds: Option<&AgentCredentials>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        &source.uri,
        &source.endpoint,
        &source.region,
        &source.options,
    )
        .hash(&mut h);
    if let Some(c) = creds {
        (
            &c.access_key_id,
            &c.secret_access_key,
            &c.session_token,
            &c.service_account_key,
            &c.account_name,
            &c.account_key,
            &c.token,
        )
            .hash(&mut h);
    }
    h.finish()
}

impl SourceChecker {
    /// Checks `source`, reusing a recent result; returns when it was checked.
    pub async fn check(
        &self,
        source: &Source,
        creds: Option<&AgentCredentials>,
        limits: CheckLimits,
    ) -> (Timestamp, SourceCheck) {
        let key = cache_key(source, creds);
        if let Some((at, when, result)) = self.lock().get(&key).cloned() {
            let ttl = match result {
                SourceCheck::Failed { .. } => FAILURE_TTL,
                _ => limits.success_ttl,
            };
            if at.elapsed() < ttl {
                return (when, result);
            }
        }
        let result = check_uncached(source, creds, limits).await;
        let when = Timestamp::now();
        self.lock()
            .insert(key, (Instant::now(), when, result.clone()));
        (when, result)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, CachedCheck>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn check_uncached(
    source: &Source,
    creds: Option<&AgentCredentials>,
    limits: CheckLimits,
) -> SourceCheck {
    let uri = match SourceUri::parse(&source.uri) {
        Ok(uri) => uri,
        Err(e) => {
            return SourceCheck::Failed {
                reason: reason::SOURCE_UNREACHABLE,
                message: e.to_string(),
            };
        }
    };
    if uri.scheme == Scheme::File {
        return SourceCheck::NodeLocal;
    }
    match (uri.scheme.is_object_store(), creds) {
        (true, Some(creds)) => list(source, creds, limits).await,
        // HDFS takes no credentials here (simple authentication): listed like a bucket.
        _ if uri.scheme == Scheme::Hdfs => list(source, &AgentCredentials::default(), limits).await,
        _ => {
            let (host, port) = connect_target(source, &uri);
            match timeout(
                limits.check_timeout,
                TcpStream::connect((host.as_str(), port)),
            )
            .await
            {
                Ok(Ok(_)) => SourceCheck::Reachable {
                    total_bytes: None,
                    files: None,
                    note: Some(if uri.scheme.is_object_store() {
                        "not listed by the operator (no credentialsSecretRef); the agents list it with the node's credentials".into()
                    } else {
                        "http(s) sources are not listed by the operator".into()
                    }),
                },
                Ok(Err(e)) => SourceCheck::Failed {
                    reason: reason::SOURCE_UNREACHABLE,
                    message: format!(
                        "source {}: cannot connect to {host}:{port}: {e}",
                        source.name
                    ),
                },
                Err(_) => SourceCheck::Failed {
                    reason: reason::SOURCE_UNREACHABLE,
                    message: format!(
                        "source {}: no connection to {host}:{port} within {:?}",
                        source.name, limits.check_timeout
                    ),
                },
            }
        }
    }
}

/// Host and port the source's data comes from.
fn connect_target(source: &Source, uri: &SourceUri) -> (String, u16) {
    let from_url = |url: &str| -> Option<(String, u16)> {
        let (scheme, rest) = url.split_once("://")?;
        let authority = rest.split(['/', '?', '#']).next()?;
        let default_port = if scheme == "https" { 443 } else { 80 };
        match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => Some((
                host.trim_matches(['[', ']']).to_string(),
                port.parse().ok()?,
            )),
            _ => Some((authority.trim_matches(['[', ']']).to_string(), default_port)),
        }
    };
    if let Some(target) = source.endpoint.as_deref().and_then(from_url) {
        return target;
    }
    match uri.scheme {
        Scheme::S3 => (
            format!(
                "s3.{}.amazonaws.com",
                source.region.as_deref().unwrap_or("us-east-1")
            ),
            443,
        ),
        Scheme::Gcs => ("storage.googleapis.com".into(), 443),
        Scheme::Azure => ("blob.core.windows.net".into(), 443),
        Scheme::Http | Scheme::Https | Scheme::File => {
            from_url(&source.uri).unwrap_or_else(|| (uri.authority.clone(), 80))
        }
        Scheme::Hdfs => match uri.authority.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), port.parse().unwrap_or(8020)),
            None => (uri.authority.clone(), 8020),
        },
    }
}

async fn list(source: &Source, creds: &AgentCredentials, limits: CheckLimits) -> SourceCheck {
    let scrub = |message: String| scrub(&message, creds);
    let config = agent_config::source_config(source, Some(creds));
    let built = match strata_store::build(&config, &Tuning::check(limits.check_timeout)) {
        Ok(built) => built,
        Err(e) => {
            return SourceCheck::Failed {
                reason: reason::SOURCE_UNREACHABLE,
                message: scrub(e.to_string()),
            };
        }
    };
    let store = built.store;
    let prefix = built.prefix.trim_matches('/');
    let prefix = (!prefix.is_empty()).then(|| StorePath::from(prefix));
    // Fused: an empty prefix ends the stream at the first poll, and S3's listing
    // stream panics when polled again after its end.
    let mut stream = store.list(prefix.as_ref()).fuse();
    let started = Instant::now();
    let (mut bytes, mut files) = (0u64, 0u64);
    match timeout(limits.check_timeout, stream.next()).await {
        Err(_) => {
            return SourceCheck::Failed {
                reason: reason::SOURCE_UNREACHABLE,
                message: format!(
                    "source {}: no answer to a listing within {:?}",
                    source.name, limits.check_timeout
                ),
            };
        }
        Ok(None) => {}
        Ok(Some(Err(e))) => {
            return SourceCheck::Failed {
                reason: classify(&e),
                message: scrub(format!("source {}: listing failed: {e}", source.name)),
            };
        }
        Ok(Some(Ok(meta))) => {
            bytes += meta.size;
            files += 1;
        }
    }
    let rest = limits.listing_timeout.saturating_sub(started.elapsed());
    let outcome = timeout(rest, async {
        while let Some(item) = stream.next().await {
            let meta = item?;
            bytes += meta.size;
            files += 1;
        }
        Ok::<_, object_store::Error>(())
    })
    .await;
    match outcome {
        Ok(Ok(())) => SourceCheck::Reachable {
            total_bytes: Some(bytes),
            files: Some(files),
            note: None,
        },
        Ok(Err(e)) => SourceCheck::Failed {
            reason: classify(&e),
            message: scrub(format!("source {}: listing failed: {e}", source.name)),
        },
        Err(_) => SourceCheck::Reachable {
            total_bytes: None,
            files: None,
            note: Some(format!(
                "listing did not finish within {:?} ({files} objects so far); raise --listing-timeout for the size",
                limits.listing_timeout
            )),
        },
    }
}

/// Whether the store refused the credentials (as opposed to not answering), by the
/// classification the agents use (`strata_store::classify`).
fn classify(e: &object_store::Error) -> &'static str {
    match strata_store::classify(e) {
        FailureKind::PermissionDenied => reason::ACCESS_DENIED,
        _ => reason::SOURCE_UNREACHABLE,
    }
}

/// Removes what must never reach a status or log: credential values, signed URLs'
/// query strings, `user:password@`, signature and token parameters (the scrubber the
/// engine uses, `strata_wire::scrub`), and bounds the message for a status field.
pub fn scrub(message: &str, creds: &AgentCredentials) -> String {
    let mut out = strata_wire::scrub::scrub(message, &credential_values(creds));
    const MAX: usize = 600;
    if out.len() > MAX {
        let mut cut = MAX;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn source(uri: &str, endpoint: Option<&str>) -> Source {
        Source {
            name: "train".into(),
            uri: uri.into(),
            mount_path: "/".into(),
            endpoint: endpoint.map(Into::into),
            region: None,
            credentials_secret_ref: None,
            write_mode: None,
            read_only: None,
            options: BTreeMap::new(),
        }
    }

    const LIMITS: CheckLimits = CheckLimits {
        check_timeout: Duration::from_secs(2),
        listing_timeout: Duration::from_secs(5),
        success_ttl: Duration::from_secs(60),
    };

    #[test]
    fn scrub_removes_signatures_and_secrets() {
        let creds = AgentCredentials {
            secret_access_key: Some("verysecret".into()),
            ..Default::default()
        };
        let out = scrub(
            "GET http://h/b/k?X-Amz-Signature=abc failed; key verysecret",
            &creds,
        );
        assert_eq!(out, "GET http://h/b/k?<redacted> failed; key <redacted>");
        // What the operator's own copy used to miss: passwords in URLs, signature and token
        // parameters outside a URL, authorization headers.
        let out = scrub(
            "listing https://user:pw-77@host/x failed: Signature=deadbeef, token=tok-55, Authorization: Bearer abc-99",
            &creds,
        );
        for leaked in ["pw-77", "deadbeef", "tok-55", "abc-99"] {
            assert!(!out.contains(leaked), "{leaked} leaked in {out}");
        }
    }

    #[test]
    fn a_port_number_is_not_an_access_denial() {
        let refused = object_store::Error::Generic {
            store: "S3",
            source: "Error performing GET http://127.0.0.1:40313/bucket: error sending request"
                .into(),
        };
        assert_eq!(classify(&refused), reason::SOURCE_UNREACHABLE);
        let forbidden = object_store::Error::Generic {
            store: "S3",
            source: "Server returned non-2xx status code: 403 Forbidden: <Code>AccessDenied</Code>"
                .into(),
        };
        assert_eq!(classify(&forbidden), reason::ACCESS_DENIED);
    }

    #[test]
    fn connect_targets() {
        let s = source("s3://b/p", Some("http://127.0.0.1:9000"));
        let uri = SourceUri::parse(&s.uri).unwrap();
        assert_eq!(connect_target(&s, &uri), ("127.0.0.1".into(), 9000));
        let s = source("https://example.com/data/", None);
        let uri = SourceUri::parse(&s.uri).unwrap();
        assert_eq!(connect_target(&s, &uri), ("example.com".into(), 443));
        let s = source("s3://b/p", None);
        let uri = SourceUri::parse(&s.uri).unwrap();
        assert_eq!(connect_target(&s, &uri).0, "s3.us-east-1.amazonaws.com");
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_and_an_open_one_reachable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let checker = SourceChecker::default();
        let ok = checker
            .check(
                &source(&format!("http://{open}/files/"), None),
                None,
                LIMITS,
            )
            .await
            .1;
        assert!(matches!(ok, SourceCheck::Reachable { .. }), "{ok:?}");
        let bad = checker
            .check(
                &source(&format!("http://{closed}/files/"), None),
                None,
                LIMITS,
            )
            .await
            .1;
        assert!(
            matches!(
                bad,
                SourceCheck::Failed {
                    reason: reason::SOURCE_UNREACHABLE,
                    ..
                }
            ),
            "{bad:?}"
        );
        let local = checker
            .check(&source("file:///data", None), None, LIMITS)
            .await
            .1;
        assert_eq!(local, SourceCheck::NodeLocal);
    }
}
