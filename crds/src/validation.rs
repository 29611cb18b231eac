//! The Rust twin of the CRDs' OpenAPI and CEL rules. Each check here has a
//! matching rule on the field in `dataset.rs`, `cache_policy.rs` or
//! `migration.rs` (the store fields: `store.rs`); the
//! messages are shared so `kubectl apply` and the operator say the same thing.

use globset::GlobBuilder;

use crate::{Error, FieldError, FieldErrorKind, Result, parse_duration};

// Limits that keep the CEL rules' estimated cost within the API server's budget.
pub(crate) const MAX_SOURCES: usize = 16;
pub(crate) const MAX_OPTIONS: usize = 32;
pub(crate) const MAX_RULES: usize = 16;
pub(crate) const MAX_PATHS: usize = 32;
pub(crate) const MAX_GLOB_LEN: usize = 1024;
pub(crate) const MAX_MOUNT_PATH_LEN: usize = 256;
pub(crate) const MAX_URI_LEN: usize = 2048;

pub(crate) const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
pub(crate) const DNS_SUBDOMAIN_PATTERN: &str =
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
pub(crate) const HTTP_URL_PATTERN: &str = "^https?://[^/?#@\\s]+(/\\S*)?$";

pub(crate) const MSG_SOURCE_NAME: &str = "name must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters (e.g. train)";
pub(crate) const MSG_OBJECT_NAME: &str = "name must be a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters";
pub(crate) const MSG_URI_SCHEME: &str =
    "uri must start with s3://, gs://, az://, hdfs://, http://, https:// or file://";
pub(crate) const MSG_URI_SHAPE: &str = "uri must name a bucket, container, namenode or host after the scheme (s3://bucket/prefix, hdfs://namenode:8020/path) and contain no spaces; file uris must be absolute (file:///data)";
pub(crate) const MSG_URI_USERINFO: &str = "uri must not carry credentials (user:password@); put them in a Secret and set credentialsSecretRef";
pub(crate) const MSG_URI_DOTDOT: &str = "uri must not contain '..' path segments";
pub(crate) const MSG_MOUNT_PATH: &str = "mountPath must be an absolute path inside the dataset, such as /train or /: no trailing '/', no empty, '.' or '..' segments";
pub(crate) const MSG_ENDPOINT: &str = "endpoint must be an http:// or https:// URL without credentials, such as http://minio.storage:9000";
pub(crate) const MSG_REGION: &str =
    "region must be 1-63 lowercase letters, digits and '-', such as us-east-1";
pub(crate) const MSG_CREDENTIALS_SCHEME: &str = "credentialsSecretRef applies only to s3://, gs:// and az:// sources; http(s), file and hdfs sources take no credentials (hdfs: simple authentication; Kerberos is not supported yet), so remove it";
pub(crate) const MSG_ENDPOINT_SCHEME: &str = "endpoint applies only to s3://, gs:// and az:// sources (S3-compatible stores, emulators); remove it or change the uri";
pub(crate) const MSG_REGION_SCHEME: &str =
    "region applies only to s3:// sources; remove it or change the uri";
pub(crate) const MSG_WRITE_MODE_HTTP: &str = "writeMode: http(s) sources cannot be written; remove writeMode (or set it to ReadOnly) or use an object store (s3://, gs://, az://) or a file:// source";
pub(crate) const MSG_READ_ONLY_HTTP: &str = "readOnly: false makes the source writable (WriteBack), and http(s) sources cannot be written; remove readOnly or use an object store (s3://, gs://, az://) or a file:// source";
pub(crate) const MSG_READ_ONLY_CONTRADICTS: &str = "readOnly contradicts writeMode: readOnly is a deprecated alias (true = writeMode ReadOnly, false = WriteBack); delete readOnly and keep writeMode (a Dataset created before writeMode existed was given readOnly: true by default: remove it with kubectl edit, or set it to false)";
pub(crate) const MSG_OPTION_KEY: &str = "options keys must be 1-128 characters of letters, digits, '_', '-' and '.', and must not name a credential (secret, token, password, key): put credentials in the Secret named by credentialsSecretRef";
pub(crate) const MSG_DUPLICATE_SOURCE_NAME: &str =
    "source names must be unique: rename one of the sources that share a name";
pub(crate) const MSG_DUPLICATE_MOUNT_PATH: &str =
    "mountPath must be unique: two sources cannot mount at the same path";
pub(crate) const MSG_NESTED_MOUNT_PATH: &str = "mountPaths must not be nested: a source cannot mount inside another source's mountPath (e.g. / and /train, or /a and /a/b); use sibling paths";
pub(crate) const MSG_MOUNT_PATH_CONTROL: &str = "mountPath must not contain control characters (NUL, tab, newline, DEL, ...): use printable characters only";
pub(crate) const MSG_GLOB_CONTROL: &str = "paths must not contain control characters (NUL, tab, newline, DEL, ...): use printable characters only";
/// CEL twin of [`is_mount_path`].
pub(crate) const MOUNT_PATH_RULE: &str =
    "self == '/' || (self.matches('^(/[^/]+)+$') && !self.matches('/\\\\.\\\\.?(/|$)'))";
/// CEL twin of [`has_control_character`] (RE2's `[[:cntrl:]]` is ASCII 0-31 and 127).
pub(crate) const NO_CONTROL_RULE: &str = "!self.matches('[[:cntrl:]]')";
pub(crate) const MSG_GLOB: &str = "paths must be globs starting with '/' (relative to the dataset root, e.g. /train/**) with no '..' segments, so they cannot escape the dataset";
pub(crate) const MSG_QUOTA: &str =
    "quota must be a positive whole number of bytes, such as 200Gi or 500G";
pub(crate) const MSG_BLOCK_SIZE: &str =
    "blockSize must be a power of two between 1Mi and 64Mi: 1Mi, 2Mi, 4Mi, 8Mi, 16Mi, 32Mi or 64Mi";
pub(crate) const MSG_REPLICAS: &str =
    "replicas must be a whole number >= 1 or the string \"All\" (a copy on every node)";
pub(crate) const MSG_DURATION: &str =
    "must be a duration: a whole number followed by s, m, h or d, such as 30s, 5m, 12h or 30d";
pub(crate) const MSG_POSITIVE_DURATION: &str =
    "must be a positive duration: a whole number > 0 followed by s, m, h or d, such as 5m or 30d";
pub(crate) const MSG_SCHEDULE: &str = "schedule must be a cron schedule with 5 space-separated fields (minute hour day-of-month month day-of-week), such as \"0 2 * * *\", or one of @hourly, @daily, @midnight, @weekly, @monthly, @yearly";

/// Collects field errors while walking an object.
#[derive(Default)]
pub(crate) struct FieldErrors(pub(crate) Vec<FieldError>);

impl FieldErrors {
    pub(crate) fn push(
        &mut self,
        field: impl Into<String>,
        kind: FieldErrorKind,
        message: impl Into<String>,
    ) {
        self.0.push(FieldError {
            field: field.into(),
            kind,
            message: message.into(),
        });
    }

    /// `Ok(())` when nothing was found, else [`Error::Invalid`] naming the object.
    pub(crate) fn into_result(self, kind: &'static str, name: String) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid {
                kind,
                name,
                errors: self.0,
            })
        }
    }
}

pub(crate) fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

pub(crate) fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// `/` or `/a/b` with no empty, `.` or `..` segments and no trailing slash.
pub(crate) fn is_mount_path(s: &str) -> bool {
    if s == "/" {
        return true;
    }
    s.len() <= MAX_MOUNT_PATH_LEN
        && s.starts_with('/')
        && s[1..]
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

/// Whether `s` holds an ASCII control character (0-31 or 127), as `[[:cntrl:]]` in CEL.
pub(crate) fn has_control_character(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_control())
}

/// Whether `inner` lies strictly inside `outer` (both valid mount paths).
pub(crate) fn mount_path_contains(outer: &str, inner: &str) -> bool {
    outer == "/" || inner.starts_with(&format!("{outer}/"))
}

pub(crate) fn is_http_url(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
    else {
        return false;
    };
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    !host.is_empty()
        && !host.contains(['?', '#', '@'])
        && !s.chars().any(char::is_whitespace)
        && (path.is_empty() || path.starts_with('/'))
}

pub(crate) fn is_region(s: &str) -> bool {
    is_dns1123_label(s)
}

/// Option keys name an object_store setting (e.g. `allow_http`); credentials are refused
/// here so they cannot end up in a spec, a log or an event.
pub(crate) fn is_option_key(key: &str) -> bool {
    const CREDENTIAL_WORDS: [&str; 7] = [
        "secret",
        "token",
        "password",
        "passwd",
        "credential",
        "key",
        "sas",
    ];
    let lower = key.to_ascii_lowercase();
    !key.is_empty()
        && key.len() <= 128
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !CREDENTIAL_WORDS.iter().any(|w| lower.contains(w))
}

/// Checks a pin/preload path glob: absolute within the dataset, no `..`
/// segment, and a glob that compiles (the agent matches with the same syntax).
///
/// ```
/// assert!(strata_crds::validate_dataset_path_glob("/train/2026-11-*/**").is_ok());
/// assert!(strata_crds::validate_dataset_path_glob("/train/../../etc").is_err());
/// ```
pub fn validate_dataset_path_glob(glob: &str) -> Result<()> {
    let err = |reason: &str| Error::Glob {
        value: glob.to_string(),
        reason: reason.to_string(),
    };
    if !glob.starts_with('/') {
        return Err(err(
            "it must start with '/' (paths are relative to the dataset root)",
        ));
    }
    if glob.len() > MAX_GLOB_LEN {
        return Err(err("it is longer than 1024 characters"));
    }
    if glob.split('/').any(|seg| seg == "..") {
        return Err(err(
            "it contains a '..' segment, which could escape the dataset",
        ));
    }
    GlobBuilder::new(glob)
        .literal_separator(true)
        .build()
        .map_err(|e| err(&e.kind().to_string()))?;
    Ok(())
}

pub(crate) fn check_duration(errors: &mut FieldErrors, field: &str, value: &str, positive: bool) {
    match parse_duration(value) {
        Ok(d) if positive && d.is_zero() => {
            errors.push(field, FieldErrorKind::Invalid, MSG_POSITIVE_DURATION)
        }
        Ok(_) => {}
        Err(_) => errors.push(
            field,
            FieldErrorKind::Invalid,
            if positive {
                MSG_POSITIVE_DURATION
            } else {
                MSG_DURATION
            },
        ),
    }
}

pub(crate) fn check_globs(errors: &mut FieldErrors, field: &str, paths: &[String]) {
    if paths.is_empty() {
        errors.push(
            field,
            FieldErrorKind::Required,
            "paths must list at least one glob, such as /** for the whole dataset",
        );
    }
    if paths.len() > MAX_PATHS {
        errors.push(
            field,
            FieldErrorKind::Invalid,
            format!("paths must have at most {MAX_PATHS} items"),
        );
    }
    for (i, path) in paths.iter().enumerate() {
        if has_control_character(path) {
            errors.push(
                format!("{field}[{i}]"),
                FieldErrorKind::Invalid,
                MSG_GLOB_CONTROL,
            );
        }
        if let Err(e) = validate_dataset_path_glob(path) {
            errors.push(
                format!("{field}[{i}]"),
                FieldErrorKind::Invalid,
                format!("{MSG_GLOB} ({e})"),
            );
        }
    }
}

/// A CEL `self.matches('<pattern>')` with the pattern quoted for a CEL string literal.
pub(crate) fn cel_matches(pattern: &str) -> String {
    format!(
        "self.matches('{}')",
        pattern.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        for good in ["a", "train", "s3-data", "a1", &"a".repeat(63)] {
            assert!(is_dns1123_label(good), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_dns1123_label(bad), "{bad}");
        }
        assert!(is_dns1123_subdomain("s3-creds.v2"));
        assert!(!is_dns1123_subdomain("s3..creds"));
        assert!(!is_dns1123_subdomain(".creds"));
    }

    #[test]
    fn mount_paths() {
        for good in ["/", "/train", "/a/b", "/.hidden", "/x..y"] {
            assert!(is_mount_path(good), "{good}");
        }
        for bad in [
            "", "train", "/train/", "//", "/a//b", "/a/./b", "/a/..", "/..",
        ] {
            assert!(!is_mount_path(bad), "{bad}");
        }
        assert!(mount_path_contains("/", "/train"));
        assert!(mount_path_contains("/a", "/a/b"));
        assert!(!mount_path_contains("/a", "/ab"));
        assert!(!mount_path_contains("/a/b", "/a"));
    }

    #[test]
    fn endpoints() {
        for good in [
            "http://minio.storage:9000",
            "https://s3.example.com/",
            "http://127.0.0.1:9000/base",
        ] {
            assert!(is_http_url(good), "{good}");
        }
        for bad in [
            "minio:9000",
            "ftp://x",
            "http://",
            "http://u:p@host",
            "http://a b",
            "https:///x",
        ] {
            assert!(!is_http_url(bad), "{bad}");
        }
    }

    #[test]
    fn option_keys() {
        for good in [
            "allow_http",
            "virtual_hosted_style_request",
            "timeout",
            "aws.region",
        ] {
            assert!(is_option_key(good), "{good}");
        }
        for bad in [
            "aws_secret_access_key",
            "AWS_SESSION_TOKEN",
            "access_key_id",
            "azure_storage_sas_key",
            "password",
            "",
            "a b",
        ] {
            assert!(!is_option_key(bad), "{bad}");
        }
    }

    #[test]
    fn globs() {
        for good in [
            "/**",
            "/train/2026-11-*/**",
            "/labels/*.txt",
            "/a/{b,c}/[0-9]*",
            "/x..y",
        ] {
            validate_dataset_path_glob(good).unwrap();
        }
        for bad in ["train/**", "/train/../../etc", "/..", "/a/[b", "/a/{b"] {
            assert!(validate_dataset_path_glob(bad).is_err(), "{bad}");
        }
    }
}
