//! `POST /v2/models/{model}[/versions/{v}]/infer`: read, decode, check, queue, answer.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_ENCODING, HeaderMap, HeaderValue};
use hyper::{Request, Response};

use super::body::{self, BodyLimits};
use super::routes::error_response;
use super::{ApiError, AppState, HttpResponse};
use crate::batch::{InferError, JobOutput};
use crate::metrics::{ARM_REQUESTS, InFlight, SHADOW_REQUESTS};
use crate::model::table::{BudgetPermit, RouteEvidence, ServedModel};
use crate::model::{Arm, ModelVersion, ValidationError};
use crate::protocol::{InferRequest, ResponseHeader, Tensor, decode_request, encode_response};
use crate::tap::{Served, Tap, id_fraction};

/// Header carrying the JSON header length when binary tensors follow it.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
/// Request id header: echoed when given, the gateway's id otherwise.
pub const REQUEST_ID: &str = "x-request-id";
/// The gateway's own unique id of the request, on every answer: what labels join on.
pub const GATEWAY_REQUEST_ID: &str = "x-flywheel-request-id";
/// Names the model version that answered.
pub const MODEL_VERSION: &str = "x-model-version";
/// Names the routing arm that answered (champion, canary, explicit).
pub const ARM: &str = "x-flywheel-arm";

/// Answers one inference request; every outcome is counted for its model version and arm.
pub async fn infer(state: &AppState, req: Request<Incoming>, model: &str, version: Option<&str>) -> HttpResponse {
    let started = Instant::now();
    let _in_flight = InFlight::start();
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
    // Over the limit, answer before any work is queued, so an overloaded gateway spends as
    // little as possible on work it will not do.
    let _admitted = match state.admission.as_ref().map(|b| (b.try_acquire(), b.max())) {
        Some((None, max)) => {
            return finish(error_response(&ApiError::Overloaded { max }), &ids, None, started, None);
        }
        Some((permit, _)) => permit,
        None => None,
    };
    // Route once; the Arcs keep these versions alive until the answer (and any shadow) is done
    // even if the table is swapped meanwhile.
    let routed = {
        let table = state.table.load();
        table.route(model, version, |header| parts.headers.get(header).map(|v| v.as_bytes().to_vec())).map(
            |(mv, arm)| {
                let extras = (arm != Arm::Explicit)
                    .then(|| table.models.get(model).map(|s| RouteExtras::pick(s, arm)))
                    .flatten();
                (mv, arm, extras)
            },
        )
    };
    let (mv, arm, extras) = match routed {
        Ok(routed) => routed,
        Err(e) => return finish(error_response(&e.into()), &ids, None, started, None),
    };
    let mirror = extras.as_ref().is_some_and(|x| x.shadow.is_some());
    let tapping = state.tap.as_ref().map(|tap| TapDecision::new(tap, state, ids.sampling_key(), &mv.model, arm));
    let keep_inputs = mirror || tapping.as_ref().is_some_and(|t| t.needs_inputs);
    // The whole-request deadline, applied here too so a request that runs out of time is
    // counted against the arm that was too slow (the outer deadline fires at the same instant
    // but polls this future first).
    let ran = match parts.extensions.get::<super::Deadline>() {
        Some(deadline) => {
            match tokio::time::timeout_at(deadline.0, run(&parts.headers, body, &mv, keep_inputs)).await {
                Ok(ran) => ran,
                Err(_) => {
                    crate::metrics::count_request_cut("request_timeout");
                    Err(ApiError::RequestTimeout { after_ms: state.limits.request_timeout_ms })
                }
            }
        }
        None => run(&parts.headers, body, &mv, keep_inputs).await,
    };
    let (response, timing, answered) = match ran {
        Ok((response, out, inputs)) => (response, Some((out.queue, out.compute)), Some((out, inputs))),
        Err(e) => {
            if let ApiError::Infer(InferError::QueueFull { .. }) = e {
                mv.metrics.rejected.increment(1);
            }
            tracing::debug!(model, error_type = e.error_type(), error = %e, "inference request failed");
            (error_response(&e), None, None)
        }
    };
    let total = started.elapsed();
    mv.stats.record_request(timing.is_some(), total);
    mv.metrics.count_response(response.status().as_u16());
    mv.metrics.request_seconds.record(total.as_secs_f64());
    metrics::counter!(ARM_REQUESTS, "model" => mv.model.clone(), "arm" => arm.as_str()).increment(1);
    // The answer's score per row, read once for the arm's evidence and the tap.
    let scores = answered.as_ref().and_then(|(out, _)| mv.score.scores(&out.outputs));
    let evidence = extras.as_ref().map(|x| Arc::clone(&x.evidence));
    if let Some(extras) = extras {
        let sample = state
            .tap
            .as_ref()
            .filter(|_| tapping.as_ref().is_some_and(|t| t.sampled))
            .map(|tap| (Arc::clone(tap), ids.clone()));
        let outcome = match &answered {
            Some((_, inputs)) => Outcome::Answered(inputs.as_ref(), scores.clone()),
            None => Outcome::of_status(response.status().as_u16()),
        };
        extras.after_primary(arm, total, outcome, sample);
    }
    if let (Some(tap), Some(decision)) = (state.tap.as_deref(), tapping) {
        let status = response.status().as_u16();
        let route = evidence.map(|e| (e, arm));
        decision.offer(tap, &mv, (&ids, route), arm, (status, total), (answered, scores));
    }
    let mut response = finish(response, &ids, Some(&mv), started, timing);
    response.headers_mut().insert(ARM, HeaderValue::from_static(arm.as_str()));
    response
}

/// Route-level work around a routed (not explicitly addressed) request: arm evidence and the
/// shadow mirror.
struct RouteExtras {
    evidence: Arc<RouteEvidence>,
    /// The shadow version and the budget unit this request holds, when it is mirrored.
    shadow: Option<(Arc<ModelVersion>, BudgetPermit)>,
}

/// What became of a routed request, as its arm's evidence counts it.
enum Outcome<'a> {
    /// The inputs (when kept for the shadow) and the answer's score per row.
    Answered(Option<&'a Vec<Tensor>>, Option<Vec<f64>>),
    /// The server failed it (inference error, timeout): counts against the arm.
    ServerError,
    /// The client's request was at fault (4xx): shown, never held against the arm.
    ClientError,
    /// Refused for capacity (full queue, admission, shutting down): shown, never held against it.
    Refused,
}

impl Outcome<'_> {
    fn of_status(status: u16) -> Self {
        match status {
            503 => Outcome::Refused,
            400..=499 => Outcome::ClientError,
            _ => Outcome::ServerError,
        }
    }
}

impl RouteExtras {
    /// Decides whether this request is mirrored: only champion answers are (the shadow is
    /// compared with the champion, never with itself as canary), by the shadow fraction, then
    /// the shadow's in-flight budget (a full budget drops the mirror, never the request).
    fn pick(served: &ServedModel, arm: Arm) -> Self {
        let route = &served.route;
        let shadow =
            route.shadow.as_ref().filter(|s| arm == Arm::Champion && fastrand::f64() < s.fraction).and_then(|s| {
                let mv = served.versions.get(&s.version)?;
                match s.budget.try_acquire() {
                    Some(permit) => Some((Arc::clone(mv), permit)),
                    None => {
                        count_shadow(&served.name, "dropped_budget");
                        None
                    }
                }
            });
        Self { evidence: Arc::clone(&route.evidence), shadow }
    }

    /// Records the primary's outcome for its arm (in the step's and the lifetime's record) and
    /// starts the shadow, after the primary answer is ready: the shadow never delays or
    /// changes it.
    fn after_primary(self, arm: Arm, latency: Duration, outcome: Outcome<'_>, sample: Option<(Arc<Tap>, RequestIds)>) {
        let (inputs, primary) = match outcome {
            Outcome::Answered(inputs, scores) => (inputs, scores),
            other => {
                self.evidence.each(|r| {
                    if let Some(record) = r.arm(arm) {
                        match other {
                            Outcome::ServerError => record.record_error(),
                            Outcome::ClientError => record.record_client_error(),
                            _ => record.record_refused(),
                        }
                    }
                });
                return;
            }
        };
        let score = primary.as_ref().and_then(|p| p.first().copied());
        self.evidence.each(|r| {
            if let Some(record) = r.arm(arm) {
                record.record_ok(latency, score);
            }
        });
        if let (Some((shadow, permit)), Some(inputs), Some(primary)) = (self.shadow, inputs, primary) {
            let job = ShadowJob {
                shadow,
                permit,
                evidence: self.evidence,
                inputs: inputs.clone(),
                primary,
                primary_latency: latency,
                sample,
            };
            tokio::spawn(run_shadow(job));
        }
    }
}

/// Whether a request goes to the tap, decided by its id before it runs (so inputs are kept only
/// when needed), and finished with what the answer adds (errors, uncertain predictions).
struct TapDecision {
    sampled: bool,
    drift: bool,
    /// A routed request of a model whose rollout has a policy: its answer goes to the tap's
    /// label index (not to Parquet), so the labels that arrive for it count in its arm's
    /// labelled quality.
    join_labels: bool,
    keep_errors: bool,
    uncertain_within: f64,
    needs_inputs: bool,
}

impl TapDecision {
    /// `key` is the client's id when it sent one (so the decision is the same on every replica
    /// and retry), the gateway's otherwise.
    fn new(tap: &Tap, state: &AppState, key: &str, model: &str, arm: Arm) -> Self {
        let at = id_fraction(key);
        let config = state.reloader.as_ref().map(|r| r.config.load());
        let rate = config.as_ref().map_or(tap.sampling.rate, |c| c.sample_rate_for(model));
        let join_labels = arm != Arm::Explicit
            && config.as_ref().and_then(|c| c.rollout_for(model)).is_some_and(|r| r.policy.is_some());
        let sampled = at < rate || (tap.sampling.keep_canary && arm == Arm::Canary);
        let drift = tap.drift.enabled && at < tap.drift.rate;
        let uncertain_within = tap.sampling.keep_uncertain_within;
        Self {
            sampled,
            drift,
            join_labels,
            keep_errors: tap.sampling.keep_errors,
            uncertain_within,
            needs_inputs: sampled || drift || uncertain_within > 0.0,
        }
    }

    /// Hands the served request to the tap (a full channel drops it, never waits).
    fn offer(
        self,
        tap: &Tap,
        mv: &ModelVersion,
        (ids, route): (&RequestIds, Option<(Arc<RouteEvidence>, Arm)>),
        arm: Arm,
        (status, latency): (u16, Duration),
        (answered, scores): (Option<Answered>, Option<Vec<f64>>),
    ) {
        let (outputs, inputs) = match answered {
            Some((out, inputs)) => (out.outputs, inputs.unwrap_or_default()),
            None => (Vec::new(), Vec::new()),
        };
        let uncertain = self.uncertain_within > 0.0
            && mv.score.is_classifier()
            && scores
                .as_ref()
                .is_some_and(|s| s.iter().any(|p| (p - mv.score.threshold).abs() < self.uncertain_within));
        let sampled = self.sampled || uncertain || (self.keep_errors && status != 200);
        let joins = self.join_labels && status == 200;
        if !(sampled || self.drift || joins) {
            return;
        }
        // Inputs go on only for what uses them (Parquet, drift), never for the label join alone.
        let inputs = if sampled || self.drift { inputs } else { Vec::new() };
        tap.offer(Served {
            request_id: ids.gateway(),
            client_request_id: ids.client(),
            time: SystemTime::now(),
            model: mv.model.clone(),
            version: mv.version,
            arm: arm.as_str(),
            status,
            latency,
            inputs,
            outputs,
            sampled,
            scores,
            threshold: mv.score.is_classifier().then_some(mv.score.threshold),
            route,
        });
    }
}

/// A request's outputs and, when kept, its inputs.
type Answered = (JobOutput, Option<Vec<Tensor>>);

/// A mirrored request for the shadow version.
struct ShadowJob {
    shadow: Arc<ModelVersion>,
    permit: BudgetPermit,
    evidence: Arc<RouteEvidence>,
    inputs: Vec<Tensor>,
    primary: Vec<f64>,
    primary_latency: Duration,
    /// When the primary was sampled: the tap and request ids, so the shadow's answer is stored
    /// beside it (arm `shadow`).
    sample: Option<(Arc<Tap>, RequestIds)>,
}

/// Runs the mirrored request on the shadow version and records the pair; its outcome never
/// reaches the client.
async fn run_shadow(job: ShadowJob) {
    let ShadowJob { shadow, permit, evidence, inputs, primary, primary_latency, sample } = job;
    let _permit = permit;
    let started = Instant::now();
    let rows = if shadow.signature.batchable { inputs[0].shape.first().map_or(1, |r| *r as usize) } else { 1 };
    let kept_inputs = sample.as_ref().map(|_| inputs.clone());
    let reply = match shadow.queue.submit_shadow(inputs, rows) {
        Ok(reply) => reply,
        Err(_) => {
            count_shadow(&shadow.model, "dropped_queue");
            return;
        }
    };
    let (status, outputs) = match reply.await {
        Ok(Ok(out)) => {
            match shadow.score.scores(&out.outputs) {
                Some(answer) => {
                    let took = started.elapsed();
                    evidence.each(|r| r.shadow.record_pair(&primary, &answer, primary_latency, took));
                    count_shadow(&shadow.model, "ok");
                }
                None => count_shadow(&shadow.model, "not_comparable"),
            }
            (200, out.outputs)
        }
        _ => {
            evidence.each(|r| r.shadow.record_candidate_error(primary_latency));
            count_shadow(&shadow.model, "error");
            (500, Vec::new())
        }
    };
    if let (Some((tap, ids)), Some(inputs)) = (sample, kept_inputs) {
        tap.offer(Served {
            request_id: ids.gateway(),
            client_request_id: ids.client(),
            time: SystemTime::now(),
            model: shadow.model.clone(),
            version: shadow.version,
            arm: "shadow",
            status,
            latency: started.elapsed(),
            inputs,
            scores: shadow.score.scores(&outputs),
            threshold: shadow.score.is_classifier().then_some(shadow.score.threshold),
            outputs,
            sampled: true,
            route: None,
        });
    }
}

fn count_shadow(model: &str, outcome: &'static str) {
    metrics::counter!(SHADOW_REQUESTS, "model" => model.to_owned(), "outcome" => outcome).increment(1);
}

async fn run(
    headers: &HeaderMap,
    body: Bytes,
    mv: &ModelVersion,
    mirror: bool,
) -> Result<(HttpResponse, JobOutput, Option<Vec<Tensor>>), ApiError> {
    let header_length = header_length(headers)?;
    let request = decode_request(&body, header_length)?;
    drop(body);
    let InferRequest { id, inputs, outputs: requested, binary_output_default } = request;
    let selection = select_outputs(mv, &requested, binary_output_default)?;
    let checked = mv.signature.check(inputs, mv.effective_max_batch_size())?;
    // The shadow needs its own copy: the primary's inputs move into its batch.
    let mirrored = mirror.then(|| checked.tensors.clone());
    let reply = mv.queue.submit(checked.tensors, checked.rows)?;
    let pending = crate::metrics::Pending::start(&mv.metrics);
    mv.metrics.queue_depth.set(mv.queue.depth() as f64);
    let output = reply.await.map_err(|_| InferError::Runtime("the inference thread dropped the request".into()))??;
    drop(pending);
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
    Ok((response, output, mirrored))
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

/// Counts a request cut off on a deadline or the byte budget.
fn count_cut(e: &ApiError) {
    match e {
        ApiError::BodyTimeout { .. } => crate::metrics::count_request_cut("body_timeout"),
        ApiError::BytesOverloaded { .. } => crate::metrics::count_request_cut("body_bytes_budget"),
        _ => {}
    }
}

/// A request's ids: the gateway's own (128 random bits, unique: the label join key) and the
/// client's `x-request-id` when it sent a usable one (echoed back, kept beside the sample).
#[derive(Clone)]
struct RequestIds {
    gateway: HeaderValue,
    client: Option<HeaderValue>,
}

impl RequestIds {
    fn of(headers: &HeaderMap) -> Self {
        let client = headers.get(REQUEST_ID).filter(|v| !v.is_empty() && v.len() <= 128 && v.to_str().is_ok()).cloned();
        // 32 hex digits are always a valid header value.
        let gateway =
            HeaderValue::from_str(&format!("{:032x}", fastrand::u128(..))).unwrap_or(HeaderValue::from_static("0"));
        Self { gateway, client }
    }

    /// What `x-request-id` answers: the client's id, else the gateway's.
    fn echoed(&self) -> &HeaderValue {
        self.client.as_ref().unwrap_or(&self.gateway)
    }

    /// The id the sampling decision hashes (see `TapDecision::new`).
    fn sampling_key(&self) -> &str {
        self.echoed().to_str().unwrap_or_default()
    }

    fn gateway(&self) -> String {
        self.gateway.to_str().unwrap_or_default().to_owned()
    }

    fn client(&self) -> Option<String> {
        self.client.as_ref().and_then(|v| v.to_str().ok()).map(str::to_owned)
    }
}

/// Adds the request id, model version and `Server-Timing` headers.
fn finish(
    mut response: HttpResponse,
    ids: &RequestIds,
    mv: Option<&ModelVersion>,
    started: Instant,
    timing: Option<(Duration, Duration)>,
) -> HttpResponse {
    let headers = response.headers_mut();
    headers.insert(REQUEST_ID, ids.echoed().clone());
    headers.insert(GATEWAY_REQUEST_ID, ids.gateway.clone());
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
