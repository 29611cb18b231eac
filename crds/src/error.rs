use std::fmt;

/// Errors from parsing and validating Strata API objects.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more fields of an object break the API's rules.
    #[error("{kind} {name} is invalid: {}", join(errors))]
    Invalid {
        /// `Dataset` or `CachePolicy`.
        kind: &'static str,
        /// `namespace/name` of the object (or just the name when it has no namespace).
        name: String,
        /// Every problem found, each naming its field path.
        errors: Vec<FieldError>,
    },
    /// A duration string such as `5m` did not parse.
    #[error(
        "invalid duration {value:?}: {reason}; write a whole number followed by s, m, h or d, e.g. 30s, 5m, 12h or 30d"
    )]
    Duration { value: String, reason: String },
    /// A Kubernetes quantity such as `4Mi` did not parse or is not a whole number of bytes.
    #[error(
        "invalid quantity {value:?}: {reason}; write a whole number of bytes with an optional suffix, e.g. 4Mi, 200Gi or 1500M"
    )]
    Quantity { value: String, reason: String },
    /// A cron schedule did not parse.
    #[error(
        "invalid cron schedule {value:?}: {reason}; write 5 fields (minute hour day-of-month month day-of-week), e.g. \"0 2 * * *\", or @hourly/@daily/@weekly/@monthly/@yearly"
    )]
    Schedule { value: String, reason: String },
    /// A replicas value is neither a whole number >= 1 nor `All`.
    #[error(
        "invalid replicas {value}: write a whole number >= 1, or \"All\" for a copy on every node"
    )]
    Replicas { value: String },
    /// A source URI did not parse.
    #[error(
        "invalid source uri {value:?}: {reason}; use s3://bucket/prefix, gs://bucket/prefix, az://container/prefix, http(s)://host/path or file:///absolute/path"
    )]
    Uri { value: String, reason: String },
    /// A path glob is malformed or could escape the dataset.
    #[error("invalid path glob {value:?}: {reason}")]
    Glob { value: String, reason: String },
    /// A generated CRD could not be rendered as YAML.
    #[error("rendering {what} as YAML: {source}")]
    Yaml {
        what: String,
        #[source]
        source: serde_yaml::Error,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What is wrong with a field; mirrors the Kubernetes `field.ErrorType`s the
/// API server reports for the same rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldErrorKind {
    /// The field must be set (or must not be empty).
    Required,
    /// The value is malformed or out of range.
    Invalid,
    /// The value must be unique within its list and is not.
    Duplicate,
    /// The value is well formed but not one of the supported choices.
    NotSupported,
    /// The value is well formed but not allowed in this combination.
    Forbidden,
}

impl fmt::Display for FieldErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FieldErrorKind::Required => "Required value",
            FieldErrorKind::Invalid => "Invalid value",
            FieldErrorKind::Duplicate => "Duplicate value",
            FieldErrorKind::NotSupported => "Unsupported value",
            FieldErrorKind::Forbidden => "Forbidden",
        })
    }
}

/// One problem with one field, e.g. `spec.sources[1].mountPath: Duplicate value: ...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field from the object root, in the API server's notation.
    pub field: String,
    /// What kind of problem it is.
    pub kind: FieldErrorKind,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.field, self.kind, self.message)
    }
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
