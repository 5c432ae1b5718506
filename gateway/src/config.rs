//! The gateway's TOML configuration: `read -> parse -> validate`, strict about unknown keys,
//! with messages that name the file, key and value. Flags and environment variables override
//! the file (see `main.rs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::batch::BatchSettings;

/// A config that cannot be used; the message names the key and value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("parsing config {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("config {path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// The whole gateway configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Folder of `<model>/<version>/model.onnx`.
    pub model_repository: Option<PathBuf>,
    /// ONNX Runtime library file or folder; default: `.ort/lib` of the project.
    pub ort_library: Option<PathBuf>,
    /// Largest accepted request body.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// How long shutdown waits for in-flight requests.
    #[serde(default = "default_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Tokio worker threads for HTTP; 0 picks half the cores (at least 1), leaving the rest
    /// to inference threads.
    #[serde(default)]
    pub http_threads: usize,
    /// Inference requests handled at once, server-wide; beyond it a request is refused (503)
    /// before its body is read. 0: no limit (the batch queues still bound the work).
    #[serde(default)]
    pub max_in_flight: usize,
    /// Batching for every model unless overridden under `[models.<name>]`.
    #[serde(default)]
    pub batching: Batching,
    /// Per-model overrides.
    #[serde(default)]
    pub models: BTreeMap<String, ModelOverrides>,
    /// Bearer token for `/admin/`; without one, the admin API answers loopback clients only.
    pub admin_token: Option<String>,
    /// Append-only JSON-lines log of every swap decision; default `<model_repository>/audit.jsonl`.
    pub audit_log: Option<PathBuf>,
    /// How often the rollout controller looks at the evidence.
    #[serde(default = "default_controller_ms")]
    pub controller_interval_ms: u64,
    /// Sampling of served requests and labels to Parquet.
    #[serde(default)]
    pub sampling: crate::tap::SamplingSettings,
    /// Online drift detection.
    #[serde(default)]
    pub drift: crate::drift::DriftSettings,
}

fn default_controller_ms() -> u64 {
    1000
}

/// Values from flags or environment variables that override the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub model_repository: Option<PathBuf>,
    pub ort_library: Option<PathBuf>,
    pub http_threads: Option<usize>,
    pub admin_token: Option<String>,
}

impl Overrides {
    /// Applies these values over `config`.
    pub fn apply(&self, mut config: Config) -> Config {
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(dir) = &self.model_repository {
            config.model_repository = Some(dir.clone());
        }
        if let Some(lib) = &self.ort_library {
            config.ort_library = Some(lib.clone());
        }
        if let Some(threads) = self.http_threads {
            config.http_threads = threads;
        }
        if let Some(token) = &self.admin_token {
            config.admin_token = Some(token.clone());
        }
        config
    }
}

/// Batching and threading settings (all keys optional; defaults below).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Batching {
    pub max_batch_size: usize,
    pub max_queue_delay_us: u64,
    pub queue_capacity: usize,
    pub instances: usize,
    pub intra_op_threads: usize,
}

impl Default for Batching {
    fn default() -> Self {
        // One instance with one intra-op thread leaves a 2-core machine one core for HTTP.
        // No queue delay by default (Triton's default too): a lone request runs at once, and
        // under load batches still form from what queues while the thread is busy.
        Self { max_batch_size: 64, max_queue_delay_us: 0, queue_capacity: 1024, instances: 1, intra_op_threads: 1 }
    }
}

/// Per-model overrides of [`Batching`] (unset keys inherit) and the model's rollout.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelOverrides {
    pub max_batch_size: Option<usize>,
    pub max_queue_delay_us: Option<u64>,
    pub queue_capacity: Option<usize>,
    pub instances: Option<usize>,
    pub intra_op_threads: Option<usize>,
    /// Which versions serve and how traffic splits; without it every version loads and the
    /// highest serves by default.
    pub rollout: Option<Rollout>,
    /// Share of this model's requests written to Parquet (overrides `sampling.rate`).
    pub sample_rate: Option<f64>,
}

/// A model's traffic split. Versions are numbers, registry aliases or `latest`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    #[serde(default = "default_champion")]
    pub champion: String,
    pub canary: Option<Canary>,
    pub shadow: Option<Shadow>,
    /// Header whose value decides the canary arm by hash (sticky); random without it.
    #[serde(default = "default_routing_key_header")]
    pub routing_key_header: String,
    /// Automatic promotion or rollback of the canary (needs `champion` to be an alias).
    pub policy: Option<RolloutPolicy>,
}

/// How the controller walks a canary to champion: canary weights per step, how long and how
/// much evidence each step needs, and the thresholds (see `flywheel_shadow::Policy`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RolloutPolicy {
    /// Canary weights in percent, one per step; after the last step passes, promote.
    #[serde(default = "default_steps")]
    pub steps: Vec<u32>,
    /// Least time spent on each step.
    #[serde(default = "default_dwell_ms")]
    pub min_dwell_ms: u64,
    #[serde(flatten)]
    pub thresholds: flywheel_shadow::Policy,
}

fn default_steps() -> Vec<u32> {
    vec![5, 25, 100]
}
fn default_dwell_ms() -> u64 {
    30_000
}

/// A weighted canary: `weight` percent of un-addressed requests.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    pub version: String,
    pub weight: u32,
}

/// A shadow: a `fraction` of requests mirrored to it after the primary answered.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Shadow {
    pub version: String,
    pub fraction: f64,
    /// Shadow requests in flight at once; beyond it mirrored requests are dropped and counted.
    #[serde(default = "default_shadow_in_flight")]
    pub max_in_flight: usize,
}

fn default_champion() -> String {
    "latest".to_owned()
}
fn default_routing_key_header() -> String {
    "x-routing-key".to_owned()
}
fn default_shadow_in_flight() -> usize {
    16
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8000))
}
fn default_max_body_bytes() -> usize {
    64 << 20
}
fn default_grace_ms() -> u64 {
    10_000
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            model_repository: None,
            ort_library: None,
            max_body_bytes: default_max_body_bytes(),
            shutdown_grace_ms: default_grace_ms(),
            http_threads: 0,
            max_in_flight: 0,
            admin_token: None,
            audit_log: None,
            controller_interval_ms: default_controller_ms(),
            sampling: crate::tap::SamplingSettings::default(),
            drift: crate::drift::DriftSettings::default(),
            batching: Batching::default(),
            models: BTreeMap::new(),
        }
    }
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: shown.clone(), reason: e.to_string() })?;
        let config = Self::parse(&text).map_err(|reason| ConfigError::Parse { path: shown.clone(), reason })?;
        config.validate().map_err(|reason| ConfigError::Invalid { path: shown, reason })?;
        Ok(config)
    }

    /// The file (or the defaults without one) with `overrides` applied, validated.
    pub fn load_with(path: Option<&Path>, overrides: &Overrides) -> Result<Self, String> {
        let config = match path {
            Some(path) => Self::load(path).map_err(|e| e.to_string())?,
            None => Config::default(),
        };
        let config = overrides.apply(config);
        config.validate().map_err(|e| format!("config: {e}"))?;
        Ok(config)
    }

    /// Parses TOML text (no validation).
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks every value; the first problem found is returned, naming its key.
    pub fn validate(&self) -> Result<(), String> {
        check_batching("batching", &self.batching)?;
        for name in self.models.keys() {
            if !flywheel_registry::valid_model_name(name) {
                return Err(format!("models.{name}: model names use letters, digits, '_', '-' and '.'"));
            }
            check_batching(&format!("models.{name}"), &self.batching_for(name))?;
            if let Some(rollout) = self.models.get(name).and_then(|m| m.rollout.as_ref()) {
                check_rollout(&format!("models.{name}.rollout"), rollout)?;
            }
        }
        self.sampling.validate()?;
        self.drift.validate()?;
        for (name, m) in &self.models {
            if let Some(rate) = m.sample_rate.filter(|r| !(0.0..=1.0).contains(r)) {
                return Err(format!("models.{name}.sample_rate must be in 0..=1, given {rate}"));
            }
        }
        if self.max_body_bytes < 1024 {
            return Err(format!("max_body_bytes must be at least 1024, given {}", self.max_body_bytes));
        }
        if self.http_threads > 256 {
            return Err(format!("http_threads must be at most 256 (0 = automatic), given {}", self.http_threads));
        }
        if self.shutdown_grace_ms > 600_000 {
            return Err(format!("shutdown_grace_ms must be at most 600000, given {}", self.shutdown_grace_ms));
        }
        Ok(())
    }

    /// The share of `model`'s requests written to Parquet.
    pub fn sample_rate_for(&self, model: &str) -> f64 {
        self.models.get(model).and_then(|m| m.sample_rate).unwrap_or(self.sampling.rate)
    }

    /// Where sample and label files go: `sampling.dir`, else `samples` beside the repository.
    pub fn sample_dir(&self) -> Option<PathBuf> {
        self.sampling.dir.clone().or_else(|| {
            let repo = self.model_repository.as_ref()?;
            let parent = repo.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            Some(parent.join("samples"))
        })
    }

    /// Where the audit log goes.
    pub fn audit_log_path(&self) -> Option<PathBuf> {
        self.audit_log.clone().or_else(|| self.model_repository.as_ref().map(|r| r.join("audit.jsonl")))
    }

    /// Tokio worker threads to start: `http_threads`, or half the cores when it is 0.
    pub fn effective_http_threads(&self) -> usize {
        if self.http_threads > 0 {
            return self.http_threads;
        }
        // Measured on 2 cores: one HTTP thread beside the inference thread served 48.6k req/s
        // of the tiny model at concurrency 64 where two served 39.7k (less contention).
        std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
    }

    /// The batching settings of `model`: its overrides over `[batching]`.
    pub fn batching_for(&self, model: &str) -> Batching {
        let base = self.batching.clone();
        let Some(o) = self.models.get(model) else { return base };
        Batching {
            max_batch_size: o.max_batch_size.unwrap_or(base.max_batch_size),
            max_queue_delay_us: o.max_queue_delay_us.unwrap_or(base.max_queue_delay_us),
            queue_capacity: o.queue_capacity.unwrap_or(base.queue_capacity),
            instances: o.instances.unwrap_or(base.instances),
            intra_op_threads: o.intra_op_threads.unwrap_or(base.intra_op_threads),
        }
    }

    /// The batch settings the model loader takes.
    pub fn batch_settings_for(&self, model: &str) -> BatchSettings {
        let b = self.batching_for(model);
        BatchSettings {
            max_batch_size: b.max_batch_size,
            max_queue_delay: Duration::from_micros(b.max_queue_delay_us),
            queue_capacity: b.queue_capacity,
            instances: b.instances,
            intra_op_threads: b.intra_op_threads,
        }
    }
}

fn check_rollout(at: &str, r: &Rollout) -> Result<(), String> {
    let reference = |key: &str, value: &str| {
        let ok = !value.is_empty() && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        if ok {
            Ok(())
        } else {
            Err(format!("{at}.{key} must be a version number, an alias or 'latest', given {value:?}"))
        }
    };
    reference("champion", &r.champion)?;
    if let Some(c) = &r.canary {
        reference("canary.version", &c.version)?;
        if c.weight > 100 {
            return Err(format!("{at}.canary.weight must be in 0..=100, given {}", c.weight));
        }
    }
    if let Some(s) = &r.shadow {
        reference("shadow.version", &s.version)?;
        if !(0.0..=1.0).contains(&s.fraction) {
            return Err(format!("{at}.shadow.fraction must be in 0..=1, given {}", s.fraction));
        }
        if s.max_in_flight == 0 || s.max_in_flight > 100_000 {
            return Err(format!("{at}.shadow.max_in_flight must be in 1..=100000, given {}", s.max_in_flight));
        }
    }
    if let Some(p) = &r.policy {
        if r.champion.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!(
                "{at}.policy needs champion to be an alias (e.g. \"champion\") so promotion can move it, given {:?}",
                r.champion
            ));
        }
        if r.canary.is_none() {
            return Err(format!("{at}.policy needs a canary to roll out"));
        }
        if p.steps.is_empty() || p.steps.iter().any(|w| *w == 0 || *w > 100) {
            return Err(format!("{at}.policy.steps must be weights in 1..=100, given {:?}", p.steps));
        }
        p.thresholds.validate().map_err(|e| format!("{at}.policy.{e}"))?;
    }
    if hyper::header::HeaderName::from_bytes(r.routing_key_header.as_bytes()).is_err() {
        return Err(format!("{at}.routing_key_header is not a valid header name, given {:?}", r.routing_key_header));
    }
    Ok(())
}

/// The rollout of `model`, if it has one.
impl Config {
    pub fn rollout_for(&self, model: &str) -> Option<&Rollout> {
        self.models.get(model).and_then(|m| m.rollout.as_ref())
    }
}

fn check_batching(at: &str, b: &Batching) -> Result<(), String> {
    let range = |key: &str, value: u64, lo: u64, hi: u64| {
        if (lo..=hi).contains(&value) {
            Ok(())
        } else {
            Err(format!("{at}.{key} must be in {lo}..={hi}, given {value}"))
        }
    };
    range("max_batch_size", b.max_batch_size as u64, 0, 65_536)?;
    range("max_queue_delay_us", b.max_queue_delay_us, 0, 1_000_000)?;
    range("queue_capacity", b.queue_capacity as u64, 1, 1_000_000)?;
    range("instances", b.instances as u64, 1, 64)?;
    range("intra_op_threads", b.intra_op_threads as u64, 1, 256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_config_parses_and_overrides_inherit() {
        let c = Config::parse(
            r#"
            listen = "0.0.0.0:9000"
            model_repository = "models"
            [batching]
            max_batch_size = 32
            [models.fraud]
            instances = 2
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen.port(), 9000);
        let fraud = c.batching_for("fraud");
        assert_eq!((fraud.max_batch_size, fraud.instances), (32, 2));
        assert_eq!(c.batching_for("other").instances, 1);
    }

    #[test]
    fn each_bad_value_is_rejected_naming_key_and_value() {
        let cases = [
            ("[batching]\nmax_batch_size = 100000", "batching.max_batch_size must be in 0..=65536, given 100000"),
            ("[batching]\nqueue_capacity = 0", "batching.queue_capacity must be in 1..=1000000, given 0"),
            ("[models.m]\ninstances = 0", "models.m.instances must be in 1..=64, given 0"),
            ("[models.m]\nmax_queue_delay_us = 5000000", "models.m.max_queue_delay_us"),
            ("max_body_bytes = 10", "max_body_bytes must be at least 1024, given 10"),
            ("[sampling]\nrate = 2.0", "sampling.rate must be in 0..=1, given 2"),
            ("[models.m]\nsample_rate = -0.5", "models.m.sample_rate must be in 0..=1, given -0.5"),
            ("[drift]\nwindow_rows = 5", "drift.window_rows must be in 50..=10000000, given 5"),
            ("[models.\"a/b\"]\ninstances = 1", "models.a/b"),
            (
                "[models.m.rollout.canary]\nversion = \"2\"\nweight = 140",
                "models.m.rollout.canary.weight must be in 0..=100, given 140",
            ),
            (
                "[models.m.rollout.shadow]\nversion = \"2\"\nfraction = 1.5",
                "models.m.rollout.shadow.fraction must be in 0..=1, given 1.5",
            ),
            (
                "[models.m.rollout]\nchampion = \"../x\"",
                "models.m.rollout.champion must be a version number, an alias or 'latest'",
            ),
        ];
        for (text, expected) in cases {
            let err = Config::parse(text).unwrap().validate().unwrap_err();
            assert!(err.contains(expected), "{err:?} should contain {expected:?}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_types_are_parse_errors() {
        assert!(Config::parse("lisen = \"x\"").unwrap_err().contains("unknown field `lisen`"));
        assert!(Config::parse("[batching]\nmax_batch = 3").unwrap_err().contains("max_batch"));
        assert!(Config::parse("listen = \"not an address\"").is_err());
        let typo = "[models.m.rollout]\nchampion = \"champion\"\ncanary = { version = \"4\", weight = 5 }\n[models.m.rollout.policy]\nmax_p99_ration = 2.0";
        assert!(Config::parse(typo).unwrap_err().contains("max_p99_ration"), "a typo in the policy is refused");
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        std::fs::write(&path, "max_body_bytes = 1").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("g.toml") && err.contains("max_body_bytes"), "{err}");
        assert!(Config::load(&dir.path().join("missing.toml")).unwrap_err().to_string().contains("missing.toml"));
    }
}
