//! A directory listing as the metadata cache holds it: compact, and filled page by page
//! while readers page through it.
//!
//! One copy per directory. Names and ETags of all entries sit in two strings and each
//! entry has 24 bytes of fixed fields, so an entry takes its name, its ETag and 24 bytes
//! (~70 bytes for an S3 object with a short name; a `Vec<DirEntry>` took ~430). Stats and
//! object versions are built when asked for ([`DirListing::get`], [`DirListing::find`]).
//!
//! The listing grows as the source answers, one page at a time; FUSE readdir serves the
//! entries already in while the rest arrive ([`DirListing::wait_for`]), every reader by
//! index into the same copy. Only a complete listing goes into the metadata cache, so a
//! lookup never takes a name not listed yet for a missing one.

use std::cmp::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::ser::{Serialize, SerializeSeq, Serializer};
use tokio::sync::watch;

use super::{DirEntry, EntryKind, FileStat};
use crate::cache::ObjectVersion;
use crate::path::DatasetPath;
use crate::source::SourceListing;
use crate::{Error, Result};

/// High bit of [`Packed::name_end`]: the entry is a directory.
const DIR_BIT: u32 = 1 << 31;
/// High bit of [`Packed::etag_end`]: the entry is hidden (a file of the same name is
/// listed too, or the same directory twice; only stores that page out of key order).
const HIDDEN_BIT: u32 = 1 << 31;
/// Most bytes of names (and of ETags) one listing holds: offsets are 31 bits.
const MAX_ARENA_BYTES: usize = (1 << 31) - 1;

/// The fixed fields of one entry; its name and ETag end at these offsets of the arenas
/// (and start where the previous entry's end).
#[derive(Debug, Clone, Copy)]
struct Packed {
    name_end: u32,
    etag_end: u32,
    size: u64,
    /// Nanoseconds since the epoch (negative before it).
    mtime_ns: i64,
}

impl Packed {
    fn is_dir(&self) -> bool {
        self.name_end & DIR_BIT != 0
    }

    fn is_hidden(&self) -> bool {
        self.etag_end & HIDDEN_BIT != 0
    }
}

/// Where the files of a listing are in their source.
#[derive(Debug)]
struct Origin {
    source: String,
    /// The directory's key relative to the source, with a trailing slash ("" at the
    /// source root): a file's key is this and its name.
    key_dir: String,
}

#[derive(Debug, Default)]
struct Body {
    names: String,
    etags: String,
    entries: Vec<Packed>,
    /// Every entry after the one before in key order (true of S3, GCS and Azure pages):
    /// lookups search `entries` directly.
    ordered: bool,
    /// Entry indices in key order, built when a listing that came out of order completes.
    index: Vec<u32>,
}

/// How far the listing is.
#[derive(Debug, Clone)]
enum Progress {
    /// Entries so far; more to come.
    Growing(usize),
    /// Every entry is in.
    Complete,
    /// The source failed; the entries in stay readable, no more come.
    Failed(Error),
}

/// One directory's entries, in the order the source listed them (key order: a
/// directory `a` sorts as `a/`). See the module docs.
#[derive(Debug)]
pub struct DirListing {
    dir: DatasetPath,
    origin: Option<Origin>,
    body: RwLock<Body>,
    progress: watch::Sender<Progress>,
}

/// One entry as stored: borrowed from the listing, nothing built yet.
#[derive(Debug, Clone, Copy)]
pub struct EntryRef<'a> {
    listing: &'a DirListing,
    name: &'a str,
    etag: &'a str,
    packed: Packed,
}

impl<'a> EntryRef<'a> {
    /// The entry's name (one path component).
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// True for directories.
    pub fn is_dir(&self) -> bool {
        self.packed.is_dir()
    }

    /// Size in bytes (0 for directories).
    pub fn size(&self) -> u64 {
        self.packed.size
    }

    /// The entry's dataset path.
    pub fn path(&self) -> DatasetPath {
        // Names are checked with `join` when they are added.
        self.listing
            .dir
            .join(self.name)
            .unwrap_or_else(|_| self.listing.dir.clone())
    }

    /// The entry's stat, with its object version for files.
    pub fn stat(&self) -> FileStat {
        let path = self.path();
        if self.is_dir() {
            return FileStat::dir(path);
        }
        let mtime = if self.packed.mtime_ns >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_nanos(self.packed.mtime_ns as u64)
        } else {
            SystemTime::UNIX_EPOCH - Duration::from_nanos(self.packed.mtime_ns.unsigned_abs())
        };
        if self.etag.starts_with(crate::writes::LOCAL_ETAG_PREFIX) {
            // A file written on this node, not at the source yet: no object version.
            return FileStat {
                path,
                kind: EntryKind::File,
                size: self.packed.size,
                mtime,
                version: None,
                etag: Some(self.etag.to_string()),
            };
        }
        let version = self.listing.origin.as_ref().map(|o| {
            ObjectVersion::new(
                &o.source,
                format!("{}{}", o.key_dir, self.name),
                self.etag.to_string(),
                self.packed.size,
            )
        });
        FileStat {
            path,
            kind: EntryKind::File,
            size: self.packed.size,
            mtime,
            version,
            etag: Some(self.etag.to_string()),
        }
    }

    /// The entry as an owned [`DirEntry`].
    pub fn to_entry(&self) -> DirEntry {
        DirEntry {
            name: self.name.to_string(),
            stat: self.stat(),
        }
    }
}

/// Key order of two entries: names compared as bytes, a directory as its name and `/`
/// (the order object stores list keys and common prefixes in).
fn key_cmp(a: &str, a_dir: bool, b: &str, b_dir: bool) -> Ordering {
    let a = a.bytes().chain(a_dir.then_some(b'/'));
    let b = b.bytes().chain(b_dir.then_some(b'/'));
    a.cmp(b)
}

/// An entry of a page before it is packed.
struct PageEntry {
    name: String,
    dir: bool,
    size: u64,
    mtime_ns: i64,
    etag: String,
}

fn nanos(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

impl Body {
    fn name_start(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            (self.entries[i - 1].name_end & !DIR_BIT) as usize
        }
    }

    fn etag_start(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            (self.entries[i - 1].etag_end & !HIDDEN_BIT) as usize
        }
    }

    fn name(&self, i: usize) -> &str {
        &self.names[self.name_start(i)..(self.entries[i].name_end & !DIR_BIT) as usize]
    }

    fn etag(&self, i: usize) -> &str {
        &self.etags[self.etag_start(i)..(self.entries[i].etag_end & !HIDDEN_BIT) as usize]
    }

    /// The position of key (`name`, `dir`) among the entries in key order, or where it
    /// would be.
    fn search(&self, name: &str, dir: bool) -> std::result::Result<usize, usize> {
        let cmp = |i: usize| key_cmp(self.name(i), self.entries[i].is_dir(), name, dir);
        if self.ordered {
            binary_search(self.entries.len(), cmp)
        } else {
            binary_search(self.index.len(), |k| cmp(self.index[k] as usize))
                .map(|k| self.index[k] as usize)
        }
    }

    fn push(&mut self, e: &PageEntry) -> Result<()> {
        if self.names.len() + e.name.len() > MAX_ARENA_BYTES
            || self.etags.len() + e.etag.len() > MAX_ARENA_BYTES
        {
            return Err(Error::Task(
                "a directory listing outgrew 2 GiB of names or ETags".into(),
            ));
        }
        self.names.push_str(&e.name);
        self.etags.push_str(&e.etag);
        self.entries.push(Packed {
            name_end: self.names.len() as u32 | if e.dir { DIR_BIT } else { 0 },
            etag_end: self.etags.len() as u32,
            size: e.size,
            mtime_ns: e.mtime_ns,
        });
        Ok(())
    }

    /// After the last page of a listing that came out of key order: the index in key
    /// order, and every key but one of a kind hidden (a file over a directory of the
    /// same name).
    fn index_unordered(&mut self) {
        let mut index: Vec<u32> = (0..self.entries.len() as u32).collect();
        index.sort_by(|&a, &b| {
            let (a, b) = (a as usize, b as usize);
            key_cmp(
                self.name(a),
                self.entries[a].is_dir(),
                self.name(b),
                self.entries[b].is_dir(),
            )
            .then(a.cmp(&b))
        });
        let mut hide = Vec::new();
        for k in 0..index.len() {
            let i = index[k] as usize;
            let dup = k > 0 && {
                let j = index[k - 1] as usize;
                self.name(i) == self.name(j) && self.entries[i].is_dir() == self.entries[j].is_dir()
            };
            // A file `a` sorts before `a/`, with at most names starting "a" and a byte
            // below '/' between them: look back for it.
            let shadowed = self.entries[i].is_dir() && {
                let name = self.name(i);
                index[..k]
                    .iter()
                    .rev()
                    .map(|&j| j as usize)
                    .take_while(|&j| self.name(j).starts_with(name))
                    .any(|j| !self.entries[j].is_dir() && self.name(j) == name)
            };
            if dup || shadowed {
                hide.push(i);
            }
        }
        for i in hide {
            self.entries[i].etag_end |= HIDDEN_BIT;
        }
        self.index = index;
    }
}

/// `slice::binary_search_by` over indices `0..len`.
fn binary_search(len: usize, cmp: impl Fn(usize) -> Ordering) -> std::result::Result<usize, usize> {
    let (mut lo, mut hi) = (0, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match cmp(mid) {
            Ordering::Less => lo = mid + 1,
            Ordering::Greater => hi = mid,
            Ordering::Equal => return Ok(mid),
        }
    }
    Err(lo)
}

impl DirListing {
    /// An empty listing of `dir` about to be filled from `source`, whose key for `dir` is
    /// `rel` ("" at the source root).
    pub(super) fn growing(dir: DatasetPath, source: &str, rel: &str) -> Arc<Self> {
        let rel = rel.trim_matches('/');
        Arc::new(DirListing {
            dir,
            origin: Some(Origin {
                source: source.to_string(),
                key_dir: if rel.is_empty() {
                    String::new()
                } else {
                    format!("{rel}/")
                },
            }),
            body: RwLock::new(Body {
                ordered: true,
                ..Default::default()
            }),
            progress: watch::Sender::new(Progress::Growing(0)),
        })
    }

    /// A complete listing of directories only (the paths above source mount paths).
    pub(super) fn of_directories(dir: DatasetPath, mut names: Vec<String>) -> Arc<Self> {
        names.sort_by(|a, b| key_cmp(a, true, b, true));
        names.dedup();
        let mut body = Body {
            ordered: true,
            ..Default::default()
        };
        for name in names {
            if dir.join(&name).is_err() {
                continue;
            }
            let e = PageEntry {
                name,
                dir: true,
                size: 0,
                mtime_ns: 0,
                etag: String::new(),
            };
            // A few names: never near the arena limit.
            let _ = body.push(&e);
        }
        Arc::new(DirListing {
            dir,
            origin: None,
            body: RwLock::new(body),
            progress: watch::Sender::new(Progress::Complete),
        })
    }

    /// A complete listing of `entries` (the source's listing with this node's changes
    /// over it); files with a `local:` ETag are local ones.
    pub(super) fn of_entries(
        dir: DatasetPath,
        source: &str,
        rel: &str,
        entries: impl Iterator<Item = DirEntry>,
    ) -> Arc<Self> {
        let listing = Self::growing(dir, source, rel);
        let mut page = SourceListing::default();
        for e in entries {
            if e.stat.is_dir() {
                page.dirs.push(e.name);
            } else {
                page.files.push(crate::source::ObjectInfo {
                    key: e.name,
                    size: e.stat.size,
                    mtime: e.stat.mtime,
                    etag: e.stat.etag.unwrap_or_default(),
                });
            }
        }
        // Names came from valid paths and the arenas hold far more than one directory.
        let _ = listing.add_page(page);
        listing.finish();
        listing
    }

    /// Adds one page of the source's answer. Entries whose names are not valid path
    /// components are left out; a file hides a directory of the same name.
    pub(super) fn add_page(&self, page: SourceListing) -> Result<()> {
        let mut entries: Vec<PageEntry> = Vec::with_capacity(page.dirs.len() + page.files.len());
        for name in page.dirs {
            if self.dir.join(&name).is_ok() {
                entries.push(PageEntry {
                    name,
                    dir: true,
                    size: 0,
                    mtime_ns: 0,
                    etag: String::new(),
                });
            }
        }
        for f in page.files {
            let name = f.key.rsplit('/').next().unwrap_or(&f.key);
            // Keys that are not valid dataset paths (e.g. "a/../b") are hidden.
            if self.dir.join(name).is_err() {
                continue;
            }
            entries.push(PageEntry {
                name: name.to_string(),
                dir: false,
                size: f.size,
                mtime_ns: nanos(f.mtime),
                etag: f.etag,
            });
        }
        // A page holds objects and common prefixes apart, each sorted: one order.
        entries.sort_by(|a, b| key_cmp(&a.name, a.dir, &b.name, b.dir));
        let mut body = self.body.write().expect("listing");
        for e in &entries {
            if body.ordered
                && let Some(last) = body.entries.len().checked_sub(1)
                && key_cmp(body.name(last), body.entries[last].is_dir(), &e.name, e.dir)
                    != Ordering::Less
            {
                // Out of key order (or listed twice): sorted out once complete.
                body.ordered = false;
            }
            if body.ordered && e.dir && body.search(&e.name, false).is_ok() {
                continue;
            }
            body.push(e)?;
        }
        let len = body.entries.len();
        drop(body);
        self.progress.send_replace(Progress::Growing(len));
        Ok(())
    }

    /// Marks the listing complete (after its last page).
    pub(super) fn finish(&self) {
        let mut body = self.body.write().expect("listing");
        if !body.ordered {
            body.index_unordered();
        }
        body.names.shrink_to_fit();
        body.etags.shrink_to_fit();
        body.entries.shrink_to_fit();
        drop(body);
        self.progress.send_replace(Progress::Complete);
    }

    /// Marks the listing failed: readers get `error` once past the entries that came in.
    pub(super) fn fail(&self, error: Error) {
        self.progress.send_if_modified(|p| {
            if matches!(p, Progress::Growing(_)) {
                *p = Progress::Failed(error);
                true
            } else {
                false
            }
        });
    }

    /// The directory listed.
    pub fn dir(&self) -> &DatasetPath {
        &self.dir
    }

    /// Entries in so far (all of them once complete), hidden ones included: indices run
    /// from 0 to this.
    pub fn len(&self) -> usize {
        self.body.read().expect("listing").entries.len()
    }

    /// True when no entry is in.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True once every entry is in.
    pub fn is_complete(&self) -> bool {
        matches!(*self.progress.borrow(), Progress::Complete)
    }

    /// Waits until entry `i` is in (`true`) or the listing completed without it
    /// (`false`); the source's error if the listing failed first.
    pub async fn wait_for(&self, i: usize) -> Result<bool> {
        let mut rx = self.progress.subscribe();
        let progress = rx
            .wait_for(|p| match p {
                Progress::Growing(n) => *n > i,
                _ => true,
            })
            .await
            .map_err(|e| Error::Task(e.to_string()))?
            .clone();
        match progress {
            Progress::Failed(e) if self.len() <= i => Err(e),
            _ => Ok(i < self.len()),
        }
    }

    /// Waits until every entry is in; the source's error if the listing failed.
    pub async fn complete(&self) -> Result<()> {
        let mut rx = self.progress.subscribe();
        let progress = rx
            .wait_for(|p| !matches!(p, Progress::Growing(_)))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
            .clone();
        match progress {
            Progress::Failed(e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Calls `each` with the entries from index `from` on, as far as they are in, until it
    /// returns false. Hidden entries are skipped (their indices too). The listing is
    /// locked for reading meanwhile: `each` must not wait.
    pub fn visit(&self, from: usize, mut each: impl FnMut(usize, EntryRef<'_>) -> bool) {
        let body = self.body.read().expect("listing");
        for i in from..body.entries.len() {
            let packed = body.entries[i];
            if packed.is_hidden() {
                continue;
            }
            let e = EntryRef {
                listing: self,
                name: body.name(i),
                etag: body.etag(i),
                packed,
            };
            if !each(i, e) {
                break;
            }
        }
    }

    /// Entry `i` (`None` past the entries in, or hidden).
    pub fn get(&self, i: usize) -> Option<DirEntry> {
        let mut out = None;
        self.visit(i, |j, e| {
            if j == i {
                out = Some(e.to_entry());
            }
            false
        });
        out
    }

    /// Every entry in so far, built (for callers that want them all; readdir visits).
    pub fn entries(&self) -> Vec<DirEntry> {
        let mut out = Vec::with_capacity(self.len());
        self.visit(0, |_, e| {
            out.push(e.to_entry());
            true
        });
        out
    }

    /// The entry named `name`, if listed (a file before a directory of the same name).
    /// Meant for complete listings: a growing one answers from what is in.
    pub fn find(&self, name: &str) -> Option<DirEntry> {
        let body = self.body.read().expect("listing");
        if !body.ordered && body.index.len() != body.entries.len() {
            // Out of order and not complete yet: no index to search.
            return (0..body.entries.len())
                .find(|&i| !body.entries[i].is_hidden() && body.name(i) == name)
                .map(|i| self.entry_at(&body, i));
        }
        [false, true]
            .into_iter()
            .filter_map(|dir| body.search(name, dir).ok())
            .find(|&i| !body.entries[i].is_hidden())
            .map(|i| self.entry_at(&body, i))
    }

    fn entry_at(&self, body: &Body, i: usize) -> DirEntry {
        EntryRef {
            listing: self,
            name: body.name(i),
            etag: body.etag(i),
            packed: body.entries[i],
        }
        .to_entry()
    }

    /// Bytes this listing holds on the heap (its capacity, not counting the allocator's
    /// own overhead): what the metadata cache costs per directory.
    pub fn heap_bytes(&self) -> usize {
        let body = self.body.read().expect("listing");
        body.names.capacity()
            + body.etags.capacity()
            + body.entries.capacity() * std::mem::size_of::<Packed>()
            + body.index.capacity() * std::mem::size_of::<u32>()
    }
}

/// Serialized as the list of its entries (the agent API's JSON).
impl Serialize for DirListing {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        let mut result = Ok(());
        self.visit(0, |_, e| {
            result = seq.serialize_element(&e.to_entry());
            result.is_ok()
        });
        result?;
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::ObjectInfo;

    const ETAG: &str = "\"9b2cf535f27731c974343645a3985328\"";

    fn page(dirs: &[&str], files: &[&str]) -> SourceListing {
        SourceListing {
            dirs: dirs.iter().map(|d| d.to_string()).collect(),
            files: files
                .iter()
                .map(|f| ObjectInfo {
                    key: format!("sub/{f}"),
                    size: f.len() as u64,
                    mtime: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
                    etag: ETAG.to_string(),
                })
                .collect(),
        }
    }

    fn names(l: &DirListing) -> Vec<String> {
        l.entries().into_iter().map(|e| e.name).collect()
    }

    fn listing() -> Arc<DirListing> {
        DirListing::growing(DatasetPath::parse("/d/sub").unwrap(), "s3", "sub")
    }

    #[test]
    fn pages_keep_key_order_and_a_file_hides_a_directory_of_its_name() {
        let l = listing();
        // One page holds objects and prefixes apart; "a" the file and "a/" the prefix
        // are on two pages, with "a-b" between them.
        l.add_page(page(&[], &["a", "a-b"])).unwrap();
        l.add_page(page(&["a", "b"], &["a0", "..", "c"])).unwrap();
        l.finish();
        assert_eq!(names(&l), ["a", "a-b", "a0", "b", "c"]);
        let a = l.find("a").unwrap();
        assert!(!a.stat.is_dir());
        let v = a.stat.version.unwrap();
        assert_eq!(
            (v.source.as_str(), v.key.as_str(), v.etag.as_str()),
            ("s3", "sub/a", ETAG)
        );
        assert_eq!(a.stat.path.as_str(), "/d/sub/a");
        assert_eq!(
            a.stat.mtime,
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
        );
        assert!(l.find("b").unwrap().stat.is_dir());
        assert!(l.find("missing").is_none() && l.find("..").is_none());
    }

    #[test]
    fn pages_out_of_key_order_are_indexed_when_complete() {
        let l = listing();
        l.add_page(page(&["m"], &["x", "y"])).unwrap();
        l.add_page(page(&["m", "x"], &["b"])).unwrap();
        l.finish();
        // Arrival order for readdir; every name once.
        assert_eq!(names(&l), ["m", "x", "y", "b"]);
        assert!(!l.find("x").unwrap().stat.is_dir(), "the file wins");
        assert!(l.find("m").unwrap().stat.is_dir());
        assert_eq!(l.find("b").unwrap().stat.size, 1);
        assert!(l.find("a").is_none());
    }

    #[tokio::test]
    async fn readers_wait_for_the_pages_they_need() {
        let l = listing();
        l.add_page(page(&[], &["a"])).unwrap();
        assert!(l.wait_for(0).await.unwrap());
        let waiting = {
            let l = l.clone();
            tokio::spawn(async move { l.wait_for(1).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "entry 1 is not in yet");
        l.add_page(page(&[], &["b"])).unwrap();
        assert!(waiting.await.unwrap().unwrap());
        assert!(!l.is_complete());
        l.fail(Error::Task("gone".into()));
        assert!(l.wait_for(1).await.unwrap(), "what came in stays readable");
        assert!(l.wait_for(2).await.is_err());
        assert!(l.complete().await.is_err());
    }

    /// What the metadata cache holds per entry, without the allocator: 24 bytes, the
    /// name and the ETag.
    #[test]
    fn an_entry_costs_its_name_its_etag_and_24_bytes() {
        let l = listing();
        let n = 10_000;
        for p in 0..n / 1000 {
            let files: Vec<String> = (p * 1000..(p + 1) * 1000)
                .map(|i| format!("obj-{i:07}"))
                .collect();
            let refs: Vec<&str> = files.iter().map(String::as_str).collect();
            l.add_page(page(&[], &refs)).unwrap();
        }
        l.finish();
        assert_eq!(l.len(), n);
        let per_entry = l.heap_bytes() as f64 / n as f64;
        assert_eq!(std::mem::size_of::<Packed>(), 24);
        assert!(
            per_entry <= (24 + 11 + ETAG.len()) as f64 + 0.5,
            "{per_entry} bytes per entry"
        );
    }
}
