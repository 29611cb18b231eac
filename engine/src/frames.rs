//! Append-only logs of JSON records, each framed `[u32 len][u32 crc32c][JSON]` and written
//! with one `write(2)`: a record torn by a kill fails its checksum and ends the log, so a
//! reader replays exactly the records whose writes completed. Used by the write journal
//! ([`crate::writes`]) and the FUSE takeover log of `strata-agent`.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// One record, framed.
pub fn frame<T: Serialize>(record: &T) -> Vec<u8> {
    let payload = serde_json::to_vec(record).expect("records serialize");
    let mut frame = Vec::with_capacity(8 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    frame
}

/// The record at the start of `data` and the bytes it took; `None` at a torn or corrupt
/// frame (or one that does not parse as `T`), which ends the log.
pub fn read_frame<T: DeserializeOwned>(data: &[u8]) -> Option<(usize, T)> {
    let len = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(data.get(4..8)?.try_into().ok()?);
    let payload = data.get(8..8 + len)?;
    if crc32c::crc32c(payload) != crc {
        return None;
    }
    Some((8 + len, serde_json::from_slice(payload).ok()?))
}

/// Every whole record of `data` in order, and the length of that valid prefix.
pub fn read_all<T: DeserializeOwned>(data: &[u8]) -> (Vec<T>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some((len, record)) = data.get(at..).and_then(read_frame) {
        records.push(record);
        at += len;
    }
    (records, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_or_corrupt_record_ends_the_log() {
        let mut log = frame(&"one".to_string());
        log.extend(frame(&"two".to_string()));
        let whole = log.len();
        log.extend(&frame(&"three".to_string())[..6]);
        let (records, valid) = read_all::<String>(&log);
        assert_eq!(records, ["one", "two"]);
        assert_eq!(valid, whole);
        let mut bad = frame(&"x".to_string());
        *bad.last_mut().unwrap() ^= 1;
        assert!(read_all::<String>(&bad).0.is_empty());
    }
}
