//! The rollout controller: walks each model's canary through its policy's steps, promoting it
//! (moving the champion alias) when every step passed, or rolling it back the moment a
//! threshold fails. Each step is judged on the evidence gathered at its own weight: health
//! (errors, p99, shadow agreement) as a guard rail, and the labelled quality of the requests
//! each arm answered as the decision. Decisions are one-way (a rolled-back version is never
//! routed again by this process, and a promoted one is the champion), so it cannot flap.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use flywheel_shadow::labelled::compare;
use flywheel_shadow::{Evidence, QualityComparison, Verdict, differs, judge};

use super::audit::AuditEntry;
use super::background::Background;
use super::decision::{Decision, promote, roll_back, still_canary};
use super::reload::Reloader;
use crate::config::RolloutPolicy;
use crate::model::table::RouteEvidence;

/// Where one model's rollout stands.
#[derive(Clone, Debug)]
struct Progress {
    /// The controller lease term this progress was made under (0 without a fleet).
    term: u64,
    candidate: u64,
    step: usize,
    step_started: Instant,
    /// The step's evidence the cached comparison is about.
    evidence: Arc<RouteEvidence>,
    /// The last quality comparison of this step: recomputed when the candidate's labelled rows
    /// grew by a quarter, so the intervals are read a logarithmic number of times (fewer looks,
    /// fewer chance crossings) and the bootstrap costs little.
    quality: Option<QualityComparison>,
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

/// One look at every model with a policy.
fn tick(reloader: &Reloader, progress: &mut HashMap<String, Progress>) {
    let config = reloader.config.load_full();
    let table = reloader.table.load_full();
    for (name, served) in &table.models {
        let Some(rollout) = config.rollout_for(name) else { continue };
        let (Some(policy), Some((candidate, weight))) = (&rollout.policy, served.route.canary) else {
            progress.remove(name);
            continue;
        };
        let route_evidence = &served.route.evidence;
        // In a fleet every replica shares its evidence; only the lease holder judges, on the
        // fleet's evidence, resuming from the durable state another holder may have moved.
        let pooled = match reloader.fleet.as_deref() {
            Some(fleet) => {
                fleet.publish_evidence(name, route_evidence);
                let Some(term) = fleet.leads(name) else {
                    progress.remove(name);
                    let _ = reloader.controls.fence(name, None);
                    continue;
                };
                if progress.get(name).is_none_or(|p| p.term != term) {
                    // A new term (or the first look): take over from the store's state and
                    // write the term into it, so a previous holder can no longer write. Not
                    // acting until that is done (the next look tries again).
                    progress.remove(name);
                    reloader.controls.reread_from_source(name);
                    if !reloader.controls.fence(name, Some(term)) {
                        continue;
                    }
                }
                Some((term, fleet.pooled(name, route_evidence)))
            }
            None => None,
        };
        let term = pooled.as_ref().map_or(0, |(term, _)| *term);
        let judged: &RouteEvidence = pooled.as_ref().map_or(route_evidence, |(_, e)| e);
        if reloader.controls.is_paused(name) {
            continue;
        }
        let fresh = || {
            // A candidate already on its way (before a restart) resumes its step and dwell.
            let (mut step, mut started) = reloader.controls.step(name, candidate).unwrap_or((0, SystemTime::now()));
            // A step at 100% judges against the champion's record of the rollout so far, which
            // a new process does not have: resume one step back, where the champion serves.
            let last = policy.steps.len() - 1;
            if step > 0 && policy.steps[step.min(last)] == 100 && judged.lifetime.champion.snapshot().requests == 0 {
                step -= 1;
                started = SystemTime::now();
            }
            let age = SystemTime::now().duration_since(started).unwrap_or_default();
            Progress {
                term,
                candidate,
                step: step.min(policy.steps.len() - 1),
                step_started: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
                evidence: Arc::clone(route_evidence),
                quality: None,
            }
        };
        let state = progress.entry(name.clone()).or_insert_with(fresh);
        if state.candidate != candidate {
            *state = fresh();
        }
        let wanted = policy.steps[state.step.min(policy.steps.len() - 1)];
        if weight != wanted {
            set_weight(reloader, name, (candidate, state.step), weight, wanted, "step weight");
            continue;
        }
        if !Arc::ptr_eq(&state.evidence, route_evidence) {
            state.evidence = Arc::clone(route_evidence);
            state.quality = None;
        }
        // A regressor's scores have no threshold: no agreement at it and no AUC; health decides.
        let classifier = served.versions.get(&served.route.champion).is_none_or(|mv| mv.score.is_classifier());
        let mut evidence = step_evidence(judged, candidate, policy, &mut state.quality);
        if !classifier {
            (evidence.paired, evidence.quality) = (None, None);
        }
        decide(reloader, name, served.route.champion, policy, state, &evidence);
    }
}

/// The step's evidence as the verdict reads it; the quality comparison is refreshed when the
/// candidate's labelled rows grew by a quarter (and at least 20) since the cached one.
fn step_evidence(
    route: &RouteEvidence,
    candidate: u64,
    policy: &RolloutPolicy,
    cached: &mut Option<QualityComparison>,
) -> Evidence {
    let step = &route.step;
    // A step at 100% sends the champion nothing: its baseline is the champion's record over the
    // whole rollout instead.
    let baseline = if route.weight == Some(100) { &*route.lifetime } else { step };
    let paired = (route.versions.2 == Some(candidate)).then(|| step.shadow.snapshot()).filter(|p| p.pairs > 0);
    let labelled = step.canary_labelled.len();
    let stale = cached.as_ref().is_none_or(|q| labelled >= (q.candidate_rows + 20).max(q.candidate_rows * 5 / 4));
    let flowing = labelled > 0 || !baseline.champion_labelled.is_empty();
    if stale && (flowing || policy.thresholds.require_labelled) {
        *cached =
            Some(compare(&step.canary_labelled, &baseline.champion_labelled, policy.thresholds.quality_confidence));
    }
    Evidence {
        primary: baseline.champion.snapshot(),
        candidate: step.canary.snapshot(),
        paired,
        quality: cached.clone(),
        historical_primary: route.weight == Some(100),
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
    let (verdict, mut reasons) = judge(&policy.thresholds, evidence);
    let evidence_json = serde_json::to_value(evidence).unwrap_or_default();
    let last_step = state.step + 1 >= policy.steps.len();
    let decision = |reason: &str| Decision {
        model: name,
        champion,
        candidate: state.candidate,
        actor: "controller",
        credential: None,
        reason: reason.to_owned(),
        evidence: evidence_json.clone(),
    };
    let dwell = Duration::from_millis(policy.min_dwell_ms);
    let dwelt = state.step_started.elapsed() >= dwell;
    match verdict {
        // Before the dwell is over only errors roll back at once: a p99 or an interval from
        // the first second of a step (a swap, a busy neighbour) is not the candidate's.
        Verdict::RollBack if !dwelt && !errors_failed(policy, evidence) => {}
        Verdict::RollBack => settle(roll_back(reloader, decision(&reasons.join("; ")))),
        Verdict::Hold => {}
        Verdict::AwaitLabels => {
            let waited = state.step_started.elapsed().saturating_sub(dwell);
            let limit = Duration::from_millis(policy.thresholds.max_label_wait_ms);
            if !dwelt || waited < limit {
                return;
            }
            let why = format!(
                "labels did not settle quality within max_label_wait_ms = {}",
                policy.thresholds.max_label_wait_ms
            );
            if last_step && policy.thresholds.require_labelled {
                reasons.insert(0, format!("{why} and require_labelled is set"));
                settle(roll_back(reloader, decision(&reasons.join("; "))));
            } else if differs(&policy.thresholds, evidence) {
                reasons.insert(0, format!("{why} and the shadow disagrees beyond max_disagreement"));
                settle(roll_back(reloader, decision(&reasons.join("; "))));
            } else {
                reasons.insert(0, format!("{why}; judged on health"));
                step_passed(reloader, name, champion, policy, state, (reasons, evidence_json));
            }
        }
        Verdict::Promote => {
            if !dwelt {
                return;
            }
            step_passed(reloader, name, champion, policy, state, (reasons, evidence_json));
        }
    }
}

/// Whether the candidate's error rate alone fails the policy.
fn errors_failed(policy: &RolloutPolicy, evidence: &Evidence) -> bool {
    evidence.candidate.error_rate - evidence.primary.error_rate > policy.thresholds.max_error_rate_increase
}

/// The step passed: advance to the next weight, or promote after the last (once an approver
/// said go, where the policy wants one).
fn step_passed(
    reloader: &Reloader,
    name: &str,
    champion: u64,
    policy: &RolloutPolicy,
    state: &mut Progress,
    (mut reasons, mut evidence): (Vec<String>, serde_json::Value),
) {
    let next = match policy.steps.get(state.step + 1) {
        Some(to) => format!("canary weight {}% -> {to}%", policy.steps[state.step]),
        None => format!("promoting version {}", state.candidate),
    };
    let mut approver = None;
    if policy.require_approval.before_leaving(state.step, policy.steps.len()) {
        let Some(approval) = reloader.controls.approval(name, state.candidate, state.step) else {
            hold_for_approval(reloader, name, (champion, state), &next, (&reasons, &evidence));
            return;
        };
        reasons.insert(0, format!("approved by {} at {}", approval.credential, approval.time));
        if let Some(object) = evidence.as_object_mut() {
            object.insert("approval".into(), serde_json::to_value(&approval).unwrap_or_default());
        }
        approver = Some(approval.credential);
    }
    if state.step + 1 < policy.steps.len() {
        let lock = reloader.decision_lock(name);
        let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
        if !still_canary(reloader, name, state.candidate) {
            return;
        }
        let (from, to) = (policy.steps[state.step], policy.steps[state.step + 1]);
        state.step += 1;
        state.step_started = Instant::now();
        state.quality = None;
        let reason = format!("step passed: canary weight {from}% -> {to}%; {}", reasons.join("; "));
        let passed =
            serde_json::json!({"step": state.step - 1, "weight": from, "reason": reason, "evidence": evidence});
        reloader.controls.advance(name, state.candidate, (state.step, to), passed);
        let mut entry = AuditEntry::now(name, "controller", "advance");
        entry.credential = approver;
        entry.from = Some(champion);
        entry.to = Some(state.candidate);
        entry.reason = reason;
        entry.evidence = evidence;
        reloader.audit.append(&entry);
        reloader.reload();
    } else {
        let d = Decision {
            model: name,
            champion,
            candidate: state.candidate,
            actor: "controller",
            credential: approver,
            reason: reasons.join("; "),
            evidence,
        };
        settle(promote(reloader, d));
    }
}

/// The evidence passed but the policy wants an approver first: the controller holds the step
/// (its weight keeps serving, and a failing threshold still rolls back), records what it holds
/// on in the rollout state and, the first time, in the audit log.
fn hold_for_approval(
    reloader: &Reloader,
    name: &str,
    (champion, state): (u64, &Progress),
    next: &str,
    (reasons, evidence): (&[String], &serde_json::Value),
) {
    if reloader.controls.awaiting_approval(name, state.candidate).is_some() {
        return;
    }
    let lock = reloader.decision_lock(name);
    let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
    if !still_canary(reloader, name, state.candidate) {
        return;
    }
    let reason = format!("step {} passed on evidence; waiting for an approver before {next}", state.step);
    let held = serde_json::json!({
        "since": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        "step": state.step,
        "next": next,
        "reasons": reasons,
        "evidence": evidence,
    });
    if !reloader.controls.await_approval(name, state.candidate, state.step, held) {
        return;
    }
    let mut entry = AuditEntry::now(name, "controller", "await_approval");
    entry.from = Some(champion);
    entry.to = Some(state.candidate);
    entry.reason = format!("{reason}; {}", reasons.join("; "));
    entry.evidence = evidence.clone();
    reloader.audit.append(&entry);
}

/// A refused decision is already in the audit log; the next tick looks at the new state.
fn settle(result: Result<(), super::decision::Refused>) {
    if let Err(refused) = result {
        tracing::warn!(%refused, "rollout decision not applied");
    }
}

fn set_weight(reloader: &Reloader, name: &str, (candidate, step): (u64, usize), from: u32, to: u32, why: &str) {
    let lock = reloader.decision_lock(name);
    let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
    if !still_canary(reloader, name, candidate) {
        return;
    }
    reloader.controls.set_step(name, candidate, step, to);
    let mut entry = AuditEntry::now(name, "controller", "set_weight");
    entry.to = Some(candidate);
    entry.reason = format!("{why}: canary weight {from}% -> {to}%");
    reloader.audit.append(&entry);
    reloader.reload();
}
