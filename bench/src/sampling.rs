//! `bench sampling`: what the tap costs the primary. In one run, throughput and latency with
//! sampling at 0%, 10% and 100% (drift detectors on: the model has a reference profile), and
//! the tap channel's drops.

use std::fmt::Write as _;
use std::time::Duration;

use flywheel_onnx::fixtures::tiny;
use flywheel_registry::{ManifestDraft, ReferenceProfile, Registry};

use crate::procs::{Gateway, LoadRun, Window, load, which};
use crate::rollout::get;
use crate::summary::Summary;

/// A registry at `root` whose `tiny` champion has a reference profile (uniform on [-1, 1] per
/// feature), so the drift detectors run on its traffic.
pub fn tiny_champion_with_profile(root: &std::path::Path) -> anyhow::Result<()> {
    let registry = Registry::open(root);
    let v = registry.publish("tiny", &tiny(1).to_onnx(1), ManifestDraft::default())?.version;
    registry.set_alias("tiny", "champion", v)?;
    let mut rng = fastrand::Rng::with_seed(1);
    let rows: Vec<Vec<f64>> = (0..5000).map(|_| (0..16).map(|_| rng.f64() * 2.0 - 1.0).collect()).collect();
    let names: Vec<String> = (0..16).map(|i| flywheel_registry::samples::input_column("input", i)).collect();
    registry.write_profile("tiny", v, &ReferenceProfile::from_rows(&names, &rows, None, 1000))?;
    Ok(())
}

/// Runs the three phases; returns the Markdown report.
pub fn run(window: Window, concurrency: usize, pin: bool) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("registry");
    tiny_champion_with_profile(&root)?;
    let config = dir.path().join("gateway.toml");
    let write = |rate: f64| {
        std::fs::write(
            &config,
            format!("[models.tiny]\nsample_rate = {rate}\n[models.tiny.rollout]\nchampion = \"champion\"\n"),
        )
    };
    write(0.0)?;
    let pin = pin && which("taskset") && std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    let mut gateway = Gateway::start(&root, Some(&config), pin)?;
    let run = LoadRun { model: "tiny", features: 16, concurrency, binary: true, get: None };
    let mut results: Vec<(f64, Summary)> = Vec::new();
    for rate in [0.0, 0.1, 1.0] {
        write(rate)?;
        // The watcher applies config edits within its debounce; give it a comfortable margin.
        std::thread::sleep(Duration::from_millis(1500));
        let summary = load(&gateway.addr, &run, window, pin)?;
        eprintln!("sampling {:>5.1}%: {}", rate * 100.0, summary.line());
        results.push((rate, summary));
    }
    let metrics = get(&gateway.addr, "/metrics")?;
    gateway.stop();
    let metric = |name: &str| -> f64 {
        0.0 + metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let base = results[0].1.requests_per_second;
    let mut out = String::new();
    writeln!(
        out,
        "# Sampling cost (tiny model, c={concurrency}, binary, drift detectors on, {})\n",
        if pin { "pinned" } else { "unpinned" }
    )?;
    writeln!(out, "| sampling | req/s | vs 0% | p50 µs | p99 µs | errors |\n|---|---|---|---|---|---|")?;
    for (rate, s) in &results {
        writeln!(
            out,
            "| {:.0}% | {:.0} | {:.3}× | {:.1} | {:.1} | {} |",
            rate * 100.0,
            s.requests_per_second,
            s.requests_per_second / base,
            s.p50_us,
            s.p99_us,
            s.errors
        )?;
    }
    writeln!(
        out,
        "\nSample rows written: {:.0}; tap channel drops: {:.0}; sample write errors: {:.0}.",
        metric("flywheel_sample_rows_total"),
        metric("flywheel_tap_dropped_total"),
        metric("flywheel_sample_write_errors_total")
    )?;
    Ok(out)
}
