//! One retraining cycle against a registry and sample files laid out as the gateway writes them.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema};
use flywheel_registry::Registry;

use crate::config::TrainerConfig;
use crate::cycle::{RunRecord, read_records, run};
use crate::device::DeviceChoice;
use crate::synthetic::{DriftKind, Row, Synthetic};
use crate::test_files::{ts, write};
use crate::train::TrainConfig;

pub const T0: i64 = 1_790_000_000_000_000;

/// Writes `rows` as served samples of model `fraud` (one row per request, 10 ms apart) and
/// their labels; `flip` replaces each label by a coin toss with that probability.
fn served(dir: &Path, rows: &[Row], flip: f64) {
    let ids: Vec<String> = (0..rows.len()).map(|i| format!("r{i}")).collect();
    let times: Vec<i64> = (0..rows.len() as i64).map(|i| T0 + i * 10_000).collect();
    let mut fields = vec![
        Field::new("request_id", DataType::Utf8, false),
        Field::new("row", DataType::UInt32, false),
        Field::new("time", ts(), false),
        Field::new("arm", DataType::Utf8, false),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(ids.clone())),
        Arc::new(UInt32Array::from(vec![0u32; rows.len()])),
        Arc::new(TimestampMicrosecondArray::from(times.clone()).with_timezone("UTC")),
        Arc::new(StringArray::from(vec!["champion"; rows.len()])),
    ];
    for j in 0..12 {
        fields.push(Field::new(format!("in_input_{j}"), DataType::Float32, true));
        columns.push(Arc::new(Float32Array::from(rows.iter().map(|r| r.features[j] as f32).collect::<Vec<_>>())));
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
    write(&dir.join("samples/model=fraud/date=2026-09-21/part-0.parquet"), batch);
    let mut rng = fastrand::Rng::with_seed(99);
    let labels: Vec<f64> =
        rows.iter().map(|r| if rng.f64() < flip { f64::from(u8::from(rng.bool())) } else { r.label }).collect();
    let rows: Vec<(String, u32, f64, i64)> =
        ids.into_iter().zip(labels).zip(times).map(|((id, label), t)| (id, 0, label, t + 1_000_000)).collect();
    crate::test_files::labels(dir, ("fraud", "2026-09-21"), "part-0.parquet", &rows);
}

fn quick_train() -> TrainConfig {
    TrainConfig {
        hidden: vec![16],
        epochs: 150,
        learning_rate: 0.03,
        device: DeviceChoice::Cpu,
        ..TrainConfig::default()
    }
}

/// A registry with a champion trained before the drift, and `rows` drifted rows served since.
pub fn setup(rows: usize, flip: f64) -> (tempfile::TempDir, TrainerConfig) {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(dir.path().join("models"));
    crate::bootstrap::bootstrap(&registry, "fraud", "champion", 6000, 1, &quick_train(), None).unwrap();
    let drifted: Vec<Row> =
        Synthetic { seed: 2, drift: DriftKind::Both, onset: 0, ramp: 0 }.stream().take(rows).collect();
    served(&dir.path().join("samples"), &drifted, flip);
    let config = TrainerConfig {
        registry: dir.path().join("models"),
        samples: dir.path().join("samples"),
        model: "fraud".into(),
        min_rows: 500,
        slice_feature: Some("in_input_7".into()),
        train: quick_train(),
        gate: flywheel_shadow::GatePolicy { max_slice_auc_drop: 0.05, ..Default::default() },
        ..TrainerConfig::default()
    };
    (dir, config)
}

fn last_record(config: &TrainerConfig) -> RunRecord {
    read_records(&Registry::open(&config.registry), "fraud").pop().unwrap()
}

#[test]
fn after_drift_a_better_model_is_registered_with_complete_lineage_profile_and_alias() {
    let (dir, mut config) = setup(5000, 0.0);
    let (key_id, private, public) = flywheel_registry::signing::generate_key_pair(&dir.path().join("k")).unwrap();
    config.signing_key = Some(private);
    let record = run(&config, Some(serde_json::json!({"drift_event": {"feature": "in_input_7"}})), None);
    assert_eq!(record.outcome, "registered", "{record:#?}");
    let logged = last_record(&config);
    assert_eq!((&logged.time, &logged.outcome, logged.version), (&record.time, &record.outcome, record.version));
    assert_eq!(logged.digest(), record.digest());
    let registry = Registry::open(&config.registry);
    assert_eq!(registry.resolve("fraud", "challenger").unwrap(), 2);
    assert_eq!(registry.resolve("fraud", "champion").unwrap(), 1, "promotion is the gateway's job");
    let manifest = registry.version("fraud", 2).unwrap().manifest.unwrap().unwrap();
    assert_eq!(manifest.parent_version, Some(1));
    let data = manifest.data.as_ref().unwrap();
    assert_eq!(Some(data.digest.as_str()), record.digest());
    assert_eq!(data.rows, 5000);
    assert!(data.window.as_ref().unwrap().contains('/'));
    assert!(manifest.code_revision.unwrap().starts_with("flywheel-trainer"));
    assert_eq!(manifest.hyperparameters["hidden"], serde_json::json!([16]));
    assert!(manifest.evaluation["export_max_abs_difference"].as_f64().unwrap() <= 1e-4);
    let gate = manifest.gate.unwrap();
    assert_eq!(gate["verdict"]["passed"], true);
    assert!(gate["verdict"]["candidate"]["auc"].as_f64() > gate["verdict"]["champion"]["auc"].as_f64());
    assert_eq!(manifest.trigger.unwrap()["drift_event"]["feature"], "in_input_7");
    let trusted = flywheel_registry::TrustedKeys::from_files(&[public]).unwrap();
    let signed = registry.check_signature(&registry.version("fraud", 2).unwrap(), &trusted, None).unwrap();
    assert_eq!(signed, Some(key_id), "the candidate is signed with signing_key");
    let profile = registry.profile("fraud", 2).unwrap().unwrap();
    assert_eq!(profile.features.len(), 12);
    assert_eq!(profile.features[0].name, "in_input_0");
    assert_eq!(record.training.as_ref().unwrap()["warm_start"], "from the given model's weights");
    for stage in ["assemble", "train", "export_check", "gate", "register"] {
        assert!(record.stages_ms.contains_key(stage), "{stage} timed: {:?}", record.stages_ms);
    }
    // While version 2 rolls out, another cycle does nothing.
    let again = run(&config, None, None);
    assert_eq!(again.outcome, "skipped", "{again:#?}");
    assert_eq!(registry.versions("fraud").unwrap().0.len(), 2);
}

#[test]
fn when_labels_are_noise_the_gate_rejects_and_nothing_is_registered() {
    let (_dir, config) = setup(5000, 1.0);
    let record = run(&config, None, None);
    assert_eq!(record.outcome, "rejected", "{record:#?}");
    assert!(record.reasons.iter().any(|r| r.starts_with("AUC")), "{:?}", record.reasons);
    assert!(record.gate.as_ref().unwrap()["verdict"]["candidate"]["auc"].is_number());
    let registry = Registry::open(&config.registry);
    assert_eq!(registry.versions("fraud").unwrap().0.len(), 1);
    assert!(registry.resolve("fraud", "challenger").is_err());
}

#[test]
fn a_command_is_held_to_the_same_checks() {
    let (dir, mut config) = setup(2000, 0.0);
    // Fails: its stderr ends up in the record.
    config.command = Some("echo 'no GPU here' >&2; exit 3".into());
    let r = run(&config, None, None);
    assert_eq!(r.outcome, "failed");
    assert!(r.reasons[0].contains("no GPU here"), "{:?}", r.reasons);
    // Writes nothing.
    config.command = Some("true".into());
    assert!(run(&config, None, None).reasons[0].contains("wrote no model"));
    // Writes a model clients could not call (16 inputs instead of 12).
    let wrong = dir.path().join("wrong.onnx");
    std::fs::write(&wrong, flywheel_onnx::fixtures::tiny(1).to_onnx(1)).unwrap();
    config.command = Some(format!("cp {} \"$FLYWHEEL_MODEL_OUT\"", wrong.display()));
    let r = run(&config, None, None);
    assert!(r.reasons[0].contains("does not load") || r.reasons[0].contains("signature"), "{:?}", r.reasons);
    // Hands back the champion itself: loads and checks fine, but is no better.
    let champion = dir.path().join("models/fraud/1/model.onnx");
    config.command = Some(format!(
        "test \"$FLYWHEEL_FEATURES\" = 12 && test -s \"$FLYWHEEL_TRAIN_PARQUET\" && cp {} \"$FLYWHEEL_MODEL_OUT\"",
        champion.display()
    ));
    let r = run(&config, None, None);
    assert_eq!(r.outcome, "rejected", "{r:#?}");
    assert_eq!(r.training.unwrap()["device"], "command");
}

#[test]
fn two_trainers_registering_at_once_end_with_one_candidate_and_the_conflict_recorded() {
    let (_dir, config) = setup(5000, 0.0);
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let config = config.clone();
            std::thread::spawn(move || run(&config, None, None))
        })
        .collect();
    let mut records: Vec<RunRecord> = runs.into_iter().map(|t| t.join().unwrap()).collect();
    records.sort_by(|a, b| a.outcome.cmp(&b.outcome));
    let outcomes: Vec<&str> = records.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(outcomes, ["conflict", "registered"], "{records:#?}");
    assert!(
        records[0].reasons.last().unwrap().contains("alias 'challenger' of model 'fraud' is version"),
        "{:?}",
        records[0].reasons
    );
    let registry = Registry::open(&config.registry);
    assert_eq!(registry.resolve("fraud", "challenger").ok(), records[1].version, "the registered one is the candidate");
}

#[test]
fn a_promotion_during_training_is_gated_against_the_new_champion_and_recorded_as_the_parent() {
    let (_dir, mut config) = setup(5000, 0.0);
    let registry = Registry::open(&config.registry);
    // Version 2: the champion's own file, published but not the champion yet.
    let champion_file = registry.version("fraud", 1).unwrap().model_file();
    let bytes = std::fs::read(&champion_file).unwrap();
    let v2 = registry.publish("fraud", &bytes, flywheel_registry::ManifestDraft::default()).unwrap().version;
    // The "training" promotes version 2 meanwhile (as the controller or an operator would)
    // and hands back the champion's file.
    let aliases = config.registry.join("fraud").join(flywheel_registry::ALIASES_FILE);
    config.command = Some(format!(
        "printf '{{\"champion\": {v2}}}' > '{}' && cp '{}' \"$FLYWHEEL_MODEL_OUT\"",
        aliases.display(),
        champion_file.display()
    ));
    let record = run(&config, None, None);
    assert_eq!(record.champion, Some(v2), "{record:#?}");
    assert!(
        record.reasons.iter().any(|r| r.contains("moved from version 1 to 2 during training; gated against 2")),
        "{:?}",
        record.reasons
    );
    // The same file as the new champion: no gain, so nothing is registered against a stale parent.
    assert_eq!(record.outcome, "rejected", "{record:#?}");
}

/// One sample row answered by `version` of `fraud` (as the gateway writes it, version column and
/// output included).
fn served_by(dir: &Path, id: &str, version: u64, time_us: i64, file: &str) {
    use arrow_array::{Int32Array, Int64Array, UInt64Array};
    let mut fields = vec![
        Field::new("request_id", DataType::Utf8, false),
        Field::new("row", DataType::UInt32, false),
        Field::new("time", ts(), false),
        Field::new("model", DataType::Utf8, false),
        Field::new("version", DataType::UInt64, false),
        Field::new("arm", DataType::Utf8, false),
        Field::new("status", DataType::Int32, false),
        Field::new("latency_us", DataType::Int64, false),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![id])),
        Arc::new(UInt32Array::from(vec![0u32])),
        Arc::new(TimestampMicrosecondArray::from(vec![time_us]).with_timezone("UTC")),
        Arc::new(StringArray::from(vec!["fraud"])),
        Arc::new(UInt64Array::from(vec![version])),
        Arc::new(StringArray::from(vec!["canary"])),
        Arc::new(Int32Array::from(vec![200])),
        Arc::new(Int64Array::from(vec![900i64])),
    ];
    for j in 0..12 {
        fields.push(Field::new(format!("in_input_{j}"), DataType::Float32, true));
        columns.push(Arc::new(Float32Array::from(vec![j as f32])));
    }
    fields.push(Field::new("out_output_0", DataType::Float32, true));
    columns.push(Arc::new(Float32Array::from(vec![0.93f32])));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
    write(&dir.join(format!("samples/model=fraud/date=2026-09-22/{file}")), batch);
}

#[test]
fn lineage_of_a_request_served_by_a_retrained_version_reaches_the_bootstrap_and_tampering_fails_loudly() {
    use flywheel_registry::lineage::{Sources, lineage, report};
    let (dir, mut config) = setup(3000, 0.0);
    // A fleet's sample store (the local folder stands for the trainer's copy of it).
    config.samples_url = Some("memory://lineage-fleet/data".into());
    let record = run(&config, Some(serde_json::json!({"drift_event": {"feature": "in_input_7", "seq": 4}})), None);
    assert_eq!(record.outcome, "registered", "{record:#?}");
    let samples = dir.path().join("samples");
    let store = flywheel_registry::Remote::shared("memory://lineage-fleet/data").unwrap();
    let put = flywheel_registry::copy_down(&store, &["training-sets", "model=fraud"], &dir.path().join("put")).unwrap();
    assert_eq!(put, [format!("{}.json", record.digest().unwrap())], "the record is in the fleet's store too");
    // A label that arrives after training (a relabel of a row inside its window) does not change
    // what the version was trained on.
    crate::test_files::labels(&samples, ("fraud", "2026-09-23"), "part-late.parquet", &[("r5", 0, 0.5, T0 * 2)]);
    served_by(&samples, "req-by-2", 2, T0 + 86_400_000_000, "part-9.parquet");
    // A replica's late upload: a labelled row served inside the training window, which the
    // version was not trained on (its training-set record lists the files it read).
    let set = flywheel_registry::training_set::TrainingSet::read(&samples, "fraud", record.digest().unwrap());
    let set = set.unwrap().expect("the cycle recorded its training set");
    assert!(set.files.iter().any(|f| f.path == "samples/model=fraud/date=2026-09-21/part-0.parquet"), "{set:?}");
    served_by(&samples, "late", 1, T0 + 5_000, "part-late.parquet");
    crate::test_files::labels(&samples, ("fraud", "2026-09-22"), "part-late.parquet", &[("late", 0, 1.0, T0 + 6_000)]);
    let audit = dir.path().join("models/audit.jsonl");
    let lines = [
        r#"{"time":"2026-09-22T10:00:00.000Z","model":"fraud","actor":"controller","action":"await_approval","from":1,"to":2,"reason":"step 1 passed","evidence":null}"#,
        r#"{"time":"2026-09-22T10:05:00.000Z","model":"fraud","actor":"admin","action":"approve","from":null,"to":2,"reason":"approved leaving step 1","evidence":null,"credential":"bob"}"#,
        r#"{"time":"2026-09-22T10:05:01.000Z","model":"fraud","actor":"controller","action":"promote","from":1,"to":2,"reason":"approved by bob","evidence":null,"credential":"bob"}"#,
        r#"{"time":"2026-09-22T10:05:01.000Z","model":"other","actor":"controller","action":"promote","from":1,"to":2,"reason":"","evidence":null}"#,
    ];
    std::fs::write(&audit, lines.join("\n") + "\n").unwrap();
    let sources = Sources { sample_dir: samples.clone(), audit_logs: vec![audit], verify_data: true };
    let registry = Registry::open(&config.registry);

    let found = lineage(&registry, &sources, "req-by-2", None).unwrap();
    assert_eq!((found.model.as_str(), found.version), ("fraud", 2));
    assert_eq!(found.rows[0].outputs["out_output_0"], serde_json::json!(0.93f32));
    assert_eq!(found.rows[0].inputs.len(), 12);
    let chain: Vec<u64> = found.versions.iter().map(|v| v.version).collect();
    assert_eq!(chain, [2, 1], "back to the bootstrap version");
    let v2 = &found.versions[0];
    let check = v2.data_check.as_ref().unwrap();
    assert!(check.verified && check.method == "files", "{check:?}");
    assert_eq!(check.later_files, [("samples/model=fraud/date=2026-09-22/part-late.parquet".to_owned(), 1)]);
    assert_eq!(check.recomputed_digest.as_deref(), record.digest());
    assert_eq!(v2.manifest.as_ref().unwrap().trigger.as_ref().unwrap()["drift_event"]["feature"], "in_input_7");
    let actions: Vec<&str> = v2.decisions.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["await_approval", "approve", "promote"], "this model's decisions, in time order");
    assert!(found.versions[1].data_check.is_none(), "synthetic bootstrap data is not in the sample store");
    let text = report(&found);
    for needle in [
        "by version 2 on the canary arm",
        "hash to the recorded digest",
        "approve by admin (bob)",
        "parent: none (the first version)",
    ] {
        assert!(text.contains(needle), "{needle:?} in:\n{text}");
    }
    assert!(lineage(&registry, &sources, "never-served", None).unwrap_err().to_string().contains("never-served"));

    // One feature value of one training row changed in its sample file: the re-check fails.
    let mut rows: Vec<Row> =
        Synthetic { seed: 2, drift: DriftKind::Both, onset: 0, ramp: 0 }.stream().take(3000).collect();
    rows[100].features[3] += 1.0;
    served(&samples, &rows, 0.0);
    let tampered = lineage(&registry, &sources, "req-by-2", None).unwrap();
    let check = tampered.versions[0].data_check.as_ref().unwrap();
    assert!(!check.verified && check.detail.starts_with("MISMATCH"), "{check:?}");
}
