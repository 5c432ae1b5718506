//! Multi-layer perceptrons: a reference forward pass in Rust and the ONNX export
//! (`Gemm` + `Relu`, optional final `Sigmoid`), with input standardisation folded in.

use crate::graph::{Attr, Dim, ElemType, GraphBuilder};

/// One fully connected layer; `weights` is `[inputs, outputs]` row-major (ONNX `Gemm`, `transB = 0`).
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    pub inputs: usize,
    pub outputs: usize,
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
}

/// How the exported model's first dimension is declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchDim {
    /// `batch` symbolic dimension: the gateway may batch requests together.
    Dynamic,
    /// A fixed size: the gateway runs requests one at a time.
    Fixed(i64),
}

/// An MLP with ReLU between layers and an optional sigmoid on the output.
#[derive(Clone, Debug, PartialEq)]
pub struct Mlp {
    pub input_name: String,
    pub output_name: String,
    pub layers: Vec<Dense>,
    pub sigmoid_output: bool,
    pub batch: BatchDim,
}

impl Mlp {
    /// A randomly initialised MLP (He-style uniform init) with layer widths `widths`
    /// (first = features, last = outputs), deterministic in `seed`.
    pub fn random(widths: &[usize], seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let layers = widths
            .windows(2)
            .map(|w| {
                let (inputs, outputs) = (w[0], w[1]);
                let scale = (6.0 / inputs as f32).sqrt();
                Dense {
                    inputs,
                    outputs,
                    weights: (0..inputs * outputs).map(|_| (rng.f32() * 2.0 - 1.0) * scale).collect(),
                    bias: (0..outputs).map(|_| (rng.f32() - 0.5) * 0.1).collect(),
                }
            })
            .collect();
        Self {
            input_name: "input".to_owned(),
            output_name: "output".to_owned(),
            layers,
            sigmoid_output: true,
            batch: BatchDim::Dynamic,
        }
    }

    /// Number of input features.
    pub fn features(&self) -> usize {
        self.layers.first().map_or(0, |l| l.inputs)
    }

    /// Number of outputs per row.
    pub fn outputs(&self) -> usize {
        self.layers.last().map_or(0, |l| l.outputs)
    }

    /// Folds `(x - mean) / std` into the first layer so the exported graph takes raw features.
    pub fn fold_standardisation(&mut self, mean: &[f32], std: &[f32]) {
        let Some(first) = self.layers.first_mut() else { return };
        for i in 0..first.inputs {
            let s = if std[i] > 0.0 { std[i] } else { 1.0 };
            for o in 0..first.outputs {
                let w = first.weights[i * first.outputs + o] / s;
                first.weights[i * first.outputs + o] = w;
                first.bias[o] -= w * mean[i];
            }
        }
    }

    /// Reference forward pass over `rows` (row-major, `features()` values per row).
    pub fn forward(&self, rows: &[f32]) -> Vec<f32> {
        let mut x = rows.to_vec();
        let last = self.layers.len().saturating_sub(1);
        for (index, layer) in self.layers.iter().enumerate() {
            let n = x.len() / layer.inputs;
            let mut y = vec![0.0f32; n * layer.outputs];
            for r in 0..n {
                for o in 0..layer.outputs {
                    let mut acc = layer.bias[o];
                    for i in 0..layer.inputs {
                        acc += x[r * layer.inputs + i] * layer.weights[i * layer.outputs + o];
                    }
                    y[r * layer.outputs + o] = if index < last {
                        acc.max(0.0)
                    } else if self.sigmoid_output {
                        1.0 / (1.0 + (-acc).exp())
                    } else {
                        acc
                    };
                }
            }
            x = y;
        }
        x
    }

    /// Encodes the MLP as an ONNX model.
    pub fn to_onnx(&self, model_version: i64) -> Vec<u8> {
        let batch = match self.batch {
            BatchDim::Dynamic => Dim::batch(),
            BatchDim::Fixed(n) => Dim::Fixed(n),
        };
        let mut g = GraphBuilder::new("mlp");
        g.input(&self.input_name, ElemType::Float, &[batch.clone(), Dim::Fixed(self.features() as i64)]);
        g.output(&self.output_name, ElemType::Float, &[batch, Dim::Fixed(self.outputs() as i64)]);
        let mut current = self.input_name.clone();
        let last = self.layers.len().saturating_sub(1);
        for (index, layer) in self.layers.iter().enumerate() {
            let (w, b) = (format!("layer{index}.weight"), format!("layer{index}.bias"));
            g.initializer_f32(&w, &[layer.inputs as i64, layer.outputs as i64], &layer.weights);
            g.initializer_f32(&b, &[layer.outputs as i64], &layer.bias);
            let is_last = index == last;
            let gemm_out =
                if is_last && !self.sigmoid_output { self.output_name.clone() } else { format!("layer{index}.gemm") };
            g.node("Gemm", &[&current, &w, &b], &[&gemm_out], &[("transB", Attr::Int(0))]);
            current = if !is_last {
                let relu = format!("layer{index}.relu");
                g.node("Relu", &[&gemm_out], &[&relu], &[]);
                relu
            } else if self.sigmoid_output {
                g.node("Sigmoid", &[&gemm_out], &[&self.output_name], &[]);
                self.output_name.clone()
            } else {
                gemm_out
            };
        }
        g.encode(model_version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_standardisation_matches_standardising_inputs() {
        let mlp = Mlp::random(&[3, 4, 1], 7);
        let (mean, std) = ([1.0, -2.0, 0.5], [2.0, 0.5, 1.0]);
        let raw = [3.0, 1.0, -1.0, 0.0, 0.0, 2.0];
        let standardised: Vec<f32> = raw.iter().enumerate().map(|(k, v)| (v - mean[k % 3]) / std[k % 3]).collect();
        let mut folded = mlp.clone();
        folded.fold_standardisation(&mean, &std);
        let (a, b) = (mlp.forward(&standardised), folded.forward(&raw));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
    }

    #[test]
    fn export_declares_one_gemm_per_layer() {
        let bytes = Mlp::random(&[16, 32, 1], 1).to_onnx(1);
        let model: crate::proto::ModelProto = prost::Message::decode(bytes.as_slice()).unwrap();
        let graph = model.graph.unwrap();
        let gemms = graph.node.iter().filter(|n| n.op_type == "Gemm").count();
        assert_eq!(gemms, 2);
        assert_eq!(graph.initializer.len(), 4);
        assert_eq!(graph.output[0].name, "output");
    }
}
