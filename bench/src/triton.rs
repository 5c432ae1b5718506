//! Triton as a peer of `bench hotpath`: the `tritonserver` 2.51 inside PyPI's `nvidia-pytriton`
//! (`scripts/setup-triton-peer.sh` installs it in `.venv-triton/`), serving the same ONNX file
//! through a Python-backend model that runs onnxruntime on the batches Triton's dynamic batcher
//! forms (`scripts/triton-peer/model.py`). It is the fastest Triton reachable from the package
//! registries: none of them carries Triton's ONNX Runtime backend.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::procs::pinned;

/// The Python-backend model, from the repository (the bench runs from its root).
const MODEL_PY: &str = include_str!("../../scripts/triton-peer/model.py");

/// Where `scripts/setup-triton-peer.sh` installed Triton: its venv and the server's folder.
pub struct Install {
    venv: PathBuf,
    server: PathBuf,
}

/// The installation under `.venv-triton/` of the current folder, if there is one.
pub fn installed() -> Option<Install> {
    let venv = std::env::current_dir().ok()?.join(".venv-triton");
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    let server = lib
        .flatten()
        .map(|python| python.path().join("site-packages/pytriton/tritonserver"))
        .find(|server| server.join("bin/tritonserver").exists())?;
    Some(Install { venv, server })
}

/// A running Triton with one model.
pub struct Triton {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether `GET path` answers 200.
fn ok(addr: &str, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    let mut answer = String::new();
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.1 200")
}

impl Triton {
    /// Starts Triton (on CPU 1 when pinning) serving `model` (one input `input` of `features`
    /// FP32 columns, one output `output` of width 1) as `name`, dynamic batching up to 64 rows,
    /// one instance; waits until the model is ready.
    pub fn start(install: &Install, name: &str, model: &Path, features: usize, pin: bool) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let version = dir.path().join(name).join("1");
        std::fs::create_dir_all(&version)?;
        std::fs::copy(model, version.join("model.onnx")).with_context(|| format!("copying {}", model.display()))?;
        std::fs::write(version.join("model.py"), MODEL_PY)?;
        std::fs::write(
            dir.path().join(name).join("config.pbtxt"),
            format!(
                "name: \"{name}\"\nbackend: \"python\"\nmax_batch_size: 64\n\
                 input [ {{ name: \"input\", data_type: TYPE_FP32, dims: [ {features} ] }} ]\n\
                 output [ {{ name: \"output\", data_type: TYPE_FP32, dims: [ 1 ] }} ]\n\
                 dynamic_batching {{ }}\ninstance_group [ {{ count: 1, kind: KIND_CPU }} ]\n"
            ),
        )?;
        // The Python stub links libpython: the venv's interpreter's, not the system's.
        let libdir = Command::new(install.venv.join("bin/python"))
            .args(["-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"])
            .output()?;
        let libdir = String::from_utf8_lossy(&libdir.stdout).trim().to_owned();
        let path = format!("{}:{}", install.venv.join("bin").display(), std::env::var("PATH").unwrap_or_default());
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("triton.log"))?;
        let mut cmd = pinned(&install.server.join("bin/tritonserver"), "1", pin);
        cmd.arg("--model-repository")
            .arg(dir.path())
            .arg("--backend-directory")
            .arg(install.server.join("backends"))
            .args(["--http-address", "127.0.0.1", "--http-port", &port.to_string()])
            .args(["--allow-grpc", "false", "--allow-metrics", "false", "--log-verbose", "0"])
            .env("PATH", path)
            .env("LD_LIBRARY_PATH", format!("{libdir}:{}", install.server.join("external_libs").display()))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            // Its own process group: the Python stubs go with it.
            .process_group(0);
        let child = cmd.spawn().context("starting tritonserver")?;
        let triton = Self { child, addr: format!("127.0.0.1:{port}"), _dir: dir };
        let until = Instant::now() + Duration::from_secs(120);
        let mut triton = triton;
        while !ok(&triton.addr, &format!("/v2/models/{name}/ready")) {
            let exited = triton.child.try_wait()?.is_some();
            if exited || Instant::now() > until {
                let log = std::fs::read_to_string(triton._dir.path().join("triton.log")).unwrap_or_default();
                // Triton's error lines start with E and the date.
                let errors: Vec<&str> = log.lines().filter(|l| l.starts_with('E') || l.starts_with("error")).collect();
                let why = if exited { "exited" } else { "was not ready in 120 s" };
                bail!("Triton {why}: {}", errors.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(triton)
    }
}

impl Drop for Triton {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}
