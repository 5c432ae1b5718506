//! `bench compare`: the serving core's report. Starts the release gateway on a fresh demo
//! repository, measures it with `bench load` and measures in-process ONNX Runtime with
//! `bench inproc`, all in one run, and prints ratios. With `taskset` present, the load generator
//! runs on CPU 0 and both the gateway and the in-process baseline on CPU 1, so each system gets
//! the same single core for serving.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use serde::Serialize;

use crate::procs::{Gateway, LoadRun, Window, inproc, load, which};
use crate::summary::Summary;

/// Settings of one compare run.
#[derive(Clone, Debug)]
pub struct CompareSpec {
    pub warmup: Duration,
    pub duration: Duration,
    pub high_concurrency: usize,
    pub results: PathBuf,
    /// Pin the load generator and the systems under test to separate CPUs (needs `taskset`).
    pub pin: bool,
}

#[derive(Serialize)]
struct Measurement {
    system: String,
    model: String,
    scenario: String,
    summary: Summary,
}

/// Runs every measurement, writes the report files and returns the Markdown.
pub fn run(spec: &CompareSpec) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("models");
    flywheel_onnx::fixtures::write_demo_repository(&repo, true)?;
    let window = Window { warmup: spec.warmup, duration: spec.duration };
    let pin = spec.pin && which("taskset") && std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    let mut results = Vec::new();
    for (model, features) in [("tiny", 16usize), ("heavy", 256)] {
        let file = repo.join(model).join("2").join("model.onnx");
        let file = if file.exists() { file } else { repo.join(model).join("1").join("model.onnx") };
        for rows in [1usize, spec.high_concurrency] {
            let summary = inproc(&file, features, rows, window, pin)?;
            eprintln!("in-process {model:5} batch {rows:3}: {}", summary.line());
            results.push(Measurement {
                system: "in-process".into(),
                model: model.into(),
                scenario: format!("batch {rows}"),
                summary,
            });
        }
    }
    let mut gateway = Gateway::start(&repo, None, pin)?;
    let floor = LoadRun { model: "-", features: 0, concurrency: 1, binary: false, get: Some("/v2/health/live") };
    let summary = load(&gateway.addr, &floor, window, pin)?;
    eprintln!("gateway    GET /v2/health/live c=1: {}", summary.line());
    results.push(Measurement { system: "gateway".into(), model: "-".into(), scenario: "http floor".into(), summary });
    for (model, features) in [("tiny", 16usize), ("heavy", 256)] {
        let scenarios = [(1usize, false), (1, true), (spec.high_concurrency, false), (spec.high_concurrency, true)];
        for (concurrency, binary) in scenarios {
            let run = LoadRun { model, features, concurrency, binary, get: None };
            let summary = load(&gateway.addr, &run, window, pin)?;
            let scenario = format!("c={concurrency} {}", if binary { "binary" } else { "json" });
            eprintln!("gateway    {model:5} {scenario:10}: {}", summary.line());
            results.push(Measurement { system: "gateway".into(), model: model.into(), scenario, summary });
        }
    }
    gateway.stop();
    match crate::peer::uvicorn() {
        Some(uvicorn) => {
            // Workers = the cores the peer may use: one when pinned like the gateway.
            let workers = if pin { 1 } else { std::thread::available_parallelism().map_or(1, |n| n.get()) };
            let peer = crate::peer::Peer::start(&uvicorn, &repo, workers, pin.then_some("1"))?;
            for (model, features) in [("tiny", 16usize), ("heavy", 256)] {
                for concurrency in [1, spec.high_concurrency] {
                    let run = LoadRun { model, features, concurrency, binary: false, get: None };
                    let summary = load(&peer.addr, &run, window, pin)?;
                    let scenario = format!("c={concurrency} json");
                    eprintln!("python     {model:5} {scenario:10}: {}", summary.line());
                    results.push(Measurement { system: "python".into(), model: model.into(), scenario, summary });
                }
            }
        }
        None => eprintln!("python peer not set up (scripts/setup-python-peer.sh): its rows are left out"),
    }
    let report = render(&results, spec, pin);
    std::fs::create_dir_all(&spec.results)?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let md = spec.results.join(format!("compare-{stamp}.md"));
    std::fs::write(&md, &report)?;
    std::fs::write(spec.results.join(format!("compare-{stamp}.json")), serde_json::to_vec_pretty(&results)?)?;
    eprintln!("written to {}", md.display());
    Ok(report)
}

fn find<'a>(results: &'a [Measurement], system: &str, model: &str, scenario: &str) -> anyhow::Result<&'a Summary> {
    results
        .iter()
        .find(|m| m.system == system && m.model == model && m.scenario == scenario)
        .map(|m| &m.summary)
        .ok_or_else(|| anyhow!("missing measurement {system} {model} {scenario}"))
}

fn render(results: &[Measurement], spec: &CompareSpec, pin: bool) -> String {
    let mut out = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    out.push_str(&format!(
        "# Gateway vs in-process ONNX Runtime\n\n{cores} cores ({cpu}); {}; warm-up {:?}, window {:?}; {}\n\n",
        flywheel_runtime::resolve(None)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "(library not found)".into()),
        spec.warmup,
        spec.duration,
        if pin { "load generator on CPU 0, gateway and in-process baseline on CPU 1" } else { "no CPU pinning" }
    ));
    out.push_str("| model | measure | in-process | gateway | gateway vs in-process |\n|---|---|---|---|---|\n");
    let c = spec.high_concurrency;
    for model in ["tiny", "heavy"] {
        let rows = (|| -> anyhow::Result<Vec<String>> {
            let one = find(results, "in-process", model, "batch 1")?;
            let batched = find(results, "in-process", model, &format!("batch {c}"))?;
            let json1 = find(results, "gateway", model, "c=1 json")?;
            let bin1 = find(results, "gateway", model, "c=1 binary")?;
            let high = find(results, "gateway", model, &format!("c={c} binary"))?;
            Ok(vec![
                format!(
                    "| {model} | p50 µs, 1 row, c=1 JSON | {:.1} | {:.1} | +{:.1} µs |",
                    one.p50_us,
                    json1.p50_us,
                    json1.p50_us - one.p50_us
                ),
                format!(
                    "| {model} | p50 µs, 1 row, c=1 binary | {:.1} | {:.1} | +{:.1} µs |",
                    one.p50_us,
                    bin1.p50_us,
                    bin1.p50_us - one.p50_us
                ),
                format!(
                    "| {model} | p99 µs, 1 row, c=1 binary | {:.1} | {:.1} | +{:.1} µs |",
                    one.p99_us,
                    bin1.p99_us,
                    bin1.p99_us - one.p99_us
                ),
                format!(
                    "| {model} | rows/s, c=1 | {:.0} | {:.0} | {:.2}× |",
                    one.rows_per_second,
                    bin1.rows_per_second,
                    bin1.rows_per_second / one.rows_per_second
                ),
                format!(
                    "| {model} | rows/s, c={c} vs in-process batch {c} | {:.0} | {:.0} | {:.2}× |",
                    batched.rows_per_second,
                    high.rows_per_second,
                    high.rows_per_second / batched.rows_per_second
                ),
                format!(
                    "| {model} | p50 / p99 µs at c={c} | {:.1} / {:.1} (batch of {c}) | {:.1} / {:.1} | |",
                    batched.p50_us, batched.p99_us, high.p50_us, high.p99_us
                ),
            ])
        })();
        match rows {
            Ok(rows) => rows.into_iter().for_each(|r| out.push_str(&(r + "\n"))),
            Err(e) => out.push_str(&format!("| {model} | {e} | | | |\n")),
        }
    }
    if let Ok(floor) = find(results, "gateway", "-", "http floor") {
        out.push_str(&format!(
            "\nHTTP floor on this machine (GET /v2/health/live, c=1, no inference): p50 {:.1} µs, p99 {:.1} µs. \
             The gateway's own cost per request is its infer p50 minus this floor and minus in-process inference.\n",
            floor.p50_us, floor.p99_us
        ));
    }
    if results.iter().any(|m| m.system == "python") {
        out.push_str("\n| model | measure (JSON) | Python peer | gateway | gateway vs peer |\n|---|---|---|---|---|\n");
        for model in ["tiny", "heavy"] {
            let rows = (|| -> anyhow::Result<Vec<String>> {
                let (p1, g1) =
                    (find(results, "python", model, "c=1 json")?, find(results, "gateway", model, "c=1 json")?);
                let scenario = format!("c={c} json");
                let (ph, gh) =
                    (find(results, "python", model, &scenario)?, find(results, "gateway", model, &scenario)?);
                Ok(vec![
                    format!(
                        "| {model} | p50 µs, c=1 | {:.1} | {:.1} | {:.2}× lower |",
                        p1.p50_us,
                        g1.p50_us,
                        p1.p50_us / g1.p50_us
                    ),
                    format!(
                        "| {model} | p99 µs, c=1 | {:.1} | {:.1} | {:.2}× lower |",
                        p1.p99_us,
                        g1.p99_us,
                        p1.p99_us / g1.p99_us
                    ),
                    format!(
                        "| {model} | rows/s, c={c} | {:.0} | {:.0} | {:.2}× |",
                        ph.rows_per_second,
                        gh.rows_per_second,
                        gh.rows_per_second / ph.rows_per_second
                    ),
                    format!(
                        "| {model} | p99 µs, c={c} | {:.1} | {:.1} | {:.2}× lower |",
                        ph.p99_us,
                        gh.p99_us,
                        ph.p99_us / gh.p99_us
                    ),
                ])
            })();
            match rows {
                Ok(rows) => rows.into_iter().for_each(|r| out.push_str(&(r + "\n"))),
                Err(e) => out.push_str(&format!("| {model} | {e} | | | |\n")),
            }
        }
    }
    out.push_str("\nErrors (non-200) across all gateway runs: ");
    let errors: u64 = results.iter().filter(|m| m.system == "gateway").map(|m| m.summary.errors).sum();
    out.push_str(&format!("{errors}\n"));
    out
}
