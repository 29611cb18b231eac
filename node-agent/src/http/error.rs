//! Errors of the HTTP API and the mount registry, and their HTTP statuses.

use super::types::ErrorBody;
use crate::error::SourceErrorKind;
use http::StatusCode;

/// What can go wrong serving the API. Engine errors keep their own text (it
/// names the path or source and is already scrubbed of credentials).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Engine(#[from] crate::Error),
    /// A request input is malformed; `field` names it (`path`, `namespace`, `paths`, `body`, ...).
    #[error("{field}: {message}")]
    BadRequest { field: String, message: String },
    #[error("{message}")]
    NotFound {
        field: Option<String>,
        message: String,
    },
    /// The request contradicts the current state (a dataset still in use, a volume of another dataset).
    #[error("{message}")]
    Conflict { message: String },
    #[error("{0}")]
    RangeNotSatisfiable(String),
    #[error(
        "missing bearer token: send `Authorization: Bearer <token>` (a job's ServiceAccount token, or the peer token of --peer-token-file)"
    )]
    Unauthorized,
    /// The caller is known (or its token is not) and may not do this; the message says why.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Client(#[from] super::client::ClientError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// A refused path or configuration value answers like the engine's (400, naming the field).
impl From<strata_wire::WireError> for ApiError {
    fn from(e: strata_wire::WireError) -> Self {
        ApiError::Engine(e.into())
    }
}

impl ApiError {
    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ApiError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn dataset_not_found(namespace: &str, name: &str) -> Self {
        ApiError::NotFound {
            field: Some("name".into()),
            message: format!(
                "dataset {namespace}/{name} is not configured on this agent (PUT /v1/datasets/{namespace}/{name} or add it to --datasets-dir)"
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Engine(e) => engine_status(e),
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Client(e) => e.status().unwrap_or(StatusCode::BAD_GATEWAY),
            ApiError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The input at fault, when there is one.
    pub fn field(&self) -> Option<String> {
        match self {
            ApiError::BadRequest { field, .. } => Some(field.clone()),
            ApiError::NotFound { field, .. } => field.clone(),
            ApiError::RangeNotSatisfiable(_) => Some("range".into()),
            ApiError::Unauthorized | ApiError::Forbidden(_) => Some("authorization".into()),
            ApiError::Engine(e) => match e {
                crate::Error::InvalidPath { .. }
                | crate::Error::NotFound { .. }
                | crate::Error::IsDirectory { .. }
                | crate::Error::NotDirectory { .. } => Some("path".into()),
                crate::Error::Config { field, .. } => Some(field.clone()),
                crate::Error::DatasetNotFound { .. } => Some("name".into()),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.to_string(),
            field: self.field(),
        }
    }
}

fn engine_status(error: &crate::Error) -> StatusCode {
    use crate::Error as E;
    match error {
        E::InvalidPath { .. }
        | E::IsDirectory { .. }
        | E::NotDirectory { .. }
        | E::Config { .. } => StatusCode::BAD_REQUEST,
        E::NotFound { .. } | E::DatasetNotFound { .. } | E::DatasetRemoved { .. } => {
            StatusCode::NOT_FOUND
        }
        E::Source { kind, .. } => match kind {
            SourceErrorKind::NotFound => StatusCode::NOT_FOUND,
            SourceErrorKind::Changed => StatusCode::CONFLICT,
            SourceErrorKind::InvalidConfig => StatusCode::BAD_REQUEST,
            // The source refused or failed: the agent is a gateway to it.
            SourceErrorKind::PermissionDenied
            | SourceErrorKind::Unavailable
            | SourceErrorKind::Other => StatusCode::BAD_GATEWAY,
        },
        E::CacheIo { .. } | E::Mount { .. } | E::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_statuses_and_fields() {
        let e = ApiError::from(crate::Error::InvalidPath {
            path: "../x".into(),
            reason: "escapes".into(),
        });
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.field().as_deref(), Some("path"));
        let e = ApiError::from(crate::Error::DatasetNotFound {
            namespace: "ml".into(),
            name: "x".into(),
        });
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert!(e.body().error.contains("ml/x"));
        assert_eq!(ApiError::Unauthorized.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            ApiError::Forbidden("x".into()).status(),
            StatusCode::FORBIDDEN
        );
    }
}
