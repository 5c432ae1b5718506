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
pub mod deliver;
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
    /// A version whose one-row run takes at most this long serves a request alone in the
    /// gateway inline ([`queue::Inline`]), if the request is no bigger than this time allows;
    /// zero turns the inline lane off.
    pub inline_max: Duration,
}

impl BatchSettings {
    /// Whether a version could get an inline lane: one is allowed, and no queue delay asks
    /// requests to wait for batch partners.
    pub fn inline_possible(&self) -> bool {
        !self.inline_max.is_zero() && self.max_queue_delay.is_zero()
    }

    /// The most input elements a request may have to run inline, for a version whose one-row
    /// run (of `row_elements` elements) takes `one_row`: as many rows as fit in `inline_max`,
    /// so a long sequence or a big batch never holds a connection's thread for longer. `None`:
    /// no inline lane (not possible, or even one row costs more).
    pub fn inline_elements(&self, one_row: Duration, row_elements: usize) -> Option<usize> {
        let rows = self.inline_max.as_nanos() / one_row.as_nanos().max(1);
        (self.inline_possible() && rows >= 1).then(|| row_elements.saturating_mul(rows.min(1 << 20) as usize))
    }
}
