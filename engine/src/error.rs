//! The one error type of the engine, with an errno for the FUSE edge.

use std::path::PathBuf;
use std::sync::Arc;

/// What went wrong when talking to a source, so callers (FUSE, HTTP) can map it: the
/// classification of `strata-store`, which the operator's check shares.
pub use strata_store::FailureKind as SourceErrorKind;

/// Errors of the cache engine. Every variant names the path, source or field at fault;
/// no variant ever carries a credential (source error text is scrubbed first).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A user-supplied path was refused (escape, encoded separator, NUL, too long).
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    /// Nothing exists at this dataset path.
    #[error("{path}: no such file or directory")]
    NotFound { path: String },
    /// The path names a directory where a file was expected.
    #[error("{path}: is a directory")]
    IsDirectory { path: String },
    /// The path names a file where a directory was expected.
    #[error("{path}: not a directory")]
    NotDirectory { path: String },
    /// A source (object store) failed; `message` is scrubbed of signatures and keys.
    #[error("source {source_name:?} ({uri}): {message}")]
    Source {
        source_name: String,
        uri: String,
        kind: SourceErrorKind,
        message: String,
    },
    /// A configuration value is invalid; `field` says which and `message` how to fix it.
    #[error("invalid configuration {field}: {message}")]
    Config { field: String, message: String },
    /// Local cache I/O failed (the cache degrades to read-through where it can).
    #[error("cache I/O on {path}: {source}")]
    CacheIo {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// No dataset with this namespace/name is configured on this agent.
    #[error("dataset {namespace}/{name} is not configured on this agent")]
    DatasetNotFound { namespace: String, name: String },
    /// The dataset was removed from this agent while the work ran (a preload stops).
    #[error("dataset {dataset} was removed from this agent; stopped")]
    DatasetRemoved { dataset: String },
    /// A background task died (panic or cancellation).
    #[error("internal task failed: {0}")]
    Task(String),
    /// A change to the dataset was refused (read-only source, another source, no room,
    /// the source not taking a write-through file in time); `errno` is what FUSE answers.
    #[error("{path}: {reason}")]
    Refused {
        path: String,
        errno: i32,
        reason: String,
    },
    /// A peer agent did not serve blocks (the read goes on with the next owner or the
    /// source; readers never see this).
    #[error("peer {peer}: {message}")]
    Peer { peer: String, message: String },
}

/// Result alias of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The errno to answer a FUSE request with.
    pub fn errno(&self) -> i32 {
        match self {
            Error::InvalidPath { .. } => libc::EINVAL,
            Error::NotFound { .. }
            | Error::DatasetNotFound { .. }
            | Error::DatasetRemoved { .. } => libc::ENOENT,
            Error::IsDirectory { .. } => libc::EISDIR,
            Error::NotDirectory { .. } => libc::ENOTDIR,
            Error::Source { kind, .. } => match kind {
                SourceErrorKind::NotFound => libc::ENOENT,
                SourceErrorKind::PermissionDenied => libc::EACCES,
                SourceErrorKind::Unavailable => libc::EIO,
                SourceErrorKind::Changed => libc::ESTALE,
                SourceErrorKind::InvalidConfig => libc::EINVAL,
                SourceErrorKind::Other => libc::EIO,
            },
            Error::Config { .. } => libc::EINVAL,
            Error::Refused { errno, .. } => *errno,
            Error::CacheIo { .. } | Error::Task(_) | Error::Peer { .. } => libc::EIO,
        }
    }

    /// True when a source could not be reached (an outage, not an answer).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::Source {
                kind: SourceErrorKind::Unavailable,
                ..
            }
        )
    }

    /// True when the error means "nothing there" (file, object or dataset).
    pub fn is_not_found(&self) -> bool {
        self.errno() == libc::ENOENT
    }

    /// A refused change of `path`, answered with `errno`.
    pub fn refused(path: &crate::path::DatasetPath, errno: i32, reason: &str) -> Self {
        Error::Refused {
            path: path.to_string(),
            errno,
            reason: reason.to_string(),
        }
    }

    pub(crate) fn cache_io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::CacheIo {
            path: path.into(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A refused path is an invalid-path error naming the part at fault.
impl From<crate::path::PathError> for Error {
    fn from(e: crate::path::PathError) -> Self {
        let path = match &e {
            crate::path::PathError::DotDot(p)
            | crate::path::PathError::EncodedSeparator(p)
            | crate::path::PathError::Backslash(p) => p.clone(),
            _ => String::new(),
        };
        Error::InvalidPath {
            path,
            reason: e.to_string(),
        }
    }
}

/// Refused paths and configuration values keep their text and their variant.
impl From<strata_wire::WireError> for Error {
    fn from(e: strata_wire::WireError) -> Self {
        match e {
            strata_wire::WireError::InvalidPath { path, reason } => {
                Error::InvalidPath { path, reason }
            }
            strata_wire::WireError::Config { field, message } => Error::Config { field, message },
        }
    }
}
