//! `bench suite`: every question in one run — the compare report (in-process ORT, gateway,
//! Python peer), a concurrency sweep with its p99-vs-throughput plot, the open-loop knee, 2× the
//! knee, batching off, perf_analyzer as an independent client, hot swaps and shadow, sampling.
//! Writes `suite-<time>.md` and `suite-<time>.svg` to the results folder.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::compare::{self, CompareSpec};
use crate::peer::{Peer, uvicorn};
use crate::procs::{Gateway, LoadRun, Window, load, load_open, which};
use crate::summary::Summary;
use crate::{rollout, sampling};

/// One point of the sweep.
struct Point {
    system: &'static str,
    model: &'static str,
    concurrency: usize,
    summary: Summary,
}

const MODELS: [(&str, usize); 2] = [("tiny", 16), ("heavy", 256)];
const SWEEP: [usize; 4] = [1, 4, 16, 64];
/// The latency target that defines the knee.
const KNEE_P99_MS: f64 = 10.0;

/// Runs the suite and writes the report.
pub fn run(results: &Path, quick: bool) -> anyhow::Result<String> {
    let window = if quick {
        Window { warmup: Duration::from_millis(300), duration: Duration::from_secs(1) }
    } else {
        Window { warmup: Duration::from_secs(1), duration: Duration::from_secs(3) }
    };
    let pin = which("taskset") && std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    let mut out = String::new();
    let spec = CompareSpec {
        warmup: window.warmup,
        duration: window.duration,
        high_concurrency: 64,
        results: results.to_path_buf(),
        pin,
    };
    out.push_str(&compare::run(&spec)?);

    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("models");
    flywheel_onnx::fixtures::write_demo_repository(&repo, true)?;
    let mut points = Vec::new();
    let gateway = Gateway::start(&repo, None, pin)?;
    // The client's own ceiling: the cheapest request the gateway answers, at the sweep's top
    // concurrency. Far above the infer rates, the load generator is not what limits them.
    let floor = LoadRun { model: "-", features: 0, concurrency: 64, binary: false, get: Some("/v2/health/live") };
    let client_ceiling = load(&gateway.addr, &floor, window, pin)?;
    eprintln!("client ceiling (GET /v2/health/live, c=64): {}", client_ceiling.line());
    sweep(&gateway.addr, "gateway", window, pin, &mut points)?;
    let gateway_knee = knee(&gateway.addr, true, pin)?;
    let analyzer = perf_analyzer(&gateway.addr, pin);
    drop(gateway);
    let peer = uvicorn().map(|u| Peer::start(&u, &repo, if pin { 1 } else { 2 }, pin.then_some("1"))).transpose()?;
    let peer_knee = match &peer {
        Some(p) => {
            sweep(&p.addr, "python", window, pin, &mut points)?;
            Some(knee(&p.addr, false, pin)?)
        }
        None => None,
    };
    drop(peer);

    writeln!(
        out,
        "\n## Concurrency sweep (closed loop, 1 row a request)\n\nLoad generator ceiling on its core (GET /v2/health/live, c=64): {:.0} req/s, p99 {:.1} µs.\n",
        client_ceiling.requests_per_second, client_ceiling.p99_us
    )?;
    writeln!(out, "| system | model | c | rows/s | p50 µs | p99 µs | errors |\n|---|---|---|---|---|---|---|")?;
    for p in &points {
        let s = &p.summary;
        writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {} |",
            p.system, p.model, p.concurrency, s.rows_per_second, s.p50_us, s.p99_us, s.errors
        )?;
    }
    writeln!(out, "\n## Knee (open loop, tiny model, highest rate with p99 under {KNEE_P99_MS} ms)\n")?;
    writeln!(out, "| system | knee req/s | p99 µs at the knee |\n|---|---|---|")?;
    writeln!(out, "| gateway (binary) | {:.0} | {:.1} |", gateway_knee.0, gateway_knee.1.p99_us)?;
    if let Some((rate, s)) = &peer_knee {
        writeln!(out, "| Python peer (JSON) | {rate:.0} | {:.1} |", s.p99_us)?;
        writeln!(
            out,
            "\nKnee ratio gateway / peer: {:.1}× (different encodings: the peer speaks JSON only).",
            gateway_knee.0 / rate
        )?;
    }
    out.push_str(&overload(&repo, gateway_knee, pin)?);
    out.push_str(&batching_off(&repo, window, pin)?);
    writeln!(out, "\n## perf_analyzer cross-check (tiny, c=16, binary)\n\n{analyzer}")?;
    let rollout_spec = rollout::RolloutSpec {
        window,
        concurrency: 8,
        swap_every: Duration::from_millis(1000),
        memory_swaps: if quick { 20 } else { 200 },
        pin,
    };
    writeln!(out, "\n{}", rollout::run(&rollout_spec)?)?;
    writeln!(out, "\n{}", sampling::run(window, 16, pin)?)?;

    std::fs::create_dir_all(results)?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let svg_path = results.join(format!("suite-{stamp}.svg"));
    std::fs::write(&svg_path, plot(&points))?;
    writeln!(out, "\nPlot (p99 vs rows/s per system and model, log-log): {}", svg_path.display())?;
    let md = results.join(format!("suite-{stamp}.md"));
    std::fs::write(&md, &out)?;
    eprintln!("written to {}", md.display());
    Ok(out)
}

fn sweep(addr: &str, system: &'static str, window: Window, pin: bool, points: &mut Vec<Point>) -> anyhow::Result<()> {
    for (model, features) in MODELS {
        for concurrency in SWEEP {
            // The peer speaks JSON only; the gateway is swept with binary tensors, as clients that
            // care about speed send them.
            let run = LoadRun { model, features, concurrency, binary: system == "gateway", get: None };
            let summary = load(addr, &run, window, pin)?;
            eprintln!("{system:8} {model:5} c={concurrency:<3}: {}", summary.line());
            points.push(Point { system, model, concurrency, summary });
        }
    }
    Ok(())
}

/// Raises the open-loop rate by 1.5× until p99 passes the target, errors exceed 1% or the
/// achieved rate falls 10% short — twice in a row at the same rate, since one stall on a shared
/// machine can push a 2-second window's p99 over; returns the last rate that held.
fn knee(addr: &str, binary: bool, pin: bool) -> anyhow::Result<(f64, Summary)> {
    let window = Window { warmup: Duration::from_millis(500), duration: Duration::from_secs(2) };
    let run = LoadRun { model: "tiny", features: 16, concurrency: 128, binary, get: None };
    let mut rate = 500.0;
    let mut best = None;
    let holds = |s: &Summary, rate: f64| {
        s.p99_us < KNEE_P99_MS * 1000.0
            && (s.errors as f64) < 0.01 * s.requests.max(1) as f64
            && s.requests_per_second > 0.9 * rate
    };
    for _ in 0..14 {
        let mut s = load_open(addr, &run, rate, window, pin)?;
        eprintln!("open loop {rate:>8.0}/s: {}", s.line());
        if !holds(&s, rate) {
            s = load_open(addr, &run, rate, window, pin)?;
            eprintln!("   again  {rate:>8.0}/s: {}", s.line());
            if !holds(&s, rate) {
                break;
            }
        }
        best = Some((rate, s));
        rate *= 1.5;
    }
    best.ok_or_else(|| anyhow::anyhow!("even {rate} req/s missed the {KNEE_P99_MS} ms p99 target"))
}

/// 2× the knee against a gateway with a short queue: admitted p99, rejections, memory.
fn overload(repo: &Path, knee: (f64, Summary), pin: bool) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("overload.toml");
    std::fs::write(&config, "max_in_flight = 64\n[batching]\nqueue_capacity = 64\n")?;
    let gateway = Gateway::start(repo, Some(&config), pin)?;
    let rss_before = rss_kib(gateway.child.id());
    let run = LoadRun { model: "tiny", features: 16, concurrency: 256, binary: true, get: None };
    let window = Window { warmup: Duration::from_millis(500), duration: Duration::from_secs(4) };
    let s = load_open(&gateway.addr, &run, 2.0 * knee.0, window, pin)?;
    let rss_after = rss_kib(gateway.child.id());
    let total = s.requests + s.errors;
    Ok(format!(
        "\n## Overload at 2× the knee ({:.0} req/s offered, max_in_flight 64, queue_capacity 64)\n\n\
         Admitted: {} ({:.0} req/s), p50 {:.1} µs, p99 {:.1} µs ({:.1}× the knee's p99); refused (503): {} ({:.1}%). \
         Resident memory {} KiB before, {} KiB after.\n",
        2.0 * knee.0,
        s.requests,
        s.requests_per_second,
        s.p50_us,
        s.p99_us,
        s.p99_us / knee.1.p99_us,
        s.errors,
        100.0 * s.errors as f64 / total.max(1) as f64,
        rss_before,
        rss_after
    ))
}

fn batching_off(repo: &Path, window: Window, pin: bool) -> anyhow::Result<String> {
    let mut out = String::from(
        "\n## Dynamic batching on and off (heavy, c=64, binary)\n\n| batching | rows/s | p50 µs | p99 µs |\n|---|---|---|---|\n",
    );
    let dir = tempfile::tempdir()?;
    for (label, toml) in [
        ("on (max_batch_size 64)", "[batching]\nmax_batch_size = 64\n"),
        ("off (max_batch_size 0)", "[batching]\nmax_batch_size = 0\n"),
    ] {
        let config = dir.path().join("batching.toml");
        std::fs::write(&config, toml)?;
        let gateway = Gateway::start(repo, Some(&config), pin)?;
        let run = LoadRun { model: "heavy", features: 256, concurrency: 64, binary: true, get: None };
        let s = load(&gateway.addr, &run, window, pin)?;
        writeln!(out, "| {label} | {:.0} | {:.1} | {:.1} |", s.rows_per_second, s.p50_us, s.p99_us)?;
    }
    Ok(out)
}

/// perf_analyzer (from the test tools) against the gateway, pinned like our load generator.
fn perf_analyzer(addr: &str, pin: bool) -> String {
    let tools = PathBuf::from(".tools/perf_analyzer");
    let binary = tools.join("perf_analyzer");
    if !binary.exists() {
        return "perf_analyzer is not installed (scripts/setup-test-tools.sh); skipped.".into();
    }
    let mut cmd = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(&binary);
        c
    } else {
        Command::new(&binary)
    };
    let output = cmd
        .args([
            "-m",
            "tiny",
            "-u",
            addr,
            "-i",
            "http",
            "--concurrency-range",
            "16",
            "-p",
            "2000",
            "-s",
            "100",
            "-r",
            "3",
        ])
        .env("LD_LIBRARY_PATH", tools.join("lib"))
        .output();
    match output {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let keep: Vec<&str> = text
                .lines()
                .filter(|l| {
                    l.contains("Throughput:")
                        || l.contains("p50 latency")
                        || l.contains("p99 latency")
                        || l.contains("Avg request latency")
                })
                .map(str::trim)
                .collect();
            format!(
                "```\n{}\n```\nCompare with the gateway's c=16 row of the sweep above (our client).",
                keep.join("\n")
            )
        }
        Ok(o) => format!("perf_analyzer failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => format!("perf_analyzer did not start: {e}"),
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// An SVG of p99 latency against throughput (both log scale), one line per system and model.
fn plot(points: &[Point]) -> String {
    let (w, h, m) = (760.0, 480.0, 60.0);
    let xs: Vec<f64> = points.iter().map(|p| p.summary.rows_per_second.max(1.0).log10()).collect();
    let ys: Vec<f64> = points.iter().map(|p| p.summary.p99_us.max(1.0).log10()).collect();
    let (x0, x1) =
        (xs.iter().copied().fold(f64::INFINITY, f64::min).floor(), xs.iter().copied().fold(0.0, f64::max).ceil());
    let (y0, y1) =
        (ys.iter().copied().fold(f64::INFINITY, f64::min).floor(), ys.iter().copied().fold(0.0, f64::max).ceil());
    let sx = |x: f64| m + (x - x0) / (x1 - x0).max(1e-9) * (w - 2.0 * m);
    let sy = |y: f64| h - m - (y - y0) / (y1 - y0).max(1e-9) * (h - 2.0 * m);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let _ = writeln!(svg, "<line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>", h - m, w - m, h - m);
    let _ = writeln!(svg, "<line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>", h - m);
    for d in (x0 as i32)..=(x1 as i32) {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">1e{d}</text>",
            sx(f64::from(d)),
            h - m + 18.0
        );
    }
    for d in (y0 as i32)..=(y1 as i32) {
        let _ =
            writeln!(svg, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">1e{d}</text>", m - 6.0, sy(f64::from(d)) + 4.0);
    }
    let _ = writeln!(svg, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">rows/s (log)</text>", w / 2.0, h - 15.0);
    let _ = writeln!(
        svg,
        "<text x=\"15\" y=\"{}\" transform=\"rotate(-90 15 {})\" text-anchor=\"middle\">p99 µs (log)</text>",
        h / 2.0,
        h / 2.0
    );
    let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];
    let mut series = 0;
    for system in ["gateway", "python"] {
        for (model, _) in MODELS {
            let line: Vec<String> = points
                .iter()
                .zip(xs.iter().zip(&ys))
                .filter(|(p, _)| p.system == system && p.model == model)
                .map(|(_, (x, y))| format!("{:.1},{:.1}", sx(*x), sy(*y)))
                .collect();
            if line.is_empty() {
                continue;
            }
            let color = colors[series % colors.len()];
            let _ = writeln!(
                svg,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
                line.join(" ")
            );
            let _ = writeln!(
                svg,
                "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{system} {model} (c = 1, 4, 16, 64)</text>",
                w - m - 230.0,
                m + 16.0 * series as f64
            );
            series += 1;
        }
    }
    svg.push_str("</svg>\n");
    svg
}
