//! The demo's child processes: the gateway (on 127.0.0.1:0; its address read from its first
//! line of output) and `trainer watch` (its lines forwarded to the timeline). Both are stopped
//! with SIGTERM when dropped.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A child process that is stopped (SIGTERM, then SIGKILL after 10 s) when dropped.
pub struct Proc {
    child: Child,
}

impl Proc {
    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM and wait (at most 10 s, then SIGKILL).
    pub fn stop(&mut self) {
        if !self.alive() {
            return;
        }
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Prints `said` once Ctrl-C and SIGTERM are caught, then waits for either, or for `proc`
/// exiting on its own.
pub fn until_stopped(proc: &mut Proc, said: &str) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        // Both handlers are in place before the line that tells a watcher it may stop us.
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        println!("{said}");
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
                _ = tick.tick() => if !proc.alive() { break },
            }
        }
        Ok(())
    })
}

/// The gateway binary: `explicit`, else `gateway` beside this executable.
pub fn gateway_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    let exe = std::env::current_exe().context("locating the trainer executable")?;
    let dir = exe.parent().context("the trainer executable has no folder")?;
    // Test binaries live in target/<profile>/deps; the gateway one level up.
    for candidate in [dir.join("gateway"), dir.join("../gateway")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no gateway binary beside {} (build it: cargo build --release --bin gateway, or pass --gateway)",
        exe.display()
    )
}

/// Starts the gateway; returns it and its base URL once it listens.
pub fn start_gateway(binary: &Path, config: &Path, models: &Path, log: &Path) -> anyhow::Result<(Proc, String)> {
    let log_file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = Command::new(binary)
        .args(["--config".as_ref(), config.as_os_str(), "--listen".as_ref(), "127.0.0.1:0".as_ref()])
        .args(["--model-repository".as_ref(), models.as_os_str()])
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stdout = child.stdout.take().context("gateway stdout")?;
    let mut proc = Proc { child };
    let mut lines = BufReader::new(stdout).lines();
    let base = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(addr) = line.strip_prefix("flywheel gateway listening on ") {
                    break addr.trim().to_owned();
                }
            }
            _ => {
                proc.stop();
                bail!("the gateway exited before listening; its log: {}", log.display());
            }
        }
    };
    let mut log_file = std::fs::OpenOptions::new().append(true).open(log)?;
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = writeln!(log_file, "{line}");
        }
    });
    Ok((proc, base))
}

/// Starts `trainer watch` with `args`; its stdout lines arrive on the receiver (and in `log`).
pub fn start_watch(args: &[&std::ffi::OsStr], log: &Path) -> anyhow::Result<(Proc, Receiver<String>)> {
    let exe = std::env::current_exe().context("locating the trainer executable")?;
    let err_file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = Command::new(&exe)
        .arg("watch")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(err_file)
        .spawn()
        .with_context(|| format!("starting {} watch", exe.display()))?;
    let stdout = child.stdout.take().context("watch stdout")?;
    let (tx, rx) = channel();
    let mut log_file = std::fs::OpenOptions::new().append(true).open(log)?;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = writeln!(log_file, "{line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok((Proc { child }, rx))
}
