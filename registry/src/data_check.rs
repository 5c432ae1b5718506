//! Re-checking a version's training data for [`crate::lineage`]: the rows are re-assembled and
//! their digest compared with the manifest's. With the version's training-set record
//! ([`TrainingSet`]) exactly the files it lists are read, so files a replica uploaded after
//! training are reported apart; without one (versions trained before records were kept) the
//! rows are re-assembled by the recorded time window and label cutoff.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;

use crate::dataset::{AssembleSpec, assemble, parquet_files, store_key, unlisted_rows};
use crate::manifest::{DataLineage, Manifest, SampleWindow};
use crate::samples;
use crate::training_set::TrainingSet;

/// The re-assembly of a version's training rows.
#[derive(Clone, Debug, Serialize)]
pub struct DataCheck {
    /// Whether the recomputed digest and row count are the manifest's.
    pub verified: bool,
    /// `files`: the training-set record's files were read; `window`: no record, the rows were
    /// re-assembled by time window and label cutoff.
    pub method: &'static str,
    pub recorded_digest: String,
    pub recorded_rows: u64,
    pub recomputed_digest: Option<String>,
    pub recomputed_rows: Option<u64>,
    /// Recorded files that are missing or changed now, and why a record could not be used.
    pub problems: Vec<String>,
    /// Sample files not read at training that hold rows served in the window, with how many.
    pub later_files: Vec<(String, u64)>,
    pub detail: String,
}

/// Re-assembles the rows `manifest` was trained on from `sample_dir`; `None` when its data did
/// not come from the sample store (synthetic data, a file).
pub fn check_data(sample_dir: &Path, model: &str, manifest: &Manifest) -> Option<DataCheck> {
    let data = manifest.data.as_ref()?;
    let window = data.sample_window_us?;
    let mut check = DataCheck {
        verified: false,
        method: "window",
        recorded_digest: data.digest.clone(),
        recorded_rows: data.rows,
        recomputed_digest: None,
        recomputed_rows: None,
        problems: Vec::new(),
        later_files: Vec::new(),
        detail: String::new(),
    };
    let spec = window_spec(sample_dir, model, window);
    match TrainingSet::read(sample_dir, model, &data.digest) {
        Ok(Some(set)) => by_files(spec, data, &set, &mut check),
        Ok(None) => by_window(&spec, data, &mut check),
        Err(e) => {
            check.problems.push(format!("training-set record unusable: {e}"));
            by_window(&spec, data, &mut check);
        }
    }
    Some(check)
}

/// The rows served in `window` with labels given by its cutoff.
fn window_spec(sample_dir: &Path, model: &str, window: SampleWindow) -> AssembleSpec {
    AssembleSpec {
        sample_dir: sample_dir.to_path_buf(),
        model: model.to_owned(),
        since_us: Some(window.first_row),
        until_us: Some(window.last_row.saturating_add(1)),
        labels_until_us: Some(window.labels_until),
        holdout_fraction: 0.0,
        min_rows: 0,
        max_nan_rate: 1.0,
        min_per_class: 0,
        only_files: None,
    }
}

/// Re-assembles from exactly the record's files and names what is missing, changed or late.
fn by_files(spec: AssembleSpec, data: &DataLineage, set: &TrainingSet, check: &mut DataCheck) {
    check.method = "files";
    let listed: BTreeSet<String> = set.files.iter().map(|f| f.path.clone()).collect();
    let mut only = listed.clone();
    // A label-journal object is deleted once the label file holding its labels is uploaded:
    // those labels are then read from the window's label files, cut at the recorded time.
    let journal = format!("{}/", samples::LABEL_JOURNAL);
    let absent: BTreeSet<&str> =
        set.files.iter().filter(|f| !located(&spec.sample_dir, &f.path).exists()).map(|f| f.path.as_str()).collect();
    let folded = absent.iter().filter(|p| p.starts_with(&journal)).count();
    let mut notes = Vec::new();
    if folded > 0 {
        let labels = spec.sample_dir.join(samples::LABELS).join(format!("{}={}", samples::MODEL, spec.model));
        for path in parquet_files(&labels, spec.since_us) {
            only.insert(store_key(&spec.sample_dir, &path));
        }
        notes.push(format!(
            "{folded} label-journal object(s) read at training are gone (folded into label files once those were \
             uploaded): their labels were read from the window's label files, given by the recorded cutoff"
        ));
    }
    match unlisted_rows(&spec, &listed) {
        Ok(later) => check.later_files = later,
        Err(e) => notes.push(format!("files added since could not be counted: {e}")),
    }
    let spec = AssembleSpec { only_files: Some(only), ..spec };
    let dataset = match assemble(&spec) {
        Ok(d) => d,
        Err(e) => {
            check.detail = format!("MISMATCH: the recorded files could not be re-assembled: {e}");
            notes.iter().for_each(|note| check.detail.push_str(&format!("; {note}")));
            return;
        }
    };
    for recorded in &set.files {
        let journal_folded = recorded.path.starts_with(&journal);
        match dataset.files.iter().find(|f| f.path == recorded.path) {
            _ if absent.contains(recorded.path.as_str()) && journal_folded => {}
            _ if absent.contains(recorded.path.as_str()) => {
                check.problems.push(format!("{} is missing", recorded.path))
            }
            None => check.problems.push(format!("{} could not be read", recorded.path)),
            Some(now) if now.sha256 != recorded.sha256 => check.problems.push(format!(
                "{} changed since training (SHA-256 {}, recorded {})",
                recorded.path, now.sha256, recorded.sha256
            )),
            Some(_) => {}
        }
    }
    let rows = (dataset.train.y.len() + dataset.holdout.y.len()) as u64;
    check.verified = dataset.digest == data.digest && rows == data.rows;
    check.detail = if check.verified {
        format!(
            "the {rows} rows re-assembled from the {} files recorded at training hash to the recorded digest",
            set.files.len()
        )
    } else {
        format!(
            "MISMATCH: the {} files recorded at training now give {rows} rows with digest {}, not {} rows with {}",
            set.files.len(),
            dataset.digest,
            data.rows,
            data.digest
        )
    };
    if !check.problems.is_empty() {
        notes.insert(0, check.problems.join("; "));
    }
    if !check.later_files.is_empty() {
        let rows: u64 = check.later_files.iter().map(|(_, n)| n).sum();
        let names: Vec<&str> = check.later_files.iter().map(|(f, _)| f.as_str()).collect();
        notes.push(format!(
            "{} file(s) not read at training hold {rows} row(s) served in the window (uploaded after training; \
             not part of this version's data): {}",
            names.len(),
            names.join(", ")
        ));
    }
    for note in notes {
        check.detail.push_str("; ");
        check.detail.push_str(&note);
    }
    (check.recomputed_digest, check.recomputed_rows) = (Some(dataset.digest), Some(rows));
}

/// Re-assembles by time window and label cutoff (a version trained before training-set records).
fn by_window(spec: &AssembleSpec, data: &DataLineage, check: &mut DataCheck) {
    match assemble(spec) {
        Ok(d) => {
            let rows = (d.train.y.len() + d.holdout.y.len()) as u64;
            check.verified = d.digest == data.digest && rows == data.rows;
            check.detail = if check.verified {
                format!("the {rows} rows served in the window with labels given by then hash to the recorded digest")
            } else {
                format!(
                    "MISMATCH: the sample store now gives {rows} rows with digest {} for the recorded window, \
                     not {} rows with {}: sample or label files were changed or removed since training, or (no \
                     training-set record) a replica uploaded rows of the window after it",
                    d.digest, data.rows, data.digest
                )
            };
            (check.recomputed_digest, check.recomputed_rows) = (Some(d.digest), Some(rows));
        }
        Err(e) => check.detail = format!("MISMATCH: the rows could not be re-assembled: {e}"),
    }
    if !check.problems.is_empty() {
        check.detail = format!("{}; {}", check.detail, check.problems.join("; "));
    }
}

/// A record's path (`/`-separated) under `sample_dir`.
fn located(sample_dir: &Path, path: &str) -> std::path::PathBuf {
    path.split('/').fold(sample_dir.to_path_buf(), |p, part| p.join(part))
}
