//! # Layout
//! The Flywheel gateway: an Open Inference Protocol (KServe v2 / Triton) server over ONNX
//! Runtime with dynamic batching. A request crosses few modules on its way:
//!
//! ```text
//! socket ─► server (hyper accept, routes) ─► protocol (JSON / binary decode)
//!        ─► model::table (ArcSwap load, resolve version) ─► model::signature (check)
//!        ─► batch::queue (bounded, try_send) ─► batch::worker (own thread + ORT session)
//!        ─► oneshot reply ─► protocol (encode) ─► response with request id + Server-Timing
//! ```
//! - [`config`]: TOML file, validation, per-model batching overrides.
//! - [`protocol`]: datatypes, typed tensors, JSON and binary codecs (knows no models).
//! - [`model`]: ONNX Runtime setup, repository scan, signatures, stats, routing table.
//! - [`batch`]: queue, batch assembly/split, inference threads.
//! - [`server`]: HTTP serving, endpoints, error → status mapping in one place.
//! - [`rollout`]: building tables from config + registry, hot swaps, the watcher.
//! - [`tap`]: the lossy channel of served requests, Parquet samples and labels.
//! - [`drift`]: PSI/KS windows, Page-Hinkley, drift events.
//! - [`dashboard`]: the `/dashboard` page and the per-arm history it charts.
//! - [`metrics`]: every metric name and bucket.
//! - [`health`]: panics in background work caught, counted and reported; [`fuzzing`]: the fuzz
//!   targets' entry points.
//! - [`app`]: wiring config → runtime → table → server, used by `main.rs` and tests.

pub mod app;
pub mod batch;
pub mod config;
pub mod dashboard;
pub mod drift;
pub mod explain;
pub mod fuzzing;
pub mod grpc;
pub mod health;
pub mod metrics;
pub mod model;
pub mod protocol;
pub mod rollout;
pub mod server;
pub mod tap;
