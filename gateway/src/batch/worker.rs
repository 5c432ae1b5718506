//! Inference threads: gather a batch, run it on this thread's session, answer each job.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use ort::session::Session;
use ort::session::SessionInputValue;

use super::BatchSettings;
use super::assemble::{merge_input, split_output};
use super::deliver::deliver;
use super::ort_values::{from_ort, to_ort, to_ort_view};
use super::queue::{InferError, Job, JobOutput};
use crate::metrics::VersionMetrics;
use crate::model::signature::Signature;
use crate::model::stats::{BatchTimes, ModelStats};
use crate::protocol::Tensor;

/// What every inference thread of one model version shares.
pub struct WorkerContext {
    pub signature: Signature,
    pub settings: BatchSettings,
    pub stats: Arc<ModelStats>,
    pub metrics: VersionMetrics,
}

/// A version's two queue lanes: clients' requests first, mirrored shadow requests when idle.
pub struct Lanes {
    pub primary: Receiver<Job>,
    pub shadow: Receiver<Job>,
}

/// What the next batch starts with.
enum Next {
    Primary(Job),
    Shadow(Job),
    Closed,
}

impl Lanes {
    /// The next batch's first job: a carried-over client job, a waiting client request, a
    /// waiting shadow, else whichever comes first. Closed once the queue handles are gone.
    fn next(&self, carried: &mut Option<Job>) -> Next {
        if let Some(job) = carried.take() {
            return Next::Primary(job);
        }
        if let Ok(job) = self.primary.try_recv() {
            return Next::Primary(job);
        }
        if let Ok(job) = self.shadow.try_recv() {
            return Next::Shadow(job);
        }
        crossbeam_channel::select_biased! {
            recv(self.primary) -> job => job.map_or(Next::Closed, Next::Primary),
            recv(self.shadow) -> job => match job {
                Ok(job) => Next::Shadow(job),
                // Both senders live in one queue handle; keep serving the client lane anyway.
                Err(_) => self.primary.recv().map_or(Next::Closed, Next::Primary),
            },
        }
    }
}

/// One ONNX Runtime session, shared by its inference thread and the inline lane
/// ([`super::queue::BatchQueue::submit`]): whoever holds the lock runs it.
pub type SharedSession = Arc<Mutex<Session>>;

/// Locks `session` (a run that panicked poisons the lock; the session is still usable, as the
/// panic was caught around the run).
pub fn lock(session: &SharedSession) -> MutexGuard<'_, Session> {
    session.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `jobs` as one batch on `session`, a panic failing only this batch; counts the time.
pub fn run_jobs(session: &mut Session, jobs: Vec<Job>, ctx: &WorkerContext) {
    let busy = Instant::now();
    crate::health::guard("inference", || run_batch(session, jobs, ctx));
    ctx.metrics.busy_seconds.increment(busy.elapsed().as_secs_f64());
}

/// Runs until every queue handle is dropped and the client lane is drained.
pub fn run(session: SharedSession, lanes: Lanes, ctx: Arc<WorkerContext>) {
    let max_rows = if ctx.signature.batchable { ctx.settings.max_batch_size.max(1) } else { 1 };
    let mut carried = None;
    loop {
        let jobs = match lanes.next(&mut carried) {
            Next::Primary(first) => {
                let (jobs, next) = gather(first, &lanes.primary, max_rows, ctx.settings.max_queue_delay);
                carried = next;
                jobs
            }
            // A shadow runs alone: a client request that arrives meanwhile waits for one
            // mirrored request's compute at most, never for a batch of them (when the shadow
            // is also the canary, that wait would show as the canary's latency).
            Next::Shadow(first) => vec![first],
            Next::Closed => return,
        };
        // A panic outside the guarded run (merging, answering) must fail this batch, not kill
        // the thread.
        run_jobs(&mut lock(&session), jobs, &ctx);
    }
}

/// Collects jobs after `first` until `max_rows` rows or the first job's deadline. A job that
/// would overflow the batch is returned separately to start the next one.
fn gather(first: Job, rx: &Receiver<Job>, max_rows: usize, delay: Duration) -> (Vec<Job>, Option<Job>) {
    let deadline = first.enqueued + delay;
    let mut rows = first.rows;
    let mut jobs = vec![first];
    while rows < max_rows {
        let job = match rx.try_recv() {
            Ok(job) => job,
            Err(_) => match rx.recv_deadline(deadline) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            },
        };
        if rows + job.rows > max_rows {
            return (jobs, Some(job));
        }
        rows += job.rows;
        jobs.push(job);
    }
    (jobs, None)
}

fn run_batch(session: &mut Session, jobs: Vec<Job>, ctx: &WorkerContext) {
    // A client that went away no longer needs its rows computed.
    let (jobs, dropped): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| !j.reply.is_closed());
    drop(dropped);
    if jobs.is_empty() {
        return;
    }
    let started = Instant::now();
    let rows: Vec<usize> = jobs.iter().map(|j| j.rows).collect();
    let total_rows: usize = rows.iter().sum();
    for job in &jobs {
        let waited = started.duration_since(job.enqueued);
        ctx.stats.record_queue(waited);
        ctx.metrics.queue_seconds.record(waited.as_secs_f64());
    }
    let result = execute_guarded(session, &jobs, &rows, ctx);
    let compute = started.elapsed();
    ctx.metrics.batch_rows.record(total_rows as f64);
    ctx.metrics.compute_seconds.record(compute.as_secs_f64());
    match result {
        Ok((per_job, times)) => {
            ctx.stats.record_batch(jobs.len(), total_rows, times);
            answer_all(jobs, per_job, started, (compute, total_rows));
        }
        Err(e) if jobs.len() == 1 => {
            tracing::debug!(error = %e.message, "request failed");
            for job in jobs {
                let _ = job.reply.send(Err(e.clone().into_error()));
            }
        }
        Err(e) => {
            // One bad request must not fail its neighbours: split the batch in halves until the
            // requests that fail by themselves are found (about 2·log2(n) runs for one bad
            // request in n, instead of n).
            tracing::warn!(error = %e.message, requests = jobs.len(), "batch failed; isolating the failing requests");
            ctx.metrics.batch_retries.increment(1);
            let half = jobs.len() / 2;
            let mut jobs = jobs;
            let second = jobs.split_off(half);
            isolate(session, jobs, started, ctx);
            isolate(session, second, started, ctx);
        }
    }
}

/// Runs `jobs` of a failed batch together; if they fail again, halves them, down to single
/// requests, which get their own error. Requests whose client went away are dropped.
fn isolate(session: &mut Session, jobs: Vec<Job>, started: Instant, ctx: &WorkerContext) {
    let jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
    if jobs.is_empty() {
        return;
    }
    let rows: Vec<usize> = jobs.iter().map(|j| j.rows).collect();
    let total_rows: usize = rows.iter().sum();
    let run_started = Instant::now();
    match execute_guarded(session, &jobs, &rows, ctx) {
        Ok((per_job, times)) => {
            ctx.stats.record_batch(jobs.len(), total_rows, times);
            let compute = run_started.elapsed();
            answer_all(jobs, per_job, started, (compute, total_rows));
        }
        Err(e) if jobs.len() == 1 => {
            for job in jobs {
                let _ = job.reply.send(Err(e.clone().into_error()));
            }
        }
        Err(_) => {
            let mut jobs = jobs;
            let second = jobs.split_off(jobs.len() / 2);
            isolate(session, jobs, started, ctx);
            isolate(session, second, started, ctx);
        }
    }
}

/// Sends each job its outputs and hands its inputs back with them, in one wake-up of the
/// waiting runtime ([`deliver`]).
fn answer_all(jobs: Vec<Job>, per_job: Vec<Vec<Tensor>>, started: Instant, (compute, batch_rows): (Duration, usize)) {
    // One task on the jobs' runtime when they all came from the same one (the gateway has one);
    // otherwise each answer goes straight to its own receiver, so no job depends on another
    // job's runtime being alive.
    let runtime = jobs.first().and_then(|job| job.runtime.clone()).filter(|first| {
        let id = first.id();
        jobs.iter().all(|job| job.runtime.as_ref().is_some_and(|r| r.id() == id))
    });
    let answers = jobs
        .into_iter()
        .zip(per_job)
        .map(|(job, outputs)| {
            let Job { inputs, enqueued, reply, .. } = job;
            let queue = started.duration_since(enqueued);
            (reply, Ok(JobOutput { outputs, inputs, queue, compute, batch_rows }))
        })
        .collect();
    deliver(answers, runtime.as_ref());
}

/// Why a batch produced no outputs, and whether the input's values were the cause.
#[derive(Clone, Debug)]
struct ExecError {
    message: String,
    /// ONNX Runtime said the input was invalid (e.g. an index out of range), not the model or
    /// the gateway.
    input_fault: bool,
}

impl ExecError {
    fn ours(message: impl Into<String>) -> Self {
        Self { message: message.into(), input_fault: false }
    }

    fn into_error(self) -> InferError {
        if self.input_fault { InferError::InputRejected(self.message) } else { InferError::Runtime(self.message) }
    }
}

/// [`execute`], with a panic in ONNX Runtime's bindings turned into an error of this batch.
fn execute_guarded(
    session: &mut Session,
    jobs: &[Job],
    rows: &[usize],
    ctx: &WorkerContext,
) -> Result<(Vec<Vec<Tensor>>, BatchTimes), ExecError> {
    crate::health::guard("inference", || execute(session, jobs, rows, ctx))
        .unwrap_or_else(|| Err(ExecError::ours("the inference thread caught a panic running this batch")))
}

/// Merges, runs and splits one batch; returns each job's outputs in signature order.
fn execute(
    session: &mut Session,
    jobs: &[Job],
    rows: &[usize],
    ctx: &WorkerContext,
) -> Result<(Vec<Vec<Tensor>>, BatchTimes), ExecError> {
    let t0 = Instant::now();
    let mut values: Vec<(&str, SessionInputValue<'_>)> = Vec::with_capacity(ctx.signature.inputs.len());
    // One request (or a model that batches nothing) runs on views of its own buffers; only a
    // batch of several is copied, into one merged buffer per input.
    let alone = jobs.len() == 1 || !ctx.signature.batchable;
    for (index, spec) in ctx.signature.inputs.iter().enumerate() {
        let value = if alone {
            to_ort_view(&jobs[0].inputs[index])
        } else {
            let parts: Vec<&Tensor> = jobs.iter().map(|j| &j.inputs[index]).collect();
            merge_input(&parts).and_then(to_ort).map(SessionInputValue::from)
        };
        values.push((spec.name.as_str(), value.map_err(ExecError::ours)?));
    }
    let t1 = Instant::now();
    let outputs = session.run(values).map_err(|e| ExecError {
        input_fault: e.code() == ort::error::ErrorCode::InvalidArgument,
        message: e.to_string(),
    })?;
    let t2 = Instant::now();
    let mut per_job: Vec<Vec<Tensor>> =
        (0..jobs.len()).map(|_| Vec::with_capacity(ctx.signature.outputs.len())).collect();
    for spec in &ctx.signature.outputs {
        let value = outputs
            .get(&spec.name)
            .ok_or_else(|| ExecError::ours(format!("the model produced no output '{}'", spec.name)))?;
        let tensor = from_ort(&spec.name, value, spec.datatype).map_err(ExecError::ours)?;
        if ctx.signature.batchable {
            for (slot, piece) in per_job.iter_mut().zip(split_output(tensor, rows).map_err(ExecError::ours)?) {
                slot.push(piece);
            }
        } else {
            per_job[0].push(tensor);
        }
    }
    let times = BatchTimes { input: t1 - t0, infer: t2 - t1, output: t2.elapsed() };
    Ok((per_job, times))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TensorData;

    fn job(rows: usize) -> Job {
        let (reply, _rx) = tokio::sync::oneshot::channel();
        let input = Tensor { name: "x".into(), shape: vec![rows as i64, 1], data: TensorData::Fp32(vec![0.0; rows]) };
        Job { inputs: vec![input], rows, enqueued: Instant::now(), reply, runtime: None }
    }

    #[test]
    fn a_batch_from_two_runtimes_is_answered_even_when_the_first_runtime_is_gone() {
        let gone = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let alive = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut jobs = Vec::new();
        let mut receivers = Vec::new();
        for handle in [gone.handle().clone(), alive.handle().clone()] {
            let mut job = job(1);
            let (reply, rx) = tokio::sync::oneshot::channel();
            (job.reply, job.runtime) = (reply, Some(handle));
            jobs.push(job);
            receivers.push(rx);
        }
        drop(gone);
        answer_all(jobs, vec![Vec::new(), Vec::new()], Instant::now(), (Duration::ZERO, 2));
        for mut rx in receivers {
            assert_eq!(
                rx.try_recv().unwrap().unwrap().batch_rows,
                2,
                "answered directly, not through the dead runtime"
            );
        }
    }

    #[test]
    fn gathers_queued_jobs_up_to_max_rows_and_carries_the_overflow() {
        let (tx, rx) = crossbeam_channel::unbounded();
        for rows in [3, 4, 2] {
            tx.send(job(rows)).unwrap();
        }
        let (jobs, carried) = gather(job(1), &rx, 8, Duration::from_secs(5));
        let rows: Vec<usize> = jobs.iter().map(|j| j.rows).collect();
        assert_eq!(rows, vec![1, 3, 4], "8 rows fill the batch");
        assert!(carried.is_none(), "the batch filled exactly; nothing was taken out");
        let (jobs, carried) = gather(job(5), &rx, 6, Duration::from_secs(5));
        assert_eq!(jobs.len(), 1);
        assert_eq!(carried.map(|j| j.rows), Some(2), "5 + 2 > 6: the 2-row job starts the next batch");
    }

    #[test]
    fn waits_no_longer_than_the_first_jobs_deadline() {
        let (_tx, rx) = crossbeam_channel::unbounded::<Job>();
        let started = Instant::now();
        let (jobs, carried) = gather(job(1), &rx, 64, Duration::from_millis(30));
        let waited = started.elapsed();
        assert_eq!((jobs.len(), carried.is_none()), (1, true));
        assert!(waited >= Duration::from_millis(25), "waited for others until the deadline: {waited:?}");
    }

    #[test]
    fn zero_delay_takes_only_what_is_already_queued() {
        let (tx, rx) = crossbeam_channel::unbounded();
        tx.send(job(1)).unwrap();
        let (jobs, _) = gather(job(1), &rx, 64, Duration::ZERO);
        assert_eq!(jobs.len(), 2);
    }

    #[test]
    fn client_requests_go_before_shadows() {
        let (tx, primary) = crossbeam_channel::unbounded();
        let (shadow_tx, shadow) = crossbeam_channel::unbounded();
        let lanes = Lanes { primary, shadow };
        shadow_tx.send(job(2)).unwrap();
        shadow_tx.send(job(3)).unwrap();
        tx.send(job(1)).unwrap();
        let mut carried = None;
        assert!(matches!(lanes.next(&mut carried), Next::Primary(j) if j.rows == 1));
        assert!(matches!(lanes.next(&mut carried), Next::Shadow(j) if j.rows == 2));
        // A client request that arrived meanwhile goes before the next shadow.
        tx.send(job(4)).unwrap();
        assert!(matches!(lanes.next(&mut carried), Next::Primary(j) if j.rows == 4));
        assert!(matches!(lanes.next(&mut carried), Next::Shadow(j) if j.rows == 3));
        // A carried-over client job (from a full batch) comes first of all.
        carried = Some(job(5));
        shadow_tx.send(job(6)).unwrap();
        assert!(matches!(lanes.next(&mut carried), Next::Primary(j) if j.rows == 5));
        drop((tx, shadow_tx));
        assert!(matches!(lanes.next(&mut carried), Next::Shadow(j) if j.rows == 6), "queued shadows drain");
        assert!(matches!(lanes.next(&mut carried), Next::Closed));
    }
}
