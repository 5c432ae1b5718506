//! Per model version statistics in the shape of Triton's `GET .../stats` (what `perf_analyzer`
//! polls): request counts and cumulative durations per stage, and per batch size.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// A count and the total nanoseconds spent across it.
#[derive(Debug, Default)]
pub struct Tally {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Tally {
    /// Adds `n` occurrences that took `spent` each.
    pub fn add(&self, n: u64, spent: Duration) {
        self.count.fetch_add(n, Ordering::Relaxed);
        self.ns.fetch_add(n * spent.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Number of occurrences so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn json(&self) -> Value {
        json!({"count": self.count(), "ns": self.ns.load(Ordering::Relaxed)})
    }
}

/// Durations of one batch, from the inference thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct BatchTimes {
    /// Concatenating inputs and building runtime tensors.
    pub input: Duration,
    /// `Session::run`.
    pub infer: Duration,
    /// Copying outputs out and splitting them per request.
    pub output: Duration,
}

#[derive(Debug, Default)]
struct PerBatchSize {
    input: Tally,
    infer: Tally,
    output: Tally,
}

/// Counters for one model version.
#[derive(Debug, Default)]
pub struct ModelStats {
    inference_count: AtomicU64,
    execution_count: AtomicU64,
    last_inference_ms: AtomicU64,
    success: Tally,
    fail: Tally,
    queue: Tally,
    compute_input: Tally,
    compute_infer: Tally,
    compute_output: Tally,
    by_batch_size: Mutex<BTreeMap<usize, PerBatchSize>>,
}

impl ModelStats {
    /// Records one executed batch of `requests` requests and `rows` rows.
    pub fn record_batch(&self, requests: usize, rows: usize, times: BatchTimes) {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        // One lock per batch, never across an await. Every counter a snapshot compares is updated
        // under it, and `to_json` reads them under it: perf_analyzer aborts when a snapshot
        // shows the compute input, infer and output counts unequal (seen once at concurrency 4).
        let mut map = self.by_batch_size.lock().unwrap_or_else(|p| p.into_inner());
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        self.inference_count.fetch_add(rows as u64, Ordering::Relaxed);
        let n = requests as u64;
        self.compute_input.add(n, times.input);
        self.compute_infer.add(n, times.infer);
        self.compute_output.add(n, times.output);
        self.last_inference_ms.store(now_ms, Ordering::Relaxed);
        let entry = map.entry(rows).or_default();
        entry.input.add(1, times.input);
        entry.infer.add(1, times.infer);
        entry.output.add(1, times.output);
    }

    /// Records a request's time waiting in the batch queue.
    pub fn record_queue(&self, waited: Duration) {
        self.queue.add(1, waited);
    }

    /// Records a finished request, successful or not, with its total time.
    pub fn record_request(&self, ok: bool, total: Duration) {
        if ok { &self.success } else { &self.fail }.add(1, total);
    }

    /// Batches executed so far.
    pub fn execution_count(&self) -> u64 {
        self.execution_count.load(Ordering::Relaxed)
    }

    /// Triton's `model_stats[]` entry.
    pub fn to_json(&self, name: &str, version: u64) -> Value {
        // Held while every batch counter is read, so they come from the same moment.
        let map = self.by_batch_size.lock().unwrap_or_else(|p| p.into_inner());
        let batch_stats: Vec<Value> = map
            .iter()
            .map(|(size, s)| {
                json!({"batch_size": size, "compute_input": s.input.json(),
                       "compute_infer": s.infer.json(), "compute_output": s.output.json()})
            })
            .collect();
        let zero = json!({"count": 0, "ns": 0});
        let stats = json!({
            "name": name,
            "version": version.to_string(),
            "last_inference": self.last_inference_ms.load(Ordering::Relaxed),
            "inference_count": self.inference_count.load(Ordering::Relaxed),
            "execution_count": self.execution_count(),
            "inference_stats": {
                "success": self.success.json(),
                "fail": self.fail.json(),
                "queue": self.queue.json(),
                "compute_input": self.compute_input.json(),
                "compute_infer": self.compute_infer.json(),
                "compute_output": self.compute_output.json(),
                "cache_hit": zero.clone(),
                "cache_miss": zero,
            },
            "batch_stats": batch_stats,
            "memory_usage": [],
        });
        drop(map);
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_counted_by_size_and_requests() {
        let stats = ModelStats::default();
        let t = BatchTimes {
            input: Duration::from_nanos(10),
            infer: Duration::from_nanos(100),
            output: Duration::from_nanos(5),
        };
        stats.record_batch(3, 7, t);
        stats.record_batch(1, 1, t);
        let json = stats.to_json("m", 2);
        assert_eq!(json["execution_count"], 2);
        assert_eq!(json["inference_count"], 8);
        assert_eq!(json["inference_stats"]["compute_infer"]["count"], 4);
        assert_eq!(json["inference_stats"]["compute_infer"]["ns"], 400);
        assert_eq!(json["batch_stats"][1]["batch_size"], 7);
        assert_eq!(json["version"], "2");
    }
}
