//! A model's input/output signature, read from its ONNX Runtime session, and the check of a
//! request's tensors against it.

use ort::session::Session;
use ort::value::{TensorElementType, ValueType};

use super::error::ValidationError;
use crate::protocol::{DataType, Tensor};

/// One declared input or output; `-1` marks a dynamic dimension.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

/// A model's inputs and outputs, and whether requests may be batched along the first dimension.
#[derive(Clone, Debug, PartialEq)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Every input and output has a dynamic first dimension.
    pub batchable: bool,
}

/// A request's inputs in the model's order, with the batch size they carry (1 if unbatchable).
#[derive(Debug)]
pub struct CheckedInputs {
    pub tensors: Vec<Tensor>,
    pub rows: usize,
}

impl Signature {
    /// Reads the signature from a session; a tensor of a type the gateway cannot carry is an error.
    pub fn from_session(session: &Session) -> Result<Self, String> {
        let specs = |outlets: &[ort::value::Outlet]| -> Result<Vec<TensorSpec>, String> {
            outlets.iter().map(|o| spec(o.name(), o.dtype())).collect()
        };
        Ok(Self::new(specs(session.inputs())?, specs(session.outputs())?))
    }

    /// Builds a signature and works out whether it is batchable.
    pub fn new(inputs: Vec<TensorSpec>, outputs: Vec<TensorSpec>) -> Self {
        let batchable = inputs.iter().chain(&outputs).all(|s| s.shape.first() == Some(&-1));
        Self { inputs, outputs, batchable }
    }

    /// Checks `given` against the inputs (names, datatypes, shapes, batch sizes) and returns them
    /// in the model's order. `max_batch_size` 0 means no limit beyond the model's own.
    pub fn check(&self, given: Vec<Tensor>, max_batch_size: usize) -> Result<CheckedInputs, ValidationError> {
        let mut slots: Vec<Option<Tensor>> = vec![None; self.inputs.len()];
        for tensor in given {
            let Some(index) = self.inputs.iter().position(|s| s.name == tensor.name) else {
                return Err(ValidationError(format!(
                    "unknown input '{}'; the model's inputs are {}",
                    tensor.name,
                    names(&self.inputs)
                )));
            };
            let spec = &self.inputs[index];
            if tensor.data.datatype() != spec.datatype {
                return Err(ValidationError(format!(
                    "input '{}' has datatype {}, the model expects {}",
                    spec.name,
                    tensor.data.datatype(),
                    spec.datatype
                )));
            }
            if !shape_fits(&tensor.shape, &spec.shape) {
                return Err(ValidationError(format!(
                    "input '{}' has shape {:?}, the model expects {:?} (-1 is any size)",
                    spec.name, tensor.shape, spec.shape
                )));
            }
            if slots[index].replace(tensor).is_some() {
                return Err(ValidationError(format!("input '{}' is given more than once", spec.name)));
            }
        }
        let mut tensors = Vec::with_capacity(slots.len());
        for (slot, spec) in slots.into_iter().zip(&self.inputs) {
            tensors.push(slot.ok_or_else(|| ValidationError(format!("missing input '{}'", spec.name)))?);
        }
        let rows = if self.batchable { self.batch_rows(&tensors, max_batch_size)? } else { 1 };
        Ok(CheckedInputs { tensors, rows })
    }

    /// Whether clients of `current` can call a model with this signature unchanged: the same
    /// inputs (names, datatypes, shapes) and at least `current`'s outputs, alike.
    pub fn compatible_with(&self, current: &Signature) -> Result<(), String> {
        let mut ours = self.inputs.clone();
        let mut theirs = current.inputs.clone();
        ours.sort_by(|a, b| a.name.cmp(&b.name));
        theirs.sort_by(|a, b| a.name.cmp(&b.name));
        if ours != theirs {
            return Err(format!(
                "inputs {} differ from the served {}",
                describe(&self.inputs),
                describe(&current.inputs)
            ));
        }
        for out in &current.outputs {
            if !self.outputs.contains(out) {
                return Err(format!(
                    "output {} that clients receive today is missing or changed (new outputs: {})",
                    describe(std::slice::from_ref(out)),
                    describe(&self.outputs)
                ));
            }
        }
        Ok(())
    }

    fn batch_rows(&self, tensors: &[Tensor], max_batch_size: usize) -> Result<usize, ValidationError> {
        let first = &tensors[0];
        let rows = first.shape[0];
        if let Some(other) = tensors.iter().find(|t| t.shape[0] != rows) {
            return Err(ValidationError(format!(
                "inputs disagree on the batch dimension: '{}' has {}, '{}' has {}",
                first.name, rows, other.name, other.shape[0]
            )));
        }
        let rows = usize::try_from(rows).unwrap_or(0);
        if rows == 0 {
            return Err(ValidationError("the batch dimension must be at least 1".to_owned()));
        }
        if max_batch_size > 0 && rows > max_batch_size {
            return Err(ValidationError(format!(
                "batch of {rows} rows exceeds this model's max_batch_size {max_batch_size}"
            )));
        }
        Ok(rows)
    }
}

fn shape_fits(given: &[i64], declared: &[i64]) -> bool {
    given.len() == declared.len() && given.iter().zip(declared).all(|(g, d)| *d < 0 || g == d)
}

fn describe(specs: &[TensorSpec]) -> String {
    let items: Vec<String> = specs.iter().map(|s| format!("{} {} {:?}", s.name, s.datatype, s.shape)).collect();
    format!("[{}]", items.join(", "))
}

fn names(specs: &[TensorSpec]) -> String {
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    format!("[{}]", names.join(", "))
}

fn spec(name: &str, dtype: &ValueType) -> Result<TensorSpec, String> {
    let ValueType::Tensor { ty, shape, .. } = dtype else {
        return Err(format!("'{name}' is not a tensor ({dtype:?}); only tensors are served"));
    };
    let datatype = match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::String => DataType::Bytes,
        other => return Err(format!("'{name}' has element type {other:?}, which the gateway does not serve yet")),
    };
    Ok(TensorSpec { name: name.to_owned(), datatype, shape: shape.to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TensorData;

    fn sig() -> Signature {
        let spec = |n: &str, d, s: &[i64]| TensorSpec { name: n.into(), datatype: d, shape: s.to_vec() };
        Signature::new(
            vec![spec("a", DataType::Fp32, &[-1, 2]), spec("b", DataType::Int64, &[-1, 1])],
            vec![spec("y", DataType::Fp32, &[-1, 1])],
        )
    }

    fn a(rows: i64) -> Tensor {
        Tensor { name: "a".into(), shape: vec![rows, 2], data: TensorData::Fp32(vec![0.0; rows as usize * 2]) }
    }

    fn b(rows: i64) -> Tensor {
        Tensor { name: "b".into(), shape: vec![rows, 1], data: TensorData::Int64(vec![0; rows as usize]) }
    }

    #[test]
    fn orders_inputs_and_counts_rows() {
        let checked = sig().check(vec![b(3), a(3)], 8).unwrap();
        assert_eq!(checked.rows, 3);
        assert_eq!(checked.tensors[0].name, "a");
    }

    #[test]
    fn names_what_is_wrong() {
        let s = sig();
        let mut wrong_type = b(1);
        wrong_type.name = "a".into();
        wrong_type.shape = vec![1, 2];
        wrong_type.data = TensorData::Int64(vec![0, 0]);
        let mut unknown = a(1);
        unknown.name = "zz".into();
        let mut bad_shape = a(1);
        bad_shape.shape = vec![2, 1];
        let cases = [
            (vec![a(1)], "missing input 'b'"),
            (vec![a(1), b(1), unknown], "unknown input 'zz'"),
            (vec![wrong_type, b(1)], "datatype INT64, the model expects FP32"),
            (vec![bad_shape, b(1)], "shape [2, 1]"),
            (vec![a(2), b(3)], "disagree on the batch dimension"),
            (vec![a(9), b(9)], "exceeds this model's max_batch_size 8"),
            (vec![a(1), a(1), b(1)], "more than once"),
        ];
        for (given, expected) in cases {
            let err = s.check(given, 8).unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} should mention {expected:?}");
        }
    }

    #[test]
    fn compatibility_needs_same_inputs_and_kept_outputs() {
        let base = sig();
        assert!(base.compatible_with(&base).is_ok());
        let mut more_outputs = base.clone();
        more_outputs.outputs.push(TensorSpec { name: "z".into(), datatype: DataType::Fp32, shape: vec![-1, 1] });
        assert!(more_outputs.compatible_with(&base).is_ok(), "adding an output breaks no client");
        assert!(base.compatible_with(&more_outputs).unwrap_err().contains("z FP32 [-1, 1]"));
        let mut wider = base.clone();
        wider.inputs[0].shape = vec![-1, 3];
        assert!(wider.compatible_with(&base).unwrap_err().contains("inputs"));
    }

    #[test]
    fn fixed_first_dimension_is_not_batchable() {
        let spec = TensorSpec { name: "x".into(), datatype: DataType::Fp32, shape: vec![1, 4] };
        let s = Signature::new(vec![spec.clone()], vec![spec]);
        assert!(!s.batchable);
        assert!(sig().batchable);
    }
}
