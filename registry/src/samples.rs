//! The sample and label files' layout and columns: what the gateway writes and the trainer,
//! DuckDB, pyarrow or polars read.
//!
//! ```text
//! <sample_dir>/samples/model=<m>/date=<YYYY-MM-DD>/part-<ms>-<seq>.parquet
//! <sample_dir>/labels/model=<m>/date=<YYYY-MM-DD>/part-<ms>-<seq>.parquet
//! ```
//! One sample row per request row: the columns below (`request_id` the gateway's unique id,
//! `client_request_id` the client's own, nullable), then one column per input feature
//! (`in_<input>_<i>`, or `in_<input>` as a list for non-tabular inputs) and per output value
//! (`out_<output>_<i>` / `out_<output>`). A file is written under a hidden `.tmp` name and
//! renamed when complete, so any `*.parquet` is whole.

/// Folder, in a fleet's sample store, of labels acknowledged but not yet in a label Parquet
/// file there: `label-journal/model=<m>/<id>.jsonl`, one [`JournaledLabel`] per line, put by
/// the replica that took them before it answered. An object is deleted once the Parquet file
/// holding its labels is in the store; what is left (a replica lost before its file was up) is
/// read by the trainer with the Parquet labels.
pub const LABEL_JOURNAL: &str = "label-journal";

/// One acknowledged label as journaled (the gateway's local journal and [`LABEL_JOURNAL`]).
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct JournaledLabel {
    pub id: String,
    pub row: u32,
    pub label: f64,
    /// When it was acknowledged (µs since the epoch): its `time` in the label files.
    pub time_us: i64,
}

/// Folder of sample files under the sample directory.
pub const SAMPLES: &str = "samples";
/// Folder of label files under the sample directory.
pub const LABELS: &str = "labels";

/// The gateway's own id of the request (the response's `x-flywheel-request-id`, 128 random
/// bits): unique, so it is the join key with labels.
pub const REQUEST_ID: &str = "request_id";
/// The client's `x-request-id`, when it sent one (echoed in the response; null otherwise). Never
/// a join key: two clients may choose the same one.
pub const CLIENT_REQUEST_ID: &str = "client_request_id";
/// Row index within the request (0 for single-row requests).
pub const ROW: &str = "row";
/// Time the request was answered (timestamp, µs, UTC).
pub const TIME: &str = "time";
pub const MODEL: &str = "model";
pub const VERSION: &str = "version";
/// Routing arm: champion, canary, explicit.
pub const ARM: &str = "arm";
/// Total request latency in microseconds.
pub const LATENCY_US: &str = "latency_us";
/// HTTP status of the answer.
pub const STATUS: &str = "status";
/// The label value (labels files).
pub const LABEL: &str = "label";

/// Column name of input feature `i` of tabular input `input`.
pub fn input_column(input: &str, i: usize) -> String {
    format!("in_{input}_{i}")
}

/// Column name of value `i` of output `output`.
pub fn output_column(output: &str, i: usize) -> String {
    format!("out_{output}_{i}")
}

/// Partition folder of `kind` (`SAMPLES` or `LABELS`) for `model` on `date` (YYYY-MM-DD).
pub fn partition(kind: &str, model: &str, date: &str) -> String {
    format!("{kind}/model={model}/date={date}")
}
