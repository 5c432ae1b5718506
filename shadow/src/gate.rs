//! The quality gate: a candidate replaces the champion only when it is better on the same
//! recent labelled rows — by a minimum AUC gain whose paired bootstrap interval excludes zero,
//! without worse log loss or calibration (ECE) beyond a tolerance, and with no slice (e.g. a
//! category) losing more AUC than allowed.

use serde::{Deserialize, Serialize};

use crate::quality::{Quality, log_loss, paired_difference, roc_auc};

/// What a candidate must show.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GatePolicy {
    /// Least AUC gain over the champion.
    pub min_auc_gain: f64,
    /// Largest allowed log-loss increase.
    pub max_log_loss_increase: f64,
    /// Largest allowed increase of the expected calibration error (10 bins).
    pub max_ece_increase: f64,
    /// Largest AUC loss allowed in any slice with at least `min_slice_rows` rows.
    pub max_slice_auc_drop: f64,
    pub min_slice_rows: usize,
    /// Confidence of the paired interval on the AUC difference.
    pub confidence: f64,
    pub resamples: usize,
    pub seed: u64,
}

impl Default for GatePolicy {
    fn default() -> Self {
        Self {
            min_auc_gain: 0.005,
            max_log_loss_increase: 0.01,
            max_ece_increase: 0.02,
            max_slice_auc_drop: 0.02,
            min_slice_rows: 200,
            confidence: 0.95,
            resamples: 500,
            seed: 7,
        }
    }
}

/// The gate's decision and the numbers behind it.
#[derive(Clone, Debug, Serialize)]
pub struct GateVerdict {
    pub passed: bool,
    pub reasons: Vec<String>,
    pub candidate: Quality,
    pub champion: Quality,
    /// Candidate − champion AUC, and its interval.
    pub auc_difference: (f64, f64, f64),
    /// (slice, rows, candidate AUC − champion AUC) for slices large enough to judge.
    pub slices: Vec<(String, usize, f64)>,
}

/// Judges `candidate` against `champion` scores on the same rows with `labels`; `slices` gives
/// each row's slice name when per-slice checks are wanted.
pub fn gate(
    policy: &GatePolicy,
    candidate: &[f64],
    champion: &[f64],
    labels: &[f64],
    slices: Option<&[String]>,
) -> GateVerdict {
    let (c, h) = (Quality::of(candidate, labels, 0.5), Quality::of(champion, labels, 0.5));
    let difference =
        paired_difference(candidate, champion, labels, roc_auc, (policy.confidence, policy.resamples, policy.seed));
    let mut reasons = Vec::new();
    let mut passed = true;
    let (d, lo, hi) = difference;
    if d >= policy.min_auc_gain && lo > 0.0 {
        reasons.push(format!(
            "AUC {:.4} vs {:.4}: +{d:.4}, {:.0}% interval [{lo:.4}, {hi:.4}] above 0",
            c.auc,
            h.auc,
            policy.confidence * 100.0
        ));
    } else {
        passed = false;
        reasons.push(format!(
            "AUC {:.4} vs {:.4}: {d:+.4}, interval [{lo:.4}, {hi:.4}]; needs +{} with the interval above 0",
            c.auc, h.auc, policy.min_auc_gain
        ));
    }
    let ll = log_loss(candidate, labels) - log_loss(champion, labels);
    if ll > policy.max_log_loss_increase {
        passed = false;
        reasons.push(format!(
            "log loss {:.4} vs {:.4}: +{ll:.4} exceeds {}",
            c.log_loss, h.log_loss, policy.max_log_loss_increase
        ));
    }
    if c.ece - h.ece > policy.max_ece_increase {
        passed = false;
        reasons.push(format!(
            "calibration error {:.4} vs {:.4}: +{:.4} exceeds {}",
            c.ece,
            h.ece,
            c.ece - h.ece,
            policy.max_ece_increase
        ));
    }
    let mut judged = Vec::new();
    if let Some(names) = slices {
        let mut groups: std::collections::BTreeMap<&str, Vec<usize>> = std::collections::BTreeMap::new();
        for (i, name) in names.iter().enumerate() {
            groups.entry(name.as_str()).or_default().push(i);
        }
        for (name, rows) in groups.into_iter().filter(|(_, rows)| rows.len() >= policy.min_slice_rows) {
            let pick = |v: &[f64]| rows.iter().map(|i| v[*i]).collect::<Vec<_>>();
            let y = pick(labels);
            let change = roc_auc(&pick(candidate), &y) - roc_auc(&pick(champion), &y);
            if change.is_finite() {
                if change < -policy.max_slice_auc_drop {
                    passed = false;
                    reasons.push(format!(
                        "slice {name} ({} rows): AUC {change:+.4}, more than -{} ",
                        rows.len(),
                        policy.max_slice_auc_drop
                    ));
                }
                judged.push((name.to_owned(), rows.len(), change));
            }
        }
    }
    GateVerdict { passed, reasons, candidate: c, champion: h, auc_difference: difference, slices: judged }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Labels and two score vectors: `weak` barely informative, `strong` much more.
    fn data(n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<String>) {
        let mut rng = fastrand::Rng::with_seed(3);
        let y: Vec<f64> = (0..n).map(|_| if rng.f64() < 0.3 { 1.0 } else { 0.0 }).collect();
        let score = |s: f64, rng: &mut fastrand::Rng| -> Vec<f64> {
            y.iter().map(|y| (s * y + rng.f64()) / (1.0 + s)).collect()
        };
        let weak = score(0.2, &mut rng);
        let strong = score(1.0, &mut rng);
        let slices = (0..n).map(|i| format!("category-{}", i % 4)).collect();
        (y, weak, strong, slices)
    }

    /// The default policy with fewer resamples, to keep debug-build tests quick; the scores of
    /// `data` are not calibrated, so calibration is judged in its own test.
    fn policy() -> GatePolicy {
        GatePolicy { resamples: 200, max_ece_increase: 1.0, ..GatePolicy::default() }
    }

    #[test]
    fn accepts_a_clearly_better_candidate() {
        let (y, weak, strong, slices) = data(4000);
        let v = gate(&policy(), &strong, &weak, &y, Some(&slices));
        assert!(v.passed, "{:?}", v.reasons);
        assert!(v.auc_difference.1 > 0.0 && v.slices.len() == 4);
    }

    #[test]
    fn rejects_a_worse_and_a_no_better_candidate() {
        let (y, weak, strong, _) = data(4000);
        let worse = gate(&policy(), &weak, &strong, &y, None);
        assert!(!worse.passed && worse.reasons[0].contains("needs +0.005"), "{:?}", worse.reasons);
        let same: Vec<f64> = weak.iter().map(|p| p * p).collect();
        let no_better = gate(&policy(), &same, &weak, &y, None);
        assert!(!no_better.passed, "same ranking, no gain: {:?}", no_better.reasons);
    }

    #[test]
    fn a_better_ranking_with_far_worse_calibration_is_refused() {
        // Labels drawn from known probabilities p: p itself is calibrated; so is a coarse model
        // that predicts the mean p of its half (worse AUC); p squeezed towards 0.5 ranks like p
        // but is badly calibrated.
        let mut rng = fastrand::Rng::with_seed(11);
        let p: Vec<f64> = (0..4000).map(|_| 0.05 + 0.55 * rng.f64()).collect();
        let y: Vec<f64> = p.iter().map(|p| if rng.f64() < *p { 1.0 } else { 0.0 }).collect();
        let half_mean = |low: bool| {
            let v: Vec<f64> = p.iter().copied().filter(|v| (*v < 0.325) == low).collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        let (low, high) = (half_mean(true), half_mean(false));
        let coarse: Vec<f64> = p.iter().map(|v| if *v < 0.325 { low } else { high }).collect();
        let squeezed: Vec<f64> = p.iter().map(|v| 0.4 + 0.2 * v).collect();
        let lenient = GatePolicy { resamples: 200, max_log_loss_increase: 10.0, ..GatePolicy::default() };
        assert!(gate(&lenient, &p, &coarse, &y, None).passed, "better and calibrated: passes");
        let v = gate(&lenient, &squeezed, &coarse, &y, None);
        assert!(!v.passed, "{:?}", v.reasons);
        assert!(v.reasons.iter().any(|r| r.starts_with("calibration error")), "{:?}", v.reasons);
    }

    #[test]
    fn a_slice_that_gets_worse_blocks_an_overall_gain() {
        let (y, weak, strong, slices) = data(4000);
        // Better everywhere except category-1, where the candidate is the weak model reversed.
        let candidate: Vec<f64> =
            (0..y.len()).map(|i| if slices[i] == "category-1" { 1.0 - weak[i] } else { strong[i] }).collect();
        let v = gate(&policy(), &candidate, &weak, &y, Some(&slices));
        assert!(!v.passed);
        assert!(v.reasons.iter().any(|r| r.starts_with("slice category-1")), "{:?}", v.reasons);
    }
}
