//! Paired comparison: the same request answered by the primary and the candidate.

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::arm::{ArmExport, ArmRecord, ArmSnapshot};
use crate::bootstrap::mean_interval;

/// Differences kept for the bootstrap (a uniform reservoir beyond this many pairs).
const RESERVOIR: usize = 4096;

#[derive(Debug, Default)]
struct Pairs {
    n: u64,
    disagreements: u64,
    abs_diff_sum: f64,
    abs_diff_max: f64,
    diffs: Vec<f64>,
    rng_state: u64,
}

/// Accumulates paired outputs and both arms' records.
#[derive(Debug)]
pub struct PairedComparison {
    /// Decision threshold for classifier scores (agreement = same side of it).
    pub threshold: f64,
    pub primary: ArmRecord,
    pub candidate: ArmRecord,
    pairs: Mutex<Pairs>,
}

/// A comparison in a form that travels and adds up (differences: the kept sample).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PairedExport {
    pub n: u64,
    pub disagreements: u64,
    pub abs_diff_sum: f64,
    pub abs_diff_max: f64,
    pub diffs: Vec<f64>,
    pub primary: ArmExport,
    pub candidate: ArmExport,
}

/// A copy of the comparison at one moment, with a 95% interval on the mean difference
/// (candidate − primary).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct PairedSnapshot {
    pub pairs: u64,
    pub disagreement_rate: f64,
    pub mean_abs_diff: f64,
    pub max_abs_diff: f64,
    pub mean_diff_ci95: Option<(f64, f64)>,
    pub primary: ArmSnapshot,
    pub candidate: ArmSnapshot,
}

impl PairedComparison {
    /// A comparison with decision `threshold`.
    pub fn new(threshold: f64) -> Self {
        Self { threshold, primary: ArmRecord::new(), candidate: ArmRecord::new(), pairs: Mutex::new(Pairs::default()) }
    }

    /// Records one pair of answers (element-wise over the first output) and both latencies.
    pub fn record_pair(
        &self,
        primary: &[f64],
        candidate: &[f64],
        primary_latency: Duration,
        candidate_latency: Duration,
    ) {
        self.primary.record_ok(primary_latency, primary.first().copied());
        self.candidate.record_ok(candidate_latency, candidate.first().copied());
        let mut p = self.pairs.lock().unwrap_or_else(|e| e.into_inner());
        for (a, b) in primary.iter().zip(candidate) {
            let diff = b - a;
            p.n += 1;
            p.abs_diff_sum += diff.abs();
            p.abs_diff_max = p.abs_diff_max.max(diff.abs());
            if (*a >= self.threshold) != (*b >= self.threshold) {
                p.disagreements += 1;
            }
            keep(&mut p, diff);
        }
    }

    /// Records a candidate failure on a request the primary answered.
    pub fn record_candidate_error(&self, primary_latency: Duration) {
        self.primary.record_ok(primary_latency, None);
        self.candidate.record_error();
    }

    /// The comparison so far, to be absorbed elsewhere.
    pub fn export(&self) -> PairedExport {
        let p = self.pairs.lock().unwrap_or_else(|e| e.into_inner());
        PairedExport {
            n: p.n,
            disagreements: p.disagreements,
            abs_diff_sum: p.abs_diff_sum,
            abs_diff_max: p.abs_diff_max,
            diffs: p.diffs.clone(),
            primary: self.primary.export(),
            candidate: self.candidate.export(),
        }
    }

    /// Adds another comparison (another replica's); its kept differences join the reservoir.
    pub fn absorb(&self, other: &PairedExport) {
        self.primary.absorb(&other.primary);
        self.candidate.absorb(&other.candidate);
        let mut p = self.pairs.lock().unwrap_or_else(|e| e.into_inner());
        p.disagreements += other.disagreements;
        p.abs_diff_sum += other.abs_diff_sum;
        p.abs_diff_max = p.abs_diff_max.max(other.abs_diff_max);
        let before = p.n;
        for (i, &diff) in other.diffs.iter().enumerate() {
            p.n = before + i as u64 + 1;
            keep(&mut p, diff);
        }
        p.n = before + other.n;
    }

    /// The comparison so far.
    pub fn snapshot(&self) -> PairedSnapshot {
        let (n, disagreements, sum, max, diffs) = {
            let p = self.pairs.lock().unwrap_or_else(|e| e.into_inner());
            (p.n, p.disagreements, p.abs_diff_sum, p.abs_diff_max, p.diffs.clone())
        };
        let rate = |x: u64| if n == 0 { 0.0 } else { x as f64 / n as f64 };
        PairedSnapshot {
            pairs: n,
            disagreement_rate: rate(disagreements),
            mean_abs_diff: if n == 0 { 0.0 } else { sum / n as f64 },
            max_abs_diff: max,
            mean_diff_ci95: mean_interval(&diffs, 0.95, 1000, 17),
            primary: self.primary.snapshot(),
            candidate: self.candidate.snapshot(),
        }
    }
}

/// Reservoir sampling (Algorithm R) so the kept differences stay a uniform sample.
fn keep(p: &mut Pairs, diff: f64) {
    if p.diffs.len() < RESERVOIR {
        p.diffs.push(diff);
        return;
    }
    p.rng_state = p.rng_state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let slot = (p.rng_state >> 11) % p.n;
    if (slot as usize) < RESERVOIR {
        p.diffs[slot as usize] = diff;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_and_differences_are_counted_per_element() {
        let c = PairedComparison::new(0.5);
        let ms = Duration::from_millis(1);
        c.record_pair(&[0.2, 0.7], &[0.3, 0.4], ms, ms);
        c.record_pair(&[0.9], &[0.9], ms, ms);
        let s = c.snapshot();
        assert_eq!(s.pairs, 3);
        assert!((s.disagreement_rate - 1.0 / 3.0).abs() < 1e-12, "0.7 vs 0.4 cross the threshold");
        assert!((s.mean_abs_diff - 0.4 / 3.0).abs() < 1e-9);
        assert!((s.max_abs_diff - 0.3).abs() < 1e-9);
        assert_eq!(s.candidate.requests, 2);
    }

    #[test]
    fn identical_arms_have_a_zero_width_interval_at_zero() {
        let c = PairedComparison::new(0.5);
        for i in 0..100 {
            let v = [f64::from(i) / 100.0];
            c.record_pair(&v, &v, Duration::ZERO, Duration::ZERO);
        }
        assert_eq!(c.snapshot().mean_diff_ci95, Some((0.0, 0.0)));
        assert_eq!(c.snapshot().disagreement_rate, 0.0);
    }
}
