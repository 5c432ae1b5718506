//! Labels across a fleet. A label may be posted to any replica, but only the replica that
//! answered the request holds its prediction (and the route evidence the controller judges).
//! The receiving replica stores the label as always (journal, Parquet) and joins what it can;
//! the labels it could not join are relayed through the store, as one object per batch under
//! `<model>/label-relay/<id>.json` (ids are time-ordered). Every replica lists that folder from
//! a cursor every half second, skips its own batches, and joins the others' labels to its
//! recent predictions, never storing them again (they are stored by the replica that took them).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::Sender;
use flywheel_registry::{Registry, Remote};
use serde::{Deserialize, Serialize};

use super::labels::Label;
use crate::rollout::background::Background;
use crate::rollout::store_writer::{StoreWriter, record_id};

#[cfg(test)]
#[test]
fn the_writer_of_a_batch_is_read_from_its_name_exactly() {
    assert_eq!(writer_of("1764600000000-a-000001.json"), Some("a"));
    assert_eq!(writer_of("1764600000000-b-a-000001.json"), Some("b-a"));
    assert_eq!(writer_of("junk.json"), None);
}

/// The folder of relayed label batches in a model's folder in the store.
pub const RELAY_DIR: &str = "label-relay";
/// How far back a poll lists (batches are put by other replicas' writer threads, late by up to
/// a store request or two).
const LOOKBACK_MS: u64 = 120_000;

/// One relayed batch.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    pub replica: String,
    pub labels: Vec<Label>,
}

/// The sending side, owned by the tap thread: labels gathered per model and put as one batch
/// per model at most every [`RelayOut::flush`] (the tap calls it every 200 ms), by a writer
/// thread of its own.
pub struct RelayOut {
    writer: StoreWriter,
    replica: String,
    sent: AtomicU64,
    pending: HashMap<String, Vec<Label>>,
}

impl RelayOut {
    pub fn new(writer: StoreWriter, replica: String) -> Self {
        Self { writer, replica, sent: AtomicU64::new(0), pending: HashMap::new() }
    }

    /// Queues labels this replica stored but could not join.
    pub fn send(&mut self, model: &str, labels: Vec<Label>) {
        if !labels.is_empty() {
            self.pending.entry(model.to_owned()).or_default().extend(labels);
        }
    }

    /// Puts what was queued, one batch per model.
    pub fn flush(&mut self) {
        for (model, labels) in self.pending.drain() {
            let id = record_id(&self.replica, self.sent.fetch_add(1, Ordering::Relaxed));
            let batch = Batch { replica: self.replica.clone(), labels };
            let parts = vec![model, RELAY_DIR.to_owned(), format!("{id}.json")];
            self.writer.put("label_relay", parts, serde_json::to_vec(&batch).unwrap_or_default());
        }
    }
}

/// The replica that wrote the batch `name` (`<13 digits>-<replica>-<6 digits>.json`).
fn writer_of(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".json")?;
    let rest = stem.get(14..)?;
    rest.get(..rest.len().checked_sub(7)?)
}

/// Polls the other replicas' relayed batches of every model in the local copy at `root` and
/// hands their labels to the tap thread through `tx`.
pub fn spawn_receiver(
    remote: Arc<Remote>,
    root: PathBuf,
    replica: String,
    tx: Sender<(String, Vec<Label>)>,
) -> std::io::Result<Background> {
    Background::spawn("label-relay", move |running| {
        let mut cursors: HashMap<String, Cursor> = HashMap::new();
        while running.keep_going() {
            crate::health::guard("label-relay", || {
                for model in Registry::open(&root).models().unwrap_or_default() {
                    if !running.keep_going() {
                        break;
                    }
                    let cursor = cursors.entry(model.clone()).or_default();
                    for labels in cursor.poll(&remote, &model, &replica) {
                        if tx.try_send((model.clone(), labels)).is_err() {
                            metrics::counter!(crate::metrics::LABELS, "model" => model.clone(), "outcome" => "relay_dropped")
                                .increment(1);
                        }
                    }
                }
            });
            std::thread::sleep(Duration::from_millis(500));
        }
    })
}

/// What one model's relay folder has given so far.
#[derive(Default)]
struct Cursor {
    /// Batch names taken, within the lookback window.
    taken: BTreeSet<String>,
}

impl Cursor {
    /// The labels of batches not taken yet, from other replicas.
    fn poll(&mut self, remote: &Remote, model: &str, replica: &str) -> Vec<Vec<Label>> {
        let from = flywheel_registry::now_ms().saturating_sub(LOOKBACK_MS);
        let after = format!("{from:013}");
        // Names older than the window can no longer be listed: forget them.
        self.taken = self.taken.split_off(&after);
        let listed = match remote.list_after(&[model, RELAY_DIR], &after) {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(model, error = %e, "relayed labels not listed");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for name in listed {
            if self.taken.contains(&name) {
                continue;
            }
            self.taken.insert(name.clone());
            if writer_of(&name) == Some(replica) {
                continue;
            }
            match remote.get_object(&[model, RELAY_DIR, &name]) {
                Ok(Some(bytes)) => match serde_json::from_slice::<Batch>(&bytes) {
                    Ok(batch) if batch.replica != replica => out.push(batch.labels),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(model, batch = %name, error = %e, "relayed labels unreadable"),
                },
                Ok(None) => {}
                Err(e) => {
                    // Taken back: the next poll tries again.
                    self.taken.remove(&name);
                    tracing::warn!(model, error = %e, "relayed labels not read");
                }
            }
        }
        out
    }
}
