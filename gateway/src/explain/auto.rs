//! Automatic explanations: a model's `[models.<m>.explain]` policy (a score threshold, e.g.
//! "flagged" at 0.8, and/or a rate) picks answered rows; they are explained off the hot path on
//! one thread and written with their request id and version beside the samples, in
//! `<sample_dir>/explanations/model=<m>/date=<YYYY-MM-DD>/part-*.parquet`.
//!
//! Shed first: a full queue, a full explanation budget or a version whose serving queue is not
//! empty drops the row (counted in `flywheel_explanations_dropped_total{reason}`); serving never
//! waits for an explanation.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow_array::builder::{Float64Builder, ListBuilder, UInt32Builder};
use arrow_array::{
    ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use serde::Deserialize;

use super::{Attribution, ExplainTarget, top};
use crate::model::ModelVersion;
use crate::model::table::Budget;
use crate::rollout::Reloader;
use crate::tap::files::{PartFile, Rotation, date_of};

/// Folder of explanation files under the sample folder.
pub use flywheel_registry::lineage::EXPLANATIONS;
/// Rows waiting to be explained; beyond it rows are dropped.
const QUEUE: usize = 1024;
/// How long a row waits for its version's serving queue to empty before it is dropped.
const BUSY_WAIT: Duration = Duration::from_millis(50);

/// `[models.<m>.explain]`: which answered rows are explained automatically.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExplainPolicy {
    /// Rows whose score is at least this (e.g. 0.8: every flagged transaction).
    pub threshold: Option<f64>,
    /// Share of the other rows, by request id (the same on every replica).
    #[serde(default)]
    pub rate: f64,
}

impl ExplainPolicy {
    pub fn validate(&self, at: &str) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.rate) {
            return Err(format!("{at}.rate must be in 0..=1, given {}", self.rate));
        }
        if self.threshold.is_some_and(|t| !t.is_finite()) {
            return Err(format!("{at}.threshold must be a number, given {:?}", self.threshold));
        }
        if self.threshold.is_none() && self.rate == 0.0 {
            return Err(format!("{at} needs a threshold or a rate above 0 (it would explain nothing)"));
        }
        Ok(())
    }

    /// Whether the row with `score` of the request with id fraction `at` is explained.
    pub fn picks(&self, score: f64, at: f64) -> bool {
        self.threshold.is_some_and(|t| score >= t) || at < self.rate
    }
}

/// One row to explain.
pub struct Job {
    pub request_id: String,
    pub row: u32,
    pub time_us: i64,
    pub arm: &'static str,
    pub version: Arc<ModelVersion>,
    pub x: Vec<f64>,
}

/// The sending side, held by the server.
pub struct AutoExplain {
    tx: Sender<Job>,
}

impl AutoExplain {
    /// Starts the explaining thread, writing under `sample_dir`.
    pub fn start(reloader: Arc<Reloader>, budget: Arc<Budget>, sample_dir: PathBuf) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        std::thread::Builder::new().name("explain-auto".into()).spawn(move || {
            idle_priority();
            crate::health::guard("explain", || run(&reloader, &budget, &sample_dir, &rx))
        })?;
        Ok(Self { tx })
    }

    /// Whether the queue is full (the caller then drops its rows without building them).
    pub fn is_full(&self) -> bool {
        self.tx.is_full()
    }

    /// Counts `rows` dropped before they were built.
    pub fn drop_rows(&self, model: &str, rows: usize) {
        metrics::counter!(crate::metrics::EXPLANATIONS_DROPPED, "model" => model.to_owned(), "reason" => "queue_full")
            .increment(rows as u64);
    }

    /// Queues a row, or drops it (counted) when the queue is full.
    pub fn offer(&self, job: Job) {
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => dropped(&job.version.model, "queue_full"),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Puts this thread under the idle scheduling class (Linux `SCHED_IDLE`): it gets a core only
/// when no serving, HTTP or client thread wants it, so explaining never takes cycles from
/// serving (ONNX Runtime runs a one-thread session on the calling thread). Elsewhere the thread
/// keeps its priority.
fn idle_priority() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::unix::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
        let policy = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        let id = thread_priority::unix::thread_native_id();
        if let Err(e) =
            thread_priority::unix::set_thread_priority_and_policy(id, thread_priority::ThreadPriority::Min, policy)
        {
            tracing::warn!(error = ?e, "automatic explanations run at normal priority (SCHED_IDLE refused)");
        }
    }
}

fn dropped(model: &str, reason: &'static str) {
    metrics::counter!(crate::metrics::EXPLANATIONS_DROPPED, "model" => model.to_owned(), "reason" => reason)
        .increment(1);
}

/// Open part files by model.
struct Writers {
    dir: PathBuf,
    open: HashMap<String, PartFile>,
    rotation: Rotation,
}

fn run(reloader: &Reloader, budget: &Arc<Budget>, sample_dir: &std::path::Path, rx: &Receiver<Job>) {
    let sampling = reloader.config.load_full().sampling.clone();
    let rotation = Rotation {
        max_rows: sampling.max_rows_per_file.max(1),
        max_bytes: 64 << 20,
        max_age: Duration::from_millis(sampling.max_file_age_ms.max(1)),
        row_group_rows: 8192,
    };
    let mut writers = Writers { dir: sample_dir.join(EXPLANATIONS), open: HashMap::new(), rotation };
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(job) => explain_one(reloader, budget, &mut writers, job),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        writers.finish_full(false);
    }
    writers.finish_full(true);
}

fn explain_one(reloader: &Reloader, budget: &Arc<Budget>, writers: &mut Writers, job: Job) {
    let model = job.version.model.clone();
    // Serving first: wait for the version's backlog to clear (a queue that stays full is load),
    // then give up on the row.
    let waited = std::time::Instant::now();
    while job.version.backlogged() {
        if waited.elapsed() >= BUSY_WAIT {
            return dropped(&model, "serving_busy");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let Some(_slot) = budget.try_acquire() else { return dropped(&model, "budget") };
    let target = ExplainTarget::of(&job.version);
    let settings = reloader.config.load().explain.clone();
    let started = std::time::Instant::now();
    let opened = target.slot.get_or_open(&reloader.env, &target, || super::background(reloader, &target, &settings));
    let explainer = match opened {
        Ok(explainer) => explainer,
        Err(e) => {
            tracing::debug!(model, error = %e, "automatic explanation failed");
            return dropped(&model, "failed");
        }
    };
    if explainer.cost(1, &settings.shapley()) > settings.max_evaluations {
        return dropped(&model, "too_costly");
    }
    let busy = || job.version.backlogged();
    let rows = std::slice::from_ref(&job.x);
    let attributions = match explainer.explain(rows, &settings.shapley(), &busy, settings.auto_cpu_share) {
        Ok(mut a) if !a.is_empty() => a.swap_remove(0),
        Ok(_) => return,
        Err(e) if e == super::SHED => return dropped(&model, "serving_busy"),
        Err(e) => {
            tracing::debug!(model, error = %e, "automatic explanation failed");
            return dropped(&model, "failed");
        }
    };
    crate::metrics::count_explanations(&model, 1, started.elapsed());
    let (output, column) = explainer.explained();
    let row = Row { job: &job, a: &attributions, output, column, top: settings.top };
    if let Err(e) = writers.write(&model, &row) {
        tracing::error!(model, error = %e, "explanation not written");
        dropped(&model, "write_failed");
    }
}

/// One explanation as written.
struct Row<'a> {
    job: &'a Job,
    a: &'a Attribution,
    output: &'a str,
    column: usize,
    top: usize,
}

/// The explanation files' columns.
pub fn schema() -> SchemaRef {
    let floats = || DataType::List(Arc::new(Field::new("item", DataType::Float64, true)));
    Arc::new(Schema::new(vec![
        Field::new("request_id", DataType::Utf8, false),
        Field::new("row", DataType::UInt32, false),
        Field::new("time", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        Field::new("model", DataType::Utf8, false),
        Field::new("version", DataType::UInt64, false),
        Field::new("arm", DataType::Utf8, false),
        Field::new("output", DataType::Utf8, false),
        Field::new("column", DataType::UInt32, false),
        Field::new("method", DataType::Utf8, false),
        Field::new("base_value", DataType::Float64, false),
        Field::new("prediction", DataType::Float64, false),
        Field::new("attributions", floats(), false),
        Field::new("top_features", DataType::List(Arc::new(Field::new("item", DataType::UInt32, true))), false),
        Field::new("standard_error", floats(), true),
    ]))
}

fn batch(row: &Row<'_>) -> Result<RecordBatch, String> {
    let (job, a) = (row.job, row.a);
    let mut attributions = ListBuilder::new(Float64Builder::new());
    attributions.values().append_slice(&a.values);
    attributions.append(true);
    let mut tops = ListBuilder::new(UInt32Builder::new());
    for (feature, _) in top(&a.values, row.top) {
        tops.values().append_value(feature as u32);
    }
    tops.append(true);
    let mut errors = ListBuilder::new(Float64Builder::new());
    match &a.standard_error {
        Some(se) => {
            errors.values().append_slice(se);
            errors.append(true);
        }
        None => errors.append_null(),
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![job.request_id.as_str()])),
        Arc::new(UInt32Array::from(vec![job.row])),
        Arc::new(TimestampMicrosecondArray::from(vec![job.time_us]).with_timezone("UTC")),
        Arc::new(StringArray::from(vec![job.version.model.as_str()])),
        Arc::new(UInt64Array::from(vec![job.version.version])),
        Arc::new(StringArray::from(vec![job.arm])),
        Arc::new(StringArray::from(vec![row.output])),
        Arc::new(UInt32Array::from(vec![row.column as u32])),
        Arc::new(StringArray::from(vec![a.method])),
        Arc::new(Float64Array::from(vec![a.base_value])),
        Arc::new(Float64Array::from(vec![a.prediction])),
        Arc::new(attributions.finish()),
        Arc::new(tops.finish()),
        Arc::new(errors.finish()),
    ];
    RecordBatch::try_new(schema(), columns).map_err(|e| e.to_string())
}

impl Writers {
    fn write(&mut self, model: &str, row: &Row<'_>) -> Result<(), String> {
        let batch = batch(row)?;
        let date = date_of(UNIX_EPOCH + Duration::from_micros(row.job.time_us.max(0) as u64));
        if self.open.get(model).is_some_and(|f| f.date != date) {
            self.finish(model);
        }
        if !self.open.contains_key(model) {
            let dir = self.dir.join(format!("model={model}")).join(format!("date={date}"));
            let file = PartFile::open(&dir, schema(), &self.rotation, date).map_err(|e| e.to_string())?;
            self.open.insert(model.to_owned(), file);
        }
        let file = self.open.get_mut(model).ok_or("no open file")?;
        file.write(&batch).map_err(|e| e.to_string())
    }

    fn finish(&mut self, model: &str) {
        if let Some(file) = self.open.remove(model)
            && let Err(e) = file.finish()
        {
            tracing::error!(model, error = %e, "explanation file not finished");
        }
    }

    /// Finishes the files that reached a rotation limit (all of them with `all`).
    fn finish_full(&mut self, all: bool) {
        let full: Vec<String> =
            self.open.iter().filter(|(_, f)| all || f.full(&self.rotation)).map(|(m, _)| m.clone()).collect();
        for model in full {
            self.finish(&model);
        }
    }
}

/// Microseconds since the epoch, now.
pub fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}
