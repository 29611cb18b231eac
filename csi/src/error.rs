//! The plugin's one error type, translated to CSI gRPC status codes at the edge.

use strata_wire::api::client::ClientError;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    /// A request field is missing or malformed; `field` names it as the CSI spec does.
    #[error("{field}: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// The local agent could not be reached; kubelet retries.
    #[error("{0}")]
    Unavailable(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Mount {
        context: String,
        #[source]
        source: nix::Error,
    },
    #[error("{context}: {source}")]
    Agent {
        context: String,
        #[source]
        source: ClientError,
    },
}

pub type Result<T, E = CsiError> = std::result::Result<T, E>;

impl CsiError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        CsiError::InvalidArgument {
            field,
            message: message.into(),
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        CsiError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn mount(context: impl Into<String>, source: nix::Error) -> Self {
        CsiError::Mount {
            context: context.into(),
            source,
        }
    }

    pub fn agent(context: impl Into<String>, source: ClientError) -> Self {
        CsiError::Agent {
            context: context.into(),
            source,
        }
    }

    pub fn code(&self) -> Code {
        match self {
            CsiError::InvalidArgument { .. } => Code::InvalidArgument,
            CsiError::NotFound(_) => Code::NotFound,
            CsiError::AlreadyExists(_) => Code::AlreadyExists,
            CsiError::FailedPrecondition(_) => Code::FailedPrecondition,
            CsiError::PermissionDenied(_) => Code::PermissionDenied,
            CsiError::Unavailable(_) => Code::Unavailable,
            CsiError::Io { .. } | CsiError::Mount { .. } => Code::Internal,
            CsiError::Agent { source, .. } => agent_code(source),
        }
    }
}

/// Maps an agent answer to the CSI code a CO acts on: 4xx are the caller's
/// problem (no retry helps), unreachable agents are UNAVAILABLE (kubelet retries).
fn agent_code(error: &ClientError) -> Code {
    if error.is_unreachable() {
        return Code::Unavailable;
    }
    match error.status().map(|s| s.as_u16()) {
        Some(400) | Some(422) => Code::InvalidArgument,
        Some(401) | Some(403) => Code::PermissionDenied,
        Some(404) => Code::NotFound,
        Some(409) => Code::FailedPrecondition,
        Some(503) => Code::Unavailable,
        _ => Code::Internal,
    }
}

impl From<CsiError> for Status {
    fn from(error: CsiError) -> Self {
        Status::new(error.code(), error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_field() {
        let status: Status = CsiError::invalid("target_path", "must be absolute").into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "target_path: must be absolute");
    }

    #[test]
    fn agent_statuses_map_to_csi_codes() {
        let status = |code: u16| ClientError::Status {
            status: http_status(code),
            message: "m".into(),
            field: None,
        };
        assert_eq!(CsiError::agent("x", status(404)).code(), Code::NotFound);
        assert_eq!(
            CsiError::agent("x", status(400)).code(),
            Code::InvalidArgument
        );
        assert_eq!(
            CsiError::agent("x", status(409)).code(),
            Code::FailedPrecondition
        );
        assert_eq!(CsiError::agent("x", status(500)).code(), Code::Internal);
        let unreachable = ClientError::Connect {
            endpoint: "unix:///x".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(CsiError::agent("x", unreachable).code(), Code::Unavailable);
    }

    fn http_status(code: u16) -> strata_wire::api::client::StatusCode {
        strata_wire::api::client::StatusCode::from_u16(code).unwrap()
    }
}
