//! Sample-store fixtures shared by the CLI tests: Parquet sample and label files as the
//! gateway writes them, and the dataset spec a trainer would use on them.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_array::{UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use flywheel_registry::dataset::AssembleSpec;

/// Serving time of the first fixture row (µs since the epoch; 2026-09-21).
pub const T0: i64 = 1_790_000_000_000_000;

fn write(path: std::path::PathBuf, fields: Vec<Field>, columns: Vec<ArrayRef>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// Writes `samples/.../<part>` (one row per id of model `m`, two features, served 1 ms apart
/// from `T0 + offset_us`; `shift` changes the third row's first value) and `labels/.../<part>`
/// with a label for each, given 10 µs after its row.
pub fn sample_part(dir: &Path, part: &str, ids: &[&str], offset_us: i64, shift: f32) {
    sample_part_on(dir, "2026-09-21", part, ids, offset_us, shift);
}

/// [`sample_part`] in the `date=<date>` partitions.
pub fn sample_part_on(dir: &Path, date: &str, part: &str, ids: &[&str], offset_us: i64, shift: f32) {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let n = ids.len();
    let times: Vec<i64> = (0..n as i64).map(|i| T0 + offset_us + i * 1000).collect();
    let first: Vec<f32> = (0..n).map(|i| 0.1 * (i + 1) as f32 + if i == 2 { shift } else { 0.0 }).collect();
    let labels: Vec<f64> = (0..n).map(|i| ((i + 1) % 2) as f64).collect();
    write(
        dir.join(format!("samples/model=m/date={date}/{part}")),
        vec![
            Field::new("request_id", DataType::Utf8, false),
            Field::new("row", DataType::UInt32, false),
            Field::new("time", ts.clone(), false),
            Field::new("version", DataType::UInt64, false),
            Field::new("arm", DataType::Utf8, false),
            Field::new("in_x_0", DataType::Float32, true),
            Field::new("in_x_1", DataType::Float32, true),
        ],
        vec![
            Arc::new(StringArray::from(ids.to_vec())),
            Arc::new(UInt32Array::from(vec![0u32; n])),
            Arc::new(TimestampMicrosecondArray::from(times.clone()).with_timezone("UTC")),
            Arc::new(UInt64Array::from(vec![2u64; n])),
            Arc::new(StringArray::from(vec!["champion"; n])),
            Arc::new(Float32Array::from(first)),
            Arc::new(Float32Array::from(labels.iter().map(|l| *l as f32).collect::<Vec<_>>())),
        ],
    );
    write(
        dir.join(format!("labels/model=m/date={date}/{part}")),
        vec![
            Field::new("request_id", DataType::Utf8, false),
            Field::new("row", DataType::UInt32, false),
            Field::new("label", DataType::Float64, false),
            Field::new("time", ts, false),
        ],
        vec![
            Arc::new(StringArray::from(ids.to_vec())),
            Arc::new(UInt32Array::from(vec![0u32; n])),
            Arc::new(Float64Array::from(labels)),
            Arc::new(
                TimestampMicrosecondArray::from(times.iter().map(|t| t + 10).collect::<Vec<_>>()).with_timezone("UTC"),
            ),
        ],
    );
}

/// Four rows `a`..`d` in `part-1.parquet` (see [`sample_part`]).
pub fn sample_files(dir: &Path, shift: f32) {
    sample_part(dir, "part-1.parquet", &["a", "b", "c", "d"], 0, shift);
}

/// What a trainer assembles from `dir`: every labelled row of model `m`.
pub fn spec(dir: &Path) -> AssembleSpec {
    AssembleSpec {
        sample_dir: dir.to_path_buf(),
        model: "m".into(),
        since_us: None,
        until_us: None,
        labels_until_us: None,
        holdout_fraction: 0.25,
        min_rows: 4,
        max_nan_rate: 0.0,
        min_per_class: 1,
        only_files: None,
    }
}
