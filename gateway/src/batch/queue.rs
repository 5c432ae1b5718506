//! The admission side of a model version's batch queue.

use std::sync::{Arc, TryLockError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use tokio::sync::oneshot;

use super::worker::{SharedSession, WorkerContext, run_jobs};
use crate::protocol::Tensor;

/// A request waiting for inference: its inputs in the model's order.
pub struct Job {
    pub inputs: Vec<Tensor>,
    /// Rows along the batch dimension (1 for unbatchable models).
    pub rows: usize,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<Result<JobOutput, InferError>>,
    /// The runtime of the task waiting for the answer, when it has one: a batch's answers are
    /// handed to it in one wake-up ([`super::deliver`]).
    pub runtime: Option<tokio::runtime::Handle>,
}

/// A job's answer: every model output for its rows, and where its time went.
#[derive(Debug)]
pub struct JobOutput {
    pub outputs: Vec<Tensor>,
    /// The job's inputs, handed back: the model ran on views of them, so the tap, the shadow
    /// and explanations read them afterwards without a copy.
    pub inputs: Vec<Tensor>,
    pub queue: Duration,
    pub compute: Duration,
    /// Rows in the batch this job ran in.
    pub batch_rows: usize,
}

/// Why a job got no outputs.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("queue of {model} version {version} is full ({capacity} requests waiting); retry later")]
    QueueFull { model: String, version: u64, capacity: usize },
    #[error("{model} version {version} is shutting down")]
    Closed { model: String, version: u64 },
    #[error("inference failed: {0}")]
    Runtime(String),
    /// ONNX Runtime refused this request's values (run alone, so no other request caused it).
    #[error("the model refused this request's input: {0}")]
    InputRejected(String),
}

impl InferError {
    /// Stable machine name, used as a metric label.
    pub fn error_type(&self) -> &'static str {
        match self {
            InferError::QueueFull { .. } => "queue_full",
            InferError::Closed { .. } => "unavailable",
            InferError::Runtime(_) => "inference_failed",
            InferError::InputRejected(_) => "input_rejected",
        }
    }
}

/// Cheap handle to a model version's queue; cloning shares the queue. Two lanes: clients'
/// requests, and mirrored shadow requests, which have their own capacity (a full shadow lane
/// refuses only shadows) and run only when no client request is waiting.
#[derive(Clone)]
pub struct BatchQueue {
    tx: Sender<Job>,
    shadow_tx: Sender<Job>,
    model: String,
    version: u64,
    capacity: usize,
    inline: Option<Arc<Inline>>,
}

/// The inline lane of a cheap model: a small client request alone in the gateway runs at
/// once on the thread that submits it, on a session no inference thread is using, instead of
/// crossing to an inference thread and back (two wake-ups).
pub struct Inline {
    /// The inference threads' sessions; one that is free is borrowed for the run.
    pub sessions: Vec<SharedSession>,
    pub ctx: Arc<WorkerContext>,
    /// Requests with more input elements than this go through the queue (what runs within
    /// `batching.inline_max_us`, by the one-row time measured at load).
    pub max_elements: usize,
}

/// A receiver of a job's answer.
pub type Reply = oneshot::Receiver<Result<JobOutput, InferError>>;

impl BatchQueue {
    pub(crate) fn new(
        lanes: (Sender<Job>, Sender<Job>),
        model: &str,
        version: u64,
        capacity: usize,
        inline: Option<Inline>,
    ) -> Self {
        let inline = inline.map(Arc::new);
        Self { tx: lanes.0, shadow_tx: lanes.1, model: model.to_owned(), version, capacity, inline }
    }

    /// Whether `inputs` submitted now would run inline: the version has an inline lane, they
    /// are small enough for it, no other inference request is in flight and none waits in the
    /// queue. A caller that yields once when this holds (letting the runtime read what other
    /// connections sent) and then submits runs inline only when it is still alone.
    pub fn may_run_inline(&self, inputs: &[Tensor]) -> bool {
        self.inline.as_deref().is_some_and(|inline| {
            inputs.iter().map(|t| t.data.len()).sum::<usize>() <= inline.max_elements
                && crate::metrics::requests_in_flight() <= 1
                && self.tx.is_empty()
        })
    }

    /// Queues a client's job, or refuses at once when the queue is full: it never grows
    /// without bound. With an inline lane, a small request alone in the gateway
    /// ([`BatchQueue::may_run_inline`]) that finds a session free runs now, on this thread, and
    /// its answer is ready when this returns. Alone, because with others in flight a batch is
    /// the cheaper way: run one by one inline, 64 concurrent connections got 0.55x the
    /// requests/s of batching.
    pub fn submit(&self, inputs: Vec<Tensor>, rows: usize) -> Result<Reply, InferError> {
        if let Some(inline) = self.inline.as_deref().filter(|_| self.may_run_inline(&inputs)) {
            for session in &inline.sessions {
                let mut session = match session.try_lock() {
                    Ok(session) => session,
                    Err(TryLockError::Poisoned(p)) => p.into_inner(),
                    Err(TryLockError::WouldBlock) => continue,
                };
                let (reply, rx) = oneshot::channel();
                let job = Job { inputs, rows, enqueued: Instant::now(), reply, runtime: None };
                run_jobs(&mut session, vec![job], &inline.ctx);
                inline.ctx.metrics.inline_runs.increment(1);
                return Ok(rx);
            }
        }
        self.send(&self.tx, inputs, rows)
    }

    /// Queues a mirrored (shadow) job on its own lane.
    pub fn submit_shadow(&self, inputs: Vec<Tensor>, rows: usize) -> Result<Reply, InferError> {
        self.send(&self.shadow_tx, inputs, rows)
    }

    fn send(&self, lane: &Sender<Job>, inputs: Vec<Tensor>, rows: usize) -> Result<Reply, InferError> {
        let (reply, rx) = oneshot::channel();
        let runtime = tokio::runtime::Handle::try_current().ok();
        let job = Job { inputs, rows, enqueued: Instant::now(), reply, runtime };
        match lane.try_send(job) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => {
                Err(InferError::QueueFull { model: self.model.clone(), version: self.version, capacity: self.capacity })
            }
            Err(TrySendError::Disconnected(_)) => {
                Err(InferError::Closed { model: self.model.clone(), version: self.version })
            }
        }
    }

    /// Client requests waiting now.
    pub fn depth(&self) -> usize {
        self.tx.len()
    }

    /// Shadow requests waiting now.
    pub fn shadow_depth(&self) -> usize {
        self.shadow_tx.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::batch::BatchSettings;
    use crate::metrics::{InFlight, VersionMetrics};
    use crate::model::signature::Signature;
    use crate::protocol::TensorData;

    fn settings(inline_max_us: u64, delay_us: u64) -> BatchSettings {
        BatchSettings {
            max_batch_size: 64,
            max_queue_delay: Duration::from_micros(delay_us),
            queue_capacity: 8,
            instances: 1,
            intra_op_threads: 1,
            max_warmup_bytes: 1 << 20,
            inline_max: Duration::from_micros(inline_max_us),
        }
    }

    #[test]
    fn the_inline_lane_takes_as_many_rows_as_fit_its_time_and_none_when_off_or_batching_waits() {
        let us = Duration::from_micros;
        assert_eq!(settings(50, 0).inline_elements(us(5), 16), Some(160), "10 rows of 16");
        assert_eq!(settings(50, 0).inline_elements(us(50), 16), Some(16));
        assert_eq!(settings(50, 0).inline_elements(us(60), 16), None, "one row costs more");
        assert_eq!(settings(0, 0).inline_elements(us(1), 16), None, "off");
        assert_eq!(settings(50, 100).inline_elements(us(1), 16), None, "a queue delay asks to wait");
    }

    fn input(elements: usize) -> Vec<Tensor> {
        vec![Tensor { name: "x".into(), shape: vec![1, elements as i64], data: TensorData::Fp32(vec![0.0; elements]) }]
    }

    #[test]
    fn a_request_runs_inline_only_when_small_alone_and_nothing_is_queued() {
        let (tx, rx) = crossbeam_channel::bounded(8);
        let (shadow_tx, _shadow_rx) = crossbeam_channel::bounded(8);
        let ctx = Arc::new(WorkerContext {
            signature: Signature { inputs: Vec::new(), outputs: Vec::new(), batchable: true },
            settings: settings(50, 0),
            stats: Arc::default(),
            metrics: VersionMetrics::new("m", 1),
        });
        let inline = Inline { sessions: Vec::new(), ctx, max_elements: 16 };
        let queue = BatchQueue::new((tx, shadow_tx), "m", 1, 8, Some(inline));
        // (Other tests may hold requests in flight too: only the refusals are asserted here.)
        let _me = InFlight::start();
        assert!(!queue.may_run_inline(&input(17)), "more elements than the lane's time allows");
        let other = InFlight::start();
        assert!(!queue.may_run_inline(&input(16)), "another request in flight: batch with it");
        drop(other);
        let queued = queue.send(&queue.tx, input(1), 1).unwrap();
        assert!(!queue.may_run_inline(&input(16)), "a request waits in the queue");
        drop((queued, rx));
        let lanes = (crossbeam_channel::bounded(1).0, crossbeam_channel::bounded(1).0);
        let without = BatchQueue::new(lanes, "m", 1, 1, None);
        assert!(!without.may_run_inline(&input(1)), "no lane");
    }
}
