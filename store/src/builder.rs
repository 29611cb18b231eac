//! A source configuration to an object-store client.

use std::sync::Arc;
use std::time::Duration;

use hdfs_native_object_store::HdfsObjectStoreBuilder;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::http::HttpBuilder;
use object_store::list::PaginatedListStore;
use object_store::local::LocalFileSystem;
use object_store::{BackoffConfig, ClientConfigKey, ClientOptions, ObjectStore, RetryConfig};
use percent_encoding::percent_decode_str;
use strata_wire::config::SourceConfig;
use strata_wire::scrub::{credential_values, scrub};

use crate::StoreError;

/// Retries per request on transient errors when the source does not set `maxRetries`.
pub const DEFAULT_MAX_RETRIES: usize = 3;

/// Whether the process's own `AWS_*`, `GOOGLE_*` and `AZURE_*` variables fill in what the
/// source leaves unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ambient {
    /// Yes: an agent reading a source "with the node's credentials".
    Environment,
    /// No: the operator checks a tenant's source with that source's Secret only, never with
    /// its own identity.
    Ignored,
}

/// How a store's requests time out and retry, and whether the environment applies. Options
/// of the source (`timeout`, `connect_timeout`, ...) still override the timeouts.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Time for a whole request.
    pub request_timeout: Duration,
    /// Retries of transient failures.
    pub retry: RetryConfig,
    /// Whether the process environment fills in credentials and settings.
    pub ambient: Ambient,
}

impl Tuning {
    /// The engine's reads: patient (a large ranged GET over a slow link), retried with
    /// backoff `max_retries` times, with the node's environment.
    pub fn reads(max_retries: usize) -> Self {
        Tuning {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(120),
            retry: RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(5),
                    base: 2.0,
                },
                max_retries,
                retry_timeout: Duration::from_secs(60),
            },
            ambient: Ambient::Environment,
        }
    }

    /// A quick check (the operator's reachability probe): every step bounded by `timeout`,
    /// one retry, no ambient identity.
    pub fn check(timeout: Duration) -> Self {
        Tuning {
            connect_timeout: timeout,
            request_timeout: timeout,
            retry: RetryConfig {
                max_retries: 1,
                retry_timeout: timeout,
                ..RetryConfig::default()
            },
            ambient: Ambient::Ignored,
        }
    }
}

/// A built store and where the source's keys start in it.
#[derive(Debug, Clone)]
pub struct BuiltStore {
    /// The client.
    pub store: Arc<dyn ObjectStore>,
    /// The key prefix of the source ("" or "a/b/"); keys are relative to it.
    pub prefix: String,
    /// The same client as a lister of one directory level page by page, where the store
    /// has one (S3, GCS, Azure); `None` for local directories and HTTP (WebDAV), whose
    /// stores answer a directory level in one piece.
    pub pages: Option<ListPages>,
}

/// One directory level, page by page: `object_store`'s `list_with_delimiter` collects every
/// page before it returns, so a directory of a million objects would be held whole.
#[derive(Clone)]
pub struct ListPages {
    /// The client.
    pub store: Arc<dyn PaginatedListStore>,
    /// Keys asked for per page. S3 answers at most 1,000 and some S3 servers fewer unless
    /// asked (moto: 100); GCS and Azure are left to their defaults (1,000 and 5,000).
    pub max_keys: Option<usize>,
}

impl std::fmt::Debug for ListPages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListPages")
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

/// Keys per page asked of S3 servers: the most S3 itself answers.
pub const S3_PAGE_KEYS: usize = 1000;

/// The directory of a local source URI (`/data` or `file:///data`), `None` otherwise.
pub fn local_dir(uri: &str) -> Option<&str> {
    let uri = uri.trim();
    (uri.starts_with('/') || uri.starts_with("file://"))
        .then(|| uri.strip_prefix("file://").unwrap_or(uri))
}

/// Builds the client of one source. Nothing is contacted yet.
///
/// - `endpoint` points any object store at another server (MinIO, SeaweedFS, fake-gcs-server,
///   Azurite with the account in the path: `http://127.0.0.1:10000/devstoreaccount1`); an
///   `http://` endpoint allows plain HTTP for it.
/// - Credentials: S3 access key, secret and session token; a GCS service-account key or
///   bearer token; an Azure account name with its key or a SAS token (the query string, with
///   or without its leading `?`).
/// - `options` are `object_store` keys of the source's kind or of its HTTP client; any other
///   key is refused with the source and field named, so a typo is not silently ignored.
pub fn build(cfg: &SourceConfig, tuning: &Tuning) -> Result<BuiltStore, StoreError> {
    let fail = |field: &str, message: String| StoreError::new(&cfg.name, field, message);
    let secrets = cfg
        .credentials
        .as_ref()
        .map(credential_values)
        .unwrap_or_default();
    let wrap = |e: object_store::Error| fail("uri", scrub(&e.to_string(), &secrets));
    let uri = cfg.uri.trim();
    if let Some(dir) = local_dir(uri) {
        let meta = std::fs::metadata(dir)
            .map_err(|e| fail("uri", format!("local directory {dir:?}: {e}")))?;
        if !meta.is_dir() {
            return Err(fail("uri", format!("{dir:?} is not a directory")));
        }
        let store = LocalFileSystem::new_with_prefix(dir).map_err(wrap)?;
        return Ok(BuiltStore {
            store: Arc::new(store),
            prefix: String::new(),
            pages: None,
        });
    }
    let Some((scheme, bucket, prefix)) = split_uri(uri) else {
        return Err(fail(
            "uri",
            format!(
                "{:?} has no scheme; use s3://, gs://, az://, hdfs://, http(s):// or file://",
                scrub(uri, &secrets)
            ),
        ));
    };
    let endpoint = cfg.endpoint.as_deref().map(str::trim);
    let plain_http = scheme == "http" || endpoint.is_some_and(|e| e.starts_with("http://"));
    let client = client_options(cfg, tuning, plain_http);
    let creds = cfg.credentials.clone().unwrap_or_default();
    let mut store_options = Vec::new();
    for (key, value) in &cfg.options {
        if key.parse::<ClientConfigKey>().is_err() {
            store_options.push((key.as_str(), value.as_str()));
        }
    }
    let unknown = |key: &str| {
        fail(
            "options",
            format!(
                "unknown option {key:?} for a {scheme}:// source; use an object_store key of \
                 this kind of source or of its HTTP client"
            ),
        )
    };
    let env = tuning.ambient == Ambient::Environment;
    // Each client as an object store and as a paged lister: one client, two views.
    fn both<S: ObjectStore + PaginatedListStore>(
        store: S,
        max_keys: Option<usize>,
    ) -> (Arc<dyn ObjectStore>, Option<ListPages>) {
        let store = Arc::new(store);
        let pages = ListPages {
            store: store.clone(),
            max_keys,
        };
        (store, Some(pages))
    }
    let (store, pages) = match scheme {
        "s3" | "s3a" => {
            if bucket.is_empty() {
                return Err(fail("uri", "s3:// URI needs a bucket name".into()));
            }
            let mut b = if env {
                AmazonS3Builder::from_env()
            } else {
                AmazonS3Builder::new()
            }
            .with_bucket_name(bucket)
            .with_retry(tuning.retry.clone())
            .with_client_options(client);
            if let Some(region) = &cfg.region {
                b = b.with_region(region);
            }
            if let Some(ep) = endpoint {
                // Custom endpoints (MinIO, SeaweedFS, Ceph) mostly want path-style
                // addressing; set option virtual_hosted_style_request=true otherwise.
                b = b.with_endpoint(ep).with_virtual_hosted_style_request(false);
            }
            if let Some(k) = &creds.access_key_id {
                b = b.with_access_key_id(k);
            }
            if let Some(s) = &creds.secret_access_key {
                b = b.with_secret_access_key(s);
            }
            if let Some(t) = &creds.session_token {
                b = b.with_token(t);
            }
            for (k, v) in store_options {
                let key: AmazonS3ConfigKey = k.parse().map_err(|_| unknown(k))?;
                b = b.with_config(key, v);
            }
            both(b.build().map_err(wrap)?, Some(S3_PAGE_KEYS))
        }
        "gs" | "gcs" => {
            let mut b = if env {
                GoogleCloudStorageBuilder::from_env()
            } else {
                GoogleCloudStorageBuilder::new()
            }
            .with_bucket_name(bucket)
            .with_retry(tuning.retry.clone())
            .with_client_options(client);
            if let Some(ep) = endpoint {
                b = b.with_base_url(ep);
            }
            if let Some(k) = &creds.service_account_key {
                b = b.with_service_account_key(k);
            }
            if let Some(t) = &creds.token {
                b = b.with_bearer_token(t);
            }
            for (k, v) in store_options {
                let key: GoogleConfigKey = k.parse().map_err(|_| unknown(k))?;
                b = b.with_config(key, v);
            }
            both(b.build().map_err(wrap)?, None)
        }
        "az" | "azure" | "abfs" | "abfss" => {
            let mut b = if env {
                MicrosoftAzureBuilder::from_env()
            } else {
                MicrosoftAzureBuilder::new()
            }
            .with_container_name(bucket)
            .with_retry(tuning.retry.clone())
            .with_client_options(client);
            if let Some(a) = &creds.account_name {
                b = b.with_account(a);
            }
            if let Some(k) = &creds.account_key {
                b = b.with_access_key(k);
            }
            if let Some(t) = &creds.token {
                // A SAS token is a query string the service signs: it goes on every URL,
                // not in an Authorization header (which would take an Entra ID token).
                b = b.with_sas_authorization(sas_query_pairs(t));
            }
            if let Some(ep) = endpoint {
                b = b.with_endpoint(ep.to_string());
            }
            for (k, v) in store_options {
                let key: AzureConfigKey = k.parse().map_err(|_| unknown(k))?;
                b = b.with_config(key, v);
            }
            both(b.build().map_err(wrap)?, None)
        }
        "hdfs" => {
            // Options are Hadoop client settings (`dfs.*`, e.g. an HA nameservice's
            // `dfs.ha.namenodes.<ns>` and `dfs.namenode.rpc-address.<ns>.<nn>`); the
            // HTTP client's keys mean nothing to the HDFS RPC client.
            if let Some(key) = cfg
                .options
                .keys()
                .find(|k| k.parse::<ClientConfigKey>().is_ok())
            {
                return Err(fail(
                    "options",
                    format!(
                        "{key:?} is an HTTP client option; an hdfs:// source takes Hadoop \
                         client settings (dfs.*) only"
                    ),
                ));
            }
            let store = HdfsObjectStoreBuilder::new()
                .with_url(format!("hdfs://{bucket}"))
                .with_config(cfg.options.iter().map(|(k, v)| (k.clone(), v.clone())))
                .build()
                .map_err(wrap)?;
            (Arc::new(store) as Arc<dyn ObjectStore>, None)
        }
        "http" | "https" => {
            if let Some((key, _)) = store_options.first() {
                return Err(unknown(key));
            }
            // The store sits at the server's root and the URI's path is the key prefix:
            // object_store's HTTP store names listed objects by their path from the root,
            // so a base URL with a path would list `ds/a` and then fetch `/ds/ds/a`.
            let b = HttpBuilder::new()
                .with_url(format!("{scheme}://{bucket}"))
                .with_retry(tuning.retry.clone())
                .with_client_options(client);
            let path = percent_decode_str(prefix)
                .decode_utf8()
                .map_err(|_| fail("uri", "the path is not UTF-8 once percent-decoded".into()))?;
            return Ok(BuiltStore {
                store: Arc::new(b.build().map_err(wrap)?),
                prefix: normalize_prefix(&path),
                pages: None,
            });
        }
        other => {
            return Err(fail(
                "uri",
                format!(
                    "unknown scheme {other:?}; use s3://, gs://, az://, hdfs://, http(s)://, \
                     file:// or an absolute path"
                ),
            ));
        }
    };
    Ok(BuiltStore {
        store,
        prefix: normalize_prefix(prefix),
        pages,
    })
}

/// The HTTP client's settings: the tuning's timeouts, plain HTTP when the source's address
/// is `http://`, then the source's own client options.
fn client_options(cfg: &SourceConfig, tuning: &Tuning, plain_http: bool) -> ClientOptions {
    let mut opts = ClientOptions::new()
        .with_connect_timeout(tuning.connect_timeout)
        .with_timeout(tuning.request_timeout)
        .with_allow_http(plain_http);
    for (k, v) in &cfg.options {
        if let Ok(key) = k.parse::<ClientConfigKey>() {
            opts = opts.with_config(key, v.clone());
        }
    }
    opts
}

/// `sv=...&sig=...` (or with a leading `?`, as the portal copies it) to its pairs, values kept
/// percent-encoded as the service signed them.
fn sas_query_pairs(token: &str) -> Vec<(String, String)> {
    token
        .trim()
        .trim_start_matches('?')
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Splits "scheme://bucket/prefix" into (scheme, bucket, prefix).
fn split_uri(uri: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = uri.split_once("://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    Some((scheme, bucket, prefix))
}

/// "a/b" and "/a/b/" to "a/b/"; "" and "/" to "".
pub fn normalize_prefix(p: &str) -> String {
    let t = p.trim_matches('/');
    if t.is_empty() {
        String::new()
    } else {
        format!("{t}/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(uri: &str) -> SourceConfig {
        SourceConfig {
            name: "corpus".into(),
            uri: uri.into(),
            ..SourceConfig::default()
        }
    }

    #[test]
    fn refuses_unknown_schemes_and_options_naming_the_field() {
        let e = build(&source("ftp://host/x"), &Tuning::reads(3)).unwrap_err();
        assert_eq!(e.field, "source \"corpus\" uri");
        assert!(e.message.contains("unknown scheme \"ftp\""), "{e}");
        let e = build(&source("bucket/x"), &Tuning::reads(3)).unwrap_err();
        assert!(e.message.contains("has no scheme"), "{e}");
        let mut cfg = source("s3://bucket/x");
        cfg.options
            .insert("virtual_hosted_styl".into(), "true".into());
        let e = build(&cfg, &Tuning::reads(3)).unwrap_err();
        assert_eq!(e.field, "source \"corpus\" options");
        assert!(e.message.contains("\"virtual_hosted_styl\""), "{e}");
        let mut cfg = source("https://example.com/data/");
        cfg.options.insert("bucket".into(), "x".into());
        assert!(build(&cfg, &Tuning::reads(3)).is_err());
    }

    #[test]
    fn client_options_of_any_kind_are_taken() {
        let mut cfg = source("s3://bucket/x");
        cfg.options.insert("timeout".into(), "30s".into());
        cfg.options
            .insert("virtual_hosted_style_request".into(), "true".into());
        cfg.region = Some("eu-west-1".into());
        let built = build(&cfg, &Tuning::check(Duration::from_secs(1))).unwrap();
        assert_eq!(built.prefix, "x/");
    }

    #[test]
    fn http_sources_are_stores_at_the_root_with_the_path_as_prefix() {
        let built = build(
            &source("http://127.0.0.1:8080/data%20sets/v1/"),
            &Tuning::reads(3),
        )
        .unwrap();
        assert_eq!(built.prefix, "data sets/v1/");
        assert_eq!(built.store.to_string(), "HttpStore");
        let built = build(&source("https://example.com"), &Tuning::reads(3)).unwrap();
        assert_eq!(built.prefix, "");
    }

    #[test]
    fn prefixes_and_local_dirs() {
        assert_eq!(normalize_prefix("/a/b/"), "a/b/");
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(local_dir("file:///data"), Some("/data"));
        assert_eq!(local_dir(" /data "), Some("/data"));
        assert_eq!(local_dir("s3://b/"), None);
        let e = build(&source("/definitely/not/here"), &Tuning::reads(3)).unwrap_err();
        assert!(e.message.contains("local directory"), "{e}");
    }

    #[test]
    fn sas_tokens_split_with_or_without_the_question_mark() {
        let want = vec![
            ("sv".to_string(), "2021-08-06".to_string()),
            ("sig".to_string(), "a%2Bb".to_string()),
        ];
        assert_eq!(sas_query_pairs("?sv=2021-08-06&sig=a%2Bb"), want);
        assert_eq!(sas_query_pairs("sv=2021-08-06&sig=a%2Bb\n"), want);
    }

    #[test]
    fn a_bad_uri_error_carries_no_credential() {
        let mut cfg = source("s3://user:hunter22@/x");
        cfg.credentials = Some(strata_wire::config::Credentials {
            secret_access_key: Some("hunter22".into()),
            ..Default::default()
        });
        let e = build(&cfg, &Tuning::reads(3)).unwrap_err();
        assert!(!e.to_string().contains("hunter22"), "{e}");
    }
}
