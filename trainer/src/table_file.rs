//! Writing plain numeric tables to Parquet (synthetic data, bring-your-own training inputs).

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;

/// A named column.
pub enum Column<'a> {
    F64(&'a str, Vec<f64>),
    I64(&'a str, Vec<i64>),
}

/// Writes `columns` (all the same length) to `path` as one Parquet file.
pub fn write(path: &Path, columns: Vec<Column<'_>>) -> Result<(), String> {
    let mut fields = Vec::with_capacity(columns.len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns.len());
    for column in columns {
        match column {
            Column::F64(name, values) => {
                fields.push(Field::new(name, DataType::Float64, false));
                arrays.push(Arc::new(Float64Array::from(values)));
            }
            Column::I64(name, values) => {
                fields.push(Field::new(name, DataType::Int64, false));
                arrays.push(Arc::new(Int64Array::from(values)));
            }
        }
    }
    let fail = |e: &dyn std::fmt::Display| format!("writing {}: {e}", path.display());
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| fail(&e))?;
    let file = std::fs::File::create(path).map_err(|e| fail(&e))?;
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).map_err(|e| fail(&e))?;
    writer.write(&batch).map_err(|e| fail(&e))?;
    writer.close().map_err(|e| fail(&e))?;
    Ok(())
}
