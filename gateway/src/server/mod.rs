//! The HTTP side: a hyper 1 accept loop serving HTTP/1.1 (keep-alive) and HTTP/2 cleartext on
//! one port ([`serve`]), routing ([`routes`]), the infer handler ([`infer`]) and the one place
//! errors become responses ([`error`]).

pub mod admin;
pub mod error;
pub mod feedback;
pub mod infer;
pub mod routes;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::model::RoutingTable;
pub use error::ApiError;

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
    /// Rebuilds the table on config/registry changes (absent in tests that build state by hand).
    pub reloader: Option<Arc<crate::rollout::Reloader>>,
    /// Sampling, labels and drift (absent when it could not start).
    pub tap: Option<Arc<crate::tap::Tap>>,
    /// Server-wide limit on inference requests in flight (`max_in_flight`), when set.
    pub admission: Option<Arc<crate::model::table::Budget>>,
}

/// Serves connections until `shutdown` resolves, then stops accepting and waits up to `grace`
/// for in-flight requests to finish. Returns whether everything drained in time.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) -> bool {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let service = service_fn(move |req| {
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(routes::handle(state, req, peer).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    state.ready.store(false, std::sync::atomic::Ordering::SeqCst);
    tracing::info!(connections = graceful.count(), "shutting down: draining in-flight requests");
    tokio::time::timeout(grace, graceful.shutdown()).await.is_ok()
}
