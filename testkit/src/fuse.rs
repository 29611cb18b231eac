//! FUSE preconditions.

use std::path::Path;

/// Fails the test unless it runs as root with /dev/fuse (the FUSE tests need both).
pub fn require_fuse() {
    assert!(
        nix::unistd::geteuid().is_root() && Path::new("/dev/fuse").exists(),
        "FUSE tests need root and /dev/fuse (run as root; apt-get install fuse3)"
    );
}
