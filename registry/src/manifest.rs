//! A version's manifest: what the file is (SHA-256) and where it came from (lineage).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// File name of the manifest inside a version folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The training data a version was built from.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataLineage {
    /// Content digest of exactly the rows used.
    pub digest: String,
    pub rows: u64,
    /// Time window of the rows, if the trainer chose one (free text, e.g. RFC 3339 range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Rows drawn from the sample store: the first and last row's serving time and the newest
    /// label time read (µs since the epoch), which re-assemble exactly these rows (`registry
    /// lineage` re-checks `digest` with them). Absent for other data (synthetic, a file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_window_us: Option<SampleWindow>,
}

/// Where in the sample store a version's rows came from (µs since the epoch).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SampleWindow {
    pub first_row: i64,
    pub last_row: i64,
    pub labels_until: i64,
}

/// Lineage and identity of one published version (immutable once published).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub model: String,
    pub version: u64,
    /// Lower-case hex SHA-256 of `model.onnx`.
    pub sha256: String,
    /// RFC 3339 time of publication.
    pub created_at: String,
    #[serde(default)]
    pub parent_version: Option<u64>,
    #[serde(default)]
    pub data: Option<DataLineage>,
    #[serde(default)]
    pub code_revision: Option<String>,
    #[serde(default)]
    pub hyperparameters: Map<String, Value>,
    /// Evaluation results (metric name → value or object).
    #[serde(default)]
    pub evaluation: Map<String, Value>,
    /// The quality gate's verdict and evidence, when a gate ran.
    #[serde(default)]
    pub gate: Option<Value>,
    /// The event that caused this version (e.g. a drift event), when there was one.
    #[serde(default)]
    pub trigger: Option<Value>,
    /// Free-form description.
    #[serde(default)]
    pub description: Option<String>,
}

impl Manifest {
    /// Checks that the manifest describes the version folder it sits in and that its digest is
    /// a digest; the message names the field and value.
    pub fn check_identity(&self, model: &str, version: u64) -> Result<(), String> {
        if self.model != model {
            return Err(format!("model is {:?}, but the file is under model {model:?}", self.model));
        }
        if self.version != version {
            return Err(format!("version is {}, but the file is in version folder {version}", self.version));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(format!("sha256 must be 64 lower-case hex digits, given {:?}", self.sha256));
        }
        Ok(())
    }
}

/// What a publisher says about a new version; the registry fills in the rest.
#[derive(Clone, Debug, Default)]
pub struct ManifestDraft {
    pub parent_version: Option<u64>,
    pub data: Option<DataLineage>,
    pub code_revision: Option<String>,
    pub hyperparameters: Map<String, Value>,
    pub evaluation: Map<String, Value>,
    pub gate: Option<Value>,
    pub trigger: Option<Value>,
    pub description: Option<String>,
}

impl ManifestDraft {
    /// The full manifest for `model` `version` of a file with digest `sha256`.
    pub fn complete(self, model: &str, version: u64, sha256: String) -> Manifest {
        Manifest {
            model: model.to_owned(),
            version,
            sha256,
            created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            parent_version: self.parent_version,
            data: self.data,
            code_revision: self.code_revision,
            hyperparameters: self.hyperparameters,
            evaluation: self.evaluation,
            gate: self.gate,
            trigger: self.trigger,
            description: self.description,
        }
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_a_known_vector() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn manifests_round_trip_and_reject_unknown_fields() {
        let m = ManifestDraft { parent_version: Some(2), ..Default::default() }.complete("m", 3, "ab".into());
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&text).unwrap(), m);
        let mut value: Value = serde_json::from_str(&text).unwrap();
        value["surprise"] = Value::Bool(true);
        assert!(serde_json::from_value::<Manifest>(value).is_err());
    }
}
