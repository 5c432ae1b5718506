//! Compare-and-set on aliases: a change names what each alias is expected to point at, and is
//! applied whole (one atomic replace of `aliases.json` under the model's alias lock) only when
//! every expectation holds. The gateway's controller and admin API and the trainer move aliases
//! this way, so two of them racing can never produce a state neither chose.

use crate::store::{Registry, RegistryError, valid_alias};

/// One alias move: from `expected` (`None` = absent) to `new` (`None` = removed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AliasChange {
    pub alias: String,
    pub expected: Option<u64>,
    pub new: Option<u64>,
}

impl AliasChange {
    /// Moves `alias` from `expected` to `new`.
    pub fn swap(alias: &str, expected: Option<u64>, new: Option<u64>) -> Self {
        Self { alias: alias.to_owned(), expected, new }
    }

    /// Requires `alias` to be at `expected` without moving it.
    pub fn require(alias: &str, expected: Option<u64>) -> Self {
        Self::swap(alias, expected, expected)
    }
}

impl Registry {
    /// Applies every change, or none: the first alias found elsewhere than expected fails the
    /// whole call with [`RegistryError::AliasConflict`]. New targets must exist.
    pub fn change_aliases(&self, model: &str, changes: &[AliasChange]) -> Result<(), RegistryError> {
        for change in changes {
            if !valid_alias(&change.alias) {
                return Err(RegistryError::BadAlias(change.alias.clone()));
            }
            if let Some(version) = change.new.filter(|v| Some(*v) != change.expected) {
                self.require_version(model, version)?;
            }
        }
        self.update_aliases(model, |aliases| {
            for change in changes {
                let found = aliases.get(&change.alias).copied();
                if found != change.expected {
                    return Err(RegistryError::AliasConflict {
                        model: model.to_owned(),
                        alias: change.alias.clone(),
                        expected: change.expected,
                        found,
                    });
                }
            }
            for change in changes {
                match change.new {
                    Some(version) => aliases.insert(change.alias.clone(), version),
                    None => aliases.remove(&change.alias),
                };
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManifestDraft;

    #[test]
    fn a_change_applies_whole_or_not_at_all_and_names_the_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(dir.path());
        for _ in 0..3 {
            registry.publish("m", b"onnx", ManifestDraft::default()).unwrap();
        }
        registry.set_alias("m", "champion", 1).unwrap();
        registry.set_alias("m", "challenger", 2).unwrap();
        // A promotion: champion 1 -> 2 and the challenger consumed, in one write.
        let promote = [AliasChange::swap("champion", Some(1), Some(2)), AliasChange::swap("challenger", Some(2), None)];
        registry.change_aliases("m", &promote).unwrap();
        assert_eq!(registry.aliases("m").unwrap().into_iter().collect::<Vec<_>>(), [("champion".to_owned(), 2)]);
        // The same promotion again (a racing second decision) changes nothing and says why.
        let err = registry.change_aliases("m", &promote).unwrap_err();
        assert_eq!(
            err.to_string(),
            "alias 'champion' of model 'm' is version 2, expected version 1; nothing was changed"
        );
        // A second trainer: the challenger must be absent to be set.
        registry.change_aliases("m", &[AliasChange::swap("challenger", None, Some(3))]).unwrap();
        let err = registry.change_aliases("m", &[AliasChange::swap("challenger", None, Some(1))]).unwrap_err();
        assert!(matches!(err, RegistryError::AliasConflict { found: Some(3), expected: None, .. }), "{err}");
        // A failed requirement leaves the other moves undone.
        let guarded = [AliasChange::require("champion", Some(1)), AliasChange::swap("challenger", Some(3), None)];
        assert!(registry.change_aliases("m", &guarded).is_err());
        assert_eq!(registry.resolve("m", "challenger").unwrap(), 3);
        assert!(matches!(
            registry.change_aliases("m", &[AliasChange::swap("champion", Some(2), Some(9))]),
            Err(RegistryError::NoVersion { version: 9, .. })
        ));
    }
}
