//! Dataset assembly: the gateway's sampled rows joined with their labels by (request id, row),
//! restricted to a model and a time window, split by time (train before holdout, no leakage
//! from the future), checked, and digested so lineage records exactly which rows were used.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::manifest::sha256_hex;
use crate::samples;
use crate::training_set::DataFile;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, TimestampMicrosecondType, UInt32Type};
use arrow_array::{Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sha2::{Digest, Sha256};

/// What to assemble.
#[derive(Clone, Debug)]
pub struct AssembleSpec {
    /// The gateway's sample folder (holding `samples/` and `labels/`).
    pub sample_dir: PathBuf,
    pub model: String,
    /// Only rows served at or after this time (µs since the epoch).
    pub since_us: Option<i64>,
    /// Only rows served before this time (µs since the epoch).
    pub until_us: Option<i64>,
    /// Only labels given at or before this time (µs since the epoch): the labels a past
    /// training run saw, for re-assembling its rows ([`crate::lineage`]).
    pub labels_until_us: Option<i64>,
    /// Share of the newest rows held out for the gate.
    pub holdout_fraction: f64,
    pub min_rows: usize,
    /// Largest allowed share of NaN per feature.
    pub max_nan_rate: f64,
    /// Fewest rows of each class.
    pub min_per_class: usize,
    /// Read only these files (paths relative to `sample_dir`, as [`DataFile::path`]): a past
    /// training set exactly. `None` reads every file of the window.
    pub only_files: Option<BTreeSet<String>>,
}

/// Rows of one split, in time order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Split {
    pub x: Vec<Vec<f64>>,
    pub y: Vec<f64>,
    pub time_us: Vec<i64>,
}

/// An assembled, checked dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Feature columns, in the model's input order.
    pub features: Vec<String>,
    pub train: Split,
    pub holdout: Split,
    /// SHA-256 over exactly the rows used, in order (ids, times, labels, feature bits).
    pub digest: String,
    /// First and last row times (µs since the epoch).
    pub window_us: (i64, i64),
    /// The newest label time read (µs since the epoch; 0 without labels): with `window_us`,
    /// what re-assembles exactly these rows later, when more labels have arrived.
    pub labels_until_us: i64,
    /// Every sample, label and label-journal file read, sorted by path: what re-assembles
    /// exactly these rows later, when a replica has uploaded more of the window.
    pub files: Vec<DataFile>,
}

/// Why a dataset cannot be used; the message says what and how much.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{file} has feature columns {found:?}, but earlier files have {expected:?}")]
    Schema { file: String, expected: Vec<String>, found: Vec<String> },
    #[error("{rows} labelled rows of model '{model}' in the window; at least {min} are needed")]
    TooFew { model: String, rows: usize, min: usize },
    #[error("feature '{feature}' is {rate:.1}% NaN; at most {max:.1}% is allowed")]
    Nan { feature: String, rate: f64, max: f64 },
    #[error("{positives} positive and {negatives} negative labels; at least {min} of each are needed")]
    Balance { positives: usize, negatives: usize, min: usize },
}

/// Labels by (request id, row): (label, time it was given).
type Labels = HashMap<(String, u32), (f64, i64)>;

/// One labelled sample row.
struct Joined {
    id: String,
    row: u32,
    time: i64,
    label: f64,
    x: Vec<f64>,
}

/// The Parquet files under `dir`, skipping `date=YYYY-MM-DD` partitions (UTC, as the gateway
/// writes them) before `since_us`'s date: rows served since then, and their labels (which arrive
/// after them), are never in an older partition.
pub(crate) fn parquet_files(dir: &Path, since_us: Option<i64>) -> Vec<PathBuf> {
    parquet_files_between(dir, since_us, None)
}

/// The UTC date (`YYYY-MM-DD`) of a time in µs since the epoch.
fn date_of(us: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(us.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_owned()
}

/// [`parquet_files`], also skipping partitions more than a day after `until_us`'s date. A
/// row's partition is the date its file was written, a moment after it was served (a row
/// served just before midnight may sit in the next day's file), so the day after counts too.
/// Labels arrive later still: this is for samples only.
fn parquet_files_between(dir: &Path, since_us: Option<i64>, until_us: Option<i64>) -> Vec<PathBuf> {
    const DAY_US: i64 = 86_400_000_000;
    let (first_date, last_date) = (since_us.map(date_of), until_us.map(|u| date_of(u.saturating_add(DAY_US))));
    let too_old = |path: &Path| {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        name.strip_prefix("date=").is_some_and(|date| {
            first_date.as_deref().is_some_and(|first| date < first)
                || last_date.as_deref().is_some_and(|last| date > last)
        })
    };
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                if !too_old(&path) {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "parquet")
                && !path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
            {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// `path` relative to `base`, with `/` between parts: its key in a sample store.
pub(crate) fn store_key(base: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(base).unwrap_or(path);
    relative.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

/// The files read so far, and which ones a spec allows.
struct Reading<'a> {
    spec: &'a AssembleSpec,
    files: Vec<DataFile>,
}

impl Reading<'_> {
    /// `path` relative to the sample folder, with `/` between parts (a store key).
    fn relative(&self, path: &Path) -> String {
        store_key(&self.spec.sample_dir, path)
    }

    /// Whether the spec reads `path`.
    fn allows(&self, path: &Path) -> bool {
        self.spec.only_files.as_ref().is_none_or(|only| only.contains(&self.relative(path)))
    }

    /// The Parquet files under `dir` this spec may read: the window's date partitions, or,
    /// reading exactly a recorded list, every partition (the trainer's window may have
    /// started days before its first labelled row).
    fn candidates(&self, dir: &Path) -> Vec<PathBuf> {
        let since = if self.spec.only_files.is_some() { None } else { self.spec.since_us };
        parquet_files(dir, since).into_iter().filter(|p| self.allows(p)).collect()
    }

    /// The bytes of `path`, recorded (size and SHA-256) as read.
    fn read(&mut self, path: &Path) -> std::io::Result<Vec<u8>> {
        let bytes = std::fs::read(path)?;
        let record = DataFile { path: self.relative(path), bytes: bytes.len() as u64, sha256: sha256_hex(&bytes) };
        self.files.push(record);
        Ok(bytes)
    }

    fn batches(&mut self, path: &Path) -> Result<Vec<RecordBatch>, DatasetError> {
        let bytes =
            self.read(path).map_err(|e| DatasetError::Read { path: path.display().to_string(), reason: e.to_string() });
        parse_parquet(path, bytes?)
    }
}

/// The record batches of a Parquet file's bytes.
fn parse_parquet(path: &Path, bytes: Vec<u8>) -> Result<Vec<RecordBatch>, DatasetError> {
    let err = |reason: String| DatasetError::Read { path: path.display().to_string(), reason };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .and_then(|b| b.build())
        .map_err(|e| err(e.to_string()))?;
    reader.collect::<Result<Vec<_>, _>>().map_err(|e| err(e.to_string()))
}

fn floats(batch: &RecordBatch, name: &str) -> Option<Vec<f64>> {
    let column = batch.column_by_name(name)?;
    match column.data_type() {
        DataType::Float32 => {
            Some(column.as_primitive::<Float32Type>().iter().map(|v| v.map_or(f64::NAN, f64::from)).collect())
        }
        DataType::Float64 => Some(column.as_primitive::<Float64Type>().iter().map(|v| v.unwrap_or(f64::NAN)).collect()),
        _ => None,
    }
}

/// The (request id, row, time) columns every sample and label file has.
fn keys(batch: &RecordBatch) -> Option<(StringArray, UInt32Array, TimestampMicrosecondArray)> {
    Some((
        batch.column_by_name(samples::REQUEST_ID)?.as_string_opt::<i32>()?.clone(),
        batch.column_by_name(samples::ROW)?.as_primitive_opt::<UInt32Type>()?.clone(),
        batch.column_by_name(samples::TIME)?.as_primitive_opt::<TimestampMicrosecondType>()?.clone(),
    ))
}

/// The labels of `model`: (request id, row) → (label, time); a later label replaces an earlier one.
/// Read from the label files and from the fleet's label journal (labels acknowledged by a
/// replica whose label file is not in the store yet, or never will be: a replica lost).
fn labels(reading: &mut Reading) -> Result<Labels, DatasetError> {
    let spec = reading.spec;
    let mut map: Labels = journaled_labels(reading);
    let dir = spec.sample_dir.join(samples::LABELS).join(format!("model={}", spec.model));
    for path in reading.candidates(&dir) {
        for batch in reading.batches(&path)? {
            let bad = |what: &str| DatasetError::Read {
                path: path.display().to_string(),
                reason: format!("no {what} column"),
            };
            let (ids, rows, times) = keys(&batch).ok_or_else(|| bad("request_id, row or time"))?;
            let values = floats(&batch, samples::LABEL).ok_or_else(|| bad("label"))?;
            for (i, label) in values.into_iter().enumerate() {
                let key = (ids.value(i).to_owned(), rows.value(i));
                let time = times.value(i);
                if spec.labels_until_us.is_some_and(|u| time > u) {
                    continue;
                }
                if map.get(&key).is_none_or(|(_, t)| *t <= time) {
                    map.insert(key, (label, time));
                }
            }
        }
    }
    Ok(map)
}

/// The labels of `model` in `<sample_dir>/label-journal/model=<m>/*.jsonl` (the store's
/// [`samples::LABEL_JOURNAL`] objects, copied down). An unreadable line is skipped with a warning.
fn journaled_labels(reading: &mut Reading) -> Labels {
    let spec = reading.spec;
    let mut map: Labels = HashMap::new();
    let dir = spec.sample_dir.join(samples::LABEL_JOURNAL).join(format!("{}={}", samples::MODEL, spec.model));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl") && reading.allows(p))
        .collect();
    files.sort();
    for path in files {
        let bytes = reading.read(&path).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            match serde_json::from_str::<samples::JournaledLabel>(line) {
                Ok(l) if spec.labels_until_us.is_some_and(|u| l.time_us > u) => {}
                Ok(l) => {
                    let key = (l.id, l.row);
                    if map.get(&key).is_none_or(|(_, t)| *t <= l.time_us) {
                        map.insert(key, (l.label, l.time_us));
                    }
                }
                Err(e) => tracing::warn!(path = %path.display(), line = n + 1, error = %e, "journaled label skipped"),
            }
        }
    }
    map
}

/// Assembles the dataset `spec` describes.
pub fn assemble(spec: &AssembleSpec) -> Result<Dataset, DatasetError> {
    let mut reading = Reading { spec, files: Vec::new() };
    let labels = labels(&mut reading)?;
    let dir = spec.sample_dir.join(samples::SAMPLES).join(format!("model={}", spec.model));
    let mut features: Option<Vec<String>> = None;
    let mut joined: Vec<Joined> = Vec::new();
    for path in reading.candidates(&dir) {
        for batch in reading.batches(&path)? {
            let names: Vec<String> =
                batch.schema().fields().iter().map(|f| f.name().clone()).filter(|n| n.starts_with("in_")).collect();
            match &features {
                None => features = Some(names.clone()),
                Some(expected) if *expected != names => {
                    return Err(DatasetError::Schema {
                        file: path.display().to_string(),
                        expected: expected.clone(),
                        found: names,
                    });
                }
                Some(_) => {}
            }
            let bad = |what: &str| DatasetError::Read {
                path: path.display().to_string(),
                reason: format!("no {what} column"),
            };
            let (ids, rows, times) = keys(&batch).ok_or_else(|| bad("request_id, row or time"))?;
            let arms = batch
                .column_by_name(samples::ARM)
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| bad("arm (Utf8)"))?
                .clone();
            let columns: Vec<Vec<f64>> =
                names.iter().map(|n| floats(&batch, n).ok_or_else(|| bad(n))).collect::<Result<_, _>>()?;
            for i in 0..batch.num_rows() {
                let time = times.value(i);
                // Shadow answers are another version's; the window bounds the rows by serving time.
                if arms.value(i) == "shadow"
                    || spec.since_us.is_some_and(|s| time < s)
                    || spec.until_us.is_some_and(|u| time >= u)
                {
                    continue;
                }
                let key = (ids.value(i).to_owned(), rows.value(i));
                if let Some((label, _)) = labels.get(&key) {
                    let x = columns.iter().map(|c| c[i]).collect();
                    joined.push(Joined { id: key.0, row: key.1, time, label: *label, x });
                }
            }
        }
    }
    let features = features.unwrap_or_default();
    joined.sort_by(|a, b| (a.time, &a.id, a.row).cmp(&(b.time, &b.id, b.row)));
    joined.dedup_by(|a, b| a.id == b.id && a.row == b.row);
    check(spec, &features, &joined)?;
    let digest = digest(&joined);
    let window_us = (joined.first().map_or(0, |j| j.time), joined.last().map_or(0, |j| j.time));
    let labels_until_us = labels.values().map(|(_, t)| *t).max().unwrap_or(0);
    let holdout_rows = ((joined.len() as f64) * spec.holdout_fraction).round() as usize;
    let cut = joined.len() - holdout_rows.min(joined.len());
    let mut files = reading.files;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let split = |rows: &[Joined]| Split {
        x: rows.iter().map(|j| j.x.clone()).collect(),
        y: rows.iter().map(|j| j.label).collect(),
        time_us: rows.iter().map(|j| j.time).collect(),
    };
    Ok(Dataset {
        features,
        train: split(&joined[..cut]),
        holdout: split(&joined[cut..]),
        digest,
        window_us,
        labels_until_us,
        files,
    })
}

fn check(spec: &AssembleSpec, features: &[String], rows: &[Joined]) -> Result<(), DatasetError> {
    if rows.len() < spec.min_rows {
        return Err(DatasetError::TooFew { model: spec.model.clone(), rows: rows.len(), min: spec.min_rows });
    }
    for (i, feature) in features.iter().enumerate() {
        let nan = rows.iter().filter(|r| r.x[i].is_nan()).count() as f64 / rows.len() as f64;
        if nan > spec.max_nan_rate {
            return Err(DatasetError::Nan {
                feature: feature.clone(),
                rate: nan * 100.0,
                max: spec.max_nan_rate * 100.0,
            });
        }
    }
    let positives = rows.iter().filter(|r| r.label >= 0.5).count();
    let negatives = rows.len() - positives;
    if positives < spec.min_per_class || negatives < spec.min_per_class {
        return Err(DatasetError::Balance { positives, negatives, min: spec.min_per_class });
    }
    Ok(())
}

fn digest(rows: &[Joined]) -> String {
    let mut h = Sha256::new();
    for r in rows {
        h.update(r.id.as_bytes());
        h.update([0]);
        h.update(r.row.to_le_bytes());
        h.update(r.time.to_le_bytes());
        h.update(r.label.to_le_bytes());
        for v in &r.x {
            h.update(v.to_le_bytes());
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Sample files under `spec`'s window partitions that are not in `listed` and hold rows of
/// `spec.model` served in `[since_us, until_us)` (not on the shadow arm), with how many: what
/// reached the sample folder after a training set was read (a replica's late upload).
pub fn unlisted_rows(spec: &AssembleSpec, listed: &BTreeSet<String>) -> Result<Vec<(String, u64)>, DatasetError> {
    let dir = spec.sample_dir.join(samples::SAMPLES).join(format!("model={}", spec.model));
    let mut found = Vec::new();
    for path in parquet_files_between(&dir, spec.since_us, spec.until_us) {
        let relative = store_key(&spec.sample_dir, &path);
        if listed.contains(&relative) {
            continue;
        }
        let bytes = std::fs::read(&path)
            .map_err(|e| DatasetError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        let mut rows = 0;
        for batch in parse_parquet(&path, bytes)? {
            let bad =
                || DatasetError::Read { path: path.display().to_string(), reason: "no time or arm column".into() };
            let (_, _, times) = keys(&batch).ok_or_else(bad)?;
            let arms = batch.column_by_name(samples::ARM).and_then(|c| c.as_string_opt::<i32>()).ok_or_else(bad)?;
            rows += (0..batch.num_rows())
                .filter(|&i| {
                    let time = times.value(i);
                    arms.value(i) != "shadow"
                        && spec.since_us.is_none_or(|s| time >= s)
                        && spec.until_us.is_none_or(|u| time < u)
                })
                .count() as u64;
        }
        if rows > 0 {
            found.push((relative, rows));
        }
    }
    Ok(found)
}
