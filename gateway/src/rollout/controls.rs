//! The rollout controller's and operators' live decisions, which the table builder applies on
//! top of the config: the candidate's step and canary weight, rolled-back versions, pauses.
//! Every change is written through to the registry's `rollout-state.json` of the model before
//! it takes effect, so a restarted gateway resumes the same step and never routes a rejected
//! version again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flywheel_registry::{Registry, RolloutState, StepState};

/// Per-model decisions, shared by the controller, the admin API and the builder.
#[derive(Debug, Default)]
pub struct Controls {
    registry: Option<Registry>,
    /// Each model's state, and whether its file may be written (not when it could not be
    /// read: replacing it would lose the rejected versions it holds).
    states: Mutex<HashMap<String, (RolloutState, bool)>>,
    /// In a fleet: the controller lease term this process writes each model's state under
    /// (absent: an operator's write, compare-and-set only).
    fences: Mutex<HashMap<String, u64>>,
}

impl Controls {
    /// Decisions kept in `registry` (read on first use of each model); in memory only without.
    pub fn new(registry: Option<Registry>) -> Self {
        Self { registry, states: Mutex::new(HashMap::new()), fences: Mutex::new(HashMap::new()) }
    }

    /// Reads (once) the cached state of `model` and answers from it.
    fn read<T>(&self, model: &str, answer: impl FnOnce(&RolloutState) -> T) -> T {
        // Plain data behind the lock: a panic elsewhere cannot leave it half-updated.
        let mut states = self.lock();
        let (state, _) = states.entry(model.to_owned()).or_insert_with(|| self.load(model));
        answer(state)
    }

    /// Applies `change` to `model`'s state and writes it. With a folder: to the cached state,
    /// then the file (when it changed). With a registry in object storage the store's state is
    /// authoritative: `change` is applied to it by compare-and-set (re-applied after a lost race,
    /// so an operator's and the controller's changes never overwrite each other), `fenced` by
    /// the lease term this process holds for the controller's own step changes, and without
    /// holding the lock over the store request. A store that fails leaves the change in this
    /// process (a rollback still takes the version out of routing) and says so.
    fn write(&self, model: &str, fenced: bool, change: impl FnMut(&mut RolloutState)) -> Result<(), String> {
        self.write_with(model, fenced, true, change)
    }

    /// [`Controls::write`]; with `keep_on_failure` false a change the store did not take is not
    /// applied here either (an approval or a hold must be the fleet's, or nobody's).
    fn write_with(
        &self,
        model: &str,
        fenced: bool,
        keep_on_failure: bool,
        mut change: impl FnMut(&mut RolloutState),
    ) -> Result<(), String> {
        let Some(registry) = self.registry.as_ref().filter(|r| r.remote().is_some()) else {
            let mut states = self.lock();
            let (state, writable) = states.entry(model.to_owned()).or_insert_with(|| self.load(model));
            let before = state.clone();
            change(state);
            if *state != before
                && let Some(registry) = &self.registry
            {
                if !*writable {
                    tracing::error!(model, "rollout state file unreadable: this decision holds in this process only");
                } else if let Err(e) = registry.write_rollout_state(model, state) {
                    tracing::error!(model, error = %e, "rollout state not saved: a restart would not resume it");
                }
            }
            return Ok(());
        };
        let fence = if fenced { self.fence_of(model) } else { None };
        match registry.update_rollout_state(model, fence, &mut change) {
            Ok(Some(stored)) => {
                self.cache(model, stored);
                Ok(())
            }
            Ok(None) => {
                self.reread_from_source(model);
                Err(format!("a newer controller than term {} holds the lease of '{model}'", fence.unwrap_or(0)))
            }
            Err(e) if !keep_on_failure => Err(e.to_string()),
            Err(e) => {
                tracing::error!(model, error = %e, "rollout state not saved in the store; the change holds in this process only");
                let mut states = self.lock();
                let (state, _) = states.entry(model.to_owned()).or_insert_with(|| self.load(model));
                change(state);
                Err(e.to_string())
            }
        }
    }

    /// Caches `state` unless the cache holds a later revision already (reads and writes of the
    /// store finish in any order).
    fn cache(&self, model: &str, state: RolloutState) {
        let mut states = self.lock();
        match states.get(model) {
            Some((cached, _)) if cached.revision > state.revision => {}
            _ => {
                states.insert(model.to_owned(), (state, true));
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (RolloutState, bool)>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fence_of(&self, model: &str) -> Option<u64> {
        self.fences.lock().unwrap_or_else(|p| p.into_inner()).get(model).copied()
    }

    /// In a fleet: this process holds `model`'s controller lease at `term` (`None`: it no longer
    /// does). Taking a new term re-reads the state from the store and writes the term into it,
    /// so a previous holder's later writes are refused. Returns whether this process may act
    /// under `term` now: false when the store could not be written or holds a newer term (the
    /// caller tries again at its next look).
    pub fn fence(&self, model: &str, term: Option<u64>) -> bool {
        let Some(term) = term else {
            self.fences.lock().unwrap_or_else(|p| p.into_inner()).remove(model);
            return false;
        };
        if self.fence_of(model) == Some(term) {
            return true;
        }
        let Some(registry) = self.registry.as_ref().filter(|r| r.remote().is_some()) else { return true };
        match registry.update_rollout_state(model, Some(term), |_| {}) {
            Ok(Some(stored)) => {
                self.cache(model, stored);
                self.fences.lock().unwrap_or_else(|p| p.into_inner()).insert(model.to_owned(), term);
                true
            }
            Ok(None) => {
                tracing::warn!(model, term, "a newer controller term is in the store");
                false
            }
            Err(e) => {
                tracing::error!(model, error = %e, "rollout state not claimed at the new lease term");
                false
            }
        }
    }

    fn load(&self, model: &str) -> (RolloutState, bool) {
        let Some(registry) = &self.registry else { return (RolloutState::default(), true) };
        match registry.rollout_state(model) {
            Ok(state) => (state, true),
            Err(e) => {
                tracing::error!(model, error = %e, "rollout state unreadable; starting from the config and leaving the file as it is");
                (RolloutState::default(), false)
            }
        }
    }

    /// Reads `model`'s state again from where it is written (the store, for a copy): another
    /// replica (the fleet's controller) or an operator there moved it.
    pub fn reread_from_source(&self, model: &str) {
        let Some(registry) = &self.registry else { return };
        let fresh = match registry.remote() {
            Some(remote) => remote.rollout_state(model),
            None => registry.rollout_state(model),
        };
        match fresh {
            Ok(state) if registry.remote().is_some() => self.cache(model, state),
            Ok(state) => {
                self.lock().insert(model.to_owned(), (state, true));
            }
            Err(e) => tracing::warn!(model, error = %e, "rollout state not re-read; using the copy"),
        }
    }

    /// The weight decided for `model`'s canary `version`, if any.
    pub fn weight(&self, model: &str, version: u64) -> Option<u32> {
        self.read(model, |s| s.step.as_ref().filter(|p| p.candidate == version).map(|p| p.weight))
    }

    /// Sets the canary weight of `model`'s `version` (keeping its step when it is the same
    /// candidate; a new candidate starts at step 0).
    pub fn set_weight(&self, model: &str, version: u64, weight: u32) -> Result<(), String> {
        self.write(model, false, |s| match &mut s.step {
            Some(p) if p.candidate == version => p.weight = weight.min(100),
            _ => s.step = Some(new_step(version, 0, weight.min(100))),
        })
    }

    /// Puts `model`'s candidate `version` on `step` at `weight` (the step's start is now when
    /// the step changes; passed steps are kept).
    pub fn set_step(&self, model: &str, version: u64, step: usize, weight: u32) {
        self.logged(model, true, |s| match &mut s.step {
            Some(p) if p.candidate == version && p.step == step => p.weight = weight.min(100),
            Some(p) if p.candidate == version => {
                let passed = std::mem::take(&mut p.passed);
                *p = StepState { passed, ..new_step(version, step, weight.min(100)) };
            }
            _ => s.step = Some(new_step(version, step, weight.min(100))),
        });
    }

    /// `model`'s candidate `version` moved to `step` at `weight`; `passed` is what the step
    /// before it was judged on.
    pub fn advance(&self, model: &str, version: u64, (step, weight): (usize, u32), passed: serde_json::Value) {
        self.logged(model, true, |s| {
            // Applied again after a lost race: a state already on this step (or past it) was
            // written by the attempt that landed.
            if s.step.as_ref().is_some_and(|p| p.candidate == version && p.step >= step) {
                return;
            }
            let mut history = match s.step.take() {
                Some(p) if p.candidate == version => p.passed,
                _ => Vec::new(),
            };
            history.push(passed.clone());
            s.step = Some(StepState { passed: history, ..new_step(version, step, weight.min(100)) });
        });
    }

    /// The step `model`'s candidate `version` is on and when it began, if it is on its way.
    pub fn step(&self, model: &str, version: u64) -> Option<(usize, SystemTime)> {
        self.read(model, |s| {
            s.step
                .as_ref()
                .filter(|p| p.candidate == version)
                .map(|p| (p.step, UNIX_EPOCH + Duration::from_millis(p.started_ms)))
        })
    }

    /// Marks `version` of `model` rolled back.
    pub fn reject(&self, model: &str, version: u64) {
        self.logged(model, false, |s| {
            s.rejected.insert(version);
            if s.step.as_ref().is_some_and(|p| p.candidate == version) {
                s.step = None;
            }
        });
    }

    /// Whether `version` of `model` was rolled back.
    pub fn is_rejected(&self, model: &str, version: u64) -> bool {
        self.read(model, |s| s.rejected.contains(&version))
    }

    /// Forgets the progress of a finished rollout.
    pub fn clear_weight(&self, model: &str, version: u64) {
        self.logged(model, false, |s| {
            if s.step.as_ref().is_some_and(|p| p.candidate == version) {
                s.step = None;
            }
        });
    }

    /// What `model`'s `candidate` awaits approval on, if it does (the step and its evidence).
    pub fn awaiting_approval(&self, model: &str, candidate: u64) -> Option<(usize, serde_json::Value)> {
        self.read(model, |s| {
            let p = s.step.as_ref().filter(|p| p.candidate == candidate)?;
            p.awaiting_approval.clone().map(|held| (p.step, held))
        })
    }

    /// The approval for leaving `step` of `model`'s `candidate`, if one was given.
    pub fn approval(&self, model: &str, candidate: u64, step: usize) -> Option<flywheel_registry::Approval> {
        self.read(model, |s| {
            let p = s.step.as_ref().filter(|p| p.candidate == candidate && p.step == step)?;
            p.approval.clone().filter(|a| a.step == step)
        })
    }

    /// The controller holds `model`'s `candidate` on `step` until an approver says go; `held`
    /// is what it holds on (reasons, evidence). Kept once: a later call changes nothing.
    /// Returns whether the hold is recorded (false: the store refused; the next look retries).
    pub fn await_approval(&self, model: &str, candidate: u64, step: usize, held: serde_json::Value) -> bool {
        let written = self.write_with(model, true, false, |s| {
            if let Some(p) = s.step.as_mut().filter(|p| p.candidate == candidate && p.step == step)
                && p.awaiting_approval.is_none()
            {
                p.awaiting_approval = Some(held.clone());
            }
        });
        if let Err(e) = &written {
            tracing::warn!(model, error = %e, "approval hold not written; the next look tries again");
        }
        written.is_ok()
    }

    /// Records `approval` for `model`'s `candidate`, which must await approval on the approved
    /// step (compare-and-set in a fleet: an approval never lands on a step that moved on).
    /// `Ok(Some(why))`: refused, nothing written; `Err`: the state could not be written.
    pub fn approve(
        &self,
        model: &str,
        candidate: u64,
        approval: flywheel_registry::Approval,
    ) -> Result<Option<String>, String> {
        let mut refused = None;
        self.write_with(model, false, false, |s| {
            refused = None;
            match s.step.as_mut().filter(|p| p.candidate == candidate) {
                Some(p) if p.awaiting_approval.is_some() && p.step == approval.step => {
                    p.approval = Some(approval.clone());
                }
                Some(p) if p.awaiting_approval.is_some() => {
                    refused =
                        Some(format!("version {candidate} awaits approval of step {}, not {}", p.step, approval.step));
                }
                _ => refused = Some(format!("version {candidate} of '{model}' does not await approval")),
            }
        })?;
        Ok(refused)
    }

    /// Pauses or resumes automatic decisions for `model`.
    pub fn set_paused(&self, model: &str, paused: bool) -> Result<(), String> {
        self.write(model, false, |s| s.paused = paused)
    }

    /// [`Controls::write`] whose failure is logged (the caller goes on: the next look decides).
    fn logged(&self, model: &str, fenced: bool, change: impl FnMut(&mut RolloutState)) {
        if let Err(e) = self.write(model, fenced, change) {
            tracing::warn!(model, error = %e, "rollout state change not written");
        }
    }

    /// Whether automatic decisions for `model` are paused.
    pub fn is_paused(&self, model: &str) -> bool {
        self.read(model, |s| s.paused)
    }
}

fn new_step(candidate: u64, step: usize, weight: u32) -> StepState {
    let started_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    StepState { candidate, step, weight, started_ms, ..StepState::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn decisions_survive_a_new_process_reading_the_same_registry() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("m")).unwrap();
        let controls = Controls::new(Some(Registry::open(dir.path())));
        controls.set_weight("m", 2, 10).unwrap();
        controls.advance("m", 2, (1, 50), serde_json::json!({"reason": "step passed"}));
        controls.reject("m", 3);
        controls.set_paused("m", true).unwrap();
        let restarted = Controls::new(Some(Registry::open(dir.path())));
        assert_eq!(restarted.weight("m", 2), Some(50));
        assert_eq!(restarted.step("m", 2).map(|(step, _)| step), Some(1));
        assert!(restarted.is_rejected("m", 3) && !restarted.is_rejected("m", 2));
        assert!(restarted.is_paused("m"));
        let state = Registry::open(dir.path()).rollout_state("m").unwrap();
        assert_eq!(state.step.unwrap().passed, [serde_json::json!({"reason": "step passed"})]);
        // An operator's weight keeps the step; a rollback ends it.
        restarted.set_weight("m", 2, 30).unwrap();
        assert_eq!(restarted.step("m", 2).map(|(step, _)| step), Some(1));
        restarted.reject("m", 2);
        assert_eq!((restarted.step("m", 2), restarted.weight("m", 2)), (None, None));
    }

    #[test]
    fn in_a_fleet_an_operators_change_and_the_controllers_both_hold_and_an_old_term_is_refused() {
        let remote = flywheel_registry::Remote::shared("memory://controls/registry").unwrap();
        let copies: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let controls = |i: usize| Controls::new(Some(Registry::mirrored(copies[i].path(), Arc::clone(&remote))));
        let (leader, operator, stale, old) = (controls(0), controls(1), controls(2), controls(3));
        assert!(!stale.is_paused("m"), "cached before the operator's pause");
        assert!(old.fence("m", Some(1)), "the first holder");
        assert!(leader.fence("m", Some(2)), "the next holder");
        leader.set_step("m", 5, 1, 50);
        operator.set_paused("m", true).unwrap();
        leader.advance("m", 5, (2, 100), serde_json::json!({"step": 1}));
        let state = remote.rollout_state("m").unwrap();
        assert!(state.paused, "the operator's pause survived the controller's write");
        assert_eq!((state.step.as_ref().map(|p| (p.step, p.weight)), state.term), (Some((2, 100)), 2));
        // A resume from a process whose cache never saw the pause is still written.
        stale.set_paused("m", false).unwrap();
        assert!(!remote.rollout_state("m").unwrap().paused);
        // The first holder, unaware it lost the lease: its step change is refused.
        old.set_step("m", 5, 0, 10);
        assert_eq!(remote.rollout_state("m").unwrap().step.map(|p| p.step), Some(2));
        assert_eq!(old.step("m", 5).map(|(step, _)| step), Some(2), "and it re-read the store");
    }

    #[test]
    fn in_a_fleet_an_approval_from_another_replica_lands_on_the_held_step_only() {
        let remote = flywheel_registry::Remote::shared("memory://approvals/registry").unwrap();
        let copies: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let controls = |i: usize| Controls::new(Some(Registry::mirrored(copies[i].path(), Arc::clone(&remote))));
        let (leader, approver) = (controls(0), controls(1));
        assert!(leader.fence("m", Some(1)));
        leader.set_step("m", 7, 1, 50);
        let approval = |step| flywheel_registry::Approval {
            credential: "bob".into(),
            time: "2026-12-01T00:00:00Z".into(),
            step,
            comment: None,
        };
        approver.reread_from_source("m");
        let early = approver.approve("m", 7, approval(1)).unwrap();
        assert!(early.unwrap().contains("does not await approval"), "nothing held yet");
        leader.await_approval("m", 7, 1, serde_json::json!({"step": 1}));
        leader.await_approval("m", 7, 1, serde_json::json!({"step": "again"}));
        approver.reread_from_source("m");
        assert_eq!(approver.awaiting_approval("m", 7), Some((1, serde_json::json!({"step": 1}))), "kept once");
        let wrong = approver.approve("m", 7, approval(0)).unwrap();
        assert!(wrong.unwrap().contains("awaits approval of step 1, not 0"));
        assert_eq!(approver.approve("m", 7, approval(1)).unwrap(), None);
        assert_eq!(leader.approval("m", 7, 1), None, "the leader's copy has not re-read yet");
        leader.reread_from_source("m");
        assert_eq!(leader.approval("m", 7, 1).map(|a| a.credential), Some("bob".to_owned()));
        // The next step starts without the hold or the approval.
        leader.advance("m", 7, (2, 100), serde_json::json!({"step": 1}));
        assert_eq!((leader.awaiting_approval("m", 7), leader.approval("m", 7, 2)), (None, None));
        assert_eq!(remote.rollout_state("m").unwrap().step.unwrap().step, 2);
    }

    #[test]
    fn an_unreadable_state_file_is_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("m")).unwrap();
        let path = dir.path().join("m").join(flywheel_registry::ROLLOUT_STATE_FILE);
        std::fs::write(&path, b"{\"rejected\": [2], \"future_key\": 1}").unwrap();
        let controls = Controls::new(Some(Registry::open(dir.path())));
        controls.reject("m", 5);
        assert!(controls.is_rejected("m", 5), "the decision holds in this process");
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"rejected\": [2], \"future_key\": 1}", "not overwritten");
    }
}
