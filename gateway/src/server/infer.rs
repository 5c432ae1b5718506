//! `POST /v2/models/{model}[/versions/{v}]/infer`: the HTTP adapter of [`super::pipeline`]
//! (JSON and Triton's binary tensor extension, the answer's headers).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_ENCODING, HeaderMap, HeaderValue};
use hyper::{Request, Response};

use super::body::{self, BodyLimits};
use super::pipeline::{self, Answer, Decoded, RequestIds};
use super::routes::error_response;
use super::{ApiError, AppState, HttpResponse};
use crate::batch::InferError;
use crate::protocol::{InferRequest, ResponseHeader, decode_request, encode_response};

/// Header carrying the JSON header length when binary tensors follow it.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
pub use super::pipeline::REQUEST_ID;
/// The gateway's own unique id of the request, on every answer: what labels join on.
pub const GATEWAY_REQUEST_ID: &str = "x-flywheel-request-id";
/// Names the model version that answered.
pub const MODEL_VERSION: &str = "x-model-version";
/// Names the routing arm that answered (champion, canary, explicit).
pub const ARM: &str = "x-flywheel-arm";

/// Answers one inference request over HTTP.
pub async fn infer(state: &AppState, req: Request<Incoming>, model: &str, version: Option<&str>) -> HttpResponse {
    let started = Instant::now();
    let ids = RequestIds::of(req.headers());
    let (parts, body) = req.into_parts();
    // The body first, under its deadline and the server's byte budget, then admission: a client
    // that trickles its body holds no admission slot, only the bytes it has sent.
    let limits = BodyLimits { max_bytes: state.max_body_bytes, timeout: state.limits.body_timeout() };
    let (body, _bytes_held) = match body::read(&parts.headers, body, limits, &state.body_bytes).await {
        Ok(read) => read,
        Err(e) => {
            tracing::debug!(model, error_type = e.error_type(), error = %e, "request body refused");
            count_cut(&e);
            return finish(error_response(&e), &ids, None, started, None);
        }
    };
    let headers = &parts.headers;
    let decode = move || -> Result<Decoded, ApiError> {
        let request = decode_request(&body, header_length(headers)?)?;
        let InferRequest { id, inputs, outputs, binary_output_default } = request;
        Ok(Decoded { id, inputs, outputs, binary_default: binary_output_default })
    };
    let deadline = parts.extensions.get::<super::Deadline>().map(|d| d.0);
    let lookup = |name: &str| headers.get(name).map(|v| v.as_bytes().to_vec());
    let answer: Answer<HttpResponse> =
        pipeline::answer(state, (model, version), lookup, &ids, started, deadline, decode, encode).await;
    let response = match answer.result {
        Ok(response) => response,
        Err(e) => error_response(&e),
    };
    let mut response = finish(response, &ids, answer.version, started, answer.timing);
    if let Some(arm) = answer.arm {
        response.headers_mut().insert(ARM, HeaderValue::from_static(arm.as_str()));
    }
    response
}

/// The chosen outputs as the protocol's JSON or binary body.
fn encode(chosen: pipeline::Chosen<'_>) -> Result<HttpResponse, ApiError> {
    let version = chosen.mv.version.to_string();
    let header = ResponseHeader { model_name: &chosen.mv.model, model_version: &version, id: chosen.id };
    let encoded = encode_response(&header, &chosen.outputs);
    let mut builder = Response::builder().status(200);
    builder = match encoded.header_length {
        Some(n) => builder.header("content-type", "application/octet-stream").header(HEADER_LENGTH, n.to_string()),
        None => builder.header("content-type", "application/json"),
    };
    Ok(builder
        .body(Full::new(Bytes::from(encoded.body)))
        .map_err(|e| InferError::Runtime(format!("building the response: {e}")))?)
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

/// Counts a request cut off on a deadline or the byte budget.
fn count_cut(e: &ApiError) {
    match e {
        ApiError::BodyTimeout { .. } => crate::metrics::count_request_cut("body_timeout"),
        ApiError::BytesOverloaded { .. } => crate::metrics::count_request_cut("body_bytes_budget"),
        _ => {}
    }
}

/// Adds the request id, model version and `Server-Timing` headers.
fn finish(
    mut response: HttpResponse,
    ids: &RequestIds,
    version: Option<u64>,
    started: Instant,
    timing: Option<(Duration, Duration)>,
) -> HttpResponse {
    let headers = response.headers_mut();
    headers.insert(REQUEST_ID, ids.echoed().clone());
    headers.insert(GATEWAY_REQUEST_ID, ids.gateway_value().clone());
    if let Some(v) = version.and_then(|v| HeaderValue::from_str(&v.to_string()).ok()) {
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
