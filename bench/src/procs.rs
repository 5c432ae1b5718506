//! Running the measured processes: the release gateway, `bench load` and `bench inproc`
//! subprocesses, optionally pinned to CPUs with `taskset`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

use crate::summary::Summary;

/// Warm-up and measured window of one measurement.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub warmup: Duration,
    pub duration: Duration,
}

/// One gateway load measurement.
pub struct LoadRun<'a> {
    pub model: &'a str,
    pub features: usize,
    pub concurrency: usize,
    pub binary: bool,
    /// GET this path instead of inferring.
    pub get: Option<&'a str>,
}

pub fn which(tool: &str) -> bool {
    Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// `command` under `taskset -c cpu` when pinning.
pub fn pinned(program: &Path, cpu: &str, pin: bool) -> Command {
    if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", cpu]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Context switches (voluntary and involuntary) of each thread of process `pid` so far, by
/// thread id, from `/proc/<pid>/task/*/status`; `None` where a file cannot be read (not Linux,
/// process gone). A count that, unlike requests/s, does not move with the machine's speed:
/// each switch is a thread that slept or was preempted on the way.
pub fn context_switches(pid: u32) -> Option<std::collections::HashMap<u32, u64>> {
    let mut threads = std::collections::HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let task = task.ok()?;
        let Some(tid) = task.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        // A thread that exited since the folder was listed has no status: it switches no more.
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        let switches = status
            .lines()
            .filter_map(|line| {
                line.strip_prefix("voluntary_ctxt_switches:").or(line.strip_prefix("nonvoluntary_ctxt_switches:"))
            })
            .filter_map(|n| n.trim().parse::<u64>().ok())
            .sum::<u64>();
        threads.insert(tid, switches);
    }
    Some(threads)
}

/// Context switches between two [`context_switches`] readings, thread by thread: a thread that
/// started in between counts from zero, one that exited in between is left out (its whole
/// history would otherwise come off the total).
pub fn switches_between(
    before: &std::collections::HashMap<u32, u64>,
    after: &std::collections::HashMap<u32, u64>,
) -> u64 {
    after.iter().map(|(tid, n)| n.saturating_sub(before.get(tid).copied().unwrap_or(0))).sum()
}

pub fn this_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("locating the bench executable")
}

pub fn secs(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

pub fn inproc(model: &Path, features: usize, rows: usize, window: Window, pin: bool) -> anyhow::Result<Summary> {
    let out = pinned(&this_exe()?, "1", pin)
        .args(["inproc", "--json", "--features", &features.to_string(), "--rows", &rows.to_string()])
        .args(["--warmup", &secs(window.warmup), "--duration", &secs(window.duration), "--model"])
        .arg(model)
        .output()?;
    parse(out)
}

pub fn load(addr: &str, run: &LoadRun<'_>, window: Window, pin: bool) -> anyhow::Result<Summary> {
    let mut cmd = pinned(&this_exe()?, "0", pin);
    cmd.args(["load", "--json", "--addr", addr, "--model", run.model, "--features", &run.features.to_string()]).args([
        "--concurrency",
        &run.concurrency.to_string(),
        "--warmup",
        &secs(window.warmup),
        "--duration",
        &secs(window.duration),
    ]);
    if run.binary {
        cmd.arg("--binary");
    }
    if let Some(path) = run.get {
        cmd.args(["--get", path]);
    }
    parse(cmd.output()?)
}

/// Runs `bench load --rate` (open loop) as a subprocess, pinned like [`load`].
pub fn load_open(addr: &str, run: &LoadRun<'_>, rate: f64, window: Window, pin: bool) -> anyhow::Result<Summary> {
    let mut cmd = pinned(&this_exe()?, "0", pin);
    cmd.args(["load", "--json", "--addr", addr, "--model", run.model, "--features", &run.features.to_string()])
        .args(["--concurrency", &run.concurrency.to_string(), "--rate", &rate.to_string()])
        .args(["--warmup", &secs(window.warmup), "--duration", &secs(window.duration)]);
    if run.binary {
        cmd.arg("--binary");
    }
    parse(cmd.output()?)
}

pub fn parse(out: std::process::Output) -> anyhow::Result<Summary> {
    if !out.status.success() {
        bail!("measurement failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("reading {}", String::from_utf8_lossy(&out.stdout)))
}

/// The release gateway next to this executable, on 127.0.0.1:0.
pub struct Gateway {
    pub child: Child,
    pub addr: String,
}

impl Gateway {
    /// Starts the gateway over `repo`, with `config` if given.
    pub fn start(repo: &Path, config: Option<&Path>, pin: bool) -> anyhow::Result<Self> {
        Self::start_exe(&this_exe()?.with_file_name("gateway"), repo, config, pin)
    }

    /// Starts the gateway binary `exe` over `repo`, with `config` if given.
    pub fn start_exe(exe: &Path, repo: &Path, config: Option<&Path>, pin: bool) -> anyhow::Result<Self> {
        if !exe.exists() {
            bail!("{} is missing: cargo build --release -p flywheel-gateway", exe.display());
        }
        let mut cmd = pinned(exe, "1", pin);
        cmd.args(["--listen", "127.0.0.1:0", "--model-repository"]).arg(repo);
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        let mut child = cmd.env("FLYWHEEL_LOG", "warn").stdout(Stdio::piped()).spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("flywheel gateway listening on http://")
            .ok_or_else(|| anyhow!("gateway did not start: {line:?}"))?
            .to_owned();
        Ok(Self { child, addr })
    }

    /// SIGTERM, then wait.
    pub fn stop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
mod tests {
    use super::{context_switches, switches_between};

    #[test]
    #[cfg(target_os = "linux")]
    fn a_sleeping_thread_adds_to_its_process_context_switches() {
        let me = std::process::id();
        let before = context_switches(me).unwrap();
        // Sleeping gives the core up: at least one voluntary switch per sleep.
        for _ in 0..3 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // A thread that starts and ends in between is left out rather than subtracted.
        std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(1))).join().unwrap();
        let after = context_switches(me).unwrap();
        assert!(switches_between(&before, &after) >= 3);
        let gone: std::collections::HashMap<u32, u64> = [(1, 5), (2, 100)].into();
        let now: std::collections::HashMap<u32, u64> = [(1, 7), (3, 4)].into();
        assert_eq!(switches_between(&gone, &now), 2 + 4, "thread 2 exited, thread 3 is new");
        assert_eq!(context_switches(u32::MAX), None, "no such process");
    }
}
