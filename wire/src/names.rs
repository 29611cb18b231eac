//! Kubernetes object names as they cross process boundaries (namespaces and Dataset names in
//! API paths, CSI volume attributes): one check for the agent and the CSI plugin.

/// Longest name of a namespaced Kubernetes object (a DNS subdomain).
pub const MAX_NAME_LEN: usize = 253;

/// Whether `value` is a Kubernetes name of at most `max` bytes: lower-case letters, digits,
/// '-' and '.', starting and ending with a letter or digit.
pub fn is_kubernetes_name(value: &str, max: usize) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= max
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_names() {
        for ok in ["ml", "ml-team.a", "a", "0x"] {
            assert!(is_kubernetes_name(ok, MAX_NAME_LEN), "{ok}");
        }
        for bad in ["", "ML", "-a", "a-", "a/b", "a%2Fb", "..", "a b", "a\0"] {
            assert!(!is_kubernetes_name(bad, MAX_NAME_LEN), "{bad:?}");
        }
        assert!(is_kubernetes_name(&"a".repeat(63), 63));
        assert!(!is_kubernetes_name(&"a".repeat(64), 63));
    }
}
