//! # Layout
//! The trainer closes the loop (issue 5). Built so far:
//! - [`synthetic`]: fraud-like data with controllable covariate shift and concept drift.
//! - [`dataset`]: the gateway's Parquet samples joined with labels, windowed, split by time,
//!   checked and digested for lineage.
//! - [`train`]: logistic regression or an MLP with burn on CPU, exported as a
//!   `flywheel_onnx::Mlp` taking raw features.
//!
//! Still to build (see the issue note): the CUDA path, ONNX export verification through ONNX
//! Runtime, the quality gate with `flywheel-shadow`,
//! registration with lineage and the `challenger` alias, `trainer watch`, bring-your-own
//! training, and the demo.
#![deny(unsafe_code)]

pub mod bootstrap;
pub mod byo;
pub mod config;
pub mod cycle;
pub mod dataset;
pub mod demo;
pub mod device;
pub mod score;
pub mod synthetic;
pub mod table_file;
pub mod train;
pub mod watch;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod dataset_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod cycle_tests;
