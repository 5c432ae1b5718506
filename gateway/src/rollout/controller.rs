//! The rollout controller: walks each model's canary through its policy's steps, promoting it
//! (moving the champion alias) when every step passed, or rolling it back the moment a
//! threshold fails. Decisions are one-way (a rolled-back version is never routed again by this
//! process, and a promoted one is the champion), so the controller cannot flap.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flywheel_shadow::{Evidence, Verdict, judge};

use super::audit::AuditEntry;
use super::background::Background;
use super::reload::Reloader;
use crate::config::RolloutPolicy;

/// Where one model's rollout stands.
#[derive(Clone, Debug)]
struct Progress {
    candidate: u64,
    step: usize,
    step_started: Instant,
    /// Candidate requests recorded when the step started.
    requests_at_step: u64,
}

/// Starts the controller, looking at the evidence every `interval`, until the handle is dropped.
pub fn spawn(reloader: Arc<Reloader>, interval: Duration) -> std::io::Result<Background> {
    Background::spawn("rollout-controller", move |running| {
        let mut progress: HashMap<String, Progress> = HashMap::new();
        while running.keep_going() {
            std::thread::sleep(interval);
            crate::health::guard("controller", || tick(&reloader, &mut progress));
        }
    })
}

/// One look at every model with a policy; public for tests that step the controller by hand.
fn tick(reloader: &Reloader, progress: &mut HashMap<String, Progress>) {
    let config = reloader.config.load_full();
    let table = reloader.table.load_full();
    for (name, served) in &table.models {
        let Some(rollout) = config.rollout_for(name) else { continue };
        let (Some(policy), Some((candidate, weight))) = (&rollout.policy, served.route.canary) else {
            progress.remove(name);
            continue;
        };
        if reloader.controls.is_paused(name) {
            continue;
        }
        let evidence = &served.route.evidence;
        let paired =
            (evidence.versions.2 == Some(candidate)).then(|| evidence.shadow.snapshot()).filter(|p| p.pairs > 0);
        let evidence =
            Evidence { primary: evidence.champion.snapshot(), candidate: evidence.canary.snapshot(), paired };
        let state = progress.entry(name.clone()).or_insert_with(|| Progress {
            candidate,
            step: 0,
            step_started: Instant::now(),
            requests_at_step: evidence.candidate.requests,
        });
        if state.candidate != candidate {
            *state = Progress {
                candidate,
                step: 0,
                step_started: Instant::now(),
                requests_at_step: evidence.candidate.requests,
            };
        }
        let wanted = policy.steps[state.step.min(policy.steps.len() - 1)];
        if weight != wanted {
            set_weight(reloader, name, candidate, weight, wanted, "controller", "step weight");
            continue;
        }
        decide(reloader, name, served.route.champion, policy, state, &evidence);
    }
}

fn decide(
    reloader: &Reloader,
    name: &str,
    champion: u64,
    policy: &RolloutPolicy,
    state: &mut Progress,
    evidence: &Evidence,
) {
    let (verdict, reasons) = judge(&policy.thresholds, evidence);
    let evidence_json = serde_json::to_value(evidence).unwrap_or_default();
    match verdict {
        Verdict::RollBack => {
            let reason = reasons.join("; ");
            let d = Decision {
                model: name,
                champion,
                candidate: state.candidate,
                actor: "controller",
                reason: &reason,
                evidence: evidence_json,
            };
            roll_back(reloader, d);
        }
        Verdict::Hold => {}
        Verdict::Promote => {
            let dwelt = state.step_started.elapsed() >= Duration::from_millis(policy.min_dwell_ms);
            let step_samples = evidence.candidate.requests.saturating_sub(state.requests_at_step);
            if !dwelt || step_samples < policy.thresholds.min_samples {
                return;
            }
            if state.step + 1 < policy.steps.len() {
                let (from, to) = (policy.steps[state.step], policy.steps[state.step + 1]);
                state.step += 1;
                state.step_started = Instant::now();
                state.requests_at_step = evidence.candidate.requests;
                reloader.controls.set_weight(name, state.candidate, to);
                let mut entry = AuditEntry::now(name, "controller", "advance");
                entry.from = Some(champion);
                entry.to = Some(state.candidate);
                entry.reason = format!("step passed: canary weight {from}% -> {to}%; {}", reasons.join("; "));
                entry.evidence = evidence_json;
                reloader.audit.append(&entry);
                reloader.reload();
            } else {
                let reason = reasons.join("; ");
                let d = Decision {
                    model: name,
                    champion,
                    candidate: state.candidate,
                    actor: "controller",
                    reason: &reason,
                    evidence: evidence_json,
                };
                promote(reloader, d);
            }
        }
    }
}

fn set_weight(reloader: &Reloader, name: &str, candidate: u64, from: u32, to: u32, actor: &'static str, why: &str) {
    reloader.controls.set_weight(name, candidate, to);
    let mut entry = AuditEntry::now(name, actor, "set_weight");
    entry.to = Some(candidate);
    entry.reason = format!("{why}: canary weight {from}% -> {to}%");
    reloader.audit.append(&entry);
    reloader.reload();
}

/// A promotion or rollback of one model's candidate, and why.
pub struct Decision<'a> {
    pub model: &'a str,
    pub champion: u64,
    pub candidate: u64,
    /// `controller` or `admin`.
    pub actor: &'static str,
    pub reason: &'a str,
    pub evidence: serde_json::Value,
}

/// Makes `candidate` the champion: moves the config's champion alias to it and removes the
/// canary alias (if the canary was named by one), then reloads.
pub fn promote(reloader: &Reloader, d: Decision<'_>) {
    let Decision { model: name, champion, candidate, actor, reason, evidence } = d;
    let config = reloader.config.load_full();
    let mut entry = AuditEntry::now(name, actor, "promote");
    entry.from = Some(champion);
    entry.to = Some(candidate);
    entry.evidence = evidence;
    let Some(rollout) = config.rollout_for(name) else { return };
    let Some(registry) = reloader.registry() else { return };
    if rollout.champion.chars().all(|c| c.is_ascii_digit()) || rollout.champion == "latest" {
        entry.action = "promote_refused";
        entry.reason =
            format!("champion is pinned to {:?} in the config; point it at an alias to promote", rollout.champion);
        reloader.audit.append(&entry);
        return;
    }
    if let Err(e) = registry.set_alias(name, &rollout.champion, candidate) {
        entry.action = "promote_failed";
        entry.reason = format!("moving alias {}: {e}", rollout.champion);
        reloader.audit.append(&entry);
        return;
    }
    remove_candidate_alias(reloader, name);
    reloader.controls.clear_weight(name, candidate);
    entry.reason = format!("{} -> version {candidate}: {reason}", rollout.champion);
    reloader.audit.append(&entry);
    reloader.reload();
}

/// Takes `candidate` out of routing for good and removes the canary alias, then reloads.
pub fn roll_back(reloader: &Reloader, d: Decision<'_>) {
    let Decision { model: name, champion, candidate, actor, reason, evidence } = d;
    reloader.controls.reject(name, candidate);
    remove_candidate_alias(reloader, name);
    let mut entry = AuditEntry::now(name, actor, "roll_back");
    entry.from = Some(candidate);
    entry.to = Some(champion);
    entry.reason = reason.to_owned();
    entry.evidence = evidence;
    reloader.audit.append(&entry);
    reloader.reload();
}

fn remove_candidate_alias(reloader: &Reloader, name: &str) {
    let config = reloader.config.load_full();
    let Some(canary) = config.rollout_for(name).and_then(|r| r.canary.as_ref()) else { return };
    if flywheel_registry::valid_alias(&canary.version)
        && let Some(registry) = reloader.registry()
        && let Err(e) = registry.remove_alias(name, &canary.version)
    {
        tracing::warn!(model = name, alias = %canary.version, error = %e, "candidate alias not removed");
    }
}
