//! Errors from loading ONNX Runtime and models, and from checking requests against a model's
//! signature.

/// A model (or the runtime) that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{0}")]
    Runtime(String),
    #[error("model repository {path}: {reason}")]
    Repository { path: String, reason: String },
    #[error("loading {model} version {version} from {path}: {reason}")]
    Load { model: String, version: u64, path: String, reason: String },
}

/// A request that does not fit the model's signature (400).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);
