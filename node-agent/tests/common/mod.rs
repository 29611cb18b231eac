//! Test harness of the engine tests: datasets and agents on temp dirs. The servers, ports and
//! data shared with other crates are in `strata-testkit`.
// Each test binary includes this module and uses a part of it.
#![allow(dead_code, unused_imports)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_agent::agent::{Agent, AgentConfig};
use strata_agent::config::{CacheSettings, DatasetConfig, SourceConfig};
pub use strata_testkit::data::content;
pub use strata_testkit::fuse::require_fuse;
pub use strata_testkit::net::free_port;
pub use strata_testkit::s3::S3Server;

/// Writes files under a local directory.
pub fn write_tree(root: &Path, files: &[(String, Vec<u8>)]) {
    for (k, v) in files {
        let p = root.join(k);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, v).unwrap();
    }
}

pub const MIB: usize = 1 << 20;

/// Cache settings with 1 MiB blocks (small test files span several), defaults otherwise.
pub fn one_mib_blocks() -> strata_agent::config::CacheSettings {
    strata_agent::config::CacheSettings {
        block_size: MIB as u64,
        ..Default::default()
    }
}

pub fn dataset(name: &str, sources: Vec<SourceConfig>, cache: CacheSettings) -> DatasetConfig {
    DatasetConfig {
        namespace: "test".into(),
        name: name.into(),
        uid: None,
        policy: None,
        sources,
        cache,
        migrations: Vec::new(),
    }
}

pub fn local_source(name: &str, dir: &Path, mount_path: &str) -> SourceConfig {
    SourceConfig {
        name: name.into(),
        uri: dir.to_string_lossy().into_owned(),
        mount_path: mount_path.into(),
        ..Default::default()
    }
}

pub async fn agent(cache_dir: &Path, memory: u64, disk: u64) -> Arc<Agent> {
    Agent::new(AgentConfig::new(cache_dir, memory, disk))
        .await
        .unwrap()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn p(s: &str) -> strata_agent::path::DatasetPath {
    strata_agent::path::DatasetPath::parse(s).unwrap()
}

pub fn path_buf(s: &str) -> PathBuf {
    PathBuf::from(s)
}

/// Every file under `root` (a mount), by path relative to it, with its content.
pub fn walk(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                let rel = e
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

/// Drops clean pages of every file (root only), so the next read comes from storage.
pub fn drop_page_cache() {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "1").expect("drop the page cache (root)");
}
