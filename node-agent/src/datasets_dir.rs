//! `--datasets-dir`: one DatasetConfig (YAML or JSON) per file, rescanned
//! periodically so that a mounted Secret or ConfigMap can add, change and
//! remove datasets without restarting the agent.

use crate::config::DatasetConfig;
use crate::http::ApiState;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Datasets this directory added, so that a rescan removes only those.
#[derive(Debug, Default)]
pub struct DatasetsDir {
    dir: PathBuf,
    loaded: BTreeMap<(String, String), DatasetConfig>,
}

/// What one scan did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    pub applied: usize,
    pub removed: usize,
    /// Files that did not load, with the reason (file name and error, never file content).
    pub failed: Vec<(PathBuf, String)>,
}

impl DatasetsDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DatasetsDir {
            dir: dir.into(),
            loaded: BTreeMap::new(),
        }
    }

    fn config_files(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // Kubernetes volume internals (..data, ..2026_11_24...) start with dots.
            if name.starts_with('.') {
                continue;
            }
            let wanted = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            );
            if wanted && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }

    /// Loads every file, applies new and changed datasets, removes datasets whose
    /// file went away and drops their cache (unless a volume still uses them: they are
    /// kept until it is released). Kubernetes swaps a mounted Secret's files atomically,
    /// so a file never vanishes between two versions.
    pub async fn scan(&mut self, state: &ApiState) -> ScanReport {
        let mut report = ScanReport::default();
        let files = match self.config_files() {
            Ok(files) => files,
            Err(e) => {
                report.failed.push((self.dir.clone(), e.to_string()));
                return report;
            }
        };
        let mut seen = BTreeSet::new();
        for file in files {
            let config = match DatasetConfig::from_file(&file) {
                Ok(config) => config,
                Err(e) => {
                    report.failed.push((file, e.to_string()));
                    continue;
                }
            };
            let key = (config.namespace.clone(), config.name.clone());
            if !seen.insert(key.clone()) {
                report.failed.push((
                    file,
                    format!("dataset {}/{} is defined by another file too", key.0, key.1),
                ));
                continue;
            }
            if self.loaded.get(&key) == Some(&config)
                && state.agent.dataset(&key.0, &key.1).is_some()
            {
                continue;
            }
            match state.agent.add_dataset(config.clone()).await {
                Ok(view) => {
                    state.mounts.use_view(&view).await;
                    report.applied += 1;
                    self.loaded.insert(key, config);
                }
                Err(e) => report.failed.push((file, e.to_string())),
            }
        }
        let gone: Vec<_> = self
            .loaded
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for (ns, name) in gone {
            if !state.mounts.dataset_volumes(&ns, &name).await.is_empty() {
                tracing::warn!(dataset = %format!("{ns}/{name}"), "config file removed but volumes still use the dataset; keeping it until they are released");
                continue;
            }
            match state.agent.remove_dataset(&ns, &name, true).await {
                Ok(()) | Err(strata_engine::Error::DatasetNotFound { .. }) => {
                    report.removed += 1;
                    self.loaded.remove(&(ns, name));
                }
                Err(e) => report
                    .failed
                    .push((self.dir.join(format!("{ns}/{name}")), e.to_string())),
            }
        }
        for (file, error) in &report.failed {
            tracing::warn!(file = %file.display(), %error, "dataset config not loaded");
        }
        if report.applied > 0 || report.removed > 0 {
            tracing::info!(dir = %self.dir.display(), applied = report.applied, removed = report.removed, "datasets dir scanned");
        }
        report
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Scans once, marks the API ready, then rescans every `period` until the task is dropped.
pub async fn watch(mut dir: DatasetsDir, state: Arc<ApiState>, period: Duration) {
    dir.scan(&state).await;
    state.set_ready();
    let mut ticker = tokio::time::interval(period);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        dir.scan(&state).await;
    }
}
