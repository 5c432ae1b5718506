//! `inference.GRPCInferenceService`: the same models, routing, batching, sampling, drift,
//! evidence and statistics as HTTP, through [`crate::server::pipeline`].

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hyper::header::HeaderMap;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::explain::{self, Explaining};
use super::pb::grpc_inference_service_server::GrpcInferenceService;
use super::{convert, pb, status_of, tensors};
use crate::explain::ExplainTarget;
use crate::server::pipeline::{self, RequestIds};
use crate::server::{ApiError, AppState, routes};

/// Requests of one stream answered at once; the stream's next ones wait (answers keep the
/// requests' order).
const STREAM_WINDOW: usize = 64;

/// The service over the gateway's shared state.
#[derive(Clone)]
pub struct Inference {
    pub state: Arc<AppState>,
}

type Answered = Result<pb::ModelInferResponse, Status>;

impl Inference {
    /// One inference request and the metadata its answer carries (as HTTP's headers).
    /// `charge`: count the message against the bytes in flight here (a stream's messages; a
    /// unary request's body was charged as it arrived, [`super::Grpc::call`]).
    async fn infer_one(
        &self,
        headers: &HeaderMap,
        message: pb::ModelInferRequest,
        charge: bool,
        server_deadline: Option<tokio::time::Instant>,
    ) -> (Answered, HeaderMap) {
        let started = Instant::now();
        let _in_flight = crate::metrics::InFlight::start();
        let state = &self.state;
        let ids = RequestIds::of(headers);
        // The message is in memory already; it counts like an HTTP body, so a burst of large
        // messages is refused (UNAVAILABLE) before it queues.
        let _held = match charge.then(|| state.body_bytes.charge(prost::Message::encoded_len(&message))) {
            Some(Err(e)) => {
                crate::metrics::count_request_cut("body_bytes_budget");
                return (Err(status_of(&e)), HeaderMap::new());
            }
            held => held,
        };
        // Explanations take their budget unit before any work (HTTP's `/explain` does the same).
        let explaining = match explain::asked(&message).and_then(|on| on.then(|| Explaining::start(state)).transpose())
        {
            Ok(explaining) => explaining,
            Err(e) => return (Err(status_of(&e)), HeaderMap::new()),
        };
        let deadline = deadline(headers, server_deadline, state.limits.request_timeout());
        let (model, version) = (message.model_name.clone(), message.model_version.clone());
        let version = (!version.is_empty()).then_some(version.as_str());
        let lookup = |name: &str| headers.get(name).map(|v| v.as_bytes().to_vec());
        let kept = explaining.as_ref().map(|e| Arc::clone(&e.first_input));
        let decode = move || {
            let decoded = tensors::decode(message)?;
            if let Some(kept) = kept {
                *kept.lock().unwrap_or_else(|p| p.into_inner()) = decoded.inputs.first().cloned();
            }
            Ok(decoded)
        };
        let explain = explaining.is_some();
        let encode = move |chosen: pipeline::Chosen<'_>| -> Result<_, ApiError> {
            let target = explain.then(|| (ExplainTarget::of(chosen.mv), chosen.mv.backlogged()));
            Ok((tensors::encode(chosen), target))
        };
        let answer =
            pipeline::answer(state, (&model, version), lookup, &ids, started, Some(deadline), decode, encode).await;
        let mut meta = HeaderMap::new();
        pipeline::answer_headers(&mut meta, &ids, &answer.meta, started);
        let answered = match (answer.result, explaining) {
            (Ok((response, Some(target))), Some(explaining)) => explaining.finish(state, target, response).await,
            (result, _) => result.map(|(response, _)| response),
        };
        (answered.map_err(|e| status_of(&e)), meta)
    }
}

/// When the request must be answered: the server's request deadline (`server`, set when the
/// call began, or `limit` from now), or the client's `grpc-timeout` when sooner.
fn deadline(headers: &HeaderMap, server: Option<tokio::time::Instant>, limit: Duration) -> pipeline::Deadline {
    let now = tokio::time::Instant::now();
    let server = server.unwrap_or(now + limit);
    let client = headers.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_timeout);
    match client.filter(|c| now + *c < server) {
        Some(c) => pipeline::Deadline { at: now + c, client_ms: Some(c.as_millis() as u64) },
        None => pipeline::Deadline { at: server, client_ms: None },
    }
}

/// Resolves once the gateway is draining.
async fn draining(state: &AppState) {
    while !state.draining.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A stream request being answered: aborted when dropped (the client went away).
struct Task(tokio::task::JoinHandle<pb::ModelStreamInferResponse>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a stream's writer sends next, in order.
enum Next {
    Answer(Task),
    /// The last item: the stream ends with this status.
    End(Status),
}

/// A `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok().filter(|_| (1..=8).contains(&digits.len()))?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn with_metadata<T>(message: T, meta: HeaderMap) -> Response<T> {
    let mut response = Response::new(message);
    *response.metadata_mut() = tonic::metadata::MetadataMap::from_headers(meta);
    response
}

fn api<T>(result: Result<T, ApiError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(|e| status_of(&e))
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse { ready: routes::server_ready(&self.state).is_ok() }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let table = self.state.table.load();
        let ready = self.state.ready.load(Ordering::SeqCst) && table.resolve(&r.name, Some(&r.version)).is_ok();
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "flywheel".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: routes::EXTENSIONS.iter().map(|e| (*e).to_owned()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let table = self.state.table.load();
        let version = (!r.version.is_empty()).then_some(r.version.as_str());
        api(table.resolve(&r.name, version).map_err(ApiError::from).map(|mv| {
            let versions: Vec<&u64> = table.models[&r.name].versions.keys().collect();
            convert::metadata(&routes::model_metadata(mv, version.is_some(), &versions))
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let (metadata, extensions, message) = request.into_parts();
        let headers = metadata.into_headers();
        let server = extensions.get::<crate::server::Deadline>().map(|d| d.0);
        let (answered, meta) = self.infer_one(&headers, message, false, server).await;
        match answered {
            Ok(response) => Ok(with_metadata(response, meta)),
            Err(status) => Err(Status::with_metadata(
                status.code(),
                status.message(),
                tonic::metadata::MetadataMap::from_headers(meta),
            )),
        }
    }

    type ModelStreamInferStream = Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let (metadata, _, mut incoming) = request.into_parts();
        let headers = Arc::new(metadata.into_headers());
        let (out_tx, out_rx) = mpsc::channel(STREAM_WINDOW);
        // Requests are answered concurrently (up to the window) and their answers sent in the
        // order the requests came. When the gateway drains, the stream takes no more requests,
        // sends the answers it owes and ends with UNAVAILABLE: the client reconnects elsewhere.
        let (order_tx, mut order_rx) = mpsc::channel::<Next>(STREAM_WINDOW);
        let service = self.clone();
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    received = incoming.message() => received,
                    () = draining(&service.state) => {
                        let status = Status::unavailable("the gateway is shutting down; reconnect");
                        let _ = order_tx.send(Next::End(status)).await;
                        break;
                    }
                };
                let message = match received {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(status) => {
                        // A message the codec refused (too large, malformed) ends the stream
                        // with its status once the answers before it are out.
                        let _ = order_tx.send(Next::End(super::resource_exhausted_if_too_large(status))).await;
                        break;
                    }
                };
                let (service, headers) = (service.clone(), Arc::clone(&headers));
                let task = tokio::spawn(async move {
                    let id = message.id.clone();
                    match service.infer_one(&headers, message, true, None).await.0 {
                        Ok(response) => pb::ModelStreamInferResponse {
                            error_message: String::new(),
                            infer_response: Some(response),
                        },
                        Err(status) => pb::ModelStreamInferResponse {
                            error_message: status.message().to_owned(),
                            infer_response: Some(pb::ModelInferResponse { id, ..Default::default() }),
                        },
                    }
                });
                if order_tx.send(Next::Answer(Task(task))).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            // Ends (dropping, so aborting, every request still queued) when the client goes.
            while let Some(next) = order_rx.recv().await {
                let item = match next {
                    Next::Answer(mut task) => {
                        Ok((&mut task.0).await.unwrap_or_else(|e| pb::ModelStreamInferResponse {
                            error_message: format!("the request failed inside the gateway: {e}"),
                            infer_response: None,
                        }))
                    }
                    Next::End(status) => Err(status),
                };
                let last = item.is_err();
                if out_tx.send(item).await.is_err() || last {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    async fn model_config(
        &self,
        request: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let r = request.into_inner();
        let table = self.state.table.load();
        let version = (!r.version.is_empty()).then_some(r.version.as_str());
        api(table.resolve(&r.name, version).map_err(ApiError::from).map(|mv| pb::ModelConfigResponse {
            config: Some(convert::config(&routes::model_config(&self.state, mv))),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let r = request.into_inner();
        let table = self.state.table.load();
        let versions: Result<Vec<_>, ApiError> = match (r.name.as_str(), r.version.as_str()) {
            ("", _) => Ok(table.models.values().flat_map(|m| m.versions.values().map(Arc::as_ref)).collect()),
            (name, "") => table
                .models
                .get(name)
                .map(|m| m.versions.values().map(Arc::as_ref).collect())
                .ok_or_else(|| crate::model::RouteError::ModelNotFound(name.to_owned()).into()),
            (name, version) => table.resolve(name, Some(version)).map(|mv| vec![mv.as_ref()]).map_err(ApiError::from),
        };
        api(versions.map(|v| convert::statistics(&routes::stats_of(v))))
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let _ = request.into_inner();
        Ok(Response::new(convert::index(&routes::repository_index(&self.state))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_junk_is_ignored() {
        assert_eq!(parse_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(parse_timeout("123456789S"), None, "at most 8 digits");
        assert_eq!(parse_timeout("5x"), None);
        assert_eq!(parse_timeout(""), None);
    }

    #[test]
    fn the_sooner_deadline_decides_and_a_client_deadline_is_named_as_the_clients() {
        let headers = |t: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", t.parse().unwrap());
            h
        };
        let limit = Duration::from_secs(30);
        let tight = deadline(&headers("250m"), None, limit);
        assert_eq!(tight.client_ms, Some(250), "the client's 250 ms is sooner: its deadline");
        let loose = deadline(&headers("60S"), None, limit);
        assert_eq!(loose.client_ms, None, "the server's 30 s is sooner");
        let none = deadline(&HeaderMap::new(), Some(tokio::time::Instant::now() + limit), limit);
        assert_eq!(none.client_ms, None);
    }
}
