//! Dynamic batching under concurrency, and refusal when the queue is full.

use serde_json::json;

use crate::support::{Http, TestGateway, assert_close, output_f32, tiny_request, tiny_rows};

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_are_batched_and_each_gets_its_own_rows() {
    // A long queue delay makes the batch wait for the other requests.
    let gw = TestGateway::start("[models.tiny]\nmax_queue_delay_us = 200000\nmax_batch_size = 64\n");
    let http = Http::new(false);
    let url = format!("{}/v2/models/tiny/versions/2/infer", gw.base);
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let rows = tiny_rows(1 + (i as usize % 3), i);
            let reply = http.post_json(&url, &tiny_request(&rows)).await;
            (rows, reply)
        }));
    }
    let model = flywheel_onnx::fixtures::tiny(2);
    for task in tasks {
        let (rows, reply) = task.await.unwrap();
        assert_eq!(reply.status, 200);
        assert_close(&output_f32(&reply.json(), 0), &model.forward(&rows), 1e-4);
    }
    let stats = http.get(&format!("{}/v2/models/tiny/versions/2/stats", gw.base)).await.json();
    let s = &stats["model_stats"][0];
    let batch_sizes: Vec<u64> =
        s["batch_stats"].as_array().unwrap().iter().map(|b| b["batch_size"].as_u64().unwrap()).collect();
    assert!(batch_sizes.iter().any(|b| *b > 3), "some batch holds several requests: {batch_sizes:?}");
    assert!(s["execution_count"].as_u64().unwrap() < 16, "fewer batches than requests: {s}");
    assert_eq!(s["inference_stats"]["success"]["count"], 16);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_answers_503_with_retry_after_at_once() {
    // One thread, room for one waiting request, and a model slow enough (16→2048→2048→1,
    // ~1 ms a row) that 64-row requests arrive far faster than they are computed.
    let config = "[models.slow]\nqueue_capacity = 1\nmax_batch_size = 64\n";
    let gw = TestGateway::start_with(config, |repo| {
        let dir = repo.join("slow/1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.onnx"), flywheel_onnx::Mlp::random(&[16, 2048, 2048, 1], 5).to_onnx(1)).unwrap();
    });
    let http = Http::new(false);
    let url = format!("{}/v2/models/slow/infer", gw.base);
    let body = tiny_request(&tiny_rows(64, 1));
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        tasks.push(tokio::spawn(async move { http.post_json(&url, &body).await }));
    }
    let (mut ok, mut refused) = (0, 0);
    for task in tasks {
        let reply = task.await.unwrap();
        match reply.status {
            200 => ok += 1,
            503 => {
                refused += 1;
                assert_eq!(reply.header("retry-after"), Some("1"));
                assert!(reply.json()["error"].as_str().unwrap().contains("is full"));
            }
            other => panic!("unexpected status {other}: {}", String::from_utf8_lossy(&reply.body)),
        }
    }
    assert!(ok >= 1 && refused >= 1, "ok {ok}, refused {refused}");
    let metrics = String::from_utf8(http.get(&format!("{}/metrics", gw.base)).await.body.to_vec()).unwrap();
    assert!(metrics.contains("code=\"503\""), "503s are counted");
    // The gateway recovers once the burst is over.
    let after = http.post_json(&format!("{}/v2/models/tiny/infer", gw.base), &tiny_request(&tiny_rows(1, 0))).await;
    assert_eq!(after.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_in_flight_refuses_with_503_and_gives_the_unit_back() {
    let config = "max_in_flight = 1\n[models.slow]\nmax_batch_size = 4096\n";
    let gw = TestGateway::start_with(config, |repo| {
        let dir = repo.join("slow/1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.onnx"), flywheel_onnx::Mlp::random(&[16, 2048, 2048, 1], 5).to_onnx(1)).unwrap();
    });
    let http = Http::new(false);
    let long = {
        let (http, url) = (http.clone(), format!("{}/v2/models/slow/infer", gw.base));
        tokio::spawn(async move { http.post_json(&url, &tiny_request(&tiny_rows(4000, 1))).await })
    };
    let metrics_url = format!("{}/metrics", gw.base);
    let busy = crate::support::wait_until(std::time::Duration::from_secs(5), || async {
        String::from_utf8(http.get(&metrics_url).await.body.to_vec())
            .unwrap()
            .contains("flywheel_pending_requests{model=\"slow\",version=\"1\"} 1")
    })
    .await;
    assert!(busy);
    // Pending means queued on the version, so past admission: the unit is held.
    let refused = http.post_json(&format!("{}/v2/models/tiny/infer", gw.base), &tiny_request(&tiny_rows(1, 2))).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(refused.json()["error"].as_str().unwrap().contains("max_in_flight"));
    assert_eq!(long.await.unwrap().status, 200);
    let after = http.post_json(&format!("{}/v2/models/tiny/infer", gw.base), &tiny_request(&tiny_rows(1, 2))).await;
    assert_eq!(after.status, 200, "the unit is given back");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poisoned_row_fails_alone_in_a_batch_of_good_ones() {
    // A queue delay long enough that concurrent requests share a batch.
    let config = "[models.lookup]\nmax_batch_size = 64\nmax_queue_delay_us = 50000\n";
    let gw = TestGateway::start_with(config, crate::errors::write_lookup_model);
    let http = Http::new(false);
    let url = format!("{}/v2/models/lookup/infer", gw.base);
    let mut tasks = Vec::new();
    for i in 0..8i64 {
        // Request 5 asks for index 100 of a 10-entry table: ONNX Runtime refuses the run.
        let index = if i == 5 { 100 } else { i };
        let body = json!({"inputs": [{"name": "index", "shape": [1, 1], "datatype": "INT64", "data": [index]}]});
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move { (i, http.post_json(&url, &body).await) }));
    }
    for task in tasks {
        let (i, reply) = task.await.unwrap();
        if i == 5 {
            assert_eq!(reply.status, 400, "the poisoned request is the client's fault: {:?}", reply.body);
            let error = reply.json()["error"].as_str().unwrap().to_owned();
            assert!(error.contains("the model refused this request's input"), "{error}");
        } else {
            assert_eq!(reply.status, 200, "request {i} is not failed by its neighbour: {:?}", reply.body);
            assert_eq!(reply.json()["outputs"][0]["data"], json!([i as f64 * 10.0]));
        }
    }
    let metrics = String::from_utf8(http.get(&format!("{}/metrics", gw.base)).await.body.to_vec()).unwrap();
    let retried = metrics
        .lines()
        .find(|l| l.starts_with("flywheel_batch_retries_total{model=\"lookup\""))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(retried >= 1.0, "the poisoned request shared a batch that was retried request by request:\n{metrics}");
}

/// `flywheel_inline_runs_total` of tiny version 2.
async fn inline_runs(http: &Http, base: &str) -> f64 {
    let text = String::from_utf8(http.get(&format!("{base}/metrics")).await.body.to_vec()).unwrap();
    crate::support::metric_value(&text, "flywheel_inline_runs_total{model=\"tiny\",version=\"2\"}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cheap_models_lone_request_runs_inline_and_concurrent_ones_still_get_their_own_rows() {
    // A generous limit: the tiny model's one-row time on a loaded CI machine decides nothing.
    let gw = TestGateway::start("[batching]\ninline_max_us = 10000\n");
    let http = Http::new(false);
    let url = format!("{}/v2/models/tiny/versions/2/infer", gw.base);
    let model = flywheel_onnx::fixtures::tiny(2);
    let rows = tiny_rows(2, 7);
    let reply = http.post_json(&url, &tiny_request(&rows)).await;
    assert_eq!(reply.status, 200);
    assert_close(&output_f32(&reply.json(), 0), &model.forward(&rows), 1e-4);
    assert_eq!(inline_runs(&http, &gw.base).await, 1.0, "a lone request on an empty queue runs inline");
    // Concurrent requests: some inline, the rest through the queue; each gets its own rows.
    let mut tasks = Vec::new();
    for i in 0..48u64 {
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let rows = tiny_rows(1 + (i as usize % 3), i);
            (http.post_json(&url, &tiny_request(&rows)).await, rows)
        }));
    }
    for task in tasks {
        let (reply, rows) = task.await.unwrap();
        assert_eq!(reply.status, 200);
        assert_close(&output_f32(&reply.json(), 0), &model.forward(&rows), 1e-4);
    }
    let stats = http.get(&format!("{}/v2/models/tiny/versions/2/stats", gw.base)).await.json();
    assert_eq!(stats["model_stats"][0]["inference_stats"]["success"]["count"], 49, "counted like any request");

    // Off (inline_max_us = 0), or asked to wait for batch partners: never inline.
    let waits = "[batching]\ninline_max_us = 10000\n[models.tiny]\nmax_queue_delay_us = 1000\n";
    for config in ["[batching]\ninline_max_us = 0\n", waits] {
        let gw = TestGateway::start(config);
        let reply = http.post_json(&format!("{}/v2/models/tiny/versions/2/infer", gw.base), &tiny_request(&rows)).await;
        assert_close(&output_f32(&reply.json(), 0), &model.forward(&rows), 1e-4);
        assert_eq!(inline_runs(&http, &gw.base).await, 0.0, "{config}");
    }
}
