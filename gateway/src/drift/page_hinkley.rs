//! Page-Hinkley: a sequential test for an increase or a decrease in a stream's mean.

/// Two-sided Page-Hinkley detector.
#[derive(Clone, Debug)]
pub struct PageHinkley {
    /// Magnitude of change tolerated (in the stream's units).
    delta: f64,
    /// Alarm threshold on the cumulative deviation.
    lambda: f64,
    /// Observations before any alarm.
    min_samples: u64,
    n: u64,
    mean: f64,
    up: f64,
    up_min: f64,
    down: f64,
    down_max: f64,
}

impl PageHinkley {
    pub fn new(delta: f64, lambda: f64, min_samples: u64) -> Self {
        Self { delta, lambda, min_samples, n: 0, mean: 0.0, up: 0.0, up_min: 0.0, down: 0.0, down_max: 0.0 }
    }

    /// Adds one observation; returns the test statistic when it crosses `lambda` (then resets).
    pub fn update(&mut self, x: f64) -> Option<f64> {
        if x.is_nan() {
            return None;
        }
        self.n += 1;
        self.mean += (x - self.mean) / self.n as f64;
        self.up += x - self.mean - self.delta;
        self.up_min = self.up_min.min(self.up);
        self.down += x - self.mean + self.delta;
        self.down_max = self.down_max.max(self.down);
        let statistic = (self.up - self.up_min).max(self.down_max - self.down);
        if self.n >= self.min_samples && statistic > self.lambda {
            self.reset();
            return Some(statistic);
        }
        None
    }

    /// Forgets everything (after an alarm, or when the reference changes).
    pub fn reset(&mut self) {
        *self = Self::new(self.delta, self.lambda, self.min_samples);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Standard normal draws from a fixed seed (Box–Muller).
    fn normal(rng: &mut fastrand::Rng) -> f64 {
        let (u, v) = (rng.f64().max(1e-12), rng.f64());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    fn detector() -> PageHinkley {
        PageHinkley::new(0.1, 50.0, 30)
    }

    #[test]
    fn no_alarm_on_a_long_stationary_stream() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut ph = detector();
        let alarms = (0..100_000).filter(|_| ph.update(normal(&mut rng)).is_some()).count();
        assert_eq!(alarms, 0, "N(0,1) for 100 000 steps");
    }

    #[test]
    fn alarms_soon_after_an_abrupt_shift() {
        let mut rng = fastrand::Rng::with_seed(12);
        let mut ph = detector();
        for _ in 0..5_000 {
            assert!(ph.update(normal(&mut rng)).is_none());
        }
        let delay = (1..=1_000).find(|_| ph.update(1.0 + normal(&mut rng)).is_some());
        // A shift of 1 sd: the drift term grows ~0.9 a step against lambda 50.
        assert!(delay.is_some_and(|d| d <= 120), "delay {delay:?}");
    }

    #[test]
    fn alarms_on_a_gradual_shift() {
        let mut rng = fastrand::Rng::with_seed(13);
        let mut ph = detector();
        for _ in 0..5_000 {
            assert!(ph.update(normal(&mut rng)).is_none());
        }
        // The mean ramps from 0 to 1 over 2000 steps.
        let delay = (1..=3_000).find(|i| ph.update((*i as f64 / 2_000.0).min(1.0) + normal(&mut rng)).is_some());
        assert!(delay.is_some_and(|d| d <= 1_200), "delay {delay:?}");
    }
}
