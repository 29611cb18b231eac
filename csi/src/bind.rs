//! The two mount syscalls of the plugin, through nix's safe wrappers.

use crate::error::{CsiError, Result};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use std::path::Path;

/// Bind-mounts `source` (a directory of a dataset's FUSE mount) at `target`,
/// then, for read-only volumes, remounts the bind read-only: a bind takes the
/// source's flags, so read-only needs this second call.
pub fn bind(source: &Path, target: &Path, read_only: bool) -> Result<()> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        CsiError::mount(
            format!("bind-mounting {} at {}", source.display(), target.display()),
            e,
        )
    })?;
    if read_only {
        let flags = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV;
        if let Err(e) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
            // Never leave a writable bind behind a request that asked for read-only.
            let _ = unmount(target);
            return Err(CsiError::mount(
                format!("remounting {} read-only", target.display()),
                e,
            ));
        }
    }
    Ok(())
}

/// Unmounts `target`. A mount still busy (a process has its cwd there) is
/// detached lazily: the pod is going away and the dataset is read-only, so
/// nothing is lost by letting the kernel finish the unmount when it is free.
pub fn unmount(target: &Path) -> Result<()> {
    match umount2(target, MntFlags::empty()) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EBUSY) => umount2(target, MntFlags::MNT_DETACH)
            .map_err(|e| CsiError::mount(format!("detaching busy mount {}", target.display()), e)),
        Err(e) => Err(CsiError::mount(
            format!("unmounting {}", target.display()),
            e,
        )),
    }
}
