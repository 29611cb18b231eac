//! Pins: rules whose matching files' cached blocks are never evicted. A rule is globs and,
//! optionally, a window of modification times that rolls with the clock ("the last 14
//! days"): a file pinned for its age is unpinned once it ages out, at the next
//! [`DatasetCache::apply_pins`]. Rules come from the configuration (the CachePolicy) and
//! from the API at run time; the run-time ones are kept in a file under the cache root,
//! so they outlive the agent.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::object::ObjectState;
use super::{CachedObject, DatasetCache};
use crate::config::PinRule;
use crate::glob::PathGlobs;
use crate::path::DatasetPath;
use crate::{Error, Result};

/// The pin rules in force on a dataset, compiled.
#[derive(Debug, Clone, Default)]
pub(super) struct PinSet {
    rules: Vec<CompiledRule>,
}

#[derive(Debug, Clone)]
struct CompiledRule {
    rule: PinRule,
    globs: PathGlobs,
    from_policy: bool,
}

impl PinSet {
    pub(super) fn new(policy: &[PinRule], run_time: &[PinRule]) -> Result<Self> {
        let compile = |rule: &PinRule, from_policy| -> Result<CompiledRule> {
            Ok(CompiledRule {
                globs: PathGlobs::new(&rule.paths)?,
                rule: rule.clone(),
                from_policy,
            })
        };
        let mut rules = Vec::new();
        for r in policy {
            rules.push(compile(r, true)?);
        }
        for r in run_time {
            rules.push(compile(r, false)?);
        }
        Ok(PinSet { rules })
    }

    /// Indexes of the rules that pin a file at `path` last modified at `mtime_ms`, at
    /// `now_ms` (both Unix milliseconds).
    fn pinning(
        &self,
        path: &DatasetPath,
        mtime_ms: i64,
        now_ms: i64,
    ) -> impl Iterator<Item = usize> {
        self.rules.iter().enumerate().filter_map(move |(i, r)| {
            let recent = r.rule.modified_within.is_none_or(|w| {
                mtime_ms >= now_ms.saturating_sub(w.as_millis().min(i64::MAX as u128) as i64)
            });
            (recent && r.globs.matches(path)).then_some(i)
        })
    }

    pub(super) fn pins(&self, path: &DatasetPath, mtime_ms: i64, now_ms: i64) -> bool {
        self.pinning(path, mtime_ms, now_ms).next().is_some()
    }
}

/// Now, in Unix milliseconds.
pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A pin rule in force and what it holds on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PinRuleUsage {
    /// The rule.
    #[serde(flatten)]
    pub rule: PinRule,
    /// True for a rule of the configuration (the CachePolicy), false for one added
    /// through the API.
    pub from_policy: bool,
    /// Cached files the rule pins now.
    pub files: u64,
    /// Cached bytes of those files.
    pub bytes: u64,
}

/// The file holding run-time pins.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RunTimePins {
    rules: Vec<PinRule>,
}

impl DatasetCache {
    /// Adds a pin rule at run time, kept across restarts. Returns false when the same
    /// rule was already in force (from the configuration or an earlier call).
    pub fn pin(&self, rule: PinRule) -> Result<bool> {
        PathGlobs::new(&rule.paths)?;
        if self.config_pins.lock().expect("pins").contains(&rule) {
            return Ok(false);
        }
        {
            let mut extra = self.extra_pins.lock().expect("pins");
            if extra.contains(&rule) {
                return Ok(false);
            }
            extra.push(rule);
            self.save_run_time_pins(&extra)?;
        }
        self.apply_pins()?;
        Ok(true)
    }

    /// Removes the run-time rules whose globs are all among `globs` (the configuration's
    /// rules stay). Returns the rules removed.
    pub fn unpin(&self, globs: &[String]) -> Result<Vec<PinRule>> {
        let removed = {
            let mut extra = self.extra_pins.lock().expect("pins");
            let (removed, kept): (Vec<PinRule>, Vec<PinRule>) = extra
                .drain(..)
                .partition(|r| r.paths.iter().all(|p| globs.contains(p)));
            *extra = kept;
            if !removed.is_empty() {
                self.save_run_time_pins(&extra)?;
            }
            removed
        };
        self.apply_pins()?;
        Ok(removed)
    }

    /// Every pin rule in force: the configuration's, then the run-time ones.
    pub fn pins(&self) -> Vec<PinRule> {
        let mut all = self.config_pins.lock().expect("pins").clone();
        all.extend(self.extra_pins.lock().expect("pins").iter().cloned());
        all
    }

    /// True if a file at `path` last modified at `mtime` is pinned now.
    pub fn is_pinned(&self, path: &DatasetPath, mtime: SystemTime) -> bool {
        let mtime_ms = mtime
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        self.pins
            .read()
            .expect("pins")
            .pins(path, mtime_ms, now_ms())
    }

    /// Each rule in force with the files and bytes it pins on this node now.
    pub fn pin_usage(&self) -> Vec<PinRuleUsage> {
        let set = self.pins.read().expect("pins").clone();
        let mut usage: Vec<PinRuleUsage> = set
            .rules
            .iter()
            .map(|r| PinRuleUsage {
                rule: r.rule.clone(),
                from_policy: r.from_policy,
                files: 0,
                bytes: 0,
            })
            .collect();
        let now = now_ms();
        for o in self.objects.read().expect("objects").values() {
            let mut rules = set.pinning(&o.path, o.mtime_ms, now).peekable();
            if rules.peek().is_none() {
                continue;
            }
            let bytes: u64 = {
                let st = o.state.lock().expect("object state");
                st.blocks.keys().map(|i| o.block_len(*i)).sum()
            };
            for i in rules {
                usage[i].files += 1;
                usage[i].bytes += bytes;
            }
        }
        usage
    }

    /// Bytes more that pinned files may take: the dataset's quota (or the node's disk, if
    /// smaller) less what is pinned already. Pinned blocks are never evicted, so fetching
    /// past this would only be read through and fetched again at every re-evaluation.
    pub fn room_for_pins(&self) -> u64 {
        let capacity = self
            .quota
            .load(Ordering::Relaxed)
            .min(self.node.disk_capacity);
        let pinned: u64 = self.pin_usage_bytes();
        capacity.saturating_sub(pinned)
    }

    fn pin_usage_bytes(&self) -> u64 {
        self.objects
            .read()
            .expect("objects")
            .values()
            .filter(|o| o.pinned.load(Ordering::Relaxed))
            .map(|o| {
                let st = o.state.lock().expect("object state");
                st.blocks.keys().map(|i| o.block_len(*i)).sum::<u64>()
            })
            .sum()
    }

    /// Evaluates every cached object against the rules as of now: objects newly matched
    /// leave the eviction policy, objects no longer matched (a rule removed, or a file aged
    /// out of its window) become evictable again.
    pub fn apply_pins(&self) -> Result<()> {
        let set = PinSet::new(
            &self.config_pins.lock().expect("pins"),
            &self.extra_pins.lock().expect("pins"),
        )?;
        *self.pins.write().expect("pins") = set.clone();
        let objects: Vec<Arc<CachedObject>> = self
            .objects
            .read()
            .expect("objects")
            .values()
            .cloned()
            .collect();
        let now = now_ms();
        for obj in objects {
            let pinned = set.pins(&obj.path, obj.mtime_ms, now);
            let before = obj.pinned.swap(pinned, Ordering::Relaxed);
            if pinned != before && obj.leases.load(Ordering::Relaxed) == 0 {
                self.set_in_policy(&obj, !pinned);
            }
        }
        self.publish_metrics();
        Ok(())
    }

    /// Where the run-time pins of this dataset are kept (beside, not inside, its disk
    /// tier: a dataset kept out of the disk tier has run-time pins too).
    fn run_time_pins_file(&self) -> PathBuf {
        let mut dir = self.node.dataset_dir(&self.id);
        let name = format!(
            "{}.json",
            dir.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("dataset")
        );
        dir.pop();
        dir.pop();
        dir.join("pins").join(name)
    }

    /// The run-time pins kept by an earlier run (none when there is no file; an unreadable
    /// file is reported and set aside, not fatal).
    pub(super) fn load_run_time_pins(&self) -> Vec<PinRule> {
        let file = self.run_time_pins_file();
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                tracing::warn!(dataset = %self.id, file = %file.display(), error = %e,
                    "cannot read the run-time pins; they are not in force");
                return Vec::new();
            }
        };
        match serde_json::from_str::<RunTimePins>(&text) {
            Ok(p) if PinSet::new(&[], &p.rules).is_ok() => p.rules,
            Ok(_) | Err(_) => {
                let aside = file.with_extension("json.unreadable");
                tracing::warn!(dataset = %self.id, file = %file.display(), kept_as = %aside.display(),
                    "the run-time pins file is not valid; set aside, its pins are not in force");
                let _ = std::fs::rename(&file, aside);
                Vec::new()
            }
        }
    }

    fn save_run_time_pins(&self, rules: &[PinRule]) -> Result<()> {
        let file = self.run_time_pins_file();
        let write = || -> std::io::Result<()> {
            if rules.is_empty() {
                return match std::fs::remove_file(&file) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                };
            }
            let dir = file.parent().expect("pins file has a parent");
            std::fs::create_dir_all(dir)?;
            let tmp = file.with_extension("json.tmp");
            let text = serde_json::to_vec_pretty(&RunTimePins {
                rules: rules.to_vec(),
            })?;
            std::fs::write(&tmp, text)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &file)
        };
        write().map_err(|e| Error::cache_io(&file, e))
    }

    /// Forgets the run-time pins (the dataset is deleted).
    pub fn forget_run_time_pins(&self) {
        self.extra_pins.lock().expect("pins").clear();
        let _ = std::fs::remove_file(self.run_time_pins_file());
    }

    pub(super) fn set_in_policy(&self, obj: &CachedObject, present: bool) {
        let st = obj.state.lock().expect("object state");
        self.set_in_policy_locked(obj, &st, present);
    }

    pub(super) fn set_in_policy_locked(&self, obj: &CachedObject, st: &ObjectState, present: bool) {
        let mut policy = self.policy.lock().expect("policy");
        for index in st.blocks.keys() {
            let key = (obj.id.clone(), *index);
            if present {
                policy.insert(key, obj.block_len(*index));
            } else {
                policy.remove(&key);
            }
        }
    }
}
