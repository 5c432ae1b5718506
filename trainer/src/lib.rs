//! # Layout
//! The trainer closes the loop (issue 5): it will assemble datasets from the gateway's Parquet
//! samples joined with labels, train (GPU when present, CPU otherwise), export ONNX through
//! `flywheel-onnx`, gate the candidate against the champion with `flywheel-shadow`, and register
//! it with lineage. Nothing is implemented yet; this crate exists so the workspace has its shape.
#![forbid(unsafe_code)]
