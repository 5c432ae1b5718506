//! The one place where errors become HTTP responses: status code, `Retry-After`, and the Open
//! Inference Protocol body `{"error": "..."}`.

use std::time::Duration;

use crate::batch::InferError;
use crate::model::{RouteError, ValidationError};
use crate::protocol::ProtocolError;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Validation(#[from] ValidationError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Infer(#[from] InferError),
    #[error("request body of {given} bytes exceeds the limit of {limit} bytes (max_body_bytes)")]
    BodyTooLarge { given: String, limit: usize },
    #[error("{0}")]
    BadRequest(String),
    #[error("no route for {method} {path}")]
    NotFound { method: String, path: String },
    /// A thing asked for by name that is not there (a request id in no sample file).
    #[error("{0}")]
    Absent(String),
    #[error("{method} is not allowed on {path}; use {allowed}")]
    MethodNotAllowed { method: String, path: String, allowed: &'static str },
    #[error("the gateway is not ready: {0}")]
    NotReady(String),
    #[error("the gateway is handling its limit of {max} requests (max_in_flight); retry later")]
    Overloaded { max: usize },
    #[error("the gateway is holding its limit of {max} request body bytes (server.max_in_flight_bytes); retry later")]
    BytesOverloaded { max: usize },
    #[error("the request body did not arrive within {after_ms} ms (server.body_timeout_ms)")]
    BodyTimeout { after_ms: u64 },
    #[error("the request did not finish within {after_ms} ms (server.request_timeout_ms)")]
    RequestTimeout { after_ms: u64 },
    /// The client's own deadline (gRPC's `grpc-timeout`) passed first: not the model's fault.
    #[error("the request did not finish within the client's deadline of {after_ms} ms (grpc-timeout)")]
    ClientDeadline { after_ms: u64 },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// A decision lost a race (the alias moved, the candidate was rolled back meanwhile).
    #[error("{0}")]
    Conflict(String),
    /// Explanations are shed (budget full, serving busy): retry later.
    #[error("{0}")]
    ExplainBusy(String),
}

impl ApiError {
    /// HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Protocol(_)
            | ApiError::Validation(_)
            | ApiError::BadRequest(_)
            | ApiError::Infer(InferError::InputRejected(_)) => 400,
            ApiError::Route(_) | ApiError::NotFound { .. } | ApiError::Absent(_) => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::Unauthorized(_) => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::Conflict(_) => 409,
            ApiError::BodyTooLarge { .. } => 413,
            ApiError::BodyTimeout { .. } | ApiError::ClientDeadline { .. } => 408,
            ApiError::RequestTimeout { .. } => 504,
            ApiError::Infer(InferError::QueueFull { .. } | InferError::Closed { .. })
            | ApiError::NotReady(_)
            | ApiError::ExplainBusy(_)
            | ApiError::BytesOverloaded { .. }
            | ApiError::Overloaded { .. } => 503,
            ApiError::Infer(InferError::Runtime(_)) => 500,
        }
    }

    /// How long a client should wait before retrying, for overload answers.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Infer(InferError::QueueFull { .. } | InferError::Closed { .. })
            | ApiError::NotReady(_)
            | ApiError::ExplainBusy(_)
            | ApiError::BytesOverloaded { .. }
            | ApiError::Overloaded { .. } => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// Stable machine name, used as a metric label and in logs.
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::Protocol(e) => e.error_type(),
            ApiError::Validation(_) => "invalid_input",
            ApiError::Route(RouteError::ModelNotFound(_)) => "model_not_found",
            ApiError::Route(RouteError::VersionNotFound { .. }) => "version_not_found",
            ApiError::Infer(e) => e.error_type(),
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound { .. } | ApiError::Absent(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::NotReady(_) => "not_ready",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::BytesOverloaded { .. } => "overloaded_bytes",
            ApiError::BodyTimeout { .. } => "body_timeout",
            ApiError::RequestTimeout { .. } => "request_timeout",
            ApiError::ClientDeadline { .. } => "client_deadline",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Conflict(_) => "conflict",
            ApiError::ExplainBusy(_) => "explain_unavailable",
        }
    }

    /// The protocol's error body.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "error": self.to_string() })).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overload_is_503_with_retry_after_and_validation_is_400() {
        let full = ApiError::from(InferError::QueueFull { model: "m".into(), version: 1, capacity: 4 });
        assert_eq!(full.status(), 503);
        assert_eq!(full.retry_after(), Some(Duration::from_secs(1)));
        let bad = ApiError::from(ValidationError("missing input 'x'".into()));
        assert_eq!(bad.status(), 400);
        assert_eq!(bad.retry_after(), None);
        let body: serde_json::Value = serde_json::from_slice(&bad.body()).unwrap();
        assert_eq!(body["error"], "missing input 'x'");
    }
}
