//! Latency/throughput summaries from an hdrhistogram, shared by every measurement.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// One measurement: latency percentiles in microseconds, throughput, errors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    /// Non-200 answers by status ("0" for transport failures).
    #[serde(default)]
    pub errors_by_status: std::collections::BTreeMap<String, u64>,
    pub rows_per_request: usize,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub rows_per_second: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// A histogram of latencies in nanoseconds (1 ns .. 60 s, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    // Auto-resizing with 3 significant digits: construction only fails for sigfig > 5.
    let mut hist = Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid"));
    hist.auto(true);
    hist
}

impl Summary {
    /// Summarises `hist` (nanoseconds) over a window of `elapsed`.
    pub fn from_histogram(
        hist: &Histogram<u64>,
        errors_by_status: std::collections::BTreeMap<String, u64>,
        rows_per_request: usize,
        elapsed: Duration,
    ) -> Self {
        let errors = errors_by_status.values().sum();
        let us = |q: f64| hist.value_at_quantile(q) as f64 / 1e3;
        let seconds = elapsed.as_secs_f64();
        let requests = hist.len();
        Self {
            requests,
            errors,
            errors_by_status,
            rows_per_request,
            seconds,
            requests_per_second: requests as f64 / seconds,
            rows_per_second: (requests as usize * rows_per_request) as f64 / seconds,
            p50_us: us(0.5),
            p90_us: us(0.9),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: hist.max() as f64 / 1e3,
        }
    }

    /// A one-line human summary.
    pub fn line(&self) -> String {
        let by_status: Vec<String> = self.errors_by_status.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        format!(
            "{:>9} req {:>5} err {} | {:>10.0} req/s {:>11.0} rows/s | p50 {:>8.1} µs p90 {:>8.1} p99 {:>8.1} p99.9 {:>8.1} max {:>9.1}",
            self.requests,
            self.errors,
            if by_status.is_empty() { String::new() } else { format!("({})", by_status.join(" ")) },
            self.requests_per_second,
            self.rows_per_second,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.max_us
        )
    }
}
