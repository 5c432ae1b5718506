//! Explanations: per-feature Shapley attributions of a served version's score (the output and
//! column its [`ScoreSpec`] names) for rows of its one tabular input, against a background
//! sample of the version's training data (`background` in its `profile.json`).
//!
//! Each version gets its own explainer on first use: a second ONNX Runtime session on the same
//! verified bytes, with one intra-op thread, so explanation batches never queue behind or in
//! front of serving batches. Explanation work is bounded ([`ExplainSettings::max_concurrent`])
//! and shed first: a full budget, or a version with a serving backlog, refuses or stops it.

pub mod auto;
pub mod shapley;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ort::environment::Environment;
use ort::session::Session;
use serde::Deserialize;

use crate::batch::ort_values::{from_ort, to_ort};
use crate::model::ModelVersion;
use crate::model::score::ScoreSpec;
use crate::model::signature::Signature;
use crate::protocol::{DataType, Tensor, TensorData};
pub use shapley::{Attribution, ShapleySettings, top};

/// The error an explanation stopped for serving ends with.
pub const SHED: &str = "explanation shed: the version has a serving backlog";

/// `[explain]`: how explanations are computed and bounded.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExplainSettings {
    /// Explanations computed at once, server-wide; beyond it `/explain` answers 503.
    pub max_concurrent: usize,
    /// Rows one `/explain` request may ask for.
    pub max_rows: usize,
    /// Largest feature count explained exactly (every coalition: `2^F x background` rows).
    pub exact_max_features: usize,
    /// Orderings sampled above that (antithetic pairs).
    pub permutations: usize,
    /// Background rows used (the first of the profile's); fewer is faster and coarser.
    pub background_rows: usize,
    /// Reason codes per row (the largest attributions by magnitude).
    pub top: usize,
    /// Most model rows one request (or one automatic row) may cost; a request over it is
    /// refused up front, naming the cost.
    pub max_evaluations: u64,
    /// Share of one core automatic explanations may take over time: after each model call the
    /// thread sleeps so that computing is at most this share of its time. On machines whose
    /// cores share execution units, this, not the scheduler, is what keeps serving's p99.
    pub auto_cpu_share: f64,
}

impl Default for ExplainSettings {
    fn default() -> Self {
        Self {
            max_concurrent: 1,
            max_rows: 16,
            exact_max_features: 12,
            permutations: 64,
            background_rows: 100,
            top: 5,
            max_evaluations: 20_000_000,
            auto_cpu_share: 0.1,
        }
    }
}

impl ExplainSettings {
    pub fn validate(&self) -> Result<(), String> {
        let checks = [
            ("max_concurrent", self.max_concurrent, 1, 64),
            ("max_rows", self.max_rows, 1, 4096),
            ("exact_max_features", self.exact_max_features, 0, 16),
            ("permutations", self.permutations, 4, 100_000),
            ("background_rows", self.background_rows, 1, 10_000),
            ("top", self.top, 0, 1000),
        ];
        for (key, value, lo, hi) in checks {
            if !(lo..=hi).contains(&value) {
                return Err(format!("explain.{key} must be in {lo}..={hi}, given {value}"));
            }
        }
        if !(self.auto_cpu_share > 0.0 && self.auto_cpu_share <= 1.0) {
            return Err(format!("explain.auto_cpu_share must be in (0, 1], given {}", self.auto_cpu_share));
        }
        if !(1000..=10_000_000_000).contains(&self.max_evaluations) {
            return Err(format!(
                "explain.max_evaluations must be in 1000..=10000000000, given {}",
                self.max_evaluations
            ));
        }
        Ok(())
    }

    pub fn shapley(&self) -> ShapleySettings {
        ShapleySettings {
            exact_max_features: self.exact_max_features,
            permutations: self.permutations,
            ..ShapleySettings::default()
        }
    }
}

/// The background of `target` from its profile: feature names and at most
/// `settings.background_rows` rows.
pub fn background(
    reloader: &crate::rollout::Reloader,
    target: &ExplainTarget,
    settings: &ExplainSettings,
) -> Result<(Vec<String>, Vec<Vec<f64>>), String> {
    let registry = reloader.registry().ok_or("no registry to read the background from")?;
    let Some(profile) = registry.profile(&target.model, target.version).map_err(|e| e.to_string())? else {
        return Ok((Vec::new(), Vec::new()));
    };
    let names = profile.features.iter().map(|f| f.name.clone()).collect();
    let mut rows = profile.background;
    rows.truncate(settings.background_rows);
    Ok((names, rows))
}

/// What an explainer is built from, taken from the version when a request chose it.
#[derive(Clone)]
pub struct ExplainTarget {
    pub model: String,
    pub version: u64,
    pub path: PathBuf,
    pub sha256: String,
    pub signature: Signature,
    pub score: ScoreSpec,
    pub slot: Arc<ExplainerSlot>,
}

impl ExplainTarget {
    pub fn of(mv: &ModelVersion) -> Self {
        Self {
            model: mv.model.clone(),
            version: mv.version,
            path: mv.path.clone(),
            sha256: mv.sha256.clone(),
            signature: mv.signature.clone(),
            score: mv.score.clone(),
            slot: Arc::clone(&mv.explainer),
        }
    }

    /// The one input explained: `(name, datatype, features)`, or why this model cannot be.
    pub fn tabular_input(&self) -> Result<(String, DataType, usize), String> {
        let inputs = &self.signature.inputs;
        let [input] = inputs.as_slice() else {
            return Err(format!("explanations need a model with one input; this one has {}", inputs.len()));
        };
        let features = match input.shape.as_slice() {
            [batch, f] if *batch < 0 && *f > 0 => *f as usize,
            shape => {
                return Err(format!(
                    "explanations need input '{}' shaped [batch, features] with a fixed feature count, given {shape:?}",
                    input.name
                ));
            }
        };
        if !matches!(input.datatype, DataType::Fp32 | DataType::Fp64) {
            return Err(format!("explanations need an FP32 or FP64 input; '{}' is {}", input.name, input.datatype));
        }
        Ok((input.name.clone(), input.datatype, features))
    }
}

/// A version's explainer, made on first use and dropped with the version; or why it could not
/// be made, kept for [`RETRY_OPEN`] so a stream of rows does not re-read the profile each.
#[derive(Default)]
pub struct ExplainerSlot(Mutex<Option<Opened>>);

/// An opened explainer, or why it could not be opened and when that was found.
type Opened = Result<Arc<Explainer>, (String, std::time::Instant)>;

/// How long a failure to open an explainer is answered from memory.
const RETRY_OPEN: std::time::Duration = std::time::Duration::from_secs(5);

impl ExplainerSlot {
    /// The explainer, opening it (reading and checking the model file again, reading the
    /// background with `background`: feature names and rows) the first time. A failure is not
    /// kept for long: after [`RETRY_OPEN`] the next request tries again (a profile may be
    /// written later).
    pub fn get_or_open(
        &self,
        env: &Environment,
        target: &ExplainTarget,
        background: impl FnOnce() -> Result<(Vec<String>, Vec<Vec<f64>>), String>,
    ) -> Result<Arc<Explainer>, String> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(Ok(explainer)) => return Ok(Arc::clone(explainer)),
            Some(Err((why, at))) if at.elapsed() < RETRY_OPEN => return Err(why.clone()),
            _ => {}
        }
        let opened = background().and_then(|b| Explainer::open(env, target, b)).map(Arc::new);
        *slot = Some(opened.clone().map_err(|why| (why, std::time::Instant::now())));
        opened
    }
}

/// A session of one version and the background it explains against.
pub struct Explainer {
    session: Mutex<Session>,
    input: (String, DataType, usize),
    outputs: Vec<crate::model::signature::TensorSpec>,
    score: ScoreSpec,
    pub background: Vec<Vec<f64>>,
}

impl Explainer {
    fn open(
        env: &Environment,
        target: &ExplainTarget,
        (names, background): (Vec<String>, Vec<Vec<f64>>),
    ) -> Result<Self, String> {
        let input = target.tabular_input()?;
        // The background's columns must be the input's, in its order (a profile written from a
        // CSV keeps the CSV's order).
        let expected: Vec<String> =
            (0..input.2).map(|j| flywheel_registry::samples::input_column(&input.0, j)).collect();
        if !background.is_empty() && names != expected {
            let first =
                names.iter().zip(&expected).position(|(a, b)| a != b).unwrap_or(names.len().min(expected.len()));
            return Err(format!(
                "{} version {}: the profile's features are {} columns, the input needs {} ({}); at position {first} the profile has {:?}, the input {:?}",
                target.model,
                target.version,
                names.len(),
                expected.len(),
                expected.first().map_or("", String::as_str),
                names.get(first),
                expected.get(first)
            ));
        }
        if background.is_empty() {
            return Err(format!(
                "{} version {} has no background sample (profile.json `background`): the trainer writes one; \
                 for another model, `registry profile {} {} --rows training.csv`",
                target.model, target.version, target.model, target.version
            ));
        }
        if let Some((i, row)) = background.iter().enumerate().find(|(_, r)| r.len() != input.2) {
            return Err(format!(
                "background row {i} has {} values; input '{}' has {} features",
                row.len(),
                input.0,
                input.2
            ));
        }
        let bytes = std::fs::read(&target.path).map_err(|e| format!("{}: {e}", target.path.display()))?;
        if flywheel_registry::sha256_hex(&bytes) != target.sha256 {
            return Err(format!("{} changed since it was loaded; not explained", target.path.display()));
        }
        let session = crate::model::open_session(env, &bytes, 1)?;
        Ok(Self {
            session: Mutex::new(session),
            input,
            outputs: target.signature.outputs.clone(),
            score: target.score.clone(),
            background,
        })
    }

    /// The input's name and feature count.
    pub fn input(&self) -> (&str, usize) {
        (&self.input.0, self.input.2)
    }

    /// Scores `n` rows given row-major.
    fn scores(&self, rows: &[f64], n: usize) -> Result<Vec<f64>, String> {
        let (name, datatype, features) = &self.input;
        let data = match datatype {
            DataType::Fp64 => TensorData::Fp64(rows.to_vec()),
            _ => TensorData::Fp32(rows.iter().map(|v| *v as f32).collect()),
        };
        let value = to_ort(Tensor { name: name.clone(), shape: vec![n as i64, *features as i64], data })?;
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let inputs: Vec<(String, ort::session::SessionInputValue<'static>)> = vec![(name.clone(), value.into())];
        let outputs = session.run(inputs).map_err(|e| e.to_string())?;
        let tensors = self
            .outputs
            .iter()
            .map(|spec| {
                let value =
                    outputs.get(&spec.name).ok_or_else(|| format!("the model produced no output '{}'", spec.name))?;
                from_ort(&spec.name, value, spec.datatype)
            })
            .collect::<Result<Vec<_>, String>>()?;
        self.score.scores(&tensors).ok_or_else(|| format!("output '{}' gave no score", self.score.output))
    }

    /// Attributions of each row (row-major `rows`, `F` values each). `busy` is asked before
    /// each model call: when it says serving needs the cores, the explanation stops (shed).
    /// With `cpu_share` below 1, each model call is followed by a sleep that keeps computing
    /// to that share of the time.
    pub fn explain(
        &self,
        rows: &[Vec<f64>],
        settings: &ShapleySettings,
        busy: &dyn Fn() -> bool,
        cpu_share: f64,
    ) -> Result<Vec<Attribution>, String> {
        let mut model = |batch: &[f64], n: usize| {
            if busy() {
                return Err(SHED.to_owned());
            }
            let started = std::time::Instant::now();
            let scores = self.scores(batch, n);
            if cpu_share < 1.0 {
                std::thread::sleep(started.elapsed().mul_f64(1.0 / cpu_share - 1.0));
            }
            scores
        };
        rows.iter().map(|x| shapley::explain(x, &self.background, settings, &mut model)).collect()
    }

    /// Model rows explaining `rows` rows costs.
    pub fn cost(&self, rows: usize, settings: &ShapleySettings) -> u64 {
        shapley::cost(self.input.2, self.background.len(), settings).saturating_mul(rows as u64)
    }

    /// The score explained: output name and column.
    pub fn explained(&self) -> (&str, usize) {
        (&self.score.output, self.score.column)
    }
}
