//! Wiring: load ONNX Runtime, build the first routing table from config + registry, start the
//! watcher that hot-swaps it, then serve until shut down.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::config::{Config, Overrides};
use crate::model::{ModelError, RoutingTable, runtime};
use crate::rollout::controller;
use crate::rollout::registry_sync;
use crate::rollout::watcher::{self, WatchSettings};
use crate::rollout::{Rejection, Reloader};
use crate::server::{self, AppState};
use crate::tap::Tap;

/// Startup failures, each with a message that says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "no model repository: pass --model-repository DIR, set FLYWHEEL_MODEL_REPOSITORY, or set model_repository in the config"
    )]
    NoRepository,
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("model repository {root}: nothing could be served:{}", list(.rejected))]
    NothingLoaded { root: String, rejected: Vec<Rejection> },
    #[error("config names models that cannot be served:{}", list(.0))]
    ConfiguredModels(Vec<Rejection>),
    #[error("listening on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("model repository {0}")]
    Registry(String),
}

fn list(rejected: &[Rejection]) -> String {
    rejected
        .iter()
        .map(|r| match r.version {
            Some(v) => format!("\n  {} version {v}: {}", r.model, r.reason),
            None => format!("\n  {}: {}", r.model, r.reason),
        })
        .collect()
}

/// A gateway that has loaded its models and bound its socket, not yet serving.
pub struct Gateway {
    pub listener: TcpListener,
    /// The gRPC port and its services, with `grpc_listen`.
    pub grpc: Option<(TcpListener, crate::grpc::Grpc)>,
    pub state: Arc<AppState>,
    pub reloader: Arc<Reloader>,
    /// Fingerprint of config and registry taken before the first table was built.
    pub baseline: u64,
    pub grace: Duration,
    /// Keeps the local copy of a registry in object storage current (`None` for a folder).
    pub registry_sync: Option<crate::rollout::background::Background>,
    /// Copies finalized sample and label files to object storage, if configured.
    pub sample_upload: Option<crate::rollout::background::Background>,
    /// Holds the local copy of a registry in object storage for this process alone.
    pub copy_lock: Option<std::fs::File>,
}

impl Gateway {
    /// The bound gRPC address, with `grpc_listen`.
    pub fn grpc_addr(&self) -> Option<std::net::SocketAddr> {
        self.grpc.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Loads the runtime and every model, and binds the listen address. `config_path` is
    /// re-read on reloads (with `overrides` applied again).
    pub async fn start(config: Config, config_path: Option<PathBuf>, overrides: Overrides) -> Result<Self, StartError> {
        let root = config.model_repository.clone().ok_or(StartError::NoRepository)?;
        let env = runtime::init(config.ort_library.as_deref())?;
        let metrics = crate::metrics::install();
        let mirror = registry_sync::mirror_for(&config).map_err(StartError::Registry)?;
        let copy_lock = match &mirror {
            Some(mirror) => {
                let lock = lock_copy(&root)?;
                first_sync(mirror, &root).await?;
                Some(lock)
            }
            None => None,
        };
        let table = Arc::new(ArcSwap::from_pointee(RoutingTable::default()));
        let reloader = Arc::new(Reloader::new(env, config_path, overrides, config.clone(), Arc::clone(&table)));
        let baseline = watcher::fingerprint(&reloader);
        let registry_sync = match mirror {
            Some(mirror) => Some(
                registry_sync::spawn(mirror, Arc::clone(&reloader))
                    .map_err(|e| StartError::Registry(format!("sync thread not started: {e}")))?,
            ),
            None => None,
        };
        let status = {
            let reloader = Arc::clone(&reloader);
            tokio::task::spawn_blocking(move || reloader.reload())
                .await
                .map_err(|e| ModelError::Runtime(e.to_string()))?
        };
        if table.load().models.is_empty() {
            let mut rejected = status.report.rejected.clone();
            if let Some(error) = &status.error {
                rejected.push(Rejection { model: "*".into(), version: None, reason: error.clone() });
            }
            return Err(StartError::NothingLoaded { root: root.display().to_string(), rejected });
        }
        let unserved: Vec<Rejection> = status
            .report
            .rejected
            .iter()
            // A configured model that is not served at all stops the start; one served without
            // its canary or shadow (e.g. no 'challenger' alias yet) starts, with a warning.
            .filter(|r| {
                r.version.is_none()
                    && config.models.contains_key(&r.model)
                    && !table.load().models.contains_key(&r.model)
            })
            .cloned()
            .collect();
        if !unserved.is_empty() {
            return Err(StartError::ConfiguredModels(unserved));
        }
        for r in &status.report.rejected {
            tracing::warn!(model = %r.model, version = ?r.version, reason = %r.reason, "not served");
        }
        if config.insecure_allow_unauthenticated && !config.listen.ip().is_loopback() {
            tracing::warn!(
                listen = %config.listen,
                admin = config.admin_token.is_some(),
                feedback = config.feedback_token.is_some(),
                "insecure_allow_unauthenticated: whoever reaches this address may use the endpoints without a token"
            );
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| StartError::Listen { addr: config.listen.to_string(), reason: e.to_string() })?;
        let grpc_listener = match config.grpc_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| StartError::Listen { addr: addr.to_string(), reason: e.to_string() })?,
            ),
            None => None,
        };
        let replica = self_replica(&reloader);
        let tap = start_tap(&config, reloader.fleet.as_ref().map(|_| replica.clone()), &replica);
        let sample_upload = start_upload(&config, tap.is_some(), replica);
        let explain_budget = crate::model::table::Budget::new(config.explain.max_concurrent);
        let auto_explain = config.sample_dir().and_then(|dir| {
            crate::explain::auto::AutoExplain::start(Arc::clone(&reloader), Arc::clone(&explain_budget), dir)
                .map_err(|e| tracing::error!(error = %e, "automatic explanations not started"))
                .ok()
        });
        let state = Arc::new(AppState {
            table,
            max_body_bytes: config.max_body_bytes,
            metrics,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            limits: config.server.clone(),
            body_bytes: crate::server::body::ByteBudget::new(config.server.max_in_flight_bytes),
            reloader: Some(Arc::clone(&reloader)),
            tap,
            admission: (config.max_in_flight > 0).then(|| crate::model::table::Budget::new(config.max_in_flight)),
            explain_budget,
            auto_explain,
        });
        let grace = Duration::from_millis(config.shutdown_grace_ms);
        let grpc = grpc_listener.map(|l| (l, crate::grpc::Grpc::new(Arc::clone(&state), config.grpc_message_limit())));
        Ok(Self { listener, grpc, state, reloader, baseline, grace, registry_sync, sample_upload, copy_lock })
    }

    /// Serves until `shutdown` resolves, then drains; returns whether the drain finished in time.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> bool {
        let watch = WatchSettings { poll: Duration::from_millis(1000), debounce: Duration::from_millis(150) };
        let _watcher = match watcher::spawn(Arc::clone(&self.reloader), watch, self.baseline) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(error = %e, "config/registry watcher not started; hot swaps are off");
                None
            }
        };
        let interval = Duration::from_millis(self.reloader.config.load().controller_interval_ms.max(10));
        let _controller = match controller::spawn(Arc::clone(&self.reloader), interval) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "rollout controller not started; rollouts need manual promotion");
                None
            }
        };
        let dashboard = self.reloader.config.load().dashboard.clone();
        let _history = match crate::dashboard::spawn_sampler(Arc::clone(&self.state.table), &dashboard) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::error!(error = %e, "dashboard history not started; its charts stay empty");
                None
            }
        };
        self.state.ready.store(true, Ordering::SeqCst);
        let tap = self.state.tap.clone();
        let _registry_sync = self.registry_sync;
        let fleet = self.reloader.fleet.clone();
        let drained = server::serve(self.listener, self.grpc, self.state, shutdown, self.grace).await;
        drop(_controller);
        if let Some(fleet) = fleet {
            // Hand the controller leases over now rather than after their expiry.
            let _ = tokio::task::spawn_blocking(move || fleet.release_all()).await;
        }
        if let Some(tap) = tap {
            // Finalize every sample and label file before exiting.
            let grace = self.grace;
            let _ = tokio::task::spawn_blocking(move || tap.shutdown(grace)).await;
        }
        // After the tap finalized its files: the uploader's last pass puts them.
        if let Some(upload) = self.sample_upload {
            let _ = tokio::task::spawn_blocking(move || drop(upload)).await;
        }
        drained
    }
}

/// Takes the local copy of a registry store for this process: two gateways syncing one copy
/// (and sharing its sample folder, audit and drift logs) would undo each other's writes.
fn lock_copy(root: &std::path::Path) -> Result<std::fs::File, StartError> {
    let fail = |e: String| StartError::Registry(format!("local copy {}: {e}", root.display()));
    std::fs::create_dir_all(root).map_err(|e| fail(e.to_string()))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join(".flywheel-copy.lock"))
        .map_err(|e| fail(e.to_string()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(fail("in use by another gateway: give each replica its own [registry] cache_dir".into()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(fail(e.to_string())),
    }
}

/// The first copy from the registry store. A store that cannot be reached is survivable only
/// with a local copy from an earlier run (served as it was, and synced once the store answers).
async fn first_sync(mirror: &Arc<flywheel_registry::Mirror>, root: &std::path::Path) -> Result<(), StartError> {
    let copy = Arc::clone(mirror);
    let result = tokio::task::spawn_blocking(move || {
        let remote = copy.registry().remote().cloned().ok_or("no store")?;
        registry_sync::sync_once(&copy, &remote).map(|_| ())
    })
    .await
    .map_err(|e| StartError::Registry(e.to_string()))?;
    match result {
        Ok(()) => Ok(()),
        Err(e) if flywheel_registry::Registry::open(root).models().is_ok_and(|m| !m.is_empty()) => {
            tracing::warn!(error = %e, copy = %root.display(), "starting from the local copy of the registry");
            Ok(())
        }
        Err(e) => Err(StartError::Registry(format!("{e}; no local copy at {} to start from", root.display()))),
    }
}

/// Starts the tap (sampling, labels, drift); without one the gateway serves all the same.
/// `fleet` is the replica's fleet name, `name` this process's (for the sample store's records).
fn start_tap(config: &Config, fleet: Option<String>, name: &str) -> Option<Arc<Tap>> {
    let dir = config.sample_dir()?;
    let registry = config.registry_handle();
    let label_store = config.sample_store_url().and_then(|url| match flywheel_registry::Remote::shared(&url) {
        Ok(remote) => Some((remote, name.to_owned())),
        Err(e) => {
            tracing::error!(error = %e, "sample store unusable; labels are acknowledged from the local disk");
            None
        }
    });
    match Tap::start(config.sampling.clone(), config.drift.clone(), dir.clone(), registry, fleet, label_store) {
        Ok(tap) => {
            tracing::info!(dir = %dir.display(), rate = config.sampling.rate, "tap started");
            Some(Arc::new(tap))
        }
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "tap not started: no sampling, labels or drift");
            None
        }
    }
}

/// The replica name of this process (its fleet name, or the host-pid default).
fn self_replica(reloader: &Reloader) -> String {
    reloader.fleet.as_ref().map_or_else(|| reloader.config.load().fleet.replica_name(), |f| f.replica.clone())
}

/// Starts the uploader of part files to the sample store, when there is one (and a tap).
fn start_upload(config: &Config, tap: bool, replica: String) -> Option<crate::rollout::background::Background> {
    let (url, dir) = (config.sample_store_url()?, config.sample_dir()?);
    if !tap {
        return None;
    }
    let remote = match flywheel_registry::Remote::shared(&url) {
        Ok(remote) => remote,
        Err(e) => {
            tracing::error!(error = %e, "sample store unusable; samples stay local");
            return None;
        }
    };
    let interval = Duration::from_millis(config.sampling.upload_interval_ms);
    match crate::tap::upload::spawn(remote, dir, replica, interval) {
        Ok(upload) => {
            tracing::info!(store = %url, "sample and label files are copied to the store");
            Some(upload)
        }
        Err(e) => {
            tracing::error!(error = %e, "sample uploader not started; samples stay local");
            None
        }
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
