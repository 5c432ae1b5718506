//! `bench rollout`: what hot swaps and shadow traffic cost the primary. In one run: the
//! primary's latency at steady state, while the champion is swapped every `swap_every`, and
//! with a 100% shadow; then resident memory after the first swap and after 200 more.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use flywheel_onnx::fixtures::tiny;
use flywheel_registry::{ManifestDraft, Registry};
use serde::Serialize;

use crate::procs::{Gateway, LoadRun, Window, load, which};
use crate::summary::Summary;

/// Settings of one rollout run.
#[derive(Clone, Debug)]
pub struct RolloutSpec {
    pub window: Window,
    pub concurrency: usize,
    pub swap_every: Duration,
    pub memory_swaps: usize,
    pub pin: bool,
}

#[derive(Serialize)]
struct Report {
    steady: Summary,
    swapping: Summary,
    swaps_during_load: usize,
    shadow_100: Summary,
    rss_after_first_swap_kib: u64,
    rss_after_swaps_kib: u64,
    memory_swaps: usize,
}

const CONFIG: &str = "[models.tiny.rollout]\nchampion = \"champion\"\n";

/// Runs every phase and prints the report.
/// Runs every phase; returns the Markdown report.
pub fn run(spec: &RolloutSpec) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("registry");
    let registry = Registry::open(&root);
    let mut seed = 1;
    let mut publish = |registry: &Registry| -> anyhow::Result<u64> {
        seed += 1;
        let v = registry.publish("tiny", &tiny(seed).to_onnx(seed as i64), ManifestDraft::default())?.version;
        Ok(v)
    };
    let first = publish(&registry)?;
    registry.set_alias("tiny", "champion", first)?;
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, CONFIG)?;
    let pin = spec.pin && which("taskset") && std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    let mut gateway = Gateway::start(&root, Some(&config), pin)?;
    let run = LoadRun { model: "tiny", features: 16, concurrency: spec.concurrency, binary: true, get: None };

    let steady = load(&gateway.addr, &run, spec.window, pin)?;
    eprintln!("steady        : {}", steady.line());

    // Swap while loading: the load runs in a thread, swaps here.
    let addr = gateway.addr.clone();
    let window = spec.window;
    let loader = std::thread::spawn(move || {
        let run = LoadRun { model: "tiny", features: 16, concurrency: run.concurrency, binary: true, get: None };
        load(&addr, &run, window, pin)
    });
    std::thread::sleep(spec.window.warmup);
    let until = Instant::now() + spec.window.duration;
    let mut swaps = 0;
    while Instant::now() < until {
        let v = publish(&registry)?;
        registry.set_alias("tiny", "champion", v)?;
        wait_for_champion(&gateway.addr, v)?;
        swaps += 1;
        std::thread::sleep(spec.swap_every);
    }
    let swapping = loader.join().map_err(|_| anyhow!("load thread panicked"))??;
    eprintln!("swapping ({swaps:>3}): {}", swapping.line());

    let shadow_version = publish(&registry)?;
    std::fs::write(
        &config,
        format!("{CONFIG}shadow = {{ version = \"{shadow_version}\", fraction = 1.0, max_in_flight = 64 }}\n"),
    )?;
    wait_for(&gateway.addr, |routing| {
        routing.contains(&format!("\"shadow\":{{\"fraction\":1.0,\"version\":{shadow_version}}}"))
    })?;
    let shadow_100 = load(&gateway.addr, &run, spec.window, pin)?;
    eprintln!("100% shadow   : {}", shadow_100.line());
    std::fs::write(&config, CONFIG)?;

    let v = publish(&registry)?;
    registry.set_alias("tiny", "champion", v)?;
    wait_for_champion(&gateway.addr, v)?;
    let rss_first = rss_kib(gateway.child.id())?;
    for _ in 0..spec.memory_swaps {
        let v = publish(&registry)?;
        registry.set_alias("tiny", "champion", v)?;
        wait_for_champion(&gateway.addr, v)?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = rss_kib(gateway.child.id())?;
    gateway.stop();
    let report = Report {
        steady,
        swapping,
        swaps_during_load: swaps,
        shadow_100,
        rss_after_first_swap_kib: rss_first,
        rss_after_swaps_kib: rss_after,
        memory_swaps: spec.memory_swaps,
    };
    Ok(render(&report, spec, pin))
}

fn render(r: &Report, spec: &RolloutSpec, pin: bool) -> String {
    let mut out = String::new();
    let ratio = |a: &Summary| a.p99_us / r.steady.p99_us;
    let _ = writeln!(
        out,
        "# Hot swap and shadow cost (tiny model, c={}, binary, {})\n",
        spec.concurrency,
        if pin { "pinned" } else { "unpinned" }
    );
    let _ = writeln!(out, "| phase | p50 µs | p99 µs | p99 vs steady | req/s | errors |\n|---|---|---|---|---|---|");
    for (name, s) in [("steady", &r.steady), ("swap every ~{swap}", &r.swapping), ("100% shadow", &r.shadow_100)] {
        let name = name.replace("{swap}", &format!("{:?} ({} swaps)", spec.swap_every, r.swaps_during_load));
        let _ = writeln!(
            out,
            "| {name} | {:.1} | {:.1} | {:.2}× | {:.0} | {} |",
            s.p50_us,
            s.p99_us,
            ratio(s),
            s.requests_per_second,
            s.errors
        );
    }
    let _ = writeln!(
        out,
        "\nResident memory: {} KiB after the first swap, {} KiB after {} more swaps ({:+.1}%).",
        r.rss_after_first_swap_kib,
        r.rss_after_swaps_kib,
        r.memory_swaps,
        (r.rss_after_swaps_kib as f64 / r.rss_after_first_swap_kib as f64 - 1.0) * 100.0
    );
    out
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc/<pid>/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

fn wait_for_champion(addr: &str, version: u64) -> anyhow::Result<()> {
    wait_for(addr, |routing| routing.contains(&format!("\"champion\":{version},")))
}

fn wait_for(addr: &str, done: impl Fn(&str) -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if done(&get(addr, "/admin/routing")?) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("the gateway did not apply the change within 20 s")
}

/// A one-shot HTTP/1.0 GET (the admin API answers loopback clients without a token).
pub fn get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    write!(stream, "GET {path} HTTP/1.0\r\nhost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}
