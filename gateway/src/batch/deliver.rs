//! Handing a batch's answers back to the async runtime with one wake-up instead of one per job.
//!
//! Answering each job's oneshot from the inference thread wakes the runtime once per job: a
//! parked tokio worker is unparked (an eventfd write), and where it shares a core with the
//! inference thread it preempts it, serves the few connections already answered, parks again,
//! and is woken by the next answer. At 64 connections on one core that was ~13 round trips
//! per 63-row batch (`/proc/<pid>/task/*/status`: the inference thread's involuntary context
//! switches). A batch of several jobs is instead answered by one task spawned on the jobs'
//! runtime: one remote wake-up, and the answers are sent from a worker thread, where waking a
//! connection's task is a push on the local run queue.

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::queue::{InferError, JobOutput};

/// Where one job's answer goes, and the answer.
pub type Answer = (oneshot::Sender<Result<JobOutput, InferError>>, Result<JobOutput, InferError>);

/// Sends `answers`: through one task on `runtime` when there are several and a runtime is
/// known, else directly from this thread.
pub fn deliver(answers: Vec<Answer>, runtime: Option<&Handle>) {
    match runtime {
        Some(runtime) if answers.len() > 1 => {
            // A runtime shutting down drops the task, and with it the senders: their receivers
            // see the channel closed, as they would if this thread had stopped.
            drop(runtime.spawn(async move { send_all(answers) }));
        }
        _ => send_all(answers),
    }
}

fn send_all(answers: Vec<Answer>) {
    for (reply, answer) in answers {
        // A client that went away dropped its receiver; nothing to tell it.
        let _ = reply.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn output(batch_rows: usize) -> Result<JobOutput, InferError> {
        Ok(JobOutput {
            outputs: Vec::new(),
            inputs: Vec::new(),
            queue: Duration::ZERO,
            compute: Duration::ZERO,
            batch_rows,
        })
    }

    #[test]
    fn several_answers_reach_their_receivers_through_a_task_on_the_runtime() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (answers, receivers): (Vec<Answer>, Vec<_>) = (1..=3)
            .map(|rows| {
                let (tx, rx) = oneshot::channel();
                ((tx, output(rows)), rx)
            })
            .unzip();
        // Delivered from a thread outside the runtime, as an inference thread does.
        let handle = runtime.handle().clone();
        std::thread::spawn(move || deliver(answers, Some(&handle))).join().unwrap();
        // Nothing is sent until the runtime runs the task.
        let mut receivers = receivers;
        for rx in &mut receivers {
            assert!(matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
        }
        let rows: Vec<usize> = runtime.block_on(async {
            let mut rows = Vec::new();
            for rx in receivers {
                rows.push(rx.await.unwrap().unwrap().batch_rows);
            }
            rows
        });
        assert_eq!(rows, vec![1, 2, 3]);
    }

    #[test]
    fn without_a_runtime_or_with_one_answer_it_sends_at_once() {
        let (tx, mut rx) = oneshot::channel();
        deliver(vec![(tx, output(7))], None);
        assert_eq!(rx.try_recv().unwrap().unwrap().batch_rows, 7);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (tx, mut rx) = oneshot::channel();
        deliver(vec![(tx, output(8))], Some(runtime.handle()));
        assert_eq!(rx.try_recv().unwrap().unwrap().batch_rows, 8, "one answer needs no task");
    }

    #[test]
    fn a_runtime_that_has_shut_down_closes_the_receivers_instead_of_hanging_them() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let handle = runtime.handle().clone();
        drop(runtime);
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        deliver(vec![(tx1, output(1)), (tx2, output(2))], Some(&handle));
        assert!(matches!(rx1.try_recv(), Err(oneshot::error::TryRecvError::Closed)));
        assert!(matches!(rx2.try_recv(), Err(oneshot::error::TryRecvError::Closed)));
    }
}
