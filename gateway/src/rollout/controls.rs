//! The rollout controller's and operators' live decisions, which the table builder applies on
//! top of the config: the canary weight of the current step, rolled-back versions, pauses.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Per-model decisions, shared by the controller, the admin API and the builder.
#[derive(Debug, Default)]
pub struct Controls {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// (model, candidate version) → canary weight in force.
    weights: HashMap<(String, u64), u32>,
    /// Versions rolled back: never routed again by this process.
    rejected: HashSet<(String, u64)>,
    paused: HashSet<String>,
}

impl Controls {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain maps: a panic elsewhere cannot leave them half-updated.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The weight decided for `model`'s canary `version`, if any.
    pub fn weight(&self, model: &str, version: u64) -> Option<u32> {
        self.lock().weights.get(&(model.to_owned(), version)).copied()
    }

    /// Sets the canary weight of `model`'s `version`.
    pub fn set_weight(&self, model: &str, version: u64, weight: u32) {
        self.lock().weights.insert((model.to_owned(), version), weight.min(100));
    }

    /// Marks `version` of `model` rolled back.
    pub fn reject(&self, model: &str, version: u64) {
        let mut inner = self.lock();
        inner.rejected.insert((model.to_owned(), version));
        inner.weights.remove(&(model.to_owned(), version));
    }

    /// Whether `version` of `model` was rolled back.
    pub fn is_rejected(&self, model: &str, version: u64) -> bool {
        self.lock().rejected.contains(&(model.to_owned(), version))
    }

    /// Forgets the weight of a finished rollout.
    pub fn clear_weight(&self, model: &str, version: u64) {
        self.lock().weights.remove(&(model.to_owned(), version));
    }

    /// Pauses or resumes automatic decisions for `model`.
    pub fn set_paused(&self, model: &str, paused: bool) {
        let mut inner = self.lock();
        if paused {
            inner.paused.insert(model.to_owned());
        } else {
            inner.paused.remove(model);
        }
    }

    /// Whether automatic decisions for `model` are paused.
    pub fn is_paused(&self, model: &str) -> bool {
        self.lock().paused.contains(model)
    }
}
