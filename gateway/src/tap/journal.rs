//! The label journal: every stored label is appended to `<sample_dir>/labels/.journal/<model>.jsonl`
//! and fsynced before `/feedback` answers (group commit: one fsync for every label message
//! waiting at that moment). A model's journal is deleted once its label Parquet file is
//! finalized with every journaled row in it; after a crash, [`replay`] turns what is left into
//! finished Parquet files before the tap starts. So a label that was acknowledged is on disk,
//! whatever happens to the process afterwards.
//!
//! A crash between finalizing a Parquet file and deleting the journal replays those labels a
//! second time: the same (id, row, label) appears twice, which every reader of labels treats as
//! one (the trainer keeps the last label per id and row).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use flywheel_registry::samples::{self, JournaledLabel};

use super::files::{PartFile, Rotation, date_of};
use super::labels::{self, Label, LabelRows};

/// Folder of journals under the sample directory (hidden: readers of `*.parquet` skip it).
pub const JOURNAL_DIR: &str = ".journal";

/// Journaled labels as JSON lines (the local journal's and the store's format), stamped `at`.
pub fn encode(batch: &[&Label], at: SystemTime) -> std::io::Result<Vec<u8>> {
    let time_us = at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
    let mut text = Vec::with_capacity(batch.len() * 64);
    for l in batch {
        let entry = JournaledLabel { id: l.id.clone(), row: l.row, label: l.label, time_us };
        serde_json::to_writer(&mut text, &entry).map_err(std::io::Error::other)?;
        text.push(b'\n');
    }
    Ok(text)
}

/// The open journals of one tap, by model.
pub struct Journal {
    dir: PathBuf,
    open: HashMap<String, Open>,
}

struct Open {
    file: File,
    path: PathBuf,
    /// Appended since the last fsync.
    dirty: bool,
    /// A label Parquet write failed since this journal started: keep it for replay.
    keep: bool,
}

impl Journal {
    /// Journals under `<sample_dir>/labels/.journal`.
    pub fn new(sample_dir: &Path) -> Self {
        Self { dir: sample_dir.join(samples::LABELS).join(JOURNAL_DIR), open: HashMap::new() }
    }

    /// Appends labels of `model` (not yet durable: call [`Journal::sync`]).
    pub fn append(&mut self, model: &str, batch: &[&Label], at: SystemTime) -> std::io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let text = encode(batch, at)?;
        let open = self.open_for(model)?;
        let before = open.file.metadata()?.len();
        if let Err(e) = open.file.write_all(&text) {
            // A partial line would glue the next acknowledged label onto it: cut it off.
            let _ = open.file.set_len(before);
            return Err(e);
        }
        open.dirty = true;
        Ok(())
    }

    /// Fsyncs every journal appended to since the last call.
    pub fn sync(&mut self) -> std::io::Result<()> {
        for open in self.open.values_mut().filter(|o| o.dirty) {
            open.file.sync_data()?;
            open.dirty = false;
        }
        Ok(())
    }

    /// Marks `model`'s journal as holding labels whose Parquet write failed.
    pub fn keep(&mut self, model: &str) {
        if let Some(open) = self.open.get_mut(model) {
            open.keep = true;
        }
    }

    /// Called after `model`'s label file was finalized with every buffered row: its journal is
    /// no longer needed (or, after a failed write, is set aside for the next start's replay).
    pub fn finalized(&mut self, model: &str) {
        let Some(open) = self.open.remove(model) else { return };
        drop(open.file);
        if open.keep {
            let aside = self.dir.join(format!("{model}@{}.jsonl", unique_suffix()));
            if let Err(e) = std::fs::rename(&open.path, &aside) {
                tracing::error!(path = %open.path.display(), error = %e, "could not set the label journal aside");
            }
        } else if let Err(e) = std::fs::remove_file(&open.path) {
            tracing::warn!(path = %open.path.display(), error = %e, "could not remove a finished label journal");
        }
    }

    fn open_for(&mut self, model: &str) -> std::io::Result<&mut Open> {
        if !self.open.contains_key(model) {
            std::fs::create_dir_all(&self.dir)?;
            let path = self.dir.join(format!("{model}.jsonl"));
            // A journal left from before (one the start's replay could not write) is set aside
            // for the next start, so finalizing this one never deletes its labels.
            if path.exists() {
                let aside = self.dir.join(format!("{model}@{}.jsonl", unique_suffix()));
                std::fs::rename(&path, &aside)?;
            }
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            flywheel_registry::fsutil::sync_dir(&self.dir)?;
            self.open.insert(model.to_owned(), Open { file, path, dirty: false, keep: false });
        }
        self.open.get_mut(model).ok_or_else(|| std::io::Error::other("journal vanished"))
    }
}

fn unique_suffix() -> String {
    let ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    format!("{ms}-{}", flywheel_registry::fsutil::unique() % 1_000_000)
}

/// What a replay did.
#[derive(Debug, Default, PartialEq)]
pub struct Replayed {
    pub journals: usize,
    pub labels: usize,
    /// Lines that could not be read (a torn last line from the crash): never acknowledged.
    pub skipped_lines: usize,
}

/// Writes every journal left under `sample_dir` into finished label Parquet files, then
/// removes it. A journal that cannot be written stays for the next start.
pub fn replay(sample_dir: &Path) -> Replayed {
    let dir = sample_dir.join(samples::LABELS).join(JOURNAL_DIR);
    let mut done = Replayed::default();
    let Ok(entries) = std::fs::read_dir(&dir) else { return done };
    for path in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
        let Some(model) = model_of(&path) else { continue };
        match replay_one(sample_dir, &model, &path) {
            Ok((labels, skipped)) => {
                done.journals += 1;
                done.labels += labels;
                done.skipped_lines += skipped;
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::error!(path = %path.display(), error = %e, "could not remove a replayed label journal");
                }
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "label journal not replayed; kept for the next start")
            }
        }
    }
    done
}

/// `<model>.jsonl` or `<model>@<suffix>.jsonl` → model ('@' is not allowed in model names).
fn model_of(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?.strip_suffix(".jsonl")?;
    let model = name.split('@').next()?;
    flywheel_registry::valid_model_name(model).then(|| model.to_owned())
}

fn replay_one(sample_dir: &Path, model: &str, path: &Path) -> std::io::Result<(usize, usize)> {
    let mut bytes = Vec::new();
    BufReader::new(File::open(path)?).read_to_end(&mut bytes)?;
    let mut rows = LabelRows::default();
    let mut skipped = 0;
    // By bytes, not text lines: a line torn inside a multi-byte character is one skipped line,
    // not a journal that can never be replayed.
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<JournaledLabel>(line) {
            Ok(e) => {
                let at = SystemTime::UNIX_EPOCH + Duration::from_micros(e.time_us.max(0) as u64);
                rows.push(&Label { id: e.id, row: e.row, label: e.label }, at);
            }
            Err(_) => skipped += 1,
        }
    }
    let count = rows.len;
    if count == 0 {
        return Ok((0, skipped));
    }
    let batch = rows.take().map_err(std::io::Error::other)?;
    let date = date_of(SystemTime::now());
    let folder = sample_dir.join(samples::partition(samples::LABELS, model, &date));
    let rotation =
        Rotation { max_rows: usize::MAX, max_bytes: usize::MAX, max_age: Duration::MAX, row_group_rows: 65_536 };
    let mut file = PartFile::open(&folder, labels::schema(), &rotation, date)?;
    file.write(&batch)?;
    file.finish()?;
    Ok((count, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(id: &str, value: f64) -> Label {
        Label { id: id.into(), row: 0, label: value }
    }

    #[test]
    fn synced_labels_survive_a_crash_and_are_replayed_into_parquet_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::new(dir.path());
        let (a, b) = (label("a", 1.0), label("b", 0.0));
        journal.append("fraud", &[&a, &b], SystemTime::now()).unwrap();
        journal.sync().unwrap();
        // The process dies here: the journal is what is left.
        drop(journal);
        let path = dir.path().join("labels/.journal/fraud.jsonl");
        let mut torn = std::fs::read(&path).unwrap();
        torn.extend_from_slice(b"{\"id\":\"c\",\"ro");
        std::fs::write(&path, torn).unwrap();
        let replayed = replay(dir.path());
        assert_eq!(replayed, Replayed { journals: 1, labels: 2, skipped_lines: 1 });
        assert!(!path.exists(), "a replayed journal is removed");
        let parquet: Vec<_> =
            walk(dir.path()).into_iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")).collect();
        assert_eq!(parquet.len(), 1, "{parquet:?}");
        assert!(parquet[0].to_string_lossy().contains("labels/model=fraud/date="));
        assert_eq!(replay(dir.path()), Replayed::default(), "nothing twice");
    }

    #[test]
    fn a_journal_left_by_a_failed_replay_is_set_aside_not_deleted_with_the_next_file() {
        let dir = tempfile::tempdir().unwrap();
        let journal_dir = dir.path().join("labels/.journal");
        std::fs::create_dir_all(&journal_dir).unwrap();
        // Left from before the start (say the replay hit a full disk).
        std::fs::write(journal_dir.join("m.jsonl"), b"{\"id\":\"old\",\"row\":0,\"label\":1.0,\"time_us\":1}\n")
            .unwrap();
        let mut journal = Journal::new(dir.path());
        journal.append("m", &[&label("new", 0.0)], SystemTime::now()).unwrap();
        journal.sync().unwrap();
        journal.finalized("m");
        let replayed = replay(dir.path());
        assert_eq!(replayed.labels, 1, "the old label is still there for the next start: {replayed:?}");
    }

    #[test]
    fn a_line_torn_inside_a_multibyte_character_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let journal_dir = dir.path().join("labels/.journal");
        std::fs::create_dir_all(&journal_dir).unwrap();
        let mut bytes = b"{\"id\":\"ok\",\"row\":0,\"label\":1.0,\"time_us\":1}\n{\"id\":\"".to_vec();
        bytes.extend_from_slice(&"é".as_bytes()[..1]);
        std::fs::write(journal_dir.join("m.jsonl"), bytes).unwrap();
        assert_eq!(replay(dir.path()), Replayed { journals: 1, labels: 1, skipped_lines: 1 });
    }

    #[test]
    fn a_finalized_journal_is_removed_unless_a_write_failed() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::new(dir.path());
        journal.append("m", &[&label("a", 1.0)], SystemTime::now()).unwrap();
        journal.sync().unwrap();
        journal.finalized("m");
        assert!(walk(dir.path()).is_empty(), "labels in a finished file need no journal");
        journal.append("m", &[&label("b", 1.0)], SystemTime::now()).unwrap();
        journal.keep("m");
        journal.finalized("m");
        let left = walk(dir.path());
        assert_eq!(left.len(), 1, "set aside for replay: {left:?}");
        assert_eq!(model_of(&left[0]).as_deref(), Some("m"));
        assert_eq!(replay(dir.path()).labels, 1);
    }

    fn walk(root: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().filter_map(|e| e.ok()) {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    out.push(e.path());
                }
            }
        }
        out
    }
}
