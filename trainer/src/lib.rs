//! # Layout
//! The trainer closes the loop (see `docs/TRAINER.md`):
//! - [`synthetic`]: fraud-like data with controllable covariate shift and concept drift.
//! - [`dataset`]: the gateway's Parquet samples joined with labels, windowed, split by time,
//!   checked and digested for lineage.
//! - [`train`]: logistic regression or an MLP with burn, exported as a `flywheel_onnx::Mlp`
//!   taking raw features; [`device`] picks CPU or CUDA (feature `cuda`) with a probe.
//! - [`score`]: scoring ONNX files with ONNX Runtime, as the gateway serves them.
//! - [`cycle`]: assemble → train (or [`byo`], the user's command) → export check → gate →
//!   register; the run log.
//! - [`watch`]: drift events → cycles, with cooldown and anti-thrash; [`contract`]: the
//!   gateway config must route, judge and consume the trainer's candidates.
//! - [`bootstrap`]: the first champion; [`demo`]: the whole loop with the gateway.
//! - [`config`]: the trainer's TOML settings; [`table_file`]: plain Parquet tables.
#![deny(unsafe_code)]

pub mod bootstrap;
pub mod byo;
pub mod config;
pub mod contract;
pub mod cycle;
pub use flywheel_registry::dataset;
pub mod demo;
pub mod device;
pub mod score;
pub mod synthetic;
pub mod table_file;
pub mod train;
pub mod watch;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod test_files;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod dataset_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod cycle_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod watch_tests;
