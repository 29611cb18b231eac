//! Path globs for pins and preloads (`/train/2026-11-*/**`), matched against normalized
//! [`DatasetPath`]s. `*` does not cross a `/`; `**` does.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{Result, WireError as Error};
use crate::path::DatasetPath;

/// A compiled set of globs; empty matches nothing.
#[derive(Debug, Clone)]
pub struct PathGlobs {
    patterns: Vec<String>,
    set: GlobSet,
}

impl PathGlobs {
    /// Compiles globs. Each is normalized like a path first (so "train/**" means
    /// "/train/**"), and refused if it could escape the dataset.
    pub fn new<S: AsRef<str>>(globs: &[S]) -> Result<Self> {
        let mut builder = GlobSetBuilder::new();
        let mut patterns = Vec::new();
        for g in globs {
            let g = g.as_ref();
            let normalized = DatasetPath::parse(g).map_err(|e| Error::InvalidPath {
                path: g.to_string(),
                reason: e.to_string(),
            })?;
            let glob = GlobBuilder::new(normalized.as_str())
                .literal_separator(true)
                .build()
                .map_err(|e| Error::InvalidPath {
                    path: g.to_string(),
                    reason: format!("not a valid glob: {e}"),
                })?;
            builder.add(glob);
            patterns.push(normalized.as_str().to_string());
        }
        let set = builder
            .build()
            .map_err(|e| Error::config("globs", e.to_string()))?;
        Ok(PathGlobs { patterns, set })
    }

    /// True if any glob matches the path.
    pub fn matches(&self, path: &DatasetPath) -> bool {
        !self.patterns.is_empty() && self.set.is_match(path.as_str())
    }

    /// True if no globs were given.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The normalized patterns.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// The longest literal directory prefix shared by every glob, used to list as little
    /// as possible when expanding globs (e.g. "/train/2026-11-*/**" -> "/train").
    pub fn literal_prefix(&self) -> DatasetPath {
        let mut best: Option<Vec<&str>> = None;
        for p in &self.patterns {
            let lit: Vec<&str> = p
                .split('/')
                .filter(|c| !c.is_empty())
                .take_while(|c| !c.contains(['*', '?', '[', '{']))
                .collect();
            // The last literal component may be a file name; keep only directories.
            let dirs = if lit.len() == p.split('/').filter(|c| !c.is_empty()).count() {
                lit[..lit.len().saturating_sub(1)].to_vec()
            } else {
                lit
            };
            best = Some(match best {
                None => dirs,
                Some(b) => b
                    .iter()
                    .zip(dirs.iter())
                    .take_while(|(a, b)| a == b)
                    .map(|(a, _)| *a)
                    .collect(),
            });
        }
        let joined = best.unwrap_or_default().join("/");
        DatasetPath::parse(&joined).unwrap_or_else(|_| DatasetPath::root())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> DatasetPath {
        DatasetPath::parse(s).unwrap()
    }

    #[test]
    fn matching() {
        let g = PathGlobs::new(&["/train/2026-11-*/**", "labels/*.csv"]).unwrap();
        assert!(g.matches(&p("/train/2026-11-03/a/b.jpg")));
        assert!(!g.matches(&p("/train/2026-10-03/a.jpg")));
        assert!(g.matches(&p("/labels/x.csv")));
        assert!(!g.matches(&p("/labels/sub/x.csv")));
        assert!(!PathGlobs::new::<&str>(&[]).unwrap().matches(&p("/a")));
        assert!(PathGlobs::new(&["/../**"]).is_err());
        assert!(PathGlobs::new(&["/a/[z"]).is_err());
    }

    #[test]
    fn literal_prefixes() {
        let g = PathGlobs::new(&["/train/2026-11-*/**"]).unwrap();
        assert_eq!(g.literal_prefix().as_str(), "/train");
        let g = PathGlobs::new(&["/a/b/c.txt", "/a/b/d/**"]).unwrap();
        assert_eq!(g.literal_prefix().as_str(), "/a/b");
        let g = PathGlobs::new(&["/**"]).unwrap();
        assert_eq!(g.literal_prefix().as_str(), "/");
    }
}
