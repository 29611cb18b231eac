//! The one path normalization used by every entry point (FUSE, HTTP, CSI subPath, globs).
//!
//! A [`DatasetPath`] is absolute ("/" is the dataset root), has no empty, "." or ".."
//! components and no trailing slash. Parsing is strict on purpose: anything that could be
//! read as leaving the dataset (`..`, percent-encoded dots or slashes, backslashes, NUL)
//! is refused instead of being "fixed up", so that no two layers can disagree about what
//! a path means.

use std::fmt;

/// Longest accepted path in bytes (Linux PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest accepted component in bytes (Linux NAME_MAX).
pub const MAX_COMPONENT_BYTES: usize = 255;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path {0:?} contains \"..\", which could escape the dataset")]
    DotDot(String),
    #[error("path {0:?} contains a percent-encoded dot, slash, backslash or NUL")]
    EncodedSeparator(String),
    #[error("path {0:?} contains a backslash")]
    Backslash(String),
    #[error("path contains a NUL or control byte")]
    ControlCharacter,
    #[error("path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    #[error("path component is longer than {MAX_COMPONENT_BYTES} bytes")]
    ComponentTooLong,
}

/// A normalized absolute path inside a dataset. Root is "/".
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DatasetPath(String);

impl DatasetPath {
    /// The dataset root, "/".
    pub fn root() -> Self {
        DatasetPath("/".to_string())
    }

    /// Parses a user-supplied path. Relative paths are taken from the root, repeated and
    /// trailing slashes and "." components are dropped; everything that could escape is an
    /// error (see the module docs).
    pub fn parse(input: &str) -> Result<Self, PathError> {
        if input.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong);
        }
        if input.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(PathError::ControlCharacter);
        }
        if input.contains('\\') {
            return Err(PathError::Backslash(input.to_string()));
        }
        if has_encoded_separator(input) {
            return Err(PathError::EncodedSeparator(input.to_string()));
        }
        let mut out = String::with_capacity(input.len() + 1);
        for component in input.split('/') {
            match component {
                "" | "." => continue,
                ".." => return Err(PathError::DotDot(input.to_string())),
                c => {
                    if c.len() > MAX_COMPONENT_BYTES {
                        return Err(PathError::ComponentTooLong);
                    }
                    out.push('/');
                    out.push_str(c);
                }
            }
        }
        if out.is_empty() {
            out.push('/');
        }
        Ok(DatasetPath(out))
    }

    /// The path as a string, always starting with "/".
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path without its leading slash ("" for the root).
    pub fn relative(&self) -> &str {
        &self.0[1..]
    }

    /// True for "/".
    pub fn is_root(&self) -> bool {
        self.0.len() == 1
    }

    /// The components, root has none.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.relative().split('/').filter(|c| !c.is_empty())
    }

    /// The last component, `None` for the root.
    pub fn file_name(&self) -> Option<&str> {
        if self.is_root() {
            None
        } else {
            self.0.rsplit('/').next()
        }
    }

    /// The parent directory, `None` for the root.
    pub fn parent(&self) -> Option<DatasetPath> {
        if self.is_root() {
            return None;
        }
        let idx = self.0.rfind('/').unwrap_or(0);
        if idx == 0 {
            Some(DatasetPath::root())
        } else {
            Some(DatasetPath(self.0[..idx].to_string()))
        }
    }

    /// Appends one component (a directory entry name), validated like [`DatasetPath::parse`];
    /// a name containing "/" is refused.
    pub fn join(&self, name: &str) -> Result<DatasetPath, PathError> {
        if name.contains('/') || name.is_empty() || name == "." {
            return Err(PathError::EncodedSeparator(name.to_string()));
        }
        let joined = if self.is_root() {
            format!("/{name}")
        } else {
            format!("{}/{name}", self.0)
        };
        DatasetPath::parse(&joined)
    }

    /// Appends a relative path of possibly several components (e.g. a CSI subPath).
    pub fn join_path(&self, rel: &str) -> Result<DatasetPath, PathError> {
        let rel = DatasetPath::parse(rel)?;
        if rel.is_root() {
            return Ok(self.clone());
        }
        if self.is_root() {
            return Ok(rel);
        }
        DatasetPath::parse(&format!("{}{}", self.0, rel.0))
    }

    /// If `self` is `base` or below it, the remainder without a leading slash.
    pub fn strip_prefix(&self, base: &DatasetPath) -> Option<&str> {
        if base.is_root() {
            return Some(self.relative());
        }
        let rest = self.0.strip_prefix(&base.0)?;
        if rest.is_empty() {
            Some("")
        } else {
            rest.strip_prefix('/')
        }
    }

    /// True if `self` equals `base` or is below it.
    pub fn starts_with(&self, base: &DatasetPath) -> bool {
        self.strip_prefix(base).is_some()
    }
}

fn has_encoded_separator(input: &str) -> bool {
    let bytes = input.as_bytes();
    bytes.windows(3).any(|w| {
        if w[0] != b'%' {
            return false;
        }
        let hex = [w[1].to_ascii_lowercase(), w[2].to_ascii_lowercase()];
        // %2e '.', %2f '/', %5c '\', %00 NUL, %25 '%' (double encoding of any of these)
        matches!(&hex, b"2e" | b"2f" | b"5c" | b"00" | b"25")
    })
}

impl fmt::Display for DatasetPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DatasetPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::str::FromStr for DatasetPath {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DatasetPath::parse(s)
    }
}

impl AsRef<str> for DatasetPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Maps keyed by path can be searched with the path's text (a readdir of a large
/// directory looks up every entry without building a path for it). Equality and hashing
/// are the inner string's, so they agree with `str`'s as `Borrow` requires.
impl std::borrow::Borrow<str> for DatasetPath {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalizes() {
        assert_eq!(DatasetPath::parse("").unwrap().as_str(), "/");
        assert_eq!(DatasetPath::parse("/").unwrap().as_str(), "/");
        assert_eq!(DatasetPath::parse("a//b/./c/").unwrap().as_str(), "/a/b/c");
        assert_eq!(
            DatasetPath::parse("/a b/ü.txt").unwrap().as_str(),
            "/a b/ü.txt"
        );
        assert_eq!(
            DatasetPath::parse("/100%.txt").unwrap().as_str(),
            "/100%.txt"
        );
        assert_eq!(DatasetPath::parse("/..a/b..").unwrap().as_str(), "/..a/b..");
    }

    #[test]
    fn refuses_escapes() {
        for bad in [
            "..",
            "/../etc/passwd",
            "a/../../b",
            "/a/..",
            "%2e%2e/x",
            "/%2E%2E/x",
            "a%2fb",
            "a%2Fb",
            "a%5cb",
            "a%00b",
            "%252e%252e",
            "a\\b",
            "..\\..",
            "a\0b",
            "a\nb",
        ] {
            assert!(DatasetPath::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            DatasetPath::parse(&"x".repeat(256)),
            Err(PathError::ComponentTooLong)
        );
        assert_eq!(
            DatasetPath::parse(&"/abc".repeat(1100)),
            Err(PathError::TooLong)
        );
    }

    #[test]
    fn parent_join_strip() {
        let p = DatasetPath::parse("/a/b/c").unwrap();
        assert_eq!(p.parent().unwrap().as_str(), "/a/b");
        assert_eq!(
            DatasetPath::parse("/a").unwrap().parent().unwrap(),
            DatasetPath::root()
        );
        assert_eq!(p.file_name(), Some("c"));
        assert!(p.join("..").is_err());
        assert!(p.join("x/y").is_err());
        assert_eq!(p.join("d").unwrap().as_str(), "/a/b/c/d");
        let base = DatasetPath::parse("/a").unwrap();
        assert_eq!(p.strip_prefix(&base), Some("b/c"));
        assert_eq!(base.strip_prefix(&base), Some(""));
        assert_eq!(DatasetPath::parse("/ab").unwrap().strip_prefix(&base), None);
        assert_eq!(base.join_path("x/./y").unwrap().as_str(), "/a/x/y");
        assert!(base.join_path("../x").is_err());
    }

    proptest! {
        // Whatever the input, an accepted path never has a ".." component, never an empty
        // one, has no backslash or NUL, and re-parses to itself.
        #[test]
        fn no_input_escapes(s in "[a-zA-Z0-9./%\\\\\\x00 ]{0,40}") {
            if let Ok(p) = DatasetPath::parse(&s) {
                prop_assert!(p.as_str().starts_with('/'));
                prop_assert!(p.components().all(|c| c != ".." && c != "." && !c.is_empty()));
                prop_assert!(!p.as_str().contains('\\') && !p.as_str().contains('\0'));
                prop_assert!(!p.as_str().to_ascii_lowercase().contains("%2e"));
                prop_assert!(!p.as_str().to_ascii_lowercase().contains("%2f"));
                prop_assert_eq!(DatasetPath::parse(p.as_str()).unwrap(), p.clone());
                // Joined under a base, it stays under the base.
                let base = DatasetPath::parse("/base/dir").unwrap();
                let joined = base.join_path(p.as_str()).unwrap();
                prop_assert!(joined.starts_with(&base));
            }
        }

        #[test]
        fn arbitrary_unicode_never_escapes(s in any::<String>()) {
            if let Ok(p) = DatasetPath::parse(&s) {
                prop_assert!(p.components().all(|c| c != ".."));
                let base = DatasetPath::parse("/base").unwrap();
                prop_assert!(base.join_path(p.as_str()).unwrap().starts_with(&base));
            }
        }
    }
}
