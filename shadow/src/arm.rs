//! One arm's live record. Thread-safe; the lock is held for a few adds per request.

use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

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
    state: Mutex<State>,
}

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
    /// An empty record.
    pub fn new() -> Self {
        let mut latency_us = Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid"));
        latency_us.auto(true);
        Self {
            state: Mutex::new(State {
                requests: 0,
                errors: 0,
                client_errors: 0,
                refused: 0,
                latency_us,
                score_sum: 0.0,
                scores: 0,
            }),
        }
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
        let s = self.lock();
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
        let s = self.lock();
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

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the counters inconsistent in a way that
        // matters for a statistic: keep going with what is there.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
