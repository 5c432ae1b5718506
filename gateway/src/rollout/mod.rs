//! Hot swaps and rollouts: [`build`] turns config + registry (+ [`controls`], the controller's
//! live decisions) into a routing table, reusing what serves and checking what is new;
//! [`reload`] swaps it in whole; [`watcher`] triggers reloads on change; [`controller`] walks
//! canaries through their policy; [`decision`] promotes or rolls back (decision lock + alias
//! compare-and-set); [`audit`] records every decision.

pub mod audit;
pub mod background;
pub mod build;
pub mod controller;
pub mod controls;
pub mod decision;
pub mod fleet;
pub mod registry_sync;
pub mod reload;
pub mod restart_keys;
pub mod store_writer;
pub mod watcher;

pub use build::{BuildReport, Rejection};
pub use reload::{ReloadStatus, Reloader};
