//! Tensors between the gRPC messages and the gateway's [`Tensor`]: inputs from
//! `raw_input_contents` (what tritonclient sends: little-endian, BYTES elements each after a
//! 4-byte length) or typed `contents`; outputs always raw (`as_numpy` reads only those). A raw
//! input is decoded straight from the received message's bytes: one copy, as on HTTP's binary
//! path.

use bytes::Bytes;

use super::pb;
use crate::protocol::codec::element_count;
use crate::protocol::{DataType, ProtocolError, RequestedOutput, Tensor, TensorData};
use crate::server::pipeline::{Chosen, Decoded};

/// The request's inputs and requested outputs.
pub fn decode(request: pb::ModelInferRequest) -> Result<Decoded, ProtocolError> {
    let pb::ModelInferRequest { id, inputs, outputs, raw_input_contents: raw, .. } = request;
    if inputs.is_empty() {
        return Err(ProtocolError::Invalid("request has no inputs".to_owned()));
    }
    if !raw.is_empty() && raw.len() != inputs.len() {
        return Err(ProtocolError::Invalid(format!(
            "raw_input_contents has {} entries for {} inputs: give one per input, in order, or none",
            raw.len(),
            inputs.len()
        )));
    }
    let mut raw = raw.into_iter();
    let tensors = inputs.into_iter().map(|input| decode_input(input, raw.next())).collect::<Result<_, _>>()?;
    let outputs = outputs.into_iter().map(|o| RequestedOutput { name: o.name, binary: Some(true) }).collect();
    Ok(Decoded { id: (!id.is_empty()).then_some(id), inputs: tensors, outputs, binary_default: true })
}

fn decode_input(input: pb::model_infer_request::InferInputTensor, raw: Option<Bytes>) -> Result<Tensor, ProtocolError> {
    let name = input.name;
    let invalid = |reason: String| ProtocolError::Invalid(format!("input '{name}': {reason}"));
    let datatype = DataType::parse(&input.datatype)
        .ok_or_else(|| ProtocolError::Invalid(format!("input '{name}' has unknown datatype '{}'", input.datatype)))?;
    if let Some(d) = input.shape.iter().find(|d| **d < 0) {
        return Err(invalid(format!("negative dimension {d} in shape {:?}", input.shape)));
    }
    let data = match (raw, input.contents) {
        (Some(_), Some(c)) if !is_empty(&c) => {
            return Err(invalid("has both contents and raw_input_contents".into()));
        }
        (Some(bytes), _) => TensorData::from_binary(datatype, &bytes).map_err(invalid)?,
        (None, Some(contents)) => typed(datatype, contents).map_err(invalid)?,
        (None, None) => return Err(invalid("has no contents and no raw_input_contents".into())),
    };
    let expected =
        element_count(&input.shape).ok_or_else(|| invalid(format!("shape {:?} is too large", input.shape)))?;
    if data.len() != expected {
        return Err(invalid(format!("has {} elements but shape {:?} needs {expected}", data.len(), input.shape)));
    }
    Ok(Tensor { name, shape: input.shape, data })
}

fn is_empty(c: &pb::InferTensorContents) -> bool {
    c.bool_contents.is_empty()
        && c.int_contents.is_empty()
        && c.int64_contents.is_empty()
        && c.uint_contents.is_empty()
        && c.uint64_contents.is_empty()
        && c.fp32_contents.is_empty()
        && c.fp64_contents.is_empty()
        && c.bytes_contents.is_empty()
}

/// Typed contents in the field the protocol assigns to `datatype` (narrow integers travel
/// widened, and must fit).
fn typed(datatype: DataType, c: pb::InferTensorContents) -> Result<TensorData, String> {
    fn narrow<W: Copy + std::fmt::Display, T: TryFrom<W>>(
        values: Vec<W>,
        datatype: DataType,
    ) -> Result<Vec<T>, String> {
        values.into_iter().map(|v| T::try_from(v).map_err(|_| format!("{v} is not a valid {datatype}"))).collect()
    }
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(c.bool_contents),
        DataType::Int8 => TensorData::Int8(narrow(c.int_contents, datatype)?),
        DataType::Int16 => TensorData::Int16(narrow(c.int_contents, datatype)?),
        DataType::Int32 => TensorData::Int32(c.int_contents),
        DataType::Int64 => TensorData::Int64(c.int64_contents),
        DataType::Uint8 => TensorData::Uint8(narrow(c.uint_contents, datatype)?),
        DataType::Uint16 => TensorData::Uint16(narrow(c.uint_contents, datatype)?),
        DataType::Uint32 => TensorData::Uint32(c.uint_contents),
        DataType::Uint64 => TensorData::Uint64(c.uint64_contents),
        DataType::Fp32 => TensorData::Fp32(c.fp32_contents),
        DataType::Fp64 => TensorData::Fp64(c.fp64_contents),
        DataType::Bytes => TensorData::Bytes(c.bytes_contents),
        DataType::Fp16 => return Err(format!("datatype {datatype} is not supported by this gateway")),
    })
}

/// The answer: every chosen output raw, in order.
pub fn encode(chosen: Chosen<'_>) -> pb::ModelInferResponse {
    let mut outputs = Vec::with_capacity(chosen.outputs.len());
    let mut raw = Vec::with_capacity(chosen.outputs.len());
    for (tensor, _) in &chosen.outputs {
        outputs.push(pb::model_infer_response::InferOutputTensor {
            name: tensor.name.clone(),
            datatype: tensor.data.datatype().as_str().to_owned(),
            shape: tensor.shape.clone(),
            ..Default::default()
        });
        let mut bytes = Vec::with_capacity(tensor.data.len() * tensor.data.datatype().element_bytes());
        tensor.data.write_binary(&mut bytes);
        raw.push(Bytes::from(bytes));
    }
    pb::ModelInferResponse {
        model_name: chosen.mv.model.clone(),
        model_version: chosen.mv.version.to_string(),
        id: chosen.id.unwrap_or_default().to_owned(),
        parameters: Default::default(),
        outputs,
        raw_output_contents: raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, datatype: &str, shape: &[i64]) -> pb::model_infer_request::InferInputTensor {
        pb::model_infer_request::InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn raw_and_typed_inputs_decode_to_the_same_tensors() {
        let mut raw = Vec::new();
        for v in [1.0f32, 2.0, 3.0, 4.0] {
            raw.extend_from_slice(&v.to_le_bytes());
        }
        let mut bytes = Vec::new();
        for s in [&b"ab"[..], b""] {
            bytes.extend_from_slice(&(s.len() as u32).to_le_bytes());
            bytes.extend_from_slice(s);
        }
        let request = pb::ModelInferRequest {
            id: "q".into(),
            inputs: vec![input("x", "FP32", &[2, 2]), input("s", "BYTES", &[2])],
            raw_input_contents: vec![Bytes::from(raw), Bytes::from(bytes)],
            ..Default::default()
        };
        let decoded = decode(request).unwrap();
        assert_eq!(decoded.id.as_deref(), Some("q"));
        assert_eq!(decoded.inputs[0].data, TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0]));
        assert_eq!(decoded.inputs[1].data, TensorData::Bytes(vec![b"ab".to_vec(), Vec::new()]));

        let mut typed = input("x", "INT8", &[3]);
        typed.contents = Some(pb::InferTensorContents { int_contents: vec![-1, 0, 127], ..Default::default() });
        let decoded = decode(pb::ModelInferRequest { inputs: vec![typed], ..Default::default() }).unwrap();
        assert_eq!(decoded.inputs[0].data, TensorData::Int8(vec![-1, 0, 127]));
        assert_eq!(decoded.id, None, "an empty id is none");
    }

    #[test]
    fn bad_inputs_are_refused_naming_the_input_and_the_reason() {
        let mut too_wide = input("x", "UINT8", &[1]);
        too_wide.contents = Some(pb::InferTensorContents { uint_contents: vec![300], ..Default::default() });
        let mut short = input("x", "FP32", &[3]);
        short.contents = Some(pb::InferTensorContents { fp32_contents: vec![1.0], ..Default::default() });
        let cases = [
            (pb::ModelInferRequest::default(), "no inputs"),
            (pb::ModelInferRequest { inputs: vec![too_wide], ..Default::default() }, "300 is not a valid UINT8"),
            (
                pb::ModelInferRequest { inputs: vec![short], ..Default::default() },
                "has 1 elements but shape [3] needs 3",
            ),
            (
                pb::ModelInferRequest { inputs: vec![input("x", "FP99", &[1])], ..Default::default() },
                "unknown datatype",
            ),
            (pb::ModelInferRequest { inputs: vec![input("x", "FP32", &[1])], ..Default::default() }, "no contents"),
            (
                pb::ModelInferRequest {
                    inputs: vec![input("x", "FP32", &[1]), input("y", "FP32", &[1])],
                    raw_input_contents: vec![Bytes::from_static(&[0; 4])],
                    ..Default::default()
                },
                "1 entries for 2 inputs",
            ),
            (
                pb::ModelInferRequest {
                    inputs: vec![input("x", "FP32", &[2])],
                    raw_input_contents: vec![Bytes::from_static(&[0; 7])],
                    ..Default::default()
                },
                "input 'x'",
            ),
        ];
        for (request, expected) in cases {
            let err = decode(request).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(expected), "{err:?} should say {expected:?}");
        }
    }
}
