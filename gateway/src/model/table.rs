//! The routing table: every served model version, fully built and immutable. The server holds
//! it in an `ArcSwap` and loads it once per request; a reload builds a new table and stores it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ort::environment::Environment;

use super::error::ModelError;
use super::{ModelVersion, load_version, repository};
use crate::batch::BatchSettings;
use crate::metrics::LOAD_FAILURES;

/// A model and its loaded versions (ascending).
pub struct ServedModel {
    pub name: String,
    pub versions: BTreeMap<u64, Arc<ModelVersion>>,
}

impl ServedModel {
    /// The version served when a request names none: the highest ready one.
    pub fn default_version(&self) -> Option<&Arc<ModelVersion>> {
        self.versions.values().next_back()
    }
}

/// A request for a model or version that is not served (404).
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("unknown model '{0}'")]
    ModelNotFound(String),
    #[error("model '{model}' has no ready version '{version}' (ready: {ready})")]
    VersionNotFound { model: String, version: String, ready: String },
}

/// Everything the gateway serves.
#[derive(Default)]
pub struct RoutingTable {
    pub models: BTreeMap<String, ServedModel>,
}

impl RoutingTable {
    /// Looks up a model and, if given, a version ("" or absent means the default).
    pub fn resolve(&self, model: &str, version: Option<&str>) -> Result<&Arc<ModelVersion>, RouteError> {
        let served = self.models.get(model).ok_or_else(|| RouteError::ModelNotFound(model.to_owned()))?;
        let not_found = || RouteError::VersionNotFound {
            model: model.to_owned(),
            version: version.unwrap_or_default().to_owned(),
            ready: served.versions.keys().map(u64::to_string).collect::<Vec<_>>().join(", "),
        };
        match version {
            None | Some("") => served.default_version().ok_or_else(not_found),
            Some(v) => v.parse::<u64>().ok().and_then(|v| served.versions.get(&v)).ok_or_else(not_found),
        }
    }

    /// Loads every version of every model under `root`. A version that fails to load is logged,
    /// counted and left out; the model's other versions still serve.
    pub fn load(
        env: &Environment,
        root: &Path,
        settings_for: impl Fn(&str) -> BatchSettings,
    ) -> Result<Self, ModelError> {
        let mut table = RoutingTable::default();
        for dir in repository::scan(root)? {
            let settings = settings_for(&dir.name);
            let mut versions = BTreeMap::new();
            for (version, path) in &dir.versions {
                match load_version(env, &dir.name, *version, path, settings.clone()) {
                    Ok(loaded) => {
                        versions.insert(*version, Arc::new(loaded));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "model version not served");
                        metrics::counter!(LOAD_FAILURES, "model" => dir.name.clone()).increment(1);
                    }
                }
            }
            if !versions.is_empty() {
                table.models.insert(dir.name.clone(), ServedModel { name: dir.name, versions });
            }
        }
        Ok(table)
    }
}
