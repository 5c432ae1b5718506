//! The physical limit: the same model run by ONNX Runtime in this process, same thread settings,
//! including building the input tensor and copying the output out (what any server must do).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use ort::session::Session;
use ort::value::Tensor;

use crate::summary::{Summary, new_histogram};

/// Runs `rows`-row inferences back to back for `duration` after `warmup`.
pub fn run(
    model: &Path,
    features: usize,
    rows: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Summary> {
    // The gateway's own lookup: FLYWHEEL_ORT_LIBRARY or the project's .ort/lib.
    let explicit = std::env::var_os("FLYWHEEL_ORT_LIBRARY").map(std::path::PathBuf::from);
    let env = flywheel_runtime::init(explicit.as_deref()).map_err(|e| anyhow!("{e}"))?;
    let mut session = Session::builder(&env)
        .map_err(|e| anyhow!("{e}"))?
        .with_intra_threads(1)
        .map_err(|e| anyhow!("{e}"))?
        .with_inter_threads(1)
        .map_err(|e| anyhow!("{e}"))?
        .commit_from_file(model)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("loading {}", model.display()))?;
    let mut rng = fastrand::Rng::with_seed(1);
    let data: Vec<f32> = (0..rows * features).map(|_| rng.f32()).collect();
    let mut hist = new_histogram();
    let mut sink = 0.0f32;
    let start = Instant::now();
    let mut measured_from = None;
    loop {
        let now = Instant::now();
        if now - start >= warmup + duration {
            break;
        }
        if measured_from.is_none() && now - start >= warmup {
            measured_from = Some(now);
        }
        let t0 = Instant::now();
        let input = Tensor::from_array((vec![rows as i64, features as i64], data.clone()))?;
        let outputs = session.run(ort::inputs![input])?;
        let out: Vec<f32> = outputs[0].try_extract_tensor::<f32>()?.1.to_vec();
        sink += out[0];
        if measured_from.is_some() {
            hist.record(t0.elapsed().as_nanos() as u64).ok();
        }
    }
    std::hint::black_box(sink);
    let elapsed = measured_from.map_or(duration, |t| t.elapsed());
    Ok(Summary::from_histogram(&hist, Default::default(), rows, elapsed))
}
