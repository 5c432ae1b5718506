//! Hostile and impatient clients: slow heads and slow bodies are cut off on their deadlines
//! while healthy clients keep being served, and SIGTERM drains the way a load balancer needs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Http, TestGateway, tiny_request, tiny_rows};

/// Writes `head` then trickles `trickle` one byte every 100 ms; returns what the server sent
/// back before it closed the connection, and when it closed.
async fn slow_client(addr: String, head: Vec<u8>, trickle: Vec<u8>) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream.write_all(&head).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        for b in trickle {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if write.write_all(&[b]).await.is_err() {
                return;
            }
        }
        // Then hold the connection open without sending anything.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), read.read_to_end(&mut got)).await;
    writer.abort();
    (String::from_utf8_lossy(&got).into_owned(), started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_heads_and_bodies_are_cut_off_while_healthy_clients_are_served() {
    let config = "max_in_flight = 4\n[server]\nheader_timeout_ms = 800\nbody_timeout_ms = 800\n";
    let gw = TestGateway::start(config);
    let addr = gw.base.trim_start_matches("http://").to_owned();
    // Twice the admission limit of each kind of attacker.
    let mut attackers = Vec::new();
    for _ in 0..8 {
        let body_head = b"POST /v2/models/tiny/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 4000\r\n\r\n{".to_vec();
        attackers.push(("body", tokio::spawn(slow_client(addr.clone(), body_head, vec![b' '; 200]))));
        let header_head = b"POST /v2/models/tiny/infer HTTP/1.1\r\nhost: x\r\n".to_vec();
        attackers.push((
            "header",
            tokio::spawn(slow_client(addr.clone(), header_head, b"x-slow: aaaaaaaaaaaaaaaaaaaaaaaa".to_vec())),
        ));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let http = Http::new(false);
    let url = format!("{}/v2/models/tiny/infer", gw.base);
    let body = tiny_request(&tiny_rows(1, 3));
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        let reply = http.post_json(&url, &body).await;
        assert_eq!(reply.status, 200, "a healthy client is served beside the attackers: {:?}", reply.body);
        served += 1;
    }
    assert!(served > 10, "healthy requests kept flowing ({served})");
    for (kind, attacker) in attackers {
        let (answer, closed_after) = attacker.await.unwrap();
        assert!(
            closed_after < Duration::from_secs(5),
            "{kind} attacker cut off within the deadline ({closed_after:?})"
        );
        if kind == "body" {
            assert!(answer.starts_with("HTTP/1.1 408"), "a slow body gets 408: {answer:?}");
            assert!(answer.contains("body_timeout_ms"), "the error names the setting: {answer:?}");
        }
    }
    let metrics = String::from_utf8(http.get(&format!("{}/metrics", gw.base)).await.body.to_vec()).unwrap();
    // At least the 8 slow heads (a spare connection the healthy client's pool opened and never
    // used is closed by the same rule).
    assert!(counter(&metrics, "flywheel_connections_closed_total{reason=\"header_timeout\"}") >= 8.0, "{metrics}");
    assert_eq!(counter(&metrics, "flywheel_requests_cut_total{reason=\"body_timeout\"}"), 8.0, "{metrics}");
}

/// The value of the series `series` (name and labels, exactly) in Prometheus text.
fn counter(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_whole_request_deadline_cuts_a_body_slower_than_it_even_within_the_body_timeout() {
    // The request deadline (300 ms) comes before the body's (5 s): an inference request whose
    // body trickles is answered 504 on the request deadline, with its ids, and counted as such.
    let gw = TestGateway::start("[server]\nbody_timeout_ms = 5000\nrequest_timeout_ms = 300\n");
    let addr = gw.base.trim_start_matches("http://").to_owned();
    let head = b"POST /v2/models/tiny/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 4000\r\n\r\n{".to_vec();
    let (answer, closed_after) = slow_client(addr, head, vec![b' '; 100]).await;
    assert!(answer.starts_with("HTTP/1.1 504"), "cut on the request deadline: {answer:?}");
    assert!(answer.contains("request_timeout_ms") && answer.contains("300"), "names the setting: {answer:?}");
    assert!(answer.to_ascii_lowercase().contains("x-request-id:"), "the answer carries its ids: {answer:?}");
    assert!(closed_after < Duration::from_secs(3), "well before the body deadline ({closed_after:?})");
    let http = Http::new(false);
    let metrics = String::from_utf8(http.get(&format!("{}/metrics", gw.base)).await.body.to_vec()).unwrap();
    assert_eq!(counter(&metrics, "flywheel_requests_cut_total{reason=\"request_timeout\"}"), 1.0, "{metrics}");
    assert_eq!(counter(&metrics, "flywheel_requests_cut_total{reason=\"body_timeout\"}"), 0.0, "{metrics}");
    // Healthy requests are answered as before.
    let reply = http.post_json(&format!("{}/v2/models/tiny/infer", gw.base), &tiny_request(&tiny_rows(1, 3))).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_inference_that_outlives_the_request_deadline_is_answered_504_and_counted() {
    // A lone request waits up to 1 s for batch partners; the request deadline (300 ms) cuts it
    // while it waits: 504 with the request's ids, counted as request_timeout.
    let gw = TestGateway::start("[server]\nrequest_timeout_ms = 300\n[models.tiny]\nmax_queue_delay_us = 1000000\n");
    let http = Http::new(false);
    let started = Instant::now();
    let reply = http.post_json(&format!("{}/v2/models/tiny/infer", gw.base), &tiny_request(&tiny_rows(1, 3))).await;
    assert_eq!(reply.status, 504, "{:?}", reply.body);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "cut on the deadline, not the batch ({:?})",
        started.elapsed()
    );
    assert!(String::from_utf8_lossy(&reply.body).contains("request_timeout_ms"), "{:?}", reply.body);
    assert!(reply.headers.contains_key("x-request-id"), "the answer carries its ids");
    let metrics = String::from_utf8(http.get(&format!("{}/metrics", gw.base)).await.body.to_vec()).unwrap();
    assert_eq!(counter(&metrics, "flywheel_requests_cut_total{reason=\"request_timeout\"}"), 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_cap_wait_in_the_backlog_until_one_closes() {
    let gw = TestGateway::start("[server]\nmax_connections = 2\nheader_timeout_ms = 700\n");
    let addr = gw.base.trim_start_matches("http://").to_owned();
    // Two silent connections take both slots.
    let _a = TcpStream::connect(&addr).await.unwrap();
    let _b = TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let reply = Http::new(false).get(&format!("{}/v2/health/live", gw.base)).await;
    assert_eq!(reply.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the third connection waited for a slot (the silent ones close after header_timeout_ms): {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_drains_without_a_single_failed_request() {
    let mut gw = TestGateway::start("[server]\ndrain_delay_ms = 1500\n");
    let url = format!("{}/v2/models/tiny/infer", gw.base);
    let ready_url = format!("{}/v2/health/ready", gw.base);
    let seen_not_ready = Arc::new(AtomicBool::new(false));
    let (ok, closes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for seed in 0..4 {
        let (url, stop, ok, closes) = (url.clone(), Arc::clone(&seen_not_ready), Arc::clone(&ok), Arc::clone(&closes));
        clients.push(tokio::spawn(async move {
            // hyper's client honours `Connection: close`: it opens a new connection next time.
            let http = Http::new(false);
            let body = tiny_request(&tiny_rows(1, seed));
            let mut stopped_at: Option<Instant> = None;
            // Like a load balancer: keep sending a little after readiness went false.
            while stopped_at.is_none_or(|t| t.elapsed() < Duration::from_millis(300)) {
                let reply = http.post_json(&url, &body).await;
                assert_eq!(reply.status, 200, "served while draining: {:?}", reply.body);
                ok.fetch_add(1, Ordering::Relaxed);
                if reply.header("connection") == Some("close") {
                    closes.fetch_add(1, Ordering::Relaxed);
                }
                if stopped_at.is_none() && stop.load(Ordering::Relaxed) {
                    stopped_at = Some(Instant::now());
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = ok.load(Ordering::Relaxed);
    gw.terminate();
    let http = Http::new(false);
    let ready_off = crate::support::wait_until(Duration::from_secs(2), || async {
        http.send(hyper::Method::GET, &ready_url, &[("connection", "close".into())], Vec::new()).await.status == 503
    })
    .await;
    assert!(ready_off, "readiness answers 503 as soon as SIGTERM arrives");
    seen_not_ready.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("no client saw a failed request or a refused connection");
    }
    assert!(ok.load(Ordering::Relaxed) > before, "requests were served after SIGTERM");
    assert!(closes.load(Ordering::Relaxed) >= 4, "HTTP/1.1 answers carried Connection: close while draining");
    let status = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(20))).await.unwrap();
    assert!(status.is_some_and(|s| s.success()), "exited 0 after the drain: {status:?}");
}

/// Peak and current resident memory of a process, in KiB (Linux `/proc`).
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap()
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_large_nested_json_requests_stays_within_the_byte_budget() {
    // 16 clients at once, each with a ~4.7 MB nested-JSON body; 24 MiB of bodies may be held.
    let config =
        "max_body_bytes = 8388608\n[server]\nmax_in_flight_bytes = 25165824\n[models.tiny]\nmax_batch_size = 0\n";
    let gw = TestGateway::start(config);
    let pid = gw.child.id();
    let http = Http::new(false);
    let url = format!("{}/v2/models/tiny/infer", gw.base);
    assert_eq!(http.post_json(&url, &tiny_request(&tiny_rows(1, 1))).await.status, 200);
    let (_, idle) = memory_kib(pid);
    let rows = 15_000;
    let nested: Vec<Vec<f32>> = tiny_rows(rows, 7).chunks(16).map(<[f32]>::to_vec).collect();
    let body = serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": "input", "shape": [rows, 16], "datatype": "FP32", "data": nested}]
    }))
    .unwrap();
    assert!(body.len() > 4 << 20, "a large body: {} bytes", body.len());
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            // Like a well-behaved client: a 503 is retried after a pause.
            let headers = [("content-type", "application/json".to_owned())];
            let mut shed = 0;
            loop {
                let status = http.send(hyper::Method::POST, &url, &headers, body.clone()).await.status;
                if status != 503 || shed == 50 {
                    return (status, shed);
                }
                shed += 1;
                tokio::time::sleep(Duration::from_millis(20 * shed)).await;
            }
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert!(statuses.iter().all(|(s, _)| *s == 200), "every client is served in the end: {statuses:?}");
    let (peak, _) = memory_kib(pid);
    let grown_mib = peak.saturating_sub(idle) / 1024;
    // At most 24 MiB of bodies are held, each decoding straight into 0.9 MiB of f32 (a
    // serde_json::Value tree would take 32 bytes an element, 7.7 MiB a body), plus answers.
    assert!(grown_mib < 200, "peak memory grew by {grown_mib} MiB over idle ({statuses:?})");
    println!("nested-JSON flood: peak RSS {grown_mib} MiB over idle; (status, times shed) {statuses:?}");
}
