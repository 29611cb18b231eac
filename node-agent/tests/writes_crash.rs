//! Crash safety of writable datasets (issue 24), with real parts: 8 writers create, append
//! to, rewrite, rename and delete 1,000 files through a write-back FUSE mount over a real
//! S3 server (moto) while the agent (`strata-agent serve`, its mount kept by a
//! `strata-agent holder`) is killed with SIGKILL 5 times and started again with the same
//! command.
//!
//! - No writer call fails: the holder keeps the mount, the kernel sends what was in
//!   flight again, and the new agent finds the dead one's write handles and journal.
//! - A lister polls the bucket the whole time: every object it ever lists has the size and
//!   ETag (the MD5 of the content, or of its parts' MD5s) of a content some writer closed
//!   or fsynced under that name, never a part of one; some are fetched and hashed too.
//! - After the last restart, once the agent's metrics say nothing is pending, the bucket
//!   holds exactly the files the writers' models say exist (renamed ones under the new
//!   name only, deleted ones nowhere), each with the right SHA-256, and nothing else.
//!
//! Needs root and /dev/fuse.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest as _, Sha256};
use strata_agent::config::{CacheSettings, DatasetConfig, WriteMode};
use strata_agent::http::client::AgentClient;
use strata_testkit::fuse::require_fuse;
use strata_testkit::s3::S3Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const WRITERS: usize = 8;
const FILES_PER_WRITER: usize = 125;
const KILLS: usize = 5;
/// Every random choice of the run (sizes, contents, operations, kill moments) follows it.
const SEED: u64 = 0x5eed_0024;
/// The uploader's part size (engine/src/writes/upload.rs): larger files go up in parts of
/// this size, and S3 gives them the MD5 of the parts' MD5s (and their count) as ETag.
const PART_BYTES: u64 = 8 << 20;
const BUCKET: &str = "crashsafe";
const PREFIX: &str = "ds";
const NAMESPACE: &str = "test";
const DATASET: &str = "crash";

/// splitmix64: reproducible, and fast enough to fill the files.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// Between `lo` and `hi`, evenly spread over the orders of magnitude.
    fn log_uniform(&mut self, lo: u64, hi: u64) -> u64 {
        let f = self.next() as f64 / u64::MAX as f64;
        ((lo as f64) * (hi as f64 / lo as f64).powf(f)) as u64
    }

    /// A new file's size: 0 to 3 MiB, most of them small.
    fn file_size(&mut self) -> u64 {
        match self.below(20) {
            0..=1 => self.below(64),
            2 => self.below(3 * MIB + 1),
            _ => self.log_uniform(64, 3 * MIB),
        }
    }
}

/// MD5 (RFC 1321), streaming: S3's ETags are MD5s, so the lister can check every object it
/// lists against the writers' models without fetching it (written out here: the agent's
/// dev-dependencies have no MD5, and the test checks it against the reference vectors).
#[derive(Clone)]
struct Md5 {
    state: [u32; 4],
    block: [u8; 64],
    filled: usize,
    len: u64,
}

const MD5_K: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
];

const MD5_S: [[u32; 4]; 4] = [
    [7, 12, 17, 22],
    [5, 9, 14, 20],
    [4, 11, 16, 23],
    [6, 10, 15, 21],
];

impl Md5 {
    fn new() -> Md5 {
        Md5 {
            state: [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476],
            block: [0; 64],
            filled: 0,
            len: 0,
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.filled > 0 {
            let take = (64 - self.filled).min(data.len());
            self.block[self.filled..self.filled + take].copy_from_slice(&data[..take]);
            self.filled += take;
            data = &data[take..];
            if self.filled < 64 {
                return;
            }
            let block = self.block;
            md5_compress(&mut self.state, &block);
            self.filled = 0;
        }
        let mut blocks = data.chunks_exact(64);
        for block in &mut blocks {
            md5_compress(&mut self.state, block.try_into().unwrap());
        }
        let rest = blocks.remainder();
        self.block[..rest.len()].copy_from_slice(rest);
        self.filled = rest.len();
    }

    fn finish(mut self) -> [u8; 16] {
        let bits = self.len.wrapping_mul(8);
        self.update(&[0x80]);
        while self.filled != 56 {
            self.update(&[0]);
        }
        self.update(&bits.to_le_bytes());
        let mut out = [0u8; 16];
        for (i, word) in self.state.iter().enumerate() {
            out[4 * i..4 * i + 4].copy_from_slice(&word.to_le_bytes());
        }
        out
    }
}

fn md5_compress(state: &mut [u32; 4], block: &[u8; 64]) {
    let m: [u32; 16] =
        std::array::from_fn(|i| u32::from_le_bytes(block[4 * i..4 * i + 4].try_into().unwrap()));
    let [mut a, mut b, mut c, mut d] = *state;
    for i in 0..64 {
        let (f, g) = match i / 16 {
            0 => ((b & c) | (!b & d), i),
            1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
            2 => (b ^ c ^ d, (3 * i + 5) % 16),
            _ => (c ^ (b | !d), (7 * i) % 16),
        };
        let f = f.wrapping_add(a).wrapping_add(MD5_K[i]).wrapping_add(m[g]);
        a = d;
        d = c;
        c = b;
        b = b.wrapping_add(f.rotate_left(MD5_S[i / 16][i % 4]));
    }
    for (s, v) in state.iter_mut().zip([a, b, c, d]) {
        *s = s.wrapping_add(v);
    }
}

fn md5_hex(data: &[u8]) -> String {
    let mut m = Md5::new();
    m.update(data);
    hex::encode(m.finish())
}

/// A content as the bucket shows it: size, ETag and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Version {
    size: u64,
    /// The ETag of this uploader's PUT: the MD5 of the whole, or past one part, of the
    /// parts' MD5s and their count.
    etag: String,
    /// The MD5 of the whole: the ETag of a copy made at the source (a renamed file).
    md5: String,
    sha256: String,
}

/// A writer's model of one file's content, hashed as it grows (appends extend it).
#[derive(Clone)]
struct Content {
    len: u64,
    sha: Sha256,
    /// MD5 of the part being filled, and of the parts before it.
    part: Md5,
    part_len: u64,
    parts: Vec<[u8; 16]>,
    /// MD5 of the whole once past the first part (before, the part's is the whole's).
    whole: Option<Md5>,
}

impl Content {
    fn new() -> Content {
        Content {
            len: 0,
            sha: Sha256::new(),
            part: Md5::new(),
            part_len: 0,
            parts: Vec::new(),
            whole: None,
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        self.sha.update(data);
        while !data.is_empty() {
            let take = (PART_BYTES - self.part_len).min(data.len() as u64) as usize;
            self.part.update(&data[..take]);
            if let Some(whole) = &mut self.whole {
                whole.update(&data[..take]);
            }
            self.part_len += take as u64;
            data = &data[take..];
            if self.part_len == PART_BYTES {
                if self.parts.is_empty() {
                    self.whole = Some(self.part.clone());
                }
                let done = std::mem::replace(&mut self.part, Md5::new());
                self.parts.push(done.finish());
                self.part_len = 0;
            }
        }
    }

    fn version(&self) -> Version {
        let sha256 = hex::encode(self.sha.clone().finalize());
        let md5 = match &self.whole {
            Some(whole) => hex::encode(whole.clone().finish()),
            None => hex::encode(self.part.clone().finish()),
        };
        let etag = if self.len <= PART_BYTES {
            md5.clone()
        } else {
            let mut digests = self.parts.clone();
            if self.part_len > 0 {
                digests.push(self.part.clone().finish());
            }
            let mut m = Md5::new();
            for d in &digests {
                m.update(d);
            }
            format!("{}-{}", hex::encode(m.finish()), digests.len())
        };
        Version {
            size: self.len,
            etag,
            md5,
            sha256,
        }
    }
}

/// What the writers share: every content each name was given (closed, fsynced, or a
/// file renamed onto it), and the run's figures.
struct Shared {
    since: Instant,
    /// What happened to each name, with the time.
    histories: Mutex<HashMap<String, Vec<String>>>,
    allowed: Mutex<HashMap<String, HashSet<Version>>>,
    /// Names whose content a failed call left unknown (none when the run passes).
    uncertain: Mutex<HashSet<String>>,
    created: AtomicUsize,
    appends: AtomicUsize,
    rewrites: AtomicUsize,
    renames: AtomicUsize,
    deletes: AtomicUsize,
    fsyncs: AtomicUsize,
    closes: AtomicUsize,
    read_backs: AtomicUsize,
    bytes: AtomicU64,
    errors: AtomicUsize,
    wrong: AtomicUsize,
    /// Longest single call, in microseconds (a write, fsync or close waiting for an agent).
    longest_call_us: AtomicU64,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            since: Instant::now(),
            histories: Default::default(),
            allowed: Default::default(),
            uncertain: Default::default(),
            created: Default::default(),
            appends: Default::default(),
            rewrites: Default::default(),
            renames: Default::default(),
            deletes: Default::default(),
            fsyncs: Default::default(),
            closes: Default::default(),
            read_backs: Default::default(),
            bytes: Default::default(),
            errors: Default::default(),
            wrong: Default::default(),
            longest_call_us: Default::default(),
        }
    }

    /// Notes what happened to a name (shown when its content at the source is wrong).
    fn history(&self, rel: &str, what: String) {
        let t = self.since.elapsed().as_secs_f64();
        self.histories
            .lock()
            .unwrap()
            .entry(rel.to_string())
            .or_default()
            .push(format!("{t:.2} {what}"));
    }

    fn allow(&self, rel: &str, v: Version) {
        self.history(rel, format!("closed or fsynced at {} bytes", v.size));
        self.allowed
            .lock()
            .unwrap()
            .entry(rel.to_string())
            .or_default()
            .insert(v);
    }

    fn timed<T>(&self, started: Instant, r: T) -> T {
        self.longest_call_us
            .fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        r
    }
}

/// One writer: its own directory `w<id>/`, its own files and its model of them.
struct Writer {
    id: usize,
    mnt: PathBuf,
    rng: Rng,
    shared: Arc<Shared>,
    live: BTreeMap<String, Content>,
    next_name: usize,
    created: usize,
    /// The create that makes a file larger than a part (a multipart upload).
    big_at: usize,
    buf: Vec<u8>,
}

impl Writer {
    fn new(id: usize, mnt: PathBuf, shared: Arc<Shared>) -> Writer {
        let mut rng = Rng(SEED ^ ((id as u64 + 1) << 32));
        let big_at = 10 + rng.below(FILES_PER_WRITER as u64 - 20) as usize;
        Writer {
            id,
            mnt,
            rng,
            shared,
            live: BTreeMap::new(),
            next_name: 0,
            created: 0,
            big_at,
            buf: Vec::new(),
        }
    }

    fn failed(&mut self, op: &str, rel: &str, e: &std::io::Error) {
        eprintln!(
            "writer {} at {:.2} s: {op} {rel}: {e} (errno {:?})",
            self.id,
            self.shared.since.elapsed().as_secs_f64(),
            e.raw_os_error()
        );
        self.shared.errors.fetch_add(1, Ordering::Relaxed);
        self.shared.history(rel, format!("{op} failed: {e}"));
        self.live.remove(rel);
        self.shared
            .uncertain
            .lock()
            .unwrap()
            .insert(rel.to_string());
    }

    fn new_name(&mut self, prefix: &str) -> String {
        self.next_name += 1;
        format!("w{}/{prefix}{:04}", self.id, self.next_name)
    }

    fn pick(&mut self) -> String {
        let i = self.rng.below(self.live.len() as u64) as usize;
        self.live.keys().nth(i).unwrap().clone()
    }

    fn run(mut self) -> BTreeMap<String, Content> {
        let dir = format!("w{}", self.id);
        if let Err(e) = std::fs::create_dir(self.mnt.join(&dir)) {
            self.failed("mkdir", &dir, &e);
            return self.live;
        }
        while self.created < FILES_PER_WRITER {
            let r = self.rng.below(100);
            if self.live.len() < 4 || r < 45 {
                self.create();
            } else if r < 65 {
                self.append();
            } else if r < 72 {
                self.rewrite();
            } else if r < 86 {
                self.rename();
            } else {
                self.delete();
            }
        }
        self.live
    }

    fn create(&mut self) {
        let rel = self.new_name("f");
        let size = if self.created == self.big_at {
            PART_BYTES + 1 + self.rng.below(2 * MIB)
        } else {
            self.rng.file_size()
        };
        self.created += 1;
        self.shared.created.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.mnt.join(&rel));
        match self.shared.timed(started, opened) {
            Ok(f) => {
                let mut content = Content::new();
                if self.fill_and_close(f, &rel, &mut content, size) {
                    self.live.insert(rel, content);
                }
            }
            Err(e) => self.failed("create", &rel, &e),
        }
    }

    fn append(&mut self) {
        let rel = self.pick();
        let mut content = self.live[&rel].clone();
        let size = self.rng.log_uniform(1, 512 * KIB);
        let started = Instant::now();
        let opened = std::fs::OpenOptions::new()
            .append(true)
            .open(self.mnt.join(&rel));
        match self.shared.timed(started, opened) {
            Ok(f) => {
                self.shared.appends.fetch_add(1, Ordering::Relaxed);
                self.shared.history(&rel, format!("append {size}"));
                if self.fill_and_close(f, &rel, &mut content, size) {
                    self.live.insert(rel, content);
                }
            }
            Err(e) => self.failed("open for append", &rel, &e),
        }
    }

    fn rewrite(&mut self) {
        let rel = self.pick();
        let size = self.rng.file_size();
        let started = Instant::now();
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.mnt.join(&rel));
        match self.shared.timed(started, opened) {
            Ok(f) => {
                self.shared.rewrites.fetch_add(1, Ordering::Relaxed);
                self.shared.history(&rel, format!("rewrite {size}"));
                let mut content = Content::new();
                if self.fill_and_close(f, &rel, &mut content, size) {
                    self.live.insert(rel, content);
                }
            }
            Err(e) => self.failed("open with O_TRUNC", &rel, &e),
        }
    }

    /// To a new name, or (a third of the time) over another of its files.
    fn rename(&mut self) {
        let from = self.pick();
        let to = if self.live.len() > 1 && self.rng.chance(33) {
            let mut to = self.pick();
            while to == from {
                to = self.pick();
            }
            to
        } else {
            self.new_name("r")
        };
        let started = Instant::now();
        let renamed = std::fs::rename(self.mnt.join(&from), self.mnt.join(&to));
        match self.shared.timed(started, renamed) {
            Ok(()) => {
                self.shared.history(&from, format!("renamed to {to}"));
                self.shared.history(&to, format!("renamed from {from}"));
                self.shared.renames.fetch_add(1, Ordering::Relaxed);
                let content = self.live.remove(&from).unwrap();
                self.shared.allow(&to, content.version());
                self.live.insert(to, content);
            }
            Err(e) => {
                self.failed("rename", &from, &e);
                self.live.remove(&to);
                self.shared.uncertain.lock().unwrap().insert(to);
            }
        }
    }

    fn delete(&mut self) {
        let rel = self.pick();
        let started = Instant::now();
        let removed = std::fs::remove_file(self.mnt.join(&rel));
        match self.shared.timed(started, removed) {
            Ok(()) => {
                self.shared.history(&rel, "deleted".into());
                self.shared.deletes.fetch_add(1, Ordering::Relaxed);
                self.live.remove(&rel);
            }
            Err(e) => self.failed("unlink", &rel, &e),
        }
    }

    /// Writes `size` more bytes in pieces of 4 KiB to 1 MiB, fsyncs on the way some of the
    /// time, and closes, checking what close returns. The contents closed or fsynced are
    /// the ones the bucket may show under this name.
    fn fill_and_close(
        &mut self,
        f: std::fs::File,
        rel: &str,
        content: &mut Content,
        size: u64,
    ) -> bool {
        let fsync_at = (size > 0 && self.rng.chance(30)).then(|| self.rng.below(size));
        let mut written = 0;
        let mut synced = false;
        while written < size {
            let n = (4 * KIB + self.rng.below(MIB)).min(size - written) as usize;
            let mut buf = std::mem::take(&mut self.buf);
            buf.resize(n, 0);
            self.rng.fill(&mut buf);
            let started = Instant::now();
            let result = self.shared.timed(started, (&f).write_all(&buf));
            if let Err(e) = result {
                self.buf = buf;
                self.failed("write", rel, &e);
                return false;
            }
            content.update(&buf);
            self.buf = buf;
            written += n as u64;
            if !synced && fsync_at.is_some_and(|at| written >= at) {
                synced = true;
                if !self.fsync(&f, rel, content) {
                    return false;
                }
            }
        }
        if self.rng.chance(10) && !self.fsync(&f, rel, content) {
            return false;
        }
        let started = Instant::now();
        let closed = self.shared.timed(started, nix::unistd::close(f));
        if let Err(errno) = closed {
            self.failed("close", rel, &std::io::Error::from(errno));
            return false;
        }
        self.shared.closes.fetch_add(1, Ordering::Relaxed);
        self.shared.bytes.fetch_add(size, Ordering::Relaxed);
        let v = content.version();
        self.shared.allow(rel, v.clone());
        // Close-to-open: a small file read back at once is what was written.
        if v.size <= MIB && self.rng.chance(20) {
            match std::fs::read(self.mnt.join(rel)) {
                Ok(data) => {
                    self.shared.read_backs.fetch_add(1, Ordering::Relaxed);
                    if hex::encode(Sha256::digest(&data)) != v.sha256 {
                        // Which earlier contents of the name the bytes read still begin with.
                        let prefixes: Vec<u64> = self.shared.allowed.lock().unwrap()[rel]
                            .iter()
                            .filter(|a| {
                                a.size <= data.len() as u64
                                    && hex::encode(Sha256::digest(&data[..a.size as usize]))
                                        == a.sha256
                            })
                            .map(|a| a.size)
                            .collect();
                        eprintln!(
                            "writer {} at {:.2} s: {rel} read back {} bytes, not the {} written; it begins with the contents closed or fsynced at sizes {prefixes:?}",
                            self.id,
                            self.shared.since.elapsed().as_secs_f64(),
                            data.len(),
                            v.size
                        );
                        self.shared.history(rel, "read back wrong".into());
                        self.shared.wrong.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    self.failed("read back", rel, &e);
                    return false;
                }
            }
        }
        true
    }

    fn fsync(&mut self, f: &std::fs::File, rel: &str, content: &Content) -> bool {
        let started = Instant::now();
        let synced = if self.rng.chance(50) {
            f.sync_all()
        } else {
            f.sync_data()
        };
        match self.shared.timed(started, synced) {
            Ok(()) => {
                self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
                self.shared.allow(rel, content.version());
                true
            }
            Err(e) => {
                self.failed("fsync", rel, &e);
                false
            }
        }
    }
}

/// Kills a process when the test ends (or fails).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Detaches whatever a failed run left mounted.
struct DetachOnDrop(PathBuf);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A running agent, by process id (a child of the launcher, not of the test).
struct AgentProcess(nix::unistd::Pid);

impl AgentProcess {
    fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.0, signal).unwrap();
    }

    /// Exited (a zombie its launcher has not reaped yet counts), or not there at all.
    fn exited(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.0))
            .map(|stat| {
                let state = stat.rsplit(") ").next().unwrap_or_default();
                state.starts_with('Z') || state.starts_with('X')
            })
            .unwrap_or(true)
    }

    /// Each thread's name and kernel stack (where a hung agent waits).
    fn stacks(&self) -> String {
        let mut out = String::new();
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.0));
        for task in tasks.into_iter().flatten().flatten() {
            let read = |f: &str| std::fs::read_to_string(task.path().join(f)).unwrap_or_default();
            out.push_str(&format!(
                "{} {}{}",
                task.file_name().to_string_lossy(),
                read("comm"),
                read("stack")
            ));
        }
        out
    }

    async fn wait_exited(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.exited() {
            assert!(Instant::now() < deadline, "agent {} did not exit", self.0);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if !self.exited() {
            let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Starts the agent, the same command every time, as a supervisor would. Not from the
/// test process itself: an exec closes the descriptors it inherits, and closing a file of
/// a writable FUSE mount sends FLUSH, which waits for an agent. Started by the test while
/// its writers hold files open, the next agent would wait in its own exec for itself (until
/// the holder's orphan timeout failed the FLUSH with EIO). A shell started before any file
/// is open starts each agent instead.
struct Agents {
    work: PathBuf,
    metrics_port: u16,
    runs: usize,
    launcher: KillOnDrop,
    pids: std::io::BufReader<std::process::ChildStdout>,
}

impl Agents {
    fn new(work: PathBuf) -> Agents {
        let metrics_port = strata_testkit::net::free_port();
        let mut launcher = Command::new("sh")
            .arg("-c")
            .arg(r#"while read -r log; do "$@" </dev/null >/dev/null 2>"$log" & echo $!; done"#)
            .arg("sh")
            .arg(work.join("bin/strata-agent"))
            .args(["serve", "--socket"])
            .arg(work.join("agent.sock"))
            .arg("--mount-root")
            .arg(work.join("mounts"))
            .arg("--cache-dir")
            .arg(work.join("cache"))
            .args(["--memory", "64Mi", "--disk", "4Gi", "--datasets-dir"])
            .arg(work.join("datasets"))
            .arg("--holder-socket")
            .arg(work.join("run/holder.sock"))
            .args(["--orphan-timeout", "120s"])
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .env(
                "STRATA_LOG",
                match std::env::var("STRATA_CRASH_LOG").as_deref() {
                    Ok("debug") => "info,strata_agent::fuse=debug",
                    _ => "info",
                },
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the launcher shell");
        let pids = std::io::BufReader::new(launcher.stdout.take().unwrap());
        Agents {
            work,
            metrics_port,
            runs: 0,
            launcher: KillOnDrop(launcher),
            pids,
        }
    }

    fn log(&self, run: usize) -> PathBuf {
        self.work.join(format!("agent-{run}.log"))
    }

    fn start(&mut self) -> AgentProcess {
        use std::io::BufRead;
        self.runs += 1;
        let log = self.log(self.runs);
        let stdin = self.launcher.0.stdin.as_mut().unwrap();
        writeln!(stdin, "{}", log.display()).unwrap();
        let mut line = String::new();
        self.pids.read_line(&mut line).unwrap();
        AgentProcess(nix::unistd::Pid::from_raw(line.trim().parse().unwrap()))
    }

    /// Waits until run `run` is ready and, after a kill, took the mount over.
    async fn wait_serving(
        &self,
        client: &AgentClient,
        agent: &AgentProcess,
        run: usize,
        took_over: bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = std::fs::read_to_string(self.log(run)).unwrap_or_default();
            let taken = !took_over || log.contains("took the mount over");
            if taken && client.ready().await.is_ok() {
                return;
            }
            if Instant::now() >= deadline {
                let holder =
                    std::fs::read_to_string(self.work.join("holder.log")).unwrap_or_default();
                panic!(
                    "agent run {run} did not serve:\n{log}\nits threads:\n{}\nholder:\n{holder}",
                    agent.stacks()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The agent's /metrics text.
    async fn metrics(&self) -> std::io::Result<String> {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).await?;
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await?;
        let mut text = String::new();
        conn.read_to_string(&mut text).await?;
        Ok(text)
    }

    /// The lines of every run's log that say something went wrong.
    fn warnings(&self) -> Vec<String> {
        (1..=self.runs)
            .flat_map(|run| {
                std::fs::read_to_string(self.log(run))
                    .unwrap_or_default()
                    .lines()
                    // Not the 503s of /readyz the test polls while the agent starts.
                    .filter(|l| {
                        (l.contains("WARN") || l.contains("ERROR")) && !l.contains("/readyz")
                    })
                    .map(|l| format!("run {run}: {l}"))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn count_in_logs(&self, text: &str) -> usize {
        (1..=self.runs)
            .map(|run| {
                std::fs::read_to_string(self.log(run))
                    .unwrap_or_default()
                    .matches(text)
                    .count()
            })
            .sum()
    }
}

/// One SIGKILL of the agent and its restart.
struct Kill {
    /// Since the writers started.
    at: Duration,
    /// Files the writers had created by then.
    created: usize,
    /// From the kill to the start of the next agent.
    gap: Duration,
    /// From the kill until the next agent had taken the mount over.
    serving_after: Duration,
    writers_running: bool,
}

/// A metric's value (the first series of that name).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// What the lister saw: every (key, size, ETag) listed, and the contents it fetched.
#[derive(Default)]
struct Listed {
    polls: usize,
    failed_polls: usize,
    versions: HashMap<(String, u64, String), usize>,
    fetched: Vec<(String, Version)>,
    fetched_bytes: u64,
    /// Fetched objects whose ETag is not the MD5 of their bytes (none: moto's ETags are).
    etag_not_md5: usize,
}

fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_ascii_lowercase()
}

fn key_of(location: &object_store::path::Path) -> String {
    location
        .as_ref()
        .strip_prefix(PREFIX)
        .unwrap_or(location.as_ref())
        .trim_start_matches('/')
        .to_string()
}

/// Lists the bucket until `stop`, recording every object version it sees; the first time
/// it sees a version of at most 1 MiB it fetches and hashes it.
async fn lister(store: Arc<AmazonS3>, stop: Arc<AtomicBool>) -> Listed {
    let prefix = object_store::path::Path::from(PREFIX);
    let mut listed = Listed::default();
    loop {
        // The last poll after the stop: the bucket as the drain left it.
        let last = stop.load(Ordering::Relaxed);
        listed.polls += 1;
        match store.list(Some(&prefix)).try_collect::<Vec<_>>().await {
            Ok(metas) => {
                for m in metas {
                    let key = key_of(&m.location);
                    let etag = unquote(m.e_tag.as_deref().unwrap_or_default());
                    let seen = listed.versions.entry((key.clone(), m.size, etag));
                    let new = matches!(seen, std::collections::hash_map::Entry::Vacant(_));
                    *seen.or_default() += 1;
                    if !new || m.size > MIB {
                        continue;
                    }
                    // Whatever the key holds now (a newer version, if it changed): hashed.
                    let Ok(got) = store.get(&m.location).await else {
                        continue; // deleted or replaced meanwhile
                    };
                    let etag = unquote(got.meta.e_tag.as_deref().unwrap_or_default());
                    let Ok(data) = got.bytes().await else {
                        continue;
                    };
                    listed.fetched_bytes += data.len() as u64;
                    let md5 = md5_hex(&data);
                    if etag != md5 {
                        // The ETag checks rest on this.
                        eprintln!("lister: {key}: ETag {etag}, but its bytes' MD5 is {md5}");
                        listed.etag_not_md5 += 1;
                    }
                    listed.fetched.push((
                        key,
                        Version {
                            size: data.len() as u64,
                            etag,
                            md5,
                            sha256: hex::encode(Sha256::digest(&data)),
                        },
                    ));
                }
            }
            Err(e) => {
                eprintln!("lister: list failed: {e}");
                listed.failed_polls += 1;
            }
        }
        if last {
            return listed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every object under the prefix with its size and SHA-256.
async fn bucket_contents(store: Arc<AmazonS3>) -> BTreeMap<String, (u64, String)> {
    let prefix = object_store::path::Path::from(PREFIX);
    let metas: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
    futures::stream::iter(metas)
        .map(|m| {
            let store = store.clone();
            async move {
                let data = store.get(&m.location).await.unwrap().bytes().await.unwrap();
                let sum = tokio::task::spawn_blocking(move || {
                    (data.len() as u64, hex::encode(Sha256::digest(&data)))
                })
                .await
                .unwrap();
                (key_of(&m.location), sum)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await
}

#[test]
fn md5_matches_the_reference_vectors() {
    assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    assert_eq!(
        md5_hex(b"The quick brown fox jumps over the lazy dog"),
        "9e107d9d372bb6826bd81d3542a419d6"
    );
    let mut m = Md5::new();
    for _ in 0..1000 {
        m.update(&[b'a'; 1000]);
    }
    assert_eq!(hex::encode(m.finish()), "7707d6ae4e027c70eea2a935c2296f21");
    // A content's ETag: the MD5 of the whole, or of the parts' MD5s past one part.
    let mut rng = Rng(1);
    let mut data = vec![0u8; (2 * PART_BYTES + 5) as usize];
    rng.fill(&mut data);
    let mut c = Content::new();
    for piece in data.chunks(777_777) {
        c.update(piece);
    }
    let parts: Vec<u8> = data
        .chunks(PART_BYTES as usize)
        .flat_map(|p| {
            let mut m = Md5::new();
            m.update(p);
            m.finish()
        })
        .collect();
    assert_eq!(c.version().etag, format!("{}-3", md5_hex(&parts)));
    assert_eq!(c.version().md5, md5_hex(&data));
    let mut small = Content::new();
    small.update(&data[..1000]);
    assert_eq!(small.version().etag, md5_hex(&data[..1000]));
    assert_eq!(small.version().md5, small.version().etag);
    let mut exact = Content::new();
    exact.update(&data[..PART_BYTES as usize]);
    assert_eq!(exact.version().etag, md5_hex(&data[..PART_BYTES as usize]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_lose_nothing_across_five_sigkills() {
    require_fuse();
    let started = Instant::now();
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let store = Arc::new(s3.store(BUCKET));
    let work = tempfile::tempdir().unwrap();
    let work_path = work.path().to_path_buf();
    std::fs::create_dir_all(work_path.join("datasets")).unwrap();
    let mut source = s3.source("s3", &format!("s3://{BUCKET}/{PREFIX}/"), "/");
    source.write_mode = WriteMode::WriteBack;
    let config = DatasetConfig {
        namespace: NAMESPACE.into(),
        name: DATASET.into(),
        uid: None,
        policy: None,
        sources: vec![source],
        cache: CacheSettings {
            block_size: MIB,
            ..Default::default()
        },
        migrations: Vec::new(),
    };
    std::fs::write(
        work_path.join(format!("datasets/{NAMESPACE}.{DATASET}.json")),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();

    // A copy of its own: the same binary for every run, whatever else builds meanwhile
    // in the shared target directory.
    std::fs::create_dir_all(work_path.join("bin")).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_strata-agent"),
        work_path.join("bin/strata-agent"),
    )
    .unwrap();
    // `serve` waits for its holder (in a cluster, the strata-holder DaemonSet).
    let _holder = KillOnDrop(
        Command::new(work_path.join("bin/strata-agent"))
            .args(["holder", "--socket"])
            .arg(work_path.join("run/holder.sock"))
            .args(["--orphan-timeout", "120s"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work_path.join("holder.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut agents = Agents::new(work_path.clone());
    let client = AgentClient::unix(work_path.join("agent.sock"));
    let mut agent = agents.start();
    agents.wait_serving(&client, &agent, 1, false).await;
    let mnt = client
        .acquire_volume(NAMESPACE, DATASET, "vol-1", Some("csi-vol-1"))
        .await
        .unwrap()
        .mount_path;
    let _detach = DetachOnDrop(mnt.clone());

    let shared = Arc::new(Shared::new());
    let stop_lister = Arc::new(AtomicBool::new(false));
    let lister = tokio::spawn(lister(store.clone(), stop_lister.clone()));
    let writing = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|id| {
            let w = Writer::new(id, mnt.clone(), shared.clone());
            std::thread::spawn(move || w.run())
        })
        .collect();

    // Each kill once the writers are some way further (10-16%, 26-32%, ... of the files
    // created), a random moment after that; the gap before the restart is random too.
    let total = WRITERS * FILES_PER_WRITER;
    let mut rng = Rng(SEED ^ 0x6b11);
    let mut kills = Vec::new();
    for k in 0..KILLS {
        let threshold = total * (10 + 16 * k + rng.below(7) as usize) / 100;
        while shared.created.load(Ordering::Relaxed) < threshold {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100 + rng.below(400))).await;
        let at = writing.elapsed();
        let created = shared.created.load(Ordering::Relaxed);
        let writers_running = writers.iter().any(|w| !w.is_finished());
        agent.signal(nix::sys::signal::Signal::SIGKILL);
        agent.wait_exited().await;
        let gap = Duration::from_millis(50 + rng.below(450));
        tokio::time::sleep(gap).await;
        agent = agents.start();
        agents
            .wait_serving(&client, &agent, agents.runs, true)
            .await;
        kills.push(Kill {
            at,
            created,
            gap,
            serving_after: writing.elapsed() - at,
            writers_running,
        });
    }
    let mut models = BTreeMap::new();
    for w in writers {
        let live = tokio::task::spawn_blocking(move || w.join().unwrap())
            .await
            .unwrap();
        models.extend(live);
    }
    let wrote_for = writing.elapsed();

    // The drain: nothing pending, several times in a row over more than a second (the
    // uploader publishes its figures at least once a second).
    let draining = Instant::now();
    let mut quiet = 0;
    let mut last = String::new();
    while quiet < 4 {
        assert!(
            draining.elapsed() < Duration::from_secs(180),
            "the agent did not drain its writes:\n{last}\n{}",
            agents.warnings().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(text) = agents.metrics().await else {
            quiet = 0;
            continue;
        };
        let pending = [
            "strata_write_pending_files",
            "strata_write_pending_bytes",
            "strata_write_oldest_pending_seconds",
        ]
        .map(|name| metric(&text, name));
        quiet = if pending.iter().all(|v| *v == Some(0.0)) {
            quiet + 1
        } else {
            0
        };
        last = text
            .lines()
            .filter(|l| l.starts_with("strata_write_"))
            .collect::<Vec<_>>()
            .join("\n");
    }
    let drained_in = draining.elapsed();
    stop_lister.store(true, Ordering::Relaxed);
    let listed = lister.await.unwrap();

    // What the writers and the lister saw.
    let n = |a: &AtomicUsize| a.load(Ordering::Relaxed);
    let errors = n(&shared.errors);
    let wrong = n(&shared.wrong);
    eprintln!(
        "writers: {WRITERS} writers, {} files created, {} appends, {} rewrites (O_TRUNC), {} renames, {} deletes, {} fsyncs, {} closes, {} read back; {} MiB written in {:.1} s; longest call {} ms; {errors} errors, {wrong} wrong read-backs",
        n(&shared.created),
        n(&shared.appends),
        n(&shared.rewrites),
        n(&shared.renames),
        n(&shared.deletes),
        n(&shared.fsyncs),
        n(&shared.closes),
        n(&shared.read_backs),
        shared.bytes.load(Ordering::Relaxed) >> 20,
        wrote_for.as_secs_f64(),
        shared.longest_call_us.load(Ordering::Relaxed) / 1000,
    );
    for (i, k) in kills.iter().enumerate() {
        eprintln!(
            "kill {}: SIGKILL at {:.2} s ({} files created), restarted after a {} ms gap, serving again {} ms after the kill{}",
            i + 1,
            k.at.as_secs_f64(),
            k.created,
            k.gap.as_millis(),
            k.serving_after.as_millis(),
            if k.writers_running {
                ""
            } else {
                " (writers done)"
            }
        );
    }
    eprintln!(
        "agent: {} runs; {} journal replays resumed uploads; drained {:.1} s after the writers finished; last run's figures:\n{last}",
        agents.runs,
        agents.count_in_logs("write journal replayed; resuming uploads"),
        drained_in.as_secs_f64()
    );
    let warnings = agents.warnings();
    eprintln!("agent log warnings and errors: {}", warnings.len());
    for w in warnings.iter().take(20) {
        eprintln!("  {w}");
    }

    // No object the lister saw was a content no writer closed or fsynced under its name.
    // The writers are done: their records hold still.
    let allowed = shared.allowed.lock().unwrap().clone();
    let uncertain = shared.uncertain.lock().unwrap().clone();
    let is_allowed = |key: &str, size: u64, etag: &str| {
        allowed.get(key).is_some_and(|vs| {
            vs.iter()
                .any(|v| v.size == size && (v.etag == etag || v.md5 == etag))
        })
    };
    let mut partial = Vec::new();
    for ((key, size, etag), polls) in &listed.versions {
        if !is_allowed(key, *size, etag) && !uncertain.contains(key) {
            let sizes: Vec<u64> = allowed
                .get(key)
                .map(|vs| vs.iter().map(|v| v.size).collect())
                .unwrap_or_default();
            partial.push(format!(
                "{key}: {size} bytes, ETag {etag}, listed {polls} times; the writers closed or fsynced it with sizes {sizes:?}"
            ));
        }
    }
    for (key, v) in &listed.fetched {
        let ok = allowed
            .get(key)
            .is_some_and(|vs| vs.iter().any(|a| a.sha256 == v.sha256 && a.size == v.size));
        if !ok && !uncertain.contains(key) {
            partial.push(format!(
                "{key}: fetched {} bytes with SHA-256 {} that no writer closed",
                v.size, v.sha256
            ));
        }
    }
    partial.sort();
    eprintln!(
        "lister: {} polls ({} failed), {} object versions seen, {} fetched and hashed ({} MiB), {} not a content a writer closed or fsynced",
        listed.polls,
        listed.failed_polls,
        listed.versions.len(),
        listed.fetched.len(),
        listed.fetched_bytes >> 20,
        partial.len()
    );
    for p in partial.iter().take(30) {
        eprintln!("  {p}");
    }

    // The bucket now: exactly the writers' files, byte for byte.
    let at_source = bucket_contents(store.clone()).await;
    let expected: BTreeMap<String, (u64, String)> = models
        .iter()
        .map(|(k, c)| {
            let v = c.version();
            (k.clone(), (v.size, v.sha256))
        })
        .collect();
    let mut differ = Vec::new();
    for (k, want) in &expected {
        match at_source.get(k) {
            None => differ.push(format!("{k}: missing at the source ({} bytes)", want.0)),
            Some(got) if got != want => differ.push(format!(
                "{k}: at the source {} bytes, SHA-256 {}; written {} bytes, {}",
                got.0, got.1, want.0, want.1
            )),
            Some(_) => {}
        }
    }
    for (k, got) in &at_source {
        if !expected.contains_key(k) && !uncertain.contains(k) {
            differ.push(format!(
                "{k}: at the source ({} bytes) but deleted, renamed away or never written",
                got.0
            ));
        }
    }
    eprintln!(
        "bucket: {} objects, {} MiB; {} files in the writers' models; {} differences",
        at_source.len(),
        at_source.values().map(|v| v.0).sum::<u64>() >> 20,
        expected.len(),
        differ.len()
    );
    for d in differ.iter().take(30) {
        eprintln!("  {d}");
    }
    // What happened to each name that ended wrong or met an error, and what the lister
    // saw of it.
    {
        let histories = shared.histories.lock().unwrap();
        let mut names: Vec<&str> = differ
            .iter()
            .chain(&partial)
            .map(|d| d.split(": ").next().unwrap())
            // A conflict copy: what happened to the name it was kept for.
            .map(|k| k.split(".conflict-").next().unwrap())
            .chain(uncertain.iter().map(|k| k.as_str()))
            .collect();
        names.sort();
        names.dedup();
        for key in names.into_iter().take(16) {
            let mut seen: Vec<_> = listed
                .versions
                .keys()
                .filter(|v| v.0 == key)
                .map(|v| v.1)
                .collect();
            seen.sort();
            eprintln!(
                "  {key}: listed with sizes {seen:?}; history {:?}",
                histories.get(key)
            );
            // The agents' own lines about it and the names it came from (with
            // STRATA_CRASH_LOG=debug, every refusal).
            let mut about = vec![key.to_string()];
            for event in histories.get(key).into_iter().flatten() {
                if let Some(from) = event.split("renamed from ").nth(1) {
                    about.push(from.to_string());
                }
            }
            for run in 1..=agents.runs {
                let log = std::fs::read_to_string(agents.log(run)).unwrap_or_default();
                let lines = log.lines().filter(|l| {
                    about.iter().any(|k| l.contains(k.as_str())) || l.contains("unknown inode")
                });
                for line in lines.take(30) {
                    eprintln!("    run {run}: {line}");
                }
            }
        }
    }

    // The mount shows the same names (the uploaded files now come from the source).
    let root = mnt.clone();
    let names: Vec<String> = tokio::task::spawn_blocking(move || {
        let mut names = Vec::new();
        for w in 0..WRITERS {
            let dir = format!("w{w}");
            for e in std::fs::read_dir(root.join(&dir)).unwrap() {
                names.push(format!(
                    "{dir}/{}",
                    e.unwrap().file_name().to_str().unwrap()
                ));
            }
        }
        names.sort();
        names
    })
    .await
    .unwrap();
    let expected_names: Vec<&String> = expected.keys().collect();
    eprintln!("total: {:.1} s", started.elapsed().as_secs_f64());

    assert_eq!(errors, 0, "writers saw errors");
    assert_eq!(wrong, 0, "writers read back wrong bytes");
    assert!(
        partial.is_empty(),
        "the lister saw objects no writer closed"
    );
    assert_eq!(listed.etag_not_md5, 0);
    assert!(
        differ.is_empty(),
        "the bucket differs from the writers' models"
    );
    assert_eq!(
        names.iter().collect::<Vec<_>>(),
        expected_names,
        "the mount lists other files"
    );
    assert_eq!(kills.len(), KILLS);
    assert!(
        kills.iter().all(|k| k.writers_running),
        "every kill came while the writers were writing"
    );

    // A clean stop: the volume released (unmounted through the holder), then SIGTERM.
    client.release_volume("vol-1").await.unwrap();
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.wait_exited().await;
    let log = std::fs::read_to_string(agents.log(agents.runs)).unwrap();
    assert!(
        log.contains("shutting down") && !log.contains("panicked"),
        "{log}"
    );
}
