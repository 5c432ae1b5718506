//! An S3-compatible server for the fleet tests: moto's standalone server (PyPI `moto[server]`,
//! installed into `.venv` by scripts/setup-test-tools.sh). It implements conditional writes
//! (If-None-Match / If-Match), which the registry's create-only versions and alias
//! compare-and-set rely on, and starts in about a second; MinIO is not in any package registry
//! reachable here. Self-contained: the registry's CLI tests include this file too.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flywheel_registry::Remote;

pub const BUCKET: &str = "flywheel";

/// A moto server on a free loopback port with the bucket [`BUCKET`]; stopped when dropped.
pub struct S3 {
    child: std::process::Child,
    pub endpoint: String,
    port: u16,
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_binary() -> PathBuf {
    // Both including crates (gateway/, registry/) sit one level below the workspace root.
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("moto_server")
}

impl S3 {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(moto_binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("moto_server did not start ({e}); run scripts/setup-test-tools.sh"));
        let s3 = Self { child, endpoint: format!("http://127.0.0.1:{port}"), port };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if s3.raw("PUT", &format!("/{BUCKET}"), &[]).is_some_and(|status| status == 200) {
                return s3;
            }
            assert!(Instant::now() < deadline, "moto_server on port {port} did not answer within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The environment a gateway or the registry CLI needs to reach this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// A registry handle on `s3://flywheel/<prefix>` for the test itself.
    pub fn remote(&self, prefix: &str) -> Arc<Remote> {
        let options = [
            ("aws_access_key_id", "test"),
            ("aws_secret_access_key", "test"),
            ("aws_region", "us-east-1"),
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_allow_http", "true"),
        ];
        Remote::shared_with(&format!("s3://{BUCKET}/{prefix}"), &options).unwrap()
    }

    /// Writes an object with a plain (unsigned) PUT, as a crashed uploader would leave it.
    pub fn put_raw(&self, key: &str, body: &[u8]) {
        let status = self.raw("PUT", &format!("/{BUCKET}/{key}"), body);
        assert_eq!(status, Some(200), "PUT {key}");
    }

    fn raw(&self, method: &str, path: &str, body: &[u8]) -> Option<u16> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        );
        stream.write_all(head.as_bytes()).ok()?;
        stream.write_all(body).ok()?;
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        reply.split(' ').nth(1)?.parse().ok()
    }
}
