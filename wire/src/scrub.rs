//! Removes credentials from text before it reaches a log line, an API answer, a status, a
//! condition or an event. One function for every process: the engine scrubs source errors
//! with it, the operator its reachability messages.

use crate::config::Credentials;

/// The values of a source's credentials that [`scrub`] must remove from any text: every
/// secret, and the access key id (it names an account). Values under four characters are left
/// out: replacing every "a" in a message would hide the message, not a secret.
pub fn credential_values(credentials: &Credentials) -> Vec<String> {
    [
        &credentials.secret_access_key,
        &credentials.session_token,
        &credentials.service_account_key,
        &credentials.account_key,
        &credentials.token,
        &credentials.access_key_id,
    ]
    .into_iter()
    .flatten()
    .filter(|value| value.len() >= 4)
    .cloned()
    .collect()
}

/// Removes anything credential-like from error text: URL query strings (pre-signed
/// signatures), `X-Amz-*` values, `Signature=`, `Credential=`, `sig=`, `token=`,
/// `Authorization` headers, and any of the source's configured secrets.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        if !s.is_empty() {
            out = out.replace(s.as_str(), "<redacted>");
        }
    }
    // URL query strings.
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(pos) = rest.find("://") {
        let (before, after) = rest.split_at(pos + 3);
        result.push_str(before);
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ')' | '>' | ','))
            .unwrap_or(after.len());
        let url = &after[..end];
        // user:password@ in the authority.
        let url = match (url.find('@'), url.find('/')) {
            (Some(at), slash) if slash.is_none_or(|s| at < s) => {
                format!("<redacted>@{}", &url[at + 1..])
            }
            _ => url.to_string(),
        };
        match url.find('?') {
            Some(q) => {
                result.push_str(&url[..q]);
                result.push_str("?<redacted>");
            }
            None => result.push_str(&url),
        }
        rest = &after[end..];
    }
    result.push_str(rest);
    // key=value pairs and headers anywhere else.
    let markers = [
        "x-amz-",
        "signature=",
        "credential=",
        "sig=",
        "token=",
        "authorization:",
        "authorization=",
        "awsaccesskeyid=",
        "secret",
        "password",
    ];
    let lower = result.to_ascii_lowercase();
    let mut redact: Vec<(usize, usize)> = Vec::new();
    for m in markers {
        let mut from = 0;
        while let Some(i) = lower[from..].find(m) {
            let start = from + i + m.len();
            // "key=" and "header:" markers are followed by their value; for the others
            // ("x-amz-...", "secret...") skip to the '=' or ':' that follows the name.
            let value_start = if m.ends_with(['=', ':']) {
                start
            } else {
                lower[start..]
                    .find(['=', ':'])
                    .filter(|&d| d < 40)
                    .map(|d| start + d + 1)
                    .unwrap_or(start)
            };
            let value_start = value_start
                + lower[value_start..]
                    .bytes()
                    .take_while(|b| *b == b' ' || *b == b'"')
                    .count();
            // An Authorization value has a scheme and a credential ("Bearer x"): up to the
            // end of the header; any other value up to the next separator.
            let header = m.starts_with("authorization");
            let end = lower[value_start..]
                .find(|c: char| {
                    if header {
                        matches!(c, '\n' | '\r' | '"' | '\'' | ',' | '<')
                    } else {
                        c.is_whitespace() || matches!(c, '&' | '"' | '\'' | ',' | ')' | '<')
                    }
                })
                .map(|e| value_start + e)
                .unwrap_or(lower.len());
            if end > value_start {
                redact.push((value_start, end));
            }
            from = end.max(start);
        }
    }
    redact.sort();
    let mut scrubbed = String::with_capacity(result.len());
    let mut pos = 0;
    for (s, e) in redact {
        if s < pos {
            continue;
        }
        scrubbed.push_str(&result[pos..s]);
        scrubbed.push_str("<redacted>");
        pos = e;
    }
    scrubbed.push_str(&result[pos..]);
    scrubbed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_signatures_and_secrets() {
        let text = "Error performing GET http://127.0.0.1:9000/bucket/key?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA%2F2026&X-Amz-Signature=abcdef in 1s, \
                    header x-amz-security-token: FQoGZXIvYXdz, Authorization: AWS4-HMAC-SHA256 Credential=AKIAXYZ/2026, Signature=deadbeef, secret hunter2";
        let s = scrub(text, &["hunter2".to_string()]);
        for leaked in [
            "abcdef",
            "AKIA%2F2026",
            "FQoGZXIvYXdz",
            "deadbeef",
            "hunter2",
            "AKIAXYZ",
        ] {
            assert!(!s.contains(leaked), "{leaked} leaked in {s}");
        }
        assert!(s.contains("http://127.0.0.1:9000/bucket/key"), "{s}");
        let s = scrub("https://user:pw@host/x", &[]);
        assert!(!s.contains("pw"), "{s}");
        // A value right after its marker is redacted itself (not the next one along), and
        // an Authorization header loses its credential, not just its scheme.
        let s = scrub(
            "failed: Signature=deadbeef, token=tok-55, Authorization: Bearer abc-99",
            &[],
        );
        for leaked in ["deadbeef", "tok-55", "abc-99"] {
            assert!(!s.contains(leaked), "{leaked} leaked in {s}");
        }
    }
}
