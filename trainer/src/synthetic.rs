//! Synthetic fraud-like data with known, controllable drift, for the demo, tests and benchmarks.
//!
//! Each row is a card transaction with twelve numeric features (names in [`FEATURES`]); the
//! label is drawn from a known logistic function of them, about 3-5% positive. Two kinds of
//! drift start at row `onset` and ramp in over `ramp` rows (0 = abrupt):
//! - **covariate shift**: amounts grow (log-mean +0.8), foreign and new-device transactions
//!   triple; the label function is unchanged, so a model's inputs look different but its
//!   mapping stays right — drift detectors fire, accuracy holds.
//! - **concept drift**: the label function changes — card-present transactions stop being
//!   safe and night-time ones become risky; inputs look the same, so only labels (DDM, live
//!   accuracy) reveal it, and only retraining on post-drift labels recovers.

use serde::Deserialize;

/// Feature names, in column order.
pub const FEATURES: [&str; 12] = [
    "amount_log",
    "hour",
    "merchant_risk",
    "distance_log",
    "account_age_log",
    "tx_24h",
    "is_foreign",
    "card_present",
    "device_new",
    "category",
    "velocity",
    "prior_chargebacks",
];

/// Which drift to inject.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    None,
    Covariate,
    Concept,
    Both,
}

/// Generator settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Synthetic {
    pub seed: u64,
    pub drift: DriftKind,
    /// Row at which the drift starts.
    pub onset: u64,
    /// Rows over which it ramps in (0: abrupt).
    pub ramp: u64,
}

/// One generated row.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub features: [f64; 12],
    /// The true probability of fraud under the label function in force.
    pub probability: f64,
    pub label: f64,
}

/// A deterministic stream of rows.
pub struct Stream {
    config: Synthetic,
    rng: fastrand::Rng,
    index: u64,
}

impl Synthetic {
    /// The stream of rows from row 0.
    pub fn stream(&self) -> Stream {
        Stream { config: self.clone(), rng: fastrand::Rng::with_seed(self.seed), index: 0 }
    }

    /// How far the drift has come at row `index`, in [0, 1].
    pub fn progress(&self, index: u64) -> f64 {
        if self.drift == DriftKind::None || index < self.onset {
            0.0
        } else if self.ramp == 0 {
            1.0
        } else {
            ((index - self.onset) as f64 / self.ramp as f64).min(1.0)
        }
    }
}

/// Rows as a training split, timed by position (row `i` at `first_index + i` µs).
pub fn split(rows: &[Row], first_index: usize) -> crate::dataset::Split {
    crate::dataset::Split {
        x: rows.iter().map(|r| r.features.to_vec()).collect(),
        y: rows.iter().map(|r| r.label).collect(),
        time_us: (first_index as i64..(first_index + rows.len()) as i64).collect(),
    }
}

fn normal(rng: &mut fastrand::Rng) -> f64 {
    let (u, v) = (rng.f64().max(1e-12), rng.f64());
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

fn bernoulli(rng: &mut fastrand::Rng, p: f64) -> f64 {
    if rng.f64() < p { 1.0 } else { 0.0 }
}

impl Iterator for Stream {
    type Item = Row;

    fn next(&mut self) -> Option<Row> {
        let t = self.config.progress(self.index);
        let covariate = if matches!(self.config.drift, DriftKind::Covariate | DriftKind::Both) { t } else { 0.0 };
        let concept = if matches!(self.config.drift, DriftKind::Concept | DriftKind::Both) { t } else { 0.0 };
        let r = &mut self.rng;
        let amount_log = 3.5 + 0.8 * covariate + 1.0 * normal(r);
        let hour = f64::from(r.u32(0..24));
        let merchant_risk = r.f64().powi(3);
        let distance_log = (1.0 + 50.0 * r.f64().powi(2)).ln();
        let account_age_log = (30.0 + 2000.0 * r.f64()).ln();
        let tx_24h = f64::from(r.u32(0..6)) + if r.f64() < 0.05 { f64::from(r.u32(5..20)) } else { 0.0 };
        let is_foreign = bernoulli(r, 0.05 * (1.0 + 2.0 * covariate));
        let card_present = bernoulli(r, 0.6);
        let device_new = bernoulli(r, 0.08 * (1.0 + 2.0 * covariate));
        let category = f64::from(r.u32(0..8));
        let velocity = tx_24h / 24.0 + 0.1 * r.f64();
        let prior_chargebacks = if r.f64() < 0.03 { 1.0 } else { 0.0 };
        self.index += 1;
        let features = [
            amount_log,
            hour,
            merchant_risk,
            distance_log,
            account_age_log,
            tx_24h,
            is_foreign,
            card_present,
            device_new,
            category,
            velocity,
            prior_chargebacks,
        ];
        let probability = probability(&features, concept);
        let label = bernoulli(r, probability);
        Some(Row { features, probability, label })
    }
}

/// The true probability of fraud for `f` (in [`FEATURES`] order) when the concept drift has
/// come `concept` of the way (0 before it, 1 after).
pub fn probability(f: &[f64; 12], concept: f64) -> f64 {
    let night = if (6.0..22.0).contains(&f[1]) { 0.0 } else { 1.0 };
    let logit = -5.3 + 0.9 * (f[0] - 3.5) + 2.5 * f[2] + 0.4 * f[3] - 0.25 * (f[4] - 6.0) + 0.12 * f[5] + 1.6 * f[6]
        - 1.0 * f[7] * (1.0 - concept)
        + 1.1 * f[8]
        + 1.5 * f[11]
        + concept * (1.8 * night + 0.8 * f[7]);
    1.0 / (1.0 + (-logit).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(config: &Synthetic, skip: usize, n: usize) -> Vec<Row> {
        config.stream().skip(skip).take(n).collect()
    }

    fn mean(rows: &[Row], f: impl Fn(&Row) -> f64) -> f64 {
        rows.iter().map(f).sum::<f64>() / rows.len() as f64
    }

    #[test]
    fn the_stream_is_deterministic_and_imbalanced() {
        let config = Synthetic { seed: 7, drift: DriftKind::None, onset: 0, ramp: 0 };
        let (a, b) = (take(&config, 0, 20_000), take(&config, 0, 20_000));
        assert_eq!(a, b);
        let positive = mean(&a, |r| r.label);
        assert!((0.02..0.08).contains(&positive), "{positive}");
    }

    #[test]
    fn covariate_shift_moves_inputs_not_the_label_function() {
        let config = Synthetic { seed: 8, drift: DriftKind::Covariate, onset: 10_000, ramp: 0 };
        let (before, after) = (take(&config, 0, 10_000), take(&config, 10_000, 10_000));
        let amount = |r: &Row| r.features[0];
        assert!((mean(&after, amount) - mean(&before, amount) - 0.8).abs() < 0.05);
        assert!(mean(&after, |r| r.features[6]) > 2.5 * mean(&before, |r| r.features[6]));
        // The label function did not change: every row's probability is the pre-drift one.
        assert!(after.iter().all(|r| r.probability == probability(&r.features, 0.0)));
    }

    #[test]
    fn concept_drift_changes_labels_on_the_same_inputs() {
        let concept = Synthetic { seed: 10, drift: DriftKind::Concept, onset: 0, ramp: 0 };
        let none = Synthetic { drift: DriftKind::None, ..concept.clone() };
        let (drifted, plain) = (take(&concept, 0, 5_000), take(&none, 0, 5_000));
        assert!(drifted.iter().zip(&plain).all(|(a, b)| a.features == b.features), "inputs identical");
        let present_night = |rows: &[Row]| {
            let sel: Vec<&Row> =
                rows.iter().filter(|r| r.features[7] == 1.0 && !(6.0..22.0).contains(&r.features[1])).collect();
            sel.iter().map(|r| r.probability).sum::<f64>() / sel.len() as f64
        };
        assert!(present_night(&drifted) > 5.0 * present_night(&plain));
    }

    #[test]
    fn a_gradual_drift_ramps_linearly() {
        let config = Synthetic { seed: 1, drift: DriftKind::Covariate, onset: 1_000, ramp: 2_000 };
        assert_eq!(config.progress(999), 0.0);
        assert!((config.progress(2_000) - 0.5).abs() < 1e-12);
        assert_eq!(config.progress(5_000), 1.0);
    }
}
