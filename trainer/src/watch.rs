//! `trainer watch`: follows a model's drift events log and runs a cycle when one trips — once
//! enough labelled rows were served after it, never within the cooldown of the last run, never
//! while a candidate is still rolling out, and never twice on the same data after a rejection.
//! Its cursor and the drift it is still handling survive restarts
//! (`<registry>/<model>/trainer-watch.json`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use flywheel_registry::{DriftEvent, Registry, read_drift_events, samples};
use serde::{Deserialize, Serialize};

use crate::config::TrainerConfig;
use crate::cycle::{self, RunRecord};
use crate::dataset::{DatasetError, assemble};

/// File name of the watcher's cursor.
pub const CURSOR_FILE: &str = flywheel_registry::TRAINER_CURSOR_FILE;

#[derive(Debug, Default, Deserialize, Serialize)]
struct Cursor {
    /// Next event `seq` to read.
    next_seq: u64,
    /// The drift read but not handled yet: saved with the cursor, so a restart while waiting
    /// for labels resumes the wait instead of losing the drift.
    #[serde(default)]
    pending: Option<SavedPending>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
struct SavedPending {
    event: DriftEvent,
    since_us: i64,
    events: usize,
    /// When it was first seen (µs since the epoch): `max_wait_s` counts across restarts.
    first_seen_us: i64,
}

impl Pending {
    fn saved(&self) -> SavedPending {
        let age = self.first_seen.elapsed().as_micros() as i64;
        SavedPending {
            event: self.event.clone(),
            since_us: self.since_us,
            events: self.events,
            first_seen_us: cycle::now_us() - age,
        }
    }

    fn restored(saved: SavedPending) -> Self {
        let age = Duration::from_micros(cycle::now_us().saturating_sub(saved.first_seen_us).max(0) as u64);
        Self {
            event: saved.event,
            since_us: saved.since_us,
            first_seen: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            events: saved.events,
            data_wait: None,
        }
    }
}

/// A drift waiting for data (several events of one shift coalesce into it).
struct Pending {
    event: DriftEvent,
    since_us: i64,
    first_seen: Instant,
    /// Events folded into it.
    events: usize,
    /// The sample files' stamp and the answer when the data last was not ready: while the files
    /// stay the same the answer does (no re-reading every file at every poll).
    data_wait: Option<(u64, String)>,
}

/// What the watcher did (for the caller to print).
#[derive(Debug)]
pub enum Note {
    Drift(DriftEvent),
    Ignored(DriftEvent, String),
    Waiting(String),
    Run(Box<RunRecord>),
    GaveUp(String),
}

/// How often `watch` copies new sample and label files from a sample store.
const SAMPLES_EVERY: Duration = Duration::from_secs(10);

/// Follows `config.model`'s drift events until `stop` is set; `notify` hears every step.
pub fn watch(config: &TrainerConfig, stop: &AtomicBool, mut notify: impl FnMut(Note)) {
    if let Err(e) = config.refresh() {
        tracing::warn!(error = %e, "store not reachable; watching the local copy");
    }
    let registry = config.registry_handle();
    let cursor_path = registry.root().join(&config.model).join(CURSOR_FILE);
    let mut cursor: Cursor = match std::fs::read(&cursor_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        // First start: old events are history, not work.
        Err(_) => Cursor { next_seq: read_drift_events(&registry, &config.model, 0).len() as u64, pending: None },
    };
    let mut pending: Option<Pending> = cursor.pending.take().map(Pending::restored);
    if let Some(p) = &pending {
        notify(Note::Drift(p.event.clone()));
    }
    // Saves the cursor with the pending drift as it is now.
    let save = |cursor: &mut Cursor, pending: &Option<Pending>| {
        cursor.pending = pending.as_ref().map(Pending::saved);
        save_cursor(&cursor_path, cursor);
    };
    let mut last_wait = String::new();
    // With a sample store, its files are listed every SAMPLES_EVERY, the registry every poll.
    let mut samples_refreshed = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let refreshed = if samples_refreshed.elapsed() >= SAMPLES_EVERY {
            samples_refreshed = Instant::now();
            config.refresh()
        } else {
            config.refresh_registry()
        };
        if let Err(e) = refreshed {
            tracing::warn!(error = %e, "store not reachable; watching the local copy");
        }
        for event in read_drift_events(&registry, &config.model, cursor.next_seq) {
            cursor.next_seq = event.seq + 1;
            match registry.resolve(&config.model, &config.champion_alias) {
                Ok(champion) if champion != event.version => {
                    let why = format!("about version {}, no longer the champion ({champion})", event.version);
                    notify(Note::Ignored(event, why));
                }
                _ => match &mut pending {
                    Some(p) => p.events += 1,
                    None => {
                        let since_us = parse_us(&event.window_start).unwrap_or_else(cycle::now_us);
                        notify(Note::Drift(event.clone()));
                        pending =
                            Some(Pending { event, since_us, first_seen: Instant::now(), events: 1, data_wait: None });
                    }
                },
            }
            save(&mut cursor, &pending);
        }
        // A drift of a champion that has since been replaced (e.g. by the candidate this very
        // drift produced) is no longer work.
        if let Some(p) = pending
            .take_if(|p| registry.resolve(&config.model, &config.champion_alias).is_ok_and(|v| v != p.event.version))
        {
            let why = format!("about version {}, no longer the champion", p.event.version);
            notify(Note::Ignored(p.event, why));
            save(&mut cursor, &pending);
        }
        if let Some(p) = &mut pending {
            match ready(config, &registry, p) {
                Ok(()) => {
                    let trigger = serde_json::json!({"drift_event": p.event, "events_coalesced": p.events});
                    let record = cycle::run(config, Some(trigger), Some(p.since_us));
                    if record.outcome != "rejected" && record.outcome != "skipped" {
                        pending = None;
                    }
                    notify(Note::Run(Box::new(record)));
                    last_wait.clear();
                }
                Err(Wait::Until(why)) => {
                    if why != last_wait {
                        notify(Note::Waiting(why.clone()));
                        last_wait = why;
                    }
                }
                Err(Wait::GiveUp(why)) => {
                    notify(Note::GaveUp(why));
                    pending = None;
                }
            }
            if pending.as_ref().is_some_and(|p| p.first_seen.elapsed() > Duration::from_secs(config.watch.max_wait_s)) {
                notify(Note::GaveUp(format!("no usable data within max_wait_s = {}", config.watch.max_wait_s)));
                pending = None;
            }
            if pending.is_none() {
                save(&mut cursor, &pending);
            }
        }
        std::thread::sleep(Duration::from_millis(config.watch.poll_ms.max(10)));
    }
}

enum Wait {
    Until(String),
    GiveUp(String),
}

/// Whether a cycle may run now for `p`.
fn ready(config: &TrainerConfig, registry: &Registry, p: &mut Pending) -> Result<(), Wait> {
    let records = cycle::read_records(registry, &config.model);
    let last_run = records.iter().rev().find(|r| r.outcome != "skipped");
    if let Some(last) = last_run
        && let Some(at) = parse_us(&last.time)
    {
        let left = at + config.watch.cooldown_s as i64 * 1_000_000 - cycle::now_us();
        if left > 0 {
            return Err(Wait::Until(format!("cooldown: {:.0} s left since the last run", left as f64 / 1e6)));
        }
    }
    if let Ok(v) = registry.resolve(&config.model, &config.candidate_alias) {
        return Err(Wait::Until(format!("version {v} ('{}') is still rolling out", config.candidate_alias)));
    }
    let stamp = files_stamp(config);
    if let Some((seen, why)) = &p.data_wait
        && *seen == stamp
    {
        return Err(Wait::Until(why.clone()));
    }
    let mut spec = crate::cycle::assemble_spec(config, Some(p.since_us));
    spec.min_rows = spec.min_rows.max(config.watch.min_rows_after_event);
    let not_yet = match assemble(&spec) {
        Ok(dataset) => return check_rejected(config, &records, &dataset),
        Err(DatasetError::TooFew { rows, min, .. }) => format!("{rows} of {min} labelled rows since the drift"),
        Err(e @ (DatasetError::Balance { .. } | DatasetError::Read { .. })) => format!("data not usable yet: {e}"),
        Err(e) => return Err(Wait::GiveUp(format!("the data since the drift cannot be used: {e}"))),
    };
    p.data_wait = Some((stamp, not_yet.clone()));
    Err(Wait::Until(not_yet))
}

/// After a rejection: never the same data again, and only with enough new rows.
fn check_rejected(
    config: &TrainerConfig,
    records: &[RunRecord],
    dataset: &crate::dataset::Dataset,
) -> Result<(), Wait> {
    let rows = (dataset.train.y.len() + dataset.holdout.y.len()) as u64;
    if let Some(rejected) = records.iter().rev().find(|r| r.outcome == "rejected") {
        if rejected.digest() == Some(dataset.digest.as_str()) {
            return Err(Wait::Until("the data is the same as the last rejected run's".into()));
        }
        let needed = rejected.rows() + config.watch.min_new_rows_after_reject as u64;
        if rows < needed {
            return Err(Wait::Until(format!("{rows} of {needed} labelled rows (more than the rejected run had)")));
        }
    }
    Ok(())
}

/// Count, sizes and times of the model's finished sample and label files.
fn files_stamp(config: &TrainerConfig) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for kind in [samples::SAMPLES, samples::LABELS] {
        let dir = config.samples.join(kind).join(format!("{}={}", samples::MODEL, config.model));
        let mut stack = vec![dir];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                match entry.metadata() {
                    Ok(m) if m.is_dir() => stack.push(path),
                    Ok(m) if path.extension().is_some_and(|e| e == "parquet") => {
                        (path, m.len(), m.modified().ok()).hash(&mut h);
                    }
                    _ => {}
                }
            }
        }
    }
    h.finish()
}

fn save_cursor(path: &std::path::Path, cursor: &Cursor) {
    let bytes = serde_json::to_vec(cursor).unwrap_or_default();
    if let Err(e) = flywheel_registry::fsutil::write_atomic(path, &bytes) {
        tracing::warn!(path = %path.display(), error = %e, "watch cursor not saved");
    }
}

/// µs since the epoch of an RFC 3339 time.
pub fn parse_us(text: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(text).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_micros() as i64)
}
