//! The first champion: trained on synthetic history (no drift), registered with lineage and a
//! reference profile, and given the champion alias — what the demo and the tests start from.

use flywheel_registry::{DataLineage, Manifest, ManifestDraft, ReferenceProfile, Registry, samples};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::score::Scorer;
use crate::synthetic::{DriftKind, Synthetic, split};
use crate::train::{TrainConfig, train};

/// Tensor names of the synthetic model (the gateway's sample columns follow them).
pub const INPUT: &str = "input";
pub const OUTPUT: &str = "output";

/// Trains on `rows` synthetic rows (seed `seed`), publishes the model as a new version of
/// `model` with its profile, and points `alias` at it.
pub fn bootstrap(
    registry: &Registry,
    model: &str,
    alias: &str,
    rows: usize,
    seed: u64,
    config: &TrainConfig,
    ort_library: Option<&std::path::Path>,
) -> Result<Manifest, String> {
    let data: Vec<_> = Synthetic { seed, drift: DriftKind::None, onset: 0, ramp: 0 }.stream().take(rows).collect();
    let cut = rows * 4 / 5;
    let (train_rows, holdout) = (split(&data[..cut], 0), split(&data[cut..], cut));
    let mut trained = train(&train_rows, config)?;
    trained.model.input_name = INPUT.into();
    trained.model.output_name = OUTPUT.into();
    let bytes = trained.model.to_onnx(1);
    let mut scorer = Scorer::open(&bytes, ort_library)?;
    let quality = flywheel_shadow::Quality::of(&scorer.score(&holdout.x)?, &holdout.y, 0.5);
    let mut digest = Sha256::new();
    for row in &data {
        for v in row.features.iter().chain(std::iter::once(&row.label)) {
            digest.update(v.to_le_bytes());
        }
    }
    let digest: String = digest.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let mut hyperparameters = match serde_json::to_value(config) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    hyperparameters.insert("trainer".into(), json!("builtin (burn 0.21)"));
    let mut evaluation = Map::new();
    evaluation.insert("holdout".into(), json!(quality));
    evaluation.insert(
        "training".into(),
        json!({"device": trained.device.name, "epochs_run": trained.epochs_run, "seconds": trained.seconds}),
    );
    let draft = ManifestDraft {
        parent_version: None,
        data: Some(DataLineage {
            digest,
            rows: rows as u64,
            window: Some(format!("synthetic rows 0..{rows}, seed {seed}")),
            sample_window_us: None,
        }),
        code_revision: Some(format!("flywheel-trainer {}", env!("CARGO_PKG_VERSION"))),
        hyperparameters,
        evaluation,
        gate: None,
        trigger: Some(json!({"bootstrap": true})),
        description: Some(format!("first champion, trained on {cut} synthetic rows without drift")),
    };
    let names: Vec<String> =
        (0..train_rows.x.first().map_or(0, Vec::len)).map(|i| samples::input_column(INPUT, i)).collect();
    let predictions = scorer.score(&train_rows.x)?;
    let profile = ReferenceProfile::from_rows(&names, &train_rows.x, Some(&predictions), 2000);
    let manifest = registry.publish_with_profile(model, &bytes, draft, Some(&profile)).map_err(|e| e.to_string())?;
    registry.set_alias(model, alias, manifest.version).map_err(|e| e.to_string())?;
    Ok(manifest)
}
