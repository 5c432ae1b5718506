//! `bench verdicts`: how often the rollout verdict is wrong, on seeded synthetic label streams
//! run through the gateway's own code (`flywheel_shadow::labelled::compare` and `judge`, with
//! the controller's look schedule: a new look each time the candidate's labelled rows grew by a
//! quarter). A candidate slightly worse than the margin should (almost) never be promoted; one
//! equal to the champion should (almost) never be rolled back; a better one should be promoted
//! quickly. Each run is one rollout step with the champion at three times the canary's traffic.

use std::fmt::Write as _;

use flywheel_shadow::labelled::{LabelledRecord, compare};
use flywheel_shadow::{ArmSnapshot, Evidence, Policy, Verdict, judge, roc_auc};

/// One seeded stream of labelled answers from a model of `strength` (higher ranks better).
struct Arm {
    strength: f64,
    rng: fastrand::Rng,
}

impl Arm {
    fn draw(&mut self) -> (f64, f64) {
        let y = f64::from(u8::from(self.rng.f64() < 0.3));
        ((self.strength * y + self.rng.f64()) / (1.0 + self.strength), y)
    }
}

/// How one run ended.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    Promoted(u64),
    RolledBack(u64),
    /// No verdict within `max_rows` labelled candidate rows (the label wait would end it).
    Open,
}

fn run_one(policy: &Policy, (champion, candidate): (f64, f64), seed: u64, max_rows: u64) -> Outcome {
    let (h, c) = (LabelledRecord::new(), LabelledRecord::new());
    let mut champion = Arm { strength: champion, rng: fastrand::Rng::with_seed(seed * 2 + 1) };
    let mut candidate = Arm { strength: candidate, rng: fastrand::Rng::with_seed(seed * 2 + 2) };
    let healthy = ArmSnapshot { requests: 10_000, p50_us: 1000, p99_us: 2000, ..ArmSnapshot::default() };
    let mut look = policy.min_labelled;
    while look <= max_rows {
        while c.len() < look {
            let (s, y) = candidate.draw();
            c.add(s, y);
            for _ in 0..3 {
                let (s, y) = champion.draw();
                h.add(s, y);
            }
        }
        let evidence = Evidence {
            primary: healthy.clone(),
            candidate: healthy.clone(),
            paired: None,
            quality: Some(compare(&c, &h, policy.quality_confidence)),
            historical_primary: false,
        };
        match judge(policy, &evidence).0 {
            Verdict::Promote => return Outcome::Promoted(look),
            Verdict::RollBack => return Outcome::RolledBack(look),
            _ => look = (look + 20).max(look * 5 / 4),
        }
    }
    Outcome::Open
}

/// The population AUC of a model of `strength` (a large sample).
fn auc_of(strength: f64) -> f64 {
    let mut arm = Arm { strength, rng: fastrand::Rng::with_seed(99) };
    let (s, y): (Vec<f64>, Vec<f64>) = (0..200_000).map(|_| arm.draw()).unzip();
    roc_auc(&s, &y)
}

/// The strength whose population AUC is `target` (AUC grows with strength; bisection).
fn strength_for(target: f64) -> f64 {
    let (mut lo, mut hi) = (0.0, 4.0);
    for _ in 0..30 {
        let mid = (lo + hi) / 2.0;
        if auc_of(mid) < target { lo = mid } else { hi = mid }
    }
    (lo + hi) / 2.0
}

/// Runs every scenario `runs` times and reports the outcomes as a Markdown table. The champion
/// ranks like a fraud model (AUC 0.80); "slightly worse" is 0.03 below it, beyond the 0.02
/// margin; "better" is 0.05 above.
pub fn run(runs: u64, max_rows: u64) -> String {
    let policy = Policy::default();
    let champion = strength_for(0.80);
    let base = auc_of(champion);
    let scenarios =
        [("slightly worse", strength_for(base - 0.03)), ("equal", champion), ("better", strength_for(base + 0.05))];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "policy: min_labelled {}, max_auc_drop {}, max_log_loss_increase {}, confidence {}; champion AUC {base:.3}; \
         {runs} seeded runs per scenario, at most {max_rows} labelled canary rows each (champion 3x)\n",
        policy.min_labelled, policy.max_auc_drop, policy.max_log_loss_increase, policy.quality_confidence
    );
    let _ = writeln!(
        out,
        "| candidate | AUC | promoted | rolled back | undecided | median labelled rows at the decision |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (name, strength) in scenarios {
        let outcomes: Vec<Outcome> =
            (0..runs).map(|seed| run_one(&policy, (champion, strength), seed, max_rows)).collect();
        let count = |f: fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
        let mut rows: Vec<u64> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Promoted(n) | Outcome::RolledBack(n) => Some(*n),
                Outcome::Open => None,
            })
            .collect();
        rows.sort_unstable();
        let median = rows.get(rows.len() / 2).map_or_else(|| "-".to_owned(), u64::to_string);
        let _ = writeln!(
            out,
            "| {name} | {:.3} | {} | {} | {} | {median} |",
            auc_of(strength),
            count(|o| matches!(o, Outcome::Promoted(_))),
            count(|o| matches!(o, Outcome::RolledBack(_))),
            count(|o| matches!(o, Outcome::Open)),
        );
    }
    out
}
