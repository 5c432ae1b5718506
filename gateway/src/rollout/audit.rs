//! The append-only audit log: one JSON line per automatic or manual decision, with the numbers
//! that decided it.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

/// One decision.
#[derive(Clone, Debug, Serialize)]
pub struct AuditEntry {
    pub time: String,
    pub model: String,
    /// Who decided: `controller`, `admin` or `reload`.
    pub actor: &'static str,
    /// `advance`, `promote`, `roll_back`, `set_weight`, `pause`, `resume`, `swap`, `reject`,
    /// `restart_required`, `await_approval`, `approve` (and `*_conflict`, `*_failed`).
    pub action: &'static str,
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub reason: String,
    pub evidence: Value,
    /// The fleet replica that decided (set by the log of a replica).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// The credential an operator's decision came with (its name, never its token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl AuditEntry {
    /// An entry stamped now.
    pub fn now(model: &str, actor: &'static str, action: &'static str) -> Self {
        Self {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            model: model.to_owned(),
            actor,
            action,
            from: None,
            to: None,
            reason: String::new(),
            evidence: Value::Null,
            replica: None,
            credential: None,
        }
    }
}

/// The fleet's audit folder at the registry's root in object storage (not a model name: those
/// cannot start with '.').
pub const AUDIT_DIR: &str = ".audit";

/// Appends entries to a JSON-lines file (or only logs them without a path).
#[derive(Debug)]
pub struct AuditLog {
    path: Option<PathBuf>,
    lock: Mutex<()>,
    replica: Option<String>,
    /// In a fleet: every line also goes to `<registry>/.audit/<id>.json` in the store, so the
    /// fleet's decisions (the lease holders', the operators') are in one place.
    store: Option<Arc<super::store_writer::StoreWriter>>,
    lines: std::sync::atomic::AtomicU64,
}

impl AuditLog {
    pub fn new(path: Option<PathBuf>) -> Self {
        Self { path, lock: Mutex::new(()), replica: None, store: None, lines: Default::default() }
    }

    /// Stamps every entry with the replica's name and puts it to `store` too.
    pub fn with_replica(self, replica: Option<String>, store: Option<Arc<super::store_writer::StoreWriter>>) -> Self {
        Self { replica, store, ..self }
    }

    /// Appends `entry` (and logs it); a write failure is logged, never fatal. It fsyncs: call it
    /// from a blocking thread, never from an async handler.
    pub fn append(&self, entry: &AuditEntry) {
        tracing::info!(model = %entry.model, action = entry.action, actor = entry.actor, from = ?entry.from, to = ?entry.to, reason = %entry.reason, "rollout decision");
        metrics::counter!(crate::metrics::DECISIONS, "model" => entry.model.clone(), "action" => entry.action, "actor" => entry.actor)
            .increment(1);
        let Some(path) = &self.path else { return };
        let _serial = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        rotate_if_full(path);
        let line = match (&self.replica, &entry.replica) {
            (Some(replica), None) => {
                serde_json::to_string(&AuditEntry { replica: Some(replica.clone()), ..entry.clone() })
            }
            _ => serde_json::to_string(entry),
        }
        .unwrap_or_default();
        let written = std::fs::OpenOptions::new().create(true).append(true).open(path).and_then(|mut f| {
            // One write call per line keeps lines whole; sync so a decision survives a crash.
            f.write_all(format!("{line}\n").as_bytes())?;
            f.sync_data()
        });
        if let Err(e) = written {
            tracing::error!(path = %path.display(), error = %e, "audit log not written");
        }
        // Then the fleet's copy, off this thread.
        if let (Some(store), Some(replica)) = (&self.store, &self.replica) {
            let n = self.lines.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let id = super::store_writer::record_id(replica, n);
            let stamped = AuditEntry { replica: Some(replica.clone()), ..entry.clone() };
            let bytes = serde_json::to_vec(&stamped).unwrap_or_default();
            store.put("audit", vec![AUDIT_DIR.to_owned(), format!("{id}.json")], bytes);
        }
    }

    /// The last `n` entries of the current file (for the admin API), read from its end.
    pub fn tail(&self, n: usize) -> Vec<Value> {
        let Some(path) = &self.path else { return Vec::new() };
        let lines = flywheel_registry::tail_lines(path, n).unwrap_or_default();
        lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

/// Size at which the audit log is set aside as `<name>.<unix ms>` and a new one started.
const ROTATE_AT_BYTES: u64 = 64 << 20;

fn rotate_if_full(path: &std::path::Path) {
    if std::fs::metadata(path).map_or(true, |m| m.len() < ROTATE_AT_BYTES) {
        return;
    }
    let ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("audit.jsonl");
    let aside = path.with_file_name(format!("{name}.{ms}"));
    match std::fs::rename(path, &aside) {
        Ok(()) => tracing::info!(path = %aside.display(), "audit log rotated"),
        Err(e) => tracing::error!(path = %path.display(), error = %e, "audit log not rotated"),
    }
}
