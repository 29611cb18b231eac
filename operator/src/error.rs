//! The operator's one error type: what stops a reconcile (an API call, a bad flag,
//! a render). What a user can fix in their objects (a missing Secret key, an unknown
//! policy, an unreachable source) is not an error: it becomes a condition and an event
//! (`CredentialsProblem`, `SourceCheck::Failed`, `Resolution`), and the reconcile goes on.

use std::net::SocketAddr;
use std::time::Duration;

/// Everything that can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed (transient unless the message says otherwise).
    #[error("{action}: {source}")]
    Kube {
        /// What the operator was doing, e.g. `applying PersistentVolume strata-ml-imagenet`.
        action: String,
        #[source]
        source: kube::Error,
    },
    /// An object could not be rendered (a bug, or a value that cannot be serialized).
    #[error("rendering {what}: {source}")]
    Render {
        /// What was being rendered, e.g. `agent config for ml/imagenet`.
        what: String,
        /// What the serializer refused.
        #[source]
        source: serde_yaml::Error,
    },
    /// A flag or environment variable holds a bad value.
    #[error("invalid setting --{flag}: {message}")]
    Config {
        /// The flag's long name, e.g. `tolerations`.
        flag: &'static str,
        /// What is wrong and what is expected.
        message: String,
    },
    /// The metrics and health endpoint could not listen.
    #[error("listening for metrics on {addr}: {source}; pick another --metrics-addr")]
    MetricsBind {
        /// The address from --metrics-addr.
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Another replica took the leader Lease, or it could not be renewed in time.
    #[error(
        "lost leadership of Lease {namespace}/{name}: taken by another replica, or not renewed within 2/3 of its {duration:?} duration; stopping so only one replica acts"
    )]
    LostLease {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// The lease duration.
        duration: Duration,
    },
    /// A deleted Dataset is still reported by nodes; the finalizer waits for them.
    #[error(
        "dataset {dataset} is still cached on nodes {nodes:?}; waiting for the agents to drop it"
    )]
    AwaitingNodeRelease {
        /// `namespace/name`.
        dataset: String,
        /// Nodes still reporting the dataset.
        nodes: Vec<String>,
    },
    /// The finalizer helper failed (adding or removing the finalizer, or the cleanup).
    #[error("finalizer on {object}: {message}")]
    Finalizer {
        /// `namespace/name` of the object.
        object: String,
        /// What failed.
        message: String,
    },
}

impl Error {
    /// A short, stable label for the failure metric (`reason="..."`).
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Error::Kube { source, .. } => match source {
                kube::Error::Api(status) if status.code == 409 => "Conflict",
                kube::Error::Api(status) if status.code == 403 => "Forbidden",
                kube::Error::Api(status) if status.code == 404 => "NotFound",
                kube::Error::Api(status) if status.code == 422 => "Invalid",
                kube::Error::Api(_) => "ApiError",
                _ => "ApiUnavailable",
            },
            Error::Render { .. } => "RenderFailed",
            Error::Config { .. } => "BadConfig",
            Error::MetricsBind { .. } => "MetricsBind",
            Error::LostLease { .. } => "LostLease",
            Error::AwaitingNodeRelease { .. } => "AwaitingNodeRelease",
            Error::Finalizer { .. } => "Finalizer",
        }
    }

    /// Wraps a kube error with what the operator was doing.
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube {
            action: action.into(),
            source,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
