//! The check of a request's tensors against a model's signature (read from its session by
//! [`flywheel_runtime::signature`]).

use flywheel_runtime::signature::names;
pub use flywheel_runtime::signature::{Signature, TensorSpec};

use super::error::ValidationError;
use crate::protocol::Tensor;

/// A request's inputs in the model's order, with the batch size they carry (1 if unbatchable).
#[derive(Debug)]
pub struct CheckedInputs {
    pub tensors: Vec<Tensor>,
    pub rows: usize,
}

/// Checking requests' tensors against a [`Signature`].
pub trait CheckInputs {
    /// Checks `given` against the inputs (names, datatypes, shapes, batch sizes) and returns
    /// them in the model's order. `max_batch_size` 0 means no limit beyond the model's own.
    fn check(&self, given: Vec<Tensor>, max_batch_size: usize) -> Result<CheckedInputs, ValidationError>;
}

impl CheckInputs for Signature {
    fn check(&self, given: Vec<Tensor>, max_batch_size: usize) -> Result<CheckedInputs, ValidationError> {
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
        let rows = if self.batchable { batch_rows(&tensors, max_batch_size)? } else { 1 };
        Ok(CheckedInputs { tensors, rows })
    }
}

fn batch_rows(tensors: &[Tensor], max_batch_size: usize) -> Result<usize, ValidationError> {
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

fn shape_fits(given: &[i64], declared: &[i64]) -> bool {
    given.len() == declared.len() && given.iter().zip(declared).all(|(g, d)| *d < 0 || g == d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{DataType, TensorData};

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
}
