//! `POST /v2/models/{model}[/versions/{v}]/infer`: read, decode, check, queue, answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_ENCODING, CONTENT_LENGTH, HeaderMap, HeaderValue};
use hyper::{Request, Response};

use super::routes::error_response;
use super::{ApiError, AppState, HttpResponse};
use crate::batch::{InferError, JobOutput};
use crate::metrics::InFlight;
use crate::model::{ModelVersion, ValidationError};
use crate::protocol::{InferRequest, ResponseHeader, Tensor, decode_request, encode_response};

/// Header carrying the JSON header length when binary tensors follow it.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
/// Request id header: echoed when given, generated otherwise.
pub const REQUEST_ID: &str = "x-request-id";
/// Names the model version that answered.
pub const MODEL_VERSION: &str = "x-model-version";

/// Answers one inference request; every outcome is counted for its model version.
pub async fn infer(state: &AppState, req: Request<Incoming>, model: &str, version: Option<&str>) -> HttpResponse {
    let started = Instant::now();
    let _in_flight = InFlight::start();
    let request_id = request_id(req.headers());
    // Resolve once; the Arc keeps this version alive until the answer is sent even if the
    // table is swapped meanwhile.
    let resolved = state.table.load().resolve(model, version).map(Arc::clone);
    let mv = match resolved {
        Ok(mv) => mv,
        Err(e) => return finish(error_response(&e.into()), &request_id, None, started, None),
    };
    let (response, timing) = match run(state, req, &mv).await {
        Ok((response, out)) => (response, Some((out.queue, out.compute))),
        Err(e) => {
            if let ApiError::Infer(InferError::QueueFull { .. }) = e {
                mv.metrics.rejected.increment(1);
            }
            tracing::debug!(model, error_type = e.error_type(), error = %e, "inference request failed");
            (error_response(&e), None)
        }
    };
    let total = started.elapsed();
    mv.stats.record_request(timing.is_some(), total);
    mv.metrics.count_response(response.status().as_u16());
    mv.metrics.request_seconds.record(total.as_secs_f64());
    finish(response, &request_id, Some(&mv), started, timing)
}

async fn run(
    state: &AppState,
    req: Request<Incoming>,
    mv: &ModelVersion,
) -> Result<(HttpResponse, JobOutput), ApiError> {
    let header_length = header_length(req.headers())?;
    let body = read_body(req, state.max_body_bytes).await?;
    let request = decode_request(&body, header_length)?;
    drop(body);
    let InferRequest { id, inputs, outputs: requested, binary_output_default } = request;
    let selection = select_outputs(mv, &requested, binary_output_default)?;
    let checked = mv.signature.check(inputs, mv.effective_max_batch_size())?;
    let reply = mv.queue.submit(checked.tensors, checked.rows)?;
    mv.metrics.queue_depth.set(mv.queue.depth() as f64);
    let output = reply.await.map_err(|_| InferError::Runtime("the inference thread dropped the request".into()))??;
    let chosen: Vec<(&Tensor, bool)> =
        selection.iter().map(|(index, binary)| (&output.outputs[*index], *binary)).collect();
    let version = mv.version.to_string();
    let header = ResponseHeader { model_name: &mv.model, model_version: &version, id: id.as_deref() };
    let encoded = encode_response(&header, &chosen);
    let mut builder = Response::builder().status(200);
    builder = match encoded.header_length {
        Some(n) => builder.header("content-type", "application/octet-stream").header(HEADER_LENGTH, n.to_string()),
        None => builder.header("content-type", "application/json"),
    };
    let response = builder
        .body(Full::new(Bytes::from(encoded.body)))
        .map_err(|e| InferError::Runtime(format!("building the response: {e}")))?;
    Ok((response, output))
}

/// Indices (into the signature's outputs) and binary flags of the outputs to return.
fn select_outputs(
    mv: &ModelVersion,
    requested: &[crate::protocol::RequestedOutput],
    binary_default: bool,
) -> Result<Vec<(usize, bool)>, ValidationError> {
    let outputs = &mv.signature.outputs;
    if requested.is_empty() {
        return Ok((0..outputs.len()).map(|i| (i, binary_default)).collect());
    }
    requested
        .iter()
        .map(|r| {
            let index = outputs.iter().position(|s| s.name == r.name).ok_or_else(|| {
                let names: Vec<&str> = outputs.iter().map(|s| s.name.as_str()).collect();
                ValidationError(format!("unknown output '{}'; the model's outputs are [{}]", r.name, names.join(", ")))
            })?;
            Ok((index, r.binary.unwrap_or(binary_default)))
        })
        .collect()
}

fn header_length(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    if let Some(encoding) = headers.get(CONTENT_ENCODING)
        && encoding.as_bytes() != b"identity"
    {
        return Err(ApiError::BadRequest(format!("Content-Encoding {encoding:?} is not supported; send identity")));
    }
    let Some(value) = headers.get(HEADER_LENGTH) else { return Ok(None) };
    let parsed = value.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok());
    parsed.map(Some).ok_or_else(|| {
        ApiError::BadRequest(format!("Inference-Header-Content-Length must be a byte count, given {value:?}"))
    })
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if let Some(n) = declared.filter(|n| *n > limit) {
        return Err(ApiError::BodyTooLarge { given: n.to_string(), limit });
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::BodyTooLarge { given: "more".into(), limit })
        }
        Err(e) => Err(ApiError::BadRequest(format!("reading the request body: {e}"))),
    }
}

fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers.get(REQUEST_ID).filter(|v| !v.is_empty() && v.len() <= 128).cloned().unwrap_or_else(|| {
        // 128 random bits as hex: unique enough to join a label to its request.
        HeaderValue::from_str(&format!("{:032x}", fastrand::u128(..))).unwrap_or(HeaderValue::from_static("0"))
    })
}

/// Adds the request id, model version and `Server-Timing` headers.
fn finish(
    mut response: HttpResponse,
    request_id: &HeaderValue,
    mv: Option<&ModelVersion>,
    started: Instant,
    timing: Option<(Duration, Duration)>,
) -> HttpResponse {
    let headers = response.headers_mut();
    headers.insert(REQUEST_ID, request_id.clone());
    if let Some(v) = mv.and_then(|mv| HeaderValue::from_str(&mv.version.to_string()).ok()) {
        headers.insert(MODEL_VERSION, v);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let total = ms(started.elapsed());
    let value = match timing {
        Some((queue, compute)) => {
            format!("queue;dur={:.3}, compute;dur={:.3}, total;dur={total:.3}", ms(queue), ms(compute))
        }
        None => format!("total;dur={total:.3}"),
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert("server-timing", v);
    }
    response
}
