//! Hot swaps: [`build`] turns config + registry into a routing table (reusing what serves,
//! checking what is new), [`reload`] swaps it in whole, [`watcher`] triggers reloads on change.

pub mod build;
pub mod reload;
pub mod watcher;

pub use build::{BuildReport, Rejection};
pub use reload::{ReloadStatus, Reloader};
