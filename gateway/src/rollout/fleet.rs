//! Gateways sharing a registry in object storage: one controller per model, elected by a lease
//! in the store (`<model>/controller-lease.json`), judging the canary on every replica's
//! evidence. Each replica writes its route evidence to `<model>/evidence/<replica>.json` every
//! controller tick; the lease holder pools the files whose route (versions, weight) is the one
//! it serves and that are fresh, and judges that. The others follow the aliases and rollout
//! state the holder writes (through the registry copy). A holder that stops renewing (killed,
//! cut off) loses the lease after `fleet.lease_ttl_ms`; the next holder resumes from the durable
//! rollout state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flywheel_registry::{Claim, Remote, now_ms};
use serde::{Deserialize, Serialize};

use crate::config::FleetSettings;
use crate::metrics::CONTROLLER_LEADER as LEADER;
use crate::model::table::{ArmsExport, RouteEvidence};

/// The lease object's name in a model's folder.
pub const LEASE_FILE: &str = "controller-lease.json";
/// The folder of per-replica evidence files in a model's folder.
pub const EVIDENCE_DIR: &str = "evidence";

/// One replica's route evidence as written to the store.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceFile {
    pub replica: String,
    pub written_ms: u64,
    pub versions: (u64, Option<u64>, Option<u64>),
    pub weight: Option<u32>,
    pub step: ArmsExport,
    pub lifetime: ArmsExport,
}

#[derive(Clone, Debug)]
enum Standing {
    /// Holds the lease at `term`; acts until `until` (its expiry less a margin, by this
    /// process's monotonic clock, counted from before the claim was sent).
    Leader { term: u64, until: Instant, claimed: Instant },
    /// Someone else holds it; not asked again before `recheck`.
    Follower { recheck: Instant },
}

/// This replica's view of the fleet.
pub struct Fleet {
    remote: Arc<Remote>,
    pub replica: String,
    ttl: Duration,
    stale: Duration,
    standing: Mutex<HashMap<String, Standing>>,
    /// When each model's evidence was last written.
    published: Mutex<HashMap<String, Instant>>,
}

/// How often a replica writes its evidence (the holder reads the fleet's every tick).
const EVIDENCE_EVERY: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("replica", &self.replica).finish_non_exhaustive()
    }
}

impl Fleet {
    pub fn new(remote: Arc<Remote>, settings: &FleetSettings) -> Self {
        Self {
            remote,
            replica: settings.replica_name(),
            ttl: Duration::from_millis(settings.lease_ttl_ms),
            stale: Duration::from_millis(settings.evidence_stale_ms),
            standing: Mutex::default(),
            published: Mutex::default(),
        }
    }

    /// The lease term under which this replica runs `model`'s controller now, `None` when
    /// another replica does. Renews the lease once a third of its time has passed; a follower
    /// asks again when the holder's lease would expire.
    pub fn leads(&self, model: &str) -> Option<u64> {
        let now = Instant::now();
        let standing = self.lock().get(model).cloned();
        match standing {
            Some(Standing::Leader { claimed, until, term }) if now < until && now < claimed + self.ttl / 3 => {
                return Some(term);
            }
            Some(Standing::Follower { recheck }) if now < recheck => return None,
            _ => {}
        }
        let margin = self.ttl / 5;
        match self.remote.claim_lease(&[model, LEASE_FILE], &self.replica, self.ttl) {
            Ok(Claim::Held(lease)) => {
                let was = matches!(standing, Some(Standing::Leader { term, .. }) if term == lease.term);
                if !was {
                    tracing::info!(model, replica = %self.replica, term = lease.term, "took the controller lease");
                    metrics::gauge!(LEADER, "model" => model.to_owned()).set(1.0);
                }
                let standing = Standing::Leader { term: lease.term, until: now + self.ttl - margin, claimed: now };
                self.lock().insert(model.to_owned(), standing);
                Some(lease.term)
            }
            Ok(Claim::Other(lease)) => {
                if matches!(standing, Some(Standing::Leader { .. })) {
                    tracing::warn!(model, holder = %lease.holder, term = lease.term, "lost the controller lease");
                }
                metrics::gauge!(LEADER, "model" => model.to_owned()).set(0.0);
                let recheck = now + lease.valid_for().clamp(Duration::from_millis(100), self.ttl);
                self.lock().insert(model.to_owned(), Standing::Follower { recheck });
                None
            }
            Err(e) => {
                tracing::warn!(model, error = %e, "controller lease not renewed");
                match standing {
                    // Still inside the lease it holds: nobody else can have it yet.
                    Some(Standing::Leader { until, term, .. }) if now < until => Some(term),
                    _ => {
                        metrics::gauge!(LEADER, "model" => model.to_owned()).set(0.0);
                        self.lock().remove(model);
                        None
                    }
                }
            }
        }
    }

    /// The lease term this replica holds for `model`, if it leads.
    pub fn term(&self, model: &str) -> Option<u64> {
        match self.lock().get(model) {
            Some(Standing::Leader { term, until, .. }) if Instant::now() < *until => Some(*term),
            _ => None,
        }
    }

    /// Gives up every lease this replica holds (at shutdown), so another takes over at once.
    pub fn release_all(&self) {
        let held: Vec<(String, u64)> = self
            .lock()
            .iter()
            .filter_map(|(m, s)| match s {
                Standing::Leader { term, .. } => Some((m.clone(), *term)),
                Standing::Follower { .. } => None,
            })
            .collect();
        for (model, term) in held {
            match self.remote.release_lease(&[&model, LEASE_FILE], &self.replica, term) {
                Ok(()) => tracing::info!(model, term, "controller lease released"),
                Err(e) => tracing::warn!(model, error = %e, "controller lease not released; it expires"),
            }
            self.lock().remove(&model);
        }
    }

    /// Writes this replica's evidence for `model` to the store, at most once a second.
    pub fn publish_evidence(&self, model: &str, route: &RouteEvidence) {
        {
            let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if published.get(model).is_some_and(|at| now.duration_since(*at) < EVIDENCE_EVERY) {
                return;
            }
            published.insert(model.to_owned(), now);
        }
        let file = EvidenceFile {
            replica: self.replica.clone(),
            written_ms: now_ms(),
            versions: route.versions,
            weight: route.weight,
            step: route.step.export(),
            lifetime: route.lifetime.export(),
        };
        let name = format!("{}.json", self.replica);
        let bytes = serde_json::to_vec(&file).unwrap_or_default();
        if let Err(e) = self.remote.put_object(&[model, EVIDENCE_DIR, &name], bytes) {
            tracing::warn!(model, error = %e, "evidence not shared with the fleet");
        }
    }

    /// The fleet's evidence for `own`'s route: this replica's plus every other replica's file
    /// about the same versions and weight written within `fleet.evidence_stale_ms`.
    pub fn pooled(&self, model: &str, own: &RouteEvidence) -> Arc<RouteEvidence> {
        let files = match self.remote.read_objects(&[model, EVIDENCE_DIR]) {
            Ok(files) => files,
            Err(e) => {
                tracing::warn!(model, error = %e, "fleet evidence unreadable; judging this replica's alone");
                Vec::new()
            }
        };
        let oldest = now_ms().saturating_sub(self.stale.as_millis() as u64);
        let others: Vec<EvidenceFile> = files
            .iter()
            .filter_map(|(name, bytes)| match serde_json::from_slice::<EvidenceFile>(bytes) {
                Ok(file) => Some(file),
                Err(e) => {
                    tracing::warn!(model, file = %name, error = %e, "evidence file unreadable; left out");
                    None
                }
            })
            .filter(|f| f.replica != self.replica)
            .filter(|f| f.versions == own.versions && f.weight == own.weight && f.written_ms >= oldest)
            .collect();
        own.pooled(others.iter().map(|f| (&f.step, &f.lifetime)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Standing>> {
        self.standing.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(remote: &Arc<Remote>, replica: &str) -> Fleet {
        let settings = FleetSettings { replica: Some(replica.into()), lease_ttl_ms: 600, evidence_stale_ms: 1000 };
        Fleet::new(Arc::clone(remote), &settings)
    }

    fn route(weight: u32, canary_requests: u32) -> Arc<RouteEvidence> {
        let route = RouteEvidence::new((1, Some(2), None), Some(weight), 0.5);
        for _ in 0..canary_requests {
            route.each(|r| r.canary.record_ok(Duration::from_millis(1), Some(0.7)));
        }
        route.each(|r| r.canary_labelled.add(0.7, 1.0));
        route
    }

    #[test]
    fn one_replica_leads_and_a_release_hands_the_lease_over() {
        let remote = Remote::shared("memory://fleet-lease/registry").unwrap();
        let (a, b) = (fleet(&remote, "a"), fleet(&remote, "b"));
        assert_eq!(a.leads("m"), Some(1));
        assert_eq!(b.leads("m"), None);
        assert_eq!(a.leads("m"), Some(1), "the holder keeps it");
        assert_eq!(a.term("m"), Some(1));
        a.release_all();
        assert_eq!(a.term("m"), None);
        std::thread::sleep(Duration::from_millis(150));
        // b asks again once the lease it saw would have expired (at most the ttl).
        let took = (0..20).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            b.leads("m").is_some()
        });
        assert!(took, "b takes the released lease");
        assert_eq!(b.term("m"), Some(2));
        assert_eq!(a.leads("m"), None);
    }

    #[test]
    fn the_pool_adds_every_fresh_replica_of_the_same_step_and_nothing_else() {
        let remote = Remote::shared("memory://fleet-pool/registry").unwrap();
        let (a, b, c) = (fleet(&remote, "a"), fleet(&remote, "b"), fleet(&remote, "c"));
        let own = route(10, 5);
        a.publish_evidence("m", &own);
        b.publish_evidence("m", &route(10, 7));
        // c is on another step (the weight moved there already): not this step's evidence.
        c.publish_evidence("m", &route(50, 100));
        // A replica that stopped writing long ago.
        let stale = EvidenceFile {
            replica: "gone".into(),
            written_ms: now_ms() - 60_000,
            versions: own.versions,
            weight: own.weight,
            step: route(10, 1000).step.export(),
            lifetime: ArmsExport::default(),
        };
        remote.put_object(&["m", EVIDENCE_DIR, "gone.json"], serde_json::to_vec(&stale).unwrap()).unwrap();
        remote.put_object(&["m", EVIDENCE_DIR, "junk.json"], b"{".to_vec()).unwrap();
        let pooled = a.pooled("m", &own);
        assert_eq!(pooled.step.canary.snapshot().requests, 12, "own 5 + b's 7");
        assert_eq!(pooled.lifetime.canary.snapshot().requests, 12);
        assert_eq!(pooled.step.canary_labelled.len(), 2);
        assert_eq!(own.step.canary.snapshot().requests, 5, "this replica's own record is untouched");
    }
}
