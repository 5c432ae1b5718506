//! Training with burn on CPU (ndarray backend): logistic regression (no hidden layers) or an MLP,
//! on standardised inputs, full-batch Adam with early stopping on a time-ordered validation tail;
//! the result is exported as a `flywheel_onnx::Mlp` with the standardisation folded in, so the
//! ONNX model takes raw features.

use burn::backend::{Autodiff, NdArray};
use burn::module::Module;
use burn::nn::loss::BinaryCrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use flywheel_onnx::{BatchDim, Dense, Mlp};
use serde::{Deserialize, Serialize};

use crate::dataset::Split;

type Train = Autodiff<NdArray<f32>>;

/// Hyperparameters (recorded in the manifest).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Hidden layer widths; empty trains a logistic regression.
    pub hidden: Vec<usize>,
    pub epochs: usize,
    pub learning_rate: f64,
    /// Epochs without validation improvement before stopping.
    pub patience: usize,
    /// Share of the (time-ordered) training rows kept for validation.
    pub validation_fraction: f64,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self { hidden: vec![32], epochs: 300, learning_rate: 0.02, patience: 20, validation_fraction: 0.1, seed: 1 }
    }
}

/// A trained model and how training went.
#[derive(Clone, Debug)]
pub struct Trained {
    /// Takes raw features; outputs a probability.
    pub model: Mlp,
    pub epochs_run: usize,
    pub best_validation_loss: f64,
}

#[derive(Module, Debug)]
struct Net<B: Backend> {
    layers: Vec<Linear<B>>,
    act: Relu,
}

impl<B: Backend> Net<B> {
    fn new(widths: &[usize], device: &B::Device) -> Self {
        let layers = widths.windows(2).map(|w| LinearConfig::new(w[0], w[1]).init(device)).collect();
        Self { layers, act: Relu::new() }
    }

    /// Logits.
    fn forward(&self, mut x: Tensor<B, 2>) -> Tensor<B, 2> {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = self.act.forward(x);
            }
        }
        x
    }
}

fn standardise(split: &Split) -> (Vec<f32>, Vec<f32>) {
    let features = split.x.first().map_or(0, Vec::len);
    let n = split.x.len().max(1) as f64;
    let mean: Vec<f64> = (0..features).map(|j| split.x.iter().map(|r| r[j]).sum::<f64>() / n).collect();
    let std: Vec<f64> = (0..features)
        .map(|j| (split.x.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / n).sqrt().max(1e-6))
        .collect();
    (mean.iter().map(|m| *m as f32).collect(), std.iter().map(|s| *s as f32).collect())
}

fn tensors<B: Backend>(
    rows: &[Vec<f64>],
    labels: &[f64],
    mean: &[f32],
    std: &[f32],
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 2, Int>) {
    let f = mean.len();
    let x: Vec<f32> =
        rows.iter().flat_map(|r| r.iter().enumerate().map(|(j, v)| (*v as f32 - mean[j]) / std[j])).collect();
    let y: Vec<i64> = labels.iter().map(|y| i64::from(*y >= 0.5)).collect();
    (
        Tensor::from_data(TensorData::new(x, [rows.len(), f]), device),
        Tensor::from_data(TensorData::new(y, [labels.len(), 1]), device),
    )
}

/// Trains on `split` (rows in time order; the newest `validation_fraction` validate).
pub fn train(split: &Split, config: &TrainConfig) -> Trained {
    let device = Default::default();
    <Train as Backend>::seed(&device, config.seed);
    let features = split.x.first().map_or(0, Vec::len);
    let (mean, std) = standardise(split);
    let cut = split.x.len() - ((split.x.len() as f64 * config.validation_fraction) as usize).min(split.x.len() / 2);
    let (xt, yt) = tensors::<Train>(&split.x[..cut], &split.y[..cut], &mean, &std, &device);
    let (xv, yv) = tensors::<Train>(&split.x[cut..], &split.y[cut..], &mean, &std, &device);
    let mut widths = vec![features];
    widths.extend(&config.hidden);
    widths.push(1);
    let mut net = Net::<Train>::new(&widths, &device);
    let mut optim = AdamConfig::new().init();
    let loss = BinaryCrossEntropyLossConfig::new().with_logits(true).init(&device);
    let (mut best, mut best_net, mut since_best, mut epochs_run) = (f64::INFINITY, net.clone(), 0, 0);
    for _ in 0..config.epochs {
        epochs_run += 1;
        let l = loss.forward(net.forward(xt.clone()), yt.clone());
        let grads = GradientsParams::from_grads(l.backward(), &net);
        net = optim.step(config.learning_rate, net, grads);
        let validation = f64::from(loss.forward(net.forward(xv.clone()), yv.clone()).into_scalar());
        if validation < best - 1e-6 {
            (best, best_net, since_best) = (validation, net.clone(), 0);
        } else {
            since_best += 1;
            if since_best >= config.patience {
                break;
            }
        }
    }
    let layers = best_net
        .layers
        .iter()
        .map(|l| {
            let [inputs, outputs] = l.weight.val().dims();
            let weights = l.weight.val().into_data().to_vec::<f32>().unwrap_or_default();
            let bias = l
                .bias
                .as_ref()
                .map(|b| b.val().into_data().to_vec::<f32>().unwrap_or_default())
                .unwrap_or_else(|| vec![0.0; outputs]);
            Dense { inputs, outputs, weights, bias }
        })
        .collect();
    let mut model = Mlp {
        input_name: "input".into(),
        output_name: "output".into(),
        layers,
        sigmoid_output: true,
        batch: BatchDim::Dynamic,
    };
    model.fold_standardisation(&mean, &std);
    Trained { model, epochs_run, best_validation_loss: best }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{DriftKind, Synthetic};

    fn split(rows: usize, seed: u64) -> Split {
        let data: Vec<_> = Synthetic { seed, drift: DriftKind::None, onset: 0, ramp: 0 }.stream().take(rows).collect();
        Split {
            x: data.iter().map(|r| r.features.to_vec()).collect(),
            y: data.iter().map(|r| r.label).collect(),
            time_us: (0..rows as i64).collect(),
        }
    }

    #[test]
    fn learns_the_synthetic_label_function_and_exports_what_it_learnt() {
        let (train_rows, holdout) = (split(6000, 1), split(3000, 2));
        let config = TrainConfig { hidden: vec![16], epochs: 150, ..TrainConfig::default() };
        let trained = train(&train_rows, &config);
        let scores: Vec<f64> = holdout
            .x
            .iter()
            .map(|x| f64::from(trained.model.forward(&x.iter().map(|v| *v as f32).collect::<Vec<_>>())[0]))
            .collect();
        let auc = flywheel_shadow::roc_auc(&scores, &holdout.y);
        // The true probabilities reach AUC ≈ 0.8 on this data; a fitted model gets close.
        let truth: Vec<f64> = Synthetic { seed: 2, drift: DriftKind::None, onset: 0, ramp: 0 }
            .stream()
            .take(3000)
            .map(|r| r.probability)
            .collect();
        let best = flywheel_shadow::roc_auc(&truth, &holdout.y);
        assert!(auc > best - 0.05, "holdout AUC {auc:.3}, true-probability AUC {best:.3}");
        assert!(trained.epochs_run <= 150 && trained.best_validation_loss.is_finite());
    }
}
