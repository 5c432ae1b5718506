//! A local copy of a registry in object storage: what a gateway serves from and the trainer
//! reads. One sync lists each model (one request per thousand objects) and re-reads its alias
//! map and rollout state only when their ETag changed (conditional GET). A committed version is
//! downloaded, checked against its manifest's SHA-256 and installed into the local folder by one
//! rename, so a local reader never sees half a version; a version without a manifest is not
//! looked at.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::{Read, Remote};
use crate::fsutil::write_atomic;
use crate::manifest::MANIFEST_FILE;
use crate::profile::PROFILE_FILE;
use crate::rollout_state::{ROLLOUT_STATE_FILE, RolloutState};
use crate::signing::SIGNATURE_FILE;
use crate::store::{ALIASES_FILE, MODEL_FILE, Registry, RegistryError, parse_aliases};

/// What one sync changed locally, and what it refused.
#[derive(Debug, Default, Serialize)]
pub struct SyncReport {
    /// Versions installed (model, version).
    pub installed: Vec<(String, u64)>,
    /// Alias maps or rollout states replaced (model, file).
    pub replaced: Vec<(String, String)>,
    /// Signatures added to versions the copy held unsigned (`registry sign` after publishing).
    pub signed: Vec<(String, u64)>,
    /// Objects refused for good (corrupt, over the size cap), with the reason; not retried.
    pub refused: Vec<String>,
    /// Requests that failed this time (retried on the next sync).
    pub failed: Vec<String>,
}

impl SyncReport {
    /// Whether the local copy changed.
    pub fn changed(&self) -> bool {
        !self.installed.is_empty() || !self.replaced.is_empty() || !self.signed.is_empty()
    }
}

#[derive(Default)]
struct Seen {
    /// ETag of each mirrored small file as last copied, by "model/file".
    etags: HashMap<String, String>,
    /// Versions refused for good: committed versions are immutable, so a corrupt one stays so.
    refused: BTreeSet<(String, u64)>,
    /// Folders without a manifest (uploading or abandoned): when to look again, and the wait
    /// after that (doubling to a minute, so abandoned uploads cost little).
    uncommitted: HashMap<(String, u64), (std::time::Instant, std::time::Duration)>,
    /// The newest event id copied into each model's local log.
    last_event: HashMap<String, String>,
    /// When each aliased, unsigned version held here was last looked up for a signature.
    signature_looked: HashMap<(String, u64), std::time::Instant>,
}

/// How often an aliased version held without a signature asks the store for one.
const SIGNATURE_LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Keeps a local folder a copy of a remote registry.
pub struct Mirror {
    remote: Arc<Remote>,
    root: PathBuf,
    max_model_bytes: u64,
    seen: Mutex<Seen>,
    /// How often an aliased version held unsigned asks for a signature.
    signature_every: std::time::Duration,
}

impl Mirror {
    /// A mirror of `remote` into `root`, refusing model files over `max_model_bytes`.
    pub fn new(remote: Arc<Remote>, root: impl Into<PathBuf>, max_model_bytes: u64) -> Self {
        Self {
            remote,
            root: root.into(),
            max_model_bytes,
            seen: Mutex::default(),
            signature_every: SIGNATURE_LOOK_EVERY,
        }
    }

    /// The same mirror, asking for signatures added later every `every` (default 30 s).
    pub fn looking_for_signatures_every(mut self, every: std::time::Duration) -> Self {
        self.signature_every = every;
        self
    }

    /// The local folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The registry handle over the local copy whose writes go to the store first.
    pub fn registry(&self) -> Registry {
        Registry::mirrored(self.root.clone(), Arc::clone(&self.remote))
    }

    /// Brings the local copy up to date. Fails only when the store cannot be listed at all;
    /// a model or object that fails is named in the report and the rest goes on.
    pub fn sync(&self) -> Result<SyncReport, RegistryError> {
        std::fs::create_dir_all(&self.root)
            .map_err(|source| RegistryError::Io { path: self.root.display().to_string(), source })?;
        let mut report = SyncReport::default();
        for model in self.remote.models()? {
            if let Err(e) = self.sync_model(&model, &mut report) {
                report.failed.push(e.to_string());
            }
        }
        Ok(report)
    }

    /// Like [`Mirror::sync`] for one model only (the trainer's).
    pub fn sync_one(&self, model: &str) -> Result<SyncReport, RegistryError> {
        let mut report = SyncReport::default();
        self.sync_model(model, &mut report)?;
        Ok(report)
    }

    fn sync_model(&self, model: &str, report: &mut SyncReport) -> Result<(), RegistryError> {
        // The small files are read before the listing: an alias can only name a committed
        // version, so every version it names is in the listing that follows.
        let aliases = self.read_small(model, ALIASES_FILE)?;
        let state = self.read_small(model, ROLLOUT_STATE_FILE)?;
        let local = Registry::open(&self.root);
        let have: BTreeSet<u64> =
            local.versions(model).map(|(v, _)| v.iter().map(|e| e.version).collect()).unwrap_or_default();
        let now = std::time::Instant::now();
        // Versions a new alias map names are looked at now, whatever their back-off.
        let named: BTreeSet<u64> = match &aliases {
            Read::Fetched(f) => parse_aliases(&f.bytes).map(|m| m.into_values().collect()).unwrap_or_default(),
            _ => BTreeSet::new(),
        };
        for version in self.remote.version_folders(model)? {
            let key = (model.to_owned(), version);
            let waiting =
                !named.contains(&version) && self.lock().uncommitted.get(&key).is_some_and(|(next, _)| now < *next);
            if have.contains(&version) || waiting || self.lock().refused.contains(&key) {
                continue;
            }
            match self.install(&local, model, version) {
                Ok(Some(true)) => {
                    // The install read its signature (or its absence) just now.
                    self.lock().signature_looked.insert(key.clone(), now);
                    self.lock().uncommitted.remove(&key);
                    report.installed.push(key);
                }
                Ok(Some(false)) => {}
                Ok(None) => {
                    let mut seen = self.lock();
                    let wait = seen.uncommitted.get(&key).map_or(std::time::Duration::from_secs(1), |(_, w)| *w);
                    let wait = (wait * 2).min(std::time::Duration::from_secs(60));
                    seen.uncommitted.insert(key, (now + wait, wait));
                }
                Err(e @ (RegistryError::Store { .. } | RegistryError::Io { .. })) => report.failed.push(e.to_string()),
                Err(e) => {
                    report.refused.push(e.to_string());
                    self.lock().refused.insert(key);
                }
            }
        }
        self.pick_up_signatures(&local, model, &named, report);
        if matches!((&aliases, &state), (Read::Unchanged, Read::Unchanged)) {
            return Ok(());
        }
        // A writer in this process (the controller moving an alias) writes the store, then the
        // copy, under this lock; what was read above may be older than its write by now. Read
        // again under the lock, conditionally (nothing is transferred when it did not move),
        // so the copy never goes back to what the store no longer says.
        let lock = copy_lock(&self.root);
        let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut aliases = self.confirm(model, ALIASES_FILE, aliases)?;
        let state = self.confirm(model, ROLLOUT_STATE_FILE, state)?;
        // An alias naming a version the copy does not hold (not downloaded yet, or refused)
        // keeps its old value in the copy (or stays out of it); the other aliases move. The
        // ETag is not kept, so the next sync reads the map again.
        if let Read::Fetched(fetched) = &aliases
            && let Ok(map) = parse_aliases(&fetched.bytes)
            && map.values().any(|v| !self.root.join(model).join(v.to_string()).is_dir())
        {
            let held = Registry::open(&self.root).aliases(model).unwrap_or_default();
            let mut merged = BTreeMap::new();
            for (alias, version) in &map {
                if self.root.join(model).join(version.to_string()).is_dir() {
                    merged.insert(alias.clone(), *version);
                } else {
                    report.failed.push(format!(
                        "{}: alias '{alias}' names version {version}, which the copy does not hold; it keeps {}",
                        self.remote.display(&[model, ALIASES_FILE]),
                        held.get(alias).map_or_else(|| "no value".to_owned(), |v| format!("version {v}"))
                    ));
                    if let Some(old) = held.get(alias) {
                        merged.insert(alias.clone(), *old);
                    }
                }
            }
            if merged != held {
                write_local_aliases(&self.root, model, &merged)?;
                report.replaced.push((model.to_owned(), ALIASES_FILE.to_owned()));
            }
            aliases = Read::Unchanged;
        }
        self.apply_small(model, ALIASES_FILE, aliases, report)?;
        self.apply_small(model, ROLLOUT_STATE_FILE, state, report)
    }

    /// A version signed after this copy installed it (`registry sign`): the versions aliases
    /// name (those that serve), held here without `manifest.sig`, ask the store for one at most
    /// every [`SIGNATURE_LOOK_EVERY`]; one found is added atomically. Unaliased versions are not
    /// asked (a registry that never signs costs nothing for its history).
    fn pick_up_signatures(&self, local: &Registry, model: &str, named: &BTreeSet<u64>, report: &mut SyncReport) {
        let mut aliased: BTreeSet<u64> = local.aliases(model).map(|m| m.into_values().collect()).unwrap_or_default();
        aliased.extend(named);
        let now = std::time::Instant::now();
        for version in aliased {
            let dir = self.root.join(model).join(version.to_string());
            let path = dir.join(SIGNATURE_FILE);
            if !dir.is_dir() || path.exists() {
                continue;
            }
            let key = (model.to_owned(), version);
            if self.lock().signature_looked.get(&key).is_some_and(|t| now < *t + self.signature_every) {
                continue;
            }
            self.lock().signature_looked.insert(key.clone(), now);
            match self.remote.signature(model, version) {
                Ok(None) => {}
                Ok(Some(bytes)) => match crate::fsutil::write_atomic(&path, &bytes) {
                    Ok(()) => report.signed.push(key),
                    Err(e) => report.failed.push(format!("{}: {e}", path.display())),
                },
                Err(e) => report.failed.push(e.to_string()),
            }
        }
    }

    /// `read` if the store still says so, else what it says now.
    fn confirm(&self, model: &str, file: &str, read: Read) -> Result<Read, RegistryError> {
        match read {
            Read::Unchanged => Ok(Read::Unchanged),
            Read::Fetched(fetched) => match self.remote.read(&[model, file], fetched.version.e_tag.as_deref())? {
                Read::Unchanged => Ok(Read::Fetched(fetched)),
                newer => Ok(newer),
            },
            Read::Absent => self.remote.read(&[model, file], None),
        }
    }

    /// Installs a committed version; `None` when the folder has no manifest (yet).
    fn install(&self, local: &Registry, model: &str, version: u64) -> Result<Option<bool>, RegistryError> {
        let folder = version.to_string();
        let (manifest, manifest_bytes) = match self.remote.manifest_file(model, version) {
            Ok(read) => read,
            Err(RegistryError::NoVersion { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let size = self.remote.size(&[model, &folder, MODEL_FILE])?.ok_or_else(|| RegistryError::Corrupt {
            path: self.remote.display(&[model, &folder]),
            reason: format!("a manifest but no {MODEL_FILE}"),
        })?;
        if size > self.max_model_bytes {
            return Err(RegistryError::Corrupt {
                path: self.remote.display(&[model, &folder, MODEL_FILE]),
                reason: format!("{size} bytes, over the cap of {} bytes; not downloaded", self.max_model_bytes),
            });
        }
        let bytes = self.remote.model_bytes(model, version, &manifest)?;
        let profile = self.remote.profile(model, version)?.map(|p| serde_json::to_vec(&p).unwrap_or_default());
        let signature = self.remote.signature(model, version)?;
        // The manifest's own bytes, not a re-serialization: they are what the signature covers.
        let mut files: Vec<(&str, &[u8])> = vec![(MODEL_FILE, &bytes), (MANIFEST_FILE, &manifest_bytes)];
        if let Some(profile) = &profile {
            files.push((PROFILE_FILE, profile));
        }
        if let Some(signature) = &signature {
            files.push((SIGNATURE_FILE, signature));
        }
        local.install_version(model, version, &files).map(Some)
    }

    /// Reads a small file unless its ETag is the one last copied.
    fn read_small(&self, model: &str, file: &str) -> Result<Read, RegistryError> {
        let etag = self.lock().etags.get(&format!("{model}/{file}")).cloned();
        self.remote.read(&[model, file], etag.as_deref())
    }

    fn apply_small(&self, model: &str, file: &str, read: Read, report: &mut SyncReport) -> Result<(), RegistryError> {
        let key = format!("{model}/{file}");
        let path = self.root.join(model).join(file);
        let io = |source| RegistryError::Io { path: path.display().to_string(), source };
        match read {
            Read::Unchanged => Ok(()),
            Read::Absent => {
                self.lock().etags.remove(&key);
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        report.replaced.push((model.to_owned(), file.to_owned()));
                        Ok(())
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(io(e)),
                }
            }
            Read::Fetched(fetched) => {
                let valid = if file == ALIASES_FILE {
                    parse_aliases(&fetched.bytes).map(|_| ())
                } else {
                    serde_json::from_slice::<RolloutState>(&fetched.bytes).map(|_| ()).map_err(|e| e.to_string())
                };
                if let Err(reason) = valid {
                    // Refused, and the local copy keeps what it had; re-read when it changes.
                    report
                        .refused
                        .push(format!("{}: {reason}; the local copy is kept", self.remote.display(&[model, file])));
                } else if std::fs::read(&path).ok().as_deref() != Some(fetched.bytes.as_slice()) {
                    std::fs::create_dir_all(self.root.join(model)).map_err(io)?;
                    write_atomic(&path, &fetched.bytes).map_err(io)?;
                    report.replaced.push((model.to_owned(), file.to_owned()));
                }
                if let Some(etag) = fetched.version.e_tag {
                    self.lock().etags.insert(key, etag);
                }
                Ok(())
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The lock that orders a sync's writes into the copy at `root` with this process's own
/// write-throughs (store first, then copy) of alias maps and rollout state.
pub(crate) fn copy_lock(root: &Path) -> Arc<Mutex<()>> {
    static LOCKS: std::sync::OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = std::sync::OnceLock::new();
    let mut locks = LOCKS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    Arc::clone(locks.entry(root.to_path_buf()).or_default())
}

/// Writes the alias map a compare-and-set wrote into the local copy (so the writer reads its
/// own write before the next sync).
pub(crate) fn write_local_aliases(
    root: &Path,
    model: &str,
    aliases: &BTreeMap<String, u64>,
) -> Result<(), RegistryError> {
    let dir = root.join(model);
    let path = dir.join(ALIASES_FILE);
    let io = |source| RegistryError::Io { path: path.display().to_string(), source };
    std::fs::create_dir_all(&dir).map_err(io)?;
    write_atomic(&path, &serde_json::to_vec_pretty(aliases).unwrap_or_default()).map_err(io)
}

/// Copies every object below `parts` of `remote` that `local` does not have yet into `local`
/// (same relative paths; each written under a hidden name and renamed, so a reader sees whole
/// files only). Returns the relative paths copied. Objects are never deleted locally.
pub fn copy_down(remote: &Remote, parts: &[&str], local: &Path) -> Result<Vec<String>, RegistryError> {
    let mut copied = Vec::new();
    for (name, _) in remote.objects(parts)? {
        let target = local.join(&name);
        if target.exists() || name.split('/').any(|p| p.starts_with('.') || p == "..") {
            continue;
        }
        let mut full: Vec<&str> = parts.to_vec();
        full.extend(name.split('/'));
        let Some(fetched) = remote.get(&full)? else { continue };
        let io = |source| RegistryError::Io { path: target.display().to_string(), source };
        let dir = target.parent().unwrap_or(local);
        std::fs::create_dir_all(dir).map_err(io)?;
        let file = target.file_name().and_then(|n| n.to_str()).unwrap_or("object");
        let tmp = dir.join(format!(".{file}.download"));
        std::fs::write(&tmp, &fetched.bytes).and_then(|()| std::fs::rename(&tmp, &target)).map_err(io)?;
        copied.push(name);
    }
    Ok(copied)
}

impl Mirror {
    /// Appends the fleet's drift events of `model` (objects under `<model>/drift-events/`) that
    /// the local log does not hold yet to `<copy>/<model>/drift-events.jsonl`, in id (time)
    /// order, numbering them on from the log's last `seq`: the local log is then what a single
    /// gateway would have written, and a reader of it (the trainer's watch) works unchanged.
    /// Returns how many were appended.
    pub fn sync_events(&self, model: &str) -> Result<usize, RegistryError> {
        self.sync_log(model, crate::events::DRIFT_EVENTS_DIR, crate::events::DRIFT_EVENTS_FILE)
    }

    /// Like [`Mirror::sync_events`] for any log of JSON records with an `id` (the object's
    /// name) kept one object per record under `<model>/<folder>/` in the store: records the
    /// local `<copy>/<model>/<file>` lacks are appended in id order (a `seq` field, when the
    /// records have one, is renumbered on from the local log's).
    pub fn sync_log(&self, model: &str, folder: &str, file: &str) -> Result<usize, RegistryError> {
        use std::io::Write;
        let path = self.root.join(model).join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let held: BTreeSet<String> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|e| e.get("id").and_then(|id| id.as_str()).map(str::to_owned))
            .collect();
        let mut next_seq = text.lines().count() as u64;
        // From two minutes before the newest record copied: ids start with their time, and a
        // record put late (a slow writer) is still within the window; older ones are history.
        let cursor = format!("{model}/{folder}");
        let last = self.lock().last_event.get(&cursor).cloned().or_else(|| held.iter().next_back().cloned());
        let after = last
            .and_then(|id| id.get(..13)?.parse::<u64>().ok())
            .map(|ms| format!("{:013}", ms.saturating_sub(120_000)));
        let mut names: Vec<String> = self
            .remote
            .objects_after(&[model, folder], after.as_deref())?
            .into_iter()
            .map(|(name, _)| name)
            .filter(|n| n.ends_with(".json") && !held.contains(n.trim_end_matches(".json")))
            .collect();
        names.sort();
        if let Some(newest) = names.last().or(held.iter().next_back()) {
            self.lock().last_event.insert(cursor, newest.trim_end_matches(".json").to_owned());
        }
        let (mut lines, mut appended) = (String::new(), 0);
        for name in &names {
            let Some(fetched) = self.remote.get(&[model, folder, name])? else { continue };
            let Ok(mut record) = serde_json::from_slice::<serde_json::Value>(&fetched.bytes) else { continue };
            let Some(fields) = record.as_object_mut() else { continue };
            fields.insert("id".into(), serde_json::Value::from(name.trim_end_matches(".json")));
            if fields.contains_key("seq") {
                fields.insert("seq".into(), serde_json::Value::from(next_seq));
                next_seq += 1;
            }
            appended += 1;
            lines.push_str(&serde_json::to_string(&record).unwrap_or_default());
            lines.push('\n');
        }
        if lines.is_empty() {
            return Ok(0);
        }
        let io = |source| RegistryError::Io { path: path.display().to_string(), source };
        std::fs::create_dir_all(self.root.join(model)).map_err(io)?;
        let mut out = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
        out.write_all(lines.as_bytes()).and_then(|()| out.sync_data()).map_err(io)?;
        Ok(appended)
    }
}
