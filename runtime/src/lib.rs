//! The ONNX Runtime layer the gateway, the trainer and the bench share: finding and loading the
//! shared library ([`library`]), opening sessions, reading a model's signature ([`signature`])
//! and the Open Inference Protocol's datatypes ([`datatype`]). Nothing here serves HTTP.
//!
//! Requests' tensors and their conversion to ONNX Runtime values stay with the gateway (its
//! tensors carry the protocol's JSON and binary forms).

pub mod datatype;
pub mod error;
pub mod library;
pub mod signature;

use ort::environment::Environment;
use ort::session::Session;

pub use datatype::DataType;
pub use error::{ModelError, ValidationError};
pub use library::{init, loaded_library, resolve};
pub use signature::{Signature, TensorSpec};

/// Opens an ONNX Runtime session on `bytes` (the gateway serves and the trainer scores with the
/// same settings).
pub fn open_session(env: &Environment, bytes: &[u8], intra_op_threads: usize) -> Result<Session, String> {
    // ort's builder errors carry the builder and are not Send: turn them into text here.
    Session::builder(env)
        .map_err(|e| e.to_string())?
        .with_intra_threads(intra_op_threads.max(1))
        .map_err(|e| e.to_string())?
        .with_inter_threads(1)
        .map_err(|e| e.to_string())?
        .commit_from_memory(bytes)
        .map_err(|e| e.to_string())
}
