//! Drift events: appended by the gateway to `<registry>/<model>/drift-events.jsonl`, read by
//! the trainer and the admin API.

use serde::{Deserialize, Serialize};

use crate::Registry;

/// File name of a model's drift events log.
pub const DRIFT_EVENTS_FILE: &str = "drift-events.jsonl";

/// Folder of a fleet's drift events in a model's folder in object storage, one object per
/// event named by its id.
pub const DRIFT_EVENTS_DIR: &str = "drift-events";

/// Folder of a fleet's trainer runs in a model's folder in object storage, one object per run
/// named by its id.
pub const TRAINER_RUNS_DIR: &str = "trainer-runs";

/// File name of a model's trainer run log (one JSON object per retraining cycle: outcome,
/// version, trigger, data, stages, gate verdict), written by the trainer, served by the gateway's
/// admin API.
pub const TRAINER_RUNS_FILE: &str = "trainer-runs.jsonl";

/// File name of `trainer watch`'s cursor into the drift events log.
pub const TRAINER_CURSOR_FILE: &str = "trainer-watch.json";

/// One detector tripping on one feature (or the prediction).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DriftEvent {
    /// Position in the log (0-based line number), the `since` cursor of the admin API.
    #[serde(default)]
    pub seq: u64,
    /// In a fleet: `<unix ms, 13 digits>-<replica>-<seq, 6 digits>`, unique across replicas and
    /// ordered by time as text; the event's object name under `<model>/drift-events/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// In a fleet: the replica that raised it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    pub model: String,
    pub version: u64,
    /// `psi`, `ks`, `page_hinkley`, `data_quality`.
    pub detector: String,
    /// Feature column name, or `prediction`.
    pub feature: String,
    pub statistic: f64,
    pub threshold: f64,
    /// Rows in the window the statistic was computed on.
    pub window_rows: u64,
    /// RFC 3339 times of the first and last row of the window.
    pub window_start: String,
    pub window_end: String,
    /// RFC 3339 time of the event.
    pub time: String,
    /// Sample files (relative to the sample folder) that cover the window, when sampling is on.
    #[serde(default)]
    pub sample_files: Vec<String>,
}

/// The drift events of `model` with `seq >= since`, oldest first (unreadable lines skipped).
pub fn read_drift_events(registry: &Registry, model: &str, since: u64) -> Vec<DriftEvent> {
    std::fs::read_to_string(registry.root().join(model).join(DRIFT_EVENTS_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<DriftEvent>(l).ok())
        .filter(|e| e.seq >= since)
        .collect()
}
