//! A fleet behind a real load balancer: HAProxy (Debian package) with the shipped
//! configs/haproxy.cfg, its ports and check interval adapted to the test, over three gateways
//! on one registry in object storage.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flywheel_onnx::fixtures::tiny;
use flywheel_registry::{ManifestDraft, Registry};

use crate::fleet::{replica_on, served_version};
use crate::s3::S3;
use crate::support::{Http, TestGateway, tiny_request, tiny_rows, wait_until};

/// Replicas drain for 1.5 s: longer than HAProxy needs to see them go (2 checks 200 ms apart).
const REPLICA: &str = "[models.tiny.rollout]\nchampion = \"champion\"\n[server]\ndrain_delay_ms = 1500\n";

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// HAProxy on `port` in front of `backends`, from the shipped config.
fn haproxy(port: u16, backends: &[u16], dir: &std::path::Path) -> Haproxy {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/haproxy.cfg")).unwrap();
    let mut config: Vec<String> = shipped
        .lines()
        .filter(|l| !l.trim_start().starts_with("server "))
        .map(|l| match l.trim_start() {
            t if t.starts_with("bind ") => format!("    bind 127.0.0.1:{port}"),
            t if t.starts_with("default-server ") => "    default-server inter 200ms fall 2 rise 2".to_owned(),
            _ => l.to_owned(),
        })
        .collect();
    config.extend(backends.iter().enumerate().map(|(i, p)| format!("    server gateway{i} 127.0.0.1:{p} check")));
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config.join("\n") + "\n").unwrap();
    let child = Command::new("haproxy")
        .args(["-db", "-f", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("haproxy did not start ({e}); run scripts/setup-test-tools.sh"));
    Haproxy(child)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_and_a_publish_behind_haproxy_fail_no_request() {
    let s3 = S3::start();
    let copy = tempfile::tempdir().unwrap();
    let registry = Registry::mirrored(copy.path(), s3.remote("lb"));
    let first = registry.publish("tiny", &tiny(1).to_onnx(1), ManifestDraft::default()).unwrap().version;
    registry.set_alias("tiny", "champion", first).unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let start = |i: usize| {
        replica_on(&s3, "lb", &format!("{REPLICA}[fleet]\nreplica = \"r{i}\"\n"), &format!("127.0.0.1:{}", ports[i]))
    };
    let mut replicas: Vec<TestGateway> = (0..3).map(start).collect();
    let lb_port = free_port();
    let _lb = haproxy(lb_port, &ports, copy.path());
    let front = format!("http://127.0.0.1:{lb_port}");
    let http = Http::new(false);
    let body = tiny_request(&tiny_rows(1, 1));
    let up = wait_until(Duration::from_secs(20), || async { served_version(&http, &front, &body).await.is_ok() }).await;
    assert!(up, "HAProxy did not reach the replicas");

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..4u64 {
        let (http, front, stop, answered) = (http.clone(), front.clone(), Arc::clone(&stop), Arc::clone(&answered));
        clients.push(tokio::spawn(async move {
            let body = tiny_request(&tiny_rows(1, c));
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match served_version(&http, &front, &body).await {
                    Ok(_) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.push(e),
                }
            }
            failures
        }));
    }

    // Rolling restart: SIGTERM one replica, wait for it to exit, start it again on its port,
    // wait until it answers, then the next.
    let restart_began = Instant::now();
    for (i, replica) in replicas.iter_mut().enumerate() {
        replica.terminate();
        let status = replica.wait_exit(Duration::from_secs(20)).expect("replica exits after its drain");
        assert!(status.success(), "replica {i} exited with {status}");
        *replica = start(i);
        let base = replica.base.clone();
        let ready = wait_until(Duration::from_secs(20), || async {
            http.get(&format!("{base}/v2/health/ready")).await.status == 200
        })
        .await;
        assert!(ready, "replica {i} not ready after its restart");
        // HAProxy sees it up after two checks.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let during_restart = answered.load(Ordering::Relaxed);
    eprintln!("rolling restart of 3 replicas: {:?}, {during_restart} requests answered", restart_began.elapsed());

    // A publish reaches every replica while the load runs through the balancer.
    let next = registry.publish("tiny", &tiny(2).to_onnx(2), ManifestDraft::default()).unwrap().version;
    registry.set_alias("tiny", "champion", next).unwrap();
    for gw in &replicas {
        let body = tiny_request(&tiny_rows(1, 7));
        let ok =
            wait_until(Duration::from_secs(20), || async { served_version(&http, &gw.base, &body).await == Ok(next) })
                .await;
        assert!(ok, "{} not serving version {next}", gw.base);
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    assert!(failures.is_empty(), "{} failed requests at the client, first: {}", failures.len(), failures[0]);
    assert!(during_restart > 100, "the load ran through the restart ({during_restart} answers)");
}
