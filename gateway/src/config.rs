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
    /// Address of the gRPC port (`inference.GRPCInferenceService` and `grpc.health.v1.Health`;
    /// Triton's is 8001); none by default.
    #[serde(default)]
    pub grpc_listen: Option<SocketAddr>,
    /// Largest gRPC message taken or sent (tonic's default of 4 MiB is too small for batches);
    /// default: `max_body_bytes`. See [`Config::grpc_message_limit`].
    #[serde(default)]
    pub grpc_max_message_bytes: Option<usize>,
    /// Folder of `<model>/<version>/model.onnx`, or an object store URL (`s3://bucket/prefix`,
    /// `gs://`, `az://`): then this becomes the local copy (`registry.cache_dir`) and the URL
    /// moves to `registry_url`.
    pub model_repository: Option<PathBuf>,
    /// The object store the repository is a copy of (set from a URL `model_repository`).
    #[serde(skip)]
    pub registry_url: Option<String>,
    /// Copying a registry in object storage.
    #[serde(default)]
    pub registry: RegistrySettings,
    /// Several gateways over one registry in object storage: the controller lease and the
    /// evidence they share.
    #[serde(default)]
    pub fleet: FleetSettings,
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
    /// once its body is in (a slow body holds no slot). 0: no limit (the batch queues and
    /// `server.max_in_flight_bytes` still bound the work).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Which versions of a model without a rollout load (Triton's default: the latest one).
    #[serde(default)]
    pub version_policy: VersionPolicy,
    /// Memory one row of every input and declared output of a model may take; a version whose
    /// signature needs more (e.g. a static shape of [1, 100000000000]) is refused at load.
    #[serde(default = "default_max_warmup_bytes")]
    pub max_warmup_bytes: usize,
    /// Largest model file loaded; a larger one is refused before it is read.
    #[serde(default = "default_max_model_file_bytes")]
    pub max_model_file_bytes: u64,
    /// Deadlines, connection cap, byte budget and drain timing of the HTTP server.
    #[serde(default)]
    pub server: crate::server::limits::ServerLimits,
    /// Batching for every model unless overridden under `[models.<name>]`.
    #[serde(default)]
    pub batching: Batching,
    /// Per-model overrides.
    #[serde(default)]
    pub models: BTreeMap<String, ModelOverrides>,
    /// Bearer token for `/admin/` (at least 16 characters); without one, the admin API answers
    /// loopback clients only, and the gateway refuses a non-loopback `listen`.
    pub admin_token: Option<String>,
    /// Bearer token for `POST .../feedback` (labels; the admin token works too); without one,
    /// labels are open, and the gateway refuses a non-loopback `listen`.
    pub feedback_token: Option<String>,
    /// Named credentials with roles (`read`, `operate`, `approve`, `label`), beside or instead
    /// of `admin_token` and `feedback_token`; the audit log names the credential that acted.
    #[serde(default)]
    pub credentials: Vec<crate::server::auth::Credential>,
    /// Lets the gateway listen on a non-loopback address without `admin_token` and
    /// `feedback_token`: anyone who reaches the port can then move aliases and write labels.
    #[serde(default)]
    pub insecure_allow_unauthenticated: bool,
    /// Public keys (SPKI PEM files) whose signatures on a version's manifest are trusted; several
    /// at once for a rotation. With keys, a version with a signature that does not verify is
    /// refused (the old one keeps serving).
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
    /// Refuse versions that are not signed by one of `trusted_keys`.
    #[serde(default)]
    pub require_signature: bool,
    /// `trusted_keys`, read (see [`Config::read_trusted_keys`]).
    #[serde(skip)]
    pub trust: flywheel_registry::TrustedKeys,
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
    /// Explanations (`/explain`): their budget and method.
    #[serde(default)]
    pub explain: crate::explain::ExplainSettings,
    /// The `/dashboard` page and its history.
    #[serde(default)]
    pub dashboard: crate::dashboard::DashboardSettings,
}

fn default_controller_ms() -> u64 {
    1000
}

/// `[registry]`: how a gateway keeps its local copy of a registry in object storage.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistrySettings {
    /// The local copy; default `<temp>/flywheel-registry/<url>/models`. Replicas on one host
    /// need one each.
    pub cache_dir: Option<PathBuf>,
    /// How often the store is listed for new versions and alias changes (a listing per model
    /// and two conditional reads; nothing is downloaded while nothing changed).
    #[serde(default = "default_registry_poll_ms")]
    pub poll_interval_ms: u64,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self { cache_dir: None, poll_interval_ms: default_registry_poll_ms() }
    }
}

/// `[fleet]`: gateways sharing a registry in object storage elect one controller per model
/// (a lease in the store) and pool their canary evidence there.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetSettings {
    /// This replica's name, unique in the fleet (lease holder, evidence file, audit lines);
    /// default `<host name>-<process id>`.
    pub replica: Option<String>,
    /// How long a controller lease lasts without renewal: the bound on failover time.
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// Evidence a replica has not refreshed for this long is left out of the fleet's (a
    /// replica that is gone).
    #[serde(default = "default_evidence_stale_ms")]
    pub evidence_stale_ms: u64,
}

impl Default for FleetSettings {
    fn default() -> Self {
        Self { replica: None, lease_ttl_ms: default_lease_ttl_ms(), evidence_stale_ms: default_evidence_stale_ms() }
    }
}

impl FleetSettings {
    /// The replica name in force.
    pub fn replica_name(&self) -> String {
        self.replica.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "gateway".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

fn default_lease_ttl_ms() -> u64 {
    10_000
}

fn default_evidence_stale_ms() -> u64 {
    30_000
}

fn default_registry_poll_ms() -> u64 {
    2000
}

/// The default local copy of a registry at `url`: a folder per URL under the temp folder.
fn default_cache_dir(url: &str) -> PathBuf {
    let name: String = url.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    std::env::temp_dir().join("flywheel-registry").join(name).join("models")
}

/// Values from flags or environment variables that override the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub grpc_listen: Option<SocketAddr>,
    pub model_repository: Option<PathBuf>,
    pub ort_library: Option<PathBuf>,
    pub http_threads: Option<usize>,
    pub admin_token: Option<String>,
    pub feedback_token: Option<String>,
}

impl Overrides {
    /// Applies these values over `config`.
    pub fn apply(&self, mut config: Config) -> Config {
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(listen) = self.grpc_listen {
            config.grpc_listen = Some(listen);
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
        if let Some(token) = &self.feedback_token {
            config.feedback_token = Some(token.clone());
        }
        config.localize_repository()
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
    /// A version whose one-row run (measured at load) takes at most this many µs runs a small
    /// request alone in the gateway on the connection's thread; 0 turns it off.
    pub inline_max_us: u64,
}

impl Default for Batching {
    fn default() -> Self {
        // One instance with one intra-op thread leaves a 2-core machine one core for HTTP.
        // No queue delay by default (Triton's default too): a lone request runs at once, and
        // under load batches still form from what queues while the thread is busy.
        Self {
            max_batch_size: 64,
            max_queue_delay_us: 0,
            queue_capacity: 1024,
            instances: 1,
            intra_op_threads: 1,
            inline_max_us: 50,
        }
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
    pub inline_max_us: Option<u64>,
    /// Which versions serve and how traffic splits; without it `version_policy` decides which
    /// versions load (default: the latest) and the highest serves by default.
    pub rollout: Option<Rollout>,
    /// Share of this model's requests written to Parquet (overrides `sampling.rate`).
    pub sample_rate: Option<f64>,
    /// Which versions load without a rollout (overrides the top-level `version_policy`).
    pub version_policy: Option<VersionPolicy>,
    /// Which output value is the score, its threshold, classifier or regressor.
    pub score: Option<crate::model::score::ScoreConfig>,
    /// Answered rows explained automatically, off the hot path, into `explanations/`.
    pub explain: Option<crate::explain::auto::ExplainPolicy>,
}

/// Triton's version policy, for models without a rollout: `{ latest = N }` loads the N highest
/// versions that load (a newer one that fails leaves the older serving), `"all"` every version,
/// `{ specific = [1, 3] }` exactly those. Versions it no longer names are unloaded.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum VersionPolicy {
    All,
    Latest(usize),
    Specific(Vec<u64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

impl VersionPolicy {
    fn validate(&self, at: &str) -> Result<(), String> {
        match self {
            VersionPolicy::Latest(n) if !(1..=1000).contains(n) => {
                Err(format!("{at}.latest must be in 1..=1000, given {n}"))
            }
            VersionPolicy::Specific(v) if v.is_empty() => Err(format!("{at}.specific must name at least one version")),
            _ => Ok(()),
        }
    }
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
    /// Where a human must approve (`POST /admin/models/{m}/approve`, role `approve`) once the
    /// evidence passed: `none`, `promote` (before the final promotion) or `each_step`.
    #[serde(default)]
    pub require_approval: ApprovalPoint,
    #[serde(flatten)]
    pub thresholds: flywheel_shadow::Policy,
}

/// Which steps of a rollout wait for an approver.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalPoint {
    #[default]
    None,
    /// Before the final promotion only.
    Promote,
    /// Before leaving every step (each weight increase and the promotion).
    EachStep,
}

impl ApprovalPoint {
    /// Whether leaving step `step` of `steps` needs an approval.
    pub fn before_leaving(self, step: usize, steps: usize) -> bool {
        match self {
            ApprovalPoint::None => false,
            ApprovalPoint::Promote => step + 1 >= steps,
            ApprovalPoint::EachStep => true,
        }
    }
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
/// Shortest accepted bearer token.
const MIN_TOKEN_CHARS: usize = 16;

fn default_max_warmup_bytes() -> usize {
    256 << 20
}
fn default_max_model_file_bytes() -> u64 {
    // ONNX's protobuf limit is 2 GiB; a little headroom for what ONNX Runtime accepts.
    4 << 30
}
fn default_max_in_flight() -> usize {
    4096
}
fn default_grace_ms() -> u64 {
    10_000
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            grpc_listen: None,
            grpc_max_message_bytes: None,
            model_repository: None,
            registry_url: None,
            registry: RegistrySettings::default(),
            fleet: FleetSettings::default(),
            ort_library: None,
            max_body_bytes: default_max_body_bytes(),
            shutdown_grace_ms: default_grace_ms(),
            http_threads: 0,
            max_in_flight: default_max_in_flight(),
            max_warmup_bytes: default_max_warmup_bytes(),
            version_policy: VersionPolicy::default(),
            max_model_file_bytes: default_max_model_file_bytes(),
            server: crate::server::limits::ServerLimits::default(),
            admin_token: None,
            credentials: Vec::new(),
            feedback_token: None,
            insecure_allow_unauthenticated: false,
            trusted_keys: Vec::new(),
            require_signature: false,
            trust: flywheel_registry::TrustedKeys::default(),
            audit_log: None,
            controller_interval_ms: default_controller_ms(),
            sampling: crate::tap::SamplingSettings::default(),
            drift: crate::drift::DriftSettings::default(),
            explain: crate::explain::ExplainSettings::default(),
            dashboard: crate::dashboard::DashboardSettings::default(),
            batching: Batching::default(),
            models: BTreeMap::new(),
        }
    }
}

impl Config {
    /// A URL `model_repository` becomes `registry_url`, and the repository its local copy.
    fn localize_repository(mut self) -> Self {
        let url = self.model_repository.as_ref().and_then(|p| p.to_str()).filter(|l| flywheel_registry::is_remote(l));
        if let Some(url) = url.map(|u| u.trim_end_matches('/').to_owned()) {
            self.model_repository = Some(self.registry.cache_dir.clone().unwrap_or_else(|| default_cache_dir(&url)));
            self.registry_url = Some(url);
        }
        self
    }

    /// The registry handle: the folder, or the local copy whose writes go to the store.
    pub fn registry_handle(&self) -> Option<flywheel_registry::Registry> {
        let root = self.model_repository.clone()?;
        match &self.registry_url {
            // validate() opened this URL already; the handle is shared.
            Some(url) => match flywheel_registry::Remote::shared(url) {
                Ok(remote) => Some(flywheel_registry::Registry::mirrored(root, remote)),
                Err(e) => {
                    tracing::error!(error = %e, "registry store unusable");
                    None
                }
            },
            None => Some(flywheel_registry::Registry::open(root)),
        }
    }

    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_over(path, &Overrides::default())
    }

    /// Reads and parses `path`, applies `overrides`, then validates: a token given in the
    /// environment counts for a file that listens on every interface.
    fn load_over(path: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: shown.clone(), reason: e.to_string() })?;
        let config = Self::parse(&text).map_err(|reason| ConfigError::Parse { path: shown.clone(), reason })?;
        let mut config = overrides.apply(config);
        config.read_trusted_keys().map_err(|reason| ConfigError::Invalid { path: shown.clone(), reason })?;
        config.validate().map_err(|reason| ConfigError::Invalid { path: shown, reason })?;
        Ok(config)
    }

    /// The file (or the defaults without one) with `overrides` applied, validated.
    pub fn load_with(path: Option<&Path>, overrides: &Overrides) -> Result<Self, String> {
        match path {
            Some(path) => Self::load_over(path, overrides).map_err(|e| e.to_string()),
            None => {
                let mut config = overrides.apply(Config::default());
                config.read_trusted_keys()?;
                config.validate().map_err(|e| format!("config: {e}"))?;
                Ok(config)
            }
        }
    }

    /// Reads the `trusted_keys` files into [`Config::trust`]; the error names the file.
    pub fn read_trusted_keys(&mut self) -> Result<(), String> {
        self.trust =
            flywheel_registry::TrustedKeys::from_files(&self.trusted_keys).map_err(|e| format!("trusted_keys: {e}"))?;
        Ok(())
    }

    /// Whether a version signed by `key` (`None`: unsigned) may serve under this config.
    pub fn admits_signer(&self, key: Option<&str>) -> Result<(), String> {
        match key {
            None if self.require_signature => Err(format!(
                "the version is not signed ({} missing) and require_signature is set",
                flywheel_registry::SIGNATURE_FILE
            )),
            Some(key) if !self.trust.is_empty() && !self.trust.trusts(key) => {
                Err(format!("signed by key {key}, which is no longer in trusted_keys"))
            }
            _ => Ok(()),
        }
    }

    /// Parses TOML text (no validation).
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks every value; the first problem found is returned, naming its key.
    pub fn validate(&self) -> Result<(), String> {
        check_batching("batching", &self.batching)?;
        self.explain.validate()?;
        self.dashboard.validate()?;
        if self.require_signature && self.trusted_keys.is_empty() {
            return Err("require_signature is set but trusted_keys is empty: name the public keys to trust".into());
        }
        if self.trust.ids().count() != self.trusted_keys.len() {
            return Err("trusted_keys were not read (Config::read_trusted_keys)".into());
        }
        if let Some(url) = &self.registry_url {
            flywheel_registry::Remote::shared(url).map_err(|e| format!("model_repository: {e}"))?;
        }
        if !(500..=600_000).contains(&self.fleet.lease_ttl_ms) {
            return Err(format!("fleet.lease_ttl_ms must be in 500..=600000, given {}", self.fleet.lease_ttl_ms));
        }
        if self.fleet.evidence_stale_ms < 1000 {
            return Err(format!(
                "fleet.evidence_stale_ms must be at least 1000, given {}",
                self.fleet.evidence_stale_ms
            ));
        }
        if let Some(name) = &self.fleet.replica
            && !flywheel_registry::valid_model_name(name)
        {
            return Err(format!("fleet.replica {name:?}: use letters, digits, '_', '-' and '.'"));
        }
        if !(100..=3_600_000).contains(&self.registry.poll_interval_ms) {
            return Err(format!(
                "registry.poll_interval_ms must be in 100..=3600000, given {}",
                self.registry.poll_interval_ms
            ));
        }
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
            if let Some(score) = &m.score {
                score.validate(&format!("models.{name}.score"))?;
            }
            if let Some(policy) = &m.explain {
                policy.validate(&format!("models.{name}.explain"))?;
            }
            if let Some(rate) = m.sample_rate.filter(|r| !(0.0..=1.0).contains(r)) {
                return Err(format!("models.{name}.sample_rate must be in 0..=1, given {rate}"));
            }
        }
        self.server.validate()?;
        self.check_credentials()?;
        self.version_policy.validate("version_policy")?;
        for (name, m) in &self.models {
            if let Some(policy) = &m.version_policy {
                policy.validate(&format!("models.{name}.version_policy"))?;
                if m.rollout.is_some() {
                    return Err(format!(
                        "models.{name}: version_policy and rollout cannot both be set (a rollout names its versions)"
                    ));
                }
            }
        }
        if !((1 << 20)..=(64 << 30)).contains(&self.max_warmup_bytes) {
            return Err(format!("max_warmup_bytes must be in 1048576..=68719476736, given {}", self.max_warmup_bytes));
        }
        if !((1 << 10)..=(64 << 30)).contains(&self.max_model_file_bytes) {
            return Err(format!(
                "max_model_file_bytes must be in 1024..=68719476736, given {}",
                self.max_model_file_bytes
            ));
        }
        if self.max_in_flight > 1_000_000 {
            return Err(format!("max_in_flight must be at most 1000000 (0 = no limit), given {}", self.max_in_flight));
        }
        if let Some(limit) = self.grpc_max_message_bytes {
            if !(1024..=(2usize << 30) - 1).contains(&limit) {
                return Err(format!(
                    "grpc_max_message_bytes must be in 1024..=2147483647 (gRPC's 2 GiB), given {limit}"
                ));
            }
            if limit > self.server.max_in_flight_bytes {
                return Err(format!(
                    "grpc_max_message_bytes ({limit}) must not exceed server.max_in_flight_bytes ({}): no such message could be admitted",
                    self.server.max_in_flight_bytes
                ));
            }
        }
        if self.max_body_bytes > self.server.max_in_flight_bytes {
            return Err(format!(
                "max_body_bytes ({}) must not exceed server.max_in_flight_bytes ({}): no such request could be admitted",
                self.max_body_bytes, self.server.max_in_flight_bytes
            ));
        }
        if self.max_body_bytes < 1024 {
            return Err(format!("max_body_bytes must be at least 1024, given {}", self.max_body_bytes));
        }
        if self.http_threads > 256 {
            return Err(format!("http_threads must be at most 256 (0 = automatic), given {}", self.http_threads));
        }
        if !(10..=3_600_000).contains(&self.controller_interval_ms) {
            return Err(format!(
                "controller_interval_ms must be in 10..=3600000, given {}",
                self.controller_interval_ms
            ));
        }
        if self.shutdown_grace_ms > 600_000 {
            return Err(format!("shutdown_grace_ms must be at most 600000, given {}", self.shutdown_grace_ms));
        }
        Ok(())
    }

    /// Tokens long enough to resist guessing, and none missing on a reachable address.
    /// A policy that waits for an approver needs someone who can approve: with the admin API
    /// guarded, `admin_token` or a credential with the `approve` role.
    fn check_approvers(&self) -> Result<(), String> {
        use crate::server::auth::{Role, guarded};
        let approver = self.admin_token.is_some() || self.credentials.iter().any(|c| c.roles.contains(&Role::Approve));
        if approver || !guarded(self, Role::Approve) {
            return Ok(());
        }
        let waiting = self.models.iter().find_map(|(name, m)| {
            let policy = m.rollout.as_ref()?.policy.as_ref()?;
            (policy.require_approval != ApprovalPoint::None).then_some(name)
        });
        match waiting {
            Some(name) => Err(format!(
                "models.{name}.rollout.policy.require_approval is set, but no credential has the 'approve' role \
                 (and there is no admin_token): nobody could approve"
            )),
            None => Ok(()),
        }
    }

    fn check_credentials(&self) -> Result<(), String> {
        let singles: Vec<&str> =
            [&self.admin_token, &self.feedback_token].into_iter().flatten().map(String::as_str).collect();
        crate::server::auth::validate(&self.credentials, &singles, MIN_TOKEN_CHARS)?;
        self.check_approvers()?;
        for (key, token) in [("admin_token", &self.admin_token), ("feedback_token", &self.feedback_token)] {
            // The token itself is never echoed: the message gives its length only.
            if let Some(t) = token.as_ref().filter(|t| t.chars().count() < MIN_TOKEN_CHARS) {
                return Err(format!(
                    "{key} must be at least {MIN_TOKEN_CHARS} characters, given one of {} (e.g. `openssl rand -hex 16`)",
                    t.chars().count()
                ));
            }
        }
        if self.listen.ip().is_loopback() || self.insecure_allow_unauthenticated {
            return Ok(());
        }
        use crate::server::auth::Role;
        // A credential of its own for labels: label senders never need the admin secret.
        let has = |role: Role| self.credentials.iter().any(|c| c.roles.contains(&role));
        let missing: Vec<&str> = [
            ("admin_token", self.admin_token.is_some() || has(Role::Operate)),
            ("feedback_token", self.feedback_token.is_some() || has(Role::Label)),
        ]
        .iter()
        .filter(|(_, set)| !set)
        .map(|(k, _)| *k)
        .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(format!(
            "listen = {} is reachable from other hosts, so {} must be set (config, or FLYWHEEL_ADMIN_TOKEN / \
             FLYWHEEL_FEEDBACK_TOKEN, or [[credentials]] with the operate and label roles); to run without them \
             anyway set insecure_allow_unauthenticated = true",
            self.listen,
            missing.join(" and ")
        ))
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

    /// The object store finalized sample and label files are copied to, if any.
    pub fn sample_store_url(&self) -> Option<String> {
        match self.sampling.store_url.as_deref() {
            Some("none") => None,
            Some(url) => Some(url.trim_end_matches('/').to_owned()),
            None => self.registry_url.as_ref().map(|r| format!("{r}/.data")),
        }
    }

    /// Largest gRPC message: `grpc_max_message_bytes`, else `max_body_bytes`.
    pub fn grpc_message_limit(&self) -> usize {
        self.grpc_max_message_bytes.unwrap_or(self.max_body_bytes)
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
            inline_max_us: o.inline_max_us.unwrap_or(base.inline_max_us),
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
            max_warmup_bytes: self.max_warmup_bytes,
            inline_max: Duration::from_micros(b.inline_max_us),
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
        // Strictly increasing: each step is judged on the evidence gathered at its own weight.
        if p.steps.is_empty() || p.steps.iter().any(|w| *w == 0 || *w > 100) || p.steps.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(format!("{at}.policy.steps must be increasing weights in 1..=100, given {:?}", p.steps));
        }
        p.thresholds.validate().map_err(|e| format!("{at}.policy.{e}"))?;
    }
    if hyper::header::HeaderName::from_bytes(r.routing_key_header.as_bytes()).is_err() {
        return Err(format!("{at}.routing_key_header is not a valid header name, given {:?}", r.routing_key_header));
    }
    Ok(())
}

impl Config {
    /// The version policy of `model` (its own, else the top-level one).
    pub fn version_policy_for(&self, model: &str) -> &VersionPolicy {
        self.models.get(model).and_then(|m| m.version_policy.as_ref()).unwrap_or(&self.version_policy)
    }

    /// The rollout of `model`, if it has one.
    pub fn rollout_for(&self, model: &str) -> Option<&Rollout> {
        self.models.get(model).and_then(|m| m.rollout.as_ref())
    }

    /// `model`'s `[score]` section, if it has one.
    pub fn score_for(&self, model: &str) -> Option<&crate::model::score::ScoreConfig> {
        self.models.get(model).and_then(|m| m.score.as_ref())
    }
}

/// `Ok` when `value` is in `lo..=hi`; otherwise the message every range check gives:
/// `<at>.<key> must be in <lo>..=<hi>, given <value>`.
pub fn check_range(at: &str, key: &str, value: u64, lo: u64, hi: u64) -> Result<(), String> {
    if (lo..=hi).contains(&value) { Ok(()) } else { Err(format!("{at}.{key} must be in {lo}..={hi}, given {value}")) }
}

fn check_batching(at: &str, b: &Batching) -> Result<(), String> {
    let range = |key: &str, value: u64, lo: u64, hi: u64| check_range(at, key, value, lo, hi);
    range("max_batch_size", b.max_batch_size as u64, 0, 65_536)?;
    range("max_queue_delay_us", b.max_queue_delay_us, 0, 1_000_000)?;
    range("queue_capacity", b.queue_capacity as u64, 1, 1_000_000)?;
    range("instances", b.instances as u64, 1, 64)?;
    range("intra_op_threads", b.intra_op_threads as u64, 1, 256)?;
    range("inline_max_us", b.inline_max_us, 0, 10_000)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
