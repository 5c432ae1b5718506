//! Inference request decoding and response encoding: JSON bodies and Triton's binary tensor
//! extension (`Inference-Header-Content-Length`, `binary_data_size`, `binary_data`).

use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::ProtocolError;
use super::input_json::{Data, InputJson};
use super::tensor::{Tensor, TensorData};
use flywheel_runtime::DataType;

/// A decoded inference request, not yet checked against any model.
#[derive(Debug, Default)]
pub struct InferRequest {
    /// The request's `id`, echoed in the response.
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    /// Outputs the client asked for; empty means all.
    pub outputs: Vec<RequestedOutput>,
    /// Request-level `binary_data_output`: every output in binary unless it says otherwise.
    pub binary_output_default: bool,
}

/// One entry of the request's `outputs`.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestedOutput {
    pub name: String,
    /// `parameters.binary_data`, if given.
    pub binary: Option<bool>,
}

#[derive(Deserialize)]
struct RequestJson<'a> {
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(borrow)]
    inputs: Vec<InputJson<'a>>,
    #[serde(default)]
    outputs: Vec<OutputJson>,
}

#[derive(Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// Decodes a request body; `header_length` is the `Inference-Header-Content-Length` header, when
/// present: the JSON header is that many bytes and binary tensor data follows it.
pub fn decode_request(body: &[u8], header_length: Option<usize>) -> Result<InferRequest, ProtocolError> {
    let (header, mut binary) = match header_length {
        Some(n) if n > body.len() => {
            return Err(ProtocolError::HeaderLength { given: n, body: body.len() });
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let json: RequestJson<'_> =
        serde_json::from_slice(header).map_err(|e| ProtocolError::MalformedJson(e.to_string()))?;
    if json.inputs.is_empty() {
        return Err(ProtocolError::Invalid("request has no inputs".to_owned()));
    }
    let mut inputs = Vec::with_capacity(json.inputs.len());
    for input in json.inputs {
        inputs.push(decode_input(input, &mut binary)?);
    }
    if !binary.is_empty() {
        return Err(ProtocolError::Invalid(format!(
            "{} bytes of binary data follow the inputs that no input's binary_data_size claims",
            binary.len()
        )));
    }
    let outputs = json
        .outputs
        .into_iter()
        .map(|o| RequestedOutput { binary: o.parameters.get("binary_data").and_then(Value::as_bool), name: o.name })
        .collect();
    let binary_output_default = json.parameters.get("binary_data_output").and_then(Value::as_bool).unwrap_or(false);
    Ok(InferRequest { id: json.id, inputs, outputs, binary_output_default })
}

fn decode_input(input: InputJson<'_>, binary: &mut &[u8]) -> Result<Tensor, ProtocolError> {
    let name = input.name;
    let datatype = DataType::parse(&input.datatype)
        .ok_or_else(|| ProtocolError::Invalid(format!("input '{name}' has unknown datatype '{}'", input.datatype)))?;
    if let Some(d) = input.shape.iter().find(|d| **d < 0) {
        return Err(ProtocolError::Invalid(format!(
            "input '{name}' has negative dimension {d} in shape {:?}",
            input.shape
        )));
    }
    let expected = element_count(&input.shape)
        .ok_or_else(|| ProtocolError::Invalid(format!("input '{name}' shape {:?} is too large", input.shape)))?;
    let binary_size = input.parameters.get("binary_data_size");
    let data = match (binary_size, input.data) {
        (Some(size), None) => {
            let size = size.as_u64().ok_or_else(|| {
                ProtocolError::Invalid(format!(
                    "input '{name}' binary_data_size must be a non-negative integer, given {size}"
                ))
            })? as usize;
            if size > binary.len() {
                return Err(ProtocolError::Invalid(format!(
                    "input '{name}' claims {size} bytes of binary data but only {} remain",
                    binary.len()
                )));
            }
            let (mine, rest) = binary.split_at(size);
            *binary = rest;
            TensorData::from_binary(datatype, mine)
        }
        (None, Some(Data::Typed(data))) => data,
        (None, Some(Data::Raw(raw))) => TensorData::from_json_expecting(datatype, raw.get(), expected),
        (Some(_), Some(_)) => {
            return Err(ProtocolError::Invalid(format!("input '{name}' has both data and binary_data_size")));
        }
        (None, None) => return Err(ProtocolError::Invalid(format!("input '{name}' has no data"))),
    }
    .map_err(|e| ProtocolError::Invalid(format!("input '{name}': {e}")))?;
    if data.len() != expected {
        return Err(ProtocolError::Invalid(format!(
            "input '{name}' has {} elements but shape {:?} needs {expected}",
            data.len(),
            input.shape
        )));
    }
    Ok(Tensor { name, shape: input.shape, data })
}

/// Product of the dimensions, `None` on overflow.
pub fn element_count(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, d| acc.checked_mul(usize::try_from(*d).ok()?))
}

/// What the response names besides its outputs.
pub struct ResponseHeader<'a> {
    pub model_name: &'a str,
    pub model_version: &'a str,
    pub id: Option<&'a str>,
}

/// An encoded response body and, when it carries binary outputs, the JSON header length.
pub struct EncodedResponse {
    pub body: Vec<u8>,
    pub header_length: Option<usize>,
}

/// Encodes `outputs` (each with its binary flag) as a JSON response, binary outputs appended
/// after the JSON header.
pub fn encode_response(header: &ResponseHeader<'_>, outputs: &[(&Tensor, bool)]) -> EncodedResponse {
    let mut json = Vec::with_capacity(128 + outputs.iter().map(|(t, _)| t.data.len() * 12).sum::<usize>());
    let mut binary = Vec::new();
    json.extend_from_slice(b"{\"model_name\":");
    write_json_string(header.model_name, &mut json);
    json.extend_from_slice(b",\"model_version\":");
    write_json_string(header.model_version, &mut json);
    if let Some(id) = header.id {
        json.extend_from_slice(b",\"id\":");
        write_json_string(id, &mut json);
    }
    json.extend_from_slice(b",\"outputs\":[");
    for (index, (tensor, as_binary)) in outputs.iter().enumerate() {
        if index > 0 {
            json.push(b',');
        }
        json.extend_from_slice(b"{\"name\":");
        write_json_string(&tensor.name, &mut json);
        json.extend_from_slice(b",\"datatype\":\"");
        json.extend_from_slice(tensor.data.datatype().as_str().as_bytes());
        json.extend_from_slice(b"\",\"shape\":");
        let _ = serde_json::to_writer(&mut json, &tensor.shape);
        if *as_binary {
            let before = binary.len();
            tensor.data.write_binary(&mut binary);
            json.extend_from_slice(
                format!(",\"parameters\":{{\"binary_data_size\":{}}}}}", binary.len() - before).as_bytes(),
            );
        } else {
            json.extend_from_slice(b",\"data\":");
            tensor.data.write_json(&mut json);
            json.push(b'}');
        }
    }
    json.extend_from_slice(b"]}");
    if binary.is_empty() && !outputs.iter().any(|(_, b)| *b) {
        return EncodedResponse { body: json, header_length: None };
    }
    let header_length = json.len();
    json.extend_from_slice(&binary);
    EncodedResponse { body: json, header_length: Some(header_length) }
}

fn write_json_string(s: &str, out: &mut Vec<u8>) {
    // Serialising a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_json_inputs_and_outputs_selection() {
        let body = br#"{"id":"r1","inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]]}],
            "outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;
        let req = decode_request(body, None).unwrap();
        assert_eq!(req.id.as_deref(), Some("r1"));
        assert_eq!(req.inputs[0].shape, vec![2, 2]);
        assert_eq!(req.inputs[0].data, TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0]));
        assert_eq!(req.outputs, vec![RequestedOutput { name: "y".into(), binary: Some(true) }]);
    }

    #[test]
    fn decodes_binary_inputs_in_order() {
        let header = br#"{"inputs":[{"name":"a","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}},{"name":"b","shape":[1],"datatype":"FP64","parameters":{"binary_data_size":8}}]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&3i32.to_le_bytes());
        body.extend_from_slice(&(-4i32).to_le_bytes());
        body.extend_from_slice(&1.5f64.to_le_bytes());
        let req = decode_request(&body, Some(header.len())).unwrap();
        assert_eq!(req.inputs[0].data, TensorData::Int32(vec![3, -4]));
        assert_eq!(req.inputs[1].data, TensorData::Fp64(vec![1.5]));
    }

    #[test]
    fn rejects_each_malformed_request_with_its_reason() {
        let cases: [(&[u8], &str); 7] = [
            (b"{not json", "malformed"),
            (br#"{"inputs":[]}"#, "no inputs"),
            (br#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}]}"#, "needs 3"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP99","data":[1]}]}"#, "unknown datatype 'FP99'"),
            (br#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#, "negative dimension"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#, "has no data"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT64","data":["a"]}]}"#, "not a valid INT64"),
        ];
        for (body, expected) in cases {
            let err = decode_request(body, None).unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} should mention {expected:?}");
        }
        let err = decode_request(b"{}", Some(10)).unwrap_err().to_string();
        assert!(err.contains("Inference-Header-Content-Length"), "{err}");
    }

    #[test]
    fn encodes_binary_outputs_after_the_json_header() {
        let t = Tensor { name: "y".into(), shape: vec![2], data: TensorData::Fp32(vec![1.0, 2.0]) };
        let header = ResponseHeader { model_name: "m", model_version: "3", id: Some("q") };
        let out = encode_response(&header, &[(&t, true)]);
        let n = out.header_length.unwrap();
        let json: Value = serde_json::from_slice(&out.body[..n]).unwrap();
        assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(json["id"], "q");
        assert_eq!(&out.body[n..n + 4], &1.0f32.to_le_bytes());
        let plain = encode_response(&header, &[(&t, false)]);
        assert!(plain.header_length.is_none());
        let json: Value = serde_json::from_slice(&plain.body).unwrap();
        assert_eq!(json["outputs"][0]["data"], serde_json::json!([1.0, 2.0]));
        assert_eq!(json["model_version"], "3");
    }
}
