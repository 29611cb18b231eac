//! Pins: globs whose cached blocks are never evicted (configured, and added at run time).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::object::ObjectState;
use super::{CachedObject, DatasetCache};
use crate::Result;
use crate::glob::PathGlobs;
use crate::path::DatasetPath;

impl DatasetCache {
    /// Adds pin globs at run time (on top of the configured ones).
    pub fn pin(&self, globs: &[String]) -> Result<()> {
        PathGlobs::new(globs)?;
        {
            let mut extra = self.extra_pins.lock().expect("pins");
            for g in globs {
                if !extra.contains(g) {
                    extra.push(g.clone());
                }
            }
        }
        self.apply_pins()
    }

    /// Removes run-time pin globs (configured pins stay).
    pub fn unpin(&self, globs: &[String]) -> Result<()> {
        self.extra_pins
            .lock()
            .expect("pins")
            .retain(|g| !globs.contains(g));
        self.apply_pins()
    }

    /// All pin globs in force, each once (a pin Job adds at run time the globs its policy
    /// also configures).
    pub fn pins(&self) -> Vec<String> {
        let mut all = self.config_pins.lock().expect("pins").clone();
        for g in self.extra_pins.lock().expect("pins").iter() {
            if !all.contains(g) {
                all.push(g.clone());
            }
        }
        all
    }

    /// True if the path is pinned.
    pub fn is_pinned(&self, path: &DatasetPath) -> bool {
        self.pins.read().expect("pins").matches(path)
    }

    pub(super) fn apply_pins(&self) -> Result<()> {
        let globs = PathGlobs::new(&self.pins())?;
        *self.pins.write().expect("pins") = globs.clone();
        let objects: Vec<Arc<CachedObject>> = self
            .objects
            .read()
            .expect("objects")
            .values()
            .cloned()
            .collect();
        for obj in objects {
            let now = globs.matches(&obj.path);
            let before = obj.pinned.swap(now, Ordering::Relaxed);
            if now != before && obj.leases.load(Ordering::Relaxed) == 0 {
                self.set_in_policy(&obj, !now);
            }
        }
        self.publish_metrics();
        Ok(())
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
