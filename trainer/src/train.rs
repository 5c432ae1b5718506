//! Training with burn: logistic regression (no hidden layers) or an MLP, on standardised inputs,
//! Adam on full or mini batches, optional positive-class weighting, early stopping on a
//! time-ordered validation tail. The result is exported as a `flywheel_onnx::Mlp` with the
//! standardisation folded in, so the ONNX model takes raw features. Runs on CPU (ndarray) or,
//! when built with the `cuda` feature and a usable GPU is found, on CUDA (see [`crate::device`]).

use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use flywheel_onnx::{BatchDim, Dense, Mlp};
use serde::{Deserialize, Serialize};

use crate::dataset::Split;
use crate::device::{DeviceChoice, Picked};

/// Hyperparameters (recorded in the manifest).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Hidden layer widths; empty trains a logistic regression.
    pub hidden: Vec<usize>,
    pub epochs: usize,
    pub learning_rate: f64,
    /// Rows per optimiser step; 0 uses every training row (full batch).
    pub batch_size: usize,
    /// Loss weight of positive rows relative to negative ones (1: unweighted, keeps the
    /// probabilities calibrated; larger: more recall on a rare class).
    pub positive_weight: f64,
    /// Epochs without validation improvement before stopping.
    pub patience: usize,
    /// Share of the (time-ordered) training rows kept for validation.
    pub validation_fraction: f64,
    pub seed: u64,
    /// `auto` (CUDA when built in and usable, else CPU), `cpu` or `cuda`.
    pub device: DeviceChoice,
    /// Start from the champion's weights when its layers have the configured widths.
    pub warm_start: bool,
    /// With `device = "auto"`, smaller training sets stay on CPU: compiling the GPU kernels
    /// costs seconds, more than such a job saves (measured in docs/TRAINER.md).
    pub min_rows_for_gpu: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            hidden: vec![32],
            epochs: 300,
            learning_rate: 0.02,
            batch_size: 0,
            positive_weight: 1.0,
            patience: 20,
            validation_fraction: 0.1,
            seed: 1,
            device: DeviceChoice::Auto,
            warm_start: true,
            min_rows_for_gpu: 50_000,
        }
    }
}

impl TrainConfig {
    /// Checks the values; the message names the key and the value.
    pub fn validate(&self) -> Result<(), String> {
        if self.epochs == 0 {
            return Err("epochs must be at least 1, given 0".into());
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(format!("learning_rate must be a positive number, given {}", self.learning_rate));
        }
        if !(self.positive_weight > 0.0 && self.positive_weight.is_finite()) {
            return Err(format!("positive_weight must be a positive number, given {}", self.positive_weight));
        }
        if !(0.0..0.5).contains(&self.validation_fraction) {
            return Err(format!("validation_fraction must be in [0, 0.5), given {}", self.validation_fraction));
        }
        if self.hidden.contains(&0) {
            return Err(format!("hidden widths must be at least 1, given {:?}", self.hidden));
        }
        Ok(())
    }
}

/// A trained model and how training went.
#[derive(Clone, Debug)]
pub struct Trained {
    /// Takes raw features; outputs a probability.
    pub model: Mlp,
    pub epochs_run: usize,
    pub best_validation_loss: f64,
    /// Where it ran (`cpu`, `cuda:0`) and, when the choice was not what was asked, why.
    pub device: Picked,
    pub train_rows: usize,
    pub seconds: f64,
    /// Whether training started from given weights, or why not.
    pub warm_start: Option<String>,
}

impl Trained {
    /// Training throughput: rows × epochs per second.
    pub fn row_epochs_per_second(&self) -> f64 {
        (self.train_rows * self.epochs_run) as f64 / self.seconds.max(1e-9)
    }
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

/// Binary cross-entropy on logits, weighted per row: mean(w · (max(z, 0) − z·y + ln(1 + e^−|z|))).
fn weighted_bce<B: Backend>(logits: Tensor<B, 2>, y: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 1> {
    let softplus = logits.clone().abs().neg().exp().add_scalar(1.0).log();
    let loss = logits.clone().clamp_min(0.0) - logits * y + softplus;
    (loss * w).mean()
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

/// Standardised features, labels and per-row loss weights (normalised to mean 1).
struct Tensors<B: Backend> {
    x: Tensor<B, 2>,
    y: Tensor<B, 2>,
    w: Tensor<B, 2>,
    rows: usize,
}

impl<B: Backend> Tensors<B> {
    fn new(
        rows: &[Vec<f64>],
        labels: &[f64],
        scale: (&[f32], &[f32]),
        positive_weight: f64,
        device: &B::Device,
    ) -> Self {
        let (mean, std) = scale;
        let f = mean.len();
        let x: Vec<f32> =
            rows.iter().flat_map(|r| r.iter().enumerate().map(|(j, v)| (*v as f32 - mean[j]) / std[j])).collect();
        let y: Vec<f32> = labels.iter().map(|y| if *y >= 0.5 { 1.0 } else { 0.0 }).collect();
        let raw: Vec<f64> = y.iter().map(|y| if *y > 0.5 { positive_weight } else { 1.0 }).collect();
        let mean_weight = raw.iter().sum::<f64>() / raw.len().max(1) as f64;
        let w: Vec<f32> = raw.iter().map(|w| (w / mean_weight) as f32).collect();
        let n = rows.len();
        Self {
            x: Tensor::from_data(TensorData::new(x, [n, f]), device),
            y: Tensor::from_data(TensorData::new(y, [n, 1]), device),
            w: Tensor::from_data(TensorData::new(w, [n, 1]), device),
            rows: n,
        }
    }

    /// The rows in the order `indices` gives, with one gather per tensor.
    fn permuted(&self, indices: &[i32], device: &B::Device) -> [Tensor<B, 2>; 3] {
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(indices.to_vec(), [indices.len()]), device);
        [self.x.clone().select(0, idx.clone()), self.y.clone().select(0, idx.clone()), self.w.clone().select(0, idx)]
    }
}

/// Trains on `split` (rows in time order; the newest `validation_fraction` validate) on the
/// device `config.device` picks, from a random start.
pub fn train(split: &Split, config: &TrainConfig) -> Result<Trained, String> {
    train_from(split, config, None)
}

/// As [`train`], starting from `init` (a raw-feature model, e.g. the champion) when
/// `config.warm_start` is on and its layer widths are the configured ones.
pub fn train_from(split: &Split, config: &TrainConfig, init: Option<&Mlp>) -> Result<Trained, String> {
    config.validate()?;
    if split.x.len() < 10 {
        return Err(format!("{} training rows; at least 10 are needed", split.x.len()));
    }
    let picked = crate::device::pick(config.device)?;
    #[cfg(feature = "cuda")]
    let picked = match picked.kind {
        crate::device::Kind::Cuda(_)
            if config.device == DeviceChoice::Auto && split.x.len() < config.min_rows_for_gpu =>
        {
            crate::device::Picked::cpu(Some(format!(
                "training on CPU: {} rows is below min_rows_for_gpu = {} (GPU kernel compilation would cost more)",
                split.x.len(),
                config.min_rows_for_gpu
            )))
        }
        _ => picked,
    };
    let started = Instant::now();
    let mut trained = match &picked.kind {
        crate::device::Kind::Cpu => {
            train_on::<burn::backend::Autodiff<burn::backend::NdArray<f32>>>(split, config, init, &Default::default())
        }
        #[cfg(feature = "cuda")]
        crate::device::Kind::Cuda(index) => train_on::<burn::backend::Autodiff<burn::backend::Cuda<f32, i32>>>(
            split,
            config,
            init,
            &burn::backend::cuda::CudaDevice { index: *index },
        ),
    };
    trained.seconds = started.elapsed().as_secs_f64();
    trained.device = picked;
    Ok(trained)
}

fn train_on<B: AutodiffBackend>(
    split: &Split,
    config: &TrainConfig,
    init: Option<&Mlp>,
    device: &B::Device,
) -> Trained {
    B::seed(device, config.seed);
    let features = split.x.first().map_or(0, Vec::len);
    let (mean, std) = standardise(split);
    let held = ((split.x.len() as f64 * config.validation_fraction) as usize).min(split.x.len() / 2).max(1);
    let cut = split.x.len() - held;
    let scale = (mean.as_slice(), std.as_slice());
    let train = Tensors::<B>::new(&split.x[..cut], &split.y[..cut], scale, config.positive_weight, device);
    let valid = Tensors::<B::InnerBackend>::new(&split.x[cut..], &split.y[cut..], scale, 1.0, device);
    let mut widths = vec![features];
    widths.extend(&config.hidden);
    widths.push(1);
    let mut net = Net::<B>::new(&widths, device);
    let warm_start =
        init.filter(|_| config.warm_start).map(|init| match warm(&mut net, init, &widths, (&mean, &std), device) {
            Ok(()) => "from the given model's weights".to_owned(),
            Err(why) => format!("skipped: {why}"),
        });
    let mut optim = AdamConfig::new().init();
    let mut rng = fastrand::Rng::with_seed(config.seed);
    let bar = indicatif::ProgressBar::new(config.epochs as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("training {bar:30} {pos}/{len} epochs {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut best, mut best_net, mut since_best, mut epochs_run) = (f64::INFINITY, net.valid(), 0, 0);
    let mut order: Vec<i32> = (0..train.rows as i32).collect();
    for _ in 0..config.epochs {
        epochs_run += 1;
        let mut train_loss = 0.0;
        if config.batch_size == 0 || config.batch_size >= train.rows {
            let l = weighted_bce(net.forward(train.x.clone()), train.y.clone(), train.w.clone());
            train_loss = f64::from(l.clone().into_scalar().elem::<f32>());
            let grads = GradientsParams::from_grads(l.backward(), &net);
            net = optim.step(config.learning_rate, net, grads);
        } else {
            // One shuffle (a gather) per epoch, then contiguous slices; the loss is read back
            // once per epoch, not per step (each read waits for the device).
            rng.shuffle(&mut order);
            let [x, y, w] = train.permuted(&order, device);
            let mut last = None;
            for start in (0..train.rows).step_by(config.batch_size) {
                let end = (start + config.batch_size).min(train.rows);
                let l = weighted_bce(
                    net.forward(x.clone().narrow(0, start, end - start)),
                    y.clone().narrow(0, start, end - start),
                    w.clone().narrow(0, start, end - start),
                );
                let grads = GradientsParams::from_grads(l.backward(), &net);
                net = optim.step(config.learning_rate, net, grads);
                last = Some(l);
            }
            if let Some(l) = last {
                train_loss = f64::from(l.into_scalar().elem::<f32>());
            }
        }
        let inner = net.valid();
        let validation = f64::from(
            weighted_bce(inner.forward(valid.x.clone()), valid.y.clone(), valid.w.clone()).into_scalar().elem::<f32>(),
        );
        bar.inc(1);
        bar.set_message(format!("loss {train_loss:.4} validation {validation:.4}"));
        if validation < best - 1e-6 {
            (best, best_net, since_best) = (validation, inner, 0);
        } else {
            since_best += 1;
            if since_best >= config.patience {
                break;
            }
        }
    }
    bar.finish_and_clear();
    let mut model = export(&best_net);
    model.fold_standardisation(&mean, &std);
    Trained {
        model,
        epochs_run,
        best_validation_loss: best,
        device: crate::device::Picked::cpu(None),
        train_rows: cut,
        seconds: 0.0,
        warm_start,
    }
}

/// Loads `init`'s weights into `net`, re-expressed for inputs standardised with `scale`.
fn warm<B: Backend>(
    net: &mut Net<B>,
    init: &Mlp,
    widths: &[usize],
    scale: (&[f32], &[f32]),
    device: &B::Device,
) -> Result<(), String> {
    let theirs: Vec<usize> =
        init.layers.iter().map(|l| l.inputs).chain(init.layers.last().map(|l| l.outputs)).collect();
    if theirs != widths || !init.sigmoid_output {
        return Err(format!("its layer widths are {theirs:?}, training wants {widths:?}"));
    }
    let mut init = init.clone();
    init.unfold_standardisation(scale.0, scale.1);
    for (layer, dense) in net.layers.iter_mut().zip(&init.layers) {
        let weight = TensorData::new(dense.weights.clone(), [dense.inputs, dense.outputs]);
        layer.weight = burn::module::Param::from_tensor(Tensor::from_data(weight, device));
        let bias = TensorData::new(dense.bias.clone(), [dense.outputs]);
        layer.bias = Some(burn::module::Param::from_tensor(Tensor::from_data(bias, device)));
    }
    Ok(())
}

fn export<B: Backend>(net: &Net<B>) -> Mlp {
    let layers = net
        .layers
        .iter()
        .map(|l| {
            let [inputs, outputs] = l.weight.val().dims();
            let weights = l.weight.val().into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
            let bias = l
                .bias
                .as_ref()
                .map(|b| b.val().into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default())
                .unwrap_or_else(|| vec![0.0; outputs]);
            Dense { inputs, outputs, weights, bias }
        })
        .collect();
    Mlp {
        input_name: "input".into(),
        output_name: "output".into(),
        layers,
        sigmoid_output: true,
        batch: BatchDim::Dynamic,
    }
}

#[cfg(test)]
#[path = "train_tests.rs"]
mod tests;
