//! Labelled outcomes of the requests one arm answered, and the comparison of two arms' quality
//! on them: what a rollout's quality verdict rests on.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::quality::{log_loss, roc_auc, two_sample_difference};

/// (score, label) pairs kept per arm; beyond this a uniform reservoir keeps the sample fair.
pub const MAX_LABELLED: usize = 50_000;

#[derive(Debug, Default)]
struct Rows {
    seen: u64,
    scores: Vec<f64>,
    labels: Vec<f64>,
    rng: Option<fastrand::Rng>,
}

/// A labelled record in a form that travels and adds up: how many were seen, and the kept
/// (score, label) sample.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LabelledExport {
    pub seen: u64,
    pub scores: Vec<f64>,
    pub labels: Vec<f64>,
}

/// Scores an arm answered with, joined to the labels that arrived for them.
#[derive(Debug, Default)]
pub struct LabelledRecord {
    rows: Mutex<Rows>,
}

impl LabelledRecord {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one labelled answer; non-finite values are ignored.
    pub fn add(&self, score: f64, label: f64) {
        if !score.is_finite() || !label.is_finite() {
            return;
        }
        let mut rows = self.lock();
        rows.seen += 1;
        if rows.scores.len() < MAX_LABELLED {
            rows.scores.push(score);
            rows.labels.push(label);
            return;
        }
        let seen = rows.seen;
        let at = rows.rng.get_or_insert_with(|| fastrand::Rng::with_seed(seen)).u64(..seen) as usize;
        if at < MAX_LABELLED {
            rows.scores[at] = score;
            rows.labels[at] = label;
        }
    }

    /// The record so far, to be absorbed elsewhere.
    pub fn export(&self) -> LabelledExport {
        let rows = self.lock();
        LabelledExport { seen: rows.seen, scores: rows.scores.clone(), labels: rows.labels.clone() }
    }

    /// Adds another record (another replica's): its kept rows join this one's sample, and its
    /// count of rows seen adds up. Beyond [`MAX_LABELLED`] the merged sample favours no side by
    /// much only when the two were sampled alike; replicas behind one balancer are.
    pub fn absorb(&self, other: &LabelledExport) {
        for (&score, &label) in other.scores.iter().zip(&other.labels) {
            self.add(score, label);
        }
        let kept = other.scores.len().min(other.labels.len()) as u64;
        self.lock().seen += other.seen.saturating_sub(kept);
    }

    /// Labelled answers recorded so far (the reservoir may hold fewer).
    pub fn len(&self) -> u64 {
        self.lock().seen
    }

    /// Whether no labelled answer was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the kept (scores, labels).
    pub fn rows(&self) -> (Vec<f64>, Vec<f64>) {
        let rows = self.lock();
        (rows.scores.clone(), rows.labels.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rows> {
        // Two vectors pushed together under the lock; a panic elsewhere leaves them equal-length.
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One measure for both arms and the interval on their difference (candidate − champion).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Difference {
    pub candidate: f64,
    pub champion: f64,
    pub difference: f64,
    pub low: f64,
    pub high: f64,
}

/// The two arms' labelled quality and the intervals the verdict reads.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct QualityComparison {
    pub candidate_rows: u64,
    pub champion_rows: u64,
    pub confidence: f64,
    /// ROC AUC; `None` while either arm has labels of one class only.
    pub auc: Option<Difference>,
    pub log_loss: Difference,
}

/// Bootstrap resamples of each interval: enough for a stable 95% percentile at these sizes.
const RESAMPLES: usize = 300;

/// Compares the arms' labelled rows: each arm resampled on its own (the arms answered different
/// requests), `confidence` two-sided percentile intervals, seeded by the row counts so the same
/// evidence always gives the same interval.
pub fn compare(candidate: &LabelledRecord, champion: &LabelledRecord, confidence: f64) -> QualityComparison {
    let (c_scores, c_labels) = candidate.rows();
    let (h_scores, h_labels) = champion.rows();
    let seed = (c_scores.len() as u64) << 32 | h_scores.len() as u64;
    let measure = |metric: fn(&[f64], &[f64]) -> f64| {
        let (difference, low, high) = two_sample_difference(
            (&c_scores, &c_labels),
            (&h_scores, &h_labels),
            metric,
            (confidence, RESAMPLES, seed),
        );
        Difference {
            candidate: metric(&c_scores, &c_labels),
            champion: metric(&h_scores, &h_labels),
            difference,
            low,
            high,
        }
    };
    let auc = measure(roc_auc);
    QualityComparison {
        candidate_rows: candidate.len(),
        champion_rows: champion.len(),
        confidence,
        auc: (auc.difference.is_finite() && auc.low.is_finite()).then_some(auc),
        log_loss: measure(log_loss),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_bounded_fair_sample_and_ignores_non_finite_values() {
        let record = LabelledRecord::new();
        record.add(f64::NAN, 1.0);
        assert!(record.is_empty());
        for i in 0..(MAX_LABELLED as u64 * 2) {
            record.add((i % 2) as f64, 1.0);
        }
        let (scores, labels) = record.rows();
        assert_eq!((record.len(), scores.len(), labels.len()), (MAX_LABELLED as u64 * 2, MAX_LABELLED, MAX_LABELLED));
        let ones = scores.iter().sum::<f64>() / scores.len() as f64;
        assert!((ones - 0.5).abs() < 0.02, "the reservoir keeps the mix: {ones}");
    }

    #[test]
    fn a_worse_ranking_shows_as_an_interval_below_zero() {
        let mut rng = fastrand::Rng::with_seed(9);
        let (good, bad) = (LabelledRecord::new(), LabelledRecord::new());
        for _ in 0..3000 {
            let y = f64::from(u8::from(rng.f64() < 0.3));
            good.add((0.6 * y + rng.f64()) / 1.6, y);
            let y = f64::from(u8::from(rng.f64() < 0.3));
            bad.add((0.2 * y + rng.f64()) / 1.2, y);
        }
        let q = compare(&bad, &good, 0.95);
        let auc = q.auc.clone().expect("both classes present");
        assert!(auc.high < 0.0 && auc.low < auc.difference, "{auc:?}");
        assert_eq!((q.candidate_rows, q.champion_rows), (3000, 3000));
        assert_eq!(q, compare(&bad, &good, 0.95), "same evidence, same interval");
    }
}
