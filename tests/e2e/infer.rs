//! Inference over JSON and binary tensors, HTTP/1.1 and HTTP/2, against in-process ONNX Runtime.

use hyper::Method;
use ort::session::Session;
use ort::value::Tensor;
use serde_json::{Value, json};

use crate::support::{Http, TestGateway, assert_close, output_f32, tiny_request, tiny_rows};

/// The tiny model's output on `rows`, computed by ONNX Runtime in this process.
fn in_process(model: &std::path::Path, rows: &[f32]) -> Vec<f32> {
    let env = flywheel_gateway::model::runtime::init(None).expect("ONNX Runtime (run scripts/setup-ort.sh)");
    let mut session = Session::builder(&env).unwrap().commit_from_file(model).unwrap();
    let input = Tensor::from_array((vec![rows.len() as i64 / 16, 16], rows.to_vec())).unwrap();
    let outputs = session.run(ort::inputs![input]).unwrap();
    outputs[0].try_extract_tensor::<f32>().unwrap().1.to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn json_infer_matches_in_process_onnx_runtime_and_echoes_ids() {
    let gw = TestGateway::start("version_policy = \"all\"\n");
    let http = Http::new(false);
    let rows = tiny_rows(5, 42);
    let mut body = tiny_request(&rows);
    body["id"] = json!("req-7");
    let headers = [("x-request-id", "trace-abc".to_owned())];
    let reply = http
        .send(Method::POST, &format!("{}/v2/models/tiny/infer", gw.base), &headers, serde_json::to_vec(&body).unwrap())
        .await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.header("x-request-id"), Some("trace-abc"));
    assert_eq!(reply.header("x-model-version"), Some("2"));
    let timing = reply.header("server-timing").unwrap();
    assert!(
        timing.contains("queue;dur=") && timing.contains("compute;dur=") && timing.contains("total;dur="),
        "{timing}"
    );
    let json = reply.json();
    assert_eq!((json["id"].as_str(), json["model_version"].as_str()), (Some("req-7"), Some("2")));
    assert_eq!(json["outputs"][0]["shape"], json!([5, 1]));
    let expected = in_process(&gw.repo.join("tiny/2/model.onnx"), &rows);
    assert_close(&output_f32(&json, 0), &expected, 1e-6);
    let reference = flywheel_onnx::fixtures::tiny(2).forward(&rows);
    assert_close(&expected, &reference, 1e-4);

    // An explicit version answers with that version's weights; a generated id is 32 hex digits.
    let v1 = http.post_json(&format!("{}/v2/models/tiny/versions/1/infer", gw.base), &tiny_request(&rows)).await;
    assert_eq!(v1.header("x-model-version"), Some("1"));
    assert_eq!(v1.header("x-request-id").map(str::len), Some(32));
    assert_close(&output_f32(&v1.json(), 0), &flywheel_onnx::fixtures::tiny(1).forward(&rows), 1e-4);
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_tensors_in_and_out_over_http2() {
    let gw = TestGateway::start("");
    let http = Http::new(true);
    let rows = tiny_rows(4, 9);
    let header = json!({
        "inputs": [{"name": "input", "shape": [4, 16], "datatype": "FP32", "parameters": {"binary_data_size": rows.len() * 4}}],
        "outputs": [{"name": "output", "parameters": {"binary_data": true}}]
    });
    let mut body = serde_json::to_vec(&header).unwrap();
    let header_len = body.len();
    body.extend(rows.iter().flat_map(|f| f.to_le_bytes()));
    let headers = [("inference-header-content-length", header_len.to_string())];
    let reply = http.send(Method::POST, &format!("{}/v2/models/tiny/infer", gw.base), &headers, body).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let n: usize = reply.header("inference-header-content-length").unwrap().parse().unwrap();
    let json: Value = serde_json::from_slice(&reply.body[..n]).unwrap();
    assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 16);
    let values: Vec<f32> = reply.body[n..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_close(&values, &flywheel_onnx::fixtures::tiny(2).forward(&rows), 1e-4);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_datatype_round_trips_and_outputs_can_be_selected() {
    let gw = TestGateway::start("");
    let http = Http::new(false);
    let body = json!({
        "inputs": [
            {"name": "a", "shape": [2, 3], "datatype": "FP32", "data": [1.5, 2, 3, 4, 5, 6]},
            {"name": "b", "shape": [2, 2], "datatype": "FP64", "data": [1.25, -2, 3, 4]},
            {"name": "c", "shape": [2, 2], "datatype": "INT32", "data": [[1, -2], [3, 2147483647]]},
            {"name": "d", "shape": [2, 1], "datatype": "INT64", "data": [9007199254740993i64, -5]},
            {"name": "e", "shape": [2, 2], "datatype": "BOOL", "data": [true, false, false, true]},
            {"name": "f", "shape": [2, 2], "datatype": "UINT8", "data": [0, 255, 7, 8]},
            {"name": "g", "shape": [2, 2], "datatype": "INT8", "data": [-128, 127, 0, 1]},
            {"name": "s", "shape": [2, 1], "datatype": "BYTES", "data": ["héllo", "world"]}
        ]
    });
    let reply = http.post_json(&format!("{}/v2/models/multi_io/infer", gw.base), &body).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let json = reply.json();
    let out = |name: &str| json["outputs"].as_array().unwrap().iter().find(|o| o["name"] == name).unwrap().clone();
    assert_eq!(out("a_twice")["data"], json!([3.0, 4.0, 6.0, 8.0, 10.0, 12.0]));
    assert_eq!(out("b_neg")["data"], json!([-1.25, 2.0, -3.0, -4.0]));
    assert_eq!(out("c_twice")["datatype"], "INT32");
    assert_eq!(out("c_twice")["data"], json!([2, -4, 6, -2]), "INT32 add wraps like ONNX Runtime does");
    assert_eq!(out("d_copy")["data"], json!([9007199254740993i64, -5]));
    assert_eq!(out("e_not")["data"], json!([false, true, true, false]));
    assert_eq!(out("f_copy")["data"], json!([0, 255, 7, 8]));
    assert_eq!(out("g_copy")["data"], json!([-128, 127, 0, 1]));
    assert_eq!(out("s_copy")["data"], json!(["héllo", "world"]));
    assert_eq!(out("s_copy")["datatype"], "BYTES");

    let mut selected = body.clone();
    selected["outputs"] = json!([{"name": "s_copy", "parameters": {"binary_data": true}}, {"name": "e_not"}]);
    let reply = http.post_json(&format!("{}/v2/models/multi_io/infer", gw.base), &selected).await;
    let n: usize = reply.header("inference-header-content-length").unwrap().parse().unwrap();
    let json: Value = serde_json::from_slice(&reply.body[..n]).unwrap();
    let names: Vec<&str> = json["outputs"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["s_copy", "e_not"]);
    let mut expected = Vec::new();
    for s in ["héllo", "world"] {
        expected.extend_from_slice(&(s.len() as u32).to_le_bytes());
        expected.extend_from_slice(s.as_bytes());
    }
    assert_eq!(&reply.body[n..], expected.as_slice());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fixed_batch_model_runs_one_request_at_a_time() {
    let gw = TestGateway::start("");
    let http = Http::new(false);
    let rows = tiny_rows(1, 3);
    let reply = http.post_json(&format!("{}/v2/models/tiny_fixed/infer", gw.base), &tiny_request(&rows)).await;
    assert_eq!(reply.status, 200);
    assert_close(&output_f32(&reply.json(), 0), &flywheel_onnx::fixtures::tiny(1).forward(&rows), 1e-4);
    let two = http.post_json(&format!("{}/v2/models/tiny_fixed/infer", gw.base), &tiny_request(&tiny_rows(2, 3))).await;
    assert_eq!(two.status, 400);
    assert!(two.json()["error"].as_str().unwrap().contains("shape [2, 16]"));
}
