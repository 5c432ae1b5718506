//! Graceful shutdown: stop accepting, finish what is in flight, exit 0.

use std::time::Duration;

use serde_json::json;

use crate::support::{Http, TestGateway};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    // A slow model (16→2048→2048→1, ~1 ms a row): four 256-row requests take about a second,
    // so they are surely in flight when SIGTERM arrives.
    let mut gw = TestGateway::start_with("[models.slow]\nmax_batch_size = 256\n", |repo| {
        let dir = repo.join("slow/1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.onnx"), flywheel_onnx::Mlp::random(&[16, 2048, 2048, 1], 5).to_onnx(1)).unwrap();
    });
    let http = Http::new(false);
    let url = format!("{}/v2/models/slow/infer", gw.base);
    let big = crate::support::tiny_request(&crate::support::tiny_rows(256, 1));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (http, url, big) = (http.clone(), url.clone(), big.clone());
        tasks.push(tokio::spawn(async move { http.post_json(&url, &big).await }));
    }
    // Wait until every request has reached the gateway and at least one is still in flight.
    let metrics_url = format!("{}/metrics", gw.base);
    let stats_url = format!("{}/v2/models/slow/stats", gw.base);
    let mut in_flight_seen = false;
    for _ in 0..1000 {
        let metrics = String::from_utf8(http.get(&metrics_url).await.body.to_vec()).unwrap();
        let in_flight = crate::support::metric_value(&metrics, "flywheel_requests_in_flight");
        let stats = http.get(&stats_url).await.json();
        let done = stats["model_stats"][0]["inference_stats"]["success"]["count"].as_u64().unwrap_or(0) as f64;
        if in_flight >= 1.0 && in_flight + done >= 4.0 {
            in_flight_seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(in_flight_seen, "requests were in flight when SIGTERM was sent");
    gw.terminate();
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, 200, "in-flight request finished: {}", String::from_utf8_lossy(&reply.body));
        assert_eq!(reply.json()["outputs"][0]["shape"], json!([256, 1]));
    }
    let status =
        tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(20)).map(|s| (s, gw))).await.unwrap();
    let (status, gw) = status.expect("gateway exited within the grace period");
    assert!(status.success(), "exit status {status:?}");
    let refused = tokio::net::TcpStream::connect(gw.base.trim_start_matches("http://")).await;
    assert!(refused.is_err(), "no longer accepting connections");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_that_fails_to_load_is_skipped_and_the_highest_ready_one_serves() {
    // latest = 2: the broken version 3 does not count, so versions 2 and 1 load.
    let gw = TestGateway::start_with("version_policy = { latest = 2 }\n", |repo| {
        let broken = repo.join("tiny/3");
        std::fs::create_dir_all(&broken).unwrap();
        std::fs::write(broken.join("model.onnx"), b"not an onnx file").unwrap();
    });
    let http = Http::new(false);
    let meta = http.get(&format!("{}/v2/models/tiny", gw.base)).await.json();
    assert_eq!(meta["versions"], json!(["1", "2"]));
    let reply =
        http.post_json(&format!("{}/v2/models/tiny/infer", gw.base), &crate::support::tiny_request(&[0.0; 16])).await;
    assert_eq!(reply.header("x-model-version"), Some("2"));
    let missing = http.get(&format!("{}/v2/models/tiny/versions/3", gw.base)).await;
    assert_eq!(missing.status, 404);
    let metrics = String::from_utf8(http.get(&format!("{}/metrics", gw.base)).await.body.to_vec()).unwrap();
    assert!(metrics.contains("flywheel_model_load_failures_total{model=\"tiny\"} 1"), "{metrics}");
}

/// The value of an unlabelled metric in Prometheus text.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_changes_a_restart_only_key_says_so() {
    let gw = TestGateway::start("max_in_flight = 64\n[batching]\nmax_batch_size = 32\n");
    let http = Http::new(false);
    // A live key (batching) and two that need a restart.
    std::fs::write(
        &gw.config_path,
        "max_in_flight = 8\n[batching]\nmax_batch_size = 16\n[server]\nbody_timeout_ms = 2000\n",
    )
    .unwrap();
    let status = http.send(hyper::Method::POST, &format!("{}/admin/reload", gw.base), &[], vec![]).await;
    assert_eq!(status.status, 200);
    let status = status.json();
    assert_eq!(status["error"], json!(null), "{status:#}");
    assert_eq!(status["restart_required"], json!(["max_in_flight", "server.body_timeout_ms"]), "{status:#}");
    let config = http.get(&format!("{}/v2/models/tiny/config", gw.base)).await.json();
    assert_eq!(config["max_batch_size"], 16, "the live key was applied: {config:#}");
    let audit = http.get(&format!("{}/admin/audit", gw.base)).await.json();
    let noted =
        audit["entries"].as_array().unwrap().iter().any(|e| {
            e["action"] == "restart_required" && e["reason"].as_str().unwrap().contains("server.body_timeout_ms")
        });
    assert!(noted, "the audit log says which keys wait for a restart: {audit:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_policy_serves_the_latest_version_and_a_retired_one_leaves_the_scrape() {
    let gw = TestGateway::start("");
    let http = Http::new(false);
    let meta = http.get(&format!("{}/v2/models/tiny", gw.base)).await.json();
    assert_eq!(meta["versions"], json!(["2"]), "Triton's default: latest 1");
    let config = http.get(&format!("{}/v2/models/tiny/config", gw.base)).await.json();
    assert_eq!(config["version_policy"], json!({"latest": {"num_versions": 1}}));
    let url = format!("{}/v2/models/tiny/infer", gw.base);
    let body = crate::support::tiny_request(&crate::support::tiny_rows(1, 1));
    assert_eq!(http.post_json(&url, &body).await.header("x-model-version"), Some("2"));
    let scrape = |http: Http, base: String| async move {
        String::from_utf8(http.get(&format!("{base}/metrics")).await.body.to_vec()).unwrap()
    };
    assert!(scrape(http.clone(), gw.base.clone()).await.contains("model=\"tiny\",version=\"2\""));
    // Version 3 arrives: version 2 is unloaded, and its series leave /metrics.
    let v3 = gw.repo.join("tiny/3");
    std::fs::create_dir_all(&v3).unwrap();
    std::fs::copy(gw.repo.join("tiny/1/model.onnx"), v3.join("model.onnx")).unwrap();
    let swapped = crate::support::wait_until(Duration::from_secs(10), || async {
        http.get(&format!("{}/v2/models/tiny", gw.base)).await.json()["versions"] == json!(["3"])
    })
    .await;
    assert!(swapped, "only the new latest version is served");
    assert_eq!(http.post_json(&url, &body).await.header("x-model-version"), Some("3"));
    let text = scrape(http.clone(), gw.base.clone()).await;
    assert!(text.contains("model=\"tiny\",version=\"3\""), "{text}");
    assert!(!text.contains("model=\"tiny\",version=\"2\""), "the retired version's series are gone:\n{text}");
}
