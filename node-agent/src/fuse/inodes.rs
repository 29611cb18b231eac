//! Inode numbers of the paths the kernel knows, and their lookup counts.

use std::collections::HashMap;
use std::sync::Arc;

use super::takeover::{Record, TakeoverLog};
use crate::path::DatasetPath;

/// The lookup count of an inode a new agent restored from the takeover log: the log
/// does not keep counts, so it is kept until the mount goes rather than risk dropping a
/// node id the kernel still uses.
const RESTORED_LOOKUPS: u64 = 1 << 40;

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
    /// Older numbers of a path: inodes of versions still open when the path got a new
    /// number. They name the path too, and move with it on a rename (the kernel may still
    /// hold any of them under the path's name).
    pub(super) older: HashMap<DatasetPath, Vec<u64>>,
    pub(super) next: u64,
    /// Where every new entry and every dropped one is written before the kernel learns of
    /// it (mounts that can be taken over).
    pub(super) log: Option<Arc<TakeoverLog>>,
}

impl InodeTable {
    /// A table that knows the root (inode 1, always looked up).
    pub(super) fn with_root() -> Self {
        let mut table = InodeTable {
            by_ino: HashMap::new(),
            by_path: HashMap::new(),
            older: HashMap::new(),
            next: 2,
            log: None,
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
        if let Some(log) = &self.log {
            log.append(&Record::Inode {
                ino: i,
                path: path.as_str().to_string(),
            });
        }
        self.by_ino.insert(i, (path.clone(), 0));
        self.by_path.insert(path.clone(), i);
        i
    }

    /// Takes back the entries a previous agent handed out (from its takeover log).
    pub(super) fn restore(&mut self, entries: &HashMap<u64, String>) {
        for (&ino, path) in entries {
            let Ok(path) = DatasetPath::parse(path) else {
                continue;
            };
            if ino < 1 << 63 {
                self.next = self.next.max(ino + 1);
            }
            self.by_ino.insert(ino, (path.clone(), RESTORED_LOOKUPS));
            // Of two numbers of one path (an old version still open), the hash one.
            let older = if ino >= 1 << 63 || !self.by_path.contains_key(&path) {
                self.by_path.insert(path.clone(), ino)
            } else {
                Some(ino)
            };
            if let Some(older) = older.filter(|o| *o != ino) {
                self.older.entry(path).or_default().push(older);
            }
        }
    }

    /// `path` gets a new number at its next lookup (a new version while the current one
    /// is open); the current one is kept among its older numbers.
    pub(super) fn renumber(&mut self, path: &DatasetPath) {
        if let Some(ino) = self.by_path.remove(path) {
            self.older.entry(path.clone()).or_default().push(ino);
        }
    }

    /// The entries, as records of a rewritten takeover log.
    pub(super) fn records(&self) -> impl Iterator<Item = Record> + '_ {
        self.by_ino
            .iter()
            .filter(|(ino, _)| **ino != 1)
            .map(|(&ino, (path, _))| Record::Inode {
                ino,
                path: path.as_str().to_string(),
            })
    }

    /// A file renamed: its inode now names `to` (one that named `to` keeps its number for
    /// the handles the kernel still has open on it).
    pub(super) fn moved(&mut self, from: &DatasetPath, to: &DatasetPath) {
        let current = self.by_path.remove(from);
        let older = self.older.remove(from).unwrap_or_default();
        // A file `to` named before stays in `by_ino` for its open handles until forgotten.
        if let Some(ino) = current {
            self.by_path.insert(to.clone(), ino);
        }
        if !older.is_empty() {
            self.older.entry(to.clone()).or_default().extend(&older);
        }
        for ino in current.into_iter().chain(older) {
            if let Some(e) = self.by_ino.get_mut(&ino) {
                e.0 = to.clone();
            }
            if let Some(log) = &self.log {
                log.append(&Record::Inode {
                    ino,
                    path: to.as_str().to_string(),
                });
            }
        }
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
        if let Some(log) = &self.log {
            log.append(&Record::Drop { ino });
        }
        if let Some((path, _)) = self.by_ino.remove(&ino) {
            if self.by_path.get(&path) == Some(&ino) {
                self.by_path.remove(&path);
            } else if let Some(older) = self.older.get_mut(&path) {
                older.retain(|o| *o != ino);
                if older.is_empty() {
                    self.older.remove(&path);
                }
            }
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
    // A hash fixed here (FNV-1a, then murmur3's finalizer to spread it), not std's
    // DefaultHasher, whose algorithm may change between Rust releases: an upgraded agent
    // taking a mount over must number paths as the old one did.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h | (1 << 63)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn table() -> InodeTable {
        InodeTable {
            by_ino: HashMap::new(),
            by_path: HashMap::new(),
            older: HashMap::new(),
            next: 2,
            log: None,
        }
    }

    #[test]
    fn path_numbers_do_not_depend_on_the_build() {
        // Fixed values: a new agent binary taking a mount over must number paths alike.
        assert_eq!(path_text_ino("/"), 0xa3c4_9fa3_6281_442f);
        assert_eq!(path_text_ino("/d/a"), 0x96d9_1aba_da04_a96c);
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

    /// A path that got a new number while its old version was open, then renamed: every
    /// number the kernel may hold under the old name names the new one (an open of the
    /// older one found the old name gone: ENOENT).
    #[test]
    fn a_rename_moves_every_number_of_the_path() {
        let mut t = table();
        let a = DatasetPath::parse("/d/a").unwrap();
        let b = DatasetPath::parse("/d/b").unwrap();
        let first = t.looked_up(&a);
        t.renumber(&a);
        let second = t.looked_up(&a);
        assert_ne!(first, second);
        t.moved(&a, &b);
        for ino in [first, second] {
            assert_eq!(t.by_ino.get(&ino).map(|e| &e.0), Some(&b), "{ino}");
        }
        assert_eq!(t.by_path.get(&b), Some(&second));
        assert!(!t.by_path.contains_key(&a) && !t.older.contains_key(&a));
        // Forgetting the older one leaves the current one alone.
        assert!(t.forget(first, 1));
        assert_eq!(t.by_path.get(&b), Some(&second));
        assert!(!t.older.contains_key(&b));
    }
}
