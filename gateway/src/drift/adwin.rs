//! ADWIN (Bifet & Gavaldà, 2007): an adaptive window over a stream of values in [0, 1] that
//! drops its older part when the two parts' means differ by more than a Hoeffding bound.
//! This is the plain (not exponential-histogram) form over a bounded window, checking split
//! points every `stride` values: O(window / stride) per check.

use std::collections::VecDeque;

/// Adaptive windowing change detector.
#[derive(Clone, Debug)]
pub struct Adwin {
    delta: f64,
    max_window: usize,
    stride: usize,
    window: VecDeque<f64>,
    since_check: usize,
}

impl Adwin {
    /// `delta` is the confidence parameter (smaller: fewer false alarms, later detection).
    pub fn new(delta: f64, max_window: usize, stride: usize) -> Self {
        Self { delta, max_window, stride: stride.max(1), window: VecDeque::new(), since_check: 0 }
    }

    /// Adds a value (clamped to [0, 1]); returns the difference of means when the window is
    /// cut, after dropping the older part.
    pub fn update(&mut self, x: f64) -> Option<f64> {
        if x.is_nan() {
            return None;
        }
        self.window.push_back(x.clamp(0.0, 1.0));
        if self.window.len() > self.max_window {
            self.window.pop_front();
        }
        self.since_check += 1;
        if self.since_check < self.stride {
            return None;
        }
        self.since_check = 0;
        self.check()
    }

    fn check(&mut self) -> Option<f64> {
        let n = self.window.len();
        let total: f64 = self.window.iter().sum();
        let ln_term = (4.0 * n as f64 / self.delta).ln();
        let mut head = 0.0;
        for (i, x) in self.window.iter().enumerate() {
            head += x;
            let n0 = i + 1;
            if n0 % self.stride != 0 || n0 < self.stride || n - n0 < self.stride {
                continue;
            }
            let n1 = n - n0;
            let (mean0, mean1) = (head / n0 as f64, (total - head) / n1 as f64);
            let m = 1.0 / (1.0 / n0 as f64 + 1.0 / n1 as f64);
            let cut = (ln_term / (2.0 * m)).sqrt();
            if (mean0 - mean1).abs() > cut {
                self.window.drain(..n0);
                return Some(mean1 - mean0);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_on_a_stationary_stream() {
        let mut rng = fastrand::Rng::with_seed(21);
        let mut adwin = Adwin::new(0.002, 2000, 32);
        let alarms = (0..100_000).filter(|_| adwin.update(0.3 + 0.2 * rng.f64()).is_some()).count();
        assert_eq!(alarms, 0);
    }

    #[test]
    fn cuts_soon_after_an_abrupt_shift_and_reports_its_direction() {
        let mut rng = fastrand::Rng::with_seed(22);
        let mut adwin = Adwin::new(0.002, 2000, 32);
        for _ in 0..2000 {
            assert!(adwin.update(0.3 + 0.2 * rng.f64()).is_none());
        }
        let found = (1..=1000).find_map(|i| adwin.update(0.5 + 0.2 * rng.f64()).map(|d| (i, d)));
        let (delay, change) = found.expect("detected");
        // Hoeffding: a 0.2 shift is significant once 0.2 > sqrt(ln(4n/δ) / 2m), i.e. after
        // about 190 new values for n ≈ 2200 and δ = 0.002; checks come every 32 values.
        assert!(delay <= 300 && change > 0.1, "delay {delay}, change {change}");
    }
}
