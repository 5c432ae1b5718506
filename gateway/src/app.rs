//! Wiring: load ONNX Runtime and the model repository, then serve until shut down.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::model::{ModelError, RoutingTable, runtime};
use crate::server::{self, AppState};

/// Startup failures, each with a message that says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "no model repository: pass --model-repository DIR, set FLYWHEEL_MODEL_REPOSITORY, or set model_repository in the config"
    )]
    NoRepository,
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("model repository {0} has no model that loaded; see the errors above")]
    NothingLoaded(String),
    #[error("config models.{0}: no such model in the repository")]
    UnknownModel(String),
    #[error("listening on {addr}: {reason}")]
    Listen { addr: String, reason: String },
}

/// A gateway that has loaded its models and bound its socket, not yet serving.
pub struct Gateway {
    pub listener: TcpListener,
    pub state: Arc<AppState>,
    pub grace: Duration,
}

impl Gateway {
    /// Loads the runtime and every model, and binds the listen address.
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        let root: PathBuf = config.model_repository.clone().ok_or(StartError::NoRepository)?;
        let env = runtime::init(config.ort_library.as_deref())?;
        let metrics = crate::metrics::install();
        let table = RoutingTable::load(&env, &root, |model| config.batch_settings_for(model))?;
        if table.models.is_empty() {
            return Err(StartError::NothingLoaded(root.display().to_string()));
        }
        if let Some(name) = config.models.keys().find(|name| !table.models.contains_key(*name)) {
            return Err(StartError::UnknownModel(name.clone()));
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| StartError::Listen { addr: config.listen.to_string(), reason: e.to_string() })?;
        let state = Arc::new(AppState {
            table: ArcSwap::from_pointee(table),
            max_body_bytes: config.max_body_bytes,
            metrics,
            ready: AtomicBool::new(false),
        });
        Ok(Self { listener, state, grace: Duration::from_millis(config.shutdown_grace_ms) })
    }

    /// Serves until `shutdown` resolves, then drains; returns whether the drain finished in time.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> bool {
        self.state.ready.store(true, Ordering::SeqCst);
        server::serve(self.listener, self.state, shutdown, self.grace).await
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "SIGTERM handler not installed; only Ctrl-C stops the gateway");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
