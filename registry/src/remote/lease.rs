//! A lease in object storage: one holder at a time, by compare-and-set on the lease object's
//! ETag, with an expiry the holder renews. Who may act is decided by the store, not by the
//! replicas agreeing among themselves; a holder that cannot renew stops acting before its
//! expiry (see [`Lease::valid_for`]), so two holders never act at once while clocks agree to
//! within the margin.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::PutMode;
use serde::{Deserialize, Serialize};

use super::{Remote, Written};
use crate::store::RegistryError;

/// The lease object's content.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    pub holder: String,
    /// Incremented each time the lease changes hands: a fencing number for what the holder does.
    pub term: u64,
    /// Wall-clock expiry (Unix milliseconds); 0 once released.
    pub expires_ms: u64,
    pub renewed_ms: u64,
}

impl Lease {
    /// How much longer the lease is the holder's, by this machine's clock.
    pub fn valid_for(&self) -> Duration {
        Duration::from_millis(self.expires_ms.saturating_sub(now_ms()))
    }
}

/// What a claim found.
#[derive(Clone, Debug, PartialEq)]
pub enum Claim {
    /// This holder has the lease until its expiry.
    Held(Lease),
    /// Someone else holds it.
    Other(Lease),
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Remote {
    /// Takes or renews the lease at `parts` for `holder` for `ttl`: created when absent,
    /// taken over when expired or released, renewed when `holder` has it. One conditional read
    /// and at most one conditional write.
    pub fn claim_lease(&self, parts: &[&str], holder: &str, ttl: Duration) -> Result<Claim, RegistryError> {
        let now = now_ms();
        let expires_ms = now + ttl.as_millis() as u64;
        let (current, mode) = match self.get(parts)? {
            None => (None, PutMode::Create),
            Some(fetched) => {
                let lease: Lease = serde_json::from_slice(&fetched.bytes)
                    .map_err(|e| RegistryError::Corrupt { path: self.display(parts), reason: e.to_string() })?;
                (Some(lease), PutMode::Update(fetched.version))
            }
        };
        let term = match &current {
            Some(lease) if lease.holder == holder && lease.expires_ms > now => lease.term,
            Some(lease) if lease.expires_ms > now => return Ok(Claim::Other(lease.clone())),
            Some(lease) => lease.term + 1,
            None => 1,
        };
        let lease = Lease { holder: holder.to_owned(), term, expires_ms, renewed_ms: now };
        match self.write(parts, serde_json::to_vec_pretty(&lease).unwrap_or_default(), mode)? {
            Written::Done => Ok(Claim::Held(lease)),
            // Someone else wrote first: whoever it was holds it now.
            Written::Lost => match self.get(parts)? {
                Some(f) => serde_json::from_slice(&f.bytes)
                    .map(Claim::Other)
                    .map_err(|e| RegistryError::Corrupt { path: self.display(parts), reason: e.to_string() }),
                None => Err(RegistryError::Store { url: self.display(parts), reason: "lease vanished".into() }),
            },
        }
    }

    /// Gives the lease up (expiry 0) if `holder` still has it at `term`, so another replica
    /// takes it at its next claim instead of waiting for the expiry.
    pub fn release_lease(&self, parts: &[&str], holder: &str, term: u64) -> Result<(), RegistryError> {
        let Some(fetched) = self.get(parts)? else { return Ok(()) };
        let Ok(mut lease) = serde_json::from_slice::<Lease>(&fetched.bytes) else { return Ok(()) };
        if lease.holder != holder || lease.term != term {
            return Ok(());
        }
        lease.expires_ms = 0;
        let bytes = serde_json::to_vec_pretty(&lease).unwrap_or_default();
        self.write(parts, bytes, PutMode::Update(fetched.version)).map(|_| ())
    }

    /// An object's bytes, `None` when absent.
    pub fn get_object(&self, parts: &[&str]) -> Result<Option<Vec<u8>>, RegistryError> {
        Ok(self.get(parts)?.map(|f| f.bytes))
    }

    /// Replaces an object whole (no condition).
    pub fn put_object(&self, parts: &[&str], bytes: Vec<u8>) -> Result<(), RegistryError> {
        self.write(parts, bytes, PutMode::Overwrite).map(|_| ())
    }

    /// Deletes an object; one already gone is no error.
    pub fn delete_object(&self, parts: &[&str]) -> Result<(), RegistryError> {
        let (store, key) = (std::sync::Arc::clone(&self.store), self.key(parts));
        match self.run(parts, async move { object_store::ObjectStoreExt::delete(&store, &key).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(parts, e)),
        }
    }

    /// The names (relative paths) of the objects below `parts` that sort after `after`,
    /// listed from there.
    pub fn list_after(&self, parts: &[&str], after: &str) -> Result<Vec<String>, RegistryError> {
        Ok(self.objects_after(parts, Some(after))?.into_iter().map(|(name, _)| name).collect())
    }

    /// Every object directly or deeper below `parts`, read whole: (relative path, bytes).
    pub fn read_objects(&self, parts: &[&str]) -> Result<Vec<(String, Vec<u8>)>, RegistryError> {
        let mut out = Vec::new();
        for (name, _) in self.objects(parts)? {
            let mut full: Vec<&str> = parts.to_vec();
            full.extend(name.split('/'));
            if let Some(fetched) = self.get(&full)? {
                out.push((name, fetched.bytes));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_renewal_keeps_it_expiry_or_release_hands_it_over() {
        let remote = Remote::shared("memory://lease/registry").unwrap();
        let at = ["m", "controller-lease.json"];
        let ttl = Duration::from_millis(300);
        let Claim::Held(first) = remote.claim_lease(&at, "a", ttl).unwrap() else { panic!("a takes a free lease") };
        assert_eq!(first.term, 1);
        assert!(matches!(remote.claim_lease(&at, "b", ttl).unwrap(), Claim::Other(l) if l.holder == "a"));
        let Claim::Held(renewed) = remote.claim_lease(&at, "a", ttl).unwrap() else { panic!("a renews") };
        assert_eq!(renewed.term, 1);
        std::thread::sleep(Duration::from_millis(350));
        let Claim::Held(taken) = remote.claim_lease(&at, "b", ttl).unwrap() else { panic!("b takes an expired lease") };
        assert_eq!(taken.term, 2, "a new holder is a new term");
        assert!(matches!(remote.claim_lease(&at, "a", ttl).unwrap(), Claim::Other(l) if l.holder == "b"));
        remote.release_lease(&at, "a", 1).unwrap();
        assert!(matches!(remote.claim_lease(&at, "a", ttl).unwrap(), Claim::Other(_)), "a stale release is ignored");
        remote.release_lease(&at, "b", 2).unwrap();
        let Claim::Held(back) = remote.claim_lease(&at, "a", ttl).unwrap() else { panic!("a takes a released lease") };
        assert_eq!(back.term, 3);
    }
}
