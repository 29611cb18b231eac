//! The one error type of the wire types: a path or a configuration value was refused. The
//! engine turns it into its own `Error` with the same text.

/// What was refused, naming the path or field and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A user-supplied path or glob was refused (escape, encoded separator, control
    /// character, not a glob).
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    /// A configuration value is invalid; `field` says which and `message` how to fix it.
    #[error("invalid configuration {field}: {message}")]
    Config { field: String, message: String },
}

pub type Result<T, E = WireError> = std::result::Result<T, E>;

impl WireError {
    pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        WireError::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}
