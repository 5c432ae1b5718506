//! The loop contract between the trainer and the gateway: a candidate the trainer registers is
//! routed, judged and then consumed (promoted or rolled back) only when the gateway's config
//! has a rollout for the model that names the trainer's aliases and a policy. Without one, a
//! candidate would serve at once or never be consumed (and every later cycle would wait), so
//! `trainer watch` refuses to start, naming the key to set.

use std::path::Path;

use flywheel_gateway::config::{Config, Overrides};

use crate::config::TrainerConfig;

/// Checks the gateway config at `path` against the trainer's model and aliases.
pub fn check(trainer: &TrainerConfig, path: &Path) -> Result<(), String> {
    let gateway = Config::load_with(Some(path), &Overrides::default())?;
    let model = trainer.model.as_str();
    let at = |key: &str| format!("{}: models.{model}.rollout{key}", path.display());
    let rollout = gateway.rollout_for(model).ok_or_else(|| {
        format!(
            "{} is missing: the trainer registers candidates as '{}', which only a rollout with a policy routes, judges and consumes",
            at(""),
            trainer.candidate_alias
        )
    })?;
    if rollout.champion != trainer.champion_alias {
        return Err(format!(
            "{} = {:?}, but the trainer's champion_alias is {:?}: promotions would move another alias than the trainer gates against",
            at(".champion"),
            rollout.champion,
            trainer.champion_alias
        ));
    }
    // The controller walks (and consumes) the canary; a shadow alone is compared, never decided.
    if rollout.canary.as_ref().is_none_or(|c| c.version != trainer.candidate_alias) {
        return Err(format!(
            "{} must be {:?} (the trainer's candidate_alias): otherwise its candidates are never walked or consumed",
            at(".canary.version"),
            trainer.candidate_alias
        ));
    }
    if rollout.policy.is_none() {
        return Err(format!(
            "{} is missing: without it nothing promotes or rolls back '{}', and every later cycle waits for it",
            at(".policy"),
            trainer.candidate_alias
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_text(toml: &str) -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, toml).unwrap();
        let trainer = TrainerConfig { model: "fraud".into(), ..TrainerConfig::default() };
        check(&trainer, &path)
    }

    #[test]
    fn refuses_a_gateway_that_would_not_consume_the_candidate_and_names_the_key() {
        let rollout =
            "[models.fraud.rollout]\nchampion = \"champion\"\ncanary = { version = \"challenger\", weight = 10 }\n";
        for (toml, key) in [
            ("", "models.fraud.rollout is missing"),
            (&rollout.replace("\"champion\"\n", "\"latest\"\n") as &str, "models.fraud.rollout.champion = \"latest\""),
            (&rollout.replace("challenger", "other"), "models.fraud.rollout.canary.version must be \"challenger\""),
            (rollout, "models.fraud.rollout.policy is missing"),
        ] {
            let err = check_text(toml).unwrap_err();
            assert!(err.contains(key) && err.contains("gateway.toml"), "{key}: {err}");
        }
        check_text(&format!("{rollout}[models.fraud.rollout.policy]\n")).unwrap();
        check_text(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/demo.toml")).unwrap())
            .expect("the demo keeps the contract");
    }
}
