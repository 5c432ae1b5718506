//! Turning served requests into Arrow record batches: one row per request row, the common
//! columns of `flywheel_registry::samples`, then one column per feature and output value.

use std::sync::Arc;

use arrow_array::builder::{
    Float32Builder, Float64Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder,
    TimestampMicrosecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType as ArrowType, Field, Schema, TimeUnit};
use flywheel_registry::samples;

use super::Served;
use crate::protocol::{Tensor, TensorData};

/// Values per row up to which a tensor is spread over scalar columns (wider: one list column).
const MAX_SCALAR_COLUMNS: usize = 256;

/// How one tensor becomes columns.
#[derive(Clone, Debug, PartialEq)]
enum Layout {
    /// `width` scalar columns; FP32 stays Float32, other numbers become Float64.
    Scalars { width: usize, f32: bool },
    /// One `list<double>` column of the row's values.
    List,
    /// One text column (BYTES of width 1).
    Text,
}

/// The column layout of one model's sample files, derived from its first served request.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    inputs: Vec<(String, Layout)>,
    outputs: Vec<(String, Layout)>,
    pub schema: Arc<Schema>,
}

fn layout(t: &Tensor) -> Layout {
    let rows = t.shape.first().copied().unwrap_or(1).max(1) as usize;
    let width = t.data.len() / rows;
    match &t.data {
        TensorData::Bytes(_) if width == 1 => Layout::Text,
        TensorData::Bytes(_) => Layout::List,
        data if width <= MAX_SCALAR_COLUMNS && t.shape.len() <= 2 => {
            Layout::Scalars { width, f32: matches!(data, TensorData::Fp32(_)) }
        }
        _ => Layout::List,
    }
}

fn fields(prefix: &str, name: &str, layout: &Layout, out: &mut Vec<Field>) {
    match layout {
        Layout::Scalars { width, f32 } => {
            let ty = if *f32 { ArrowType::Float32 } else { ArrowType::Float64 };
            for i in 0..*width {
                let column =
                    if prefix == "in" { samples::input_column(name, i) } else { samples::output_column(name, i) };
                out.push(Field::new(column, ty.clone(), true));
            }
        }
        Layout::List => {
            let item = Arc::new(Field::new("item", ArrowType::Float64, true));
            out.push(Field::new(format!("{prefix}_{name}"), ArrowType::List(item), true));
        }
        Layout::Text => out.push(Field::new(format!("{prefix}_{name}"), ArrowType::Utf8, true)),
    }
}

impl Plan {
    /// The plan for requests shaped like `served`.
    pub fn for_served(served: &Served) -> Self {
        let inputs: Vec<(String, Layout)> = served.inputs.iter().map(|t| (t.name.clone(), layout(t))).collect();
        let outputs: Vec<(String, Layout)> = served.outputs.iter().map(|t| (t.name.clone(), layout(t))).collect();
        let mut f = vec![
            Field::new(samples::REQUEST_ID, ArrowType::Utf8, false),
            Field::new(samples::CLIENT_REQUEST_ID, ArrowType::Utf8, true),
            Field::new(samples::ROW, ArrowType::UInt32, false),
            Field::new(samples::TIME, ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
            Field::new(samples::MODEL, ArrowType::Utf8, false),
            Field::new(samples::VERSION, ArrowType::UInt64, false),
            Field::new(samples::ARM, ArrowType::Utf8, false),
            Field::new(samples::STATUS, ArrowType::Int32, false),
            Field::new(samples::LATENCY_US, ArrowType::Int64, false),
        ];
        for (name, l) in &inputs {
            fields("in", name, l, &mut f);
        }
        for (name, l) in &outputs {
            fields("out", name, l, &mut f);
        }
        Self { inputs, outputs, schema: Arc::new(Schema::new(f)) }
    }

    /// Whether `served` fits this plan (a failed request with no tensors always fits).
    pub fn fits(&self, served: &Served) -> bool {
        let same = |plan: &[(String, Layout)], tensors: &[Tensor]| {
            plan.len() == tensors.len() && plan.iter().zip(tensors).all(|((n, l), t)| *n == t.name && *l == layout(t))
        };
        (served.inputs.is_empty() && served.outputs.is_empty())
            || (same(&self.inputs, &served.inputs) && same(&self.outputs, &served.outputs))
    }
}

/// One column being built.
enum Builder {
    F32(Float32Builder),
    F64(Float64Builder),
    List(ListBuilder<Float64Builder>),
    Text(StringBuilder),
}

/// Accumulates rows for one plan.
pub struct Rows {
    plan: Plan,
    id: StringBuilder,
    client_id: StringBuilder,
    row: UInt32Builder,
    time: TimestampMicrosecondBuilder,
    model: StringBuilder,
    version: UInt64Builder,
    arm: StringBuilder,
    status: Int32Builder,
    latency: Int64Builder,
    values: Vec<Builder>,
    len: usize,
}

impl Rows {
    pub fn new(plan: Plan) -> Self {
        let mut values = Vec::new();
        for (_, l) in plan.inputs.iter().chain(&plan.outputs) {
            match l {
                Layout::Scalars { width, f32: true } => {
                    values.extend((0..*width).map(|_| Builder::F32(Float32Builder::new())))
                }
                Layout::Scalars { width, f32: false } => {
                    values.extend((0..*width).map(|_| Builder::F64(Float64Builder::new())))
                }
                Layout::List => values.push(Builder::List(ListBuilder::new(Float64Builder::new()))),
                Layout::Text => values.push(Builder::Text(StringBuilder::new())),
            }
        }
        Self {
            plan,
            id: StringBuilder::new(),
            client_id: StringBuilder::new(),
            row: UInt32Builder::new(),
            time: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            model: StringBuilder::new(),
            version: UInt64Builder::new(),
            arm: StringBuilder::new(),
            status: Int32Builder::new(),
            latency: Int64Builder::new(),
            values,
            len: 0,
        }
    }

    /// The plan these rows follow.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Rows buffered.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no row is buffered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends every row of `served` (one row with null values when it has no tensors).
    pub fn push(&mut self, served: &Served) {
        let rows = served.rows();
        let micros = served.time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
        for r in 0..rows {
            self.id.append_value(&served.request_id);
            self.client_id.append_option(served.client_request_id.as_deref());
            self.row.append_value(r as u32);
            self.time.append_value(micros);
            self.model.append_value(&served.model);
            self.version.append_value(served.version);
            self.arm.append_value(served.arm);
            self.status.append_value(i32::from(served.status));
            self.latency.append_value(served.latency.as_micros() as i64);
            let tensors: Vec<Option<&Tensor>> = if served.inputs.is_empty() && served.outputs.is_empty() {
                vec![None; self.plan.inputs.len() + self.plan.outputs.len()]
            } else {
                served.inputs.iter().chain(&served.outputs).map(Some).collect()
            };
            let mut column = 0;
            for ((_, l), t) in self.plan.inputs.iter().chain(&self.plan.outputs).zip(tensors) {
                column += append(&mut self.values[column..], l, t, r, rows);
            }
            self.len += 1;
        }
    }

    /// Takes the buffered rows as a record batch.
    pub fn take(&mut self) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.client_id.finish()),
            Arc::new(self.row.finish()),
            Arc::new(self.time.finish()),
            Arc::new(self.model.finish()),
            Arc::new(self.version.finish()),
            Arc::new(self.arm.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.latency.finish()),
        ];
        for b in &mut self.values {
            arrays.push(match b {
                Builder::F32(b) => Arc::new(b.finish()),
                Builder::F64(b) => Arc::new(b.finish()),
                Builder::List(b) => Arc::new(b.finish()),
                Builder::Text(b) => Arc::new(b.finish()),
            });
        }
        self.len = 0;
        RecordBatch::try_new(Arc::clone(&self.plan.schema), arrays)
    }
}

/// Appends row `r` of tensor `t` (of `rows` rows) to the builders of its layout; returns how
/// many builders it used.
fn append(builders: &mut [Builder], layout: &Layout, t: Option<&Tensor>, r: usize, rows: usize) -> usize {
    let values: Option<Vec<f64>> = t.and_then(|t| {
        let width = t.data.len() / rows.max(1);
        t.data.to_f64().map(|v| v[r * width..(r + 1) * width].to_vec())
    });
    match layout {
        Layout::Scalars { width, .. } => {
            for (i, b) in builders[..*width].iter_mut().enumerate() {
                let v = values.as_ref().and_then(|v| v.get(i).copied());
                match b {
                    Builder::F32(b) => b.append_option(v.map(|v| v as f32)),
                    Builder::F64(b) => b.append_option(v),
                    _ => {}
                }
            }
            *width
        }
        Layout::List => {
            if let Builder::List(b) = &mut builders[0] {
                match values {
                    Some(v) => {
                        b.values().append_slice(&v);
                        b.append(true);
                    }
                    None => b.append(false),
                }
            }
            1
        }
        Layout::Text => {
            if let Builder::Text(b) = &mut builders[0] {
                let text = t.and_then(|t| match &t.data {
                    TensorData::Bytes(items) => items.get(r).map(|s| String::from_utf8_lossy(s).into_owned()),
                    _ => None,
                });
                b.append_option(text);
            }
            1
        }
    }
}
