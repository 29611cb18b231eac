//! The workspace's own binaries (`strata-operator`, `strata-agent`, `strata-csi`, `strata-holder`) for the tests
//! that run them as processes.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Result};

/// The directory holding the binaries of `packages`, built on demand into the target directory
/// the calling test was built in (`<target>/<profile>/deps/<test>-*` → `<target>/<profile>/`),
/// with the same profile. `STRATA_E2E_BIN_DIR` points at prebuilt ones instead.
///
/// Blocks while cargo builds: call it from `tokio::task::spawn_blocking` in async tests.
pub fn workspace_binaries(packages: &[&str]) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("STRATA_E2E_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().map_err(Error::CurrentExe)?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| Error::NotInProfileDir { exe: exe.clone() })?
        .to_path_buf();
    let target_dir = profile_dir.parent().ok_or(Error::NoTargetDir)?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => return Err(Error::ProfileDirName(profile_dir)),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(&cargo);
    command
        .args(["build", "--bins", "--profile", profile, "--target-dir"])
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    for package in packages {
        command.args(["-p", package]);
    }
    let status = command.status().map_err(|source| Error::CargoSpawn {
        cargo: cargo.clone(),
        source,
    })?;
    if !status.success() {
        return Err(Error::CargoBuild {
            packages: packages.iter().map(|p| p.to_string()).collect(),
            status: status.to_string(),
        });
    }
    Ok(profile_dir)
}
