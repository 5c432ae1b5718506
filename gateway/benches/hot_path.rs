//! Criterion micro-benchmarks of the request hot path's pure pieces: decoding JSON and binary
#![allow(clippy::unwrap_used)] // benchmark code: a failure is a broken benchmark
//! bodies, checking against the signature, merging a batch and splitting it back.

use criterion::{Criterion, criterion_group, criterion_main};
use flywheel_gateway::batch::assemble::{merge_input, split_output};
use flywheel_gateway::model::signature::CheckInputs;
use flywheel_gateway::model::{Signature, TensorSpec};
use flywheel_gateway::protocol::{DataType, ResponseHeader, Tensor, TensorData, decode_request, encode_response};

/// A JSON body in Triton clients' key order (`data` after `shape` and `datatype`: read in one pass).
fn json_body(rows: usize) -> Vec<u8> {
    let data: Vec<f32> = (0..rows * 16).map(|i| i as f32 * 0.01).collect();
    let data = serde_json::to_string(&data).unwrap();
    format!(r#"{{"id":"b","inputs":[{{"name":"input","shape":[{rows},16],"datatype":"FP32","data":{data}}}]}}"#)
        .into_bytes()
}

/// One row of `features` values as Python clients write them: each f32 widened to f64 and
/// printed in full (17 significant digits, `tolist()` then `json.dumps`).
fn json_body_python(features: usize) -> Vec<u8> {
    let data: Vec<f64> = (0..features).map(|i| f64::from((i as f32 * 0.37).sin())).collect();
    let data = serde_json::to_string(&data).unwrap();
    format!(r#"{{"inputs":[{{"name":"input","shape":[1,{features}],"datatype":"FP32","data":{data}}}]}}"#).into_bytes()
}

/// The same body with sorted keys (`data` first: kept raw, read after the object).
fn json_body_data_first(rows: usize) -> Vec<u8> {
    let data: Vec<f32> = (0..rows * 16).map(|i| i as f32 * 0.01).collect();
    serde_json::to_vec(&serde_json::json!({"id": "b", "inputs": [{"name": "input", "shape": [rows, 16], "datatype": "FP32", "data": data}]}))
        .unwrap()
}

fn binary_body(rows: usize) -> (Vec<u8>, usize) {
    let header = serde_json::json!({"inputs": [{"name": "input", "shape": [rows, 16], "datatype": "FP32", "parameters": {"binary_data_size": rows * 64}}]});
    let mut body = serde_json::to_vec(&header).unwrap();
    let n = body.len();
    body.extend((0..rows * 16).flat_map(|i| (i as f32).to_le_bytes()));
    (body, n)
}

fn signature() -> Signature {
    let spec = |name: &str, width| TensorSpec { name: name.into(), datatype: DataType::Fp32, shape: vec![-1, width] };
    Signature::new(vec![spec("input", 16)], vec![spec("output", 1)])
}

fn decode(c: &mut Criterion) {
    let json1 = json_body(1);
    let json64 = json_body(64);
    let (bin64, n) = binary_body(64);
    c.bench_function("decode json 1x16", |b| b.iter(|| decode_request(&json1, None).unwrap()));
    let first = json_body_data_first(1);
    c.bench_function("decode json 1x16, data first", |b| b.iter(|| decode_request(&first, None).unwrap()));
    let python = json_body_python(256);
    c.bench_function("decode json 1x256, 17-digit numbers", |b| b.iter(|| decode_request(&python, None).unwrap()));
    c.bench_function("decode json 64x16", |b| b.iter(|| decode_request(&json64, None).unwrap()));
    c.bench_function("decode binary 64x16", |b| b.iter(|| decode_request(&bin64, Some(n)).unwrap()));
    let sig = signature();
    c.bench_function("check 1x16", |b| {
        b.iter_batched(
            || decode_request(&json1, None).unwrap().inputs,
            |inputs| sig.check(inputs, 64).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
}

fn batch(c: &mut Criterion) {
    let parts: Vec<Tensor> = (0..64)
        .map(|i| Tensor { name: "input".into(), shape: vec![1, 16], data: TensorData::Fp32(vec![i as f32; 16]) })
        .collect();
    let refs: Vec<&Tensor> = parts.iter().collect();
    c.bench_function("merge 64 requests of 1x16", |b| b.iter(|| merge_input(&refs).unwrap()));
    let out = Tensor { name: "output".into(), shape: vec![64, 1], data: TensorData::Fp32(vec![0.5; 64]) };
    let rows = vec![1usize; 64];
    c.bench_function("split 64x1 into 64", |b| {
        b.iter_batched(|| out.clone(), |o| split_output(o, &rows).unwrap(), criterion::BatchSize::SmallInput)
    });
    // One request's output is handed over whole (moved, never copied).
    let single = Tensor { name: "output".into(), shape: vec![1, 1024], data: TensorData::Fp32(vec![0.5; 1024]) };
    c.bench_function("split 1x1024 for one request", |b| {
        b.iter_batched(|| single.clone(), |o| split_output(o, &[1]).unwrap(), criterion::BatchSize::SmallInput)
    });
    // The arm record reads one score column, not the whole output converted.
    let scores = Tensor { name: "probabilities".into(), shape: vec![64, 2], data: TensorData::Fp32(vec![0.25; 128]) };
    let spec = flywheel_gateway::model::score::ScoreSpec { column: 1, ..Default::default() };
    c.bench_function("score column of a 64x2 output", |b| b.iter(|| spec.scores(std::slice::from_ref(&scores))));
    let one = Tensor { name: "output".into(), shape: vec![1, 1], data: TensorData::Fp32(vec![0.5]) };
    let header = ResponseHeader { model_name: "tiny", model_version: "2", id: Some("b") };
    c.bench_function("encode json response 1x1", |b| b.iter(|| encode_response(&header, &[(&one, false)])));
}

criterion_group!(benches, decode, batch);
criterion_main!(benches);
