//! Which served rows reach a version's drift detectors under load (`drift.max_rows_per_second`).
//! The tap's thread shares the cores that serve: fed every row of every request, it cost a third
//! of the tiny model's requests/s at 64 connections. Capped, the detectors see an even subsample;
//! their windows keep `window_rows` rows (the same statistical power), each spanning more time.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Spreads a version's rows to its detectors at most `per_second` a second: a request is taken
/// when the time its predecessor's rows bought (`rows / per_second`) has passed. One atomic load
/// per request; a compare-and-swap per request taken.
#[derive(Debug)]
pub struct DriftIntake {
    origin: Instant,
    /// Nanoseconds after `origin` before which no request is taken.
    next_ns: AtomicU64,
}

impl Default for DriftIntake {
    fn default() -> Self {
        Self { origin: Instant::now(), next_ns: AtomicU64::new(0) }
    }
}

impl DriftIntake {
    /// Whether the `rows` of the request arriving now go to the detectors (`per_second` 0:
    /// always).
    pub fn admit(&self, per_second: u32, rows: usize) -> bool {
        self.admit_at(per_second, rows, self.origin.elapsed())
    }

    fn admit_at(&self, per_second: u32, rows: usize, now: Duration) -> bool {
        if per_second == 0 {
            return true;
        }
        let now = now.as_nanos() as u64;
        let next = self.next_ns.load(Relaxed);
        let bought = (rows.max(1) as u64).saturating_mul(1_000_000_000 / u64::from(per_second));
        now >= next && self.next_ns.compare_exchange(next, now.saturating_add(bought), Relaxed, Relaxed).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_intake_takes_at_most_its_rate_evenly_and_everything_when_unlimited() {
        let intake = DriftIntake::default();
        // 100,000 one-row requests over one second (one every 10 µs): 1000 a second are taken.
        let taken = (0..100_000u64).filter(|i| intake.admit_at(1000, 1, Duration::from_micros(i * 10))).count();
        assert_eq!(taken, 1000);
        // 10-row requests: a tenth as many requests, the same rows.
        let batches = DriftIntake::default();
        let taken = (0..100_000u64).filter(|i| batches.admit_at(1000, 10, Duration::from_micros(i * 10))).count();
        assert_eq!(taken, 100);
        // Fewer rows than the rate: every request is taken.
        let slow = DriftIntake::default();
        assert!((0..50u64).all(|i| slow.admit_at(1000, 1, Duration::from_millis(i * 2))));
        assert!((0..10).all(|_| DriftIntake::default().admit_at(0, 64, Duration::ZERO)));
    }
}
