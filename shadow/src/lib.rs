//! # Layout
//! Compares two model arms and decides what to do about the candidate. One implementation
//! judges online traffic (the gateway's canary and shadow arms) and, later, the trainer's
//! offline gate.
//! - [`arm`]: one arm's live record — requests, errors, latency histogram, score mean.
//! - [`paired`]: the same inputs through both arms — agreement at a threshold, absolute
//!   differences, and a paired bootstrap interval on the mean difference.
//! - [`bootstrap`]: the seeded bootstrap used by [`paired`].
//! - [`labelled`]: each arm's labelled answers and the two-sample comparison of their quality.
//! - [`verdict`]: a policy's thresholds applied to the evidence: promote, hold or roll back.
//! - [`quality`]: AUC, log loss, accuracy, calibration against labels, and a paired bootstrap
//!   of the difference between two models on the same rows.
//! - [`gate`]: the trainer's quality gate built on them (gain with an interval above zero, log
//!   loss tolerance, no slice worse than allowed).
#![forbid(unsafe_code)]

pub mod arm;
pub mod bootstrap;
pub mod gate;
pub mod labelled;
pub mod paired;
pub mod quality;
pub mod verdict;

pub use arm::{ArmExport, ArmRecord, ArmSnapshot};
pub use gate::{GatePolicy, GateVerdict, gate};
pub use labelled::{LabelledExport, LabelledRecord, QualityComparison};
pub use paired::{PairedComparison, PairedExport, PairedSnapshot};
pub use quality::{Quality, paired_difference, roc_auc};
pub use verdict::{Evidence, Policy, Verdict, differs, judge};
