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
pub const AUDIT_DIR: &str = flywheel_registry::lineage_store::AUDIT_RECORDS;

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
    /// The last [`AuditLog::tail_of`] answer, by (file length, model, n): dashboards poll it
    /// every few seconds and the log changes only on a decision.
    last_tail_of: Mutex<Option<(TailKey, Vec<Value>)>>,
}

/// (file length, model, entries asked for) of a [`AuditLog::tail_of`] answer.
type TailKey = (u64, String, usize);

impl AuditLog {
    pub fn new(path: Option<PathBuf>) -> Self {
        Self {
            path,
            lock: Mutex::new(()),
            replica: None,
            store: None,
            lines: Default::default(),
            last_tail_of: Mutex::new(None),
        }
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

    /// The last `n` entries about `model`, oldest first: read back from the end in widening
    /// steps until there are `n` of them, the file's start, or [`MAX_SCAN_LINES`] lines, so a
    /// quiet model's decisions are found behind a busy model's.
    pub fn tail_of(&self, model: &str, n: usize) -> Vec<Value> {
        let Some(path) = &self.path else { return Vec::new() };
        let key = (std::fs::metadata(path).map_or(0, |m| m.len()), model.to_owned(), n);
        let mut last = self.last_tail_of.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, entries)) = last.as_ref().filter(|(k, _)| *k == key) {
            return entries.clone();
        }
        let entries = self.scan_for(path, model, n);
        *last = Some((key, entries.clone()));
        entries
    }

    fn scan_for(&self, path: &std::path::Path, model: &str, n: usize) -> Vec<Value> {
        // Lines are compact JSON: a cheap test before parsing (the parsed check is exact).
        let needle = format!("\"model\":{}", serde_json::to_string(model).unwrap_or_default());
        let mut read = n.max(1);
        loop {
            let lines = flywheel_registry::tail_lines(path, read).unwrap_or_default();
            let done = lines.len() < read || read >= MAX_SCAN_LINES;
            let entries: Vec<Value> = lines
                .iter()
                .filter(|l| l.contains(&needle))
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|e| e.get("model").and_then(Value::as_str) == Some(model))
                .collect();
            if entries.len() >= n || done {
                let skip = entries.len().saturating_sub(n);
                return entries.into_iter().skip(skip).collect();
            }
            read = (read * 4).min(MAX_SCAN_LINES);
        }
    }
}

/// Most lines [`AuditLog::tail_of`] reads back to find one model's entries.
const MAX_SCAN_LINES: usize = 50_000;

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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn one_models_entries_are_found_behind_a_busy_models() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(Some(dir.path().join("audit.jsonl")));
        for to in [1, 2] {
            let mut entry = AuditEntry::now("quiet", "controller", "promote");
            entry.to = Some(to);
            log.append(&entry);
        }
        for _ in 0..300 {
            log.append(&AuditEntry::now("busy", "reload", "swap"));
        }
        // A model whose name another's contains is not mistaken for it.
        log.append(&AuditEntry::now("quiet-too", "reload", "swap"));
        assert!(log.tail(100).iter().all(|e| e["model"] != "quiet"), "the newest 100 lines are others'");
        let quiet = log.tail_of("quiet", 100);
        assert_eq!(quiet.len(), 2, "{quiet:?}");
        assert_eq!((quiet[0]["to"].as_u64(), quiet[1]["to"].as_u64()), (Some(1), Some(2)), "oldest first");
        assert_eq!(log.tail_of("busy", 10).len(), 10);
        assert!(log.tail_of("absent", 10).is_empty());
        // A new decision is seen at once (the remembered answer is for the old file length).
        let mut entry = AuditEntry::now("quiet", "admin", "roll_back");
        entry.from = Some(3);
        log.append(&entry);
        assert_eq!(log.tail_of("quiet", 100).len(), 3);
        assert_eq!(log.tail_of("quiet", 100).last().unwrap()["action"], "roll_back");
    }
}
