//! Entry points of the fuzz targets (`gateway/fuzz`, run by `scripts/fuzz.sh`) and of their
//! corpus replay in `cargo test`: each takes arbitrary bytes and must never panic or allocate
//! without bound, whatever the bytes hold. Inputs that decode go on through what follows them
//! in the gateway (the signature check after a request, validation after a config, the drift
//! statistics after a profile), because that is where a bad value did its damage before.

use std::sync::OnceLock;

use crate::config::Config;
use crate::model::signature::CheckInputs;
use crate::model::{Signature, TensorSpec};
use crate::protocol::{DataType, decode_request};

/// An inference request body: first byte 0 means a binary-tensor request whose JSON header
/// length is the next two bytes (little-endian); anything else, a JSON-only body.
pub fn request(data: &[u8]) {
    let (header_length, body) = match data {
        [0, a, b, rest @ ..] => (Some(usize::from(u16::from_le_bytes([*a, *b]))), rest),
        [_, rest @ ..] => (None, rest),
        [] => return,
    };
    if let Ok(request) = decode_request(body, header_length) {
        let _ = signature().check(request.inputs, 64);
    }
}

/// A gateway config file, parsed and validated.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = Config::parse(text) {
        let _ = config.validate();
        let _ = crate::rollout::restart_keys::restart_only_changes(&Config::default(), &config);
    }
}

/// A registry file: first byte picks manifest (0), profile (1) or aliases (anything else).
pub fn registry_file(data: &[u8]) {
    let Some((kind, bytes)) = data.split_first() else { return };
    match kind {
        0 => {
            let _ = flywheel_registry::parse_manifest(bytes, "m", 1);
        }
        1 => {
            if let Ok(profile) = flywheel_registry::parse_profile(bytes) {
                // What the drift monitor does with a profile it accepted.
                let values: Vec<f64> = bytes.iter().map(|b| f64::from(*b) - 128.0).collect();
                for f in profile.features.iter().chain(&profile.prediction) {
                    let _ = crate::drift::stats::psi(&f.edges, &f.proportions, &values);
                    let mut sorted = values.clone();
                    sorted.sort_by(f64::total_cmp);
                    let _ = crate::drift::stats::ks_statistic(&sorted, &f.sample);
                }
            }
        }
        _ => {
            let _ = flywheel_registry::parse_aliases(bytes);
        }
    }
}

/// The signature requests are checked against: the demo's tiny model and a BYTES input.
fn signature() -> &'static Signature {
    static SIGNATURE: OnceLock<Signature> = OnceLock::new();
    SIGNATURE.get_or_init(|| {
        let spec =
            |name: &str, datatype, shape: &[i64]| TensorSpec { name: name.into(), datatype, shape: shape.to_vec() };
        Signature::new(
            vec![spec("input", DataType::Fp32, &[-1, 16]), spec("text", DataType::Bytes, &[-1, 1])],
            vec![spec("output", DataType::Fp32, &[-1, 1])],
        )
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every file of the committed corpus and of the regressions (inputs that once crashed, kept
    /// after the fix) goes through its target: the CI half of the fuzzing.
    #[test]
    fn the_fuzz_corpus_and_past_crashes_replay_without_a_panic() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        type Target = (&'static str, fn(&[u8]));
        let targets: [Target; 3] =
            [("request", super::request), ("config", super::config), ("registry_file", super::registry_file)];
        let mut replayed = 0;
        for (name, target) in targets {
            for folder in ["corpus", "regressions"] {
                let dir = root.join(folder).join(name);
                for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    target(&std::fs::read(entry.path()).unwrap());
                    replayed += 1;
                }
            }
        }
        assert!(replayed >= 9, "the corpus is there ({replayed} files)");
    }

    /// The ONNX target's seeds are our own models (no binary is committed): every prefix of one,
    /// and past crashes, go through the reader.
    #[test]
    fn every_prefix_of_a_model_file_reads_without_a_panic() {
        let bytes = flywheel_onnx::fixtures::tiny(1).to_onnx(1);
        for cut in 0..bytes.len() {
            let _ = flywheel_onnx::Mlp::from_onnx(&bytes[..cut]);
        }
        assert!(flywheel_onnx::Mlp::from_onnx(&bytes).is_ok());
        let regressions = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/onnx");
        for entry in std::fs::read_dir(regressions).into_iter().flatten().flatten() {
            let _ = flywheel_onnx::Mlp::from_onnx(&std::fs::read(entry.path()).unwrap());
        }
    }
}
