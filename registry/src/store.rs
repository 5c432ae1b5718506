//! The registry on disk:
//!
//! ```text
//! <root>/<model>/<version>/model.onnx     the ONNX file (immutable)
//! <root>/<model>/<version>/manifest.json  lineage and SHA-256 (optional for hand-made folders)
//! <root>/<model>/<version>/profile.json   reference profile for drift detection (later)
//! <root>/<model>/<version>/manifest.sig   Ed25519 signature of manifest.json (signed registries)
//! <root>/<model>/aliases.json             {"champion": 3, "challenger": 4}
//! ```
//! A version is published by writing a hidden temporary folder, fsyncing it, and renaming it to
//! its number, so a reader never sees half a version. Aliases are replaced whole (atomic write).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::fsutil::{sync_dir, unique, write_atomic, write_synced};
use crate::manifest::{MANIFEST_FILE, Manifest, ManifestDraft, sha256_hex};
use crate::profile::{PROFILE_FILE, ReferenceProfile};
use crate::remote::Remote;
use crate::signing::{SIGNATURE_FILE, Signer, TrustedKeys};

/// File name of a version's model.
pub const MODEL_FILE: &str = "model.onnx";
/// File name of a model's alias map.
pub const ALIASES_FILE: &str = "aliases.json";

/// Registry failures, each naming the path or reference involved.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("model name '{0}' is not valid: use letters, digits, '_', '-' and '.'")]
    BadModelName(String),
    #[error("alias name '{0}' is not valid: use letters, digits, '_' and '-', not only digits, and not 'latest'")]
    BadAlias(String),
    #[error("model '{model}' has no version {version}")]
    NoVersion { model: String, version: u64 },
    #[error("model '{model}' has no version or alias '{reference}'")]
    UnknownReference { model: String, reference: String },
    #[error("{path}: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("{path}: SHA-256 is {actual}, the manifest says {expected}")]
    HashMismatch { path: String, expected: String, actual: String },
    /// A compare-and-set found the alias somewhere else than expected: someone moved it first.
    #[error("alias '{alias}' of model '{model}' is {}, expected {}; nothing was changed", show(*.found), show(*.expected))]
    AliasConflict { model: String, alias: String, expected: Option<u64>, found: Option<u64> },
    /// An object store request failed or the store is misconfigured.
    #[error("{url}: {reason}")]
    Store { url: String, reason: String },
}

fn show(version: Option<u64>) -> String {
    version.map_or_else(|| "absent".to_owned(), |v| format!("version {v}"))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io { path: path.display().to_string(), source }
}

/// One version folder as found on disk.
#[derive(Clone, Debug)]
pub struct VersionEntry {
    pub model: String,
    pub version: u64,
    pub dir: PathBuf,
    /// The manifest, `None` when the folder has none, or why it could not be read.
    pub manifest: Option<Result<Manifest, String>>,
}

impl VersionEntry {
    /// Path of the ONNX file.
    pub fn model_file(&self) -> PathBuf {
        self.dir.join(MODEL_FILE)
    }
}

/// A model file that passed [`Registry::verify`].
#[derive(Clone, Debug)]
pub struct Verified {
    pub bytes: Vec<u8>,
    /// Lower-case hex SHA-256 of `bytes`.
    pub sha256: String,
}

/// Size and modification time of a file: a cheap identity to tell an unchanged file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    pub len: u64,
    pub modified: Option<std::time::SystemTime>,
}

impl FileStamp {
    /// The stamp of `path`, `None` if it cannot be read.
    pub fn of(path: &Path) -> Option<Self> {
        let meta = fs::metadata(path).ok()?;
        Some(Self { len: meta.len(), modified: meta.modified().ok() })
    }
}

/// A folder that looked like a version but is skipped, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// A registry rooted at a local folder, or a local copy of one in object storage
/// ([`crate::Mirror`]): then reads are local and writes go to the store first.
#[derive(Clone, Debug)]
pub struct Registry {
    root: PathBuf,
    remote: Option<Arc<Remote>>,
    /// Signs every version this handle publishes.
    signer: Option<Arc<Signer>>,
}

impl Registry {
    /// A registry at `root` (created on first publish).
    pub fn open(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), remote: None, signer: None }
    }

    /// The same registry, signing each version it publishes with `signer`.
    pub fn with_signer(mut self, signer: Arc<Signer>) -> Self {
        self.signer = Some(signer);
        self
    }

    /// The local copy at `root` of `remote`: publishes, alias changes and rollout state are
    /// written to the store (compare-and-set where it matters), then to the copy.
    pub fn mirrored(root: impl Into<PathBuf>, remote: Arc<Remote>) -> Self {
        Self { root: root.into(), remote: Some(remote), signer: None }
    }

    /// The object store this is a copy of, if any.
    pub fn remote(&self) -> Option<&Arc<Remote>> {
        self.remote.as_ref()
    }

    /// Fails unless `version` is committed where writes go (the store for a copy).
    pub(crate) fn require_version(&self, model: &str, version: u64) -> Result<(), RegistryError> {
        match &self.remote {
            Some(remote) if remote.has_version(model, version)? => Ok(()),
            Some(_) => Err(RegistryError::NoVersion { model: model.to_owned(), version }),
            None => self.version(model, version).map(|_| ()),
        }
    }

    /// Installs `files` as version `version` of `model` in the local folder by one rename;
    /// `false` when the version is there already.
    pub fn install_version(&self, model: &str, version: u64, files: &[(&str, &[u8])]) -> Result<bool, RegistryError> {
        let dir = self.model_dir(model)?;
        let target = dir.join(version.to_string());
        if target.exists() {
            return Ok(false);
        }
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let staging = dir.join(format!(".install-{}-{}", std::process::id(), unique()));
        fs::create_dir(&staging).map_err(io(&staging))?;
        let result = (|| {
            for (name, bytes) in files {
                let path = staging.join(name);
                write_synced(&path, bytes).map_err(io(&path))?;
            }
            sync_dir(&staging).map_err(io(&staging))?;
            if target.exists() {
                return Ok(false);
            }
            fs::rename(&staging, &target).map_err(io(&target))?;
            sync_dir(&dir).map_err(io(&dir))?;
            Ok(true)
        })();
        if !matches!(result, Ok(true)) {
            let _ = fs::remove_dir_all(&staging);
        }
        result
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Model names, sorted; folders with invalid names or starting with '.' are ignored.
    pub fn models(&self) -> Result<Vec<String>, RegistryError> {
        let mut names: Vec<String> = fs::read_dir(&self.root)
            .map_err(io(&self.root))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|n| !n.starts_with('.') && valid_model_name(n))
            .collect();
        names.sort();
        Ok(names)
    }

    /// A model's versions, ascending, and the folders skipped with the reason.
    pub fn versions(&self, model: &str) -> Result<(Vec<VersionEntry>, Vec<Skipped>), RegistryError> {
        let dir = self.model_dir(model)?;
        let mut entries = Vec::new();
        let mut skipped = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io(&dir))?.filter_map(|e| e.ok()) {
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            if !path.is_dir() || name.starts_with('.') {
                continue;
            }
            let Ok(version) = name.parse::<u64>() else {
                skipped.push(Skipped { path, reason: "folder name is not a version number".into() });
                continue;
            };
            if !path.join(MODEL_FILE).is_file() {
                skipped.push(Skipped { path, reason: format!("no {MODEL_FILE} inside") });
                continue;
            }
            entries.push(self.entry(model, version, path));
        }
        entries.sort_by_key(|e| e.version);
        Ok((entries, skipped))
    }

    /// One version.
    pub fn version(&self, model: &str, version: u64) -> Result<VersionEntry, RegistryError> {
        let dir = self.model_dir(model)?.join(version.to_string());
        if !dir.join(MODEL_FILE).is_file() {
            return Err(RegistryError::NoVersion { model: model.to_owned(), version });
        }
        Ok(self.entry(model, version, dir))
    }

    fn entry(&self, model: &str, version: u64, dir: PathBuf) -> VersionEntry {
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest = manifest_path.is_file().then(|| {
            fs::read(&manifest_path)
                .map_err(|e| e.to_string())
                .and_then(|b| parse_manifest(&b, model, version).map_err(|e| format!("{MANIFEST_FILE}: {e}")))
        });
        VersionEntry { model: model.to_owned(), version, dir, manifest }
    }

    /// Checks the model file against the manifest's SHA-256 (a version without a manifest passes;
    /// an unreadable manifest fails). Returns the file's bytes, read once, and their digest.
    pub fn verify(&self, entry: &VersionEntry) -> Result<Verified, RegistryError> {
        let file = entry.model_file();
        let bytes = fs::read(&file).map_err(io(&file))?;
        let sha256 = sha256_hex(&bytes);
        match &entry.manifest {
            None => Ok(Verified { bytes, sha256 }),
            Some(Err(reason)) => {
                Err(RegistryError::Corrupt { path: entry.dir.display().to_string(), reason: reason.clone() })
            }
            Some(Ok(manifest)) if manifest.sha256 == sha256 => Ok(Verified { bytes, sha256 }),
            Some(Ok(manifest)) => Err(RegistryError::HashMismatch {
                path: file.display().to_string(),
                expected: manifest.sha256.clone(),
                actual: sha256,
            }),
        }
    }

    /// Checks a version's signature against `trusted`: `Ok(None)` when it is unsigned,
    /// `Ok(Some(key id))` when it verifies, or why not (the message names the file). The
    /// manifest is read once: the signature is checked on those bytes, and the SHA-256 they
    /// hold must be `model_sha256`, the digest of the model file as loaded (`None`: the file
    /// is read and hashed here), so a manifest swapped between two reads cannot pass.
    pub fn check_signature(
        &self,
        entry: &VersionEntry,
        trusted: &TrustedKeys,
        model_sha256: Option<&str>,
    ) -> Result<Option<String>, String> {
        let sig_path = entry.dir.join(SIGNATURE_FILE);
        let signature = match fs::read(&sig_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", sig_path.display())),
        };
        let manifest_path = entry.dir.join(MANIFEST_FILE);
        let manifest = fs::read(&manifest_path)
            .map_err(|e| format!("{} is signed but {}: {e}", entry.dir.display(), manifest_path.display()))?;
        let key = trusted.verify(&manifest, &signature).map_err(|e| format!("{}: {e}", entry.dir.display()))?;
        let signed = parse_manifest(&manifest, &entry.model, entry.version)
            .map_err(|e| format!("{}: {e}", manifest_path.display()))?;
        let actual = match model_sha256 {
            Some(sha) => sha.to_owned(),
            None => self.verify(entry).map_err(|e| e.to_string())?.sha256,
        };
        if signed.sha256 != actual {
            return Err(format!(
                "{}: the signed manifest's sha256 is {}, but the model file read is {actual}",
                manifest_path.display(),
                signed.sha256
            ));
        }
        Ok(Some(key))
    }

    /// Signs a published, unsigned version (for a registry that adopts signing); in object
    /// storage create-only. Returns the key id, or why not (already signed, no manifest).
    pub fn sign_version(&self, model: &str, version: u64, signer: &Signer) -> Result<(), RegistryError> {
        let signed = |path: String| RegistryError::Corrupt { path, reason: "already signed; left as it is".into() };
        if let Some(remote) = &self.remote {
            if !remote.sign_version(model, version, signer)? {
                return Err(signed(remote.display(&[model, &version.to_string(), SIGNATURE_FILE])));
            }
            // This copy too, when it holds the version (the same manifest bytes as the store's).
            if self.version(model, version).is_err() {
                return Ok(());
            }
        }
        let entry = self.version(model, version)?;
        let manifest_path = entry.dir.join(MANIFEST_FILE);
        let bytes = fs::read(&manifest_path).map_err(io(&manifest_path))?;
        let path = entry.dir.join(SIGNATURE_FILE);
        if path.exists() && self.remote.is_none() {
            return Err(signed(path.display().to_string()));
        }
        crate::fsutil::write_atomic(&path, &signer.sign(&bytes)).map_err(io(&path))
    }

    /// Publishes `model_bytes` as the next version of `model`, atomically; returns its manifest.
    pub fn publish(&self, model: &str, model_bytes: &[u8], draft: ManifestDraft) -> Result<Manifest, RegistryError> {
        self.publish_with_profile(model, model_bytes, draft, None)
    }

    /// Publishes a version with its reference profile inside the same atomic rename: the
    /// version never exists without it (drift detection starts with its first request).
    pub fn publish_with_profile(
        &self,
        model: &str,
        model_bytes: &[u8],
        draft: ManifestDraft,
        profile: Option<&ReferenceProfile>,
    ) -> Result<Manifest, RegistryError> {
        if !valid_model_name(model) {
            return Err(RegistryError::BadModelName(model.to_owned()));
        }
        if let Some(remote) = &self.remote {
            let published = remote.publish(model, model_bytes, draft, profile, self.signer.as_deref())?;
            let profile_bytes = profile.map(|p| serde_json::to_vec(p).unwrap_or_default());
            let mut files: Vec<(&str, &[u8])> =
                vec![(MODEL_FILE, model_bytes), (MANIFEST_FILE, &published.manifest_bytes)];
            if let Some(bytes) = &profile_bytes {
                files.push((PROFILE_FILE, bytes));
            }
            if let Some(bytes) = &published.signature {
                files.push((SIGNATURE_FILE, bytes));
            }
            self.install_version(model, published.manifest.version, &files)?;
            return Ok(published.manifest);
        }
        let dir = self.root.join(model);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let staging = dir.join(format!(".publish-{}-{}", std::process::id(), unique()));
        fs::create_dir(&staging).map_err(io(&staging))?;
        let result = match profile {
            Some(profile) => {
                let path = staging.join(PROFILE_FILE);
                write_synced(&path, &serde_json::to_vec(profile).unwrap_or_default()).map_err(io(&path))
            }
            None => Ok(()),
        }
        .and_then(|()| self.publish_staged(model, &dir, &staging, model_bytes, draft));
        if result.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        result
    }

    fn publish_staged(
        &self,
        model: &str,
        dir: &Path,
        staging: &Path,
        model_bytes: &[u8],
        draft: ManifestDraft,
    ) -> Result<Manifest, RegistryError> {
        let sha = sha256_hex(model_bytes);
        let file = staging.join(MODEL_FILE);
        write_synced(&file, model_bytes).map_err(io(&file))?;
        let first = self.versions(model)?.0.last().map_or(1, |e| e.version + 1);
        // Another publisher may take the number first: rename onto an existing, non-empty
        // folder fails, and we try the next number.
        for version in first..first + 64 {
            let manifest = draft.clone().complete(model, version, sha.clone());
            let bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
            let manifest_path = staging.join(MANIFEST_FILE);
            write_synced(&manifest_path, &bytes).map_err(io(&manifest_path))?;
            if let Some(signer) = &self.signer {
                let path = staging.join(SIGNATURE_FILE);
                write_synced(&path, &signer.sign(&bytes)).map_err(io(&path))?;
            }
            sync_dir(staging).map_err(io(staging))?;
            let target = dir.join(version.to_string());
            if !target.exists() && fs::rename(staging, &target).is_ok() {
                sync_dir(dir).map_err(io(dir))?;
                return Ok(manifest);
            }
        }
        Err(RegistryError::Corrupt {
            path: dir.display().to_string(),
            reason: "could not claim a version number".into(),
        })
    }

    /// A version's reference profile, `None` when it has none.
    pub fn profile(&self, model: &str, version: u64) -> Result<Option<ReferenceProfile>, RegistryError> {
        let path = self.version(model, version)?.dir.join(PROFILE_FILE);
        match fs::read(&path) {
            Ok(bytes) => parse_profile(&bytes)
                .map(Some)
                .map_err(|reason| RegistryError::Corrupt { path: path.display().to_string(), reason }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Writes (or replaces) a version's reference profile, atomically.
    pub fn write_profile(&self, model: &str, version: u64, profile: &ReferenceProfile) -> Result<(), RegistryError> {
        let path = self.version(model, version)?.dir.join(PROFILE_FILE);
        let bytes = serde_json::to_vec(profile).unwrap_or_default();
        if let Some(remote) = &self.remote {
            remote.write_profile(model, version, bytes.clone())?;
        }
        write_atomic(&path, &bytes).map_err(io(&path))
    }

    /// The model's aliases (empty when it has none).
    pub fn aliases(&self, model: &str) -> Result<BTreeMap<String, u64>, RegistryError> {
        let path = self.model_dir(model)?.join(ALIASES_FILE);
        match fs::read(&path) {
            Ok(bytes) => parse_aliases(&bytes)
                .map_err(|reason| RegistryError::Corrupt { path: path.display().to_string(), reason }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Points `alias` at `version` (which must exist).
    pub fn set_alias(&self, model: &str, alias: &str, version: u64) -> Result<(), RegistryError> {
        if !valid_alias(alias) {
            return Err(RegistryError::BadAlias(alias.to_owned()));
        }
        self.require_version(model, version)?;
        self.update_aliases(model, |aliases| {
            aliases.insert(alias.to_owned(), version);
            Ok(())
        })
    }

    /// Removes `alias`; returns whether it existed.
    pub fn remove_alias(&self, model: &str, alias: &str) -> Result<bool, RegistryError> {
        let mut existed = false;
        self.update_aliases(model, |aliases| {
            existed = aliases.remove(alias).is_some();
            Ok(())
        })?;
        Ok(existed)
    }

    /// Reads, changes and replaces the alias map under the model's alias lock; `change` may
    /// refuse (nothing is written then).
    pub(crate) fn update_aliases(
        &self,
        model: &str,
        mut change: impl FnMut(&mut BTreeMap<String, u64>) -> Result<(), RegistryError>,
    ) -> Result<(), RegistryError> {
        let dir = self.model_dir(model)?;
        if let Some(remote) = &self.remote {
            let lock = crate::remote::copy_lock(&self.root);
            let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
            let aliases = remote.update_aliases(model, change)?;
            return crate::remote::write_local_aliases(&self.root, model, &aliases);
        }
        // Serialise read-modify-write across processes; readers never lock (the file is replaced whole).
        let lock_path = dir.join(".aliases.lock");
        let lock =
            fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;
        let mut aliases = self.aliases(model)?;
        change(&mut aliases)?;
        let path = dir.join(ALIASES_FILE);
        let bytes = serde_json::to_vec_pretty(&aliases).unwrap_or_default();
        write_atomic(&path, &bytes).map_err(io(&path))
    }

    /// Resolves a version number, an alias, or `latest` to a version number.
    pub fn resolve(&self, model: &str, reference: &str) -> Result<u64, RegistryError> {
        if let Ok(version) = reference.parse::<u64>() {
            return self.version(model, version).map(|e| e.version);
        }
        let unknown = || RegistryError::UnknownReference { model: model.to_owned(), reference: reference.to_owned() };
        if reference == "latest" {
            return self.versions(model)?.0.last().map(|e| e.version).ok_or_else(unknown);
        }
        let version = *self.aliases(model)?.get(reference).ok_or_else(unknown)?;
        self.version(model, version).map(|e| e.version)
    }

    pub(crate) fn model_dir(&self, model: &str) -> Result<PathBuf, RegistryError> {
        if !valid_model_name(model) {
            return Err(RegistryError::BadModelName(model.to_owned()));
        }
        Ok(self.root.join(model))
    }
}

/// Model names appear in paths, URLs and metric labels: keep them plain.
/// Reads a manifest's bytes for `model` / `version`: parsed, and its identity checked.
pub fn parse_manifest(bytes: &[u8], model: &str, version: u64) -> Result<Manifest, String> {
    let manifest = serde_json::from_slice::<Manifest>(bytes).map_err(|e| e.to_string())?;
    manifest.check_identity(model, version)?;
    Ok(manifest)
}

/// Reads a reference profile's bytes: parsed and validated.
pub fn parse_profile(bytes: &[u8]) -> Result<ReferenceProfile, String> {
    let profile = serde_json::from_slice::<ReferenceProfile>(bytes).map_err(|e| e.to_string())?;
    profile.validate()?;
    Ok(profile)
}

/// Reads an alias file's bytes: alias → version, every alias name valid.
pub fn parse_aliases(bytes: &[u8]) -> Result<BTreeMap<String, u64>, String> {
    let aliases = serde_json::from_slice::<BTreeMap<String, u64>>(bytes).map_err(|e| e.to_string())?;
    match aliases.keys().find(|a| !valid_alias(a)) {
        Some(bad) => Err(format!("alias {bad:?} is not a valid alias name")),
        None => Ok(aliases),
    }
}

pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Aliases are names, never numbers (those are versions) nor `latest`.
pub fn valid_alias(alias: &str) -> bool {
    !alias.is_empty()
        && alias != "latest"
        && !alias.chars().all(|c| c.is_ascii_digit())
        && alias.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}
