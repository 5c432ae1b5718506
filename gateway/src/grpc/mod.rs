//! The Open Inference Protocol over gRPC, as Triton serves it (`inference.GRPCInferenceService`,
//! `proto/inference.proto`), plus `grpc.health.v1.Health` for Kubernetes and Envoy probes.
//! tonic provides the generated service and its codec; the connections are the gateway's own
//! (`server::serve` with `grpc_listen`): the same connection cap, deadlines, HTTP/2 keep-alive,
//! concurrent-stream limit, and GOAWAY on drain as HTTP.

mod convert;
mod explain;
mod service;
mod tensors;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::HeaderValue;
use hyper::{Request, Response};
use tokio_stream::Stream;
use tonic::codegen::Service;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health as HealthApi, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::server::conn::RequestGuard;
use crate::server::{ApiError, AppState, routes};

/// Code generated from `proto/inference.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("inference");
}

use pb::grpc_inference_service_server::GrpcInferenceServiceServer;

/// The gRPC services on one port: inference and health.
#[derive(Clone)]
pub struct Grpc {
    state: Arc<AppState>,
    inference: GrpcInferenceServiceServer<service::Inference>,
    health: HealthServer<Health>,
    max_message_bytes: usize,
}

impl Grpc {
    /// The services over `state`, taking messages of up to `max_message_bytes` either way.
    pub fn new(state: Arc<AppState>, max_message_bytes: usize) -> Self {
        let inference = GrpcInferenceServiceServer::new(service::Inference { state: Arc::clone(&state) })
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        Self { health: HealthServer::new(Health { state: Arc::clone(&state) }), state, inference, max_message_bytes }
    }

    /// Answers one HTTP/2 request; `guard` marks it in flight on its connection until the
    /// answer's body (a whole stream, for `ModelStreamInfer`) has been sent. A unary call runs
    /// under `request_timeout_ms` from its first byte, and its message's bytes are charged to
    /// `max_in_flight_bytes` as they arrive (as an HTTP body); a stream's messages are charged
    /// one by one once decoded.
    pub async fn call(&self, req: Request<Incoming>, guard: RequestGuard) -> Response<Guarded> {
        let path = req.uri().path();
        let answered = if path.starts_with("/grpc.health.v1.Health/") {
            self.health.clone().call(req).await
        } else if path.ends_with("/ModelStreamInfer") {
            self.inference.clone().call(req).await
        } else {
            let state = Arc::clone(&self.state);
            // The same instant the pipeline's deadline uses, so a request that runs out of time
            // is counted there; this one covers the message's arrival too.
            let at = tokio::time::Instant::now() + state.limits.request_timeout();
            let mut req = req.map(|body| Charged { body, held: state.body_bytes.charge(0).ok() });
            req.extensions_mut().insert(crate::server::Deadline(at));
            match tokio::time::timeout_at(at, self.inference.clone().call(req)).await {
                Ok(answered) => answered,
                Err(_) => {
                    crate::metrics::count_request_cut("request_timeout");
                    let e = ApiError::RequestTimeout { after_ms: state.limits.request_timeout_ms };
                    Ok(status_of(&e).into_http())
                }
            }
        };
        let mut response = match answered {
            Ok(response) => response,
            Err(never) => match never {},
        };
        too_large_is_resource_exhausted(&mut response, self.max_message_bytes);
        response.map(|body| Guarded { body, _guard: guard })
    }
}

/// A unary request's body, charged to the server's byte budget frame by frame while it arrives
/// (held until the call is done); over the budget, the call fails UNAVAILABLE.
struct Charged {
    body: Incoming,
    held: Option<crate::server::body::BytesHeld>,
}

impl Body for Charged {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let Poll::Ready(Some(Ok(frame))) = polled else {
            return polled.map_err(|e| Status::unavailable(format!("reading the request: {e}")));
        };
        let n = frame.data_ref().map_or(0, bytes::Bytes::len);
        if let Some(held) = self.held.as_mut()
            && let Err(e) = held.grow(n)
        {
            crate::metrics::count_request_cut("body_bytes_budget");
            return Poll::Ready(Some(Err(status_of(&e))));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// tonic refuses an oversized message with OUT_OF_RANGE; gRPC servers (and the protocol's
/// users) expect RESOURCE_EXHAUSTED, naming the limit.
fn too_large_is_resource_exhausted<B>(response: &mut Response<B>, limit: usize) {
    let headers = response.headers_mut();
    let out_of_range = headers.get("grpc-status").is_some_and(|s| s == "11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| m.contains("too%20large") || m.contains("too large"));
    if out_of_range && too_large {
        headers.insert("grpc-status", HeaderValue::from_static("8"));
        if let Ok(message) = HeaderValue::from_str(&too_large_message(limit).replace(' ', "%20")) {
            headers.insert("grpc-message", message);
        }
    }
}

fn too_large_message(limit: usize) -> String {
    format!("the message exceeds the limit of {limit} bytes (grpc_max_message_bytes)")
}

/// A stream message's codec error, with the code a too-large message gets.
fn resource_exhausted_if_too_large(status: Status) -> Status {
    if status.code() == Code::OutOfRange && status.message().contains("too large") {
        return Status::resource_exhausted(format!("{} (grpc_max_message_bytes)", status.message()));
    }
    status
}

/// The one mapping from the gateway's errors to gRPC status codes (the HTTP status decides).
pub fn status_of(e: &ApiError) -> Status {
    let code = match e.status() {
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        405 => Code::Unimplemented,
        408 | 504 => Code::DeadlineExceeded,
        409 => Code::Aborted,
        413 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        _ => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// A response body that keeps its request counted in flight until it has been sent.
pub struct Guarded {
    body: tonic::body::Body,
    _guard: RequestGuard,
}

impl Body for Guarded {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// `grpc.health.v1.Health`: SERVING for the server ("") and the inference service while the
/// gateway is ready, NOT_SERVING while it starts or drains.
#[derive(Clone)]
pub struct Health {
    state: Arc<AppState>,
}

impl Health {
    fn status(&self, service: &str) -> Result<HealthCheckResponse, Status> {
        if !(service.is_empty() || service == "inference.GRPCInferenceService") {
            return Err(Status::not_found(format!("unknown service '{service}'")));
        }
        let serving = routes::server_ready(&self.state).is_ok();
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        Ok(HealthCheckResponse { status: status as i32 })
    }
}

#[tonic::async_trait]
impl HealthApi for Health {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, Status> {
        self.status(&request.into_inner().service).map(tonic::Response::new)
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    /// Sends the status now and again whenever it changes (looked at twice a second).
    async fn watch(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        let first = self.status(&service)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let health = self.clone();
        tokio::spawn(async move {
            let mut last = first.status;
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Ok(now) = health.status(&service) else { return };
                if now.status != last {
                    last = now.status;
                    if tx.send(Ok(now)).await.is_err() {
                        return;
                    }
                } else if tx.is_closed() {
                    return;
                }
                // Draining: NOT_SERVING was sent; end the watch so the drain is not held up.
                if health.state.draining.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::InferError;

    #[test]
    fn gateway_errors_map_to_the_grpc_codes_clients_retry_on() {
        let full = ApiError::from(InferError::QueueFull { model: "m".into(), version: 1, capacity: 4 });
        assert_eq!(status_of(&full).code(), Code::Unavailable);
        assert_eq!(status_of(&ApiError::Overloaded { max: 2 }).code(), Code::Unavailable);
        assert_eq!(status_of(&ApiError::BadRequest("x".into())).code(), Code::InvalidArgument);
        let missing = ApiError::from(crate::model::RouteError::ModelNotFound("m".into()));
        assert_eq!(status_of(&missing).code(), Code::NotFound);
        assert_eq!(status_of(&ApiError::RequestTimeout { after_ms: 5 }).code(), Code::DeadlineExceeded);
        assert_eq!(status_of(&ApiError::Infer(InferError::Runtime("boom".into()))).code(), Code::Internal);
        assert_eq!(status_of(&ApiError::BadRequest("why".into())).message(), "why", "the HTTP message");
    }

    #[test]
    fn an_oversized_message_is_resource_exhausted_naming_the_limit() {
        let mut response = Response::new(());
        response.headers_mut().insert("grpc-status", HeaderValue::from_static("11"));
        let message = "Error,%20decoded%20message%20length%20too%20large:%20found%205%20bytes";
        response.headers_mut().insert("grpc-message", HeaderValue::from_static(message));
        too_large_is_resource_exhausted(&mut response, 4);
        assert_eq!(response.headers()["grpc-status"], "8");
        assert!(response.headers()["grpc-message"].to_str().unwrap().contains("grpc_max_message_bytes"));
    }
}
