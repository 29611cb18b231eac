//! Source URIs: `s3://bucket/prefix`, `gs://bucket/prefix`,
//! `az://container/prefix`, `http(s)://host/path` and `file:///absolute/path`.

use std::fmt;

use crate::{Error, Result};

/// The store a source reads from, from its URI scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Amazon S3 or an S3-compatible store (MinIO, Ceph RGW, ...): `s3://`.
    S3,
    /// Google Cloud Storage: `gs://`.
    Gcs,
    /// Azure Blob Storage: `az://`.
    Azure,
    /// Plain HTTP (directory listings or single files): `http://`.
    Http,
    /// HTTPS: `https://`.
    Https,
    /// A directory on the node (local disk, NFS or another mount): `file://`.
    File,
    /// HDFS, through a native client (no JVM on the node): `hdfs://namenode:port/path`,
    /// or `hdfs://<nameservice>/path` for an HA nameservice described in `options`.
    Hdfs,
}

impl Scheme {
    /// Every scheme, in the order the docs list them.
    pub const ALL: [Scheme; 7] = [
        Scheme::S3,
        Scheme::Gcs,
        Scheme::Azure,
        Scheme::Hdfs,
        Scheme::Http,
        Scheme::Https,
        Scheme::File,
    ];

    /// The URI scheme without `://`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::S3 => "s3",
            Scheme::Gcs => "gs",
            Scheme::Azure => "az",
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::File => "file",
            Scheme::Hdfs => "hdfs",
        }
    }

    /// Object stores authenticate; HTTP and file sources take no credentials.
    pub fn is_object_store(self) -> bool {
        matches!(self, Scheme::S3 | Scheme::Gcs | Scheme::Azure)
    }

    /// Whether `credentialsSecretRef` means anything for this scheme.
    pub fn accepts_credentials(self) -> bool {
        self.is_object_store()
    }

    /// Whether `endpoint` means anything (S3-compatible stores, fake GCS, Azurite).
    pub fn accepts_endpoint(self) -> bool {
        self.is_object_store()
    }

    /// Whether `region` means anything (S3 only).
    pub fn accepts_region(self) -> bool {
        self == Scheme::S3
    }

    /// Whether a writable `writeMode` means anything: HTTP servers take no uploads.
    pub fn accepts_writes(self) -> bool {
        !matches!(self, Scheme::Http | Scheme::Https)
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed source URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceUri {
    /// The store type.
    pub scheme: Scheme,
    /// Bucket (s3, gs), container (az) or `host[:port]` (http, https); empty for `file`.
    pub authority: String,
    /// The prefix inside the bucket or host, or the absolute directory for `file`.
    /// Starts with `/` unless empty; keeps a trailing `/` if the URI had one.
    pub path: String,
}

impl SourceUri {
    /// Parses and checks a source URI the way the CRD's CEL rules do.
    ///
    /// ```
    /// use strata_crds::{Scheme, SourceUri};
    /// let uri = SourceUri::parse("s3://datasets/imagenet/train/").unwrap();
    /// assert_eq!((uri.scheme, uri.authority.as_str(), uri.path.as_str()),
    ///            (Scheme::S3, "datasets", "/imagenet/train/"));
    /// assert!(SourceUri::parse("ftp://host/x").is_err());
    /// ```
    pub fn parse(value: &str) -> Result<Self> {
        let err = |reason: &str| Error::Uri {
            value: redact_userinfo(value),
            reason: reason.to_string(),
        };
        let (scheme_text, rest) = value
            .split_once("://")
            .ok_or_else(|| err("it has no scheme"))?;
        let scheme = Scheme::ALL
            .into_iter()
            .find(|s| s.as_str() == scheme_text)
            .ok_or_else(|| err("the scheme is not one of s3, gs, az, hdfs, http, https, file"))?;
        // The same set as RE2's \s in the CEL rule.
        if value.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(err("it contains whitespace"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(err(
                "it carries credentials (user:password@); put them in a Secret and use credentialsSecretRef",
            ));
        }
        if scheme == Scheme::File {
            if !authority.is_empty() || path.is_empty() {
                return Err(err(
                    "a file uri must be absolute, with three slashes: file:///data",
                ));
            }
        } else {
            let host_end = authority.find(['?', '#']).unwrap_or(authority.len());
            if host_end == 0 {
                return Err(err(
                    "it names no bucket, container or host after the scheme",
                ));
            }
        }
        if rest.split('/').any(|segment| segment == "..") {
            return Err(err("it contains a '..' path segment"));
        }
        Ok(Self {
            scheme,
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }
}

/// Replaces `user:password@` in a URI with `***@`, so an error about a URI that
/// (wrongly) carries credentials does not repeat them into a log or a status.
pub(crate) fn redact_userinfo(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() {
        let cases = [
            ("s3://bucket", Scheme::S3, "bucket", ""),
            ("s3://bucket/a/b/", Scheme::S3, "bucket", "/a/b/"),
            (
                "gs://labels-bucket/imagenet/",
                Scheme::Gcs,
                "labels-bucket",
                "/imagenet/",
            ),
            (
                "az://container/prefix",
                Scheme::Azure,
                "container",
                "/prefix",
            ),
            (
                "http://127.0.0.1:8080/files/",
                Scheme::Http,
                "127.0.0.1:8080",
                "/files/",
            ),
            ("https://example.com", Scheme::Https, "example.com", ""),
            ("file:///srv/data", Scheme::File, "", "/srv/data"),
            ("file:///", Scheme::File, "", "/"),
            (
                "hdfs://namenode:8020/warehouse/",
                Scheme::Hdfs,
                "namenode:8020",
                "/warehouse/",
            ),
        ];
        for (text, scheme, authority, path) in cases {
            let uri = SourceUri::parse(text).unwrap();
            assert_eq!(uri.scheme, scheme, "{text}");
            assert_eq!(uri.authority, authority, "{text}");
            assert_eq!(uri.path, path, "{text}");
        }
    }

    #[test]
    fn errors_do_not_repeat_credentials() {
        let e = SourceUri::parse("s3://AKIAEXAMPLE:wJalrXUtnFEMI@datasets/train/").unwrap_err();
        let text = e.to_string();
        assert!(
            !text.contains("AKIAEXAMPLE") && !text.contains("wJalrXUtnFEMI"),
            "{text}"
        );
        assert!(text.contains("s3://***@datasets/train/"), "{text}");
        assert_eq!(redact_userinfo("https://host/a@b"), "https://host/a@b");
    }

    #[test]
    fn refuses_bad_uris() {
        for bad in [
            "",
            "bucket/prefix",
            "ftp://host/x",
            "S3://bucket",
            "s3://",
            "s3:///prefix",
            "https://user:pass@host/x",
            "s3://AKIA:secret@bucket/x",
            "file://relative/path",
            "file://",
            "file:///data/../etc",
            "s3://bucket/a/../../b",
            "s3://bucket/with space",
        ] {
            let e = SourceUri::parse(bad).unwrap_err();
            assert!(
                e.to_string().contains("use s3://bucket/prefix"),
                "{bad:?}: {e}"
            );
        }
    }
}
