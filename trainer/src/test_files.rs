//! Test helpers: Parquet files laid out as the gateway writes them.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;

/// Writes `batch` to `path` (folders created).
pub fn write(path: &Path, batch: RecordBatch) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// The gateway's time column type.
pub fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// A label file at `<dir>/labels/model=<model>/date=<date>/<file>`: (request id, row, label, time µs).
pub fn labels<S: AsRef<str>>(dir: &Path, partition: (&str, &str), file: &str, rows: &[(S, u32, f64, i64)]) {
    let (model, date) = partition;
    let schema = Arc::new(Schema::new(vec![
        Field::new("request_id", DataType::Utf8, false),
        Field::new("row", DataType::UInt32, false),
        Field::new("label", DataType::Float64, false),
        Field::new("time", ts(), false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(rows.iter().map(|r| r.0.as_ref()).collect::<Vec<_>>())),
        Arc::new(UInt32Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
        Arc::new(TimestampMicrosecondArray::from(rows.iter().map(|r| r.3).collect::<Vec<_>>()).with_timezone("UTC")),
    ];
    let path = dir.join(format!("labels/model={model}/date={date}/{file}"));
    write(&path, RecordBatch::try_new(schema, columns).unwrap());
}
