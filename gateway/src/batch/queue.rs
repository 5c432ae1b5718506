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

/// The inline lane of a cheap model: a client request that finds no request waiting runs at
/// once on the thread that submits it, on a session no inference thread is using, instead of
/// crossing to an inference thread and back (two wake-ups).
pub struct Inline {
    /// The inference threads' sessions; one that is free is borrowed for the run.
    pub sessions: Vec<SharedSession>,
    pub ctx: Arc<WorkerContext>,
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

    /// Whether client requests may run inline (the version is cheap enough).
    pub fn inline(&self) -> bool {
        self.inline.is_some()
    }

    /// Whether a request submitted now would run inline: the version has an inline lane, no
    /// other inference request is in flight and none waits in the queue. A caller that yields
    /// once when this holds (letting the runtime read what other connections sent) and then
    /// submits runs inline only when it is still alone.
    pub fn may_run_inline(&self) -> bool {
        self.inline.is_some() && crate::metrics::requests_in_flight() <= 1 && self.tx.is_empty()
    }

    /// Queues a client's job, or refuses at once when the queue is full: it never grows
    /// without bound. With an inline lane, a request alone in the gateway
    /// ([`BatchQueue::may_run_inline`]) that finds a session free runs now, on this thread, and
    /// its answer is ready when this returns. Alone, because with others in flight a batch is
    /// the cheaper way: run one by one inline, 64 concurrent connections got 0.55x the
    /// requests/s of batching.
    pub fn submit(&self, inputs: Vec<Tensor>, rows: usize) -> Result<Reply, InferError> {
        if let Some(inline) = self.inline.as_deref().filter(|_| self.may_run_inline()) {
            for session in &inline.sessions {
                let mut session = match session.try_lock() {
                    Ok(session) => session,
                    Err(TryLockError::Poisoned(p)) => p.into_inner(),
                    Err(TryLockError::WouldBlock) => continue,
                };
                let (reply, rx) = oneshot::channel();
                let job = Job { inputs, rows, enqueued: Instant::now(), reply };
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
        let job = Job { inputs, rows, enqueued: Instant::now(), reply };
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
