//! One retraining cycle: assemble the recent labelled rows, train (built in or the user's
//! command), export with the champion's signature and check the export through ONNX Runtime,
//! gate the candidate against the champion on the same holdout, and register a winner with full
//! lineage, its reference profile and the candidate alias. Every cycle, whatever its outcome,
//! is appended to the model's run log (`<registry>/<model>/trainer-runs.jsonl`).

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use flywheel_onnx::Mlp;
use flywheel_registry::manifest::SampleWindow;
use flywheel_registry::training_set::TrainingSet;
use flywheel_registry::{AliasChange, DataLineage, ManifestDraft, ReferenceProfile, Registry};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::config::TrainerConfig;
use crate::dataset::{AssembleSpec, Dataset, assemble};
use crate::score::Scorer;

/// File name of a model's trainer run log, beside its versions.
pub const RUNS_FILE: &str = flywheel_registry::TRAINER_RUNS_FILE;

/// What happened in one cycle (one line of the run log).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct RunRecord {
    /// With a registry in object storage: `<unix ms>-trainer-<n>`, the record's object name
    /// under `<model>/trainer-runs/` there (gateways copy those into their run logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// RFC 3339 time the cycle ended.
    pub time: String,
    pub model: String,
    /// `registered`, `rejected` (the gate said no), `failed` (an error stopped it) or
    /// `skipped` (nothing to do, e.g. a candidate is already rolling out).
    pub outcome: String,
    /// The registered version.
    pub version: Option<u64>,
    /// The champion it was judged against.
    pub champion: Option<u64>,
    /// What started it (a drift event, or `{"manual": true}`).
    pub trigger: Option<Value>,
    /// Digest, rows and window of the data used.
    pub data: Option<Value>,
    /// Where training ran, and the throughput.
    pub training: Option<Value>,
    /// Milliseconds per stage: assemble, train, export, gate, register.
    pub stages_ms: BTreeMap<String, u64>,
    pub gate: Option<Value>,
    pub reasons: Vec<String>,
}

impl RunRecord {
    pub fn digest(&self) -> Option<&str> {
        self.data.as_ref()?.get("digest")?.as_str()
    }
    pub fn rows(&self) -> u64 {
        self.data.as_ref().and_then(|d| d.get("rows")).and_then(Value::as_u64).unwrap_or(0)
    }
}

/// A trained model before the checks.
pub struct Candidate {
    pub bytes: Vec<u8>,
    /// The model as trained, when the built-in trainer made it (checked against the export).
    pub in_memory: Option<Mlp>,
    pub hyperparameters: Map<String, Value>,
    pub training: Value,
}

/// Names the champion's input and output, so the candidate is exported with the same ones.
pub struct ChampionSignature {
    pub input: String,
    pub output: String,
    pub features: usize,
}

/// Runs one cycle for `config.model`, triggered by `trigger`, and appends its record to the run
/// log. `since_us` restricts the data to rows served from then on (e.g. since the drift).
pub fn run(config: &TrainerConfig, trigger: Option<Value>, since_us: Option<i64>) -> RunRecord {
    let mut record = RunRecord {
        model: config.model.clone(),
        trigger: Some(trigger.unwrap_or_else(|| json!({"manual": true}))),
        ..RunRecord::default()
    };
    if let Err(reason) = cycle(config, since_us, &mut record) {
        record.outcome = "failed".into();
        record.reasons.push(reason);
    }
    record.time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    append_record(&config.registry_handle(), &record);
    record
}

fn cycle(config: &TrainerConfig, since_us: Option<i64>, record: &mut RunRecord) -> Result<(), String> {
    // A registry or samples in object storage: bring the local copies up to date first.
    config.refresh()?;
    let registry = config.publishing_registry()?;
    let model = config.model.as_str();
    if let Ok(v) = registry.resolve(model, &config.candidate_alias) {
        record.outcome = "skipped".into();
        record.reasons.push(format!("version {v} is '{}' and still rolling out", config.candidate_alias));
        return Ok(());
    }
    let (champion_version, champion_bytes) = current_champion(&registry, config)?;
    record.champion = Some(champion_version);
    let mut champion = Scorer::open(&champion_bytes, config.ort_library.as_deref())?;

    let t = Instant::now();
    let dataset = assemble(&assemble_spec(config, since_us)).map_err(|e| e.to_string())?;
    record.stages_ms.insert("assemble".into(), elapsed_ms(t));
    let signature = champion_signature(&champion, &dataset)?;
    record.data = Some(json!({
        "digest": dataset.digest,
        "rows": dataset.train.y.len() + dataset.holdout.y.len(),
        "train_rows": dataset.train.y.len(),
        "holdout_rows": dataset.holdout.y.len(),
        "positives": dataset.train.y.iter().chain(&dataset.holdout.y).filter(|y| **y >= 0.5).count(),
        "window": window_text(dataset.window_us),
    }));

    let t = Instant::now();
    let candidate = match &config.command {
        Some(command) => crate::byo::train(command, config, &dataset, &signature)?,
        None => builtin(config, &dataset, &signature, &champion_bytes)?,
    };
    record.stages_ms.insert("train".into(), elapsed_ms(t));
    record.training = Some(candidate.training.clone());

    let t = Instant::now();
    let mut scorer = Scorer::open(&candidate.bytes, config.ort_library.as_deref())
        .map_err(|e| format!("the candidate does not load in ONNX Runtime: {e}"))?;
    scorer
        .signature
        .compatible_with(&champion.signature)
        .map_err(|e| format!("the candidate's signature would break clients: {e}"))?;
    let scores = scorer.score(&dataset.holdout.x)?;
    if let Some(bad) = scores.iter().find(|p| !(0.0..=1.0).contains(*p)) {
        return Err(format!("the candidate's output is not a probability: {bad} on a holdout row"));
    }
    let export_difference = match &candidate.in_memory {
        Some(mlp) => Some(export_difference(mlp, &dataset, &scores, config.export_tolerance)?),
        None => None,
    };
    record.stages_ms.insert("export_check".into(), elapsed_ms(t));

    // The gate is against the champion current now: a promotion during training moved it.
    let (now_champion, now_bytes) = current_champion(&registry, config)?;
    let champion_version = if now_champion == champion_version {
        champion_version
    } else {
        record.reasons.push(format!(
            "the champion moved from version {champion_version} to {now_champion} during training; gated against {now_champion}"
        ));
        champion = Scorer::open(&now_bytes, config.ort_library.as_deref())?;
        record.champion = Some(now_champion);
        now_champion
    };
    let t = Instant::now();
    let champion_scores = champion.score(&dataset.holdout.x)?;
    let slices = slices(config, &dataset)?;
    let verdict = flywheel_shadow::gate(&config.gate, &scores, &champion_scores, &dataset.holdout.y, slices.as_deref());
    record.stages_ms.insert("gate".into(), elapsed_ms(t));
    record.gate = Some(json!({"verdict": verdict, "policy": config.gate}));
    record.reasons.extend(verdict.reasons.clone());
    if !verdict.passed {
        record.outcome = "rejected".into();
        return Ok(());
    }

    let t = Instant::now();
    let sample_window = SampleWindow {
        first_row: dataset.window_us.0,
        last_row: dataset.window_us.1,
        labels_until: dataset.labels_until_us,
    };
    let rows = (dataset.train.y.len() + dataset.holdout.y.len()) as u64;
    record_training_set(config, &dataset, rows, sample_window)?;
    let draft = ManifestDraft {
        parent_version: Some(champion_version),
        data: Some(DataLineage {
            digest: dataset.digest.clone(),
            rows,
            window: Some(window_text(dataset.window_us)),
            sample_window_us: Some(sample_window),
        }),
        code_revision: Some(code_revision(config)),
        hyperparameters: candidate.hyperparameters.clone(),
        evaluation: evaluation(&verdict, export_difference, &candidate.training),
        gate: record.gate.clone(),
        trigger: record.trigger.clone(),
        description: Some(format!(
            "retrained on {} labelled rows after drift; beats version {champion_version}",
            dataset.train.y.len()
        )),
    };
    // The profile is published with the version (one atomic rename): the version never
    // serves without it.
    let train_scores = scorer.score(&dataset.train.x)?;
    let profile = ReferenceProfile::from_rows(
        &dataset.features,
        &dataset.train.x,
        Some(&train_scores),
        config.profile_sample_size,
    );
    let manifest =
        registry.publish_with_profile(model, &candidate.bytes, draft, Some(&profile)).map_err(|e| e.to_string())?;
    record.version = Some(manifest.version);
    // One compare-and-set: the champion is still the one gated against (the recorded parent),
    // and no other candidate took the alias meanwhile (a second trainer, a rollout in progress).
    let changes = [
        AliasChange::require(&config.champion_alias, Some(champion_version)),
        AliasChange::swap(&config.candidate_alias, None, Some(manifest.version)),
    ];
    if let Err(e) = registry.change_aliases(model, &changes) {
        record.outcome = "conflict".into();
        record
            .reasons
            .push(format!("version {} was published but not made '{}': {e}", manifest.version, config.candidate_alias));
        return Ok(());
    }
    record.stages_ms.insert("register".into(), elapsed_ms(t));
    record.outcome = "registered".into();
    Ok(())
}

/// Writes which files the dataset was read from beside the samples (and to the fleet's sample
/// store), before the version that names its digest is published: lineage re-assembles exactly
/// these rows later, whatever a replica uploads afterwards.
fn record_training_set(
    config: &TrainerConfig,
    dataset: &Dataset,
    rows: u64,
    window: SampleWindow,
) -> Result<(), String> {
    let set = TrainingSet {
        model: config.model.clone(),
        digest: dataset.digest.clone(),
        rows,
        window_us: window,
        files: dataset.files.clone(),
        created_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    };
    let remote = config.samples_url.as_deref().map(flywheel_registry::Remote::shared).transpose();
    let remote = remote.map_err(|e| format!("sample store: {e}"))?;
    set.write(&config.samples, remote.as_deref()).map_err(|e| format!("recording the training set: {e}"))
}

/// The champion alias's version and its verified bytes.
fn current_champion(registry: &Registry, config: &TrainerConfig) -> Result<(u64, Vec<u8>), String> {
    let model = config.model.as_str();
    let version = registry
        .resolve(model, &config.champion_alias)
        .map_err(|e| format!("champion alias '{}' of model '{model}': {e}", config.champion_alias))?;
    let bytes = registry
        .version(model, version)
        .and_then(|entry| registry.verify(&entry))
        .map_err(|e| format!("champion version {version}: {e}"))?
        .bytes;
    Ok((version, bytes))
}

pub fn assemble_spec(config: &TrainerConfig, since_us: Option<i64>) -> AssembleSpec {
    let window_start = (config.window_s > 0).then(|| now_us() - config.window_s as i64 * 1_000_000);
    AssembleSpec {
        sample_dir: config.samples.clone(),
        model: config.model.clone(),
        since_us: since_us.max(window_start),
        until_us: None,
        labels_until_us: None,
        holdout_fraction: config.holdout_fraction,
        min_rows: config.min_rows,
        max_nan_rate: config.max_nan_rate,
        min_per_class: config.min_per_class,
        only_files: None,
    }
}

/// The champion's input/output names, checked against the dataset's columns.
fn champion_signature(champion: &Scorer, dataset: &Dataset) -> Result<ChampionSignature, String> {
    let input = champion.signature.inputs[0].name.clone();
    let output = champion.signature.outputs[0].name.clone();
    let expected: Vec<String> =
        (0..champion.features).map(|i| flywheel_registry::samples::input_column(&input, i)).collect();
    if dataset.features != expected {
        return Err(format!(
            "the samples have feature columns {:?}, but the champion takes '{input}' with {} values ({:?}...)",
            dataset.features,
            champion.features,
            expected.first()
        ));
    }
    Ok(ChampionSignature { input, output, features: champion.features })
}

fn builtin(
    config: &TrainerConfig,
    dataset: &Dataset,
    signature: &ChampionSignature,
    champion: &[u8],
) -> Result<Candidate, String> {
    // Warm start from the champion when it is one of ours with the configured widths.
    let init = match Mlp::from_onnx(champion) {
        Ok(mlp) => Some(mlp),
        Err(why) if config.train.warm_start => {
            tracing::info!("no warm start: the champion is not a Flywheel MLP ({why})");
            None
        }
        Err(_) => None,
    };
    let mut trained = crate::train::train_from(&dataset.train, &config.train, init.as_ref())?;
    if let Some(note) = &trained.device.note {
        tracing::info!("{note}");
    }
    trained.model.input_name = signature.input.clone();
    trained.model.output_name = signature.output.clone();
    let mut hyperparameters = match serde_json::to_value(&config.train) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    hyperparameters.insert("trainer".into(), json!("builtin (burn 0.21)"));
    let training = json!({
        "device": trained.device.name,
        "device_note": trained.device.note,
        "warm_start": trained.warm_start,
        "epochs_run": trained.epochs_run,
        "best_validation_loss": trained.best_validation_loss,
        "train_rows": trained.train_rows,
        "seconds": trained.seconds,
        "row_epochs_per_second": trained.row_epochs_per_second(),
    });
    Ok(Candidate { bytes: trained.model.to_onnx(1), in_memory: Some(trained.model), hyperparameters, training })
}

/// Largest |ONNX Runtime − in-memory| score on the holdout; above `tolerance` is an error.
fn export_difference(mlp: &Mlp, dataset: &Dataset, onnx: &[f64], tolerance: f64) -> Result<f64, String> {
    let mut worst = 0.0f64;
    for (row, served) in dataset.holdout.x.iter().zip(onnx) {
        let input: Vec<f32> = row.iter().map(|v| *v as f32).collect();
        let expected = f64::from(mlp.forward(&input)[0]);
        worst = worst.max((expected - served).abs());
    }
    if worst > tolerance {
        return Err(format!(
            "the exported model differs from the trained one by up to {worst:e} (limit {tolerance:e})"
        ));
    }
    Ok(worst)
}

/// Each holdout row's slice name, from `slice_feature`.
fn slices(config: &TrainerConfig, dataset: &Dataset) -> Result<Option<Vec<String>>, String> {
    let Some(feature) = &config.slice_feature else { return Ok(None) };
    let column = dataset.features.iter().position(|f| f == feature).ok_or_else(|| {
        format!("slice_feature '{feature}' is not a sample column; the columns are {:?}", dataset.features)
    })?;
    Ok(Some(dataset.holdout.x.iter().map(|r| format!("{feature}={}", r[column])).collect()))
}

fn evaluation(verdict: &flywheel_shadow::GateVerdict, export: Option<f64>, training: &Value) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("holdout".into(), json!(verdict.candidate));
    map.insert("champion_on_holdout".into(), json!(verdict.champion));
    map.insert("auc_difference".into(), json!(verdict.auc_difference));
    if let Some(d) = export {
        map.insert("export_max_abs_difference".into(), json!(d));
    }
    map.insert("training".into(), training.clone());
    map
}

/// The trainer's version and, when run from a git checkout, its commit.
fn code_revision(config: &TrainerConfig) -> String {
    let base = format!("flywheel-trainer {}", env!("CARGO_PKG_VERSION"));
    let git = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match (git, &config.command) {
        (Some(rev), Some(cmd)) => format!("{base} (git {rev}); command: {cmd}"),
        (Some(rev), None) => format!("{base} (git {rev})"),
        (None, Some(cmd)) => format!("{base}; command: {cmd}"),
        (None, None) => base,
    }
}

fn window_text((start, end): (i64, i64)) -> String {
    let time = |us: i64| {
        let t = UNIX_EPOCH + std::time::Duration::from_micros(us.max(0) as u64);
        humantime::format_rfc3339_millis(t).to_string()
    };
    format!("{}/{}", time(start), time(end))
}

fn elapsed_ms(t: Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

pub fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// Appends `record` to the model's run log (one line, one write).
pub fn append_record(registry: &Registry, record: &RunRecord) {
    use std::io::Write;
    let path = registry.root().join(&record.model).join(RUNS_FILE);
    let mut record = record.clone();
    if let Some(remote) = registry.remote() {
        use std::sync::atomic::{AtomicU64, Ordering};
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let n = RUNS.fetch_add(1, Ordering::Relaxed) % 1_000_000;
        let id = format!("{:013}-trainer-{n:06}", flywheel_registry::now_ms());
        record.id = Some(id.clone());
        let parts = [record.model.as_str(), flywheel_registry::TRAINER_RUNS_DIR, &format!("{id}.json")];
        if let Err(e) = remote.put_object(&parts, serde_json::to_vec(&record).unwrap_or_default()) {
            tracing::warn!(error = %e, "trainer run not put to the store; the fleet's gateways will not show it");
        }
    }
    let mut line = serde_json::to_vec(&record).unwrap_or_default();
    line.push(b'\n');
    let written =
        std::fs::OpenOptions::new().create(true).append(true).open(&path).and_then(|mut f| f.write_all(&line));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "trainer run not logged");
    }
}

/// The model's run log, oldest first (unreadable lines skipped).
pub fn read_records(registry: &Registry, model: &str) -> Vec<RunRecord> {
    std::fs::read_to_string(registry.root().join(model).join(RUNS_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// One line describing a run (for `trainer watch` and the demo's timeline).
pub fn summary(r: &RunRecord) -> String {
    let total: u64 = r.stages_ms.values().sum();
    let training = r.training.as_ref().map_or(String::new(), |t| {
        format!(
            "trained {:.2} s on {} with {} rows; ",
            t["seconds"].as_f64().unwrap_or(0.0),
            t["device"].as_str().unwrap_or("?"),
            t["train_rows"]
        )
    });
    let gate = r.gate.as_ref().map_or(String::new(), |g| {
        let v = &g["verdict"];
        format!(
            "gate: AUC {:.3} vs champion {:.3}, log loss {:.3} vs {:.3}",
            v["candidate"]["auc"].as_f64().unwrap_or(f64::NAN),
            v["champion"]["auc"].as_f64().unwrap_or(f64::NAN),
            v["candidate"]["log_loss"].as_f64().unwrap_or(f64::NAN),
            v["champion"]["log_loss"].as_f64().unwrap_or(f64::NAN),
        )
    });
    match r.outcome.as_str() {
        "registered" => format!(
            "run: registered version {} as the candidate in {:.2} s ({training}{gate})",
            r.version.unwrap_or(0),
            total as f64 / 1000.0
        ),
        "rejected" => {
            format!("run: rejected in {:.2} s ({training}{gate}): {}", total as f64 / 1000.0, r.reasons.join("; "))
        }
        other => format!("run: {other}: {}", r.reasons.join("; ")),
    }
}
