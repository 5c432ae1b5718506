//! The demo's summary: how long each stage of the loop took, and live quality before the drift,
//! after it, and after the promotion — beside a model trained offline on post-drift data.

use flywheel_registry::Registry;
use flywheel_shadow::Quality;
use serde::Serialize;

use super::DemoArgs;
use super::timeline::Milestones;
use super::traffic::{Answer, Log};
use crate::config::TrainerConfig;
use crate::cycle::{RunRecord, read_records};
use crate::device::DeviceChoice;
use crate::synthetic::{DriftKind, Synthetic};

/// Live quality after promotion must come this close to the offline reference's AUC.
pub const RECOVERY_MARGIN: f64 = 0.05;

#[derive(Debug, Serialize)]
pub struct Phase {
    pub name: &'static str,
    pub requests: usize,
    pub quality: Option<Quality>,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub milestones: Milestones,
    /// (stage, seconds).
    pub stages: Vec<(String, f64)>,
    pub run: Option<RunRecord>,
    pub phases: Vec<Phase>,
    /// AUC of a model trained offline on post-drift rows, on the requests served after promotion.
    pub reference_auc: Option<f64>,
    /// Live AUC after promotion ≥ reference − [`RECOVERY_MARGIN`].
    pub recovered: Option<bool>,
    pub requests: usize,
    pub failed_requests: usize,
    pub failures: Vec<String>,
    pub labels_sent: usize,
}

fn quality(answers: &[&Answer]) -> Option<Quality> {
    let p: Vec<f64> = answers.iter().map(|a| a.prediction).collect();
    let y: Vec<f64> = answers.iter().map(|a| a.label).collect();
    (y.iter().any(|v| *v >= 0.5) && y.iter().any(|v| *v < 0.5)).then(|| Quality::of(&p, &y, 0.5))
}

fn phase(name: &'static str, answers: Vec<&Answer>) -> Phase {
    Phase { name, requests: answers.len(), quality: quality(&answers) }
}

pub fn summarise(
    args: &DemoArgs,
    config: &TrainerConfig,
    marks: &Milestones,
    log: &Log,
    first: u64,
    registry: &Registry,
) -> Summary {
    let run = read_records(registry, &config.model)
        .into_iter()
        .rev()
        .find(|r| r.outcome == "registered" || r.outcome == "rejected");
    let mut stages = Vec::new();
    let drift_at = log.drift_at;
    if let (Some(a), Some(b)) = (drift_at, marks.drift_detected) {
        stages.push(("drift injected → detected".into(), b - a));
    }
    if let Some(r) = &run {
        let total: u64 = r.stages_ms.values().sum();
        let ended = marks.registered.or(marks.rejected);
        if let (Some(d), Some(e)) = (marks.drift_detected, ended) {
            stages.push(("detected → training started (labelled rows arriving)".into(), e - total as f64 / 1000.0 - d));
        }
        for stage in ["assemble", "train", "export_check", "gate", "register"] {
            if let Some(ms) = r.stages_ms.get(stage) {
                stages.push((stage.replace('_', " "), *ms as f64 / 1000.0));
            }
        }
    }
    if let (Some(r), Some(p)) = (marks.registered, marks.promoted) {
        stages.push(("registered → promoted (shadow + canary steps)".into(), p - r));
    }
    if let (Some(a), Some(p)) = (drift_at, marks.promoted) {
        stages.push(("drift injected → promoted (total)".into(), p - a));
    }
    let promoted_at = marks.promoted.unwrap_or(f64::INFINITY);
    let answers = &log.answers;
    let before: Vec<&Answer> = answers.iter().filter(|a| !a.drifted).collect();
    let after_old: Vec<&Answer> =
        answers.iter().filter(|a| a.drifted && a.version == first && a.at < promoted_at).collect();
    let canary: Vec<&Answer> =
        answers.iter().filter(|a| a.drifted && a.version != first && a.at < promoted_at).collect();
    let after_new: Vec<&Answer> = answers.iter().filter(|a| a.at >= promoted_at && a.version != first).collect();
    let reference_auc = (args.label_noise == 0.0 && !after_new.is_empty())
        .then(|| reference(args, config, run.as_ref(), &after_new))
        .flatten();
    let live_after = quality(&after_new).map(|q| q.auc);
    let recovered = reference_auc.zip(live_after).map(|(r, l)| l >= r - RECOVERY_MARGIN);
    Summary {
        milestones: marks.clone(),
        stages,
        run,
        phases: vec![
            phase("before drift (champion)", before),
            phase("after drift, old champion", after_old),
            phase("after drift, candidate as canary", canary),
            phase("after promotion, new champion", after_new),
        ],
        reference_auc,
        recovered,
        requests: answers.len() + log.failures.len(),
        failed_requests: log.failures.len(),
        failures: log.failures.iter().take(5).cloned().collect(),
        labels_sent: log.labels_sent,
    }
}

/// AUC on `answers` of a model trained, with the trainer's settings on CPU, on as many fresh
/// post-drift rows as the loop's own training run had.
fn reference(args: &DemoArgs, config: &TrainerConfig, run: Option<&RunRecord>, answers: &[&Answer]) -> Option<f64> {
    let drift: DriftKind = serde_json::from_value(serde_json::Value::String(args.drift.clone())).ok()?;
    let rows = run.and_then(|r| r.data.as_ref()?.get("train_rows")?.as_u64()).unwrap_or(3000) as usize;
    let data: Vec<_> = Synthetic { seed: args.seed + 1000, drift, onset: 0, ramp: 0 }.stream().take(rows).collect();
    let split = crate::synthetic::split(&data, 0);
    let settings = crate::train::TrainConfig { device: DeviceChoice::Cpu, ..config.train.clone() };
    let model = crate::train::train(&split, &settings).ok()?.model;
    let p: Vec<f64> = answers
        .iter()
        .map(|a| f64::from(model.forward(&a.features.iter().map(|v| *v as f32).collect::<Vec<_>>())[0]))
        .collect();
    let y: Vec<f64> = answers.iter().map(|a| a.label).collect();
    Some(flywheel_shadow::roc_auc(&p, &y))
}

/// Prints the summary tables and where everything was left.
pub fn print(s: &Summary, dir: &std::path::Path) {
    println!("\n── stages ─────────────────────────────────────────────");
    for (stage, seconds) in &s.stages {
        println!("  {stage:<55} {seconds:>8.2} s");
    }
    if let Some(t) = s.run.as_ref().and_then(|r| r.training.as_ref()) {
        println!(
            "  training: {} rows on {}, {} epochs, {:.0} row-epochs/s",
            t["train_rows"],
            t["device"].as_str().unwrap_or("?"),
            t["epochs_run"],
            t["row_epochs_per_second"].as_f64().unwrap_or(0.0)
        );
        for key in ["device_note", "warm_start"] {
            if let Some(text) = t[key].as_str() {
                println!("  {}: {text}", key.replace('_', " "));
            }
        }
    }
    println!("── live quality (labels as sent) ──────────────────────");
    println!("  {:<36} {:>8} {:>7} {:>9} {:>9}", "phase", "requests", "AUC", "log loss", "accuracy");
    for p in &s.phases {
        match &p.quality {
            Some(q) => {
                println!("  {:<36} {:>8} {:>7.3} {:>9.3} {:>9.3}", p.name, p.requests, q.auc, q.log_loss, q.accuracy)
            }
            None => println!("  {:<36} {:>8} {:>7}", p.name, p.requests, "-"),
        }
    }
    if let Some(r) = s.reference_auc {
        println!(
            "  a model trained offline on post-drift rows scores AUC {r:.3} on the post-promotion requests ({})",
            match s.recovered {
                Some(true) => format!("live is within {RECOVERY_MARGIN}"),
                Some(false) => format!("live is NOT within {RECOVERY_MARGIN}"),
                None => "no live AUC".into(),
            }
        );
    }
    println!("  requests: {}, failed: {}, labels sent: {}", s.requests, s.failed_requests, s.labels_sent);
    println!("── left for you in {} ──", dir.display());
    println!("  models/fraud/<version>/manifest.json   lineage: parent, data digest, gate evidence, trigger");
    println!("  models/fraud/trainer-runs.jsonl         every training run and verdict");
    println!("  models/fraud/drift-events.jsonl         drift events;  models/audit.jsonl: rollout steps");
    println!("  samples/                                 Parquet samples and labels (DuckDB, pyarrow)");
    println!("  gateway.log, trainer.log, summary.json");
}
