//! A training set's record: exactly which sample-store files a version's rows were read from
//! (path, size, SHA-256). It lives in the sample store beside the rows, under
//! `training-sets/model=<m>/<data digest>.json`, and is found from the digest in the version's
//! (signed) manifest. Lineage re-assembles the rows from exactly these files, so rows a replica
//! uploaded after training are reported apart instead of failing the re-check, and a changed or
//! missing file is named. The record needs no signature of its own: it only says where to
//! look, and the rows found there must still hash to the manifest's digest.

use std::path::{Path, PathBuf};

use object_store::PutMode;
use serde::{Deserialize, Serialize};

use crate::manifest::SampleWindow;
use crate::remote::{Remote, Written};
use crate::store::RegistryError;

/// Folder of training-set records under the sample folder (and the fleet's sample store).
pub const TRAINING_SETS: &str = "training-sets";

/// One file a training set read. (No `deny_unknown_fields` here or below: a record a newer
/// trainer wrote, with more fields, still names its files to an older reader.)
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct DataFile {
    /// Relative to the sample folder (`samples/model=m/date=.../part-*.parquet`, `labels/...`,
    /// `label-journal/...`): the same key in the fleet's sample store.
    pub path: String,
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the file as read.
    pub sha256: String,
}

/// Exactly what one dataset was assembled from.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct TrainingSet {
    pub model: String,
    /// The dataset's digest (the manifest's `data.digest`).
    pub digest: String,
    pub rows: u64,
    pub window_us: SampleWindow,
    /// Every sample, label and label-journal file read, sorted by path.
    pub files: Vec<DataFile>,
    /// RFC 3339 time the record was written.
    pub created_at: String,
}

impl TrainingSet {
    /// The record's key below the sample folder: `training-sets/model=<m>/<digest>.json`.
    pub fn parts(model: &str, digest: &str) -> [String; 3] {
        [TRAINING_SETS.to_owned(), format!("{}={model}", crate::samples::MODEL), format!("{digest}.json")]
    }

    /// Where the record of `digest` sits under `sample_dir`.
    pub fn path(sample_dir: &Path, model: &str, digest: &str) -> PathBuf {
        Self::parts(model, digest).iter().fold(sample_dir.to_path_buf(), |p, part| p.join(part))
    }

    /// Writes the record under `sample_dir` (atomically) and, for a fleet, to the sample store
    /// `remote` (create-only: a record of the same digest names the same rows).
    pub fn write(&self, sample_dir: &Path, remote: Option<&Remote>) -> Result<(), RegistryError> {
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        if let Some(remote) = remote {
            let parts = Self::parts(&self.model, &self.digest);
            let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
            if let Written::Lost = remote.write(&parts, bytes.clone(), PutMode::Create)? {
                // The same rows were recorded before (a rerun on unchanged data): the store keeps
                // the first record, which lineage over the store reads.
                tracing::info!(digest = %self.digest, "training set already recorded in the sample store");
            }
        }
        let path = Self::path(sample_dir, &self.model, &self.digest);
        let io = |source| RegistryError::Io { path: path.display().to_string(), source };
        std::fs::create_dir_all(path.parent().unwrap_or(sample_dir)).map_err(io)?;
        crate::fsutil::write_atomic(&path, &bytes).map_err(io)
    }

    /// The record of `digest` under `sample_dir`: `None` when there is none (a version trained
    /// before records were kept); an error names the file and what is wrong with it.
    pub fn read(sample_dir: &Path, model: &str, digest: &str) -> Result<Option<Self>, String> {
        let path = Self::path(sample_dir, model, digest);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Self>(&bytes)
                .map_err(|e| format!("{}: {e}", path.display()))
                .and_then(|set| match set.digest == digest && set.model == model {
                    true => Ok(Some(set)),
                    false => Err(format!(
                        "{}: records model {:?} digest {}, not {model:?} {digest}",
                        path.display(),
                        set.model,
                        set.digest
                    )),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }
}
