//! Every 4xx path answers with the protocol's `{"error": ...}` naming what was wrong, and the
//! gateway keeps serving afterwards.

use hyper::Method;
use serde_json::json;

use crate::support::{Http, TestGateway, tiny_request, tiny_rows};

#[tokio::test(flavor = "multi_thread")]
async fn each_bad_request_gets_a_4xx_naming_the_problem() {
    let gw = TestGateway::start("max_body_bytes = 4096\n");
    let http = Http::new(false);
    let url = format!("{}/v2/models/tiny/infer", gw.base);
    let input = |name: &str, shape: serde_json::Value, datatype: &str, data: serde_json::Value| json!({"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]});
    let zeros = vec![0.0f32; 16];
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (serde_json::to_vec(&input("x", json!([1, 16]), "FP32", json!(zeros))).unwrap(), 400, "unknown input 'x'"),
        (serde_json::to_vec(&input("input", json!([1, 16]), "INT32", json!(vec![0; 16]))).unwrap(), 400, "datatype INT32, the model expects FP32"),
        (serde_json::to_vec(&input("input", json!([2, 8]), "FP32", json!(zeros))).unwrap(), 400, "shape [2, 8]"),
        (serde_json::to_vec(&input("input", json!([1, 16]), "FP32", json!([1.0, 2.0]))).unwrap(), 400, "has 2 elements but shape [1, 16] needs 16"),
        (b"{\"inputs\": [".to_vec(), 400, "malformed request JSON"),
        (serde_json::to_vec(&tiny_request(&tiny_rows(40, 1))).unwrap(), 413, "exceeds the limit of 4096 bytes"),
        (
            serde_json::to_vec(&json!({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": zeros}], "outputs": [{"name": "nope"}]})).unwrap(),
            400,
            "unknown output 'nope'",
        ),
    ];
    for (body, status, expected) in cases {
        let reply = http.send(Method::POST, &url, &[], body).await;
        assert_eq!(reply.status, status, "{}", String::from_utf8_lossy(&reply.body));
        let message = reply.json()["error"].as_str().unwrap().to_owned();
        assert!(message.contains(expected), "{message:?} should mention {expected:?}");
    }

    let not_found = [
        ("/v2/models/nope/infer", "unknown model 'nope'"),
        ("/v2/models/tiny/versions/9/infer", "no ready version '9'"),
        ("/v2/models/tiny/versions/x/infer", "no ready version 'x'"),
    ];
    for (path, expected) in not_found {
        let reply = http.post_json(&format!("{}{path}", gw.base), &tiny_request(&zeros)).await;
        assert_eq!(reply.status, 404);
        assert!(reply.json()["error"].as_str().unwrap().contains(expected));
    }
    let wrong_method = http.get(&url).await;
    assert_eq!(wrong_method.status, 405);
    assert!(wrong_method.json()["error"].as_str().unwrap().contains("use POST"));
    let bad_binary =
        http.send(Method::POST, &url, &[("inference-header-content-length", "99999".into())], b"{}".to_vec()).await;
    assert_eq!(bad_binary.status, 400);

    // Still serving.
    let ok = http.post_json(&url, &tiny_request(&zeros)).await;
    assert_eq!(ok.status, 200);
}

#[test]
fn a_bad_config_exits_non_zero_naming_key_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[batching]\ninstances = 0\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--config", config.to_str().unwrap(), "--model-repository", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("batching.instances must be in 1..=64, given 0"),
        "{stderr}"
    );
}

#[test]
fn a_missing_runtime_library_says_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let repo = crate::support::model_repo(dir.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--model-repository")
        .arg(&repo)
        .arg("--ort-library")
        .arg(dir.path().join("nothing-here"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ONNX Runtime library not found") && stderr.contains("scripts/setup-ort.sh"), "{stderr}");
}

/// A model whose run fails for some inputs (`flywheel_onnx::fixtures::lookup`: 10 entries).
pub fn write_lookup_model(repo: &std::path::Path) {
    let dir = repo.join("lookup/1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.onnx"), flywheel_onnx::fixtures::lookup()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_input_the_model_refuses_is_a_client_error_with_a_message_and_serving_goes_on() {
    let gw = TestGateway::start_with("", write_lookup_model);
    let http = Http::new(false);
    let url = format!("{}/v2/models/lookup/infer", gw.base);
    let body =
        |index: i64| json!({"inputs": [{"name": "index", "shape": [1, 1], "datatype": "INT64", "data": [index]}]});
    let bad = http.post_json(&url, &body(99)).await;
    // ONNX Runtime calls an out-of-range index an invalid argument: the client's fault.
    assert_eq!(bad.status, 400, "{}", String::from_utf8_lossy(&bad.body));
    let message = bad.json()["error"].as_str().unwrap().to_owned();
    assert!(message.starts_with("the model refused this request's input:") && message.contains("idx=99"), "{message}");
    let good = http.post_json(&url, &body(2)).await;
    assert_eq!(good.status, 200);
    assert_eq!(good.json()["outputs"][0]["data"], json!([20.0]));
    let stats = http.get(&format!("{}/v2/models/lookup/stats", gw.base)).await.json();
    assert_eq!(stats["model_stats"][0]["inference_stats"]["fail"]["count"], 1);
}
