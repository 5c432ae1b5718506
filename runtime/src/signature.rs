//! A model's input/output signature, read from its ONNX Runtime session. (The check of a
//! request's tensors against it is the gateway's: `flywheel_gateway::model::signature`.)

use ort::session::Session;
use ort::value::{TensorElementType, ValueType};

use crate::DataType;

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
}

fn describe(specs: &[TensorSpec]) -> String {
    let items: Vec<String> = specs.iter().map(|s| format!("{} {} {:?}", s.name, s.datatype, s.shape)).collect();
    format!("[{}]", items.join(", "))
}

/// `[a, b]`: the names of `specs`, for messages.
pub fn names(specs: &[TensorSpec]) -> String {
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

    /// Inputs a [-1, 2] FP32 and b [-1, 1] INT64; output y [-1, 1] FP32.
    fn sig() -> Signature {
        let specs = |list: &[(&str, DataType, i64)]| {
            list.iter().map(|(n, d, w)| TensorSpec { name: (*n).into(), datatype: *d, shape: vec![-1, *w] }).collect()
        };
        Signature::new(
            specs(&[("a", DataType::Fp32, 2), ("b", DataType::Int64, 1)]),
            specs(&[("y", DataType::Fp32, 1)]),
        )
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
