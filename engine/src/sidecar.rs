//! The sidecar of a cached object version: which blocks its data file holds, with their
//! crc32c, kept as an append-only journal.
//!
//! Layout: one JSON line (the [`SidecarHeader`]), then fixed 16-byte records, each
//! `block index (u64, top bit set = removed) | crc32c of the block (u32) | crc32c of those
//! 12 bytes (u32)`, little endian. Storing a block appends one record after its data is
//! written, so a block becomes visible only once it is whole; a crash can leave a torn
//! last record, which fails its own checksum and ends the replay (that block is fetched
//! again). Rewriting the whole block list per stored block, as format 1 did, wrote the
//! sidecar's size once per block: O(n²), 5 GB of sidecar writes for a 100 GiB object in
//! 4 MiB blocks. The journal is rewritten whole (temp file + rename, atomic) only when
//! it is created, after a failed append, when removals make it more than twice as long
//! as the live list, and at the first change after it was loaded torn, long or in
//! format 1.
//!
//! Records are appended without fsync, as the data is written: after a power cut the
//! journal may name a block whose data did not reach the disk. Such a block fails its
//! checksum, which is checked on every read from disk and before a file is handed to
//! passthrough, and is fetched again.
//!
//! Format 1 (one JSON document with the block list inline) is still read, and rewritten
//! as a journal when loaded.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The current sidecar format.
pub const FORMAT: u32 = 2;
const LEGACY_FORMAT: u32 = 1;
const RECORD_LEN: usize = 16;
const REMOVED: u64 = 1 << 63;
/// Removal records tolerated beyond the live list before the journal is compacted.
const COMPACT_SLACK: u64 = 64;

/// What a sidecar says about its object version.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SidecarHeader {
    pub format: u32,
    pub source: String,
    pub key: String,
    pub etag: String,
    pub size: u64,
    pub block_size: u64,
    pub path: String,
    /// Object last-modified time, Unix milliseconds.
    #[serde(default)]
    pub mtime_ms: i64,
    /// Format 1 only: (index, crc32c) of every block present. Empty in a journal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<(u64, u32)>,
}

/// A sidecar read back from disk.
#[derive(Debug)]
pub struct LoadedSidecar {
    pub header: SidecarHeader,
    /// Block index to crc32c, as of the last whole record.
    pub blocks: BTreeMap<u64, u32>,
    /// Whole records after the header.
    pub records: u64,
    /// False when the file must be rewritten before anything is appended: its tail was
    /// torn, it is in the old format, or removals made it long.
    pub clean: bool,
}

/// Where a journal stands, kept with the object's state (under its lock).
#[derive(Debug, Default)]
pub struct JournalState {
    /// Records in the file after the header; `None` until the file is known good (not
    /// yet written, or an append failed), so the next change rewrites it whole.
    records: Option<u64>,
}

impl JournalState {
    /// The state of a journal just loaded.
    pub fn loaded(sidecar: &LoadedSidecar) -> Self {
        JournalState {
            records: sidecar.clean.then_some(sidecar.records),
        }
    }
}

fn record(index: u64, crc: u32) -> [u8; RECORD_LEN] {
    let mut r = [0u8; RECORD_LEN];
    r[..8].copy_from_slice(&index.to_le_bytes());
    r[8..12].copy_from_slice(&crc.to_le_bytes());
    let check = crc32c::crc32c(&r[..12]);
    r[12..].copy_from_slice(&check.to_le_bytes());
    r
}

fn parse_record(r: &[u8]) -> Option<(u64, u32)> {
    let check = u32::from_le_bytes(r[12..16].try_into().ok()?);
    if crc32c::crc32c(&r[..12]) != check {
        return None;
    }
    Some((
        u64::from_le_bytes(r[..8].try_into().ok()?),
        u32::from_le_bytes(r[8..12].try_into().ok()?),
    ))
}

/// Reads a sidecar of either format.
pub fn load(path: &Path) -> std::io::Result<LoadedSidecar> {
    let bytes = fs::read(path)?;
    let Some(newline) = bytes.iter().position(|b| *b == b'\n') else {
        // Format 1: a single JSON document without a newline.
        let header: SidecarHeader =
            serde_json::from_slice(&bytes).map_err(std::io::Error::other)?;
        if header.format != LEGACY_FORMAT {
            return Err(std::io::Error::other(format!(
                "sidecar format {} without records",
                header.format
            )));
        }
        let blocks: BTreeMap<u64, u32> = header.blocks.iter().copied().collect();
        return Ok(LoadedSidecar {
            records: blocks.len() as u64,
            header,
            blocks,
            clean: false,
        });
    };
    let header: SidecarHeader =
        serde_json::from_slice(&bytes[..newline]).map_err(std::io::Error::other)?;
    if header.format != FORMAT {
        return Err(std::io::Error::other(format!(
            "unknown sidecar format {}",
            header.format
        )));
    }
    let body = &bytes[newline + 1..];
    let mut blocks = BTreeMap::new();
    let mut whole = 0u64;
    let mut torn = body.len() % RECORD_LEN != 0;
    for r in body.chunks_exact(RECORD_LEN) {
        let Some((word, crc)) = parse_record(r) else {
            torn = true;
            break;
        };
        whole += 1;
        if word & REMOVED != 0 {
            blocks.remove(&(word & !REMOVED));
        } else {
            blocks.insert(word, crc);
        }
    }
    let long = whole > 2 * blocks.len() as u64 + COMPACT_SLACK;
    Ok(LoadedSidecar {
        header,
        blocks,
        records: whole,
        clean: !torn && !long,
    })
}

/// Replaces the sidecar at `path` with `header` and one record per block, atomically.
pub fn rewrite(
    path: &Path,
    header: &SidecarHeader,
    blocks: impl Iterator<Item = (u64, u32)>,
    journal: &mut JournalState,
) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(&SidecarHeader {
        format: FORMAT,
        blocks: Vec::new(),
        ..header.clone()
    })
    .map_err(std::io::Error::other)?;
    out.push(b'\n');
    let mut n = 0;
    for (index, crc) in blocks {
        out.extend_from_slice(&record(index, crc));
        n += 1;
    }
    let tmp = path.with_extension("meta.tmp");
    journal.records = None;
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&out)?;
    }
    fs::rename(&tmp, path)?;
    journal.records = Some(n);
    Ok(())
}

/// Records that block `index` (crc32c `crc`) is stored, or with `crc` `None` that it was
/// removed. `live` lists the blocks present after the change; the whole file is rewritten
/// from it when the journal is not yet known good or has grown long.
pub fn record_change(
    path: &Path,
    header: &SidecarHeader,
    journal: &mut JournalState,
    index: u64,
    crc: Option<u32>,
    live: impl Iterator<Item = (u64, u32)>,
    live_count: u64,
) -> std::io::Result<()> {
    let appendable = journal
        .records
        .is_some_and(|n| n < 2 * live_count + COMPACT_SLACK);
    if !appendable {
        return rewrite(path, header, live, journal);
    }
    let rec = match crc {
        Some(crc) => record(index, crc),
        None => record(index | REMOVED, 0),
    };
    let appended = OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(&rec));
    match appended {
        Ok(()) => {
            journal.records = journal.records.map(|n| n + 1);
            Ok(())
        }
        // The file went away (a cache directory cleaned by hand): write it anew.
        Err(e) if e.kind() == ErrorKind::NotFound => rewrite(path, header, live, journal),
        Err(e) => {
            // Part of the record may be in the file; the next change rewrites it whole.
            journal.records = None;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SidecarHeader {
        SidecarHeader {
            format: FORMAT,
            source: "s".into(),
            key: "k".into(),
            etag: "e".into(),
            size: 10 << 20,
            block_size: 1 << 20,
            path: "/k".into(),
            mtime_ms: 7,
            blocks: Vec::new(),
        }
    }

    fn store(
        path: &Path,
        journal: &mut JournalState,
        live: &mut BTreeMap<u64, u32>,
        index: u64,
        crc: Option<u32>,
    ) {
        match crc {
            Some(c) => live.insert(index, c),
            None => live.remove(&index),
        };
        record_change(
            path,
            &header(),
            journal,
            index,
            crc,
            live.iter().map(|(i, c)| (*i, *c)),
            live.len() as u64,
        )
        .unwrap();
    }

    #[test]
    fn appends_one_record_per_change_and_replays_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.meta");
        let mut journal = JournalState::default();
        let mut live = BTreeMap::new();
        store(&path, &mut journal, &mut live, 3, Some(33));
        let after_first = fs::metadata(&path).unwrap().len();
        for i in 4..10 {
            store(&path, &mut journal, &mut live, i, Some(i as u32));
        }
        store(&path, &mut journal, &mut live, 5, None);
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            after_first + 7 * RECORD_LEN as u64,
            "each change after the first appends one record"
        );
        let loaded = load(&path).unwrap();
        assert!(loaded.clean);
        assert_eq!(loaded.blocks, live);
        assert_eq!(loaded.records, 8);
        assert_eq!(loaded.header.mtime_ms, 7);
    }

    #[test]
    fn a_torn_last_record_ends_the_replay_and_forces_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.meta");
        let mut journal = JournalState::default();
        let mut live = BTreeMap::new();
        for i in 0..4 {
            store(&path, &mut journal, &mut live, i, Some(100 + i as u32));
        }
        // A crash in the middle of the fifth append.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&record(4, 104)[..9]).unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(
            loaded.blocks, live,
            "whole records survive, the torn one does not"
        );
        assert!(!loaded.clean);
        // A record whose bytes are whole but wrong (a bad sector) ends it too.
        let mut bytes = fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 9);
        let last = bytes.len() - RECORD_LEN;
        bytes[last + 8] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.blocks.len(), 3);
        assert!(!loaded.clean);
        // The next change rewrites the file, so nothing after the damage is lost.
        let mut journal = JournalState::loaded(&loaded);
        let mut live = loaded.blocks.clone();
        store(&path, &mut journal, &mut live, 9, Some(9));
        let reloaded = load(&path).unwrap();
        assert!(reloaded.clean);
        assert_eq!(reloaded.blocks, live);
    }

    #[test]
    fn removals_are_compacted_away() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.meta");
        let mut journal = JournalState::default();
        let mut live = BTreeMap::new();
        store(&path, &mut journal, &mut live, 0, Some(1));
        for round in 0..500 {
            store(&path, &mut journal, &mut live, 1, Some(round));
            store(&path, &mut journal, &mut live, 1, None);
        }
        let header_len = fs::read(&path)
            .unwrap()
            .iter()
            .position(|b| *b == b'\n')
            .unwrap() as u64
            + 1;
        let records = (fs::metadata(&path).unwrap().len() - header_len) / RECORD_LEN as u64;
        assert!(
            records <= 2 + COMPACT_SLACK,
            "{records} records for 1 live block"
        );
        assert_eq!(load(&path).unwrap().blocks, live);
    }

    #[test]
    fn format_1_sidecars_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.meta");
        let legacy = serde_json::json!({
            "format": 1, "source": "s", "key": "k", "etag": "e", "size": 3u64 << 20,
            "blockSize": 1u64 << 20, "path": "/k", "mtimeMs": 5, "blocks": [[0, 11], [2, 22]]
        });
        fs::write(&path, serde_json::to_vec(&legacy).unwrap()).unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.blocks, BTreeMap::from([(0, 11), (2, 22)]));
        assert_eq!(loaded.header.key, "k");
        assert!(
            !loaded.clean,
            "rewritten as a journal before the next append"
        );
    }
}
