//! `POST /v2/models/{model}[/versions/{v}]/infer`: the HTTP adapter of [`super::pipeline`]
//! (JSON and Triton's binary tensor extension, the answer's headers).

use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_ENCODING, HeaderMap, HeaderValue};
use hyper::{Request, Response};

use super::body::{self, BodyLimits};
use super::pipeline::{self, Answer, AnswerMeta, Decoded, RequestIds};
use super::routes::error_response;
use super::{ApiError, AppState, HttpResponse};
use crate::batch::InferError;
use crate::protocol::{InferRequest, ResponseHeader, decode_request, encode_response};

/// Header carrying the JSON header length when binary tensors follow it.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
pub use super::pipeline::{ARM, GATEWAY_REQUEST_ID, MODEL_VERSION, REQUEST_ID};

/// Answers one inference request over HTTP.
pub async fn infer(state: &AppState, req: Request<Incoming>, model: &str, version: Option<&str>) -> HttpResponse {
    let started = Instant::now();
    let _in_flight = crate::metrics::InFlight::start();
    let ids = RequestIds::of(req.headers());
    let (parts, body) = req.into_parts();
    // This route bounds its own time (no timer around it, `super::answer`): the body read and
    // the pipeline each end by the request's deadline.
    let deadline = parts.extensions.get::<super::Deadline>().map(|d| pipeline::Deadline { at: d.0, client_ms: None });
    // The body first, under its deadline and the server's byte budget, then admission: a client
    // that trickles its body holds no admission slot, only the bytes it has sent.
    let limits = BodyLimits {
        max_bytes: state.max_body_bytes,
        timeout: state.limits.body_timeout(),
        request_deadline: deadline.map(|d| (d.at, state.limits.request_timeout_ms)),
    };
    let (body, _bytes_held) = match body::read(&parts.headers, body, limits, &state.body_bytes).await {
        Ok(read) => read,
        Err(e) => {
            tracing::debug!(model, error_type = e.error_type(), error = %e, "request body refused");
            count_cut(&e);
            return finish(error_response(&e), &ids, &AnswerMeta::default(), started);
        }
    };
    let headers = &parts.headers;
    let decode = move || -> Result<Decoded, ApiError> {
        let request = decode_request(&body, header_length(headers)?)?;
        let InferRequest { id, inputs, outputs, binary_output_default } = request;
        Ok(Decoded { id, inputs, outputs, binary_default: binary_output_default })
    };
    let lookup = |name: &str| headers.get(name).map(|v| v.as_bytes().to_vec());
    let answer: Answer<HttpResponse> =
        pipeline::answer(state, (model, version), lookup, &ids, started, deadline, decode, encode).await;
    let Answer { result, meta } = answer;
    finish(result.unwrap_or_else(|e| error_response(&e)), &ids, &meta, started)
}

/// The chosen outputs as the protocol's JSON or binary body.
fn encode(chosen: pipeline::Chosen<'_>) -> Result<HttpResponse, ApiError> {
    let version = chosen.mv.version.to_string();
    let header = ResponseHeader { model_name: &chosen.mv.model, model_version: &version, id: chosen.id };
    let encoded = encode_response(&header, &chosen.outputs);
    let mut builder = Response::builder().status(200);
    // Parsed names and static values: nothing is parsed or validated per answer.
    const HEADER_LENGTH_NAME: hyper::header::HeaderName = hyper::header::HeaderName::from_static(HEADER_LENGTH);
    let content_type = hyper::header::CONTENT_TYPE;
    builder = match encoded.header_length {
        Some(n) => builder
            .header(content_type, HeaderValue::from_static("application/octet-stream"))
            .header(HEADER_LENGTH_NAME, HeaderValue::from(n)),
        None => builder.header(content_type, HeaderValue::from_static("application/json")),
    };
    Ok(builder
        .body(Full::new(Bytes::from(encoded.body)))
        .map_err(|e| InferError::Runtime(format!("building the response: {e}")))?)
}

pub(super) fn header_length(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
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
        ApiError::RequestTimeout { .. } => crate::metrics::count_request_cut("request_timeout"),
        ApiError::BytesOverloaded { .. } => crate::metrics::count_request_cut("body_bytes_budget"),
        _ => {}
    }
}

/// Adds the request ids, model version, arm and `Server-Timing` headers.
fn finish(mut response: HttpResponse, ids: &RequestIds, answer: &AnswerMeta, started: Instant) -> HttpResponse {
    pipeline::answer_headers(response.headers_mut(), ids, answer, started);
    response
}
