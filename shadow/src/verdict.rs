//! A rollout policy applied to the evidence: promote, hold, or roll back — with the reasons.

use serde::{Deserialize, Serialize};

use crate::arm::ArmSnapshot;
use crate::labelled::QualityComparison;
use crate::paired::PairedSnapshot;

/// Thresholds a candidate must meet against the primary: health (errors, latency, shadow
/// agreement) as a guard rail, and labelled quality (AUC, log loss) as the decision.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Candidate requests needed before any verdict but `hold`.
    pub min_samples: u64,
    /// Largest allowed candidate error rate minus primary error rate.
    pub max_error_rate_increase: f64,
    /// Largest allowed candidate p99 latency / primary p99 latency.
    pub max_p99_ratio: f64,
    /// p99 increases up to this many microseconds never fail the ratio: the p99 of a step's
    /// few hundred requests moves by milliseconds on a shared machine.
    pub p99_slack_us: u64,
    /// Largest allowed share of paired answers on different sides of the threshold.
    pub max_disagreement: f64,
    /// Labelled rows each arm needs before a quality verdict.
    pub min_labelled: u64,
    /// Largest AUC drop (champion − candidate) still counted as "as good".
    pub max_auc_drop: f64,
    /// Largest log-loss increase (candidate − champion) still counted as "as good".
    pub max_log_loss_increase: f64,
    /// Two-sided confidence of the intervals on the quality differences.
    pub quality_confidence: f64,
    /// No final promotion without a quality verdict: after `max_label_wait_ms` without one,
    /// the candidate is rolled back.
    pub require_labelled: bool,
    /// How long a step that passed everything else waits (after its dwell) for the labels to
    /// settle its quality; then it advances on health alone, or, at the last step with
    /// `require_labelled`, rolls back.
    pub max_label_wait_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            min_samples: 200,
            max_error_rate_increase: 0.01,
            max_p99_ratio: 1.5,
            p99_slack_us: 5_000,
            max_disagreement: 0.1,
            min_labelled: 500,
            max_auc_drop: 0.02,
            max_log_loss_increase: 0.02,
            quality_confidence: 0.95,
            require_labelled: false,
            max_label_wait_ms: 600_000,
        }
    }
}

impl Policy {
    /// Checks the values; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.max_error_rate_increase) {
            return Err(format!("max_error_rate_increase must be in 0..=1, given {}", self.max_error_rate_increase));
        }
        if self.max_p99_ratio.is_nan() || self.max_p99_ratio < 1.0 {
            return Err(format!("max_p99_ratio must be at least 1, given {}", self.max_p99_ratio));
        }
        if !(0.0..=1.0).contains(&self.max_disagreement) {
            return Err(format!("max_disagreement must be in 0..=1, given {}", self.max_disagreement));
        }
        if !(1..=MAX_MIN_LABELLED).contains(&self.min_labelled) {
            return Err(format!("min_labelled must be in 1..={MAX_MIN_LABELLED}, given {}", self.min_labelled));
        }
        if !(0.0..=1.0).contains(&self.max_auc_drop) {
            return Err(format!("max_auc_drop must be in 0..=1, given {}", self.max_auc_drop));
        }
        if !(0.0..=10.0).contains(&self.max_log_loss_increase) {
            return Err(format!("max_log_loss_increase must be in 0..=10, given {}", self.max_log_loss_increase));
        }
        if !(0.5..1.0).contains(&self.quality_confidence) {
            return Err(format!("quality_confidence must be in 0.5..1, given {}", self.quality_confidence));
        }
        if self.max_label_wait_ms > 30 * 24 * 3_600_000 {
            return Err(format!("max_label_wait_ms must be at most 30 days, given {}", self.max_label_wait_ms));
        }
        Ok(())
    }
}

/// `min_labelled` above what an arm keeps could never be met.
const MAX_MIN_LABELLED: u64 = crate::labelled::MAX_LABELLED as u64;

/// What is known about the two arms.
#[derive(Clone, Debug, Serialize)]
pub struct Evidence {
    pub primary: ArmSnapshot,
    pub candidate: ArmSnapshot,
    /// Present when the arms answered the same requests (shadow).
    pub paired: Option<PairedSnapshot>,
    /// Labelled quality of the requests each arm answered.
    pub quality: Option<QualityComparison>,
    /// The primary's record is from an earlier span (a step at 100% sends it nothing): its
    /// latency, measured under another load, is not compared.
    pub historical_primary: bool,
}

impl Evidence {
    /// Evidence from a paired (shadow) comparison.
    pub fn from_paired(paired: PairedSnapshot) -> Self {
        Self {
            primary: paired.primary.clone(),
            candidate: paired.candidate.clone(),
            paired: Some(paired),
            quality: None,
            historical_primary: false,
        }
    }
}

/// The decision.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Promote,
    Hold,
    RollBack,
    /// Health passed; the labels do not settle quality yet (too few, or the interval still
    /// straddles the margin). The controller bounds the wait with `max_label_wait_ms`.
    AwaitLabels,
}

/// What the labels say about the candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QualityVerdict {
    /// Confidently within the margins: as good as the champion.
    AsGood,
    /// Confidently beyond a margin: worse.
    Worse,
    /// Not settled yet.
    Open,
}

/// Applies `policy` to `evidence`. Any failed health check rolls back; so does labelled
/// quality confidently worse than the margins. A candidate confidently as good is promoted; one
/// whose labels do not settle it yet awaits labels, unless it has none at all and labels are
/// not required (then health alone decides). The reasons say which numbers decided.
pub fn judge(policy: &Policy, evidence: &Evidence) -> (Verdict, Vec<String>) {
    let (p, c) = (&evidence.primary, &evidence.candidate);
    if c.requests < policy.min_samples {
        return (Verdict::Hold, vec![format!("{} candidate requests, {} needed", c.requests, policy.min_samples)]);
    }
    let mut failed = Vec::new();
    let mut passed = Vec::new();
    let increase = c.error_rate - p.error_rate;
    let line = format!(
        "error rate {:.4} vs {:.4} (max increase {})",
        c.error_rate, p.error_rate, policy.max_error_rate_increase
    );
    if increase > policy.max_error_rate_increase {
        failed.push(line)
    } else {
        passed.push(line)
    }
    // Refusals by the arm's own queue (a slow candidate shedding load) count like errors; the
    // client's 4xx never do.
    let refused = |a: &ArmSnapshot| a.refused as f64 / (a.requests + a.refused).max(1) as f64;
    let (c_refused, p_refused) = (refused(c), refused(p));
    if c_refused - p_refused > policy.max_error_rate_increase {
        failed.push(format!(
            "queue refusals {c_refused:.4} vs {p_refused:.4} (max increase {})",
            policy.max_error_rate_increase
        ));
    }
    let ratio = c.p99_us as f64 / p.p99_us.max(1) as f64;
    if evidence.historical_primary {
        passed.push(format!("p99 {} µs (not compared: the champion served nothing at this step)", c.p99_us));
    } else {
        let line = format!(
            "p99 {} µs vs {} µs, ratio {ratio:.2} (max {}, beyond {} µs of slack)",
            c.p99_us, p.p99_us, policy.max_p99_ratio, policy.p99_slack_us
        );
        if ratio > policy.max_p99_ratio && c.p99_us.saturating_sub(p.p99_us) > policy.p99_slack_us {
            failed.push(line)
        } else {
            passed.push(line)
        }
    }
    if !failed.is_empty() {
        return (Verdict::RollBack, failed);
    }
    // Shadow agreement is an early signal, not a verdict: a retrained model is meant to answer
    // differently. Arms that differ more than allowed wait for the labels to say which is right.
    let differs = differs(policy, evidence);
    if let Some(paired) = &evidence.paired {
        let line = format!(
            "disagreement {:.4} over {} pairs (max {}{})",
            paired.disagreement_rate,
            paired.pairs,
            policy.max_disagreement,
            if differs { "; exceeded: the labels decide" } else { "" }
        );
        passed.push(line);
    }
    let (quality, lines) = judge_quality(policy, evidence.quality.as_ref());
    match quality {
        QualityVerdict::Worse => (Verdict::RollBack, lines),
        QualityVerdict::AsGood => {
            passed.extend(lines);
            (Verdict::Promote, passed)
        }
        QualityVerdict::Open => {
            // Labels are flowing (for either arm): the candidate's are on their way.
            let labelled = evidence.quality.as_ref().is_some_and(|q| q.candidate_rows > 0 || q.champion_rows > 0);
            passed.extend(lines);
            if policy.require_labelled || labelled || differs {
                (Verdict::AwaitLabels, passed)
            } else {
                passed.push("no labelled candidate answers: judged on health alone".into());
                (Verdict::Promote, passed)
            }
        }
    }
}

/// Whether the shadow pairs disagree more than `max_disagreement`: then only labels (or, once
/// the wait for them is over, a rollback) settle the step.
pub fn differs(policy: &Policy, evidence: &Evidence) -> bool {
    evidence.paired.as_ref().is_some_and(|p| p.disagreement_rate > policy.max_disagreement)
}

fn judge_quality(policy: &Policy, quality: Option<&QualityComparison>) -> (QualityVerdict, Vec<String>) {
    let Some(q) = quality.filter(|q| q.candidate_rows >= policy.min_labelled && q.champion_rows >= policy.min_labelled)
    else {
        let (c, h) = quality.map_or((0, 0), |q| (q.candidate_rows, q.champion_rows));
        return (
            QualityVerdict::Open,
            vec![format!("{c} labelled candidate rows and {h} champion rows, {} each needed", policy.min_labelled)],
        );
    };
    let percent = q.confidence * 100.0;
    let mut worse = Vec::new();
    let mut open = Vec::new();
    let mut good = Vec::new();
    match &q.auc {
        Some(auc) => {
            let line = format!(
                "AUC {:.4} vs {:.4}, difference {:+.4} ({percent}% interval {:+.4}..{:+.4}; max drop {}) on {} / {} labelled rows",
                auc.candidate,
                auc.champion,
                auc.difference,
                auc.low,
                auc.high,
                policy.max_auc_drop,
                q.candidate_rows,
                q.champion_rows
            );
            if auc.high < -policy.max_auc_drop {
                worse.push(line);
            } else if auc.low >= -policy.max_auc_drop {
                good.push(line);
            } else {
                open.push(line);
            }
        }
        None => open.push("AUC undefined: an arm's labels are all of one class".into()),
    }
    let ll = &q.log_loss;
    let line = format!(
        "log loss {:.4} vs {:.4}, difference {:+.4} ({percent}% interval {:+.4}..{:+.4}; max increase {})",
        ll.candidate, ll.champion, ll.difference, ll.low, ll.high, policy.max_log_loss_increase
    );
    if ll.low > policy.max_log_loss_increase {
        worse.push(line);
    } else if ll.high <= policy.max_log_loss_increase {
        good.push(line);
    } else {
        open.push(line);
    }
    if !worse.is_empty() {
        (QualityVerdict::Worse, worse)
    } else if open.is_empty() {
        (QualityVerdict::AsGood, good)
    } else {
        good.extend(open);
        (QualityVerdict::Open, good)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(requests: u64, errors: u64, p99_us: u64) -> ArmSnapshot {
        ArmSnapshot {
            requests,
            errors,
            error_rate: errors as f64 / requests.max(1) as f64,
            client_errors: 0,
            refused: 0,
            p50_us: p99_us / 2,
            p99_us,
            mean_score: None,
        }
    }

    fn evidence(candidate: ArmSnapshot) -> Evidence {
        Evidence { primary: arm(1000, 1, 1000), candidate, paired: None, quality: None, historical_primary: false }
    }

    #[test]
    fn holds_until_enough_samples() {
        let (v, why) = judge(&Policy::default(), &evidence(arm(10, 0, 900)));
        assert_eq!(v, Verdict::Hold);
        assert!(why[0].contains("10 candidate requests, 200 needed"));
    }

    #[test]
    fn promotes_a_candidate_that_passes_every_check() {
        let (v, why) = judge(&Policy::default(), &evidence(arm(500, 0, 1100)));
        assert_eq!(v, Verdict::Promote, "{why:?}");
        assert!(why[0].starts_with("error rate") && why[1].starts_with("p99"), "{why:?}");
    }

    #[test]
    fn rolls_back_on_errors_or_latency_and_says_which() {
        let (v, why) = judge(&Policy::default(), &evidence(arm(500, 50, 900)));
        assert_eq!(v, Verdict::RollBack);
        assert!(why[0].starts_with("error rate 0.1000"), "{why:?}");
        let (v, why) = judge(&Policy::default(), &evidence(arm(500, 0, 7000)));
        assert_eq!(v, Verdict::RollBack);
        assert!(why[0].contains("ratio 7.00"), "{why:?}");
        // Twice as slow but within the slack: a few milliseconds on a few hundred requests.
        let (v, _) = judge(&Policy::default(), &evidence(arm(500, 0, 2000)));
        assert_ne!(v, Verdict::RollBack);
        // Against an earlier span's champion, latency is not compared; errors still are.
        let historical = |c| Evidence { historical_primary: true, ..evidence(c) };
        let (v, why) = judge(&Policy::default(), &historical(arm(500, 0, 70_000)));
        assert_ne!(v, Verdict::RollBack, "{why:?}");
        assert!(why[1].contains("not compared"), "{why:?}");
        assert_eq!(judge(&Policy::default(), &historical(arm(500, 50, 900))).0, Verdict::RollBack);
        // Its own queue refusing requests counts against the candidate.
        let (v, why) = judge(&Policy::default(), &evidence(ArmSnapshot { refused: 50, ..arm(500, 0, 900) }));
        assert_eq!(v, Verdict::RollBack);
        assert!(why[0].starts_with("queue refusals 0.0909"), "{why:?}");
        // Disagreement alone is an early signal: the labels decide.
        let paired = PairedSnapshot { pairs: 500, disagreement_rate: 0.3, ..Default::default() };
        let e = Evidence { paired: Some(paired), ..evidence(arm(500, 0, 900)) };
        let (v, why) = judge(&Policy::default(), &e);
        assert_eq!(v, Verdict::AwaitLabels);
        assert!(why[2].starts_with("disagreement 0.3000") && why[2].contains("the labels decide"), "{why:?}");
        assert!(differs(&Policy::default(), &e));
        let (v, _) =
            judge(&Policy::default(), &Evidence { quality: Some(quality(1000, (0.0, 0.1), (-0.1, 0.0))), ..e });
        assert_eq!(v, Verdict::Promote, "labels say the differing candidate is as good");
    }

    #[test]
    fn policy_values_are_checked() {
        let bad = Policy { max_p99_ratio: 0.5, ..Policy::default() };
        assert!(bad.validate().unwrap_err().contains("max_p99_ratio must be at least 1, given 0.5"));
    }

    fn quality(rows: u64, auc: (f64, f64), log_loss: (f64, f64)) -> QualityComparison {
        let d = |(low, high): (f64, f64)| crate::labelled::Difference {
            candidate: 0.0,
            champion: 0.0,
            difference: (low + high) / 2.0,
            low,
            high,
        };
        QualityComparison {
            candidate_rows: rows,
            champion_rows: rows,
            confidence: 0.95,
            auc: Some(d(auc)),
            log_loss: d(log_loss),
        }
    }

    fn with_quality(q: QualityComparison) -> Evidence {
        Evidence { quality: Some(q), ..evidence(arm(500, 0, 1000)) }
    }

    #[test]
    fn labelled_quality_decides_once_the_interval_clears_a_margin() {
        let policy = Policy::default();
        // Healthy but ranking worse: the AUC interval lies below the allowed drop.
        let (v, why) = judge(&policy, &with_quality(quality(1000, (-0.09, -0.03), (-0.01, 0.01))));
        assert_eq!(v, Verdict::RollBack, "{why:?}");
        assert!(why[0].starts_with("AUC") && why[0].contains("interval -0.0900..-0.0300"), "{why:?}");
        // Worse calibration alone rolls back too.
        let (v, _) = judge(&policy, &with_quality(quality(1000, (-0.01, 0.01), (0.03, 0.05))));
        assert_eq!(v, Verdict::RollBack);
        // Confidently within both margins: promote, with the quality lines as reasons.
        let (v, why) = judge(&policy, &with_quality(quality(1000, (-0.015, 0.01), (-0.01, 0.015))));
        assert_eq!(v, Verdict::Promote, "{why:?}");
        assert!(why.iter().any(|l| l.starts_with("AUC")) && why.iter().any(|l| l.starts_with("log loss")));
        // Straddling the margin: wait for more labels.
        let (v, _) = judge(&policy, &with_quality(quality(1000, (-0.05, 0.02), (-0.01, 0.01))));
        assert_eq!(v, Verdict::AwaitLabels);
    }

    #[test]
    fn too_few_labels_await_more_unless_there_are_none_and_none_are_required() {
        let policy = Policy::default();
        let (v, why) = judge(&policy, &with_quality(quality(100, (-0.5, -0.4), (0.5, 0.6))));
        assert_eq!(v, Verdict::AwaitLabels, "under min_labelled the interval is not read");
        assert!(why.iter().any(|l| l.contains("100 labelled candidate rows and 100 champion rows, 500 each needed")));
        let (v, why) = judge(&policy, &evidence(arm(500, 0, 1000)));
        assert_eq!(v, Verdict::Promote, "no labels at all: health decides");
        assert!(why.last().unwrap().contains("judged on health alone"));
        // The champion's labels are arriving: the candidate's are on their way.
        let flowing = QualityComparison { candidate_rows: 0, ..quality(300, (-0.5, -0.4), (0.5, 0.6)) };
        assert_eq!(judge(&policy, &with_quality(flowing)).0, Verdict::AwaitLabels);
        let strict = Policy { require_labelled: true, ..Policy::default() };
        assert_eq!(judge(&strict, &evidence(arm(500, 0, 1000))).0, Verdict::AwaitLabels);
        // Health failures still come first.
        let (v, _) = judge(
            &policy,
            &Evidence { quality: Some(quality(1000, (0.01, 0.02), (-0.02, -0.01))), ..evidence(arm(500, 100, 1000)) },
        );
        assert_eq!(v, Verdict::RollBack);
    }

    #[test]
    fn quality_keys_are_checked_by_name() {
        for (bad, key) in [
            (Policy { min_labelled: 0, ..Policy::default() }, "min_labelled must be in 1..=50000, given 0"),
            (Policy { max_auc_drop: -0.1, ..Policy::default() }, "max_auc_drop must be in 0..=1"),
            (Policy { quality_confidence: 1.0, ..Policy::default() }, "quality_confidence must be in 0.5..1, given 1"),
            (Policy { max_log_loss_increase: f64::NAN, ..Policy::default() }, "max_log_loss_increase"),
        ] {
            assert!(bad.validate().unwrap_err().contains(key), "{key}");
        }
    }
}
