//! Finding and loading ONNX Runtime's shared library (`ort` with `load-dynamic`).
//!
//! `ort`'s own lookup `dlopen`s `libonnxruntime.so` and panics when it is missing; going through
//! [`ort::init_from`] with a path we resolved turns a missing or too-old library into an error
//! that says how to fix it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

use crate::error::ModelError;

/// Where `scripts/setup-ort.sh` puts the library, relative to the project root.
pub const DEFAULT_DIR: &str = ".ort/lib";
const FIX: &str = "run scripts/setup-ort.sh (it takes the library from the PyPI onnxruntime wheel, >= 1.31), \
                   or point --ort-library / FLYWHEEL_ORT_LIBRARY / ort_library at libonnxruntime.so.<version>";

static ENVIRONMENT: OnceLock<(PathBuf, Environment)> = OnceLock::new();

/// Loads ONNX Runtime once per process and returns its environment (later calls reuse it).
/// `explicit` is the library file or a folder holding it; `None` searches the default folders.
pub fn init(explicit: Option<&Path>) -> Result<Environment, ModelError> {
    if let Some((_, env)) = ENVIRONMENT.get() {
        return Ok(env.clone());
    }
    let path = resolve(explicit)?;
    let builder = ort::init_from(&path).map_err(|e| ModelError::Runtime(format!("{e}; {FIX}")))?;
    let env = builder.with_name("flywheel").build().map_err(|e| {
        ModelError::Runtime(format!("creating the ONNX Runtime environment from {}: {e}", path.display()))
    })?;
    tracing::info!(library = %path.display(), "ONNX Runtime loaded");
    Ok(ENVIRONMENT.get_or_init(|| (path, env)).1.clone())
}

/// The library file that [`init`] loaded, if any.
pub fn loaded_library() -> Option<&'static Path> {
    ENVIRONMENT.get().map(|(p, _)| p.as_path())
}

/// Resolves the library file: the explicit file or folder, else `FLYWHEEL_ORT_LIBRARY` (the
/// gateway's flag reads it too; the trainer and tools rely on this), else `.ort/lib` under the current
/// folder and under each folder above the executable (so `target/release/gateway` finds the
/// project's copy).
pub fn resolve(explicit: Option<&Path>) -> Result<PathBuf, ModelError> {
    let from_env = std::env::var_os("FLYWHEEL_ORT_LIBRARY").filter(|v| !v.is_empty()).map(PathBuf::from);
    let candidates: Vec<PathBuf> = match explicit.map(Path::to_path_buf).or(from_env) {
        Some(p) => vec![p],
        None => default_dirs(),
    };
    for candidate in &candidates {
        if candidate.is_file() {
            return Ok(candidate.clone());
        }
        if let Some(lib) = library_in(candidate) {
            return Ok(lib);
        }
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(ModelError::Runtime(format!("ONNX Runtime library not found (looked in {}); {FIX}", looked.join(", "))))
}

fn default_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        dirs.push(cwd.join(DEFAULT_DIR));
    }
    if let Ok(exe) = std::env::current_exe() {
        dirs.extend(exe.ancestors().skip(1).map(|a| a.join(DEFAULT_DIR)));
    }
    dirs.dedup();
    dirs
}

/// The newest `libonnxruntime.so.<version>` (or a plain `libonnxruntime.so`) in `dir`.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == "libonnxruntime.so" || n.starts_with("libonnxruntime.so.1"))
        })
        .collect();
    found.sort();
    found.pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_says_how_to_fix_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("scripts/setup-ort.sh"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
    }

    #[test]
    fn finds_versioned_library_in_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("libonnxruntime.so.1.32.0"), b"").unwrap();
        std::fs::write(dir.path().join("README"), b"").unwrap();
        let found = resolve(Some(dir.path())).unwrap();
        assert!(found.ends_with("libonnxruntime.so.1.32.0"));
    }
}
