//! Reloading: re-read the config, rebuild the table against the registry, store it whole.
//! Reloads are serialised; a config that fails to parse or validate keeps the old one serving.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use flywheel_registry::Registry;
use ort::environment::Environment;
use serde::Serialize;

use super::audit::{AuditEntry, AuditLog};
use super::build::{BuildInput, BuildReport, build};
use super::controls::Controls;
use crate::config::{Config, Overrides};
use crate::metrics::RELOADS;
use crate::model::{ModelVersion, RoutingTable};

/// The outcome of the last reload, for the admin API and logs.
#[derive(Debug, Default, Serialize)]
pub struct ReloadStatus {
    /// RFC 3339 time of the attempt.
    pub at: String,
    /// Why the whole reload was refused (bad config), if it was.
    pub error: Option<String>,
    /// Changed keys that only a restart applies (everything else was applied).
    pub restart_required: Vec<&'static str>,
    pub report: BuildReport,
}

/// Rebuilds and swaps the routing table on demand.
pub struct Reloader {
    pub env: Environment,
    pub config_path: Option<PathBuf>,
    pub overrides: Overrides,
    pub table: Arc<ArcSwap<RoutingTable>>,
    /// The config in force (the last one that parsed and validated).
    pub config: ArcSwap<Config>,
    /// The config the process started with: what restart-only keys still hold.
    started: Config,
    pub last: ArcSwap<ReloadStatus>,
    /// Live rollout decisions the builder applies.
    pub controls: Controls,
    /// Versions swapped out; while a request still holds one, it is draining.
    retired: Mutex<Vec<std::sync::Weak<ModelVersion>>>,
    pub audit: AuditLog,
    lock: Mutex<()>,
    /// One lock per model around promote / roll back / step decisions, so the controller and
    /// an operator never interleave theirs.
    decisions: Mutex<std::collections::HashMap<String, Arc<Mutex<()>>>>,
    /// The fleet this gateway is a replica of (a registry in object storage), if any.
    pub fleet: Option<Arc<super::fleet::Fleet>>,
}

impl Reloader {
    pub fn new(
        env: Environment,
        config_path: Option<PathBuf>,
        overrides: Overrides,
        config: Config,
        table: Arc<ArcSwap<RoutingTable>>,
    ) -> Self {
        let registry = config.registry_handle();
        let fleet = registry
            .as_ref()
            .and_then(|r| r.remote().cloned())
            .map(|remote| Arc::new(super::fleet::Fleet::new(remote, &config.fleet)));
        let store = registry.as_ref().and_then(|r| r.remote()).and_then(super::store_writer::StoreWriter::for_remote);
        let audit =
            AuditLog::new(config.audit_log_path()).with_replica(fleet.as_ref().map(|f| f.replica.clone()), store);
        let controls = Controls::new(registry);
        Self {
            env,
            config_path,
            overrides,
            table,
            started: config.clone(),
            config: ArcSwap::from_pointee(config),
            last: ArcSwap::from_pointee(ReloadStatus::default()),
            controls,
            retired: Mutex::new(Vec::new()),
            audit,
            lock: Mutex::new(()),
            decisions: Mutex::new(std::collections::HashMap::new()),
            fleet,
        }
    }

    /// The decision lock of `model`: held while a promotion, rollback or step change of it is
    /// decided and applied.
    pub fn decision_lock(&self, model: &str) -> Arc<Mutex<()>> {
        // The map only grows by one entry per model; a panic elsewhere cannot corrupt it.
        let mut locks = self.decisions.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(locks.entry(model.to_owned()).or_default())
    }

    /// The registry the config in force points at.
    pub fn registry(&self) -> Option<Registry> {
        self.config.load().registry_handle()
    }

    /// Re-reads the config (if from a file), rebuilds the table and stores it. Returns the
    /// status it also records.
    pub fn reload(&self) -> Arc<ReloadStatus> {
        // A poisoned lock only means an earlier reload panicked; the table is still whole.
        let _serial = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let config = match Config::load_with(self.config_path.as_deref(), &self.overrides) {
            Ok(c) => c,
            Err(error) => {
                tracing::error!(%error, "config reload refused; the previous config keeps serving");
                metrics::counter!(RELOADS, "result" => "config_rejected").increment(1);
                return self.record(ReloadStatus { at, error: Some(error), ..ReloadStatus::default() });
            }
        };
        let Some(registry) = config.registry_handle() else {
            return self.record(ReloadStatus {
                at,
                error: Some("no model_repository".into()),
                ..ReloadStatus::default()
            });
        };
        let restart_required = super::restart_keys::restart_only_changes(&self.started, &config);
        self.note_restart_required(&restart_required);
        let current = self.table.load_full();
        let input = BuildInput {
            env: &self.env,
            config: &config,
            registry: &registry,
            current: &current,
            controls: &self.controls,
        };
        let (table, report) = build(&input);
        // Audit each rejection once, not on every reload that meets it again.
        let previous = self.last.load_full();
        for r in report.rejected.iter().filter(|r| r.version.is_some() && !previous.report.rejected.contains(r)) {
            let mut entry = AuditEntry::now(&r.model, "reload", "reject");
            entry.to = r.version;
            entry.reason = r.reason.clone();
            self.audit.append(&entry);
        }
        let changed = !report.loaded.is_empty() || routes_differ(&current, &table);
        if changed {
            for (model, version) in &report.loaded {
                let mut entry = AuditEntry::now(model, "reload", "swap");
                entry.to = Some(*version);
                entry.reason = "loaded, verified and warmed up".into();
                self.audit.append(&entry);
            }
            self.retire(&current, &table);
            self.table.store(Arc::new(table));
            tracing::info!(loaded = ?report.loaded, reused = report.reused, rejected = report.rejected.len(), "routing table swapped");
        }
        metrics::counter!(RELOADS, "result" => if report.rejected.is_empty() { "ok" } else { "partial" }).increment(1);
        self.config.store(Arc::new(config));
        self.record(ReloadStatus { at, error: None, restart_required, report })
    }

    /// Logs and audits keys that changed but wait for a restart (audited once per new set).
    fn note_restart_required(&self, keys: &[&'static str]) {
        if keys.is_empty() || self.last.load().restart_required == keys {
            return;
        }
        tracing::warn!(keys = ?keys, "config reloaded; these changed keys apply only after a restart");
        let mut entry = AuditEntry::now("*", "reload", "restart_required");
        entry.reason = format!("changed keys that apply only after a restart: {}", keys.join(", "));
        self.audit.append(&entry);
    }

    /// Remembers the versions of `old` that `new` no longer serves.
    fn retire(&self, old: &RoutingTable, new: &RoutingTable) {
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|w| w.strong_count() > 0);
        for (name, model) in &old.models {
            for (version, mv) in &model.versions {
                let kept =
                    new.models.get(name).and_then(|m| m.versions.get(version)).is_some_and(|n| Arc::ptr_eq(n, mv));
                if !kept {
                    retired.push(Arc::downgrade(mv));
                }
            }
        }
    }

    /// (model, version) of swapped-out versions that requests still hold.
    pub fn draining(&self) -> Vec<(String, u64)> {
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|w| w.strong_count() > 0);
        retired.iter().filter_map(|w| w.upgrade()).map(|mv| (mv.model.clone(), mv.version)).collect()
    }

    fn record(&self, status: ReloadStatus) -> Arc<ReloadStatus> {
        let status = Arc::new(status);
        self.last.store(Arc::clone(&status));
        status
    }
}

fn routes_differ(a: &RoutingTable, b: &RoutingTable) -> bool {
    describe(a) != describe(b)
}

/// Every model's versions and route, as text: two tables route alike when these are equal.
fn describe(table: &RoutingTable) -> String {
    table
        .models
        .values()
        .map(|m| {
            let shadow = m.route.shadow.as_ref().map(|s| (s.version, s.fraction));
            format!(
                "{} {:?} {} {:?} {:?};",
                m.name,
                m.versions.keys().collect::<Vec<_>>(),
                m.route.champion,
                m.route.canary,
                shadow
            )
        })
        .collect()
}
