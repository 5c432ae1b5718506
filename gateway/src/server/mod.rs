//! The HTTP side: a hyper 1 accept loop serving HTTP/1.1 (keep-alive) and HTTP/2 cleartext on
//! one port ([`serve`]), routing ([`routes`]), the infer handler ([`infer`]) and the one place
//! errors become responses ([`error`]).

pub mod admin;
pub mod auth;
pub mod body;
pub mod conn;
pub mod error;
pub mod explain;
pub mod feedback;
pub mod infer;
pub mod limits;
pub mod pipeline;
pub mod routes;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use crate::model::RoutingTable;
pub use error::ApiError;
use limits::ServerLimits;

/// Response type of every handler.
pub type HttpResponse = Response<Full<Bytes>>;

/// What handlers share: the routing table (swapped whole) and server-wide settings.
pub struct AppState {
    /// Shared with the reloader, which stores a new table on every swap.
    pub table: Arc<ArcSwap<RoutingTable>>,
    pub max_body_bytes: usize,
    pub metrics: Option<&'static PrometheusHandle>,
    /// False until startup finished loading and while shutting down.
    pub ready: AtomicBool,
    /// True from SIGTERM on: HTTP/1.1 answers carry `Connection: close`.
    pub draining: AtomicBool,
    /// Rebuilds the table on config/registry changes (absent in tests that build state by hand).
    pub reloader: Option<Arc<crate::rollout::Reloader>>,
    /// Sampling, labels and drift (absent when it could not start).
    pub tap: Option<Arc<crate::tap::Tap>>,
    /// Server-wide limit on inference requests in flight (`max_in_flight`), when set.
    pub admission: Option<Arc<crate::model::table::Budget>>,
    /// Deadlines, connection cap and drain timing (`[server]`).
    pub limits: ServerLimits,
    /// Body bytes held at once (`server.max_in_flight_bytes`).
    pub body_bytes: Arc<body::ByteBudget>,
    /// Explanations computed at once (`explain.max_concurrent`, read at start).
    pub explain_budget: Arc<crate::model::table::Budget>,
    /// The automatic explanations' thread (absent without a sample folder).
    pub auto_explain: Option<crate::explain::auto::AutoExplain>,
}

/// Where the server is in its life; connections watch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Readiness is false; still serving, HTTP/2 clients told to go elsewhere (GOAWAY).
    Draining,
    /// The listener is closed; every connection finishes what it has and closes.
    Stopping,
}

enum Event {
    /// A connection, and the gRPC services when it came to the gRPC port.
    Accepted(TcpStream, std::net::SocketAddr, OwnedSemaphorePermit, Option<crate::grpc::Grpc>),
    Retry,
    Drain,
    Stop,
}

/// Serves connections until `shutdown` resolves, then drains for a load balancer: readiness
/// goes false at once, the listeners stay open for `drain_delay_ms`, then they close and
/// in-flight requests get up to `grace` to finish. `grpc` is the gRPC port and its services;
/// both ports share the connection cap and the drain. Returns whether everything drained in
/// time.
pub async fn serve(
    listener: TcpListener,
    grpc: Option<(TcpListener, crate::grpc::Grpc)>,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) -> bool {
    let limits = state.limits.clone();
    let builder = connection_builder(&limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (phase_tx, phase_rx) = watch::channel(Phase::Serving);
    let mut drain_until: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let event = tokio::select! {
            biased;
            () = &mut shutdown, if drain_until.is_none() => Event::Drain,
            () = tokio::time::sleep_until(drain_until.unwrap_or_else(Instant::now)), if drain_until.is_some() => Event::Stop,
            event = accept_either(&listener, grpc.as_ref(), &slots) => event,
        };
        match event {
            Event::Accepted(stream, peer, slot, services) => {
                let conn = Connection { state: Arc::clone(&state), peer, phase: phase_rx.clone(), _slot: slot };
                match services {
                    None => tokio::spawn(conn.run(stream, builder.clone())),
                    Some(grpc) => tokio::spawn(conn.run_grpc(stream, builder.clone(), grpc)),
                };
            }
            Event::Retry => {}
            Event::Drain => {
                state.ready.store(false, Ordering::SeqCst);
                state.draining.store(true, Ordering::SeqCst);
                let _ = phase_tx.send(Phase::Draining);
                tracing::info!(drain_delay_ms = limits.drain_delay_ms, "shutting down: not ready, still serving");
                drain_until = Some(Instant::now() + limits.drain_delay());
            }
            Event::Stop => break,
        }
    }
    drop(listener);
    drop(grpc);
    let _ = phase_tx.send(Phase::Stopping);
    let open = limits.max_connections - slots.available_permits();
    tracing::info!(connections = open, "listener closed: finishing in-flight requests");
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    tokio::time::timeout(grace, slots.acquire_many(all)).await.is_ok()
}

/// Waits for a connection slot, then a connection on the HTTP port or the gRPC port (picked at
/// random when both have one, so a flood on one port does not starve the other). Out of file
/// descriptors and the like back off instead of spinning; at the connection cap nothing is
/// accepted (the backlog holds them).
async fn accept_either(
    http: &TcpListener,
    grpc: Option<&(TcpListener, crate::grpc::Grpc)>,
    slots: &Arc<Semaphore>,
) -> Event {
    let Ok(slot) = Arc::clone(slots).acquire_owned().await else { return Event::Stop };
    let accepted = match grpc {
        None => http.accept().await.map(|a| (a, None)),
        Some((listener, services)) => tokio::select! {
            a = http.accept() => a.map(|a| (a, None)),
            a = listener.accept() => a.map(|a| (a, Some(services.clone()))),
        },
    };
    match accepted {
        Ok(((stream, peer), services)) => Event::Accepted(stream, peer, slot, services),
        Err(e) => {
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            Event::Retry
        }
    }
}

fn connection_builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let keep_alive = (limits.h2_keep_alive_ms > 0).then(|| Duration::from_millis(limits.h2_keep_alive_ms));
    let mut h2 = builder.http2();
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(64 << 10)
        .keep_alive_interval(keep_alive);
    if let Some(every) = keep_alive {
        h2.keep_alive_timeout(every);
    }
    builder
}

/// One accepted connection: its slot under the cap, and what its requests need.
struct Connection {
    state: Arc<AppState>,
    peer: std::net::SocketAddr,
    phase: watch::Receiver<Phase>,
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    async fn run(self, stream: TcpStream, builder: auto::Builder<TokioExecutor>) {
        let _ = stream.set_nodelay(true);
        let activity = conn::Activity::new();
        let io = TokioIo::new(conn::TrackedStream::new(stream, Arc::clone(&activity)));
        let (state, peer) = (Arc::clone(&self.state), self.peer);
        let requests = Arc::clone(&activity);
        let service = service_fn(move |req| {
            let guard = requests.request_started();
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(answer(state, req, peer, guard).await) }
        });
        let connection = builder.serve_connection(io, service).into_owned();
        self.drive(connection, activity).await;
    }

    /// A connection to the gRPC port: HTTP/2 only, every request to the gRPC services.
    async fn run_grpc(self, stream: TcpStream, builder: auto::Builder<TokioExecutor>, grpc: crate::grpc::Grpc) {
        let _ = stream.set_nodelay(true);
        let activity = conn::Activity::new();
        let io = TokioIo::new(conn::TrackedStream::new(stream, Arc::clone(&activity)));
        let requests = Arc::clone(&activity);
        let service = service_fn(move |req| {
            // Held until the answer's body is sent: a stream is in flight for its whole life.
            let guard = requests.request_started();
            let grpc = grpc.clone();
            async move { Ok::<_, Infallible>(grpc.call(req, guard).await) }
        });
        let builder = builder.http2_only();
        let connection = builder.serve_connection(io, service).into_owned();
        self.drive(connection, activity).await;
    }

    /// Runs a connection under its watchdog and the server's phases (drain, stop).
    async fn drive<C>(mut self, connection: C, activity: Arc<conn::Activity>)
    where
        C: GracefulConnection,
        C::Error: std::fmt::Display,
    {
        let peer = self.peer;
        tokio::pin!(connection);
        let limits = self.state.limits.clone();
        let mut tick = tokio::time::interval(conn::tick(&limits));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shut = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                changed = self.phase.changed() => {
                    let phase = if changed.is_ok() { *self.phase.borrow_and_update() } else { Phase::Stopping };
                    // Draining: HTTP/2 gets GOAWAY now (its client reconnects elsewhere); HTTP/1.1
                    // keeps its connection and answers with `Connection: close`.
                    let keep = phase == Phase::Serving || (phase == Phase::Draining && !activity.is_h2());
                    if !keep && !shut {
                        connection.as_mut().graceful_shutdown();
                        shut = true;
                    }
                    if changed.is_err() { break; }
                }
                _ = tick.tick() => {
                    // A connection that only said it speaks HTTP/2 after the drain began.
                    if !shut && *self.phase.borrow() == Phase::Draining && activity.is_h2() {
                        connection.as_mut().graceful_shutdown();
                        shut = true;
                    }
                    if let Some(expiry) = activity.expired(&limits, conn::clock()) {
                        // Idle: a graceful close (GOAWAY on h2); anything else, or an idle
                        // connection that a graceful close did not end, is dropped.
                        if expiry != conn::Expiry::Idle || shut {
                            crate::metrics::count_connection_closed(expiry.as_str());
                            tracing::debug!(%peer, reason = expiry.as_str(), "closing connection");
                            return;
                        }
                        crate::metrics::count_connection_closed(expiry.as_str());
                        connection.as_mut().graceful_shutdown();
                        shut = true;
                    }
                }
            }
        }
        let _ = connection.await;
    }
}

/// When the whole request must be answered by (`server.request_timeout_ms` after it began).
#[derive(Clone, Copy, Debug)]
pub struct Deadline(pub tokio::time::Instant);

/// Runs one request under the whole-request deadline; while draining, HTTP/1.1 answers ask the
/// client to close so its next request opens a new connection (to another replica).
async fn answer(
    state: Arc<AppState>,
    mut req: Request<Incoming>,
    peer: std::net::SocketAddr,
    _guard: conn::RequestGuard,
) -> HttpResponse {
    let h1 = req.version() < Version::HTTP_2;
    let deadline = tokio::time::Instant::now() + state.limits.request_timeout();
    req.extensions_mut().insert(Deadline(deadline));
    let mut response = routes::handle(Arc::clone(&state), req, peer, deadline).await;
    if h1 && state.draining.load(Ordering::Relaxed) {
        response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
