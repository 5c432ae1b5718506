//! End-to-end tests: the real `gateway` binary on 127.0.0.1:0, spoken to over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod approvals;
mod bad_files;
mod batching;
mod credentials;
mod dashboard;
mod durable_labels;
mod endpoints;
mod errors;
mod explain;
mod fleet;
mod fleet_labels;
mod fleet_lb;
mod hostile;
mod infer;
mod lifecycle;
mod quality_rollout;
mod rollout;
mod s3;
mod signatures;
mod support;
mod swap_errors;
mod tap;
