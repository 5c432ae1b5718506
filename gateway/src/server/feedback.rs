//! `POST /v2/models/{model}/feedback`: ground-truth labels keyed by request id, one or many per
//! call. Repeats of a stored label are acknowledged and not stored again.

use hyper::Request;
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::body::{self, BodyLimits};
use super::{ApiError, AppState};
use crate::model::RouteError;
use crate::tap::labels;

/// Largest feedback body (a few thousand labels).
const MAX_FEEDBACK_BYTES: usize = 4 << 20;

/// Stores the labels in the body; answers how many were received and stored.
pub async fn feedback(
    state: &AppState,
    req: Request<Incoming>,
    model: &str,
    peer: std::net::SocketAddr,
) -> Result<Value, ApiError> {
    if let Some(reloader) = &state.reloader {
        let config = reloader.config.load();
        super::auth::authorize(&config, req.headers(), peer, super::auth::Role::Label, "feedback API")?;
    }
    if !state.table.load().models.contains_key(model) {
        return Err(RouteError::ModelNotFound(model.to_owned()).into());
    }
    let tap = state
        .tap
        .as_ref()
        .ok_or_else(|| ApiError::NotReady("labels cannot be stored: the tap is not running".into()))?;
    let limits =
        BodyLimits { max_bytes: MAX_FEEDBACK_BYTES, timeout: state.limits.body_timeout(), request_deadline: None };
    let (parts, body) = req.into_parts();
    let (body, _held) = body::read(&parts.headers, body, limits, &state.body_bytes).await?;
    let labels = labels::parse(&body).map_err(ApiError::BadRequest)?;
    let received = labels.len();
    let stored = tap.feedback(model, labels).await.map_err(ApiError::NotReady)?;
    Ok(json!({"model": model, "received": received, "stored": stored}))
}
