//! Reading /proc/self/mountinfo: is a path a mount point, and is it still ours.

use std::path::{Path, PathBuf};

/// One line of mountinfo, the fields the holder needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    /// `major:minor` of the file system; for FUSE the minor is the connection number.
    pub dev: String,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
pub(crate) fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

pub(crate) fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            Some(MountEntry {
                dev: left.get(2)?.to_string(),
                mount_point: unescape(left.get(4)?),
                fstype: right.next()?.to_string(),
                source: unescape(right.next().unwrap_or(""))
                    .to_string_lossy()
                    .into_owned(),
            })
        })
        .collect()
}

/// The mount entries of this process's mount namespace.
pub(crate) fn read() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The topmost mount on `path` (exact match), if any.
pub(crate) fn find(entries: &[MountEntry], path: &Path) -> Option<MountEntry> {
    entries
        .iter()
        .rev()
        .find(|e| e.mount_point == path)
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_escaped_mount_points() {
        let text = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - fuse.strata my\\040data ro,user_id=0\n\
                    37 35 0:51 / /run rw shared:2 - tmpfs tmpfs rw\n";
        let e = parse(text);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].mount_point, PathBuf::from("/mnt/a b"));
        assert_eq!(e[0].fstype, "fuse.strata");
        assert_eq!(e[0].source, "my data");
        assert_eq!(e[0].dev, "98:0");
        assert_eq!(find(&e, Path::new("/run")).unwrap().fstype, "tmpfs");
        assert!(find(&e, Path::new("/mnt")).is_none());
        assert_eq!(unescape("a\\134b\\"), PathBuf::from("a\\b\\"));
    }
}
