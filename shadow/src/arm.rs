//! One arm's live record. Thread-safe: each thread records into its own shard (a lock held
//! for a few adds per request, which no other thread normally wants), and reads merge the
//! shards. One lock for the record made every HTTP thread answering for the arm take turns on
//! one cache line: `cargo bench -p flywheel-shadow --bench arm`, two threads on one record,
//! 48 ns of wall time per record against 9 ns for one thread alone.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Most shards per record: each holds a latency histogram (16 KiB to ~120 KiB as latencies
/// spread), and a record per arm and rollout step exists per route.
const MAX_SHARDS: usize = 8;

/// Hands each thread a shard number the first time it records.
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SLOT: usize = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug)]
struct State {
    requests: u64,
    errors: u64,
    client_errors: u64,
    refused: u64,
    latency_us: Histogram<u64>,
    score_sum: f64,
    scores: u64,
}

/// Requests, errors, latencies and mean score of one arm. Only answers and server-side failures
/// (inference errors, timeouts) are requests of the arm; client errors (bad input) and admission
/// refusals are counted beside them, never against it.
#[derive(Debug)]
pub struct ArmRecord {
    shards: Box<[Shard]>,
}

/// One shard on its own cache lines, so two threads' shards never share one.
#[derive(Debug)]
#[repr(align(128))]
struct Shard(Mutex<State>);

/// A copy of an arm's record at one moment.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ArmSnapshot {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    /// Requests refused as the client's fault (4xx), not counted in `requests`.
    pub client_errors: u64,
    /// Requests refused for capacity (full queue, admission), not counted in `requests`.
    pub refused: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub mean_score: Option<f64>,
}

/// An arm's record in a form that travels (to another replica) and adds up: counts, the
/// latency histogram as (value, count) buckets, the score sum.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArmExport {
    pub requests: u64,
    pub errors: u64,
    pub client_errors: u64,
    pub refused: u64,
    /// Latency in microseconds: (highest equivalent value of a bucket, count), non-empty only.
    pub latency_us: Vec<(u64, u64)>,
    pub score_sum: f64,
    pub scores: u64,
}

impl Default for ArmRecord {
    fn default() -> Self {
        Self::new()
    }
}

impl ArmRecord {
    /// An empty record, with a shard per core (rounded up to a power of two, at most
    /// [`MAX_SHARDS`]).
    pub fn new() -> Self {
        // A power of two, so a thread finds its shard with a mask.
        let shards =
            std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_SHARDS).next_power_of_two();
        Self { shards: (0..shards).map(|_| Shard(Mutex::new(State::empty()))).collect() }
    }

    /// Records one answered request and, for score models, its first output value.
    pub fn record_ok(&self, latency: Duration, score: Option<f64>) {
        let mut s = self.lock();
        s.requests += 1;
        let _ = s.latency_us.record(latency.as_micros() as u64);
        if let Some(score) = score.filter(|v| v.is_finite()) {
            s.score_sum += score;
            s.scores += 1;
        }
    }

    /// Records one request that failed on the server's side (inference error, timeout).
    pub fn record_error(&self) {
        let mut s = self.lock();
        s.requests += 1;
        s.errors += 1;
    }

    /// Records one request refused as the client's fault; it says nothing about the arm.
    pub fn record_client_error(&self) {
        self.lock().client_errors += 1;
    }

    /// Records one request refused for capacity; it says nothing about the arm's answers.
    pub fn record_refused(&self) {
        self.lock().refused += 1;
    }

    /// The record so far, to be absorbed elsewhere.
    pub fn export(&self) -> ArmExport {
        let s = self.merged();
        let latency_us = s
            .latency_us
            .iter_recorded()
            .map(|v| (s.latency_us.highest_equivalent(v.value_iterated_to()), v.count_at_value()))
            .collect();
        ArmExport {
            requests: s.requests,
            errors: s.errors,
            client_errors: s.client_errors,
            refused: s.refused,
            latency_us,
            score_sum: s.score_sum,
            scores: s.scores,
        }
    }

    /// Adds another record (e.g. another replica's) to this one.
    pub fn absorb(&self, other: &ArmExport) {
        let mut s = self.lock();
        s.requests += other.requests;
        s.errors += other.errors;
        s.client_errors += other.client_errors;
        s.refused += other.refused;
        for &(value, count) in &other.latency_us {
            let _ = s.latency_us.record_n(value, count);
        }
        if other.score_sum.is_finite() {
            s.score_sum += other.score_sum;
            s.scores += other.scores;
        }
    }

    /// The record so far.
    pub fn snapshot(&self) -> ArmSnapshot {
        let s = self.merged();
        ArmSnapshot {
            requests: s.requests,
            errors: s.errors,
            error_rate: if s.requests == 0 { 0.0 } else { s.errors as f64 / s.requests as f64 },
            client_errors: s.client_errors,
            refused: s.refused,
            p50_us: s.latency_us.value_at_quantile(0.5),
            p99_us: s.latency_us.value_at_quantile(0.99),
            mean_score: (s.scores > 0).then(|| s.score_sum / s.scores as f64),
        }
    }

    /// This thread's shard, locked.
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        let slot = SLOT.with(|slot| *slot) & (self.shards.len() - 1);
        lock(&self.shards[slot])
    }

    /// Every shard added up.
    fn merged(&self) -> State {
        let mut all = State::empty();
        for shard in &self.shards {
            all.add(&lock(shard));
        }
        all
    }
}

fn lock(shard: &Shard) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding this lock cannot leave the counters inconsistent in a way that
    // matters for a statistic: keep going with what is there.
    shard.0.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    fn empty() -> Self {
        let mut latency_us = Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid"));
        latency_us.auto(true);
        Self { requests: 0, errors: 0, client_errors: 0, refused: 0, latency_us, score_sum: 0.0, scores: 0 }
    }

    fn add(&mut self, other: &State) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.client_errors += other.client_errors;
        self.refused += other.refused;
        // Both histograms resize themselves (`auto`), so adding cannot run out of range.
        let _ = self.latency_us.add(&other.latency_us);
        self.score_sum += other.score_sum;
        self.scores += other.scores;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_errors_latency_and_scores() {
        let arm = ArmRecord::new();
        for ms in 1..=100 {
            arm.record_ok(Duration::from_millis(ms), Some(0.5));
        }
        arm.record_error();
        arm.record_client_error();
        arm.record_refused();
        let s = arm.snapshot();
        assert_eq!((s.requests, s.errors), (101, 1), "client errors and refusals are not the arm's");
        assert_eq!((s.client_errors, s.refused), (1, 1));
        assert!((s.error_rate - 1.0 / 101.0).abs() < 1e-12);
        assert!((49_000..=51_000).contains(&s.p50_us), "{}", s.p50_us);
        assert!((98_000..=100_100).contains(&s.p99_us), "{}", s.p99_us);
        assert_eq!(s.mean_score, Some(0.5));
    }

    #[test]
    fn what_several_threads_record_adds_up_in_one_snapshot() {
        let arm = std::sync::Arc::new(ArmRecord::new());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let arm = std::sync::Arc::clone(&arm);
                std::thread::spawn(move || {
                    for ms in 1..=25 {
                        arm.record_ok(Duration::from_millis(t * 25 + ms), Some(1.0));
                    }
                    arm.record_error();
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let s = arm.snapshot();
        assert_eq!((s.requests, s.errors), (104, 4));
        assert!((49_000..=51_000).contains(&s.p50_us), "the four threads' latencies merged: {}", s.p50_us);
        assert_eq!(s.mean_score, Some(1.0));
        assert_eq!(arm.export().latency_us.iter().map(|(_, n)| n).sum::<u64>(), 100);
    }

    #[test]
    fn two_records_absorbed_equal_one_record_of_everything() {
        let (a, b, whole) = (ArmRecord::new(), ArmRecord::new(), ArmRecord::new());
        for ms in 1..=300u64 {
            let arm = if ms % 3 == 0 { &a } else { &b };
            arm.record_ok(Duration::from_millis(ms), Some(ms as f64 / 300.0));
            whole.record_ok(Duration::from_millis(ms), Some(ms as f64 / 300.0));
        }
        b.record_error();
        whole.record_error();
        let merged = ArmRecord::new();
        merged.absorb(&a.export());
        let travelled: ArmExport = serde_json::from_str(&serde_json::to_string(&b.export()).unwrap()).unwrap();
        merged.absorb(&travelled);
        let (m, w) = (merged.snapshot(), whole.snapshot());
        assert_eq!((m.requests, m.errors), (w.requests, w.errors));
        assert_eq!((m.p50_us, m.p99_us), (w.p50_us, w.p99_us));
        assert!((m.mean_score.unwrap() - w.mean_score.unwrap()).abs() < 1e-12);
    }
}
