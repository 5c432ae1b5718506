//! Models: ONNX Runtime setup ([`runtime`]), signatures and request checks ([`signature`]),
//! Triton-shaped statistics ([`stats`]) and the routing table that the server reads through one
//! `ArcSwap` load per request ([`table`]). The registry on disk is `flywheel-registry`'s.

pub use flywheel_runtime::error;
/// Finding and loading ONNX Runtime's shared library.
pub use flywheel_runtime::library as runtime;
pub mod score;
pub mod signature;
pub mod stats;
pub mod table;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ort::environment::Environment;
use ort::session::Session;

pub use flywheel_runtime::{ModelError, ValidationError, open_session};
pub use signature::{Signature, TensorSpec};
pub use table::{Arm, RouteError, RoutingTable};

use crate::batch::ort_values::to_ort;
use crate::batch::worker::{self, WorkerContext};
use crate::batch::{BatchQueue, BatchSettings};
use crate::metrics::VersionMetrics;
use crate::protocol::{Tensor, TensorData};
use stats::ModelStats;

/// One loaded model version: its signature, its batch queue (and the threads behind it),
/// statistics and metric handles. Dropping the last reference closes the queue; the threads
/// finish what is queued and exit.
pub struct ModelVersion {
    pub model: String,
    pub version: u64,
    pub path: PathBuf,
    /// SHA-256 of the model file that was loaded.
    pub sha256: String,
    /// Size and time of the file when loaded: a reload reuses this version while they hold.
    pub stamp: Option<flywheel_registry::FileStamp>,
    /// The trusted key that signed the version's manifest, when it is signed and keys are
    /// configured (`trusted_keys`).
    pub signed_by: Option<String>,
    pub signature: Signature,
    pub settings: BatchSettings,
    /// Which output value is the score (quality, agreement, drift on predictions).
    pub score: score::ScoreSpec,
    pub queue: BatchQueue,
    pub stats: Arc<ModelStats>,
    pub metrics: VersionMetrics,
    /// The version's explainer, opened on its first explanation.
    pub explainer: Arc<crate::explain::ExplainerSlot>,
    /// Which of its rows reach the drift detectors under load (`drift.max_rows_per_second`).
    pub drift_intake: crate::drift::intake::DriftIntake,
}

impl ModelVersion {
    /// Whether serving this version is backed up: at least a full batch waiting. Explanations
    /// give way to it (a request waiting out its batch window is not a backlog).
    pub fn backlogged(&self) -> bool {
        self.queue.depth() >= self.effective_max_batch_size().max(1)
    }

    /// The `max_batch_size` this version really batches to (0 when it cannot batch).
    pub fn effective_max_batch_size(&self) -> usize {
        if self.signature.batchable { self.settings.max_batch_size } else { 0 }
    }
}

/// The verified model file to load: where it is, its bytes and digest.
pub struct ModelFile<'a> {
    pub path: &'a Path,
    pub verified: &'a flywheel_registry::Verified,
}

/// Loads a verified model file into `settings.instances` sessions, warms each up, and starts
/// one inference thread per session.
pub fn load_version(
    env: &Environment,
    model: &str,
    version: u64,
    file: ModelFile<'_>,
    settings: BatchSettings,
) -> Result<ModelVersion, ModelError> {
    let (path, bytes) = (file.path, file.verified.bytes.as_slice());
    let fail = |reason: String| ModelError::Load {
        model: model.to_owned(),
        version,
        path: path.display().to_string(),
        reason,
    };
    let instances = settings.instances.max(1);
    let sessions = (0..instances)
        .map(|_| open_session(env, bytes, settings.intra_op_threads))
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    let mut sessions = sessions;
    let signature = Signature::from_session(&sessions[0]).map_err(fail)?;
    check_warmup_size(&signature, settings.max_warmup_bytes).map_err(fail)?;
    for session in &mut sessions {
        warm_up(session, &signature).map_err(|e| fail(format!("warm-up inference failed: {e}")))?;
    }
    let stats = Arc::new(ModelStats::default());
    let metrics = VersionMetrics::new(model, version);
    metrics.set_instances(instances);
    let (tx, rx) = crossbeam_channel::bounded(settings.queue_capacity.max(1));
    let (shadow_tx, shadow_rx) = crossbeam_channel::bounded(settings.queue_capacity.max(1));
    let ctx = Arc::new(WorkerContext {
        signature: signature.clone(),
        settings: settings.clone(),
        stats: Arc::clone(&stats),
        metrics: metrics.clone(),
    });
    // Timed only where the lane could be on (a heavy model pays nothing more at load).
    let one_row =
        settings.inline_possible().then(|| one_row_compute(&mut sessions[0], &signature, settings.inline_max));
    let max_elements = one_row.and_then(|t| settings.inline_elements(t, warm_up_elements(&signature)));
    let sessions: Vec<worker::SharedSession> = sessions.into_iter().map(|s| Arc::new(Mutex::new(s))).collect();
    for (index, session) in sessions.iter().enumerate() {
        let (lanes, ctx) = (worker::Lanes { primary: rx.clone(), shadow: shadow_rx.clone() }, Arc::clone(&ctx));
        let session = Arc::clone(session);
        std::thread::Builder::new()
            .name(format!("infer-{model}-{version}-{index}"))
            .spawn(move || worker::run(session, lanes, ctx))
            .map_err(|e| fail(format!("starting inference thread: {e}")))?;
    }
    let inline = max_elements.map(|max_elements| crate::batch::queue::Inline { sessions, ctx, max_elements });
    let queue = BatchQueue::new((tx, shadow_tx), model, version, settings.queue_capacity, inline);
    tracing::info!(
        model,
        version,
        batchable = signature.batchable,
        instances,
        one_row_us = one_row.map(|t| t.as_micros() as u64),
        inline_max_elements = max_elements,
        "model version loaded"
    );
    Ok(ModelVersion {
        model: model.to_owned(),
        version,
        path: path.to_path_buf(),
        sha256: file.verified.sha256.clone(),
        signed_by: None,
        stamp: flywheel_registry::FileStamp::of(path),
        signature,
        settings,
        score: score::ScoreSpec::default(),
        queue,
        stats,
        metrics,
        explainer: Arc::default(),
        drift_intake: Default::default(),
    })
}

/// The fastest of up to three one-row runs after warm-up (stopping at one over `limit`): what
/// a lone request costs the thread that runs it (`Duration::MAX` if a run fails).
fn one_row_compute(session: &mut Session, signature: &Signature, limit: Duration) -> Duration {
    let mut fastest = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let took = warm_up(session, signature).map_or(Duration::MAX, |()| t.elapsed());
        fastest = fastest.min(took);
        if took > limit {
            break;
        }
    }
    fastest
}

/// Elements of one warm-up row: every input with its dynamic dimensions as 1.
fn warm_up_elements(signature: &Signature) -> usize {
    let one = |shape: &[i64]| {
        let shape: Vec<i64> = shape.iter().map(|d| if *d < 0 { 1 } else { *d }).collect();
        crate::protocol::codec::element_count(&shape).unwrap_or(usize::MAX)
    };
    signature.inputs.iter().map(|spec| one(&spec.shape)).fold(0, usize::saturating_add)
}

/// Refuses a signature whose one-row warm-up (every input and declared output, dynamic
/// dimensions as 1) needs more than `cap` bytes: the file decides those shapes, and allocating
/// them blindly lets one bad file abort the process.
fn check_warmup_size(signature: &Signature, cap: usize) -> Result<(), String> {
    let mut total: usize = 0;
    for (kind, spec) in
        signature.inputs.iter().map(|s| ("input", s)).chain(signature.outputs.iter().map(|s| ("output", s)))
    {
        let shape: Vec<i64> = spec.shape.iter().map(|d| if *d < 0 { 1 } else { *d }).collect();
        let bytes = crate::protocol::codec::element_count(&shape)
            .and_then(|n| n.checked_mul(spec.datatype.element_bytes()))
            .unwrap_or(usize::MAX);
        total = total.saturating_add(bytes);
        if total > cap {
            return Err(format!(
                "{kind} '{}' of shape {:?} needs {} bytes for one row, over max_warmup_bytes ({cap})",
                spec.name,
                spec.shape,
                if bytes == usize::MAX { "more than usize::MAX".to_owned() } else { bytes.to_string() }
            ));
        }
    }
    Ok(())
}

/// Runs one single-row inference of default values (dynamic dimensions set to 1), so the first
/// real request does not pay for ONNX Runtime's lazy allocations, and a model that cannot run
/// at all is refused at load instead of failing requests.
fn warm_up(session: &mut Session, signature: &Signature) -> Result<(), String> {
    let mut inputs: Vec<(String, ort::session::SessionInputValue<'static>)> = Vec::new();
    for spec in &signature.inputs {
        let shape: Vec<i64> = spec.shape.iter().map(|d| if *d < 0 { 1 } else { *d }).collect();
        let len = crate::protocol::codec::element_count(&shape).ok_or("input shape overflows")?;
        let data = TensorData::zeros(spec.datatype, len)
            .ok_or_else(|| format!("input '{}' has datatype {}, which is not served", spec.name, spec.datatype))?;
        let value = to_ort(Tensor { name: spec.name.clone(), shape, data })?;
        inputs.push((spec.name.clone(), value.into()));
    }
    session.run(inputs).map(drop).map_err(|e| e.to_string())
}
