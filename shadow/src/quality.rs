//! Quality of scores against labels — ROC AUC, log loss, accuracy at a threshold, expected
//! calibration error — and a paired bootstrap of the difference between two models scored on
//! the same rows. The trainer's gate and the live per-arm quality use these.

use serde::Serialize;

/// Quality of one model on labelled rows.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Quality {
    pub rows: usize,
    pub positives: usize,
    pub auc: f64,
    pub log_loss: f64,
    pub accuracy: f64,
    pub ece: f64,
}

/// ROC AUC by ranks (Mann-Whitney U), ties sharing their average rank; NaN without both classes.
pub fn roc_auc(scores: &[f64], labels: &[f64]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    let mut ranks = vec![0.0; scores.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let average = (i + j) as f64 / 2.0 + 1.0;
        for k in &order[i..=j] {
            ranks[*k] = average;
        }
        i = j + 1;
    }
    let positives = labels.iter().filter(|y| **y >= 0.5).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return f64::NAN;
    }
    let rank_sum: f64 = ranks.iter().zip(labels).filter(|(_, y)| **y >= 0.5).map(|(r, _)| r).sum();
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

/// One row's binary cross-entropy, the probability clipped to [ε, 1 − ε] with ε the f64
/// machine epsilon; labels at or above 0.5 are positives. The live per-arm quality and the
/// trainer's gate both score rows with this, so a model scores the same online and offline.
pub fn row_log_loss(p: f64, y: f64) -> f64 {
    let eps = f64::EPSILON;
    let p = p.clamp(eps, 1.0 - eps);
    if y >= 0.5 { -p.ln() } else { -(1.0 - p).ln() }
}

/// Mean binary cross-entropy ([`row_log_loss`] per row).
pub fn log_loss(p: &[f64], labels: &[f64]) -> f64 {
    let sum: f64 = p.iter().zip(labels).map(|(p, y)| row_log_loss(*p, *y)).sum();
    sum / p.len().max(1) as f64
}

/// Share of rows whose score is on the label's side of `threshold`.
pub fn accuracy(p: &[f64], labels: &[f64], threshold: f64) -> f64 {
    let right = p.iter().zip(labels).filter(|(p, y)| (**p >= threshold) == (**y >= 0.5)).count();
    right as f64 / p.len().max(1) as f64
}

/// Expected calibration error over ten equal-width probability bins.
pub fn ece(p: &[f64], labels: &[f64]) -> f64 {
    let mut bins = [(0usize, 0.0f64, 0.0f64); 10];
    for (p, y) in p.iter().zip(labels) {
        let b = ((p * 10.0) as usize).min(9);
        bins[b].0 += 1;
        bins[b].1 += p;
        bins[b].2 += if *y >= 0.5 { 1.0 } else { 0.0 };
    }
    let n = p.len().max(1) as f64;
    bins.iter().filter(|b| b.0 > 0).map(|(c, ps, ys)| (*c as f64 / n) * ((ps - ys) / *c as f64).abs()).sum()
}

impl Quality {
    /// Every measure of `p` against `labels`, accuracy at `threshold`.
    pub fn of(p: &[f64], labels: &[f64], threshold: f64) -> Self {
        Self {
            rows: p.len(),
            positives: labels.iter().filter(|y| **y >= 0.5).count(),
            auc: roc_auc(p, labels),
            log_loss: log_loss(p, labels),
            accuracy: accuracy(p, labels, threshold),
            ece: ece(p, labels),
        }
    }
}

/// A percentile-bootstrap interval for `metric(candidate) − metric(champion)` on the same
/// rows, resampled jointly (paired); returns (observed difference, low, high).
pub fn paired_difference(
    candidate: &[f64],
    champion: &[f64],
    labels: &[f64],
    metric: fn(&[f64], &[f64]) -> f64,
    (confidence, resamples, seed): (f64, usize, u64),
) -> (f64, f64, f64) {
    let observed = metric(candidate, labels) - metric(champion, labels);
    let n = labels.len();
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut c, mut h, mut y) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let diffs: Vec<f64> = (0..resamples)
        .filter_map(|_| {
            for i in 0..n {
                let k = rng.usize(..n.max(1));
                (c[i], h[i], y[i]) = (candidate[k], champion[k], labels[k]);
            }
            let d = metric(&c, &y) - metric(&h, &y);
            d.is_finite().then_some(d)
        })
        .collect();
    let (low, high) = percentile_interval(diffs, confidence);
    (observed, low, high)
}

/// A percentile-bootstrap interval for `metric(candidate) − metric(champion)` when the two
/// were scored on different rows (a canary and its champion answer different requests): each
/// side is resampled on its own. Returns (observed difference, low, high); NaN bounds when no
/// resample gave a finite difference.
pub fn two_sample_difference(
    (c_scores, c_labels): (&[f64], &[f64]),
    (h_scores, h_labels): (&[f64], &[f64]),
    metric: fn(&[f64], &[f64]) -> f64,
    (confidence, resamples, seed): (f64, usize, u64),
) -> (f64, f64, f64) {
    let observed = metric(c_scores, c_labels) - metric(h_scores, h_labels);
    if c_scores.is_empty() || h_scores.is_empty() {
        return (observed, f64::NAN, f64::NAN);
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let resample = |scores: &[f64], labels: &[f64], rng: &mut fastrand::Rng, s: &mut Vec<f64>, y: &mut Vec<f64>| {
        s.clear();
        y.clear();
        for _ in 0..scores.len() {
            let k = rng.usize(..scores.len());
            s.push(scores[k]);
            y.push(labels[k]);
        }
    };
    let (mut s, mut y) = (Vec::with_capacity(c_scores.len()), Vec::with_capacity(c_scores.len()));
    let diffs: Vec<f64> = (0..resamples)
        .filter_map(|_| {
            resample(c_scores, c_labels, &mut rng, &mut s, &mut y);
            let candidate = metric(&s, &y);
            resample(h_scores, h_labels, &mut rng, &mut s, &mut y);
            let d = candidate - metric(&s, &y);
            d.is_finite().then_some(d)
        })
        .collect();
    let (low, high) = percentile_interval(diffs, confidence);
    (observed, low, high)
}

/// The two-sided `confidence` percentile interval of bootstrap `diffs`; NaN when empty.
fn percentile_interval(mut diffs: Vec<f64>, confidence: f64) -> (f64, f64) {
    if diffs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    diffs.sort_by(f64::total_cmp);
    let tail = (1.0 - confidence) / 2.0;
    let at = |q: f64| diffs[((q * (diffs.len() - 1) as f64).round() as usize).min(diffs.len() - 1)];
    (at(tail), at(1.0 - tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Fixed data shared with the reference computation (scikit-learn 1.x, numpy 2.4):
    //   y = [(i*7 % 11) % 3 == 0 for i in range(40)]
    //   p = [((i*13 % 17) / 17) * 0.8 + 0.1 * y[i] for i in range(40)]
    fn data() -> (Vec<f64>, Vec<f64>) {
        let y: Vec<f64> = (0..40).map(|i| if (i * 7 % 11) % 3 == 0 { 1.0 } else { 0.0 }).collect();
        let p = (0..40).map(|i| f64::from(i * 13 % 17) / 17.0 * 0.8 + 0.1 * y[i as usize]).collect();
        (p, y)
    }

    #[test]
    fn measures_match_scikit_learn() {
        let (p, y) = data();
        let q = Quality::of(&p, &y, 0.5);
        assert_eq!(q.positives, 16);
        assert!((q.auc - 0.6484375).abs() < 1e-12, "roc_auc_score -> 0.6484375, got {}", q.auc);
        assert!((q.log_loss - 0.6830970004455951).abs() < 1e-12, "log_loss -> 0.6830970004455951, got {}", q.log_loss);
        assert!((q.accuracy - 0.55).abs() < 1e-12, "accuracy_score(y, p >= 0.5) -> 0.55");
        assert!((q.ece - 0.1982352941176471).abs() < 1e-12, "10-bin ECE -> 0.1982352941176471, got {}", q.ece);
        // Ties: roc_auc_score(y, np.round(p, 1)) -> 0.625
        let rounded: Vec<f64> = p.iter().map(|v| (v * 10.0).round() / 10.0).collect();
        assert!((roc_auc(&rounded, &y) - 0.625).abs() < 1e-12);
    }

    #[test]
    fn the_paired_interval_separates_better_equal_and_worse_models() {
        let mut rng = fastrand::Rng::with_seed(4);
        let y: Vec<f64> = (0..2000).map(|_| if rng.f64() < 0.3 { 1.0 } else { 0.0 }).collect();
        let noisy = |strength: f64, rng: &mut fastrand::Rng| -> Vec<f64> {
            y.iter().map(|y| (strength * y + rng.f64()).min(1.0) / (1.0 + strength)).collect()
        };
        let champion = noisy(0.3, &mut rng);
        let better = noisy(0.9, &mut rng);
        // A model no better: the champion's scores under a monotone map (same ranking).
        let same: Vec<f64> = champion.iter().map(|p| p * p).collect();
        let (d, lo, _) = paired_difference(&better, &champion, &y, roc_auc, (0.95, 300, 1));
        assert!(d > 0.1 && lo > 0.0, "better: {d} [{lo}, ..]");
        let (_, lo, hi) = paired_difference(&same, &champion, &y, roc_auc, (0.95, 300, 1));
        assert!(lo <= 0.0 && hi >= 0.0, "no better: [{lo}, {hi}]");
        let (d, _, hi) = paired_difference(&champion, &better, &y, roc_auc, (0.95, 300, 1));
        assert!(d < -0.1 && hi < 0.0, "worse: {d} [.., {hi}]");
    }

    #[test]
    fn the_two_sample_interval_covers_zero_for_equal_models_and_not_for_a_worse_one() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut arm = |strength: f64, n: usize| -> (Vec<f64>, Vec<f64>) {
            let y: Vec<f64> = (0..n).map(|_| f64::from(u8::from(rng.f64() < 0.3))).collect();
            let p = y.iter().map(|y| (strength * y + rng.f64()) / (1.0 + strength)).collect();
            (p, y)
        };
        let (a, b, worse) = (arm(0.5, 3000), arm(0.5, 3000), arm(0.1, 3000));
        let (_, lo, hi) = two_sample_difference((&a.0, &a.1), (&b.0, &b.1), roc_auc, (0.95, 300, 1));
        assert!(lo < 0.0 && hi > 0.0, "equal: [{lo}, {hi}]");
        let (d, lo, hi) = two_sample_difference((&worse.0, &worse.1), (&a.0, &a.1), roc_auc, (0.95, 300, 1));
        assert!(d < -0.05 && hi < 0.0 && lo < hi, "worse: {d} [{lo}, {hi}]");
        let (_, lo, _) = two_sample_difference((&[], &[]), (&a.0, &a.1), roc_auc, (0.95, 300, 1));
        assert!(lo.is_nan(), "no rows, no interval");
    }
}
