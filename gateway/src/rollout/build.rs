//! Building a routing table from the config and the registry, reusing what the current table
//! already serves. Every check happens here, off the hot path: the model file's SHA-256 against
//! its manifest, loading, warm-up, and signature compatibility with what clients call today.
//! A version that fails a check is rejected with the reason; serving is untouched.

use std::collections::BTreeMap;
use std::sync::Arc;

use flywheel_registry::{FileStamp, Registry, VersionEntry};
use ort::environment::Environment;
use serde::Serialize;

use crate::config::{Config, VersionPolicy};
use crate::metrics::LOAD_FAILURES;
use crate::model::score::ScoreSpec;
use crate::model::table::{Budget, Route, RouteEvidence, ServedModel, ShadowRoute};
use crate::model::{ModelFile, ModelVersion, RoutingTable, load_version};

/// A version that was not put into service, and why.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Rejection {
    pub model: String,
    pub version: Option<u64>,
    pub reason: String,
}

/// What a build did.
#[derive(Debug, Default, Serialize)]
pub struct BuildReport {
    /// Versions loaded fresh (model, version).
    pub loaded: Vec<(String, u64)>,
    /// Versions carried over from the current table.
    pub reused: usize,
    pub rejected: Vec<Rejection>,
}

/// Everything a build reads.
pub struct BuildInput<'a> {
    pub env: &'a Environment,
    pub config: &'a Config,
    pub registry: &'a Registry,
    pub current: &'a RoutingTable,
    /// The rollout controller's live decisions (canary weights, rolled-back versions).
    pub controls: &'a super::controls::Controls,
}

/// Builds the table the config and registry ask for. Models whose plan fails keep their
/// current entry (if any), so a deleted folder or a bad alias never stops serving.
pub fn build(input: &BuildInput<'_>) -> (RoutingTable, BuildReport) {
    let mut report = BuildReport::default();
    let mut table = RoutingTable::default();
    let names = match input.registry.models() {
        Ok(names) => names,
        Err(e) => {
            report.rejected.push(Rejection { model: "*".into(), version: None, reason: e.to_string() });
            Vec::new()
        }
    };
    for name in &names {
        match build_model(input, name, &mut report) {
            Ok(served) => {
                table.models.insert(name.clone(), served);
            }
            Err(reason) => {
                report.rejected.push(Rejection { model: name.clone(), version: None, reason });
                keep_current(input.current, name, &mut table);
            }
        }
    }
    let vanished: Vec<String> =
        input.current.models.keys().filter(|n| !table.models.contains_key(*n)).cloned().collect();
    for name in &vanished {
        report.rejected.push(Rejection {
            model: name.clone(),
            version: None,
            reason: "model folder is gone from the registry; still serving its loaded versions".into(),
        });
        keep_current(input.current, name, &mut table);
    }
    for name in input.config.models.keys().filter(|n| !table.models.contains_key(*n)) {
        report.rejected.push(Rejection {
            model: name.clone(),
            version: None,
            reason: "configured but not in the registry".into(),
        });
    }
    (table, report)
}

fn keep_current(current: &RoutingTable, name: &str, table: &mut RoutingTable) {
    if let Some(old) = current.models.get(name) {
        let kept = ServedModel { name: old.name.clone(), versions: old.versions.clone(), route: old.route.clone() };
        table.models.insert(name.to_owned(), kept);
    }
}

/// The versions one model's rollout wants: (champion, canary, shadow) references resolved.
struct Wanted {
    champion: u64,
    canary: Option<(u64, u32)>,
    shadow: Option<(u64, f64, usize)>,
    all: Vec<u64>,
}

fn wanted(input: &BuildInput<'_>, name: &str, notes: &mut Vec<String>) -> Result<Wanted, String> {
    let registry = input.registry;
    let (entries, _) = registry.versions(name).map_err(|e| e.to_string())?;
    let Some(rollout) = input.config.rollout_for(name) else {
        let all: Vec<u64> = match input.config.version_policy_for(name) {
            VersionPolicy::Specific(wanted) => {
                let present: Vec<u64> = entries.iter().map(|e| e.version).filter(|v| wanted.contains(v)).collect();
                for missing in wanted.iter().filter(|v| !present.contains(v)) {
                    notes.push(format!("version_policy names version {missing}, which the registry does not have"));
                }
                present
            }
            _ => entries.iter().map(|e| e.version).collect(),
        };
        let champion = *all.last().ok_or("no versions the version policy allows")?;
        return Ok(Wanted { champion, canary: None, shadow: None, all });
    };
    let resolve = |key: &str, reference: &str| {
        registry.resolve(name, reference).map_err(|e| format!("rollout.{key} = {reference:?}: {e}"))
    };
    let champion = resolve("champion", &rollout.champion)?;
    // A canary or shadow that does not resolve (e.g. its alias was removed by a promotion or a
    // rollback) is simply absent; the champion keeps serving.
    let mut optional = |key: &str, reference: &str| match resolve(key, reference) {
        Ok(v) if !input.controls.is_rejected(name, v) => Some(v),
        Ok(v) => {
            notes.push(format!("rollout.{key}: version {v} was rolled back; not routed"));
            None
        }
        Err(e) => {
            notes.push(e);
            None
        }
    };
    let canary = rollout.canary.as_ref().and_then(|c| {
        optional("canary.version", &c.version).map(|v| (v, input.controls.weight(name, v).unwrap_or(c.weight)))
    });
    let shadow = rollout
        .shadow
        .as_ref()
        .and_then(|s| optional("shadow.version", &s.version).map(|v| (v, s.fraction, s.max_in_flight)));
    let mut all = vec![champion];
    all.extend(canary.map(|c| c.0));
    all.extend(shadow.map(|s| s.0));
    all.sort();
    all.dedup();
    Ok(Wanted { champion, canary, shadow, all })
}

fn build_model(input: &BuildInput<'_>, name: &str, report: &mut BuildReport) -> Result<ServedModel, String> {
    let mut notes = Vec::new();
    let wanted = wanted(input, name, &mut notes)?;
    report.rejected.extend(notes.into_iter().map(|reason| Rejection { model: name.to_owned(), version: None, reason }));
    let current = input.current.models.get(name);
    let settings = input.config.batch_settings_for(name);
    let mut versions: BTreeMap<u64, Arc<ModelVersion>> = BTreeMap::new();
    // The champion first: it is the signature reference when nothing serves yet. Without a
    // rollout, newest first, stopping once `latest = N` versions loaded.
    let mut order = wanted.all.clone();
    order.sort_by_key(|v| (*v != wanted.champion, std::cmp::Reverse(*v)));
    let keep = match (input.config.rollout_for(name), input.config.version_policy_for(name)) {
        (None, VersionPolicy::Latest(n)) => *n,
        _ => usize::MAX,
    };
    let mut reference = current.and_then(|c| c.default_version()).map(|mv| mv.signature.clone());
    for version in order {
        if versions.len() >= keep {
            break;
        }
        match obtain(input, name, version, &settings, current, reference.as_ref()) {
            Ok((mv, reused)) => {
                if reused {
                    report.reused += 1;
                } else {
                    report.loaded.push((name.to_owned(), version));
                }
                if reference.is_none() {
                    reference = Some(mv.signature.clone());
                }
                versions.insert(version, mv);
            }
            Err(reason) => {
                tracing::error!(model = name, version, %reason, "version rejected");
                metrics::counter!(LOAD_FAILURES, "model" => name.to_owned()).increment(1);
                report.rejected.push(Rejection { model: name.to_owned(), version: Some(version), reason });
            }
        }
    }
    let champion = if versions.contains_key(&wanted.champion) {
        wanted.champion
    } else if input.config.rollout_for(name).is_none() {
        // Without a rollout the highest version that loaded serves.
        *versions.keys().next_back().ok_or("no version of this model could be loaded")?
    } else {
        return Err(format!("champion version {} could not be loaded", wanted.champion));
    };
    let routing_key_header = input
        .config
        .rollout_for(name)
        .map_or_else(|| "x-routing-key".to_owned(), |r| r.routing_key_header.to_ascii_lowercase());
    let canary = wanted.canary.filter(|(v, _)| versions.contains_key(v));
    let shadow = wanted
        .shadow
        .filter(|(v, _, _)| versions.contains_key(v))
        .map(|(version, fraction, max)| ShadowRoute { version, fraction, budget: Budget::new(max) });
    let key = (champion, canary.map(|c| c.0), shadow.as_ref().map(|s| s.version));
    // Same versions and weight: the same step goes on. Same versions, new weight: a new step
    // (judged on its own evidence), the lifetime record carried over.
    let weight = canary.map(|c| c.1);
    let evidence = match current.map(|c| &c.route.evidence).filter(|e| e.versions == key) {
        Some(e) if e.weight == weight => Arc::clone(e),
        Some(e) => e.next_step(weight),
        None => RouteEvidence::new(key, weight, versions.get(&champion).map_or(0.5, |mv| mv.score.threshold)),
    };
    let route = Route { champion, canary, shadow, routing_key_header, evidence };
    Ok(ServedModel { name: name.to_owned(), versions, route })
}

/// Reuses the current table's version when it is the same file with the same settings;
/// otherwise verifies and loads it. Returns the version and whether it was reused.
fn obtain(
    input: &BuildInput<'_>,
    name: &str,
    version: u64,
    settings: &crate::batch::BatchSettings,
    current: Option<&ServedModel>,
    reference: Option<&crate::model::Signature>,
) -> Result<(Arc<ModelVersion>, bool), String> {
    let entry: VersionEntry = input.registry.version(name, version).map_err(|e| e.to_string())?;
    let score_config = input.config.score_for(name);
    let at = format!("models.{name}.score");
    // Reuse without re-reading the file while its stamp, its manifest digest, the settings and
    // the score are unchanged (published versions are immutable; this catches hand edits), and
    // while its signature still says what it said at load (keys added since, a signature added
    // or altered since: checked again; two small reads).
    let existing = current.and_then(|c| c.versions.get(&version));
    let still_signed = |existing: &ModelVersion| match input.config.trust.is_empty() {
        true => existing.signed_by.is_none(),
        false => {
            input.registry.check_signature(&entry, &input.config.trust, Some(&existing.sha256)).ok()
                == Some(existing.signed_by.clone())
        }
    };
    if let Some(existing) = existing
        && existing.stamp.is_some()
        && existing.stamp == FileStamp::of(&entry.model_file())
        && entry.manifest.as_ref().is_none_or(|m| m.as_ref().is_ok_and(|m| m.sha256 == existing.sha256))
        && &existing.settings == settings
        && still_signed(existing)
        && input.config.admits_signer(existing.signed_by.as_deref()).is_ok()
        && ScoreSpec::resolve(score_config, &existing.signature.outputs, &at).as_ref() == Ok(&existing.score)
    {
        return Ok((Arc::clone(existing), true));
    }
    let path = entry.model_file();
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if size > input.config.max_model_file_bytes {
        return Err(format!(
            "{} is {size} bytes, over max_model_file_bytes ({}); not read",
            path.display(),
            input.config.max_model_file_bytes
        ));
    }
    let verified = input.registry.verify(&entry).map_err(|e| e.to_string())?;
    // Checked before the file reaches ONNX Runtime: an unsigned or altered file is never parsed.
    let signed_by = match input.config.trust.is_empty() {
        true => None,
        false => input.registry.check_signature(&entry, &input.config.trust, Some(&verified.sha256))?,
    };
    input.config.admits_signer(signed_by.as_deref()).map_err(|e| format!("{}: {e}", entry.dir.display()))?;
    let mut loaded =
        load_version(input.env, name, version, ModelFile { path: &path, verified: &verified }, settings.clone())
            .map_err(|e| e.to_string())?;
    loaded.signed_by = signed_by;
    loaded.score = ScoreSpec::resolve(score_config, &loaded.signature.outputs, &at)?;
    if let Some(reference) = reference {
        loaded.signature.compatible_with(reference).map_err(|e| format!("signature would break clients: {e}"))?;
    }
    Ok((Arc::new(loaded), false))
}
