//! Dynamic batching: a bounded queue per model version feeding dedicated inference threads,
//! each owning one ONNX Runtime session.
//!
//! A request becomes a [`Job`] on the queue ([`queue`]); a worker ([`worker`]) takes the first
//! job, gathers more until `max_batch_size` rows or `max_queue_delay` after the first job was
//! queued, concatenates them along the batch dimension ([`assemble`]), runs the session
//! ([`ort_values`] converts tensors), splits the outputs back and answers each job on its
//! oneshot channel. A cheap model's request that finds the queue empty runs inline instead, on
//! the submitting thread with a free session ([`queue::Inline`]): no hop to a thread and back.

pub mod assemble;
pub mod ort_values;
pub mod queue;
pub mod worker;

use std::time::Duration;

pub use queue::{BatchQueue, InferError, Job, JobOutput};

/// How one model version is batched and run.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchSettings {
    /// Most rows in one batch; 0 runs every request alone.
    pub max_batch_size: usize,
    /// How long the first request of a batch may wait for others.
    pub max_queue_delay: Duration,
    /// Requests waiting beyond this are refused at once (503).
    pub queue_capacity: usize,
    /// Inference threads, each with its own session.
    pub instances: usize,
    /// ONNX Runtime intra-op threads per session.
    pub intra_op_threads: usize,
    /// Largest warm-up (one row of every input and declared output) a version may need;
    /// beyond it the version is refused at load (`max_warmup_bytes`).
    pub max_warmup_bytes: usize,
    /// A version whose one-row run takes at most this long serves a request that finds its
    /// queue empty inline ([`queue::Inline`]); zero turns the inline lane off.
    pub inline_max: Duration,
}

impl BatchSettings {
    /// Whether a version whose one-row run takes `one_row` gets an inline lane: it is cheap
    /// enough to run on a connection's thread, and no queue delay asks requests to wait for
    /// batch partners.
    pub fn runs_inline(&self, one_row: Duration) -> bool {
        !self.inline_max.is_zero() && self.max_queue_delay.is_zero() && one_row <= self.inline_max
    }
}
