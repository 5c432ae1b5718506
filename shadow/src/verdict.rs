//! A rollout policy applied to the evidence: promote, hold, or roll back — with the reasons.

use serde::{Deserialize, Serialize};

use crate::arm::ArmSnapshot;
use crate::paired::PairedSnapshot;

/// Thresholds a candidate must meet against the primary.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Candidate requests needed before any verdict but `hold`.
    pub min_samples: u64,
    /// Largest allowed candidate error rate minus primary error rate.
    pub max_error_rate_increase: f64,
    /// Largest allowed candidate p99 latency / primary p99 latency.
    pub max_p99_ratio: f64,
    /// Largest allowed share of paired answers on different sides of the threshold.
    pub max_disagreement: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Self { min_samples: 200, max_error_rate_increase: 0.01, max_p99_ratio: 1.5, max_disagreement: 0.1 }
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
        Ok(())
    }
}

/// What is known about the two arms.
#[derive(Clone, Debug, Serialize)]
pub struct Evidence {
    pub primary: ArmSnapshot,
    pub candidate: ArmSnapshot,
    /// Present when the arms answered the same requests (shadow).
    pub paired: Option<PairedSnapshot>,
}

impl Evidence {
    /// Evidence from a paired (shadow) comparison.
    pub fn from_paired(paired: PairedSnapshot) -> Self {
        Self { primary: paired.primary.clone(), candidate: paired.candidate.clone(), paired: Some(paired) }
    }
}

/// The decision.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Promote,
    Hold,
    RollBack,
}

/// Applies `policy` to `evidence`. Any failed check rolls back; all passing with enough
/// samples promotes; too few samples holds. The reasons say which numbers decided.
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
    let ratio = c.p99_us as f64 / p.p99_us.max(1) as f64;
    let line = format!("p99 {} µs vs {} µs, ratio {ratio:.2} (max {})", c.p99_us, p.p99_us, policy.max_p99_ratio);
    if ratio > policy.max_p99_ratio {
        failed.push(line)
    } else {
        passed.push(line)
    }
    if let Some(paired) = &evidence.paired {
        let line = format!(
            "disagreement {:.4} over {} pairs (max {})",
            paired.disagreement_rate, paired.pairs, policy.max_disagreement
        );
        if paired.disagreement_rate > policy.max_disagreement { failed.push(line) } else { passed.push(line) }
    }
    if failed.is_empty() { (Verdict::Promote, passed) } else { (Verdict::RollBack, failed) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(requests: u64, errors: u64, p99_us: u64) -> ArmSnapshot {
        ArmSnapshot {
            requests,
            errors,
            error_rate: errors as f64 / requests.max(1) as f64,
            p50_us: p99_us / 2,
            p99_us,
            mean_score: None,
        }
    }

    fn evidence(candidate: ArmSnapshot) -> Evidence {
        Evidence { primary: arm(1000, 1, 1000), candidate, paired: None }
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
        assert_eq!(why.len(), 2);
    }

    #[test]
    fn rolls_back_on_errors_latency_or_disagreement_and_says_which() {
        let (v, why) = judge(&Policy::default(), &evidence(arm(500, 50, 900)));
        assert_eq!(v, Verdict::RollBack);
        assert!(why[0].starts_with("error rate 0.1000"), "{why:?}");
        let (v, why) = judge(&Policy::default(), &evidence(arm(500, 0, 2000)));
        assert_eq!(v, Verdict::RollBack);
        assert!(why[0].contains("ratio 2.00"), "{why:?}");
        let paired = PairedSnapshot { pairs: 500, disagreement_rate: 0.3, ..Default::default() };
        let e = Evidence { paired: Some(paired), ..evidence(arm(500, 0, 900)) };
        let (v, why) = judge(&Policy::default(), &e);
        assert_eq!(v, Verdict::RollBack);
        assert!(why[0].starts_with("disagreement 0.3000"), "{why:?}");
    }

    #[test]
    fn policy_values_are_checked() {
        let bad = Policy { max_p99_ratio: 0.5, ..Policy::default() };
        assert!(bad.validate().unwrap_err().contains("max_p99_ratio must be at least 1, given 0.5"));
    }
}
