//! Pin rules on a dataset: adding and removing them, what they hold, and their periodic
//! re-evaluation, which unpins files that aged out of a rule's window and fetches the
//! files a rule pins that are not cached yet (new ones as they appear).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::preload::Placement;
use super::{DatasetView, PRELOAD_MAX_FETCHES};
use crate::Result;
use crate::cache::PinRuleUsage;
use crate::config::PinRule;

/// What one re-evaluation of the pin rules did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PinRefresh {
    /// Files the rules pin now (cached or not).
    pub files: u64,
    /// Files fetched because a rule pins them and they were not fully cached.
    pub fetched_files: u64,
    /// Bytes of those files.
    pub fetched_bytes: u64,
    /// Files that could not be fetched, with the reason.
    pub failed: Vec<(String, String)>,
    /// Files not fetched because what the rules pin does not fit the dataset's quota (or
    /// the node's disk); reads still serve them, through from the source.
    pub over_quota_files: u64,
}

/// How often a dataset's pin rules are re-evaluated: its metadata TTL (the agent cannot see
/// a new file sooner than its listings expire), at least a second.
pub fn pin_refresh_period(metadata_ttl: Duration) -> Duration {
    metadata_ttl.max(Duration::from_secs(1))
}

impl DatasetView {
    /// Adds a pin rule at run time (kept across agent restarts): matching cached blocks,
    /// now and later, are not evicted. Pinning fetches nothing by itself; the periodic
    /// re-evaluation does, or [`Self::preload_selected`] at once. Returns false when the
    /// same rule was already in force.
    pub fn pin(&self, rule: PinRule) -> Result<bool> {
        self.cache.pin(rule)
    }

    /// Removes run-time rules whose globs are all among `globs`; returns them.
    pub fn unpin(&self, globs: &[String]) -> Result<Vec<PinRule>> {
        self.cache.unpin(globs)
    }

    /// Pin rules in force (configured, then run-time).
    pub fn pins(&self) -> Vec<PinRule> {
        self.cache.pins()
    }

    /// Each rule in force with the files and bytes it holds on this node.
    pub fn pin_usage(&self) -> Vec<PinRuleUsage> {
        self.cache.pin_usage()
    }

    /// Re-evaluates the pin rules now: files that aged out of a window become evictable,
    /// and every file a rule pins that is not fully cached is fetched.
    pub async fn refresh_pins(self: &Arc<Self>) -> Result<PinRefresh> {
        let cache = self.cache.clone();
        tokio::task::spawn_blocking(move || cache.apply_pins())
            .await
            .map_err(|e| crate::Error::Task(e.to_string()))??;
        let mut refresh = PinRefresh::default();
        let mut room = self.cache.room_for_pins();
        for rule in self.pins() {
            // Listed afresh: a cached listing past its TTL would be served stale (and
            // refreshed behind), and a new file then seen only a period later.
            let files = self.files_selected(&rule, true).await?;
            refresh.files += files.len() as u64;
            let mut missing = Vec::new();
            for f in files {
                let Some(version) = &f.version else { continue };
                if self.cache.is_complete(version) {
                    continue;
                }
                if f.size > room {
                    refresh.over_quota_files += 1;
                    continue;
                }
                room -= f.size;
                missing.push(f);
            }
            if missing.is_empty() {
                continue;
            }
            let report = self
                .preload_files(missing, false, Placement::Here, PRELOAD_MAX_FETCHES, |_| {})
                .await?;
            refresh.fetched_files += report.files;
            refresh.fetched_bytes += report.bytes;
            refresh.failed.extend(report.failed);
        }
        Ok(refresh)
    }
}
