//! `bench hotpath`: the gateway against the physical limit, with an independent client. In one
//! run, rounds alternating between the systems: the floor server ([`crate::floor`]: the same
//! POST body read, a fixed answer of the gateway's answer size) and the gateway on the tiny
//! model (sampling and drift at their defaults), both driven by wrk pinned to CPU 0 with the
//! server on CPU 1; the heavy model at c=64 against in-process ONNX Runtime at batch 64; and,
//! with valgrind present, instructions per request (callgrind, over a fixed request count on
//! one keep-alive connection) for both servers, a figure this machine's noise does not move;
//! and what drift detection and 100% sampling cost at c=64 ([`crate::tapcost`]).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

use crate::goals_plot::{self, GoalBar};
use crate::procs::{Gateway, Window, context_switches, inproc, pinned, switches_between, this_exe, which};

/// Issue 15's targets: tiny c=64 and heavy against their physical limits (at least), the
/// c=1 p50 above the floor (at most), and drift or 100% sampling against neither (at least).
const SPEED_TARGET: f64 = 0.7;
const C1_EXTRA_TARGET_US: f64 = 20.0;
const BESIDE_SERVING_TARGET: f64 = 0.95;

/// Settings of one hotpath run.
pub struct HotpathSpec {
    pub duration: Duration,
    pub rounds: usize,
    /// Requests measured under callgrind per server (0: skip).
    pub callgrind_requests: usize,
    pub results: PathBuf,
    /// The gateway binary measured (default: the one beside this executable), e.g. an older
    /// build to compare with.
    pub gateway: Option<PathBuf>,
}

/// One wrk measurement.
#[derive(Clone, Copy, Debug, Default)]
pub struct WrkRun {
    pub requests_per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// A one-row JSON request of `features` values.
pub fn infer_body(features: usize) -> String {
    let data: Vec<f32> = (0..features).map(|i| (i as f32 * 0.37).sin()).collect();
    json_infer_body(&[1, features], &data)
}

/// A JSON request of one FP32 input named `input`, its keys in the order Triton's clients
/// write them (`name`, `shape`, `datatype`, `data`; `serde_json::json!` would sort `data`
/// first, which makes the gateway keep it raw and read it twice).
pub fn json_infer_body(shape: &[usize], data: &[f32]) -> String {
    format!(
        r#"{{"inputs":[{{"name":"input","shape":{},"datatype":"FP32","data":{}}}]}}"#,
        serde_json::Value::from(shape.to_vec()),
        serde_json::Value::from(data.to_vec())
    )
}

/// Runs wrk (on CPU 0 when pinning) posting `body` to `url`. A run whose only errors are
/// wrk's timeouts (an answer slower than 2 s: on a shared host, a stall of the whole machine;
/// it happened to the floor server too) is measured once more before it counts as a failure.
pub fn wrk(url: &str, body: &str, connections: usize, duration: Duration, pin: bool) -> anyhow::Result<WrkRun> {
    match wrk_once(url, body, connections, duration, pin)? {
        Ok(run) => Ok(run),
        Err(text) if only_timeouts(&text) => {
            eprintln!("wrk against {url} saw only timeouts (a stalled host?); measuring this point again");
            wrk_once(url, body, connections, duration, pin)?
                .map_err(|text| anyhow!("wrk against {url} saw errors twice:\n{text}"))
        }
        Err(text) => bail!("wrk against {url} failed or saw errors:\n{text}"),
    }
}

/// Whether wrk's output reports timeouts and no other error (every answer was 2xx).
fn only_timeouts(text: &str) -> bool {
    let Some(errors) = text.lines().find_map(|l| l.trim().strip_prefix("Socket errors:")) else { return false };
    !text.contains("Non-2xx")
        && errors.split(',').all(|field| {
            let mut words = field.split_whitespace();
            match (words.next(), words.next().and_then(|n| n.parse::<u64>().ok())) {
                (Some("timeout"), Some(_)) => true,
                (Some(_), Some(n)) => n == 0,
                _ => false,
            }
        })
}

/// One wrk run: the parsed result, or (inner `Err`) its output when it failed or saw errors.
fn wrk_once(
    url: &str,
    body: &str,
    connections: usize,
    duration: Duration,
    pin: bool,
) -> anyhow::Result<Result<WrkRun, String>> {
    let dir = tempfile::tempdir()?;
    let lua = dir.path().join("post.lua");
    let escaped = body.replace('\\', "\\\\").replace('\'', "\\'");
    std::fs::write(
        &lua,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"content-type\"] = \"application/json\"\nwrk.body = '{escaped}'\n"
        ),
    )?;
    let threads = connections.clamp(1, 2);
    let out = pinned(Path::new("wrk"), "0", pin)
        .args(["-t", &threads.to_string(), "-c", &connections.to_string()])
        .args(["-d", &format!("{}s", duration.as_secs().max(1)), "--latency", "-s"])
        .arg(&lua)
        .arg(url)
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("Non-2xx") || text.contains("Socket errors") {
        return Ok(Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr))));
    }
    parse_wrk(&text).map(Ok).ok_or_else(|| anyhow!("unreadable wrk output:\n{text}"))
}

/// Requests/sec and the 50% and 99% latency lines of wrk's `--latency` output.
pub fn parse_wrk(text: &str) -> Option<WrkRun> {
    let rps = text.lines().find_map(|l| l.trim().strip_prefix("Requests/sec:"))?.trim().parse().ok()?;
    let quantile = |q: &str| -> Option<f64> {
        let value = text.lines().find_map(|l| l.trim().strip_prefix(q))?.trim();
        let split = value.find(|c: char| c.is_ascii_alphabetic())?;
        let (number, unit) = value.split_at(split);
        let scale = match unit.trim() {
            "us" => 1.0,
            "ms" => 1e3,
            "s" => 1e6,
            _ => return None,
        };
        Some(number.trim().parse::<f64>().ok()? * scale)
    };
    Some(WrkRun { requests_per_second: rps, p50_us: quantile("50%")?, p99_us: quantile("99%")? })
}

/// A server process started by this run, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` and reads its address from the first stdout line with `prefix`.
fn start(mut cmd: Command, prefix: &str, limit: Duration) -> anyhow::Result<Server> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(addr) = line.trim().strip_prefix(prefix) {
                    return Ok(Server { child, addr: addr.to_owned() });
                }
            }
            Err(_) => {
                let _ = child.kill();
                bail!("no '{prefix}' line within {limit:?}");
            }
        }
    }
}

fn floor_command(program: Command, response_bytes: usize) -> Command {
    let mut cmd = program;
    cmd.args(["floor", "--listen", "127.0.0.1:0", "--response-bytes", &response_bytes.to_string()]);
    cmd
}

/// `program` (the gateway, or valgrind running it) serving `repo` on a free port, quietly.
pub(crate) fn gateway_command(program: Command, repo: &Path) -> Command {
    let mut cmd = program;
    cmd.args(["--listen", "127.0.0.1:0", "--model-repository"]).arg(repo).env("FLYWHEEL_LOG", "warn");
    cmd
}

/// Sends `n` POSTs of `body` to `path` on one keep-alive connection; returns the last answer's
/// body length.
pub fn post_sequentially(addr: &str, path: &str, body: &str, n: usize) -> anyhow::Result<usize> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut last = 0;
    for _ in 0..n {
        stream.write_all(request.as_bytes())?;
        let mut status = String::new();
        reader.read_line(&mut status)?;
        if !status.starts_with("HTTP/1.1 200") {
            bail!("{path} answered {status:?}");
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut answer = vec![0; length];
        reader.read_exact(&mut answer)?;
        last = length;
    }
    Ok(last)
}

/// Instructions per request of the server `cmd` starts (run under callgrind with
/// instrumentation off until it is warm), over `n` requests. With `keep`, callgrind's output
/// (every thread's functions: `callgrind_annotate` reads it) is copied there.
pub(crate) fn instructions_per_request(
    program: &Path,
    args: impl FnOnce(Command) -> Command,
    (prefix, path, body): (&str, &str, &str),
    n: usize,
    keep: Option<&Path>,
) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut valgrind = Command::new("valgrind");
    valgrind
        .args(["--tool=callgrind", "--instr-atstart=no", "--dump-instr=no"])
        .arg(format!("--callgrind-out-file={}/cg.out", dir.path().display()))
        .arg(program);
    let server = start(args(valgrind), prefix, Duration::from_secs(300))?;
    post_sequentially(&server.addr, path, body, 200)?;
    let pid = server.child.id().to_string();
    let control = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new("callgrind_control").args(args).arg(&pid).stdout(Stdio::null()).status()?;
        if !status.success() {
            bail!("callgrind_control {args:?} failed");
        }
        Ok(())
    };
    control(&["-i", "on"])?;
    post_sequentially(&server.addr, path, body, n)?;
    control(&["-i", "off"])?;
    control(&["-d"])?;
    drop(server);
    let mut total = 0u64;
    for entry in std::fs::read_dir(dir.path())? {
        let entry = entry?;
        let text = std::fs::read_to_string(entry.path())?;
        let found = text
            .lines()
            .find_map(|l| l.strip_prefix("totals:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
        // The dump holds the measured requests (the file written at exit is empty).
        if let (Some(keep), Some(_)) = (keep, found) {
            std::fs::create_dir_all(keep.parent().unwrap_or(Path::new(".")))?;
            std::fs::copy(entry.path(), keep)?;
        }
        total += found.unwrap_or(0);
    }
    if total == 0 {
        bail!("callgrind wrote no totals");
    }
    Ok(total as f64 / n as f64)
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Runs the measurements and returns the Markdown report (also written to `spec.results`).
pub fn run(spec: &HotpathSpec) -> anyhow::Result<String> {
    if !which("wrk") {
        bail!("wrk is missing (apt-get install wrk): it is the independent client of this bench");
    }
    let pin = which("taskset") && std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("models");
    flywheel_onnx::fixtures::write_demo_repository(&repo, true)?;
    let gateway_exe = match &spec.gateway {
        Some(exe) => exe.clone(),
        None => this_exe()?.with_file_name("gateway"),
    };
    let tiny = infer_body(16);
    let heavy = infer_body(256);
    let (tiny_path, heavy_path) = ("/v2/models/tiny/infer", "/v2/models/heavy/infer");

    let gateway = Gateway::start_exe(&gateway_exe, &repo, None, pin)?;
    let answer_bytes = post_sequentially(&gateway.addr, tiny_path, &tiny, 1)?;
    let floor = start(
        floor_command(pinned(&this_exe()?, "1", pin), answer_bytes),
        "floor listening on http://",
        Duration::from_secs(10),
    )?;
    post_sequentially(&floor.addr, tiny_path, &tiny, 1)?;
    // Triton beside them when installed (scripts/setup-triton-peer.sh): same model file.
    let triton = match crate::triton::installed() {
        Some(install) => {
            let model = repo.join("tiny").join("1").join("model.onnx");
            let triton = crate::triton::Triton::start(&install, "tiny", &model, 16, pin)?;
            wrk(&format!("http://{}{tiny_path}", triton.addr), &tiny, 64, Duration::from_secs(1), pin)?;
            Some(triton)
        }
        None => None,
    };
    let url = |addr: &str, path: &str| format!("http://{addr}{path}");
    // Each run: (round, system, connections, wrk's figures, the server's context switches per
    // request when its threads can be read).
    let mut rows: Vec<(usize, &str, usize, WrkRun, Option<f64>)> = Vec::new();
    let mut systems = vec![
        ("floor", floor.addr.clone(), Some(floor.child.id())),
        ("gateway", gateway.addr.clone(), Some(gateway.child.id())),
    ];
    if let Some(triton) = &triton {
        systems.push(("triton", triton.addr.clone(), None));
    }
    for round in 0..spec.rounds {
        for (system, addr, pid) in &systems {
            let (system, addr) = (*system, addr.as_str());
            for connections in [64, 1] {
                let before = pid.and_then(context_switches);
                let run = wrk(&url(addr, tiny_path), &tiny, connections, spec.duration, pin)?;
                // wrk runs whole seconds (`wrk`'s `-d`).
                let requests = run.requests_per_second * spec.duration.as_secs().max(1) as f64;
                let switches = before
                    .zip(pid.and_then(context_switches))
                    .map(|(before, after)| switches_between(&before, &after) as f64 / requests.max(1.0));
                eprintln!("round {round} {system:7} c={connections:2}: {run:?}, switches/request {switches:?}");
                rows.push((round, system, connections, run, switches));
            }
        }
    }
    let heavy_gateway = wrk(&url(&gateway.addr, heavy_path), &heavy, 64, spec.duration, pin)?;
    drop(gateway);
    drop(floor);
    drop(triton);
    let heavy_model = repo.join("heavy").join("1").join("model.onnx");
    let window = Window { warmup: Duration::from_secs(1), duration: spec.duration };
    let heavy_inproc = inproc(&heavy_model, 256, 64, window, pin)?;
    let tap = crate::tapcost::measure(&gateway_exe, spec.rounds, spec.duration, pin)?;

    let pick = |system: &str, connections: usize, f: fn(&WrkRun) -> f64| {
        let mut v: Vec<f64> = rows.iter().filter(|r| r.1 == system && r.2 == connections).map(|r| f(&r.3)).collect();
        median(&mut v)
    };
    let switches = |system: &str| {
        let mut v: Vec<f64> = rows.iter().filter(|r| r.1 == system && r.2 == 64).filter_map(|r| r.4).collect();
        (!v.is_empty()).then(|| median(&mut v))
    };
    let rps = |w: &WrkRun| w.requests_per_second;
    let p50 = |w: &WrkRun| w.p50_us;
    let throughput_ratio = pick("gateway", 64, rps) / pick("floor", 64, rps);
    let c1_extra = pick("gateway", 1, p50) - pick("floor", 1, p50);
    let heavy_ratio = heavy_gateway.requests_per_second / heavy_inproc.rows_per_second;

    let mut instructions = None;
    let mut tap_instructions = None;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let keep = |name: &str| spec.results.join(format!("hotpath-{stamp}-{name}.callgrind"));
    if spec.callgrind_requests > 0 && which("valgrind") {
        let n = spec.callgrind_requests;
        let floor_ir = instructions_per_request(
            &this_exe()?,
            |c| floor_command(c, answer_bytes),
            ("floor listening on http://", tiny_path, &tiny),
            n,
            Some(&keep("floor")),
        )?;
        let gateway_ir = instructions_per_request(
            &gateway_exe,
            |c| gateway_command(c, &repo),
            ("flywheel gateway listening on http://", tiny_path, &tiny),
            n,
            Some(&keep("gateway")),
        )?;
        instructions = Some((floor_ir, gateway_ir));
        tap_instructions = Some(crate::tapcost::instructions(&gateway_exe, n, keep)?);
    }

    let mut out = String::new();
    writeln!(
        out,
        "# Hot path vs the physical limit\n\nwrk (2 threads, c=64; 1 thread, c=1) on CPU 0, each server on CPU 1{}; \
         {} rounds of {:?} alternating {}; tiny model (16 features, 1-row JSON), answer {answer_bytes} bytes \
         from floor and gateway; the gateway at its defaults (sampling and drift as configured by default).\n",
        if pin { "" } else { " (not pinned: taskset missing or one core)" },
        spec.rounds,
        spec.duration,
        systems.iter().map(|(system, _, _)| *system).collect::<Vec<_>>().join(", "),
    )?;
    writeln!(
        out,
        "| round | system | c | req/s | p50 µs | p99 µs | context switches / request |\n|---|---|---|---|---|---|---|"
    )?;
    for (round, system, connections, run, switches) in &rows {
        let switches = switches.map_or_else(|| "-".to_owned(), |s| format!("{s:.3}"));
        writeln!(
            out,
            "| {round} | {system} | {connections} | {:.0} | {:.0} | {:.0} | {switches} |",
            run.requests_per_second, run.p50_us, run.p99_us
        )?;
    }
    let mut bars = vec![
        GoalBar {
            label: "tiny c=64 gateway / floor req/s".into(),
            measured: throughput_ratio,
            target: Some((SPEED_TARGET, true)),
            unit: "×",
        },
        GoalBar {
            label: "tiny c=1 p50 gateway − floor".into(),
            measured: c1_extra,
            target: Some((C1_EXTRA_TARGET_US, false)),
            unit: " µs",
        },
        GoalBar {
            label: "heavy c=64 gateway / in-process batch 64".into(),
            measured: heavy_ratio,
            target: Some((SPEED_TARGET, true)),
            unit: "×",
        },
    ];
    writeln!(out, "\n| goal | measured (medians) | target | met |\n|---|---|---|---|")?;
    writeln!(
        out,
        "| tiny c=64 gateway / floor req/s | {throughput_ratio:.2}× | ≥ {SPEED_TARGET:.2}× | {} |",
        yes(throughput_ratio >= SPEED_TARGET)
    )?;
    writeln!(
        out,
        "| tiny c=1 p50 gateway − floor | {c1_extra:.0} µs | ≤ {C1_EXTRA_TARGET_US:.0} µs | {} |",
        yes(c1_extra <= C1_EXTRA_TARGET_US)
    )?;
    if let (Some(gateway), Some(floor)) = (switches("gateway"), switches("floor")) {
        writeln!(
            out,
            "| context switches per request, tiny c=64 (every thread), gateway / floor | {gateway:.3} / {floor:.3} | \
             (steadier than req/s) | |"
        )?;
    }
    writeln!(
        out,
        "| heavy c=64 gateway rows/s / in-process batch 64 | {:.0} / {:.0} = {heavy_ratio:.2}× | ≥ {SPEED_TARGET:.2}× | {} |",
        heavy_gateway.requests_per_second,
        heavy_inproc.rows_per_second,
        yes(heavy_ratio >= SPEED_TARGET)
    )?;
    if systems.iter().any(|(system, _, _)| *system == "triton") {
        let (triton_rps, gateway_rps) = (pick("triton", 64, rps), pick("gateway", 64, rps));
        writeln!(
            out,
            "| gateway / Triton 2.51 (Python backend + onnxruntime, dynamic batching), tiny c=64 req/s | \
             {gateway_rps:.0} / {triton_rps:.0} = {:.1}× | (peer) | |",
            gateway_rps / triton_rps
        )?;
        bars.push(GoalBar {
            label: "gateway / Triton 2.51, tiny c=64 req/s".into(),
            measured: gateway_rps / triton_rps,
            target: None,
            unit: "×",
        });
        writeln!(
            out,
            "| tiny c=1 p50 Triton − gateway | {:.0} µs | (peer) | |",
            pick("triton", 1, p50) - pick("gateway", 1, p50)
        )?;
    }
    let (drift_ratio, sampling_ratio) = tap.ratios();
    bars.push(GoalBar {
        label: "drift on / off, c=64".into(),
        measured: drift_ratio,
        target: Some((BESIDE_SERVING_TARGET, true)),
        unit: "×",
    });
    bars.push(GoalBar {
        label: "sampling 100% / 0%, c=64".into(),
        measured: sampling_ratio,
        target: Some((BESIDE_SERVING_TARGET, true)),
        unit: "×",
    });
    let [off, defaults, all] = crate::tapcost::SETUPS.map(|(name, _)| tap.median(name));
    writeln!(
        out,
        "| drift on / off, c=64 req/s (tiny champion with a profile) | {defaults:.0} / {off:.0} = {drift_ratio:.2}× | ≥ {BESIDE_SERVING_TARGET:.2}× | {} |",
        yes(drift_ratio >= BESIDE_SERVING_TARGET)
    )?;
    writeln!(
        out,
        "| sampling 100% / 0%, drift on, c=64 req/s | {all:.0} / {defaults:.0} = {sampling_ratio:.2}× | ≥ {BESIDE_SERVING_TARGET:.2}× | {} |",
        yes(sampling_ratio >= BESIDE_SERVING_TARGET)
    )?;
    writeln!(
        out,
        "
| round | beside serving | c | req/s | p50 µs | p99 µs |\n|---|---|---|---|---|---|"
    )?;
    for (round, setup, run) in &tap.runs {
        writeln!(
            out,
            "| {round} | {setup} | 64 | {:.0} | {:.0} | {:.0} |",
            run.requests_per_second, run.p50_us, run.p99_us
        )?;
    }
    match instructions {
        Some((floor_ir, gateway_ir)) => writeln!(
            out,
            "\nInstructions per request (callgrind, {} sequential requests on one connection, after 200 warm-up): \
             floor {floor_ir:.0}, gateway {gateway_ir:.0} ({:.2}× the floor).",
            spec.callgrind_requests,
            gateway_ir / floor_ir
        )?,
        None => {
            writeln!(out, "\nInstructions per request: not measured (valgrind missing or --callgrind-requests 0).")?
        }
    }
    if let Some([off, defaults, all]) = tap_instructions {
        writeln!(
            out,
            "\nInstructions per request beside serving (callgrind, every thread, the tiny champion with a profile): \
             sampling 0% drift off {off:.0}, drift on {defaults:.0} (+{:.0}), sampling 100% {all:.0} (+{:.0} over drift on). \
             Callgrind outputs: {}.",
            defaults - off,
            all - defaults,
            keep("*").display()
        )?;
    }
    std::fs::create_dir_all(&spec.results)?;
    let plot = spec.results.join(format!("hotpath-{stamp}.svg"));
    std::fs::write(&plot, goals_plot::svg("Issue 15's goals, measured in one run (bench hotpath)", &bars))?;
    writeln!(out, "\nPlot of the goals (each on its own scale, the target marked): {}", plot.display())?;
    let md = spec.results.join(format!("hotpath-{stamp}.md"));
    std::fs::write(&md, &out)?;
    eprintln!("written to {}", md.display());
    Ok(out)
}

fn yes(met: bool) -> &'static str {
    if met { "yes" } else { "no" }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&mut [3.0, 1.0]), 2.0);
        assert_eq!(median(&mut [5.0, 1.0, 3.0]), 3.0);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn only_timeouts_are_measured_again() {
        let errors = |fields: &str| format!("Latency...\n  Socket errors: {fields}\nRequests/sec: 8273.56\n");
        assert!(only_timeouts(&errors("connect 0, read 0, write 0, timeout 17")));
        assert!(!only_timeouts(&errors("connect 0, read 3, write 0, timeout 17")), "a read error is a failure");
        assert!(!only_timeouts(&format!(
            "{}  Non-2xx or 3xx responses: 5\n",
            errors("connect 0, read 0, write 0, timeout 1")
        )));
        assert!(!only_timeouts("Requests/sec: 100\n"), "no errors at all is not a timeout run");
    }

    #[test]
    fn wrk_output_is_read_in_microseconds() {
        let text = "Running 2s test @ http://127.0.0.1:1/\n  2 threads and 64 connections\n\
            Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     1.52ms  300.00us   9.10ms   80.00%\n\
          Latency Distribution\n     50%  1.41ms\n     75%  1.60ms\n     90%  1.90ms\n     99%    3.20ms\n\
          80000 requests in 2.00s, 10.00MB read\nRequests/sec:  40000.50\nTransfer/sec:      5.00MB\n";
        let run = parse_wrk(text).unwrap();
        assert_eq!(run.requests_per_second, 40000.5);
        assert!((run.p50_us - 1410.0).abs() < 1e-6);
        assert!((run.p99_us - 3200.0).abs() < 1e-6);
        assert!(parse_wrk("nothing").is_none());
        let us = "     50%  99.00us\n     99%  1.00s\nRequests/sec: 1\n";
        let run = parse_wrk(us).unwrap();
        assert_eq!((run.p50_us, run.p99_us), (99.0, 1e6));
    }
}
