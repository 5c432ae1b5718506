//! `trainer`: closes the loop — one retraining cycle by hand (`run`), following drift events
//! (`watch`), the first champion (`bootstrap`), the end-to-end demo (`demo`), and tools for
//! synthetic data, datasets and training speed (`generate`, `dataset`, `fit`).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use flywheel_trainer::config::TrainerConfig;
use flywheel_trainer::dataset::{AssembleSpec, assemble};
use flywheel_trainer::device::DeviceChoice;
use flywheel_trainer::synthetic::{DriftKind, FEATURES, Synthetic, split};
use flywheel_trainer::table_file::{Column, write};
use flywheel_trainer::train::{TrainConfig, train};
use flywheel_trainer::watch::{Note, watch};
use flywheel_trainer::{cycle, demo};

/// Flywheel's trainer.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// Where the settings come from: a file, then these flags.
#[derive(Args, Clone)]
struct Settings {
    /// Trainer config (TOML; see configs/trainer.toml). Without it, defaults.
    #[arg(long, env = "FLYWHEEL_TRAINER_CONFIG")]
    config: Option<PathBuf>,
    /// The model registry (the gateway's model_repository): a folder or an object store URL
    /// (s3://bucket/prefix; credentials from AWS_*).
    #[arg(long)]
    registry: Option<PathBuf>,
    /// The gateway's sample folder (holding samples/ and labels/), or the fleet's sample store
    /// URL (default with a registry URL: <registry URL>/.data).
    #[arg(long)]
    samples: Option<PathBuf>,
    #[arg(long)]
    model: Option<String>,
    /// Train with this shell command instead of the built-in trainer (contract: docs/TRAINER.md).
    #[arg(long)]
    command: Option<String>,
    /// auto, cpu or cuda.
    #[arg(long)]
    device: Option<DeviceChoice>,
    /// The gateway's config: `watch` checks that its rollout consumes the trainer's candidates.
    #[arg(long)]
    gateway_config: Option<PathBuf>,
    /// Ed25519 private key (PKCS#8 PEM) that signs every version the trainer registers.
    #[arg(long, env = "FLYWHEEL_SIGNING_KEY")]
    signing_key: Option<PathBuf>,
}

impl Settings {
    fn load(&self) -> anyhow::Result<TrainerConfig> {
        let mut config = match &self.config {
            Some(path) => TrainerConfig::load(path).map_err(anyhow::Error::msg)?,
            None => TrainerConfig::default(),
        };
        config.registry = self.registry.clone().unwrap_or(config.registry);
        config.samples = self.samples.clone().unwrap_or(config.samples);
        config.model = self.model.clone().unwrap_or(config.model);
        config.command = self.command.clone().or(config.command);
        config.train.device = self.device.unwrap_or(config.train.device);
        config.gateway_config = self.gateway_config.clone().or(config.gateway_config);
        config.signing_key = self.signing_key.clone().or(config.signing_key);
        config.validate().map_err(anyhow::Error::msg)?;
        config.localize().map_err(anyhow::Error::msg)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// One cycle now: assemble, train, check the export, gate, register (prints the run record).
    Run {
        #[command(flatten)]
        settings: Settings,
        /// Only rows served at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
    },
    /// Follow the model's drift events and run a cycle when drift trips (until Ctrl-C).
    Watch {
        #[command(flatten)]
        settings: Settings,
    },
    /// Train a first champion on synthetic history and register it with the champion alias.
    Bootstrap {
        #[command(flatten)]
        settings: Settings,
        #[arg(long, default_value_t = 20_000)]
        rows: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// The whole loop on synthetic traffic: gateway + trainer watch, drift injected part-way.
    Demo(demo::DemoArgs),
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
    /// Train on synthetic data and write the ONNX model: training speed and export smoke test.
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
        device: DeviceChoice,
        /// Also score the holdout through ONNX Runtime and compare with the trained model.
        #[arg(long)]
        verify_export: bool,
        #[arg(long)]
        out: PathBuf,
    },
    /// Assemble a model's dataset from the gateway's samples and labels and describe it.
    Dataset {
        #[command(flatten)]
        settings: Settings,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,flywheel_trainer=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Cmd::Run { settings, since } => {
            let config = settings.load()?;
            let since_us = since
                .map(|s| flywheel_trainer::watch::parse_us(&s).with_context(|| format!("--since is not RFC 3339: {s}")))
                .transpose()?;
            let record = cycle::run(&config, None, since_us);
            println!("{}", serde_json::to_string_pretty(&record)?);
            if record.outcome == "failed" {
                std::process::exit(1);
            }
        }
        Cmd::Watch { settings } => {
            let config = settings.load()?;
            match &config.gateway_config {
                Some(path) => flywheel_trainer::contract::check(&config, path).map_err(anyhow::Error::msg)?,
                None => eprintln!(
                    "warning: gateway_config (--gateway-config) is not set: not checking that the gateway's rollout \
                     for '{}' routes, judges and consumes '{}'",
                    config.model, config.candidate_alias
                ),
            }
            let stop = AtomicBool::new(false);
            println!("watching drift events of '{}' in {}", config.model, config.registry.display());
            watch(&config, &stop, |note| println!("{}", describe(&note)));
        }
        Cmd::Bootstrap { settings, rows, seed } => {
            let config = settings.load()?;
            config.refresh().map_err(anyhow::Error::msg)?;
            let registry = config.publishing_registry().map_err(anyhow::Error::msg)?;
            let manifest = flywheel_trainer::bootstrap::bootstrap(
                &registry,
                &config.model,
                &config.champion_alias,
                rows,
                seed,
                &config.train,
                config.ort_library.as_deref(),
            )
            .map_err(anyhow::Error::msg)?;
            println!(
                "registered {} version {} as '{}' in {}",
                config.model,
                manifest.version,
                config.champion_alias,
                config.registry.display()
            );
        }
        Cmd::Demo(args) => std::process::exit(demo::run(args)?),
        Cmd::Generate { rows, seed, drift, onset, ramp, out } => {
            let drift: DriftKind = serde_json::from_value(serde_json::Value::String(drift.clone()))
                .with_context(|| format!("--drift must be none, covariate, concept or both, given {drift:?}"))?;
            let generated: Vec<_> = Synthetic { seed, drift, onset, ramp }.stream().take(rows as usize).collect();
            let mut columns: Vec<Column<'_>> = FEATURES
                .iter()
                .enumerate()
                .map(|(i, name)| Column::F64(name, generated.iter().map(|r| r.features[i]).collect()))
                .collect();
            columns.push(Column::F64("probability", generated.iter().map(|r| r.probability).collect()));
            columns.push(Column::F64("label", generated.iter().map(|r| r.label).collect()));
            write(&out, columns).map_err(anyhow::Error::msg)?;
            let positives = generated.iter().filter(|r| r.label >= 0.5).count();
            println!("wrote {rows} rows ({positives} positive) to {}", out.display());
        }
        Cmd::Fit { rows, hidden, epochs, batch_size, device, verify_export, out } => {
            fit(FitArgs { rows, hidden, epochs, batch_size, device, verify_export }, &out)?;
        }
        Cmd::Dataset { settings } => {
            let config = settings.load()?;
            config.refresh().map_err(anyhow::Error::msg)?;
            let spec = AssembleSpec { min_rows: 1, ..cycle::assemble_spec(&config, None) };
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

struct FitArgs {
    rows: usize,
    hidden: Vec<usize>,
    epochs: usize,
    batch_size: usize,
    device: DeviceChoice,
    verify_export: bool,
}

fn fit(args: FitArgs, out: &std::path::Path) -> anyhow::Result<()> {
    let FitArgs { rows, hidden, epochs, batch_size, device, verify_export } = args;
    let data: Vec<_> = Synthetic { seed: 1, drift: DriftKind::None, onset: 0, ramp: 0 }.stream().take(rows).collect();
    let cut = rows * 4 / 5;
    let (train_rows, holdout) = (split(&data[..cut], 0), split(&data[cut..], cut));
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
    let bytes = trained.model.to_onnx(1);
    std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    if verify_export {
        let mut scorer = flywheel_trainer::score::Scorer::open(&bytes, None).map_err(anyhow::Error::msg)?;
        let served = scorer.score(&holdout.x).map_err(anyhow::Error::msg)?;
        let worst = served.iter().zip(&scores).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        println!(
            "export check: ONNX Runtime vs the trained model on {} holdout rows, max |difference| {worst:e}",
            served.len()
        );
        anyhow::ensure!(worst <= 1e-4, "the export differs from the trained model by {worst:e} (limit 1e-4)");
    }
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
    Ok(())
}

/// One line per watcher note (the demo shows these lines in its timeline).
fn describe(note: &Note) -> String {
    match note {
        Note::Drift(e) => format!(
            "drift: {} on {} of version {} ({:.3} > {:.3}); waiting for labelled rows since {}",
            e.detector, e.feature, e.version, e.statistic, e.threshold, e.window_start
        ),
        Note::Ignored(e, why) => format!("ignored: {} on {}: {why}", e.detector, e.feature),
        Note::Waiting(why) => format!("waiting: {why}"),
        Note::GaveUp(why) => format!("gave up: {why}"),
        Note::Run(r) => cycle::summary(r),
    }
}
