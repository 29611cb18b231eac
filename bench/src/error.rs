//! The one error type of the benchmark library.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while setting up, running or reporting a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "could not start {what} (`{program}`): {source}; install it (docs/BENCHMARKS.md, \"Set-up\") or pass its path"
    )]
    Spawn {
        what: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} was not ready after {waited:?}: {detail}")]
    NotReady {
        what: String,
        waited: Duration,
        detail: String,
    },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("object store {op} of `{key}` failed: {detail}")]
    Store {
        op: &'static str,
        key: String,
        detail: String,
    },
    #[error("could not parse {what}: {detail}")]
    Parse { what: String, detail: String },
    #[error("chart {path}: {detail}")]
    Chart { path: PathBuf, detail: String },
    #[error("invalid setting {field}: {detail}")]
    Config { field: &'static str, detail: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// object_store errors can echo request URLs; keep only the text before any query string so
    /// that no signature or credential reaches a log.
    pub(crate) fn store(op: &'static str, key: &str, err: &object_store::Error) -> Self {
        Error::Store {
            op,
            key: key.to_string(),
            detail: scrub_query_strings(&err.to_string()),
        }
    }
}

/// Drops everything from `?` to the next whitespace in each URL-looking word.
pub fn scrub_query_strings(text: &str) -> String {
    text.split(' ')
        .map(|word| match word.find('?') {
            Some(at) if word.contains("://") => format!("{}?<redacted>", &word[..at]),
            _ => word.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_scrubbed() {
        let text = "error sending request for url (http://127.0.0.1:9/b/k?X-Amz-Signature=abc&X-Amz-Credential=AKIA) x?y";
        let scrubbed = scrub_query_strings(text);
        assert!(!scrubbed.contains("Signature"), "{scrubbed}");
        assert!(!scrubbed.contains("AKIA"), "{scrubbed}");
        assert!(scrubbed.contains("http://127.0.0.1:9/b/k?<redacted>"));
        assert!(scrubbed.ends_with("x?y"));
    }
}
