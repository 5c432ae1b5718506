//! Registry operations on an object store: listing committed versions, publishing
//! create-only with the manifest last, and compare-and-set on the alias map.

use std::collections::{BTreeMap, BTreeSet};

use object_store::PutMode;

use super::{Fetched, Remote, Written};
use crate::manifest::{MANIFEST_FILE, Manifest, ManifestDraft, sha256_hex};
use crate::profile::{PROFILE_FILE, ReferenceProfile};
use crate::rollout_state::{ROLLOUT_STATE_FILE, RolloutState};
use crate::signing::{SIGNATURE_FILE, Signer};
use crate::store::{
    ALIASES_FILE, MODEL_FILE, RegistryError, parse_aliases, parse_manifest, parse_profile, valid_model_name,
};

/// How many times a compare-and-set re-reads after losing a race before giving up.
const CAS_ATTEMPTS: usize = 16;

/// After the `lost`-th lost compare-and-set, waits a random time up to 1 ms x 2^lost (at most
/// 50 ms: "full jitter"), so writers that keep colliding spread out instead of one of them
/// losing every round (16 losses cost at most ~0.6 s).
fn back_off(lost: usize) {
    use std::hash::{BuildHasher, Hasher};
    let cap_us = (1000u64 << lost.min(6)).min(50_000);
    // A fresh RandomState is differently keyed each call: random enough for jitter.
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    std::thread::sleep(std::time::Duration::from_micros(random % (cap_us + 1)));
}

/// One model's versions as listed: committed (manifest present) and every number in use.
#[derive(Debug, Default)]
pub struct Listing {
    /// Committed versions.
    pub committed: BTreeSet<u64>,
    /// The highest version number any object uses, committed or not.
    pub highest_claimed: u64,
}

/// A version just published: its manifest, the manifest file's bytes and its signature file.
#[derive(Debug)]
pub struct Published {
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub signature: Option<Vec<u8>>,
}

impl Remote {
    /// Model names, sorted (invalid names are ignored).
    pub fn models(&self) -> Result<Vec<String>, RegistryError> {
        let mut names: Vec<String> = self.children(&[])?.into_iter().filter(|n| valid_model_name(n)).collect();
        names.sort();
        Ok(names)
    }

    /// The version folders of a model, committed or not: one listing of the model's folder
    /// (with a delimiter, so the objects inside, events and evidence, are not listed).
    pub fn version_folders(&self, model: &str) -> Result<BTreeSet<u64>, RegistryError> {
        check_model(model)?;
        Ok(self.children(&[model])?.iter().filter_map(|name| name.parse::<u64>().ok()).collect())
    }

    /// A model's committed versions: the folders, then one manifest read per folder (for the
    /// CLI; the mirror reads manifests of new folders only).
    pub fn listing(&self, model: &str) -> Result<Listing, RegistryError> {
        let folders = self.version_folders(model)?;
        let mut listing = Listing { highest_claimed: folders.last().copied().unwrap_or(0), committed: BTreeSet::new() };
        for version in folders {
            if self.has_version(model, version)? {
                listing.committed.insert(version);
            }
        }
        Ok(listing)
    }

    /// The size of an object, `None` when absent (a HEAD request).
    pub fn size(&self, parts: &[&str]) -> Result<Option<u64>, RegistryError> {
        let (store, key) = (std::sync::Arc::clone(&self.store), self.key(parts));
        let options = object_store::GetOptions { head: true, ..Default::default() };
        match self.run(parts, async move { store.get_opts(&key, options).await.map(|r| r.meta.size) })? {
            Ok(size) => Ok(Some(size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(parts, e)),
        }
    }

    /// A committed version's manifest, checked against its place.
    pub fn manifest(&self, model: &str, version: u64) -> Result<Manifest, RegistryError> {
        self.manifest_file(model, version).map(|(manifest, _)| manifest)
    }

    /// A committed version's manifest and the file's exact bytes (what its signature covers).
    pub fn manifest_file(&self, model: &str, version: u64) -> Result<(Manifest, Vec<u8>), RegistryError> {
        let folder = version.to_string();
        let parts = [model, folder.as_str(), MANIFEST_FILE];
        let fetched = self.get(&parts)?.ok_or_else(|| RegistryError::NoVersion { model: model.to_owned(), version })?;
        let manifest = parse_manifest(&fetched.bytes, model, version)
            .map_err(|reason| RegistryError::Corrupt { path: self.display(&parts), reason })?;
        Ok((manifest, fetched.bytes))
    }

    /// A version's `manifest.sig`, `None` when it is unsigned.
    pub fn signature(&self, model: &str, version: u64) -> Result<Option<Vec<u8>>, RegistryError> {
        let folder = version.to_string();
        Ok(self.get(&[model, folder.as_str(), SIGNATURE_FILE])?.map(|f| f.bytes))
    }

    /// Signs a committed, unsigned version (create-only: an existing signature is kept).
    /// Returns whether this call wrote it.
    pub fn sign_version(&self, model: &str, version: u64, signer: &Signer) -> Result<bool, RegistryError> {
        check_model(model)?;
        let (_, bytes) = self.manifest_file(model, version)?;
        let folder = version.to_string();
        Ok(matches!(
            self.write(&[model, &folder, SIGNATURE_FILE], signer.sign(&bytes), PutMode::Create)?,
            Written::Done
        ))
    }

    /// A committed version's model file, checked against its manifest's SHA-256.
    pub fn model_bytes(&self, model: &str, version: u64, manifest: &Manifest) -> Result<Vec<u8>, RegistryError> {
        let folder = version.to_string();
        let parts = [model, folder.as_str(), MODEL_FILE];
        let fetched = self.get(&parts)?.ok_or_else(|| RegistryError::NoVersion { model: model.to_owned(), version })?;
        let actual = sha256_hex(&fetched.bytes);
        if actual != manifest.sha256 {
            return Err(RegistryError::HashMismatch {
                path: self.display(&parts),
                expected: manifest.sha256.clone(),
                actual,
            });
        }
        Ok(fetched.bytes)
    }

    /// A version's reference profile, `None` when it has none.
    pub fn profile(&self, model: &str, version: u64) -> Result<Option<ReferenceProfile>, RegistryError> {
        let folder = version.to_string();
        let parts = [model, folder.as_str(), PROFILE_FILE];
        match self.get(&parts)? {
            None => Ok(None),
            Some(f) => parse_profile(&f.bytes)
                .map(Some)
                .map_err(|reason| RegistryError::Corrupt { path: self.display(&parts), reason }),
        }
    }

    /// Publishes the next version: the model and profile create-only, then the manifest
    /// create-only as the commit marker. A number another publisher holds is skipped.
    pub fn publish(
        &self,
        model: &str,
        model_bytes: &[u8],
        draft: ManifestDraft,
        profile: Option<&ReferenceProfile>,
        signer: Option<&Signer>,
    ) -> Result<Published, RegistryError> {
        check_model(model)?;
        let sha = sha256_hex(model_bytes);
        let first = self.version_folders(model)?.last().copied().unwrap_or(0) + 1;
        for version in first..first + 64 {
            let folder = version.to_string();
            // Claiming the number: whoever creates model.onnx first owns the folder.
            if let Written::Lost = self.write(&[model, &folder, MODEL_FILE], model_bytes.to_vec(), PutMode::Create)? {
                continue;
            }
            if let Some(profile) = profile {
                let bytes = serde_json::to_vec(profile).unwrap_or_default();
                self.write(&[model, &folder, PROFILE_FILE], bytes, PutMode::Create)?;
            }
            let manifest = draft.clone().complete(model, version, sha.clone());
            let bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
            // The signature before the commit marker: a committed version is never seen
            // without it.
            let signature = signer.map(|s| s.sign(&bytes));
            if let Some(signature) = &signature {
                self.write(&[model, &folder, SIGNATURE_FILE], signature.clone(), PutMode::Overwrite)?;
            }
            return match self.write(&[model, &folder, MANIFEST_FILE], bytes.clone(), PutMode::Create)? {
                Written::Done => Ok(Published { manifest, manifest_bytes: bytes, signature }),
                Written::Lost => Err(RegistryError::Corrupt {
                    path: self.display(&[model, &folder]),
                    reason: "another writer committed this version number after we claimed it".into(),
                }),
            };
        }
        Err(RegistryError::Corrupt { path: self.display(&[model]), reason: "could not claim a version number".into() })
    }

    /// Whether `version` is committed.
    pub fn has_version(&self, model: &str, version: u64) -> Result<bool, RegistryError> {
        check_model(model)?;
        Ok(self.get(&[model, &version.to_string(), MANIFEST_FILE])?.is_some())
    }

    /// Resolves a version number, an alias, or `latest` to a committed version.
    pub fn resolve(&self, model: &str, reference: &str) -> Result<u64, RegistryError> {
        let unknown = || RegistryError::UnknownReference { model: model.to_owned(), reference: reference.to_owned() };
        let version = if let Ok(version) = reference.parse::<u64>() {
            version
        } else if reference == "latest" {
            *self.listing(model)?.committed.last().ok_or_else(unknown)?
        } else {
            *self.aliases(model)?.get(reference).ok_or_else(unknown)?
        };
        if self.has_version(model, version)? {
            Ok(version)
        } else {
            Err(RegistryError::NoVersion { model: model.to_owned(), version })
        }
    }

    /// The alias map (empty when absent).
    pub fn aliases(&self, model: &str) -> Result<BTreeMap<String, u64>, RegistryError> {
        Ok(self.aliases_versioned(model)?.0)
    }

    fn aliases_versioned(&self, model: &str) -> Result<(BTreeMap<String, u64>, Option<Fetched>), RegistryError> {
        check_model(model)?;
        let parts = [model, ALIASES_FILE];
        match self.get(&parts)? {
            None => Ok((BTreeMap::new(), None)),
            Some(fetched) => {
                let aliases = parse_aliases(&fetched.bytes)
                    .map_err(|reason| RegistryError::Corrupt { path: self.display(&parts), reason })?;
                Ok((aliases, Some(fetched)))
            }
        }
    }

    /// Reads, changes and replaces the alias map by compare-and-set on its ETag, re-reading
    /// and re-applying `change` when another writer got there first; `change` may refuse.
    /// Returns the map as written.
    pub fn update_aliases(
        &self,
        model: &str,
        mut change: impl FnMut(&mut BTreeMap<String, u64>) -> Result<(), RegistryError>,
    ) -> Result<BTreeMap<String, u64>, RegistryError> {
        for lost in 0..CAS_ATTEMPTS {
            if lost > 0 {
                back_off(lost);
            }
            let (mut aliases, fetched) = self.aliases_versioned(model)?;
            let before = aliases.clone();
            change(&mut aliases)?;
            if aliases == before {
                return Ok(aliases);
            }
            let mode = fetched.map_or(PutMode::Create, |f| PutMode::Update(f.version));
            let bytes = serde_json::to_vec_pretty(&aliases).unwrap_or_default();
            if let Written::Done = self.write(&[model, ALIASES_FILE], bytes, mode)? {
                return Ok(aliases);
            }
        }
        Err(RegistryError::Store {
            url: self.display(&[model, ALIASES_FILE]),
            reason: format!("lost the compare-and-set {CAS_ATTEMPTS} times in a row; nothing was changed"),
        })
    }

    /// Replaces a version's reference profile.
    pub fn write_profile(&self, model: &str, version: u64, bytes: Vec<u8>) -> Result<(), RegistryError> {
        if !self.has_version(model, version)? {
            return Err(RegistryError::NoVersion { model: model.to_owned(), version });
        }
        self.write(&[model, &version.to_string(), PROFILE_FILE], bytes, PutMode::Overwrite).map(|_| ())
    }

    /// The durable rollout state (default when absent).
    pub fn rollout_state(&self, model: &str) -> Result<RolloutState, RegistryError> {
        check_model(model)?;
        let parts = [model, ROLLOUT_STATE_FILE];
        match self.get(&parts)? {
            None => Ok(RolloutState::default()),
            Some(f) => serde_json::from_slice(&f.bytes)
                .map_err(|e| RegistryError::Corrupt { path: self.display(&parts), reason: e.to_string() }),
        }
    }

    /// Reads, changes and writes the rollout state by compare-and-set on its ETag (re-applying
    /// `change` after a lost race, so concurrent writers, a controller and an operator, lose
    /// nothing). With `fence = Some(term)` (a controller lease term), the write is refused when
    /// the stored state was written under a higher term: `Ok(None)`, nothing written. Returns
    /// the state as stored.
    pub fn update_rollout_state(
        &self,
        model: &str,
        fence: Option<u64>,
        change: &mut dyn FnMut(&mut RolloutState),
    ) -> Result<Option<RolloutState>, RegistryError> {
        check_model(model)?;
        let parts = [model, ROLLOUT_STATE_FILE];
        for lost in 0..CAS_ATTEMPTS {
            if lost > 0 {
                back_off(lost);
            }
            let (current, mode) = match self.get(&parts)? {
                None => (RolloutState::default(), PutMode::Create),
                Some(f) => {
                    let state: RolloutState = serde_json::from_slice(&f.bytes)
                        .map_err(|e| RegistryError::Corrupt { path: self.display(&parts), reason: e.to_string() })?;
                    (state, PutMode::Update(f.version))
                }
            };
            if fence.is_some_and(|term| current.term > term) {
                return Ok(None);
            }
            let mut next = current.clone();
            change(&mut next);
            if let Some(term) = fence {
                next.term = term;
            }
            if next == current {
                return Ok(Some(current));
            }
            next.revision = current.revision + 1;
            let bytes = serde_json::to_vec_pretty(&next).unwrap_or_default();
            if let Written::Done = self.write(&parts, bytes, mode)? {
                return Ok(Some(next));
            }
        }
        Err(RegistryError::Store {
            url: self.display(&parts),
            reason: format!("lost the compare-and-set {CAS_ATTEMPTS} times in a row; nothing was changed"),
        })
    }

    /// Replaces the rollout state whole.
    pub fn write_rollout_state(&self, model: &str, state: &RolloutState) -> Result<(), RegistryError> {
        check_model(model)?;
        let bytes = serde_json::to_vec_pretty(state).unwrap_or_default();
        self.write(&[model, ROLLOUT_STATE_FILE], bytes, PutMode::Overwrite).map(|_| ())
    }
}

fn check_model(model: &str) -> Result<(), RegistryError> {
    if valid_model_name(model) { Ok(()) } else { Err(RegistryError::BadModelName(model.to_owned())) }
}
