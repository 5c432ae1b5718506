//! The trainer's settings: one TOML file (`configs/trainer.toml`), every key optional, unknown
//! keys refused with the file and key named.

use std::path::{Path, PathBuf};

use flywheel_shadow::GatePolicy;
use serde::Deserialize;

use crate::train::TrainConfig;

/// Everything `trainer run` and `trainer watch` need.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainerConfig {
    /// The model registry (the gateway's `model_repository`).
    pub registry: PathBuf,
    /// The gateway's sample folder (holding `samples/` and `labels/`).
    pub samples: PathBuf,
    pub model: String,
    /// Alias of the version to beat; the candidate is compared with it and lists it as parent.
    pub champion_alias: String,
    /// Alias a registered candidate gets; the gateway's rollout policy takes it from there.
    pub candidate_alias: String,
    /// Share of the newest labelled rows held out for the export check and the gate.
    pub holdout_fraction: f64,
    /// Fewest labelled rows in the window before training starts.
    pub min_rows: usize,
    /// Fewest rows of each class.
    pub min_per_class: usize,
    /// Largest share of NaN allowed in any feature.
    pub max_nan_rate: f64,
    /// Only rows served in the last this many seconds (0: no limit).
    pub window_s: u64,
    /// Sample column whose values slice the gate's per-slice check (e.g. `in_input_7`).
    pub slice_feature: Option<String>,
    /// Largest allowed |ONNX Runtime − in-memory| difference of the exported model's scores.
    pub export_tolerance: f64,
    /// Reference profile: values kept per feature.
    pub profile_sample_size: usize,
    /// ONNX Runtime library (file or folder); default: the project's `.ort/lib`.
    pub ort_library: Option<PathBuf>,
    /// Bring your own training: a shell command run instead of the built-in trainer (see
    /// [`crate::byo`] for its contract).
    pub command: Option<String>,
    /// The gateway's config file: `trainer watch` refuses to start unless it has a rollout
    /// with a policy that names `champion_alias` and `candidate_alias` ([`crate::contract`]).
    pub gateway_config: Option<PathBuf>,
    pub train: TrainConfig,
    pub gate: GatePolicy,
    pub watch: WatchConfig,
}

/// How `trainer watch` follows drift events.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// How often the events log is read.
    pub poll_ms: u64,
    /// Least time between two training runs of a model (no retrain storms).
    pub cooldown_s: u64,
    /// After a drift event, wait until this many labelled rows were served after it.
    pub min_rows_after_event: usize,
    /// After a rejected candidate, retrain only once this many more labelled rows arrived
    /// (never twice on the same data).
    pub min_new_rows_after_reject: usize,
    /// Give up on an event when enough rows did not arrive within this long.
    pub max_wait_s: u64,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            poll_ms: 1000,
            cooldown_s: 600,
            min_rows_after_event: 2000,
            min_new_rows_after_reject: 2000,
            max_wait_s: 3600,
        }
    }
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            registry: PathBuf::from("var/models"),
            samples: PathBuf::from("var/samples"),
            model: "fraud".into(),
            champion_alias: "champion".into(),
            candidate_alias: "challenger".into(),
            holdout_fraction: 0.3,
            min_rows: 1000,
            min_per_class: 20,
            max_nan_rate: 0.05,
            window_s: 0,
            slice_feature: None,
            export_tolerance: 1e-4,
            profile_sample_size: 2000,
            ort_library: None,
            command: None,
            gateway_config: None,
            train: TrainConfig::default(),
            gate: GatePolicy::default(),
            watch: WatchConfig::default(),
        }
    }
}

impl TrainerConfig {
    /// Reads and checks `path`; errors name the file, the key and the value.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let config: Self = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        config.validate().map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(config)
    }

    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.05..=0.5).contains(&self.holdout_fraction) {
            return Err(format!("holdout_fraction must be in 0.05..=0.5, given {}", self.holdout_fraction));
        }
        if !flywheel_registry::valid_alias(&self.champion_alias)
            || !flywheel_registry::valid_alias(&self.candidate_alias)
        {
            return Err(format!(
                "champion_alias and candidate_alias must be aliases (letters first), given {:?} and {:?}",
                self.champion_alias, self.candidate_alias
            ));
        }
        if self.champion_alias == self.candidate_alias {
            return Err(format!("candidate_alias must differ from champion_alias, both are {:?}", self.champion_alias));
        }
        if self.export_tolerance.is_nan() || self.export_tolerance <= 0.0 {
            return Err(format!("export_tolerance must be positive, given {}", self.export_tolerance));
        }
        self.train.validate().map_err(|e| format!("[train] {e}"))
    }
}
