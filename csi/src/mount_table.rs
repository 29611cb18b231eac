//! Reads `/proc/self/mountinfo` to learn what is mounted at a target path.
//!
//! The mount table (not `stat`) is the source of truth: a bind whose FUSE
//! source died answers `stat` with ENOTCONN but is still listed here, and
//! must still be found to be unmounted.

use crate::error::{CsiError, Result};
use std::path::{Path, PathBuf};

/// One line of mountinfo, the fields this plugin needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the mounted file system.
    pub device: String,
    /// The directory of that file system shown at the mount point ("/" for a whole mount,
    /// "/train" for a bind of a sub directory).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// True when the per-mount options include `ro`.
    pub read_only: bool,
    pub fs_type: String,
}

/// Parses the text of a mountinfo file; lines that do not parse are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    // 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    let (before, after) = line.split_once(" - ")?;
    let fields: Vec<&str> = before.split(' ').collect();
    if fields.len() < 6 {
        return None;
    }
    let fs_type = after.split(' ').next()?.to_string();
    Some(MountEntry {
        device: fields[2].to_string(),
        root: PathBuf::from(unescape(fields[3])),
        mount_point: PathBuf::from(unescape(fields[4])),
        read_only: fields[5].split(',').any(|o| o == "ro"),
        fs_type,
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(value) = u8::try_from(value) {
                    out.push(value);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The current mount table of this process's mount namespace.
pub fn read() -> Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| CsiError::io("reading /proc/self/mountinfo", e))?;
    Ok(parse_mountinfo(&text))
}

/// The top-most mount at `path` (the last one listed wins, as in the kernel), if any.
pub fn mount_at(table: &[MountEntry], path: &Path) -> Option<MountEntry> {
    table.iter().rev().find(|m| m.mount_point == path).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
97 22 0:52 / /var/lib/strata/mounts/ml/imagenet rw,nosuid,nodev,relatime shared:50 - fuse.strata strata rw,user_id=0,group_id=0,allow_other
98 22 0:52 /train /var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/data/mount ro,nosuid,nodev,relatime shared:50 - fuse.strata strata rw,user_id=0,group_id=0
99 22 0:53 / /tmp/with\\040space rw,relatime - tmpfs tmpfs rw
";

    #[test]
    fn parses_binds_of_sub_directories() {
        let table = parse_mountinfo(SAMPLE);
        assert_eq!(table.len(), 4);
        let bind = mount_at(
            &table,
            Path::new("/var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/data/mount"),
        )
        .unwrap();
        assert_eq!(bind.device, "0:52");
        assert_eq!(bind.root, Path::new("/train"));
        assert!(bind.read_only);
        assert_eq!(bind.fs_type, "fuse.strata");
        let whole = mount_at(&table, Path::new("/var/lib/strata/mounts/ml/imagenet")).unwrap();
        assert!(!whole.read_only);
        assert_eq!(whole.root, Path::new("/"));
    }

    #[test]
    fn unescapes_octal_sequences() {
        let table = parse_mountinfo(SAMPLE);
        assert!(mount_at(&table, Path::new("/tmp/with space")).is_some());
        assert_eq!(unescape(r"a\134b"), r"a\b");
        assert_eq!(unescape(r"end\04"), r"end\04");
    }

    #[test]
    fn unmounted_path_has_no_entry() {
        assert!(mount_at(&parse_mountinfo(SAMPLE), Path::new("/nope")).is_none());
    }

    #[test]
    fn reads_the_live_table() {
        let table = read().unwrap();
        assert!(table.iter().any(|m| m.mount_point == Path::new("/")));
    }
}
