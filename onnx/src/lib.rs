//! # Layout
//! Writes ONNX models with the project's own code: no `protoc`, no fetched files.
//! - [`proto`]: the subset of `onnx.proto` as `prost` messages.
//! - [`graph`]: a builder from inputs, initializers and nodes to model bytes.
//! - [`mlp`]: MLPs (`Gemm`/`Relu`/`Sigmoid`) with a reference forward pass; the trainer's export.
//! - [`fixtures`]: the models tests, the demo and benchmarks serve, and the demo repository.
#![forbid(unsafe_code)]

pub mod fixtures;
pub mod graph;
pub mod mlp;
pub mod proto;

pub use graph::{Attr, Dim, ElemType, GraphBuilder};
pub use mlp::{BatchDim, Dense, Mlp};
