//! Promotions and rollbacks, by the controller or an operator. Each takes the model's decision
//! lock, checks that the route is still the one the decision was about, and moves the aliases
//! with one compare-and-set: a decision that lost a race changes nothing and says so in the
//! audit log (and to the operator, as a conflict).

use flywheel_registry::{AliasChange, RegistryError, valid_alias};

use super::audit::AuditEntry;
use super::reload::Reloader;

/// A promotion or rollback of one model's candidate, and why.
pub struct Decision<'a> {
    pub model: &'a str,
    pub champion: u64,
    pub candidate: u64,
    /// `controller` or `admin`.
    pub actor: &'static str,
    /// The operator's credential, for an `admin` decision.
    pub credential: Option<String>,
    pub reason: String,
    pub evidence: serde_json::Value,
}

/// Why a decision was not applied.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The state moved under the decision (another decision, a trainer, an operator).
    #[error("{0}")]
    Conflict(String),
    /// The decision cannot be applied as configured or the registry failed.
    #[error("{0}")]
    Failed(String),
}

/// Makes `candidate` the champion: moves the config's champion alias to it and consumes the
/// canary alias, in one compare-and-set, then reloads.
pub fn promote(reloader: &Reloader, d: Decision<'_>) -> Result<(), Refused> {
    let lock = reloader.decision_lock(d.model);
    let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
    let mut entry = entry(&d, "promote", (d.champion, d.candidate));
    let result = apply_promotion(reloader, &d);
    match &result {
        Ok(champion_alias) => {
            reloader.controls.clear_weight(d.model, d.candidate);
            entry.reason = format!("{champion_alias} -> version {}: {}", d.candidate, d.reason);
        }
        Err(refused) => {
            entry.action = if matches!(refused, Refused::Conflict(_)) { "promote_conflict" } else { "promote_failed" };
            entry.reason = refused.to_string();
        }
    }
    reloader.audit.append(&entry);
    if result.is_ok() {
        reloader.reload();
    }
    result.map(|_| ())
}

fn apply_promotion(reloader: &Reloader, d: &Decision<'_>) -> Result<String, Refused> {
    still_current(reloader, d)?;
    if reloader.controls.is_rejected(d.model, d.candidate) {
        return Err(Refused::Conflict(format!("version {} was rolled back; it is not promoted", d.candidate)));
    }
    let config = reloader.config.load_full();
    let rollout = config.rollout_for(d.model).ok_or_else(|| Refused::Failed("the model has no rollout".into()))?;
    if !valid_alias(&rollout.champion) {
        return Err(Refused::Failed(format!(
            "champion is pinned to {:?} in the config; point it at an alias to promote",
            rollout.champion
        )));
    }
    let registry = reloader.registry().ok_or_else(|| Refused::Failed("no registry".into()))?;
    let mut changes = vec![AliasChange::swap(&rollout.champion, Some(d.champion), Some(d.candidate))];
    changes.extend(canary_alias(reloader, d.model).map(|alias| AliasChange::swap(&alias, Some(d.candidate), None)));
    registry.change_aliases(d.model, &changes).map_err(refused)?;
    Ok(rollout.champion.clone())
}

/// Takes `candidate` out of routing for good (this process never routes it again) and consumes
/// the canary alias with a compare-and-set, then reloads.
pub fn roll_back(reloader: &Reloader, d: Decision<'_>) -> Result<(), Refused> {
    let lock = reloader.decision_lock(d.model);
    let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
    let mut entry = entry(&d, "roll_back", (d.candidate, d.champion));
    // A decision about a route that moved on (promoted meanwhile, say) changes nothing.
    if let Err(refused) = still_current(reloader, &d) {
        entry.action = "roll_back_conflict";
        entry.reason = format!("{refused} (rollback of version {} for: {})", d.candidate, d.reason);
        reloader.audit.append(&entry);
        return Err(refused);
    }
    // The candidate leaves routing whatever becomes of its alias: a registry that cannot be
    // written must not keep a failing canary serving.
    reloader.controls.reject(d.model, d.candidate);
    entry.reason = d.reason.clone();
    if let (Some(alias), Some(registry)) = (canary_alias(reloader, d.model), reloader.registry())
        && let Err(e) = registry.change_aliases(d.model, &[AliasChange::swap(&alias, Some(d.candidate), None)])
    {
        entry.reason = format!("{}; alias '{alias}' left as it is: {e}", d.reason);
    }
    reloader.audit.append(&entry);
    reloader.reload();
    Ok(())
}

/// Whether `model` still routes `candidate` as its canary, not rolled back: a step change is
/// only made for the route it was decided about.
pub fn still_canary(reloader: &Reloader, model: &str, candidate: u64) -> bool {
    let table = reloader.table.load();
    let routed = table.models.get(model).and_then(|m| m.route.canary).map(|c| c.0);
    routed == Some(candidate) && !reloader.controls.is_rejected(model, candidate)
}

fn entry(d: &Decision<'_>, action: &'static str, (from, to): (u64, u64)) -> AuditEntry {
    let mut entry = AuditEntry::now(d.model, d.actor, action);
    entry.credential = d.credential.clone();
    entry.from = Some(from);
    entry.to = Some(to);
    entry.evidence = d.evidence.clone();
    entry
}

/// The decision is about the route being served now: same champion, same canary.
fn still_current(reloader: &Reloader, d: &Decision<'_>) -> Result<(), Refused> {
    let table = reloader.table.load();
    let route = table.models.get(d.model).map(|m| (m.route.champion, m.route.canary.map(|c| c.0)));
    if route == Some((d.champion, Some(d.candidate))) {
        return Ok(());
    }
    Err(Refused::Conflict(format!(
        "the route changed meanwhile: it now serves champion {} and canary {}, not {} and {}",
        route.map_or_else(|| "none".to_owned(), |r| r.0.to_string()),
        route.and_then(|r| r.1).map_or_else(|| "none".to_owned(), |v| v.to_string()),
        d.champion,
        d.candidate
    )))
}

/// The alias the config names the canary by, when it names one (not a version number).
fn canary_alias(reloader: &Reloader, model: &str) -> Option<String> {
    let config = reloader.config.load_full();
    let canary = config.rollout_for(model)?.canary.as_ref()?;
    valid_alias(&canary.version).then(|| canary.version.clone())
}

fn refused(e: RegistryError) -> Refused {
    match e {
        RegistryError::AliasConflict { .. } => Refused::Conflict(e.to_string()),
        other => Refused::Failed(other.to_string()),
    }
}
