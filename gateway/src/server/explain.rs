//! `POST /v2/models/{model}[/versions/{v}]/explain`: the same body as `infer`; the answer is
//! the inference response (JSON) plus, per row of the first input, the Shapley attributions of
//! the version's score and the top reason codes:
//!
//! ```json
//! {"model_name": "fraud", "model_version": "3", "outputs": [...],
//!  "explained": {"output": "probabilities", "column": 1, "input": "input", "method": "exact", ...},
//!  "explanations": [{"base_value": 0.12, "prediction": 0.91, "attributions": [...],
//!                    "top": [{"feature": 7, "attribution": 0.41}, ...]}]}
//! ```
//! The prediction is served (routed, sampled, counted) as any inference; the explanation runs
//! after it on the blocking pool under the explanation budget, and is refused (503) when the
//! budget is full or the version has a serving backlog (a full batch waiting): explanations are shed first.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::body::{self, BodyLimits};
use super::pipeline::{self, Answer, AnswerMeta, Decoded, RequestIds};
use super::routes::error_response;
use super::{ApiError, AppState, HttpResponse};
use crate::explain::{Attribution, ExplainSettings, ExplainTarget, top};
use crate::model::table::BudgetPermit;
use crate::protocol::{InferRequest, ResponseHeader, Tensor, decode_request, encode_response};
use crate::rollout::Reloader;

/// Answers one explanation request over HTTP.
pub async fn explain(
    state: &AppState,
    req: hyper::Request<Incoming>,
    model: &str,
    version: Option<&str>,
) -> HttpResponse {
    let started = Instant::now();
    let ids = RequestIds::of(req.headers());
    let done = |response: HttpResponse, meta: &AnswerMeta| finish(response, &ids, meta, started);
    let Some(reloader) = state.reloader.clone() else {
        return done(error_response(&ApiError::NotReady("no reloader".into())), &AnswerMeta::default());
    };
    let settings = reloader.config.load().explain.clone();
    let (parts, body) = req.into_parts();
    let limits =
        BodyLimits { max_bytes: state.max_body_bytes, timeout: state.limits.body_timeout(), request_deadline: None };
    let (body, _bytes_held) = match body::read(&parts.headers, body, limits, &state.body_bytes).await {
        Ok(read) => read,
        Err(e) => return done(error_response(&e), &AnswerMeta::default()),
    };
    // The budget once the body is in (a slow upload holds none) and before any work. The slot
    // moves into the computation: it is held until the work ends, even if the client leaves.
    let slot = match acquire(state, &settings) {
        Ok(slot) => slot,
        Err(busy) => return done(error_response(&busy), &AnswerMeta::default()),
    };
    let headers = &parts.headers;
    let first_input: Arc<Mutex<Option<Tensor>>> = Arc::default();
    let kept = Arc::clone(&first_input);
    let decode = move || -> Result<Decoded, ApiError> {
        let request = decode_request(&body, super::infer::header_length(headers)?)?;
        let InferRequest { id, inputs, mut outputs, .. } = request;
        // The answer is JSON (the explanations are), whatever the request asked.
        outputs.iter_mut().for_each(|o| o.binary = Some(false));
        *kept.lock().unwrap_or_else(|p| p.into_inner()) = inputs.first().cloned();
        Ok(Decoded { id, inputs, outputs, binary_default: false })
    };
    let encode = |chosen: pipeline::Chosen<'_>| -> Result<(Vec<u8>, ExplainTarget, bool), ApiError> {
        let version = chosen.mv.version.to_string();
        let header = ResponseHeader { model_name: &chosen.mv.model, model_version: &version, id: chosen.id };
        let encoded = encode_response(&header, &chosen.outputs);
        Ok((encoded.body, ExplainTarget::of(chosen.mv), chosen.mv.backlogged()))
    };
    let deadline = parts.extensions.get::<super::Deadline>().map(|d| pipeline::Deadline { at: d.0, client_ms: None });
    let lookup = |name: &str| headers.get(name).map(|v| v.as_bytes().to_vec());
    let Answer { result, meta } =
        pipeline::answer(state, (model, version), lookup, &ids, started, deadline, decode, encode).await;
    let (answer, target, backlogged) = match result {
        Ok(ok) => ok,
        Err(e) => return done(error_response(&e), &meta),
    };
    let input = first_input.lock().unwrap_or_else(|p| p.into_inner()).take();
    let job = Job { reloader, target, backlogged, input, settings, slot };
    let response = after_answer(state, job).await.and_then(|(explained, explanations)| {
        let mut body: Value = serde_json::from_slice(&answer)
            .map_err(|e| ApiError::BadRequest(format!("the inference answer is not JSON: {e}")))?;
        if let Some(object) = body.as_object_mut() {
            object.insert("explained".into(), explained);
            object.insert("explanations".into(), explanations);
        }
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap_or_default())))
            .map_err(|e| ApiError::BadRequest(format!("building the response: {e}")))
    });
    done(response.unwrap_or_else(|e| error_response(&e)), &meta)
}

/// A unit of the explanation budget, or why there is none (shared with automatic explanations).
pub(crate) fn acquire(state: &AppState, settings: &ExplainSettings) -> Result<BudgetPermit, ApiError> {
    state.explain_budget.try_acquire().ok_or_else(|| {
        ApiError::ExplainBusy(format!(
            "the explanation budget is full ({} at once, explain.max_concurrent, shared with automatic explanations); retry later",
            settings.max_concurrent
        ))
    })
}

/// What explaining an answered request needs (HTTP's `/explain`, gRPC's `explain` parameter).
pub(crate) struct Job {
    pub reloader: Arc<Reloader>,
    /// The version that answered.
    pub target: ExplainTarget,
    /// Whether that version had a serving backlog when it answered.
    pub backlogged: bool,
    /// The request's first input, as decoded.
    pub input: Option<Tensor>,
    pub settings: ExplainSettings,
    /// Held until the computation ends, even if the client leaves.
    pub slot: BudgetPermit,
}

/// After the inference: refused when the version has a serving backlog (explanations are shed
/// first), else the rows are explained on the blocking pool, stopping if a backlog forms:
/// `(explained, explanations)`.
pub(crate) async fn after_answer(state: &AppState, job: Job) -> Result<(Value, Value), ApiError> {
    let Job { reloader, target, backlogged, input, settings, slot } = job;
    if backlogged {
        return Err(ApiError::ExplainBusy(format!(
            "version {} has a serving backlog (a full batch waiting); explanations are shed first, retry later",
            target.version
        )));
    }
    // The serving version, to stop explaining the moment it has a queue.
    let serving = state.table.load().models.get(&target.model).and_then(|m| m.versions.get(&target.version)).cloned();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let busy = || serving.as_ref().is_some_and(|mv| mv.backlogged());
        compute(&reloader, &target, input, &settings, &busy)
    })
    .await
    .unwrap_or_else(|e| Err(ApiError::Infer(crate::batch::InferError::Runtime(format!("explanation failed: {e}")))))
}

/// Opens (once) the version's explainer and explains the request's rows: `(explained, explanations)`.
fn compute(
    reloader: &Reloader,
    target: &ExplainTarget,
    input: Option<Tensor>,
    settings: &ExplainSettings,
    busy: &dyn Fn() -> bool,
) -> Result<(Value, Value), ApiError> {
    let (name, _, features) = target.tabular_input().map_err(ApiError::BadRequest)?;
    let input = input.ok_or_else(|| ApiError::BadRequest("the request has no input to explain".into()))?;
    let values = input.data.to_f64().ok_or_else(|| {
        ApiError::BadRequest(format!("input '{}' is {}: not explained", input.name, input.data.datatype()))
    })?;
    let rows: Vec<Vec<f64>> = values.chunks(features).map(<[f64]>::to_vec).collect();
    if rows.len() > settings.max_rows {
        return Err(ApiError::BadRequest(format!(
            "{} rows asked for explanations; at most {} per request (explain.max_rows)",
            rows.len(),
            settings.max_rows
        )));
    }
    let explainer = target
        .slot
        .get_or_open(&reloader.env, target, || crate::explain::background(reloader, target, settings))
        .map_err(ApiError::BadRequest)?;
    let cost = explainer.cost(rows.len(), &settings.shapley());
    if cost > settings.max_evaluations {
        return Err(ApiError::BadRequest(format!(
            "explaining {} rows of {features} features against {} background rows costs {cost} model rows, over explain.max_evaluations ({})",
            rows.len(),
            explainer.background.len(),
            settings.max_evaluations
        )));
    }
    let started = Instant::now();
    let attributions = explainer.explain(&rows, &settings.shapley(), busy, 1.0).map_err(|e| match e.as_str() {
        crate::explain::SHED => ApiError::ExplainBusy(format!("{e}; retry later")),
        _ => ApiError::BadRequest(e),
    })?;
    crate::metrics::count_explanations(&target.model, rows.len(), started.elapsed());
    let (output, column) = explainer.explained();
    let first = attributions.first();
    let explained = json!({
        "output": output,
        "column": column,
        "input": name,
        "method": first.map(|a| a.method),
        "background_rows": explainer.background.len(),
        "evaluations_per_row": first.map(|a| a.evaluations),
        "additivity": "attributions sum to prediction - base_value (base_value: the mean score over the background)",
        "max_standard_error": first.and_then(|_| max_error(&attributions)),
        "milliseconds": started.elapsed().as_secs_f64() * 1e3,
    });
    let explanations: Vec<Value> = attributions.iter().map(|a| row_json(a, settings.top)).collect();
    Ok((explained, Value::Array(explanations)))
}

fn max_error(attributions: &[Attribution]) -> Option<f64> {
    attributions.iter().filter_map(|a| a.standard_error.as_ref()).flatten().copied().reduce(f64::max)
}

fn row_json(a: &Attribution, k: usize) -> Value {
    let reasons: Vec<Value> = top(&a.values, k)
        .into_iter()
        .map(|(feature, value)| json!({"feature": feature, "attribution": value}))
        .collect();
    let mut row = json!({
        "base_value": a.base_value,
        "prediction": a.prediction,
        "attributions": a.values,
        "top": reasons,
    });
    if let (Some(se), Some(object)) = (&a.standard_error, row.as_object_mut()) {
        object.insert("standard_error".into(), json!(se));
    }
    row
}

fn finish(mut response: HttpResponse, ids: &RequestIds, answer: &AnswerMeta, started: Instant) -> HttpResponse {
    pipeline::answer_headers(response.headers_mut(), ids, answer, started);
    response
}
