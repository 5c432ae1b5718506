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

    /// Appends every row of `served` (one row with null values when it has no tensors). Each
    /// tensor is read once, column by column (the tap's thread shares the serving cores).
    pub fn push(&mut self, served: &Served) {
        let rows = served.rows();
        let micros = served.time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
        let latency = served.latency.as_micros() as i64;
        for r in 0..rows {
            self.id.append_value(&served.request_id);
            self.client_id.append_option(served.client_request_id.as_deref());
            self.row.append_value(r as u32);
            self.time.append_value(micros);
            self.model.append_value(&served.model);
            self.version.append_value(served.version);
            self.arm.append_value(served.arm);
            self.status.append_value(i32::from(served.status));
            self.latency.append_value(latency);
        }
        let empty = served.inputs.is_empty() && served.outputs.is_empty();
        let mut tensors = served.inputs.iter().chain(&served.outputs);
        let mut column = 0;
        for (_, l) in self.plan.inputs.iter().chain(&self.plan.outputs) {
            let t = if empty { None } else { tensors.next() };
            column += append(&mut self.values[column..], l, t, rows);
        }
        self.len += rows;
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

/// Appends the `rows` rows of tensor `t` (nulls without one) to the builders of its layout;
/// returns how many builders it used.
fn append(builders: &mut [Builder], layout: &Layout, t: Option<&Tensor>, rows: usize) -> usize {
    let rows = rows.max(1);
    match layout {
        Layout::Scalars { width, .. } => {
            let width = *width;
            match t.map(|t| &t.data) {
                // The common case (FP32 into Float32 columns) without a conversion.
                Some(TensorData::Fp32(v)) => {
                    for (i, b) in builders[..width].iter_mut().enumerate() {
                        for r in 0..rows {
                            let x = v.get(r * width + i).copied();
                            match b {
                                Builder::F32(b) => b.append_option(x),
                                Builder::F64(b) => b.append_option(x.map(f64::from)),
                                _ => {}
                            }
                        }
                    }
                }
                data => {
                    let values = data.and_then(TensorData::to_f64);
                    for (i, b) in builders[..width].iter_mut().enumerate() {
                        for r in 0..rows {
                            let x = values.as_ref().and_then(|v| v.get(r * width + i).copied());
                            match b {
                                Builder::F32(b) => b.append_option(x.map(|x| x as f32)),
                                Builder::F64(b) => b.append_option(x),
                                _ => {}
                            }
                        }
                    }
                }
            }
            width
        }
        Layout::List => {
            if let Builder::List(b) = &mut builders[0] {
                let values = t.and_then(|t| t.data.to_f64());
                let width = values.as_ref().map_or(0, |v| v.len() / rows);
                for r in 0..rows {
                    match values.as_ref().and_then(|v| v.get(r * width..(r + 1) * width)) {
                        Some(row) => {
                            b.values().append_slice(row);
                            b.append(true);
                        }
                        None => b.append(false),
                    }
                }
            }
            1
        }
        Layout::Text => {
            if let Builder::Text(b) = &mut builders[0] {
                for r in 0..rows {
                    let text = t.and_then(|t| match &t.data {
                        TensorData::Bytes(items) => items.get(r).map(|s| String::from_utf8_lossy(s)),
                        _ => None,
                    });
                    b.append_option(text);
                }
            }
            1
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
mod tests {
    use std::time::{Duration, SystemTime};

    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, Float64Type};

    use super::*;

    fn served(inputs: Vec<Tensor>, outputs: Vec<Tensor>) -> Served {
        Served {
            request_id: "r1".into(),
            client_request_id: Some("c1".into()),
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1),
            model: "m".into(),
            version: 3,
            arm: "champion",
            status: 200,
            latency: Duration::from_micros(42),
            inputs,
            outputs,
            sampled: true,
            drift: false,
            scores: None,
            threshold: None,
            route: None,
        }
    }

    fn tensor(name: &str, shape: Vec<i64>, data: TensorData) -> Tensor {
        Tensor { name: name.into(), shape, data }
    }

    #[test]
    fn every_row_of_every_tensor_lands_in_its_own_column() {
        let three_rows = served(
            vec![
                tensor("x", vec![3, 2], TensorData::Fp32(vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5])),
                tensor("n", vec![3, 1], TensorData::Int64(vec![7, 8, 9])),
                tensor("w", vec![3, 300], TensorData::Fp64((0..900).map(f64::from).collect())),
                tensor("s", vec![3], TensorData::Bytes(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])),
            ],
            vec![tensor("y", vec![3, 1], TensorData::Fp32(vec![0.1, 0.2, 0.3]))],
        );
        let mut rows = Rows::new(Plan::for_served(&three_rows));
        rows.push(&three_rows);
        // A failed request: one row of nulls.
        rows.push(&served(Vec::new(), Vec::new()));
        assert_eq!(rows.len(), 4);
        let batch = rows.take().unwrap();
        assert_eq!(batch.num_rows(), 4);
        assert!(rows.is_empty());
        let column = |name: &str| batch.column_by_name(name).unwrap().clone();
        let x1 = column(&samples::input_column("x", 1));
        let x1 = x1.as_primitive::<Float32Type>();
        assert_eq!((x1.value(0), x1.value(1), x1.value(2)), (0.5, 1.5, 2.5));
        assert!(x1.is_null(3));
        let n0 = column(&samples::input_column("n", 0));
        let n0 = n0.as_primitive::<Float64Type>();
        assert_eq!((n0.value(0), n0.value(2)), (7.0, 9.0));
        let w = column("in_w");
        let w = w.as_list::<i32>();
        let second = w.value(1);
        let second = second.as_primitive::<Float64Type>();
        assert_eq!((second.len(), second.value(0), second.value(299)), (300, 300.0, 599.0));
        assert!(w.is_null(3));
        let s = column("in_s");
        assert_eq!(s.as_string::<i32>().value(2), "c");
        let y = column(&samples::output_column("y", 0));
        assert_eq!(y.as_primitive::<Float32Type>().value(2), 0.3);
        let row = column(samples::ROW);
        let row = row.as_primitive::<arrow_array::types::UInt32Type>();
        assert_eq!((row.value(0), row.value(2), row.value(3)), (0, 2, 0));
        let latency = column(samples::LATENCY_US);
        assert_eq!(latency.as_primitive::<arrow_array::types::Int64Type>().value(1), 42);
    }
}
