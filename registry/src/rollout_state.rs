//! A model's rollout state, kept by the gateway's controller in
//! `<registry>/<model>/rollout-state.json` (replaced whole, atomically): the candidate being
//! walked, its step and when the step began, the steps passed with their evidence, the
//! versions rolled back, and whether automatic decisions are paused. A restarted gateway
//! resumes from it: the same step, and never a rejected version again.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomic;
use crate::store::{Registry, RegistryError};

/// File name of a model's rollout state.
pub const ROLLOUT_STATE_FILE: &str = "rollout-state.json";

/// Where one model's rollout stands.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RolloutState {
    /// The candidate on its way and its step, when one is.
    #[serde(default)]
    pub step: Option<StepState>,
    /// Versions rolled back: never routed again.
    #[serde(default)]
    pub rejected: BTreeSet<u64>,
    #[serde(default)]
    pub paused: bool,
    /// In a fleet: the controller lease term of the last holder that wrote this state. A holder
    /// with a lower term may no longer write it (fencing); 0 for a single gateway.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub term: u64,
    /// In a fleet: incremented by every write to the store, so a reader can tell the later of
    /// two states it read; 0 for a single gateway.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revision: u64,
}

fn is_zero(term: &u64) -> bool {
    *term == 0
}

/// One candidate's progress.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StepState {
    pub candidate: u64,
    /// Index into the policy's steps.
    pub step: usize,
    /// The canary weight in force (the step's, or an operator's).
    pub weight: u32,
    /// When the step began, in milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// What each passed step was judged on (its audit reasons and evidence, and the approval
    /// when one was needed).
    #[serde(default)]
    pub passed: Vec<serde_json::Value>,
    /// The step passed on evidence and the policy wants a human approval before leaving it:
    /// what the controller holds on (the step, the reasons and evidence, since when).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaiting_approval: Option<serde_json::Value>,
    /// An approver's go for leaving this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
}

/// Who approved leaving a step, and when.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// The approving credential's name (never its token).
    pub credential: String,
    /// RFC 3339 time of the approval.
    pub time: String,
    /// The step approved (index into the policy's steps).
    pub step: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl Registry {
    /// The model's rollout state (the default when none was written).
    pub fn rollout_state(&self, model: &str) -> Result<RolloutState, RegistryError> {
        let path = self.model_dir(model)?.join(ROLLOUT_STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| RegistryError::Corrupt { path: path.display().to_string(), reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RolloutState::default()),
            Err(e) => Err(RegistryError::Io { path: path.display().to_string(), source: e }),
        }
    }

    /// Replaces the model's rollout state, atomically and durably.
    /// For a copy of a registry in object storage: [`crate::Remote::update_rollout_state`] on
    /// the store, then the stored state written to the copy. `Ok(None)`: fenced off.
    pub fn update_rollout_state(
        &self,
        model: &str,
        fence: Option<u64>,
        mut change: impl FnMut(&mut RolloutState),
    ) -> Result<Option<RolloutState>, RegistryError> {
        let Some(remote) = self.remote() else {
            return Err(RegistryError::Store {
                url: self.root().display().to_string(),
                reason: "compare-and-set of the rollout state needs a registry in object storage".into(),
            });
        };
        let lock = crate::remote::copy_lock(self.root());
        let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
        let stored = remote.update_rollout_state(model, fence, &mut change)?;
        if let Some(state) = &stored {
            let path = self.model_dir(model)?.join(ROLLOUT_STATE_FILE);
            let io = |e| RegistryError::Io { path: path.display().to_string(), source: e };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            write_atomic(&path, &serde_json::to_vec_pretty(state).unwrap_or_default()).map_err(io)?;
        }
        Ok(stored)
    }

    pub fn write_rollout_state(&self, model: &str, state: &RolloutState) -> Result<(), RegistryError> {
        let path = self.model_dir(model)?.join(ROLLOUT_STATE_FILE);
        let lock = self.remote().map(|_| crate::remote::copy_lock(self.root()));
        let _held = lock.as_ref().map(|l| l.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(remote) = self.remote() {
            remote.write_rollout_state(model, state)?;
        }
        let bytes = serde_json::to_vec_pretty(state).unwrap_or_default();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| RegistryError::Io { path: dir.display().to_string(), source: e })?;
        }
        write_atomic(&path, &bytes).map_err(|e| RegistryError::Io { path: path.display().to_string(), source: e })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_a_corrupt_file_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(dir.path());
        std::fs::create_dir_all(dir.path().join("m")).unwrap();
        assert_eq!(registry.rollout_state("m").unwrap(), RolloutState::default());
        let state = RolloutState {
            step: Some(StepState {
                candidate: 3,
                step: 1,
                weight: 25,
                started_ms: 1_700_000_000_000,
                passed: vec![],
                ..Default::default()
            }),
            rejected: [2].into(),
            paused: false,
            term: 0,
            revision: 0,
        };
        registry.write_rollout_state("m", &state).unwrap();
        assert_eq!(registry.rollout_state("m").unwrap(), state);
        std::fs::write(dir.path().join("m").join(ROLLOUT_STATE_FILE), b"{\"step\": 1").unwrap();
        let err = registry.rollout_state("m").unwrap_err().to_string();
        assert!(err.contains("rollout-state.json"), "{err}");
    }

    #[test]
    fn a_state_written_before_approvals_existed_reads_and_writes_back_the_same() {
        let old = r#"{"step":{"candidate":3,"step":1,"weight":25,"started_ms":1700000000000,"passed":[{"step":0}]},"rejected":[2],"paused":false}"#;
        let state: RolloutState = serde_json::from_str(old).unwrap();
        assert_eq!(state.step.as_ref().map(|p| (&p.awaiting_approval, &p.approval)), Some((&None, &None)));
        assert_eq!(serde_json::to_string(&state).unwrap(), old, "no new keys without approvals");
    }
}
