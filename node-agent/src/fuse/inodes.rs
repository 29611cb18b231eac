//! Inode numbers of the paths the kernel knows, and their lookup counts.

use std::collections::HashMap;

use crate::path::DatasetPath;

/// Inode numbers of the paths the kernel knows. A path's number is its hash
/// ([`path_ino`]), the `d_ino` plain readdir shows for it, so `readdir` and `stat` agree;
/// a sequential number (below 2^63, apart from the hashes) when that one is taken by
/// another version of the path still open, or by a hash collision. An entry goes when
/// the kernel forgets every lookup of it, so a walk over millions of objects does not
/// keep millions of entries after the kernel dropped them.
pub(super) struct InodeTable {
    // Path and the kernel's lookup count (entries sent by lookup and readdirplus).
    pub(super) by_ino: HashMap<u64, (DatasetPath, u64)>,
    pub(super) by_path: HashMap<DatasetPath, u64>,
    pub(super) next: u64,
}

impl InodeTable {
    /// A table that knows the root (inode 1, always looked up).
    pub(super) fn with_root() -> Self {
        let mut table = InodeTable {
            by_ino: HashMap::new(),
            by_path: HashMap::new(),
            next: 2,
        };
        table.by_ino.insert(1, (DatasetPath::root(), 1));
        table.by_path.insert(DatasetPath::root(), 1);
        table
    }

    pub(super) fn ino_for(&mut self, path: &DatasetPath) -> u64 {
        if let Some(i) = self.by_path.get(path) {
            return *i;
        }
        let hashed = path_ino(path);
        let i = if self.by_ino.contains_key(&hashed) {
            self.next += 1;
            self.next - 1
        } else {
            hashed
        };
        self.by_ino.insert(i, (path.clone(), 0));
        self.by_path.insert(path.clone(), i);
        i
    }

    /// The inode of `path`, counted as one more lookup the kernel holds.
    pub(super) fn looked_up(&mut self, path: &DatasetPath) -> u64 {
        let i = self.ino_for(path);
        if let Some(e) = self.by_ino.get_mut(&i) {
            e.1 += 1;
        }
        i
    }

    /// The kernel dropped `n` lookups of `ino`; true if the entry is gone.
    pub(super) fn forget(&mut self, ino: u64, n: u64) -> bool {
        if ino == 1 {
            return false;
        }
        let Some(e) = self.by_ino.get_mut(&ino) else {
            return false;
        };
        e.1 = e.1.saturating_sub(n);
        if e.1 > 0 {
            return false;
        }
        if let Some((path, _)) = self.by_ino.remove(&ino)
            && self.by_path.get(&path) == Some(&ino)
        {
            self.by_path.remove(&path);
        }
        true
    }
}

/// The inode number of `path`, unless taken (see [`InodeTable`]): also the `d_ino` of
/// plain readdir entries the kernel has not looked up, which must not create table
/// entries (readdir does not count as a lookup, so nothing would forget them). The high
/// bit keeps it apart from the table's sequential numbers.
pub(super) fn path_ino(path: &DatasetPath) -> u64 {
    path_text_ino(path.as_str())
}

/// [`path_ino`] of the path whose text is `path` (a normalized path: readdir builds its
/// entries' paths as text).
pub(super) fn path_text_ino(path: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    h.finish() | (1 << 63)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn table() -> InodeTable {
        InodeTable {
            by_ino: HashMap::new(),
            by_path: HashMap::new(),
            next: 2,
        }
    }

    #[test]
    pub(super) fn a_looked_up_path_gets_the_number_plain_readdir_shows() {
        let mut t = table();
        let a = DatasetPath::parse("/d/a").unwrap();
        let ino = t.looked_up(&a);
        assert_eq!(ino, path_ino(&a), "readdir would show another d_ino");
        // Readdir builds paths as text: the same number, the same entry.
        assert_eq!(path_text_ino("/d/a"), ino);
        assert_eq!(t.by_path.get("/d/a"), Some(&ino));
        // Forgotten and looked up again: the same number.
        assert!(t.forget(ino, 1));
        assert_eq!(t.looked_up(&a), path_ino(&a));
        // The number still held by another version of the path (its entry moved aside
        // while a handle is open): a sequential one, apart from the hashes.
        t.by_path.remove(&a);
        let other = t.looked_up(&a);
        assert_ne!(other, ino);
        assert!(other < 1 << 63);
    }
}
