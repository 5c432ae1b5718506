//! The `registry` binary, as an operator uses it.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::Command;

mod support;
use support::{sample_files, sample_part, spec};

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

#[test]
fn lineage_reports_the_chain_and_fails_when_the_training_rows_were_changed() {
    use flywheel_registry::dataset::assemble;
    use flywheel_registry::manifest::SampleWindow;
    use flywheel_registry::{DataLineage, ManifestDraft, Registry};
    let dir = tempfile::tempdir().unwrap();
    let (root, samples) = (dir.path().join("models"), dir.path().join("samples"));
    sample_files(&samples, 0.0);
    let spec = spec(&samples);
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

/// Publishes version 1 and, trained on what `samples` holds now, version 2 of model `m` with
/// its data lineage; records its training set when `record` is set.
fn publish_trained(root: &std::path::Path, samples: &std::path::Path, record: bool) {
    use flywheel_registry::dataset::assemble;
    use flywheel_registry::manifest::SampleWindow;
    use flywheel_registry::training_set::TrainingSet;
    use flywheel_registry::{DataLineage, ManifestDraft, Registry};
    let d = assemble(&spec(samples)).unwrap();
    let window = SampleWindow { first_row: d.window_us.0, last_row: d.window_us.1, labels_until: d.labels_until_us };
    let rows = (d.train.y.len() + d.holdout.y.len()) as u64;
    if record {
        let set = TrainingSet {
            model: "m".into(),
            digest: d.digest.clone(),
            rows,
            window_us: window,
            files: d.files.clone(),
            created_at: "2026-09-21T00:00:00Z".into(),
        };
        set.write(samples, None).unwrap();
    }
    let store = Registry::open(root);
    store.publish("m", b"first", ManifestDraft::default()).unwrap();
    let data = DataLineage { digest: d.digest, rows, window: None, sample_window_us: Some(window) };
    store
        .publish("m", b"second", ManifestDraft { parent_version: Some(1), data: Some(data), ..Default::default() })
        .unwrap();
}

#[test]
fn lineage_re_assembles_exactly_the_recorded_files_and_reports_later_uploads_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (root, samples) = (dir.path().join("models"), dir.path().join("samples"));
    sample_files(&samples, 0.0);
    publish_trained(&root, &samples, true);
    let record = std::fs::read_to_string(
        samples.join("training-sets/model=m").read_dir().unwrap().next().unwrap().unwrap().path(),
    )
    .unwrap();
    for file in ["samples/model=m/date=2026-09-21/part-1.parquet", "labels/model=m/date=2026-09-21/part-1.parquet"] {
        assert!(record.contains(file), "{file} in {record}");
    }
    // Read at training but before the first labelled row's date (unlabelled rows of the day
    // before): still found at the re-check, not "missing".
    support::sample_part_on(&samples, "2026-09-20", "part-0.parquet", &["x"], -86_400_000_000, 0.0);
    std::fs::remove_file(samples.join("labels/model=m/date=2026-09-20/part-0.parquet")).unwrap();
    std::fs::remove_dir_all(samples.join("training-sets")).unwrap();
    std::fs::remove_dir_all(&root).unwrap();
    publish_trained(&root, &samples, true);
    let records = samples.join("training-sets/model=m");
    let record = std::fs::read_to_string(records.read_dir().unwrap().next().unwrap().unwrap().path()).unwrap();
    assert!(record.contains("samples/model=m/date=2026-09-20/part-0.parquet"), "{record}");
    // A replica uploads rows served inside the training window, with labels given before the
    // cutoff, after training: not this version's data.
    sample_part(&samples, "part-late.parquet", &["e", "f"], 500, 0.0);
    let (ok, out, err) = registry(&root, &["lineage", "--request-id", "c"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("re-assembled from the 3 files recorded at training hash to the recorded digest"), "{out}");
    assert!(!out.contains("missing"), "{out}");
    assert!(out.contains("1 file(s) not read at training hold 2 row(s) served in the window"), "{out}");
    assert!(out.contains("samples/model=m/date=2026-09-21/part-late.parquet"), "{out}");
    let (_, out, _) = registry(&root, &["lineage", "--request-id", "c", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let check = &json["versions"][0]["data_check"];
    assert!(check["verified"] == true && check["method"] == "files", "{check}");
    assert_eq!(check["later_files"][0][1], 2, "{check}");

    // Without the record, the window alone cannot tell the late rows from the trained ones.
    std::fs::remove_dir_all(samples.join("training-sets")).unwrap();
    let (ok, out, _) = registry(&root, &["lineage", "--request-id", "c"]);
    assert!(!ok && out.contains("MISMATCH") && out.contains("no training-set record"), "{out}");

    // A recorded file changed since training: named, and the check fails.
    let dir = tempfile::tempdir().unwrap();
    let (root, samples) = (dir.path().join("models"), dir.path().join("samples"));
    sample_files(&samples, 0.0);
    publish_trained(&root, &samples, true);
    sample_files(&samples, 0.5);
    let (ok, out, err) = registry(&root, &["lineage", "--request-id", "c"]);
    assert!(!ok && out.contains("MISMATCH: the 2 files recorded at training"), "{out}{err}");
    assert!(out.contains("samples/model=m/date=2026-09-21/part-1.parquet changed since training"), "{out}");
    assert!(!out.contains("labels/model=m/date=2026-09-21/part-1.parquet changed"), "only the sample file: {out}");
}

#[test]
fn labels_read_from_a_journal_object_since_folded_into_a_label_file_still_re_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (root, samples) = (dir.path().join("models"), dir.path().join("samples"));
    sample_files(&samples, 0.0);
    // Rows e and f were labelled through a replica's journal; their label file is not up yet.
    sample_part(&samples, "part-2.parquet", &["e", "f"], 5000, 0.0);
    let label_file = samples.join("labels/model=m/date=2026-09-21/part-2.parquet");
    let held = dir.path().join("part-2.labels");
    std::fs::rename(&label_file, &held).unwrap();
    let journal = samples.join("label-journal/model=m/1790000000005-r1-1.jsonl");
    std::fs::create_dir_all(journal.parent().unwrap()).unwrap();
    let t = support::T0 + 5000;
    let lines = format!(
        "{{\"id\":\"e\",\"row\":0,\"label\":1.0,\"time_us\":{}}}\n{{\"id\":\"f\",\"row\":0,\"label\":0.0,\"time_us\":{}}}\n",
        t + 10,
        t + 1010
    );
    std::fs::write(&journal, lines).unwrap();
    publish_trained(&root, &samples, true);
    // The label file is uploaded and the journal object deleted, as a replica does.
    std::fs::rename(&held, &label_file).unwrap();
    std::fs::remove_file(&journal).unwrap();
    let (ok, out, err) = registry(&root, &["lineage", "--request-id", "e"]);
    assert!(ok && out.contains("hash to the recorded digest"), "{out}{err}");
    assert!(out.contains("1 label-journal object(s) read at training are gone"), "{out}");
    // Trained on 6 rows: without e and f's labels the digest would not match.
    let (_, out, _) = registry(&root, &["lineage", "--request-id", "e", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["versions"][0]["data_check"]["recomputed_rows"], 6, "{json}");
}
