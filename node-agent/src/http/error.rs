//! The HTTP edge of the agent's errors: the status and the JSON body each one answers with.

use super::types::ErrorBody;
use crate::Error;
use http::StatusCode;
use strata_engine::error::SourceErrorKind;

/// An error as an HTTP answer.
pub trait HttpError {
    fn status(&self) -> StatusCode;
    fn body(&self) -> ErrorBody;
}

impl HttpError for Error {
    fn status(&self) -> StatusCode {
        match self {
            Error::Engine(e) => engine_status(e),
            Error::InvalidInput { .. } => StatusCode::BAD_REQUEST,
            Error::DatasetNotConfigured { .. } => StatusCode::NOT_FOUND,
            Error::Conflict { .. } => StatusCode::CONFLICT,
            Error::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Client(e) => e.status().unwrap_or(StatusCode::BAD_GATEWAY),
            // A job credential that cannot be checked now: retry later.
            #[cfg(feature = "node-status")]
            Error::TokenReview(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Io { .. } | Error::Mount { .. } | Error::Task(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            #[cfg(feature = "node-status")]
            Error::NodeReport { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.to_string(),
            field: self.field(),
        }
    }
}

fn engine_status(error: &strata_engine::Error) -> StatusCode {
    use strata_engine::Error as E;
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
        E::CacheIo { .. } | E::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        E::Peer { .. } => StatusCode::BAD_GATEWAY,
        E::Refused { errno, .. } => match *errno {
            libc::ENOSPC => StatusCode::INSUFFICIENT_STORAGE,
            libc::EIO => StatusCode::BAD_GATEWAY,
            _ => StatusCode::CONFLICT,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_statuses_and_fields() {
        let e = Error::from(strata_engine::Error::InvalidPath {
            path: "../x".into(),
            reason: "escapes".into(),
        });
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.field().as_deref(), Some("path"));
        let e = Error::from(strata_engine::Error::DatasetNotFound {
            namespace: "ml".into(),
            name: "x".into(),
        });
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert!(e.body().error.contains("ml/x"));
        assert_eq!(Error::Unauthorized.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(Error::Forbidden("x".into()).status(), StatusCode::FORBIDDEN);
    }
}
