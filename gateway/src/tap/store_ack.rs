//! Labels acknowledged from the fleet's sample store. A replica's local journal survives a
//! crash, not a lost disk; so, with a sample store (and `sampling.label_ack = "store"`), each
//! group of labels is put to `label-journal/model=<m>/<id>.jsonl` there before `/feedback`
//! answers. One thread does the puts, taking every group waiting at that moment in one round
//! (one object per model per round: group commit, as the local journal's fsync); the tap thread
//! goes on sampling meanwhile and finishes a group (local journal, Parquet buffer, scoring,
//! answer) once its round is back.
//!
//! Once the label Parquet file holding a round's labels is finalized, the tap notes the round's
//! objects beside it ([`note_covered`]); the uploader deletes them after it has put that file
//! ([`clear_covered`]). A label is therefore in the store from its acknowledgement on: in the
//! journal objects, then in a Parquet file (both for a moment; readers treat the same label
//! twice as one). What a lost replica leaves in `label-journal/` stays there for the trainer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use flywheel_registry::{Remote, samples};

use super::LabelMsg;
use super::journal::encode;
use crate::rollout::store_writer::record_id;

/// Groups waiting for the store thread; beyond it a sender is told to retry.
const QUEUE: usize = 1024;
/// Most groups one round takes.
const ROUND: usize = 256;

/// A round the store thread finished: its groups, their time (the labels' `time`), and the
/// objects it put as (model, key) or the reason it could not.
pub struct Acked {
    pub at: SystemTime,
    pub group: Vec<LabelMsg>,
    /// How many sent groups the round took (each [`StoreAck::send`] is one).
    pub sends: usize,
    pub result: Result<Vec<(String, String)>, String>,
}

/// The tap thread's side: groups go out, finished rounds come back on the receiver
/// [`StoreAck::start`] returns.
pub struct StoreAck {
    tx: Sender<Vec<LabelMsg>>,
    /// Groups sent and not yet back.
    pub in_flight: usize,
}

impl StoreAck {
    /// Starts the store thread putting to `remote` under record ids of `replica`.
    pub fn start(remote: Arc<Remote>, replica: String) -> std::io::Result<(Self, Receiver<Acked>)> {
        let (tx, rx) = bounded::<Vec<LabelMsg>>(QUEUE);
        let (done_tx, done) = bounded::<Acked>(QUEUE);
        std::thread::Builder::new().name("label-store".into()).spawn(move || {
            let mut sent = 0u64;
            while let Ok(first) = rx.recv() {
                let (mut group, mut sends) = (first, 1);
                for more in rx.try_iter().take(ROUND - 1) {
                    group.extend(more);
                    sends += 1;
                }
                let at = SystemTime::now();
                let result = put_round(&remote, &replica, &mut sent, &group, at);
                if done_tx.send(Acked { at, group, sends, result }).is_err() {
                    break;
                }
            }
        })?;
        Ok((Self { tx, in_flight: 0 }, done))
    }

    /// Hands a group to the store thread; a full queue gives it back.
    pub fn send(&mut self, group: Vec<LabelMsg>) -> Result<(), Vec<LabelMsg>> {
        match self.tx.try_send(group) {
            Ok(()) => {
                self.in_flight += 1;
                Ok(())
            }
            Err(TrySendError::Full(group) | TrySendError::Disconnected(group)) => Err(group),
        }
    }
}

/// Puts one object per model of `group`; the first failure fails the round, and the objects
/// it had put are deleted again (best effort: one left is read as a label the sender's retry
/// stores once more).
fn put_round(
    remote: &Remote,
    replica: &str,
    sent: &mut u64,
    group: &[LabelMsg],
    at: SystemTime,
) -> Result<Vec<(String, String)>, String> {
    let mut keys = Vec::new();
    let result = put_each(remote, replica, sent, group, at, &mut keys);
    if result.is_err() {
        for (_, key) in &keys {
            let parts: Vec<&str> = key.split('/').collect();
            if let Err(e) = remote.delete_object(&parts) {
                tracing::warn!(key, error = %e, "label journal object of a refused round not deleted");
            }
        }
    }
    result.map(|()| keys)
}

fn put_each(
    remote: &Remote,
    replica: &str,
    sent: &mut u64,
    group: &[LabelMsg],
    at: SystemTime,
    keys: &mut Vec<(String, String)>,
) -> Result<(), String> {
    let mut by_model: Vec<(&str, Vec<&super::labels::Label>)> = Vec::new();
    for (model, labels, _) in group {
        let labels = labels.iter();
        match by_model.iter_mut().find(|(m, _)| m == model) {
            Some((_, all)) => all.extend(labels),
            None => by_model.push((model, labels.collect())),
        }
    }
    for (model, labels) in by_model.into_iter().filter(|(_, l)| !l.is_empty()) {
        let bytes = encode(&labels, at).map_err(|e| e.to_string())?;
        let key = journal_key(model, &record_id(replica, *sent));
        *sent += 1;
        let parts: Vec<&str> = key.split('/').collect();
        remote.put_object(&parts, bytes).map_err(|e| e.to_string())?;
        keys.push((model.to_owned(), key));
    }
    Ok(())
}

/// The store key of the journal object `id` of `model`.
pub fn journal_key(model: &str, id: &str) -> String {
    format!("{}/{}={model}/{id}.jsonl", samples::LABEL_JOURNAL, samples::MODEL)
}

/// The note beside a finalized label part file naming the journal objects it covers.
fn note_of(part: &Path) -> PathBuf {
    let name = part.file_name().and_then(|n| n.to_str()).unwrap_or("part");
    part.with_file_name(format!(".{name}.covers"))
}

/// Notes that the finalized label file `part` holds every label of the journal objects `keys`
/// (written whole under a temporary name, then renamed). A note that cannot be written only
/// leaves the objects in the store (read as duplicates of the file's rows).
pub fn note_covered(part: &Path, keys: &[String]) {
    if keys.is_empty() {
        return;
    }
    let note = note_of(part);
    let tmp = note.with_extension("tmp");
    let written = serde_json::to_vec(keys)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, &note));
    if let Err(e) = written {
        tracing::warn!(path = %note.display(), error = %e, "label journal objects not noted; they stay in the store");
    }
}

/// After `part` is in the store: deletes the journal objects its note names, then the note.
/// Returns whether nothing is left to delete (a store error keeps the note for the next scan).
pub fn clear_covered(remote: &Remote, part: &Path) -> bool {
    let note = note_of(part);
    let Ok(bytes) = std::fs::read(&note) else { return true };
    let keys: Vec<String> = serde_json::from_slice(&bytes).unwrap_or_default();
    for key in &keys {
        let parts: Vec<&str> = key.split('/').collect();
        if let Err(e) = remote.delete_object(&parts) {
            tracing::warn!(key, error = %e, "label journal object not deleted; retried next scan");
            return false;
        }
    }
    if let Err(e) = std::fs::remove_file(&note) {
        tracing::warn!(path = %note.display(), error = %e, "label journal note not removed");
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tap::labels::Label;

    fn msg(model: &str, ids: &[&str]) -> (LabelMsg, tokio::sync::oneshot::Receiver<Result<usize, String>>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let labels = ids.iter().map(|id| Label { id: (*id).into(), row: 0, label: 1.0 }).collect();
        ((model.to_owned(), labels, tx), rx)
    }

    #[test]
    fn a_round_puts_one_object_per_model_and_the_note_deletes_them_after_upload() {
        let remote = Remote::shared("memory://store-ack/data").unwrap();
        let (mut ack, done) = StoreAck::start(Arc::clone(&remote), "r0".into()).unwrap();
        let (a, _ra) = msg("fraud", &["a", "b"]);
        let (b, _rb) = msg("churn", &["c"]);
        let (c, _rc) = msg("fraud", &["d"]);
        ack.send(vec![a, b, c]).unwrap();
        let acked = done.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert_eq!(acked.sends, 1);
        let keys = acked.result.unwrap();
        assert_eq!(keys.len(), 2, "{keys:?}");
        let fraud = keys.iter().find(|(m, _)| m == "fraud").unwrap().1.clone();
        assert!(fraud.starts_with("label-journal/model=fraud/") && fraud.ends_with("-r0-000000.jsonl"), "{fraud}");
        let parts: Vec<&str> = fraud.split('/').collect();
        let text = String::from_utf8(remote.get_object(&parts).unwrap().unwrap()).unwrap();
        let ids: Vec<String> =
            text.lines().map(|l| serde_json::from_str::<samples::JournaledLabel>(l).unwrap().id).collect();
        assert_eq!(ids, ["a", "b", "d"]);

        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("part-1-000001.parquet");
        std::fs::write(&part, b"rows").unwrap();
        note_covered(&part, std::slice::from_ref(&fraud));
        assert!(clear_covered(&remote, &part));
        assert_eq!(remote.get_object(&parts).unwrap(), None, "deleted once its file is up");
        assert!(!note_of(&part).exists(), "the note goes with them");
        assert!(clear_covered(&remote, &part), "a part without a note has nothing to delete");
        let churn: Vec<&str> = keys[1].1.split('/').collect();
        assert!(remote.get_object(&churn).unwrap().is_some(), "an object no file noted stays");
    }

    #[test]
    fn groups_merged_into_one_round_are_all_counted_back() {
        let remote = Remote::shared("memory://store-ack/merged").unwrap();
        let (mut ack, done) = StoreAck::start(remote, "r0".into()).unwrap();
        let mut replies = Vec::new();
        for i in 0..50 {
            let (m, r) = msg("fraud", &[&format!("l{i}")]);
            ack.send(vec![m]).unwrap();
            replies.push(r);
        }
        let (mut sends, mut labels) = (0, 0);
        while sends < 50 {
            let round = done.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
            assert!(round.result.is_ok());
            sends += round.sends;
            labels += round.group.iter().map(|(_, l, _)| l.len()).sum::<usize>();
        }
        assert_eq!((sends, labels), (50, 50), "each send comes back once, whatever the rounds");
        assert_eq!(ack.in_flight, 50, "the tap subtracts each round's sends");
    }
}
