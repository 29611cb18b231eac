//! The fields that say where a store is and how to reach it (`uri`,
//! `endpoint`, `region`, `credentialsSecretRef`, `options`), shared by a
//! Dataset's sources and a Migration's target: their CEL rules, written once
//! here and attached to both types, and the Rust twin of those rules.

use std::collections::BTreeMap;

use crate::dataset::SecretReference;
use crate::source_uri::SourceUri;
use crate::validation::{
    FieldErrors, MAX_OPTIONS, MAX_URI_LEN, MSG_CREDENTIALS_SCHEME, MSG_ENDPOINT,
    MSG_ENDPOINT_SCHEME, MSG_OBJECT_NAME, MSG_OPTION_KEY, MSG_REGION, MSG_REGION_SCHEME,
    MSG_URI_DOTDOT, MSG_URI_SCHEME, MSG_URI_SHAPE, MSG_URI_USERINFO, is_dns1123_subdomain,
    is_http_url, is_option_key, is_region,
};
use crate::{FieldErrorKind, Scheme};

/// CEL on `uri`: a scheme Strata reads.
pub(crate) const URI_SCHEME_RULE: &str = "self.matches('^(s3|gs|az|hdfs|http|https|file)://')";
/// CEL on `uri`: a scheme Strata can write to (http(s) servers take no uploads).
pub(crate) const WRITABLE_URI_SCHEME_RULE: &str = "self.matches('^(s3|gs|az|hdfs|file)://')";
/// CEL on `uri`: a bucket, container, namenode or host after the scheme; `file:///` absolute.
pub(crate) const URI_SHAPE_RULE: &str = "!self.matches('^(s3|gs|az|hdfs|http|https|file)://') || self.matches('^((s3|gs|az|hdfs|https?)://[^/?#\\\\s]+|file:///)[^\\\\s]*$')";
/// CEL on `uri`: no `user:password@`.
pub(crate) const URI_USERINFO_RULE: &str = "!self.matches('^[a-z0-9]+://[^/]*@')";
/// CEL on `uri`: no `..` segment.
pub(crate) const URI_DOTDOT_RULE: &str = "!self.matches('/\\\\.\\\\.(/|$)')";
/// CEL on the store object: credentials only for object stores.
pub(crate) const CREDENTIALS_SCHEME_RULE: &str =
    "!has(self.credentialsSecretRef) || self.uri.matches('^(s3|gs|az)://')";
/// CEL on the store object: an endpoint only for object stores.
pub(crate) const ENDPOINT_SCHEME_RULE: &str =
    "!has(self.endpoint) || self.uri.matches('^(s3|gs|az)://')";
/// CEL on the store object: a region only for s3.
pub(crate) const REGION_SCHEME_RULE: &str = "!has(self.region) || self.uri.startsWith('s3://')";
/// CEL on `options`: keys name a client setting, never a credential.
pub(crate) const OPTION_KEYS_RULE: &str = "self.all(k, k.matches('^[A-Za-z0-9_.-]{1,128}$') && !k.matches('(?i)(secret|token|password|passwd|credential|key|sas)'))";

/// A Migration's target must take writes.
pub(crate) const MSG_TARGET_URI_SCHEME: &str = "uri must start with s3://, gs://, az://, hdfs:// or file://: a Migration writes to its target and http(s) stores are read-only; copy to an object store, HDFS or a file:// directory";

/// Which schemes a store's `uri` may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UriSchemes {
    /// Every scheme Strata reads (a Dataset source).
    Readable,
    /// Only schemes Strata writes to (a Migration target): no http(s).
    Writable,
}

impl UriSchemes {
    fn accepts(self, scheme: Scheme) -> bool {
        match self {
            UriSchemes::Readable => true,
            UriSchemes::Writable => scheme.accepts_writes(),
        }
    }

    fn message(self) -> &'static str {
        match self {
            UriSchemes::Readable => MSG_URI_SCHEME,
            UriSchemes::Writable => MSG_TARGET_URI_SCHEME,
        }
    }
}

/// The store fields of a Dataset source or a Migration target, borrowed for checking.
pub(crate) struct StoreFields<'a> {
    pub(crate) uri: &'a str,
    pub(crate) endpoint: Option<&'a str>,
    pub(crate) region: Option<&'a str>,
    pub(crate) credentials_secret_ref: Option<&'a SecretReference>,
    pub(crate) options: &'a BTreeMap<String, String>,
}

impl StoreFields<'_> {
    /// Checks every store rule, naming fields under `at` (`spec.sources[0]`,
    /// `spec.target`). Returns the uri's scheme when it is one Strata knows,
    /// also for an otherwise bad uri, so callers can judge the fields that
    /// depend on it.
    pub(crate) fn check(
        &self,
        errors: &mut FieldErrors,
        at: &str,
        schemes: UriSchemes,
    ) -> Option<Scheme> {
        if self.uri.len() > MAX_URI_LEN {
            errors.push(
                format!("{at}.uri"),
                FieldErrorKind::Invalid,
                format!("uri must be at most {MAX_URI_LEN} characters"),
            );
        }
        let scheme = match SourceUri::parse(self.uri) {
            Ok(uri) => {
                if !schemes.accepts(uri.scheme) {
                    errors.push(
                        format!("{at}.uri"),
                        FieldErrorKind::NotSupported,
                        schemes.message(),
                    );
                }
                Some(uri.scheme)
            }
            // uri_problem names a scheme that is not accepted.
            Err(e) => {
                let (kind, message) = uri_problem(self.uri, schemes);
                errors.push(format!("{at}.uri"), kind, format!("{message} ({e})"));
                // Still judge the scheme-dependent fields when the scheme itself is fine.
                self.uri
                    .split_once("://")
                    .and_then(|(s, _)| Scheme::ALL.into_iter().find(|x| x.as_str() == s))
            }
        };
        if let Some(endpoint) = self.endpoint {
            if !is_http_url(endpoint) || endpoint.len() > 2048 {
                errors.push(
                    format!("{at}.endpoint"),
                    FieldErrorKind::Invalid,
                    MSG_ENDPOINT,
                );
            }
            if scheme.is_some_and(|s| !s.accepts_endpoint()) {
                errors.push(
                    format!("{at}.endpoint"),
                    FieldErrorKind::Forbidden,
                    MSG_ENDPOINT_SCHEME,
                );
            }
        }
        if let Some(region) = self.region {
            if !is_region(region) {
                errors.push(format!("{at}.region"), FieldErrorKind::Invalid, MSG_REGION);
            }
            if scheme.is_some_and(|s| !s.accepts_region()) {
                errors.push(
                    format!("{at}.region"),
                    FieldErrorKind::Forbidden,
                    MSG_REGION_SCHEME,
                );
            }
        }
        if let Some(secret) = self.credentials_secret_ref {
            if !is_dns1123_subdomain(&secret.name) {
                errors.push(
                    format!("{at}.credentialsSecretRef.name"),
                    FieldErrorKind::Invalid,
                    MSG_OBJECT_NAME,
                );
            }
            if scheme.is_some_and(|s| !s.accepts_credentials()) {
                errors.push(
                    format!("{at}.credentialsSecretRef"),
                    FieldErrorKind::Forbidden,
                    MSG_CREDENTIALS_SCHEME,
                );
            }
        }
        if self.options.len() > MAX_OPTIONS {
            errors.push(
                format!("{at}.options"),
                FieldErrorKind::Invalid,
                format!("options must have at most {MAX_OPTIONS} entries"),
            );
        }
        if let Some(key) = self.options.keys().find(|k| !is_option_key(k)) {
            errors.push(
                format!("{at}.options"),
                FieldErrorKind::Invalid,
                format!("{MSG_OPTION_KEY} (offending key: {key:?})"),
            );
        }
        scheme
    }
}

/// Which of the uri rules a bad uri breaks, for a message matching the API server's.
fn uri_problem(uri: &str, schemes: UriSchemes) -> (FieldErrorKind, &'static str) {
    let scheme_ok = uri.split_once("://").is_some_and(|(s, _)| {
        Scheme::ALL
            .into_iter()
            .any(|x| x.as_str() == s && schemes.accepts(x))
    });
    if !scheme_ok {
        (FieldErrorKind::NotSupported, schemes.message())
    } else if uri
        .split_once("://")
        .is_some_and(|(_, rest)| rest.split('/').next().unwrap_or("").contains('@'))
    {
        (FieldErrorKind::Forbidden, MSG_URI_USERINFO)
    } else if uri.split('/').any(|seg| seg == "..") {
        (FieldErrorKind::Invalid, MSG_URI_DOTDOT)
    } else {
        (FieldErrorKind::Invalid, MSG_URI_SHAPE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_hdfs_uri_is_a_bad_shape_not_a_bad_scheme() {
        assert_eq!(
            uri_problem("hdfs:///warehouse", UriSchemes::Readable),
            (FieldErrorKind::Invalid, MSG_URI_SHAPE)
        );
        assert_eq!(
            uri_problem("ftp://host/x", UriSchemes::Readable),
            (FieldErrorKind::NotSupported, MSG_URI_SCHEME)
        );
        assert_eq!(
            uri_problem("https://user:pw@host/x", UriSchemes::Writable),
            (FieldErrorKind::NotSupported, MSG_TARGET_URI_SCHEME)
        );
    }

    #[test]
    fn writable_stores_refuse_http() {
        let options = BTreeMap::new();
        for (uri, refused) in [
            ("https://example.com/files/", true),
            ("http://127.0.0.1:8080/x/", true),
            ("s3://bucket/x/", false),
            ("hdfs://namenode:8020/x/", false),
            ("file:///srv/out", false),
        ] {
            let store = StoreFields {
                uri,
                endpoint: None,
                region: None,
                credentials_secret_ref: None,
                options: &options,
            };
            let mut errors = FieldErrors::default();
            store.check(&mut errors, "spec.target", UriSchemes::Writable);
            assert_eq!(!errors.0.is_empty(), refused, "{uri}: {:?}", errors.0);
            let mut errors = FieldErrors::default();
            store.check(&mut errors, "spec.sources[0]", UriSchemes::Readable);
            assert!(errors.0.is_empty(), "{uri}: {:?}", errors.0);
        }
    }
}
