//! # Layout
//! The contract between the gateway and the trainer: how models are stored and named.
//! - [`store`]: the registry folder — versions published atomically, listing, SHA-256
//!   verification, aliases (`champion`, `challenger`, ...) replaced whole.
//! - [`alias_cas`]: compare-and-set alias changes, applied whole or not at all.
//! - [`manifest`]: a version's manifest (identity and lineage).
//! - [`profile`]: reference profiles (per-feature quantile bins, samples) for drift detection.
//! - [`rollout_state`]: the controller's durable rollout state per model.
//! - [`dataset`]: samples joined with labels, windowed and digested (what the trainer trains on
//!   and what lineage re-verifies).
//! - [`training_set`]: which sample-store files (path, size, SHA-256) a version's rows were
//!   read from, kept beside the samples and found from the manifest's data digest.
//! - [`lineage`]: a served request back to its version, data, decisions and ancestors;
//!   [`data_check`] re-assembles a version's rows and compares their digest;
//!   [`lineage_store`] copies a fleet's store into a fresh folder for the same query.
//! - [`samples`]: the sample and label Parquet layout and column names.
//! - [`events`]: the drift event format and the trainer's run log name.
//! - [`signing`]: Ed25519 signatures over manifests (`manifest.sig`), trusted keys, key pairs.
//! - [`fsutil`]: atomic, durable writes; [`tail`]: the end of a JSON-lines log, read backwards.
//!
//! The `registry` binary exposes the same operations to operators.
#![forbid(unsafe_code)]

pub mod alias_cas;
pub mod data_check;
pub mod dataset;
pub mod events;
pub mod fsutil;
pub mod lineage;
pub mod lineage_store;
pub mod manifest;
pub mod profile;
pub mod remote;
pub mod rollout_state;
pub mod samples;
pub mod signing;
pub mod store;
pub mod tail;
pub mod training_set;

pub use alias_cas::AliasChange;
pub use events::{
    DRIFT_EVENTS_DIR, DRIFT_EVENTS_FILE, DriftEvent, TRAINER_CURSOR_FILE, TRAINER_RUNS_DIR, TRAINER_RUNS_FILE,
    read_drift_events,
};
pub use manifest::{DataLineage, MANIFEST_FILE, Manifest, ManifestDraft, sha256_hex};
pub use profile::{FeatureProfile, PROFILE_FILE, ReferenceProfile};
pub use remote::{Claim, Lease, Mirror, Remote, SyncReport, copy_down, is_remote, now_ms};
pub use rollout_state::{Approval, ROLLOUT_STATE_FILE, RolloutState, StepState};
pub use signing::{SIGNATURE_FILE, Signer, TrustedKeys};
pub use store::{
    ALIASES_FILE, FileStamp, MODEL_FILE, Registry, RegistryError, Skipped, Verified, VersionEntry, parse_aliases,
    parse_manifest, parse_profile, valid_alias, valid_model_name,
};
pub use tail::tail_lines;

#[cfg(test)]
mod tests;
