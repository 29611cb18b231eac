//! What kind of failure an `object_store` error is. The variants say it for the stores that
//! map HTTP statuses; for the rest (a status in a generic error, a refused connection) the
//! text does, read by whole numbers and phrases only.

/// What went wrong when talking to a source, so each edge can map it (errno, HTTP status,
/// condition reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The object or bucket does not exist.
    NotFound,
    /// Credentials were refused or missing.
    PermissionDenied,
    /// The endpoint could not be reached or answered with a server error.
    Unavailable,
    /// The object changed while it was being read (ETag precondition failed).
    Changed,
    /// The source URI or its settings are invalid.
    InvalidConfig,
    /// Anything else.
    Other,
}

/// Classifies an error of any store built by [`crate::build`].
pub fn classify(e: &object_store::Error) -> FailureKind {
    match e {
        object_store::Error::NotFound { .. } => FailureKind::NotFound,
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => FailureKind::PermissionDenied,
        object_store::Error::Precondition { .. } => FailureKind::Changed,
        object_store::Error::UnknownConfigurationKey { .. } => FailureKind::InvalidConfig,
        _ => classify_text(&format!("{e:?}")),
    }
}

/// Classifies an error by its text (S3, GCS and Azure error codes, HTTP statuses).
pub fn classify_text(text: &str) -> FailureKind {
    let t = text.to_ascii_lowercase();
    let any = |phrases: &[&str]| phrases.iter().any(|p| t.contains(p));
    // "Not a directory": a local path that goes through a regular file ("a.bin/x").
    if has_status(&t, "404") || any(&["nosuchbucket", "not found", "not a directory"]) {
        FailureKind::NotFound
    } else if has_status(&t, "403")
        || has_status(&t, "401")
        || any(&[
            "accessdenied",
            "invalidaccesskeyid",
            "signaturedoesnotmatch",
            "forbidden",
            "unauthorized",
            // Azure's codes for a refused key or SAS.
            "authenticationfailed",
            "authorizationfailure",
        ])
    {
        FailureKind::PermissionDenied
    } else if has_status(&t, "500")
        || has_status(&t, "503")
        || any(&["connect", "timed out", "timeout", "dns", "refused"])
    {
        FailureKind::Unavailable
    } else {
        FailureKind::Other
    }
}

/// Whether `code` occurs as a number of its own: not inside a port (`127.0.0.1:40345`), an
/// address or a duration (`403.2ms`), which the error texts also contain.
fn has_status(text: &str, code: &str) -> bool {
    let bytes = text.as_bytes();
    let part_of_number = |c: u8| c.is_ascii_digit() || c == b'.' || c == b':';
    text.match_indices(code).any(|(i, _)| {
        let before = i.checked_sub(1).map(|j| bytes[j]);
        let after = bytes.get(i + code.len()).copied();
        !before.is_some_and(part_of_number) && !after.is_some_and(part_of_number)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Status codes are recognised as numbers of their own, not inside a port or a
    /// duration (a refused connection to port 40345 was once taken for a 403).
    #[test]
    fn error_texts_classify_by_status_not_by_port() {
        let refused = "Error performing GET http://127.0.0.1:40345/b?<redacted> in 401.3ms - \
                       client error (Connect): tcp connect error: Connection refused";
        assert_eq!(classify_text(refused), FailureKind::Unavailable);
        assert_eq!(
            classify_text("Client error with status 403 Forbidden: <Error>"),
            FailureKind::PermissionDenied
        );
        assert_eq!(
            classify_text("status: 404, body: NoSuchKey"),
            FailureKind::NotFound
        );
        assert_eq!(
            classify_text("Server error with status 503 Service Unavailable"),
            FailureKind::Unavailable
        );
        assert_eq!(classify_text("port 14040 said no"), FailureKind::Other);
        assert_eq!(classify_text("took 403.2ms"), FailureKind::Other);
    }

    #[test]
    fn azure_refusals_are_denials() {
        for text in [
            "Server returned non-2xx status code: 403 Forbidden: AuthenticationFailed",
            "AuthorizationFailure: This request is not authorized",
            "401 Unauthorized",
        ] {
            assert_eq!(classify_text(text), FailureKind::PermissionDenied, "{text}");
        }
    }

    #[test]
    fn variants_win_over_text() {
        let e = object_store::Error::NotFound {
            path: "a/403".into(),
            source: "gone".into(),
        };
        assert_eq!(classify(&e), FailureKind::NotFound);
        let e = object_store::Error::Precondition {
            path: "a".into(),
            source: "etag".into(),
        };
        assert_eq!(classify(&e), FailureKind::Changed);
    }
}
