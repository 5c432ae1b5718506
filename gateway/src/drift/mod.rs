//! Drift detection: [`stats`] (PSI, KS), [`page_hinkley`] and [`adwin`] (sequential mean change), [`ddm`]
//! (error-rate change once labels arrive), and the
//! per-model [`monitor`] the tap feeds, which writes drift events to the registry; [`intake`]
//! decides which served rows it is fed under load.

pub mod adwin;
pub mod ddm;
pub mod intake;
pub mod monitor;
pub mod page_hinkley;
pub mod stats;
pub mod webhook;

pub use flywheel_registry::read_drift_events as read_events;
pub use monitor::{DriftMonitor, DriftSettings};
