//! The one error type of the agent library, and its `Result`. It says what went wrong in
//! the agent's own terms; the edges translate it: HTTP statuses and JSON bodies in
//! [`crate::http::error`], errnos for FUSE through the engine's
//! [`strata_engine::Error::errno`], exit messages in `main`.

use std::path::PathBuf;

use strata_wire::api::client::ClientError;

/// What can go wrong in the agent. Engine errors keep their own text (it names the path or
/// source and is already scrubbed of credentials).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Engine(#[from] strata_engine::Error),
    /// An input is malformed; `field` names it (`path`, `namespace`, `paths`, `body`, a
    /// flag, ...).
    #[error("{field}: {message}")]
    InvalidInput { field: String, message: String },
    /// No dataset of this name is configured on this agent.
    #[error(
        "dataset {namespace}/{name} is not configured on this agent (PUT /v1/datasets/{namespace}/{name} or add it to --datasets-dir)"
    )]
    DatasetNotConfigured { namespace: String, name: String },
    /// The request contradicts the current state (a dataset still in use, a volume of
    /// another dataset).
    #[error("{message}")]
    Conflict { message: String },
    /// A byte range that does not fit the file.
    #[error("{0}")]
    RangeNotSatisfiable(String),
    /// No credential was presented where one is needed.
    #[error(
        "missing bearer token: send `Authorization: Bearer <token>` (a job's ServiceAccount token, or the peer token of --peer-token-file)"
    )]
    Unauthorized,
    /// The caller is known (or its token is not) and may not do this; the message says why.
    #[error("{0}")]
    Forbidden(String),
    /// Something the agent needs (the Kubernetes API) cannot be reached now.
    #[error("{0}")]
    Unavailable(String),
    /// Mounting or unmounting a FUSE file system failed.
    #[error("mount point {mountpoint}: {message}")]
    Mount {
        mountpoint: PathBuf,
        message: String,
    },
    /// A thread or task of the agent died (panic or cancellation).
    #[error("internal task failed: {0}")]
    Task(String),
    /// Another agent's API answered with an error or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The Kubernetes API did not answer a TokenReview of a job credential.
    #[cfg(feature = "node-status")]
    #[error("TokenReview failed: {0}")]
    TokenReview(#[source] kube::Error),
    /// The StrataNode report could not be written.
    #[cfg(feature = "node-status")]
    #[error(
        "StrataNode {node}: {action}: {source} (the agent's ServiceAccount needs create/patch on stratanodes and stratanodes/status)"
    )]
    NodeReport {
        /// The node (= StrataNode) name.
        node: String,
        /// What was being written.
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Result alias of the agent.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A refused path or configuration value is the engine's error (it names the field).
impl From<strata_wire::WireError> for Error {
    fn from(e: strata_wire::WireError) -> Self {
        Error::Engine(e.into())
    }
}

impl Error {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidInput {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The input at fault, when there is one.
    pub fn field(&self) -> Option<String> {
        use strata_engine::Error as E;
        match self {
            Error::InvalidInput { field, .. } => Some(field.clone()),
            Error::DatasetNotConfigured { .. } => Some("name".into()),
            Error::RangeNotSatisfiable(_) => Some("range".into()),
            Error::Unauthorized | Error::Forbidden(_) => Some("authorization".into()),
            Error::Engine(e) => match e {
                E::InvalidPath { .. }
                | E::NotFound { .. }
                | E::IsDirectory { .. }
                | E::NotDirectory { .. } => Some("path".into()),
                E::Config { field, .. } => Some(field.clone()),
                E::DatasetNotFound { .. } => Some("name".into()),
                _ => None,
            },
            _ => None,
        }
    }
}
