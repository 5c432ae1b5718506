//! Lineage of one served request, for an auditor: the sample row (time, inputs, outputs,
//! version, arm) → the version's manifest (SHA-256, signature, data digest and window, code,
//! hyperparameters, gate evidence, the drift event that triggered it) → the rollout decisions
//! and approvals about it, with times → its parent, and so on back to the first version. Each
//! version trained on the sample store has its data digest re-checked by re-assembling the same
//! rows ([`crate::data_check`]: from the files its training-set record lists, or by the window
//! and label cutoff its manifest recorded).
//!
//! Read-only: files are read as they are; nothing is written.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;
use serde_json::{Map, Value, json};

pub use crate::data_check::DataCheck;
use crate::data_check::check_data;
use crate::dataset::parquet_files;

/// Folder of the gateway's explanation files under the sample folder.
pub const EXPLANATIONS: &str = "explanations";
use crate::manifest::Manifest;
use crate::samples;
use crate::signing::{SIGNATURE_FILE, SignatureFile};
use crate::store::Registry;

/// Where to look.
#[derive(Clone, Debug)]
pub struct Sources {
    /// The sample folder (holding `samples/` and `labels/`).
    pub sample_dir: PathBuf,
    /// Audit logs (JSON lines, as the gateway writes them); rotated siblings
    /// (`<name>.<unix ms>`) are read too.
    pub audit_logs: Vec<PathBuf>,
    /// Re-assemble each version's training rows and compare the data digest.
    pub verify_data: bool,
}

/// The whole chain for one request.
#[derive(Clone, Debug, Serialize)]
pub struct Lineage {
    pub request_id: String,
    pub model: String,
    /// The version that answered (the row not on the shadow arm).
    pub version: u64,
    /// Every sample row of the request: each row of a batch request, and shadow answers.
    pub rows: Vec<SampleRow>,
    /// Explanations recorded for the request (the gateway's automatic policy), one per row
    /// explained: every column of `explanations/` as written.
    pub explanations: Vec<Value>,
    /// The answering version first, then its parent, back to the first version.
    pub versions: Vec<VersionLineage>,
}

/// One sample row as stored.
#[derive(Clone, Debug, Serialize)]
pub struct SampleRow {
    pub time: String,
    pub time_us: i64,
    pub row: u64,
    pub version: u64,
    pub arm: String,
    pub status: Option<i64>,
    pub latency_us: Option<i64>,
    pub client_request_id: Option<String>,
    pub inputs: Map<String, Value>,
    pub outputs: Map<String, Value>,
    /// The Parquet file it is in.
    pub file: String,
}

/// One version of the chain.
#[derive(Clone, Debug, Serialize)]
pub struct VersionLineage {
    pub version: u64,
    pub manifest: Option<Manifest>,
    /// Why there is no manifest (a hand-made folder, an unreadable file, a deleted version).
    pub missing: Option<String>,
    /// The key id of `manifest.sig`, when the version is signed (not verified here: `registry
    /// verify` checks it against trusted keys).
    pub signed_by: Option<String>,
    /// Audit entries about this version (to or from it), oldest first.
    pub decisions: Vec<Value>,
    pub data_check: Option<DataCheck>,
}

/// Why a lineage cannot be given.
#[derive(Debug, thiserror::Error)]
pub enum LineageError {
    #[error("request id {0:?} is in no sample file under {1} (not sampled, or its file is gone)")]
    NotSampled(String, String),
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
}

/// The lineage of `request_id` (the gateway's `x-flywheel-request-id`), looking in `model`'s
/// samples only when given.
pub fn lineage(
    registry: &Registry,
    sources: &Sources,
    request_id: &str,
    model: Option<&str>,
) -> Result<Lineage, LineageError> {
    let rows = find_rows(&sources.sample_dir, request_id, model)?;
    let answered = rows.iter().find(|r| r.0.arm != "shadow").or(rows.first()).map(|(r, m)| (m.clone(), r.version));
    let explained_dir = sources.sample_dir.join(EXPLANATIONS);
    let (model, version, explanations) = match answered {
        Some((model, version)) => {
            let found = find_records(&explained_dir.join(format!("model={model}")), request_id)?;
            (model, version, found)
        }
        // Not sampled but explained: the policy explains flagged rows whether or not sampled.
        None => {
            let mut found = Vec::new();
            for dir in model_dirs(&explained_dir, model) {
                found.extend(find_records(&dir, request_id)?);
            }
            let first = found.first().ok_or_else(|| {
                LineageError::NotSampled(request_id.to_owned(), sources.sample_dir.display().to_string())
            })?;
            let model = first["model"].as_str().unwrap_or_default().to_owned();
            let version = first["version"].as_u64().unwrap_or(0);
            (model, version, found)
        }
    };
    let audit = read_audit(&sources.audit_logs, &model);
    let mut versions = Vec::new();
    let mut seen = BTreeSet::new();
    let mut next = Some(version);
    while let Some(v) = next.filter(|v| seen.insert(*v)) {
        let entry = registry.version(&model, v).ok();
        let (manifest, missing) = match entry.as_ref().map(|e| e.manifest.clone()) {
            Some(Some(Ok(m))) => (Some(m), None),
            Some(Some(Err(e))) => (None, Some(format!("manifest unreadable: {e}"))),
            Some(None) => (None, Some("the version folder has no manifest".to_owned())),
            None => (None, Some(format!("version {v} is not in the registry"))),
        };
        let signed_by = entry
            .as_ref()
            .and_then(|e| std::fs::read(e.dir.join(SIGNATURE_FILE)).ok())
            .and_then(|b| serde_json::from_slice::<SignatureFile>(&b).ok().map(|s| s.key_id));
        let decisions =
            audit.iter().filter(|e| e["to"].as_u64() == Some(v) || e["from"].as_u64() == Some(v)).cloned().collect();
        let data_check = match &manifest {
            Some(m) if sources.verify_data => check_data(&sources.sample_dir, &model, m),
            _ => None,
        };
        next = manifest.as_ref().and_then(|m| m.parent_version);
        versions.push(VersionLineage { version: v, manifest, missing, signed_by, decisions, data_check });
    }
    Ok(Lineage {
        request_id: request_id.to_owned(),
        model,
        version,
        rows: rows.into_iter().map(|(r, _)| r).collect(),
        explanations,
        versions,
    })
}

/// The `model=<m>` folders under `root` (only `model`'s when given).
fn model_dirs(root: &Path, model: Option<&str>) -> Vec<PathBuf> {
    match model {
        Some(m) => vec![root.join(format!("model={m}"))],
        None => std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("model=")))
            .map(|e| e.path())
            .collect(),
    }
}

/// The sample rows of `request_id`, with their model: each file's `request_id` column is read
/// first, and the whole file only when it holds the id.
fn find_rows(
    sample_dir: &Path,
    request_id: &str,
    model: Option<&str>,
) -> Result<Vec<(SampleRow, String)>, LineageError> {
    let mut found = Vec::new();
    for dir in model_dirs(&sample_dir.join(samples::SAMPLES), model) {
        let name = dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("model="));
        let model = name.unwrap_or_default().to_owned();
        for path in parquet_files(&dir, None) {
            if !holds_id(&path, request_id)? {
                continue;
            }
            for batch in read(&path, None)? {
                found.extend(rows_of(&batch, request_id, &path).into_iter().map(|r| (r, model.clone())));
            }
        }
    }
    found.sort_by_key(|(r, _)| (r.arm == "shadow", r.row));
    Ok(found)
}

/// Every row of the Parquet files under `dir` whose `request_id` is `request_id`, as JSON
/// objects of all their columns.
fn find_records(dir: &Path, request_id: &str) -> Result<Vec<Value>, LineageError> {
    let mut found = Vec::new();
    for path in parquet_files(dir, None) {
        if !holds_id(&path, request_id)? {
            continue;
        }
        for batch in read(&path, None)? {
            let Some(ids) = batch.column_by_name(samples::REQUEST_ID).and_then(|c| c.as_string_opt::<i32>()) else {
                continue;
            };
            for i in (0..batch.num_rows()).filter(|&i| ids.value(i) == request_id) {
                let record: Map<String, Value> = batch
                    .schema()
                    .fields()
                    .iter()
                    .zip(batch.columns())
                    .map(|(f, c)| (f.name().clone(), value(c, i)))
                    .collect();
                found.push(Value::Object(record));
            }
        }
    }
    Ok(found)
}

fn read(path: &Path, only: Option<&str>) -> Result<Vec<RecordBatch>, LineageError> {
    let err = |reason: String| LineageError::Read { path: path.display().to_string(), reason };
    let file = File::open(path).map_err(|e| err(e.to_string()))?;
    let mut builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| err(e.to_string()))?;
    if let Some(column) = only {
        let index = builder.schema().index_of(column).map_err(|e| err(e.to_string()))?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
        builder = builder.with_projection(mask);
    }
    let reader = builder.build().map_err(|e| err(e.to_string()))?;
    reader.collect::<Result<Vec<_>, _>>().map_err(|e| err(e.to_string()))
}

fn holds_id(path: &Path, request_id: &str) -> Result<bool, LineageError> {
    Ok(read(path, Some(samples::REQUEST_ID))?.iter().any(|batch| {
        batch.column(0).as_string_opt::<i32>().is_some_and(|ids| ids.iter().any(|id| id == Some(request_id)))
    }))
}

fn rows_of(batch: &RecordBatch, request_id: &str, path: &Path) -> Vec<SampleRow> {
    let Some(ids) = batch.column_by_name(samples::REQUEST_ID).and_then(|c| c.as_string_opt::<i32>()) else {
        return Vec::new();
    };
    let schema = batch.schema();
    (0..batch.num_rows())
        .filter(|&i| ids.value(i) == request_id)
        .map(|i| {
            let cell = |name: &str| batch.column_by_name(name).map_or(Value::Null, |c| value(c, i));
            let (mut inputs, mut outputs) = (Map::new(), Map::new());
            for (field, column) in schema.fields().iter().zip(batch.columns()) {
                let name = field.name();
                if name.starts_with("in_") {
                    inputs.insert(name.clone(), value(column, i));
                } else if name.starts_with("out_") {
                    outputs.insert(name.clone(), value(column, i));
                }
            }
            let time_us = cell(samples::TIME).as_i64().unwrap_or(0);
            SampleRow {
                time: rfc3339(time_us),
                time_us,
                row: cell(samples::ROW).as_u64().unwrap_or(0),
                version: cell(samples::VERSION).as_u64().unwrap_or(0),
                arm: cell(samples::ARM).as_str().unwrap_or_default().to_owned(),
                status: cell(samples::STATUS).as_i64(),
                latency_us: cell(samples::LATENCY_US).as_i64(),
                client_request_id: cell(samples::CLIENT_REQUEST_ID).as_str().map(str::to_owned),
                inputs,
                outputs,
                file: path.display().to_string(),
            }
        })
        .collect()
}

/// One cell as JSON (the types the gateway writes; others as their type's name).
fn value(column: &ArrayRef, i: usize) -> Value {
    if column.is_null(i) {
        return Value::Null;
    }
    match column.data_type() {
        DataType::Float32 => json!(column.as_primitive::<Float32Type>().value(i)),
        DataType::Float64 => json!(column.as_primitive::<Float64Type>().value(i)),
        DataType::Int32 => json!(column.as_primitive::<Int32Type>().value(i)),
        DataType::Int64 => json!(column.as_primitive::<Int64Type>().value(i)),
        DataType::UInt32 => json!(column.as_primitive::<UInt32Type>().value(i)),
        DataType::UInt64 => json!(column.as_primitive::<UInt64Type>().value(i)),
        DataType::Utf8 => json!(column.as_string::<i32>().value(i)),
        DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, _) => {
            json!(column.as_primitive::<TimestampMicrosecondType>().value(i))
        }
        DataType::List(_) => {
            let list = column.as_list::<i32>().value(i);
            Value::Array((0..list.len()).map(|j| value(&list, j)).collect())
        }
        other => json!(format!("<{other}>")),
    }
}

fn rfc3339(us: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(us.max(0) as u64);
    humantime::format_rfc3339_micros(t).to_string()
}

/// `model`'s audit entries in `logs` and their rotated siblings, oldest first.
fn read_audit(logs: &[PathBuf], model: &str) -> Vec<Value> {
    let mut files: Vec<PathBuf> = Vec::new();
    for log in logs {
        let (Some(dir), Some(name)) = (log.parent(), log.file_name().and_then(|n| n.to_str())) else { continue };
        let rotated = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| {
            p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix(name)).is_some_and(|rest| {
                rest.strip_prefix('.').is_some_and(|ms| !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()))
            })
        });
        files.extend(rotated);
        files.push(log.clone());
    }
    let mut entries: Vec<Value> = files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect::<Vec<_>>())
        .filter(|e| e["model"] == model)
        .collect();
    entries.sort_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()));
    entries
}

/// The lineage as a report an auditor can read.
pub fn report(l: &Lineage) -> String {
    let mut out = format!("Request {} (model {})\n", l.request_id, l.model);
    for r in &l.rows {
        out.push_str(&format!(
            "  row {} answered {} by version {} on the {} arm (status {}, {} µs)\n    inputs:  {}\n    outputs: {}\n    file: {}\n",
            r.row,
            r.time,
            r.version,
            r.arm,
            r.status.map_or_else(|| "?".into(), |s| s.to_string()),
            r.latency_us.map_or_else(|| "?".into(), |s| s.to_string()),
            compact(&r.inputs),
            compact(&r.outputs),
            r.file
        ));
    }
    if l.explanations.is_empty() {
        out.push_str("  explanation: none recorded\n");
    }
    for e in &l.explanations {
        out.push_str(&format!(
            "  explanation of row {} ({} of {} column {}): base {} -> prediction {}, top features {}, attributions {}\n",
            e["row"], e["method"].as_str().unwrap_or("?"), e["output"].as_str().unwrap_or("?"), e["column"],
            e["base_value"], e["prediction"], e["top_features"], e["attributions"]
        ));
    }
    for v in &l.versions {
        out.push_str(&format!("\nVersion {}\n", v.version));
        if let Some(why) = &v.missing {
            out.push_str(&format!("  {why}\n"));
        }
        if let Some(m) = &v.manifest {
            out.push_str(&format!("  published {}, model SHA-256 {}\n", m.created_at, m.sha256));
            out.push_str(&format!(
                "  signature: {}\n",
                v.signed_by
                    .as_deref()
                    .map_or_else(|| "none".to_owned(), |k| format!("by key {k} (check it: registry verify)"))
            ));
            if let Some(d) = &m.data {
                out.push_str(&format!(
                    "  data: {} rows, digest {}, window {}\n",
                    d.rows,
                    d.digest,
                    d.window.as_deref().unwrap_or("not recorded")
                ));
            }
            if let Some(c) = &v.data_check {
                out.push_str(&format!("  data re-check: {}\n", c.detail));
            }
            out.push_str(&format!("  code: {}\n", m.code_revision.as_deref().unwrap_or("not recorded")));
            if !m.hyperparameters.is_empty() {
                out.push_str(&format!("  hyperparameters: {}\n", Value::Object(m.hyperparameters.clone())));
            }
            if let Some(gate) = &m.gate {
                out.push_str(&format!("  quality gate: {}\n", gate_line(gate)));
            }
            if let Some(trigger) = &m.trigger {
                out.push_str(&format!("  triggered by: {trigger}\n"));
            }
            if let Some(text) = &m.description {
                out.push_str(&format!("  description: {text}\n"));
            }
        }
        if v.decisions.is_empty() {
            out.push_str("  decisions: none in the audit log\n");
        }
        for e in &v.decisions {
            let who = match e["credential"].as_str() {
                Some(c) => format!("{} ({c})", e["actor"].as_str().unwrap_or("?")),
                None => e["actor"].as_str().unwrap_or("?").to_owned(),
            };
            out.push_str(&format!(
                "  {} {} by {who}: {}\n",
                e["time"].as_str().unwrap_or("?"),
                e["action"].as_str().unwrap_or("?"),
                e["reason"].as_str().unwrap_or("")
            ));
        }
        match v.manifest.as_ref().and_then(|m| m.parent_version) {
            Some(p) => out.push_str(&format!("  parent: version {p}\n")),
            None if v.manifest.is_some() => out.push_str("  parent: none (the first version)\n"),
            None => {}
        }
    }
    out
}

fn compact(map: &Map<String, Value>) -> String {
    map.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

fn gate_line(gate: &Value) -> String {
    let verdict = &gate["verdict"];
    match verdict["passed"].as_bool() {
        Some(passed) => format!(
            "{} (candidate AUC {}, champion AUC {})",
            if passed { "passed" } else { "failed" },
            verdict["candidate"]["auc"],
            verdict["champion"]["auc"]
        ),
        None => gate.to_string(),
    }
}
