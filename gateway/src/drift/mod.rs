//! Drift detection: [`stats`] (PSI, KS), [`page_hinkley`] (sequential mean change), and the
//! per-model [`monitor`] the tap feeds, which writes drift events to the registry.

pub mod monitor;
pub mod page_hinkley;
pub mod stats;

pub use monitor::{DriftMonitor, DriftSettings, read_events};
