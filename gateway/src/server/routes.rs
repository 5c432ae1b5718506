//! Request routing and the read-only endpoints: server and model metadata, readiness, Triton's
//! model config and statistics, Prometheus metrics.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde_json::{Value, json};

use super::infer::infer;
use super::{ApiError, AppState, HttpResponse};
use crate::model::{ModelVersion, TensorSpec};

/// Protocol extensions advertised on `GET /v2` (perf_analyzer reads this array).
pub(crate) const EXTENSIONS: [&str; 4] =
    ["binary_tensor_data", "statistics", "model_configuration", "model_repository"];

/// Entry point for every request; the whole request ends by `deadline` (504 beyond it).
/// Inference bounds its own time (its body read and its pipeline each take the deadline, so
/// the pipeline can count a timeout against the arm that was slow): no timer around it, one
/// per request. Every other route runs under one here.
pub async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
    deadline: tokio::time::Instant,
) -> HttpResponse {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if req.method() == Method::POST {
        match segments.as_slice() {
            ["v2", "models", model, "infer"] => return infer(&state, req, model, None).await,
            ["v2", "models", model, "versions", v, "infer"] => return infer(&state, req, model, Some(v)).await,
            _ => {}
        }
    }
    match tokio::time::timeout_at(deadline, route(&state, req, peer, &path, &segments)).await {
        Ok(response) => response,
        Err(_) => {
            crate::metrics::count_request_cut("request_timeout");
            error_response(&ApiError::RequestTimeout { after_ms: state.limits.request_timeout_ms })
        }
    }
}

/// Every route but inference.
async fn route(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
    path: &str,
    segments: &[&str],
) -> HttpResponse {
    let method = req.method().clone();
    let result = match (method.clone(), segments) {
        (Method::POST, ["v2", "models", model, "explain"]) => {
            return super::explain::explain(state, req, model, None).await;
        }
        (Method::POST, ["v2", "models", model, "versions", v, "explain"]) => {
            return super::explain::explain(state, req, model, Some(v)).await;
        }
        (_, ["admin", rest @ ..]) => super::admin::handle(state, req, peer, rest).await,
        (Method::POST, ["v2", "models", model, "feedback"]) => super::feedback::feedback(state, req, model, peer).await,
        (Method::GET, ["v2"]) => Ok(server_metadata()),
        (Method::GET, ["v2", "health", "live"]) => Ok(json!({"live": true})),
        (Method::GET, ["v2", "health", "ready"]) => server_ready(state),
        (Method::GET, ["v2", "models", "stats"]) => Ok(all_stats(state)),
        (Method::POST, ["v2", "repository", "index"]) => Ok(repository_index(state)),
        (_, ["v2", "models", .., "infer" | "explain"]) => Err(wrong_method_or_path(&method, path, segments)),
        (Method::GET, ["v2", "models", model, rest @ ..]) => model_get(state, model, rest),
        (_, ["metrics"]) if method == Method::GET => return metrics(state),
        (Method::GET, ["dashboard", rest @ ..]) if rest.len() <= 1 && dashboard_enabled(state) => {
            if let Some(page) = crate::dashboard::asset(rest.first().copied()) {
                return page;
            }
            Err(ApiError::NotFound { method: method.to_string(), path: path.to_owned() })
        }
        (_, ["v2", ..]) | (_, ["metrics"]) => Err(wrong_method_or_path(&method, path, segments)),
        _ => Err(ApiError::NotFound { method: method.to_string(), path: path.to_owned() }),
    };
    match result {
        Ok(body) => json_response(200, &body),
        Err(e) => error_response(&e),
    }
}

fn dashboard_enabled(state: &AppState) -> bool {
    state.reloader.as_ref().is_some_and(|r| r.config.load().dashboard.enabled)
}

fn wrong_method_or_path(method: &Method, path: &str, segments: &[&str]) -> ApiError {
    let allowed = match segments.last() {
        Some(&"infer") | Some(&"explain") | Some(&"feedback") => Some("POST"),
        Some(&"index") => Some("POST"),
        _ if segments.len() >= 2 => Some("GET"),
        _ => None,
    };
    match allowed {
        Some(allowed) if allowed != method.as_str() => {
            ApiError::MethodNotAllowed { method: method.to_string(), path: path.to_owned(), allowed }
        }
        _ => ApiError::NotFound { method: method.to_string(), path: path.to_owned() },
    }
}

fn model_get(state: &AppState, model: &str, rest: &[&str]) -> Result<Value, ApiError> {
    let (version, action) = match rest {
        [] => (None, None),
        [action] => (None, Some(*action)),
        ["versions", v] => (Some(*v), None),
        ["versions", v, action] => (Some(*v), Some(*action)),
        _ => {
            return Err(ApiError::NotFound {
                method: "GET".into(),
                path: format!("/v2/models/{model}/{}", rest.join("/")),
            });
        }
    };
    let table = state.table.load();
    let mv = table.resolve(model, version)?;
    match action {
        None => Ok(model_metadata(mv, version.is_some(), &table.models[model].versions.keys().collect::<Vec<_>>())),
        Some("ready") => Ok(json!({"name": model, "version": mv.version.to_string(), "ready": true})),
        Some("config") => Ok(model_config(state, mv)),
        Some("stats") => Ok(stats_of(
            version
                .map(|_| vec![mv.as_ref()])
                .unwrap_or_else(|| table.models[model].versions.values().map(Arc::as_ref).collect()),
        )),
        Some(other) => Err(ApiError::NotFound { method: "GET".into(), path: format!("/v2/models/{model}/{other}") }),
    }
}

fn server_metadata() -> Value {
    json!({"name": "flywheel", "version": env!("CARGO_PKG_VERSION"), "extensions": EXTENSIONS})
}

pub(crate) fn server_ready(state: &AppState) -> Result<Value, ApiError> {
    if !state.ready.load(Ordering::SeqCst) {
        return Err(ApiError::NotReady("starting up or shutting down".into()));
    }
    if state.table.load().models.is_empty() {
        return Err(ApiError::NotReady("no model is loaded".into()));
    }
    // Serving works, so ready; a background component that panicked recently is named, so an
    // operator sees that sampling, labels, drift or rollouts may be missing items.
    let degraded = crate::health::degraded();
    if degraded.is_empty() {
        return Ok(json!({"ready": true}));
    }
    Ok(json!({"ready": true, "degraded": degraded}))
}

fn tensor_metadata(specs: &[TensorSpec]) -> Value {
    specs.iter().map(|s| json!({"name": s.name, "datatype": s.datatype.as_str(), "shape": s.shape})).collect()
}

pub(crate) fn model_metadata(mv: &ModelVersion, one_version: bool, versions: &[&u64]) -> Value {
    let versions: Vec<String> =
        if one_version { vec![mv.version.to_string()] } else { versions.iter().map(|v| v.to_string()).collect() };
    json!({
        "name": mv.model,
        "versions": versions,
        "platform": "onnxruntime_onnx",
        "inputs": tensor_metadata(&mv.signature.inputs),
        "outputs": tensor_metadata(&mv.signature.outputs),
    })
}

/// Triton's model configuration; with batching, `dims` leave out the batch dimension.
/// The model's version policy as Triton's model config writes it (a rollout names its versions:
/// reported as the specific ones it serves).
fn version_policy(state: &AppState, model: &str) -> Value {
    use crate::config::VersionPolicy;
    let Some(reloader) = &state.reloader else { return json!({"latest": {"num_versions": 1}}) };
    let config = reloader.config.load();
    if config.rollout_for(model).is_some() {
        let table = state.table.load();
        let served: Vec<u64> =
            table.models.get(model).map(|m| m.versions.keys().copied().collect()).unwrap_or_default();
        return json!({"specific": {"versions": served}});
    }
    match config.version_policy_for(model) {
        VersionPolicy::All => json!({"all": {}}),
        VersionPolicy::Latest(n) => json!({"latest": {"num_versions": n}}),
        VersionPolicy::Specific(v) => json!({"specific": {"versions": v}}),
    }
}

pub(crate) fn model_config(state: &AppState, mv: &ModelVersion) -> Value {
    let max_batch_size = mv.effective_max_batch_size();
    let skip = usize::from(max_batch_size > 0);
    let io = |specs: &[TensorSpec]| -> Value {
        specs
            .iter()
            .map(|s| json!({"name": s.name, "data_type": s.datatype.triton_config_name(), "dims": s.shape[skip.min(s.shape.len())..]}))
            .collect()
    };
    let mut config = json!({
        "name": mv.model,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": version_policy(state, &mv.model),
        "max_batch_size": max_batch_size,
        "input": io(&mv.signature.inputs),
        "output": io(&mv.signature.outputs),
        "instance_group": [{"name": mv.model, "kind": "KIND_CPU", "count": mv.settings.instances}],
    });
    if max_batch_size > 0 {
        config["dynamic_batching"] = json!({
            "max_queue_delay_microseconds": mv.settings.max_queue_delay.as_micros() as u64,
            "preferred_batch_size": [],
        });
    }
    config
}

pub(crate) fn stats_of(versions: Vec<&ModelVersion>) -> Value {
    json!({"model_stats": versions.iter().map(|mv| mv.stats.to_json(&mv.model, mv.version)).collect::<Vec<_>>()})
}

fn all_stats(state: &AppState) -> Value {
    let table = state.table.load();
    stats_of(table.models.values().flat_map(|m| m.versions.values().map(Arc::as_ref)).collect())
}

pub(crate) fn repository_index(state: &AppState) -> Value {
    let table = state.table.load();
    table
        .models
        .values()
        .flat_map(|m| {
            m.versions.keys().map(move |v| json!({"name": m.name, "version": v.to_string(), "state": "READY"}))
        })
        .collect()
}

fn metrics(state: &AppState) -> HttpResponse {
    let text = state.metrics.map(|h| h.render()).unwrap_or_default();
    // Versions no longer served (nor draining) drop out of the scrape.
    let mut live: std::collections::HashSet<(String, u64)> =
        state.table.load().models.values().flat_map(|m| m.versions.keys().map(|v| (m.name.clone(), *v))).collect();
    live.extend(state.reloader.as_ref().map(|r| r.draining()).unwrap_or_default());
    let text = crate::metrics::without_retired(&text, &live);
    Response::builder()
        .status(200)
        .header("content-type", "text/plain; version=0.0.4")
        .body(Full::new(Bytes::from(text)))
        .unwrap_or_default()
}

/// A JSON response with `status`.
pub fn json_response(status: u16, body: &Value) -> HttpResponse {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap_or_default())))
        .unwrap_or_default()
}

/// The protocol's error response for `e`.
pub fn error_response(e: &ApiError) -> HttpResponse {
    let mut builder = Response::builder().status(e.status()).header("content-type", "application/json");
    if let Some(after) = e.retry_after() {
        builder = builder.header("retry-after", after.as_secs().max(1).to_string());
    }
    builder.body(Full::new(Bytes::from(e.body()))).unwrap_or_default()
}
