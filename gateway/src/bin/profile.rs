//! `flywheel-profile`: builds a version's reference profile from a Parquet file of its training
//! data (for models trained elsewhere) and writes it into the registry.

use std::path::PathBuf;

use anyhow::{Context, bail};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use clap::Parser;
use flywheel_registry::{ReferenceProfile, Registry};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Build a reference profile from training data in Parquet.
#[derive(Parser)]
struct Args {
    /// Registry root folder.
    #[arg(long, env = "FLYWHEEL_REGISTRY", default_value = "var/models")]
    root: PathBuf,
    model: String,
    /// Version number or alias.
    version: String,
    /// Parquet file with one numeric column per feature.
    #[arg(long)]
    from: PathBuf,
    /// Feature columns, in the model's input order; default: every `in_*` column.
    #[arg(long, value_delimiter = ',')]
    features: Vec<String>,
    /// Column holding the model's prediction, if the data has one.
    #[arg(long)]
    prediction: Option<String>,
    /// Reference sample size per feature.
    #[arg(long, default_value_t = 1000)]
    sample: usize,
}

fn column_f64(batch: &RecordBatch, name: &str) -> anyhow::Result<Vec<f64>> {
    let column = batch.column_by_name(name).with_context(|| format!("no column {name:?}"))?;
    let values: Vec<f64> = match column.data_type() {
        DataType::Float64 => column.as_primitive::<Float64Type>().iter().map(|v| v.unwrap_or(f64::NAN)).collect(),
        DataType::Float32 => {
            column.as_primitive::<Float32Type>().iter().map(|v| v.map_or(f64::NAN, f64::from)).collect()
        }
        DataType::Int64 => {
            column.as_primitive::<Int64Type>().iter().map(|v| v.map_or(f64::NAN, |v| v as f64)).collect()
        }
        DataType::Int32 => column.as_primitive::<Int32Type>().iter().map(|v| v.map_or(f64::NAN, f64::from)).collect(),
        other => bail!("column {name:?} is {other}, not a number"),
    };
    Ok(values)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let file = std::fs::File::open(&args.from).with_context(|| format!("opening {}", args.from.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>()?;
    let Some(first) = batches.first() else { bail!("{} has no rows", args.from.display()) };
    let features: Vec<String> = if args.features.is_empty() {
        first.schema().fields().iter().map(|f| f.name().clone()).filter(|n| n.starts_with("in_")).collect()
    } else {
        args.features.clone()
    };
    if features.is_empty() {
        bail!("no feature columns: pass --features or use in_* column names");
    }
    let mut rows: Vec<Vec<f64>> = Vec::new();
    let mut predictions = Vec::new();
    for batch in &batches {
        let columns: Vec<Vec<f64>> = features.iter().map(|f| column_f64(batch, f)).collect::<Result<_, _>>()?;
        rows.extend((0..batch.num_rows()).map(|r| columns.iter().map(|c| c[r]).collect()));
        if let Some(p) = &args.prediction {
            predictions.extend(column_f64(batch, p)?);
        }
    }
    let registry = Registry::open(&args.root);
    let version = registry.resolve(&args.model, &args.version)?;
    let profile = ReferenceProfile::from_rows(
        &features,
        &rows,
        args.prediction.as_ref().map(|_| predictions.as_slice()),
        args.sample,
    );
    registry.write_profile(&args.model, version, &profile)?;
    println!(
        "wrote the reference profile of {} version {version}: {} rows, {} features",
        args.model,
        rows.len(),
        features.len()
    );
    Ok(())
}
