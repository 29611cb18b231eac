use std::fmt;

/// A source configuration no store can be built from. `field` names what to fix
/// (`source "corpus" uri`, `source "corpus" options`); `message` says why, with no credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct StoreError {
    /// The configuration field at fault, prefixed with the source's name.
    pub field: String,
    /// What is wrong and how to fix it, scrubbed of credentials.
    pub message: String,
}

impl StoreError {
    pub(crate) fn new(source: &str, field: &str, message: impl Into<String>) -> Self {
        StoreError {
            field: format!("source {source:?} {field}"),
            message: message.into(),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}
