//! Bring your own training: `trainer run --command "python train.py"` runs the user's command
//! instead of the built-in trainer, with this contract (all paths absolute):
//!
//! | variable | meaning |
//! |---|---|
//! | `FLYWHEEL_TRAIN_PARQUET` | training rows: one Float64 column per feature (`in_<input>_<i>`, in input order), `label` (0/1) and `time_us` |
//! | `FLYWHEEL_HOLDOUT_PARQUET` | the newest rows, same columns; the gate judges on them — do not train on them |
//! | `FLYWHEEL_MODEL_OUT` | where to write the ONNX model |
//! | `FLYWHEEL_INPUT_NAME`, `FLYWHEEL_OUTPUT_NAME` | the champion's tensor names: the model takes one FP32 input `[-1, FLYWHEEL_FEATURES]` and its first output is FP32 `[-1, 1]`, the positive-class probability |
//! | `FLYWHEEL_FEATURES`, `FLYWHEEL_FEATURE_COLUMNS` | the feature count and the comma-separated column names |
//! | `FLYWHEEL_SEED` | a seed to use |
//! | `FLYWHEEL_PARAMS_OUT` | optional: a JSON object of hyperparameters to record in the manifest |
//!
//! The command runs through `sh -c` in a fresh temporary folder (its working directory is the
//! trainer's). A non-zero exit fails the cycle with the end of its stderr; its model then goes
//! through the same checks (loads in ONNX Runtime, signature compatible with the champion,
//! outputs are probabilities), the same gate and the same registration as the built-in one.

use std::path::Path;
use std::process::Command;

use serde_json::{Map, Value, json};

use crate::config::TrainerConfig;
use crate::cycle::{Candidate, ChampionSignature};
use crate::dataset::{Dataset, Split};
use crate::table_file::{Column, write};

/// Runs `command` on `dataset` and reads back the model it wrote.
pub fn train(
    command: &str,
    config: &TrainerConfig,
    dataset: &Dataset,
    signature: &ChampionSignature,
) -> Result<Candidate, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("creating a work folder: {e}"))?;
    let (train, holdout) = (dir.path().join("train.parquet"), dir.path().join("holdout.parquet"));
    write_split(&train, &dataset.features, &dataset.train)?;
    write_split(&holdout, &dataset.features, &dataset.holdout)?;
    let (model_out, params_out) = (dir.path().join("model.onnx"), dir.path().join("params.json"));
    let started = std::time::Instant::now();
    let output = Command::new("sh")
        .args(["-c", command])
        .env("FLYWHEEL_TRAIN_PARQUET", &train)
        .env("FLYWHEEL_HOLDOUT_PARQUET", &holdout)
        .env("FLYWHEEL_MODEL_OUT", &model_out)
        .env("FLYWHEEL_PARAMS_OUT", &params_out)
        .env("FLYWHEEL_INPUT_NAME", &signature.input)
        .env("FLYWHEEL_OUTPUT_NAME", &signature.output)
        .env("FLYWHEEL_FEATURES", signature.features.to_string())
        .env("FLYWHEEL_FEATURE_COLUMNS", dataset.features.join(","))
        .env("FLYWHEEL_SEED", config.train.seed.to_string())
        .output()
        .map_err(|e| format!("starting `sh -c {command:?}`: {e}"))?;
    let seconds = started.elapsed().as_secs_f64();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(format!("training command `{command}` failed ({}): {}", output.status, tail.join("\n")));
    }
    let bytes = std::fs::read(&model_out)
        .map_err(|e| format!("training command `{command}` wrote no model at FLYWHEEL_MODEL_OUT: {e}"))?;
    let mut hyperparameters = match std::fs::read(&params_out).ok().map(|b| serde_json::from_slice::<Value>(&b)) {
        None => Map::new(),
        Some(Ok(Value::Object(map))) => map,
        Some(_) => return Err("FLYWHEEL_PARAMS_OUT must hold a JSON object".into()),
    };
    hyperparameters.insert("trainer".into(), json!(format!("command: {command}")));
    let training = json!({"device": "command", "train_rows": dataset.train.y.len(), "seconds": seconds});
    Ok(Candidate { bytes, in_memory: None, hyperparameters, training })
}

fn write_split(path: &Path, features: &[String], split: &Split) -> Result<(), String> {
    let mut columns: Vec<Column<'_>> = features
        .iter()
        .enumerate()
        .map(|(j, name)| Column::F64(name, split.x.iter().map(|r| r[j]).collect()))
        .collect();
    columns.push(Column::F64("label", split.y.clone()));
    columns.push(Column::I64("time_us", split.time_us.clone()));
    write(path, columns)
}
