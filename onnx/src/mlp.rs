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

    /// The inverse of [`Self::fold_standardisation`]: the first layer for inputs standardised
    /// with `mean` and `std` (so training can continue from a raw-feature model).
    pub fn unfold_standardisation(&mut self, mean: &[f32], std: &[f32]) {
        let Some(first) = self.layers.first_mut() else { return };
        for i in 0..first.inputs {
            let s = if std[i] > 0.0 { std[i] } else { 1.0 };
            for o in 0..first.outputs {
                let w = first.weights[i * first.outputs + o];
                first.bias[o] += w * mean[i];
                first.weights[i * first.outputs + o] = w * s;
            }
        }
    }

    /// Reads back a model that [`Self::to_onnx`] wrote (Gemm layers with ReLU between them and an
    /// optional final Sigmoid); any other graph is an error saying why.
    pub fn from_onnx(bytes: &[u8]) -> Result<Self, String> {
        use prost::Message;
        let model = crate::proto::ModelProto::decode(bytes).map_err(|e| format!("not an ONNX model: {e}"))?;
        let graph = model.graph.ok_or("the model has no graph")?;
        let (Some(input), Some(output)) = (graph.input.first(), graph.output.first()) else {
            return Err("the graph has no input or output".into());
        };
        let find = |name: &str| graph.initializer.iter().find(|t| t.name == name);
        let mut layers = Vec::new();
        while let (Some(w), Some(b)) =
            (find(&format!("layer{}.weight", layers.len())), find(&format!("layer{}.bias", layers.len())))
        {
            let (inputs, outputs) = match w.dims.as_slice() {
                [i, o] if *i > 0 && *o > 0 => (*i as usize, *o as usize),
                other => return Err(format!("layer{} weight has dims {other:?}", layers.len())),
            };
            let floats = |raw: &[u8]| -> Vec<f32> {
                raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            };
            let (weights, bias) = (floats(&w.raw_data), floats(&b.raw_data));
            if weights.len() != inputs * outputs || bias.len() != outputs {
                return Err(format!(
                    "layer{} has {} weights and {} biases for {inputs}x{outputs}",
                    layers.len(),
                    weights.len(),
                    bias.len()
                ));
            }
            layers.push(Dense { inputs, outputs, weights, bias });
        }
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        let sigmoid_output = ops.last() == Some(&"Sigmoid");
        let expected: Vec<&str> = (0..layers.len())
            .flat_map(|i| if i + 1 < layers.len() { vec!["Gemm", "Relu"] } else { vec!["Gemm"] })
            .chain(sigmoid_output.then_some("Sigmoid"))
            .collect();
        if layers.is_empty() || ops != expected {
            return Err(format!("not a Flywheel MLP graph (operators {ops:?})"));
        }
        let batch = match input.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()).and_then(|t| t.shape.as_ref()) {
            Some(shape) => match shape.dim.first().and_then(|d| d.dim_value) {
                Some(n) => BatchDim::Fixed(n),
                None => BatchDim::Dynamic,
            },
            None => BatchDim::Dynamic,
        };
        Ok(Self { input_name: input.name.clone(), output_name: output.name.clone(), layers, sigmoid_output, batch })
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
    fn reading_back_an_export_gives_the_same_model_and_unfolding_undoes_folding() {
        let mut mlp = Mlp::random(&[3, 4, 1], 9);
        mlp.sigmoid_output = true;
        let back = Mlp::from_onnx(&mlp.to_onnx(1)).unwrap();
        assert_eq!(back, mlp);
        let (mean, std) = ([1.0, -2.0, 0.5], [2.0, 0.5, 1.0]);
        let mut folded = mlp.clone();
        folded.fold_standardisation(&mean, &std);
        folded.unfold_standardisation(&mean, &std);
        for (a, b) in folded.layers[0]
            .weights
            .iter()
            .chain(&folded.layers[0].bias)
            .zip(mlp.layers[0].weights.iter().chain(&mlp.layers[0].bias))
        {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert!(Mlp::from_onnx(b"not onnx").is_err());
        let other = crate::fixtures::multi_io();
        assert!(Mlp::from_onnx(&other).unwrap_err().contains("MLP"), "a foreign graph is refused");
    }

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
