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
    /// The model registry (the gateway's `model_repository`): a folder, or an object store URL
    /// (`s3://bucket/prefix`), then copied into `cache_dir` before each look (see
    /// [`TrainerConfig::localize`]).
    pub registry: PathBuf,
    /// The gateway's sample folder (holding `samples/` and `labels/`), or the fleet's sample
    /// store URL (default `<registry URL>/.data` with a registry in object storage).
    pub samples: PathBuf,
    /// Local copies of a registry and sample store in object storage; default
    /// `<temp>/flywheel-trainer/<registry URL>`.
    pub cache_dir: Option<PathBuf>,
    /// The registry's URL when it is in object storage (`registry` is then its local copy).
    #[serde(skip)]
    pub registry_url: Option<String>,
    /// The sample store's URL when it is in object storage (`samples` is then its local copy).
    #[serde(skip)]
    pub samples_url: Option<String>,
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
    /// Ed25519 private key (PKCS#8 PEM, e.g. from `registry keygen`) that signs each version
    /// registered; the gateway's `trusted_keys` holds its public half.
    pub signing_key: Option<PathBuf>,
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
            signing_key: None,
            cache_dir: None,
            registry_url: None,
            samples_url: None,
            train: TrainConfig::default(),
            gate: GatePolicy::default(),
            watch: WatchConfig::default(),
        }
    }
}

impl TrainerConfig {
    /// A URL `registry` or `samples` becomes `registry_url` / `samples_url`, and the path its
    /// local copy. With a registry URL and the default sample folder, the samples are the
    /// fleet's: `<registry URL>/.data`, where gateways upload theirs.
    pub fn localize(mut self) -> Result<Self, String> {
        let url_of = |p: &Path| {
            p.to_str().filter(|l| flywheel_registry::is_remote(l)).map(|u| u.trim_end_matches('/').to_owned())
        };
        let Some(registry_url) = url_of(&self.registry) else {
            if let Some(url) = url_of(&self.samples) {
                return Err(format!(
                    "samples = {url:?} is in object storage but registry is a folder: use both in the store"
                ));
            }
            return Ok(self);
        };
        let samples_url = url_of(&self.samples)
            .or_else(|| (self.samples == TrainerConfig::default().samples).then(|| format!("{registry_url}/.data")));
        let cache = self.cache_dir.clone().unwrap_or_else(|| {
            let name: String =
                registry_url.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
            std::env::temp_dir().join("flywheel-trainer").join(name)
        });
        for url in std::iter::once(&registry_url).chain(samples_url.as_ref()) {
            flywheel_registry::Remote::shared(url).map_err(|e| e.to_string())?;
        }
        self.registry = cache.join("models");
        if samples_url.is_some() {
            self.samples = cache.join("samples");
        }
        self.registry_url = Some(registry_url);
        self.samples_url = samples_url;
        Ok(self)
    }

    /// The registry handle: the folder, or the local copy whose writes go to the store.
    pub fn registry_handle(&self) -> flywheel_registry::Registry {
        match self.registry_url.as_deref().map(flywheel_registry::Remote::shared) {
            Some(Ok(remote)) => flywheel_registry::Registry::mirrored(&self.registry, remote),
            Some(Err(e)) => {
                // localize() opened this URL already, so this does not happen.
                tracing::error!(error = %e, "registry store unusable; reads and writes go to its local copy only");
                flywheel_registry::Registry::open(&self.registry)
            }
            None => flywheel_registry::Registry::open(&self.registry),
        }
    }

    /// The registry handle that publishes: [`TrainerConfig::registry_handle`], signing with
    /// `signing_key` when one is set.
    pub fn publishing_registry(&self) -> Result<flywheel_registry::Registry, String> {
        let registry = self.registry_handle();
        match &self.signing_key {
            Some(path) => {
                Ok(registry.with_signer(std::sync::Arc::new(flywheel_registry::Signer::from_pem_file(path)?)))
            }
            None => Ok(registry),
        }
    }

    /// Brings the local copies of a registry and sample store in object storage up to date:
    /// new versions, aliases, rollout state and the fleet's drift events of `model`; new
    /// sample and label files. Nothing to do for folders.
    pub fn refresh(&self) -> Result<(), String> {
        self.refresh_registry()?;
        self.refresh_samples()
    }

    /// Brings the local copy of the sample store up to date (new sample and label files of
    /// `model`; a listing of them each time).
    pub fn refresh_samples(&self) -> Result<(), String> {
        if let Some(url) = &self.samples_url {
            let remote = flywheel_registry::Remote::shared(url).map_err(|e| e.to_string())?;
            let model = format!("{}={}", flywheel_registry::samples::MODEL, self.model);
            // The label journal first: an object deleted once its label file is up is then
            // found in that file.
            use flywheel_registry::samples::{LABEL_JOURNAL, LABELS, SAMPLES};
            for kind in [LABEL_JOURNAL, SAMPLES, LABELS] {
                let local = self.samples.join(kind).join(&model);
                flywheel_registry::copy_down(&remote, &[kind, &model], &local).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// Brings the local copy of the registry (and the fleet's drift events) up to date, not the
    /// samples: what `trainer watch` does every poll.
    pub fn refresh_registry(&self) -> Result<(), String> {
        let Some(url) = &self.registry_url else { return Ok(()) };
        let mirror = shared_mirror(url, &self.registry)?;
        let report = mirror.sync_one(&self.model).map_err(|e| e.to_string())?;
        for refused in &report.refused {
            tracing::error!(%refused, "registry object refused; not copied");
        }
        if let Some(failed) = report.failed.first() {
            return Err(format!("registry copy incomplete: {failed}"));
        }
        mirror.sync_events(&self.model).map(|_| ()).map_err(|e| e.to_string())
    }

    /// Reads and checks `path`; errors name the file, the key and the value.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let config: Self = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        config.validate().map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(config)
    }

    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(path) = &self.signing_key {
            flywheel_registry::Signer::from_pem_file(path).map_err(|e| format!("signing_key: {e}"))?;
        }
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

/// One mirror per (store, copy) for the process's life: it remembers ETags and refused
/// versions between refreshes, so an unchanged store costs no download.
fn shared_mirror(url: &str, root: &Path) -> Result<std::sync::Arc<flywheel_registry::Mirror>, String> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    type Mirrors = HashMap<(String, PathBuf), Arc<flywheel_registry::Mirror>>;
    static MIRRORS: OnceLock<Mutex<Mirrors>> = OnceLock::new();
    let mut mirrors = MIRRORS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(mirror) = mirrors.get(&(url.to_owned(), root.to_path_buf())) {
        return Ok(Arc::clone(mirror));
    }
    let remote = flywheel_registry::Remote::shared(url).map_err(|e| e.to_string())?;
    let mirror = Arc::new(flywheel_registry::Mirror::new(remote, root, u64::MAX));
    mirrors.insert((url.to_owned(), root.to_path_buf()), Arc::clone(&mirror));
    Ok(mirror)
}
