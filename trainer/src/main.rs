//! `trainer`: synthetic data, dataset inspection, a training smoke test (gate, registration and
//! watch are to come).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use arrow_array::{ArrayRef, Float64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use clap::{Parser, Subcommand};
use flywheel_trainer::dataset::{AssembleSpec, assemble};
use flywheel_trainer::synthetic::{DriftKind, FEATURES, Synthetic};
use flywheel_trainer::train::{TrainConfig, train};
use parquet::arrow::ArrowWriter;

/// Flywheel's trainer.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write synthetic fraud-like rows (named features, `label`, `probability`) to Parquet.
    Generate {
        #[arg(long, default_value_t = 10_000)]
        rows: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// none, covariate, concept or both.
        #[arg(long, default_value = "none")]
        drift: String,
        /// Row where the drift starts.
        #[arg(long, default_value_t = 0)]
        onset: u64,
        /// Rows over which it ramps in (0: abrupt).
        #[arg(long, default_value_t = 0)]
        ramp: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Train on synthetic data and write the ONNX model: a smoke test of training and export
    /// (reports rows/s, epochs and holdout AUC).
    Fit {
        #[arg(long, default_value_t = 50_000)]
        rows: usize,
        /// Hidden layer widths, comma-separated; empty for logistic regression.
        #[arg(long, value_delimiter = ',', default_value = "32")]
        hidden: Vec<usize>,
        #[arg(long, default_value_t = 200)]
        epochs: usize,
        /// Rows per optimiser step (0: full batch).
        #[arg(long, default_value_t = 0)]
        batch_size: usize,
        /// auto, cpu or cuda.
        #[arg(long, default_value = "auto")]
        device: flywheel_trainer::device::DeviceChoice,
        #[arg(long)]
        out: PathBuf,
    },
    /// Assemble a model's dataset from the gateway's samples and labels and describe it.
    Dataset {
        /// The gateway's sample folder (holding samples/ and labels/).
        #[arg(long, default_value = "var/samples")]
        samples: PathBuf,
        model: String,
        #[arg(long, default_value_t = 0.2)]
        holdout: f64,
        #[arg(long, default_value_t = 200)]
        min_rows: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Generate { rows, seed, drift, onset, ramp, out } => {
            let drift: DriftKind = serde_json::from_value(serde_json::Value::String(drift.clone()))
                .with_context(|| format!("--drift must be none, covariate, concept or both, given {drift:?}"))?;
            let generated: Vec<_> = Synthetic { seed, drift, onset, ramp }.stream().take(rows as usize).collect();
            let mut fields: Vec<Field> = FEATURES.iter().map(|f| Field::new(*f, DataType::Float64, false)).collect();
            fields.push(Field::new("probability", DataType::Float64, false));
            fields.push(Field::new("label", DataType::Float64, false));
            let mut columns: Vec<ArrayRef> = (0..FEATURES.len())
                .map(|i| {
                    Arc::new(Float64Array::from(generated.iter().map(|r| r.features[i]).collect::<Vec<_>>()))
                        as ArrayRef
                })
                .collect();
            columns.push(Arc::new(Float64Array::from(generated.iter().map(|r| r.probability).collect::<Vec<_>>())));
            columns.push(Arc::new(Float64Array::from(generated.iter().map(|r| r.label).collect::<Vec<_>>())));
            let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
            let file = std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
            let mut writer = ArrowWriter::try_new(file, batch.schema(), None)?;
            writer.write(&batch)?;
            writer.close()?;
            let positives = generated.iter().filter(|r| r.label >= 0.5).count();
            println!("wrote {rows} rows ({positives} positive) to {}", out.display());
        }
        Cmd::Fit { rows, hidden, epochs, batch_size, device, out } => {
            let data: Vec<_> =
                Synthetic { seed: 1, drift: DriftKind::None, onset: 0, ramp: 0 }.stream().take(rows).collect();
            let cut = rows * 4 / 5;
            let split = |r: &[flywheel_trainer::synthetic::Row]| flywheel_trainer::dataset::Split {
                x: r.iter().map(|r| r.features.to_vec()).collect(),
                y: r.iter().map(|r| r.label).collect(),
                time_us: (0..r.len() as i64).collect(),
            };
            let (train_rows, holdout) = (split(&data[..cut]), split(&data[cut..]));
            let config = TrainConfig { hidden, epochs, batch_size, device, ..TrainConfig::default() };
            let trained = train(&train_rows, &config).map_err(anyhow::Error::msg)?;
            if let Some(note) = &trained.device.note {
                eprintln!("{note}");
            }
            let scores: Vec<f64> = holdout
                .x
                .iter()
                .map(|x| f64::from(trained.model.forward(&x.iter().map(|v| *v as f32).collect::<Vec<_>>())[0]))
                .collect();
            std::fs::write(&out, trained.model.to_onnx(1)).with_context(|| format!("writing {}", out.display()))?;
            let auc = flywheel_shadow::roc_auc(&scores, &holdout.y);
            println!(
                "trained on {} rows on {}: {} epochs in {:.2} s ({:.0} row-epochs/s), holdout AUC {auc:.4}; wrote {}",
                trained.train_rows,
                trained.device.name,
                trained.epochs_run,
                trained.seconds,
                trained.row_epochs_per_second(),
                out.display()
            );
        }
        Cmd::Dataset { samples, model, holdout, min_rows } => {
            let spec = AssembleSpec {
                sample_dir: samples,
                model,
                since_us: None,
                until_us: None,
                holdout_fraction: holdout,
                min_rows,
                max_nan_rate: 0.05,
                min_per_class: 10,
            };
            let d = assemble(&spec)?;
            let summary = serde_json::json!({
                "features": d.features,
                "train_rows": d.train.y.len(),
                "holdout_rows": d.holdout.y.len(),
                "positives": d.train.y.iter().chain(&d.holdout.y).filter(|y| **y >= 0.5).count(),
                "digest": d.digest,
                "window_us": [d.window_us.0, d.window_us.1],
            });
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
    }
    Ok(())
}
