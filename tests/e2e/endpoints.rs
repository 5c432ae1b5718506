//! Metadata, health, Triton config/stats/index and metrics endpoints.

use crate::support::{Http, TestGateway, tiny_request, tiny_rows};

#[tokio::test(flavor = "multi_thread")]
async fn server_and_model_endpoints_answer_in_the_protocols_shape() {
    let gw = TestGateway::start("version_policy = \"all\"\n");
    let http = Http::new(false);
    let base = &gw.base;

    let server = http.get(&format!("{base}/v2")).await.json();
    assert_eq!(server["name"], "flywheel");
    let extensions: Vec<&str> = server["extensions"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(extensions.contains(&"binary_tensor_data") && extensions.contains(&"statistics"), "{server}");

    assert_eq!(http.get(&format!("{base}/v2/health/live")).await.status, 200);
    assert_eq!(http.get(&format!("{base}/v2/health/ready")).await.status, 200);

    let meta = http.get(&format!("{base}/v2/models/tiny")).await.json();
    assert_eq!(meta["versions"], serde_json::json!(["1", "2"]));
    assert_eq!(meta["inputs"][0], serde_json::json!({"name": "input", "datatype": "FP32", "shape": [-1, 16]}));
    assert_eq!(meta["outputs"][0]["shape"], serde_json::json!([-1, 1]));
    let v1 = http.get(&format!("{base}/v2/models/tiny/versions/1")).await.json();
    assert_eq!(v1["versions"], serde_json::json!(["1"]));

    let ready = http.get(&format!("{base}/v2/models/tiny/ready")).await;
    assert_eq!((ready.status, ready.json()["version"].as_str()), (200, Some("2")));
    assert_eq!(http.get(&format!("{base}/v2/models/tiny/versions/1/ready")).await.status, 200);
    assert_eq!(http.get(&format!("{base}/v2/models/tiny/versions/7/ready")).await.status, 404);

    let config = http.get(&format!("{base}/v2/models/tiny/config")).await.json();
    assert_eq!(config["max_batch_size"], 64);
    assert_eq!(config["input"][0], serde_json::json!({"name": "input", "data_type": "TYPE_FP32", "dims": [16]}));
    let fixed = http.get(&format!("{base}/v2/models/tiny_fixed/config")).await.json();
    assert_eq!(fixed["max_batch_size"], 0, "a fixed batch dimension is not batchable");
    assert_eq!(fixed["input"][0]["dims"], serde_json::json!([1, 16]));

    let reply = http.post_json(&format!("{base}/v2/models/tiny/infer"), &tiny_request(&tiny_rows(3, 1))).await;
    assert_eq!(reply.status, 200);
    let stats = http.get(&format!("{base}/v2/models/tiny/versions/2/stats")).await.json();
    let s = &stats["model_stats"][0];
    assert_eq!((s["name"].as_str(), s["version"].as_str()), (Some("tiny"), Some("2")));
    assert_eq!(s["inference_count"], 3);
    assert_eq!(s["inference_stats"]["success"]["count"], 1);
    assert!(s["inference_stats"]["compute_infer"]["ns"].as_u64().unwrap() > 0);
    let all = http.get(&format!("{base}/v2/models/stats")).await.json();
    assert_eq!(all["model_stats"].as_array().unwrap().len(), 5, "every loaded version: {all}");

    let index = http.send(hyper::Method::POST, &format!("{base}/v2/repository/index"), &[], vec![]).await.json();
    assert!(index.as_array().unwrap().iter().any(|m| m["name"] == "heavy" && m["state"] == "READY"));

    let metrics = String::from_utf8(http.get(&format!("{base}/metrics")).await.body.to_vec()).unwrap();
    for name in [
        "flywheel_requests_total{model=\"tiny\",version=\"2\",code=\"200\"} 1",
        "flywheel_request_duration_seconds_bucket",
        "flywheel_queue_duration_seconds_bucket",
        "flywheel_compute_duration_seconds_bucket",
        "flywheel_batch_rows_bucket",
        "flywheel_queue_depth",
        "flywheel_pending_requests{model=\"tiny\",version=\"2\"} 0",
        "flywheel_inference_busy_seconds",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
}
