//! Scoring rows with ONNX Runtime — the same runtime and session settings the gateway serves
//! with — so the export check and the gate judge exactly what would be served.

use std::path::Path;

use flywheel_runtime::{DataType, Signature, TensorSpec, open_session};
use ort::session::Session;
use ort::value::Tensor as OrtTensor;

/// Rows per `run` call.
const CHUNK: usize = 4096;

/// A binary classifier in ONNX: one FP32 input `[-1, features]`, its first output FP32 `[-1, 1]`
/// (the positive-class probability).
pub struct Scorer {
    session: Session,
    pub signature: Signature,
    input: String,
    output: String,
    pub features: usize,
}

impl Scorer {
    /// Opens `bytes`; `ort_library` as for the gateway (`None`: the project's `.ort/lib`).
    pub fn open(bytes: &[u8], ort_library: Option<&Path>) -> Result<Self, String> {
        let env = flywheel_runtime::init(ort_library).map_err(|e| e.to_string())?;
        let session = open_session(&env, bytes, 1)?;
        let signature = Signature::from_session(&session)?;
        let (input, features) = match signature.inputs.as_slice() {
            [TensorSpec { name, datatype: DataType::Fp32, shape }] if shape.len() == 2 && shape[1] > 0 => {
                (name.clone(), shape[1] as usize)
            }
            other => {
                return Err(format!(
                    "the trainer scores models with one FP32 input [-1, features]; this one has {other:?}"
                ));
            }
        };
        let output = match signature.outputs.first() {
            Some(TensorSpec { name, datatype: DataType::Fp32, shape }) if shape.len() == 2 && shape[1] == 1 => {
                name.clone()
            }
            other => {
                return Err(format!("the first output must be FP32 [-1, 1] (a probability); this one is {other:?}"));
            }
        };
        Ok(Self { session, signature, input, output, features })
    }

    /// The model's probability for each row.
    pub fn score(&mut self, rows: &[Vec<f64>]) -> Result<Vec<f64>, String> {
        let mut scores = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(CHUNK) {
            if let Some(bad) = chunk.iter().find(|r| r.len() != self.features) {
                return Err(format!("a row has {} features; the model takes {}", bad.len(), self.features));
            }
            let data: Vec<f32> = chunk.iter().flatten().map(|v| *v as f32).collect();
            let tensor = OrtTensor::from_array(([chunk.len(), self.features], data)).map_err(|e| e.to_string())?;
            let outputs = self.session.run(ort::inputs![self.input.as_str() => tensor]).map_err(|e| e.to_string())?;
            let (_, values) = outputs[self.output.as_str()].try_extract_tensor::<f32>().map_err(|e| e.to_string())?;
            scores.extend(values.iter().map(|v| f64::from(*v)));
        }
        Ok(scores)
    }
}
