//! One inference request, whichever protocol carried it (HTTP/JSON, HTTP binary, gRPC):
//! admission, routing, the deadline, checks against the model, the batch queue, and everything
//! an answer feeds (statistics, metrics, arm evidence, the shadow mirror, the tap). The protocol
//! adapters ([`super::infer`], [`crate::grpc`]) only decode the request and encode the answer.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

use super::{ApiError, AppState};
use crate::batch::{InferError, JobOutput};
use crate::metrics::SHADOW_REQUESTS;
use crate::model::signature::CheckInputs;
use crate::model::table::{BudgetPermit, RouteEvidence, ServedModel};
use crate::model::{Arm, ModelVersion, ValidationError};
use crate::protocol::{RequestedOutput, Tensor};
use crate::tap::{Served, Tap, id_fraction};

/// Request id header: echoed when given, the gateway's id otherwise.
pub const REQUEST_ID: &str = "x-request-id";
/// The gateway's own unique id of the request, on every answer: what labels join on.
pub const GATEWAY_REQUEST_ID: &str = "x-flywheel-request-id";
/// Names the model version that answered.
pub const MODEL_VERSION: &str = "x-model-version";
/// Names the routing arm that answered (champion, canary, explicit).
pub const ARM: &str = "x-flywheel-arm";

// The names as parsed header names: inserting by `&str` parses the name on every answer.
const REQUEST_ID_NAME: HeaderName = HeaderName::from_static(REQUEST_ID);
const GATEWAY_REQUEST_ID_NAME: HeaderName = HeaderName::from_static(GATEWAY_REQUEST_ID);
const MODEL_VERSION_NAME: HeaderName = HeaderName::from_static(MODEL_VERSION);
const ARM_NAME: HeaderName = HeaderName::from_static(ARM);
const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// Writes what every answer carries, as HTTP headers or gRPC metadata: the request ids, the
/// answering version and arm, and `Server-Timing` (queue, compute, total; milliseconds).
pub fn answer_headers(headers: &mut HeaderMap, ids: &RequestIds, answer: &AnswerMeta, started: Instant) {
    headers.insert(REQUEST_ID_NAME, ids.echoed().clone());
    headers.insert(GATEWAY_REQUEST_ID_NAME, ids.gateway.clone());
    if let Some(v) = answer.version {
        headers.insert(MODEL_VERSION_NAME, HeaderValue::from(v));
    }
    if let Some(arm) = answer.arm {
        headers.insert(ARM_NAME, HeaderValue::from_static(arm.as_str()));
    }
    // One buffer, written in place (no String per number).
    let mut value = String::with_capacity(64);
    if let Some((queue, compute)) = answer.timing {
        value.push_str("queue;dur=");
        push_millis(&mut value, queue);
        value.push_str(", compute;dur=");
        push_millis(&mut value, compute);
        value.push_str(", ");
    }
    value.push_str("total;dur=");
    push_millis(&mut value, started.elapsed());
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
        headers.insert(SERVER_TIMING, v);
    }
}

/// Appends a duration as milliseconds with three decimals, by integer arithmetic on a u64
/// (float formatting with a precision, or `Duration::as_micros`'s u128 through `fmt`, cost
/// ~1,300 instructions per answer for three numbers).
fn push_millis(out: &mut String, d: Duration) {
    let us = d.as_secs().saturating_mul(1_000_000).saturating_add(u64::from(d.subsec_micros()));
    let mut digits = [0u8; 24];
    let mut at = digits.len();
    let mut rest = us;
    // The three decimals, the point, then the whole milliseconds (at least one digit).
    for i in 0.. {
        if i == 3 {
            at -= 1;
            digits[at] = b'.';
        }
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 && i >= 3 {
            break;
        }
    }
    // Only ASCII digits and a point were written.
    out.push_str(std::str::from_utf8(&digits[at..]).unwrap_or("0.000"));
}

/// A request as its protocol decoded it, not yet checked against any model.
pub struct Decoded {
    /// The request's own `id`, echoed in the answer.
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    /// Outputs asked for; empty means all.
    pub outputs: Vec<RequestedOutput>,
    /// Whether an output not saying otherwise is answered in binary (HTTP's
    /// `binary_data_output`; gRPC answers every output raw).
    pub binary_default: bool,
}

/// What a protocol's encoder gets: the version that answered, the request's id, and the
/// chosen outputs with their binary flags.
pub struct Chosen<'a> {
    pub mv: &'a ModelVersion,
    pub id: Option<&'a str>,
    pub outputs: Vec<(&'a Tensor, bool)>,
}

/// The outcome of one request and what the protocol reports beside it.
pub struct Answer<R> {
    pub result: Result<R, ApiError>,
    pub meta: AnswerMeta,
}

/// When a request must be answered, and whose deadline that is.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    pub at: tokio::time::Instant,
    /// Set when the client's own deadline (`grpc-timeout`, in ms) is the sooner one: running
    /// out of it is not held against the model.
    pub client_ms: Option<u64>,
}

/// Who answered and how long it took.
#[derive(Clone, Copy, Debug, Default)]
pub struct AnswerMeta {
    /// The version that answered (or was routed to), when routing got that far.
    pub version: Option<u64>,
    pub arm: Option<Arm>,
    /// Time in the batch queue and in compute.
    pub timing: Option<(Duration, Duration)>,
}

impl<R> Answer<R> {
    fn refused(e: ApiError) -> Self {
        Self { result: Err(e), meta: AnswerMeta::default() }
    }
}

/// Answers one inference request; every outcome is counted for its model version and arm
/// (the adapter counts the request in flight from its first byte, `metrics::InFlight`).
/// `header` looks up a request header or gRPC metadata value (the routing key); `deadline` is
/// the whole request's; `decode` runs once the request is admitted and routed, `encode` on the
/// model's outputs.
#[allow(clippy::too_many_arguments)]
pub async fn answer<R>(
    state: &AppState,
    (model, version): (&str, Option<&str>),
    header: impl Fn(&str) -> Option<Vec<u8>>,
    ids: &RequestIds,
    started: Instant,
    deadline: Option<Deadline>,
    decode: impl FnOnce() -> Result<Decoded, ApiError>,
    encode: impl FnOnce(Chosen<'_>) -> Result<R, ApiError>,
) -> Answer<R> {
    // Over the limit, answer before any work is queued, so an overloaded gateway spends as
    // little as possible on work it will not do.
    let _admitted = match state.admission.as_ref().map(|b| (b.try_acquire(), b.max())) {
        Some((None, max)) => return Answer::refused(ApiError::Overloaded { max }),
        Some((permit, _)) => permit,
        None => None,
    };
    // Route once; the Arcs keep these versions alive until the answer (and any shadow) is done
    // even if the table is swapped meanwhile.
    let routed = {
        let table = state.table.load();
        table.route(model, version, header).map(|(mv, arm)| {
            let extras =
                (arm != Arm::Explicit).then(|| table.models.get(model).map(|s| RouteExtras::pick(s, arm))).flatten();
            (mv, arm, extras)
        })
    };
    let (mv, arm, extras) = match routed {
        Ok(routed) => routed,
        Err(e) => return Answer::refused(e.into()),
    };
    let mirror = extras.as_ref().is_some_and(|x| x.shadow.is_some());
    // The config is read once per request: sampling, the label join and explanations.
    let config = state.reloader.as_ref().map(|r| r.config.load());
    let config_now = config.as_deref().map(|c| &**c);
    let tapping = state.tap.as_ref().map(|tap| TapDecision::new(tap, config_now, ids.sampling_key(), &mv.model, arm));
    let explain_policy =
        state.auto_explain.as_ref().and_then(|_| config.as_ref()?.models.get(&mv.model)?.explain.clone());
    drop(config);
    let keep_inputs = mirror || explain_policy.is_some() || tapping.as_ref().is_some_and(|t| t.needs_inputs);
    // The whole-request deadline, applied here so a request that runs out of time is counted
    // against the arm that was too slow (HTTP infer has no timer around it; gRPC's fires at
    // the same instant but polls this future first).
    let ran = match deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline.at, run(decode, encode, &mv, keep_inputs)).await {
            Ok(ran) => ran,
            Err(_) => Err(match deadline.client_ms {
                Some(after_ms) => {
                    crate::metrics::count_request_cut("client_deadline");
                    ApiError::ClientDeadline { after_ms }
                }
                None => {
                    crate::metrics::count_request_cut("request_timeout");
                    ApiError::RequestTimeout { after_ms: state.limits.request_timeout_ms }
                }
            }),
        },
        None => run(decode, encode, &mv, keep_inputs).await,
    };
    let (result, timing, answered) = match ran {
        Ok((encoded, out, inputs)) => (Ok(encoded), Some((out.queue, out.compute)), Some((out, inputs))),
        Err(e) => {
            if let ApiError::Infer(InferError::QueueFull { .. }) = e {
                mv.metrics.rejected.increment(1);
            }
            tracing::debug!(model, error_type = e.error_type(), error = %e, "inference request failed");
            (Err(e), None, None)
        }
    };
    let status = result.as_ref().map_or_else(ApiError::status, |_| 200);
    let total = started.elapsed();
    mv.stats.record_request(timing.is_some(), total);
    mv.metrics.count_response(status);
    mv.metrics.request_seconds.record(total.as_secs_f64());
    mv.metrics.count_arm(arm.as_str());
    // The answer's score per row, read once for the arm's evidence and the tap.
    let scores = answered.as_ref().and_then(|(out, _)| mv.score.scores(&out.outputs));
    if let (Some(auto), Some(policy), Some((_, Some(inputs))), Some(scores)) =
        (state.auto_explain.as_ref(), explain_policy, answered.as_ref(), scores.as_ref())
    {
        offer_explanations(auto, &policy, (&mv, arm), ids, inputs, scores);
    }
    let evidence = extras.as_ref().map(|x| Arc::clone(&x.evidence));
    if let Some(extras) = extras {
        let sample = state
            .tap
            .as_ref()
            .filter(|_| tapping.as_ref().is_some_and(|t| t.sampled))
            .map(|tap| (Arc::clone(tap), ids.clone()));
        let outcome = match &answered {
            Some((_, inputs)) => Outcome::Answered(inputs.as_ref(), scores.clone()),
            None => Outcome::of_status(status),
        };
        extras.after_primary(arm, total, outcome, sample);
    }
    if let (Some(tap), Some(decision)) = (state.tap.as_deref(), tapping) {
        let route = evidence.map(|e| (e, arm));
        decision.offer(tap, &mv, (ids, route), arm, (status, total), (answered, scores));
    }
    Answer { result, meta: AnswerMeta { version: Some(mv.version), arm: Some(arm), timing } }
}

/// Queues for explanation the rows of the first input whose score the policy picks (a tabular
/// input only: `[rows, features]`).
fn offer_explanations(
    auto: &crate::explain::auto::AutoExplain,
    policy: &crate::explain::auto::ExplainPolicy,
    (mv, arm): (&Arc<ModelVersion>, Arm),
    ids: &RequestIds,
    inputs: &[Tensor],
    scores: &[f64],
) {
    let at = crate::tap::id_fraction(ids.sampling_key());
    let Some(first) = inputs.first().filter(|t| t.shape.len() == 2 && t.shape[1] > 0) else { return };
    let picked: Vec<usize> = (0..scores.len()).filter(|&i| policy.picks(scores[i], at)).collect();
    if picked.is_empty() {
        return;
    }
    // A full queue (the policy picks more than the thread explains) costs a count, not a copy.
    if auto.is_full() {
        return auto.drop_rows(&mv.model, picked.len());
    }
    let Some(values) = first.data.to_f64() else { return };
    let features = first.shape[1] as usize;
    let time_us = crate::explain::auto::now_us();
    for row in picked {
        let Some(x) = values.get(row * features..(row + 1) * features) else { continue };
        auto.offer(crate::explain::auto::Job {
            request_id: ids.gateway(),
            row: row as u32,
            time_us,
            arm: arm.as_str(),
            version: Arc::clone(mv),
            x: x.to_vec(),
        });
    }
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
    fn new(tap: &Tap, config: Option<&crate::config::Config>, key: &str, model: &str, arm: Arm) -> Self {
        let at = id_fraction(key);
        let rate = config.map_or(tap.sampling.rate, |c| c.sample_rate_for(model));
        let join_labels =
            arm != Arm::Explicit && config.and_then(|c| c.rollout_for(model)).is_some_and(|r| r.policy.is_some());
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
        // Under load the detectors take an even subsample (the tap's thread shares the cores
        // that serve: every row of every request cost a third of c=64's requests/s).
        let rows = inputs.first().and_then(|t| t.shape.first()).map_or(1, |d| (*d).max(1) as usize);
        let drift = self.drift && status == 200 && mv.drift_intake.admit(tap.drift.max_rows_per_second, rows);
        if !(sampled || drift || joins) {
            return;
        }
        // Inputs go on only for what uses them (Parquet, drift), never for the label join alone.
        let inputs = if sampled || drift { inputs } else { Vec::new() };
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
            drift,
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
    let reply = match shadow.queue.submit_shadow(inputs, rows) {
        Ok(reply) => reply,
        Err(_) => {
            count_shadow(&shadow.model, "dropped_queue");
            return;
        }
    };
    // A sampled shadow answer is tapped with its inputs, handed back by the batch (a failed
    // one is tapped without them).
    let (status, outputs, kept_inputs) = match reply.await {
        Ok(Ok(out)) => {
            match shadow.score.scores(&out.outputs) {
                Some(answer) => {
                    let took = started.elapsed();
                    evidence.each(|r| r.shadow.record_pair(&primary, &answer, primary_latency, took));
                    count_shadow(&shadow.model, "ok");
                }
                None => count_shadow(&shadow.model, "not_comparable"),
            }
            (200, out.outputs, out.inputs)
        }
        _ => {
            evidence.each(|r| r.shadow.record_candidate_error(primary_latency));
            count_shadow(&shadow.model, "error");
            (500, Vec::new(), Vec::new())
        }
    };
    if let Some((tap, ids)) = sample {
        let inputs = kept_inputs;
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
            // The detectors follow the versions that answer clients.
            drift: false,
            route: None,
        });
    }
}

fn count_shadow(model: &str, outcome: &'static str) {
    metrics::counter!(SHADOW_REQUESTS, "model" => model.to_owned(), "outcome" => outcome).increment(1);
}

/// Decodes, checks, queues and encodes; returns the encoded answer, the model's outputs and,
/// when kept, the inputs.
async fn run<R>(
    decode: impl FnOnce() -> Result<Decoded, ApiError>,
    encode: impl FnOnce(Chosen<'_>) -> Result<R, ApiError>,
    mv: &ModelVersion,
    mirror: bool,
) -> Result<(R, JobOutput, Option<Vec<Tensor>>), ApiError> {
    let Decoded { id, inputs, outputs: requested, binary_default } = decode()?;
    let selection = select_outputs(mv, &requested, binary_default)?;
    let checked = mv.signature.check(inputs, mv.effective_max_batch_size())?;
    if mv.queue.may_run_inline(&checked.tensors) {
        // Alone so far: let the runtime poll its sockets first (a yield waits for the I/O
        // driver), so requests that arrived meanwhile start and are seen; under load they are,
        // and this one is batched with them instead of running by itself.
        tokio::task::yield_now().await;
    }
    let reply = mv.queue.submit(checked.tensors, checked.rows)?;
    let pending = crate::metrics::Pending::start(&mv.metrics);
    mv.metrics.queue_depth.set(mv.queue.depth() as f64);
    let mut output =
        reply.await.map_err(|_| InferError::Runtime("the inference thread dropped the request".into()))??;
    drop(pending);
    // The inputs come back with the answer (the model ran on views of them): the shadow, the
    // tap and explanations read them without a copy.
    let mirrored = mirror.then(|| std::mem::take(&mut output.inputs));
    let outputs = selection.iter().map(|(index, binary)| (&output.outputs[*index], *binary)).collect();
    let encoded = encode(Chosen { mv, id: id.as_deref(), outputs })?;
    Ok((encoded, output, mirrored))
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

/// A request's ids: the gateway's own (128 random bits, unique: the label join key) and the
/// client's `x-request-id` when it sent a usable one (echoed back, kept beside the sample).
#[derive(Clone)]
pub struct RequestIds {
    gateway: HeaderValue,
    client: Option<HeaderValue>,
}

impl RequestIds {
    pub fn of(headers: &HeaderMap) -> Self {
        Self::with_client(headers.get(REQUEST_ID).cloned())
    }

    /// The ids of a request whose client named it `client` (kept when usable: 1 to 128
    /// visible characters).
    pub fn with_client(client: Option<HeaderValue>) -> Self {
        let client = client.filter(|v| !v.is_empty() && v.len() <= 128 && v.to_str().is_ok());
        // 32 hex digits, written in place; always a valid header value.
        let mut hex = [0u8; 32];
        let mut bits = fastrand::u128(..);
        for digit in hex.iter_mut().rev() {
            *digit = b"0123456789abcdef"[(bits & 0xf) as usize];
            bits >>= 4;
        }
        let gateway = HeaderValue::from_bytes(&hex).unwrap_or(HeaderValue::from_static("0"));
        Self { gateway, client }
    }

    /// What `x-request-id` answers: the client's id, else the gateway's.
    pub fn echoed(&self) -> &HeaderValue {
        self.client.as_ref().unwrap_or(&self.gateway)
    }

    /// The id the sampling decision hashes (see `TapDecision::new`).
    fn sampling_key(&self) -> &str {
        self.echoed().to_str().unwrap_or_default()
    }

    pub fn gateway(&self) -> String {
        self.gateway.to_str().unwrap_or_default().to_owned()
    }

    pub fn client(&self) -> Option<String> {
        self.client.as_ref().and_then(|v| v.to_str().ok()).map(str::to_owned)
    }
}

#[cfg(test)]
#[test]
fn server_timing_milliseconds_keep_three_decimals() {
    let millis = |d| {
        let mut s = String::new();
        push_millis(&mut s, d);
        s
    };
    assert_eq!(millis(Duration::from_micros(1_234_567)), "1234.567");
    assert_eq!(millis(Duration::from_micros(5)), "0.005");
    assert_eq!(millis(Duration::ZERO), "0.000");
    assert_eq!(millis(Duration::from_micros(999)), "0.999");
    assert_eq!(millis(Duration::from_micros(1000)), "1.000");
    assert_eq!(millis(Duration::from_nanos(12_345_678_999)), "12345.678", "whole microseconds, truncated");
    assert_eq!(millis(Duration::MAX), "18446744073709551.615", "saturates instead of wrapping");
}

#[cfg(test)]
#[test]
#[allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
fn every_answer_carries_its_ids_version_arm_and_timing() {
    let ids = RequestIds::with_client(None);
    assert_eq!(ids.gateway.len(), 32);
    assert!(ids.gateway.to_str().unwrap().bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_ne!(RequestIds::with_client(None).gateway, ids.gateway, "a fresh id each request");
    let mut headers = HeaderMap::new();
    let meta = AnswerMeta {
        version: Some(12),
        arm: Some(Arm::Canary),
        timing: Some((Duration::from_micros(1500), Duration::from_micros(250))),
    };
    answer_headers(&mut headers, &ids, &meta, Instant::now());
    assert_eq!(headers[MODEL_VERSION], "12");
    assert_eq!(headers[ARM], "canary");
    assert_eq!(headers[REQUEST_ID], ids.gateway, "no client id: the gateway's is echoed");
    let timing = headers["server-timing"].to_str().unwrap();
    assert!(timing.starts_with("queue;dur=1.500, compute;dur=0.250, total;dur="), "{timing}");
}
