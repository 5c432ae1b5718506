//! The `registry` binary, as an operator uses it.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::Command;

fn registry(root: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_registry")).arg("--root").arg(root).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn publish_list_show_alias_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.onnx");
    std::fs::write(&file, b"model bytes").unwrap();
    let root = dir.path().join("reg");
    let file = file.to_str().unwrap();
    let (ok, out, _) = registry(&root, &["publish", "fraud", file, "--alias", "challenger"]);
    assert!(ok && out.starts_with("published fraud version 1"), "{out}");
    let (ok, _, _) = registry(&root, &["publish", "fraud", file, "--parent", "1"]);
    assert!(ok);
    let (ok, out, _) = registry(&root, &["alias", "set", "fraud", "champion", "latest"]);
    assert!(ok && out.contains("champion -> 2"), "{out}");
    let (_, out, _) = registry(&root, &["list", "fraud"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("1\t") && lines[0].ends_with("challenger"), "{out}");
    assert!(lines[1].ends_with("champion"), "{out}");
    let (ok, out, _) = registry(&root, &["show", "fraud", "champion"]);
    let manifest: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(ok && manifest["parent_version"] == 1 && manifest["version"] == 2);
    let (ok, _, err) = registry(&root, &["alias", "rm", "fraud", "nope"]);
    assert!(!ok && err.contains("has no alias 'nope'"), "{err}");
    let (ok, _, err) = registry(&root, &["show", "fraud", "7"]);
    assert!(!ok && err.contains("no version 7"), "{err}");
}

#[test]
fn keygen_publish_signed_sign_later_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.onnx");
    std::fs::write(&file, b"model bytes").unwrap();
    let (root, file) = (dir.path().join("reg"), file.to_str().unwrap());
    let prefix = dir.path().join("release");
    let (ok, out, err) = registry(&root, &["keygen", prefix.to_str().unwrap()]);
    assert!(ok && out.starts_with("key "), "{out}{err}");
    let (private, public) = (dir.path().join("release.pem"), dir.path().join("release.pub.pem"));
    let (private, public) = (private.to_str().unwrap(), public.to_str().unwrap());
    let (ok, _, _) = registry(&root, &["--signing-key", private, "publish", "fraud", file]);
    assert!(ok);
    let (ok, _, _) = registry(&root, &["publish", "fraud", file]);
    assert!(ok);
    let (ok, out, _) = registry(&root, &["verify", "fraud", "1", "--trusted-key", public]);
    assert!(ok && out.contains("signed by key"), "{out}");
    let (ok, _, err) = registry(&root, &["verify", "fraud", "2", "--trusted-key", public]);
    assert!(!ok && err.contains("is not signed"), "{err}");
    let (ok, _, err) = registry(&root, &["sign", "fraud", "2"]);
    assert!(!ok && err.contains("--signing-key"), "{err}");
    let (ok, _, _) = registry(&root, &["sign", "fraud", "2", "--signing-key", private]);
    assert!(ok);
    let (ok, _, _) = registry(&root, &["verify", "fraud", "2", "--trusted-key", public]);
    assert!(ok);
    // A manifest edited after signing fails loudly.
    let manifest = root.join("fraud/2/manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap().replace("\"version\": 2", "\"version\": 2 ");
    std::fs::write(&manifest, text).unwrap();
    let (ok, _, err) = registry(&root, &["verify", "fraud", "2", "--trusted-key", public]);
    assert!(!ok && err.contains("does not match manifest.json"), "{err}");
}

/// Writes a sample file (4 rows of model `m`, two features; `shift` changes one value) and
/// a label file for it under `dir`.
fn sample_files(dir: &std::path::Path, shift: f32) {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Float32Array, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
    use arrow_array::{UInt32Array, UInt64Array};
    use arrow_schema::{DataType, Field, Schema, TimeUnit};
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let write = |path: std::path::PathBuf, fields: Vec<Field>, columns: Vec<ArrayRef>| {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        let file = std::fs::File::create(path).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    };
    let t0 = 1_790_000_000_000_000i64;
    let times: Vec<i64> = (0..4).map(|i| t0 + i * 1000).collect();
    let ids = vec!["a", "b", "c", "d"];
    write(
        dir.join("samples/model=m/date=2026-09-21/part-1.parquet"),
        vec![
            Field::new("request_id", DataType::Utf8, false),
            Field::new("row", DataType::UInt32, false),
            Field::new("time", ts.clone(), false),
            Field::new("version", DataType::UInt64, false),
            Field::new("arm", DataType::Utf8, false),
            Field::new("in_x_0", DataType::Float32, true),
            Field::new("in_x_1", DataType::Float32, true),
        ],
        vec![
            Arc::new(StringArray::from(ids.clone())),
            Arc::new(UInt32Array::from(vec![0u32; 4])),
            Arc::new(TimestampMicrosecondArray::from(times.clone()).with_timezone("UTC")),
            Arc::new(UInt64Array::from(vec![2u64; 4])),
            Arc::new(StringArray::from(vec!["champion"; 4])),
            Arc::new(Float32Array::from(vec![0.1, 0.2, 0.3 + shift, 0.4])),
            Arc::new(Float32Array::from(vec![1.0, 0.0, 1.0, 0.0])),
        ],
    );
    write(
        dir.join("labels/model=m/date=2026-09-21/part-1.parquet"),
        vec![
            Field::new("request_id", DataType::Utf8, false),
            Field::new("row", DataType::UInt32, false),
            Field::new("label", DataType::Float64, false),
            Field::new("time", ts, false),
        ],
        vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(UInt32Array::from(vec![0u32; 4])),
            Arc::new(Float64Array::from(vec![1.0, 0.0, 1.0, 0.0])),
            Arc::new(
                TimestampMicrosecondArray::from(times.iter().map(|t| t + 10).collect::<Vec<_>>()).with_timezone("UTC"),
            ),
        ],
    );
}

#[test]
fn lineage_reports_the_chain_and_fails_when_the_training_rows_were_changed() {
    use flywheel_registry::dataset::{AssembleSpec, assemble};
    use flywheel_registry::manifest::SampleWindow;
    use flywheel_registry::{DataLineage, ManifestDraft, Registry};
    let dir = tempfile::tempdir().unwrap();
    let (root, samples) = (dir.path().join("models"), dir.path().join("samples"));
    sample_files(&samples, 0.0);
    let spec = AssembleSpec {
        sample_dir: samples.clone(),
        model: "m".into(),
        since_us: None,
        until_us: None,
        labels_until_us: None,
        holdout_fraction: 0.25,
        min_rows: 4,
        max_nan_rate: 0.0,
        min_per_class: 1,
    };
    let d = assemble(&spec).unwrap();
    let store = Registry::open(&root);
    store.publish("m", b"first", ManifestDraft::default()).unwrap();
    let data = DataLineage {
        digest: d.digest.clone(),
        rows: 4,
        window: None,
        sample_window_us: Some(SampleWindow {
            first_row: d.window_us.0,
            last_row: d.window_us.1,
            labels_until: d.labels_until_us,
        }),
    };
    let draft = ManifestDraft { parent_version: Some(1), data: Some(data), ..Default::default() };
    store.publish("m", b"second", draft).unwrap();
    let (ok, out, err) = registry(&root, &["lineage", "--request-id", "c"]);
    assert!(ok, "{out}{err}");
    for needle in [
        "Request c (model m)",
        "by version 2 on the champion arm",
        "hash to the recorded digest",
        "parent: version 1",
        "parent: none",
    ] {
        assert!(out.contains(needle), "{needle:?} in:\n{out}");
    }
    let (ok, out, _) = registry(&root, &["lineage", "--request-id", "c", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(ok && json["versions"][0]["data_check"]["verified"] == true, "{json}");
    sample_files(&samples, 0.5);
    let (ok, out, err) = registry(&root, &["lineage", "--request-id", "c"]);
    assert!(!ok && out.contains("MISMATCH") && err.contains("version(s) 2 did not re-verify"), "{out}{err}");
    let (ok, _, err) = registry(&root, &["lineage", "--request-id", "zz"]);
    assert!(!ok && err.contains("\"zz\" is in no sample file"), "{err}");
}
