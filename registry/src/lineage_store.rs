//! Lineage over a fleet's object storage: what [`crate::lineage`] reads — the registry's
//! versions, the sample store's samples, labels, label journal, explanations and training-set
//! records, and the fleet's audit records (`<registry>/.audit/<id>.json`, every replica's and
//! operator's) — copied into a fresh local folder, so the chain and the data re-check are the
//! same code as over folders. The folder is new for every query: a copy kept from an earlier
//! one could hide a file changed in the store since.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::lineage::{EXPLANATIONS, Sources};
use crate::remote::{Mirror, Remote, copy_down};
use crate::samples::{LABEL_JOURNAL, LABELS, MODEL, SAMPLES};
use crate::store::{Registry, RegistryError};
use crate::training_set::TRAINING_SETS;

/// Folder of the fleet's audit records at the registry's root (one object per line).
pub const AUDIT_RECORDS: &str = ".audit";

/// A store's lineage sources, copied under `into` (which should be new and empty).
pub struct Copied {
    pub registry: Registry,
    pub sources: Sources,
    /// Versions the registry copy refused or could not fetch (named in the report).
    pub problems: Vec<String>,
    /// The sample store's URL (what `sources.sample_dir` is a copy of).
    pub samples_url: String,
}

impl Copied {
    /// Names the files in `lineage` by their place in the store rather than in the copy.
    pub fn name_in_store(&self, lineage: &mut crate::lineage::Lineage) {
        for row in &mut lineage.rows {
            if let Ok(rest) = Path::new(&row.file).strip_prefix(&self.sources.sample_dir) {
                row.file = format!("{}/{}", self.samples_url, crate::dataset::store_key(Path::new(""), rest));
            }
        }
    }
}

/// Copies what a lineage query over `registry_url` needs into `into`: the versions of `model`
/// (or of every model), that model's sample-store folders from `samples_url` (default
/// `<registry_url>/.data`, where gateways upload) and the fleet's audit records.
pub fn copy(
    registry_url: &str,
    samples_url: Option<&str>,
    model: Option<&str>,
    into: &Path,
    verify_data: bool,
) -> Result<Copied, RegistryError> {
    let registry = Remote::shared(registry_url)?;
    let default_samples = format!("{}/.data", registry.url());
    let samples = Remote::shared(samples_url.unwrap_or(&default_samples))?;
    let samples_url = samples.url().to_owned();
    let models = match model {
        Some(m) => vec![m.to_owned()],
        None => registry.models()?,
    };
    let (models_dir, sample_dir) = (into.join("models"), into.join("samples"));
    let mirror = Mirror::new(std::sync::Arc::clone(&registry), &models_dir, u64::MAX);
    let mut problems = Vec::new();
    for m in &models {
        let report = mirror.sync_one(m)?;
        problems.extend(report.refused.into_iter().chain(report.failed));
        let folder = format!("{MODEL}={m}");
        for kind in [SAMPLES, LABELS, LABEL_JOURNAL, EXPLANATIONS, TRAINING_SETS] {
            copy_down(&samples, &[kind, &folder], &sample_dir.join(kind).join(&folder))?;
        }
    }
    let audit_log = into.join("audit.jsonl");
    collect_audit(&registry, &into.join("audit"), &audit_log)?;
    Ok(Copied {
        registry: Registry::open(&models_dir),
        sources: Sources { sample_dir, audit_logs: vec![audit_log], verify_data },
        problems,
        samples_url,
    })
}

/// Copies the audit records down and writes them, one per line, into `log`.
fn collect_audit(registry: &Remote, dir: &Path, log: &Path) -> Result<(), RegistryError> {
    let names = copy_down(registry, &[AUDIT_RECORDS], dir)?;
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| RegistryError::Io { path, source }
    };
    let mut out = std::fs::File::create(log).map_err(io(log))?;
    let mut paths: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    paths.sort();
    for path in paths {
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        // One record per object; a record that is not one JSON line is skipped by the reader.
        let line: Vec<u8> = bytes.into_iter().filter(|b| *b != b'\n' && *b != b'\r').collect();
        out.write_all(&line).and_then(|()| out.write_all(b"\n")).map_err(io(log))?;
    }
    Ok(())
}
