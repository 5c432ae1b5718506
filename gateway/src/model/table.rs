//! The routing table: every served model version, fully built and immutable, and each model's
//! route (champion, weighted canary, shadow). The server holds it in an `ArcSwap` and loads it
//! once per request; a reload builds a new table off the hot path and stores it whole.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use flywheel_shadow::{ArmExport, ArmRecord, LabelledExport, LabelledRecord, PairedComparison, PairedExport};
use serde::{Deserialize, Serialize};

use super::ModelVersion;

/// A model, its loaded versions (ascending) and how un-addressed requests are routed.
pub struct ServedModel {
    pub name: String,
    pub versions: BTreeMap<u64, Arc<ModelVersion>>,
    pub route: Route,
}

/// Where a model's un-addressed requests go.
#[derive(Clone, Debug)]
pub struct Route {
    pub champion: u64,
    /// Canary version and its share of requests in percent.
    pub canary: Option<(u64, u32)>,
    pub shadow: Option<ShadowRoute>,
    /// Lower-case header whose value picks the canary arm by hash.
    pub routing_key_header: String,
    /// Live comparison of the arms; kept across reloads while the versions stay the same.
    pub evidence: Arc<RouteEvidence>,
}

/// What the arms of one route did over one span: the champion and canary on their own
/// requests (with the labels that arrived for them), and the shadow paired with the champion
/// on mirrored ones.
#[derive(Debug)]
pub struct ArmsRecord {
    pub champion: ArmRecord,
    pub canary: ArmRecord,
    pub shadow: PairedComparison,
    pub champion_labelled: LabelledRecord,
    pub canary_labelled: LabelledRecord,
}

/// An [`ArmsRecord`] in a form that travels between replicas and adds up.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArmsExport {
    pub champion: ArmExport,
    pub canary: ArmExport,
    pub shadow: PairedExport,
    pub champion_labelled: LabelledExport,
    pub canary_labelled: LabelledExport,
}

impl ArmsRecord {
    /// The record so far, to be absorbed elsewhere.
    pub fn export(&self) -> ArmsExport {
        ArmsExport {
            champion: self.champion.export(),
            canary: self.canary.export(),
            shadow: self.shadow.export(),
            champion_labelled: self.champion_labelled.export(),
            canary_labelled: self.canary_labelled.export(),
        }
    }

    /// Adds another replica's record of the same span.
    pub fn absorb(&self, other: &ArmsExport) {
        self.champion.absorb(&other.champion);
        self.canary.absorb(&other.canary);
        self.shadow.absorb(&other.shadow);
        self.champion_labelled.absorb(&other.champion_labelled);
        self.canary_labelled.absorb(&other.canary_labelled);
    }

    fn new(threshold: f64) -> Self {
        Self {
            champion: ArmRecord::new(),
            canary: ArmRecord::new(),
            shadow: PairedComparison::new(threshold),
            champion_labelled: LabelledRecord::new(),
            canary_labelled: LabelledRecord::new(),
        }
    }

    /// The arm's own record; `None` for explicitly addressed requests.
    pub fn arm(&self, arm: Arm) -> Option<&ArmRecord> {
        match arm {
            Arm::Champion => Some(&self.champion),
            Arm::Canary => Some(&self.canary),
            Arm::Explicit => None,
        }
    }

    /// The arm's labelled answers; `None` for explicitly addressed requests.
    pub fn labelled(&self, arm: Arm) -> Option<&LabelledRecord> {
        match arm {
            Arm::Champion => Some(&self.champion_labelled),
            Arm::Canary => Some(&self.canary_labelled),
            Arm::Explicit => None,
        }
    }
}

/// A route's evidence: what its current step (one canary weight) gathered, which the
/// controller judges, and what the route gathered since its versions were first routed
/// together (shown by the admin API). Kept across reloads while the versions and the weight
/// stay the same; a new weight starts a new step with the same lifetime record.
#[derive(Debug)]
pub struct RouteEvidence {
    /// (champion, canary, shadow) versions this evidence is about.
    pub versions: (u64, Option<u64>, Option<u64>),
    /// The canary weight of this step.
    pub weight: Option<u32>,
    pub step: ArmsRecord,
    pub lifetime: Arc<ArmsRecord>,
    threshold: f64,
}

impl RouteEvidence {
    /// Fresh evidence for these versions at canary `weight`; scores are compared at `threshold`.
    pub fn new(versions: (u64, Option<u64>, Option<u64>), weight: Option<u32>, threshold: f64) -> Arc<Self> {
        let lifetime = Arc::new(ArmsRecord::new(threshold));
        Arc::new(Self { versions, weight, step: ArmsRecord::new(threshold), lifetime, threshold })
    }

    /// Evidence of a new step of the same route at `weight`: a fresh step, the same lifetime.
    pub fn next_step(&self, weight: Option<u32>) -> Arc<Self> {
        Arc::new(Self {
            versions: self.versions,
            weight,
            step: ArmsRecord::new(self.threshold),
            lifetime: Arc::clone(&self.lifetime),
            threshold: self.threshold,
        })
    }

    /// The fleet's evidence for this route: this replica's step and lifetime records plus
    /// `others` (each another replica's (step, lifetime) of the same versions and weight).
    pub fn pooled<'a>(&self, others: impl IntoIterator<Item = (&'a ArmsExport, &'a ArmsExport)>) -> Arc<Self> {
        let pooled = Self::new(self.versions, self.weight, self.threshold);
        pooled.step.absorb(&self.step.export());
        pooled.lifetime.absorb(&self.lifetime.export());
        for (step, lifetime) in others {
            pooled.step.absorb(step);
            pooled.lifetime.absorb(lifetime);
        }
        pooled
    }

    /// Applies `record` to the step's and the lifetime's records.
    pub fn each(&self, record: impl Fn(&ArmsRecord)) {
        record(&self.step);
        record(&self.lifetime);
    }

    /// Joins a label to the answer `arm` gave (in the step that answered it).
    pub fn record_label(&self, arm: Arm, score: f64, label: f64) {
        self.each(|r| {
            if let Some(labelled) = r.labelled(arm) {
                labelled.add(score, label);
            }
        });
    }
}

/// The shadow arm: a mirrored fraction of requests, with its own in-flight budget.
#[derive(Clone, Debug)]
pub struct ShadowRoute {
    pub version: u64,
    pub fraction: f64,
    pub budget: Arc<Budget>,
}

/// A counting limit on concurrent shadow requests.
#[derive(Debug)]
pub struct Budget {
    in_flight: AtomicUsize,
    max: usize,
}

/// A held unit of a [`Budget`]; released when dropped.
pub struct BudgetPermit(Arc<Budget>);

impl Budget {
    /// A budget of `max` concurrent units.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { in_flight: AtomicUsize::new(0), max })
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Takes a unit if one is free.
    pub fn try_acquire(self: &Arc<Self>) -> Option<BudgetPermit> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| BudgetPermit(Arc::clone(self)))
    }
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Which arm answered a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm {
    Champion,
    Canary,
    /// The client named the version.
    Explicit,
}

impl Arm {
    /// Label for headers and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Champion => "champion",
            Arm::Canary => "canary",
            Arm::Explicit => "explicit",
        }
    }
}

impl Route {
    /// Picks the arm for an un-addressed request: by hash of `key` when given (sticky), at
    /// random otherwise.
    pub fn pick(&self, key: Option<&[u8]>) -> (u64, Arm) {
        match self.canary {
            Some((version, weight)) if weight > 0 => {
                let draw = key.map_or_else(|| fastrand::u64(..10_000), |k| fnv1a(k) % 10_000);
                if draw < u64::from(weight) * 100 { (version, Arm::Canary) } else { (self.champion, Arm::Champion) }
            }
            _ => (self.champion, Arm::Champion),
        }
    }
}

/// FNV-1a: a stable hash, so a routing key lands on the same arm on every replica and restart.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

impl ServedModel {
    /// The version served when a request names none and no canary applies.
    pub fn default_version(&self) -> Option<&Arc<ModelVersion>> {
        self.versions.get(&self.route.champion)
    }
}

/// A request for a model or version that is not served (404).
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("unknown model '{0}'")]
    ModelNotFound(String),
    #[error("model '{model}' has no ready version '{version}' (ready: {ready})")]
    VersionNotFound { model: String, version: String, ready: String },
}

/// Everything the gateway serves.
#[derive(Default)]
pub struct RoutingTable {
    pub models: BTreeMap<String, ServedModel>,
}

impl RoutingTable {
    /// Looks up a model and, if given, a version ("" or absent means the champion).
    pub fn resolve(&self, model: &str, version: Option<&str>) -> Result<&Arc<ModelVersion>, RouteError> {
        let served = self.models.get(model).ok_or_else(|| RouteError::ModelNotFound(model.to_owned()))?;
        let not_found = || RouteError::VersionNotFound {
            model: model.to_owned(),
            version: version.unwrap_or_default().to_owned(),
            ready: served.versions.keys().map(u64::to_string).collect::<Vec<_>>().join(", "),
        };
        match version {
            None | Some("") => served.default_version().ok_or_else(not_found),
            Some(v) => v.parse::<u64>().ok().and_then(|v| served.versions.get(&v)).ok_or_else(not_found),
        }
    }

    /// Routes an inference request: an explicit version, or the model's route (canary by key).
    pub fn route(
        &self,
        model: &str,
        version: Option<&str>,
        key: impl FnOnce(&str) -> Option<Vec<u8>>,
    ) -> Result<(Arc<ModelVersion>, Arm), RouteError> {
        if version.is_some_and(|v| !v.is_empty()) {
            return self.resolve(model, version).map(|mv| (Arc::clone(mv), Arm::Explicit));
        }
        let served = self.models.get(model).ok_or_else(|| RouteError::ModelNotFound(model.to_owned()))?;
        let key = key(&served.route.routing_key_header);
        let (picked, arm) = served.route.pick(key.as_deref());
        match served.versions.get(&picked) {
            Some(mv) => Ok((Arc::clone(mv), arm)),
            None => self.resolve(model, None).map(|mv| (Arc::clone(mv), Arm::Champion)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(weight: u32) -> Route {
        Route {
            champion: 1,
            canary: Some((2, weight)),
            shadow: None,
            routing_key_header: "x-routing-key".into(),
            evidence: RouteEvidence::new((1, Some(2), None), Some(weight), 0.5),
        }
    }

    #[test]
    fn canary_weight_is_honoured_within_binomial_tolerance() {
        let r = route(20);
        let n = 20_000;
        let canary = (0..n).filter(|_| r.pick(None).1 == Arm::Canary).count() as f64;
        // 20% of 20 000: mean 4000, sd = sqrt(n p (1-p)) ≈ 57; 5 sd is 283.
        assert!((canary - 4000.0).abs() < 283.0, "{canary}");
        let keyed = (0..n).filter(|i| r.pick(Some(format!("user-{i}").as_bytes())).1 == Arm::Canary).count() as f64;
        assert!((keyed - 4000.0).abs() < 283.0, "{keyed}");
    }

    #[test]
    fn a_routing_key_always_lands_on_the_same_arm() {
        let r = route(50);
        for i in 0..200 {
            let key = format!("customer-{i}");
            let first = r.pick(Some(key.as_bytes()));
            assert!((0..20).all(|_| r.pick(Some(key.as_bytes())) == first));
        }
    }

    #[test]
    fn zero_and_full_weights_are_absolute() {
        assert!((0..1000).all(|_| route(0).pick(None).1 == Arm::Champion));
        assert!((0..1000).all(|_| route(100).pick(None).1 == Arm::Canary));
    }

    #[test]
    fn budget_refuses_beyond_max_and_frees_on_drop() {
        let b = Budget::new(2);
        let (p1, p2) = (b.try_acquire(), b.try_acquire());
        assert!(p1.is_some() && p2.is_some());
        assert!(b.try_acquire().is_none());
        drop(p1);
        assert!(b.try_acquire().is_some());
    }
}
