//! The on-disk model repository: `<root>/<model>/<version>/model.onnx`, versions numbered.

use std::path::{Path, PathBuf};

use super::error::ModelError;

/// File name of a version's model inside its folder.
pub const MODEL_FILE: &str = "model.onnx";

/// One model's versions found on disk, ascending.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDir {
    pub name: String,
    pub versions: Vec<(u64, PathBuf)>,
}

/// Lists the models under `root`. Folders that are not models (no numbered version with a
/// `model.onnx`) are skipped with a log line; an unreadable root is an error.
pub fn scan(root: &Path) -> Result<Vec<ModelDir>, ModelError> {
    let err = |reason: String| ModelError::Repository { path: root.display().to_string(), reason };
    let entries = std::fs::read_dir(root).map_err(|e| err(e.to_string()))?;
    let mut models = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| err(e.to_string()))?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
        if !path.is_dir() || name.starts_with('.') {
            continue;
        }
        if !valid_model_name(&name) {
            tracing::warn!(folder = %path.display(), "skipped: model names use letters, digits, '_', '-' and '.'");
            continue;
        }
        let versions = versions_of(&path);
        if versions.is_empty() {
            tracing::warn!(folder = %path.display(), "skipped: no <version>/{MODEL_FILE} inside");
            continue;
        }
        models.push(ModelDir { name, versions });
    }
    models.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(models)
}

fn versions_of(model_dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(model_dir) else { return Vec::new() };
    let mut versions: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u64>().ok()?;
            let file = e.path().join(MODEL_FILE);
            file.is_file().then_some((version, file))
        })
        .collect();
    versions.sort_by_key(|(v, _)| *v);
    versions
}

/// Model names appear in URLs and metric labels: keep them plain.
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_numbered_versions_and_skips_the_rest() {
        let root = tempfile::tempdir().unwrap();
        for dir in ["m/1", "m/10", "m/2", "m/draft", "m/3", "empty", ".hidden/1"] {
            std::fs::create_dir_all(root.path().join(dir)).unwrap();
        }
        for file in ["m/1", "m/10", "m/2", "m/draft", ".hidden/1"] {
            std::fs::write(root.path().join(file).join(MODEL_FILE), b"x").unwrap();
        }
        let models = scan(root.path()).unwrap();
        assert_eq!(models.len(), 1);
        let versions: Vec<u64> = models[0].versions.iter().map(|(v, _)| *v).collect();
        assert_eq!(versions, vec![1, 2, 10]);
    }

    #[test]
    fn missing_root_is_an_error_naming_it() {
        let err = scan(Path::new("/nonexistent/flywheel")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/flywheel"), "{err}");
    }
}
