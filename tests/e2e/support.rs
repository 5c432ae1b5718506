//! Shared helpers: a real gateway binary on 127.0.0.1:0 over a temporary model repository,
//! and a small HTTP client.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A running gateway process; killed when dropped.
pub struct TestGateway {
    pub child: Child,
    pub base: String,
    pub repo: PathBuf,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// Writes the demo repository (with the heavy model) into a temporary folder.
pub fn model_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("models");
    flywheel_onnx::fixtures::write_demo_repository(&repo, true).expect("write model repository");
    repo
}

impl TestGateway {
    /// Starts the gateway binary with `config` (TOML, without `model_repository`, which points
    /// at a fresh demo repository).
    pub fn start(config: &str) -> Self {
        Self::start_with(config, |_| {})
    }

    /// Like [`TestGateway::start`], letting `prepare` change the repository first.
    pub fn start_with(config: &str, prepare: impl FnOnce(&Path)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = model_repo(dir.path());
        prepare(&repo);
        Self::launch(dir, repo, config)
    }

    /// Starts over an empty registry that `prepare` fills (with manifests and aliases).
    pub fn start_registry(config: &str, prepare: impl FnOnce(&flywheel_registry::Registry)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("registry");
        std::fs::create_dir_all(&repo).unwrap();
        prepare(&flywheel_registry::Registry::open(&repo));
        Self::launch(dir, repo, config)
    }

    fn launch(dir: tempfile::TempDir, repo: PathBuf, config: &str) -> Self {
        let location = repo.clone().into_os_string();
        Self::launch_over(dir, repo, &location, config, &[], "127.0.0.1:0")
    }

    /// Starts the binary with `--model-repository location` (a folder or a store URL whose
    /// local copy is `repo`), extra environment variables, on `listen`.
    pub fn launch_over(
        dir: tempfile::TempDir,
        repo: PathBuf,
        location: &std::ffi::OsStr,
        config: &str,
        env: &[(String, String)],
        listen: &str,
    ) -> Self {
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["--config", config_path.to_str().unwrap(), "--listen", listen])
            .arg("--model-repository")
            .arg(location)
            .envs(env.iter().map(|(k, v)| (k, v)))
            // FLYWHEEL_TEST_LOG=debug shows the gateway's own log while debugging a test.
            .env("FLYWHEEL_LOG", std::env::var("FLYWHEEL_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn gateway");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read gateway stdout");
        let base = line
            .trim()
            .strip_prefix("flywheel gateway listening on ")
            .unwrap_or_else(|| {
                panic!("gateway did not start; it printed {line:?} (is .ort/lib set up? run scripts/setup-ort.sh)")
            })
            .to_owned();
        Self { child, base, repo, config_path, _dir: dir }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// Starts another gateway process over the same config and repository as a stopped one (a
/// restart after a crash); returns it with its base URL once it listens.
pub fn restart_over(config_path: &Path, repo: &Path) -> (RunningChild, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--config", config_path.to_str().unwrap(), "--listen", "127.0.0.1:0", "--model-repository"])
        .arg(repo)
        .env("FLYWHEEL_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn gateway");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read gateway stdout");
    let base =
        line.trim().strip_prefix("flywheel gateway listening on ").unwrap_or_else(|| panic!("{line:?}")).to_owned();
    (RunningChild(child), base)
}

/// A child process killed when dropped.
pub struct RunningChild(pub Child);

impl Drop for RunningChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response, read whole.
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (panics with the body text if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// HTTP/1.1 keep-alive client (or HTTP/2 prior knowledge with `http2`).
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    pub fn new(http2: bool) -> Self {
        let mut builder = Client::builder(TokioExecutor::new());
        builder.http2_only(http2);
        Self { client: builder.build_http() }
    }

    pub async fn send(&self, method: Method, url: &str, headers: &[(&str, String)], body: Vec<u8>) -> Reply {
        self.try_send(method, url, headers, body).await.expect("send request")
    }

    /// Like [`Http::send`], with a failed connection or body as an error instead of a panic.
    pub async fn try_send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Reply, String> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())?;
        let response = self.client.request(req).await.map_err(|e| format!("{e:?}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply { status, headers, body })
    }

    pub async fn get(&self, url: &str) -> Reply {
        self.send(Method::GET, url, &[], Vec::new()).await
    }

    pub async fn post_json(&self, url: &str, body: &Value) -> Reply {
        let headers = [("content-type", "application/json".to_owned())];
        self.send(Method::POST, url, &headers, serde_json::to_vec(body).expect("json")).await
    }
}

/// `rows` rows of the tiny model's 16 features, deterministic in `seed`.
pub fn tiny_rows(rows: usize, seed: u64) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..rows * 16).map(|_| rng.f32() * 4.0 - 2.0).collect()
}

/// A JSON infer body for the tiny model.
pub fn tiny_request(rows: &[f32]) -> Value {
    serde_json::json!({"inputs": [{"name": "input", "shape": [rows.len() / 16, 16], "datatype": "FP32", "data": rows}]})
}

/// The FP32 `data` of output `index` in a JSON response.
pub fn output_f32(reply: &Value, index: usize) -> Vec<f32> {
    reply["outputs"][index]["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data in {reply}"))
        .iter()
        .map(|v| v.as_f64().expect("number") as f32)
        .collect()
}

/// Asserts two float slices agree within `tol`.
pub fn assert_close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "element {i}: {x} vs {y}");
    }
}

/// Polls `check` every 20 ms until it returns true or `limit` passes; returns whether it did.
pub async fn wait_until<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// `GET /admin/routing` (loopback, no token configured).
pub async fn routing(http: &Http, base: &str) -> Value {
    http.get(&format!("{base}/admin/routing")).await.json()
}

/// The routed model entry of `/admin/routing`.
pub async fn route_of(http: &Http, base: &str, model: &str) -> Value {
    let all = routing(http, base).await;
    all["models"].as_array().unwrap().iter().find(|m| m["name"] == model).cloned().unwrap_or(Value::Null)
}

/// The value of the Prometheus sample `name` (with its labels, as printed), 0 when absent.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
