//! The Python peer (FastAPI + uvicorn + onnxruntime, `scripts/python-peer/`), started by the
//! benchmarks beside the gateway so both are measured in one run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running peer; stopped when dropped.
pub struct Peer {
    child: Child,
    pub addr: String,
}

/// The peer's uvicorn, if `scripts/setup-python-peer.sh` has run.
pub fn uvicorn() -> Option<PathBuf> {
    let path = std::env::current_dir().ok()?.join(".venv-peer/bin/uvicorn");
    path.exists().then_some(path)
}

impl Peer {
    /// Starts `workers` uvicorn workers over `repo`, pinned to `cpu` when given.
    pub fn start(uvicorn: &Path, repo: &Path, workers: usize, cpu: Option<&str>) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut cmd = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpu]).arg(uvicorn);
                c
            }
            None => Command::new(uvicorn),
        };
        let child = cmd
            .args(["--app-dir", "scripts/python-peer", "app:app", "--host", "127.0.0.1", "--log-level", "warning"])
            .args(["--port", &port.to_string(), "--workers", &workers.to_string()])
            .env("PEER_MODEL_REPOSITORY", repo)
            .stdout(Stdio::null())
            .spawn()
            .context("starting the Python peer")?;
        let peer = Self { child, addr: format!("127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if crate::rollout::get(&peer.addr, "/v2/health/ready").is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
                return Ok(peer);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("the Python peer did not become ready within 60 s")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}
