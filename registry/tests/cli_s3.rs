//! The `registry` binary against an S3-compatible server (moto), as an operator uses it.
#![allow(clippy::unwrap_used, dead_code)] // test code; the shared S3 helper has more than this uses

#[path = "../../tests/e2e/s3.rs"]
mod s3;
mod support;

use std::process::Command;

fn registry(s3: &s3::S3, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_registry"))
        .args(["--root", "s3://flywheel/ops"])
        .args(args)
        .envs(s3.env())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn publish_list_show_and_alias_in_object_storage() {
    let s3 = s3::S3::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.onnx");
    std::fs::write(&file, b"model bytes").unwrap();
    let file = file.to_str().unwrap();
    let (ok, out, err) = registry(&s3, &["publish", "fraud", file, "--alias", "challenger"]);
    assert!(ok && out.starts_with("published fraud version 1"), "{out}{err}");
    // A half upload holds number 2: the next publish takes 3, and nothing lists 2.
    s3.put_raw("ops/fraud/2/model.onnx", b"partial");
    let (ok, out, _) = registry(&s3, &["publish", "fraud", file, "--parent", "1"]);
    assert!(ok && out.starts_with("published fraud version 3"), "{out}");
    let (ok, out, _) = registry(&s3, &["alias", "set", "fraud", "champion", "latest"]);
    assert!(ok && out.contains("champion -> 3"), "{out}");
    let (ok, out, err) = registry(&s3, &["list", "fraud"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(ok && lines.len() == 2, "{out}{err}");
    assert!(lines[0].starts_with("1\t") && lines[0].ends_with("challenger"), "{out}");
    assert!(lines[1].starts_with("3\t") && lines[1].ends_with("champion"), "{out}");
    let (ok, out, _) = registry(&s3, &["show", "fraud", "champion"]);
    let manifest: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(ok && manifest["version"] == 3 && manifest["parent_version"] == 1, "{out}");
    let (ok, _, err) = registry(&s3, &["alias", "set", "fraud", "champion", "2"]);
    assert!(!ok && err.contains("no version 2"), "{err}");
    let (ok, out, _) = registry(&s3, &["alias", "rm", "fraud", "challenger"]);
    assert!(ok && out.contains("removed challenger"), "{out}");
    let (ok, _, err) = registry(&s3, &["alias", "rm", "fraud", "challenger"]);
    assert!(!ok && err.contains("no alias 'challenger'"), "{err}");
}

#[test]
fn signed_publish_and_verify_in_object_storage() {
    let s3 = s3::S3::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.onnx");
    std::fs::write(&file, b"model bytes").unwrap();
    let file = file.to_str().unwrap();
    let (ok, _, err) = registry(&s3, &["keygen", dir.path().join("k").to_str().unwrap()]);
    assert!(ok, "{err}");
    let (private, public) = (dir.path().join("k.pem"), dir.path().join("k.pub.pem"));
    let (private, public) = (private.to_str().unwrap(), public.to_str().unwrap());
    let (ok, _, err) = registry(&s3, &["--signing-key", private, "publish", "fraud", file]);
    assert!(ok, "{err}");
    let (ok, out, err) = registry(&s3, &["verify", "fraud", "1", "--trusted-key", public]);
    assert!(ok && out.contains("signed by key"), "{out}{err}");
    let (ok, _, _) = registry(&s3, &["publish", "fraud", file]);
    assert!(ok);
    let (ok, _, err) = registry(&s3, &["verify", "fraud", "2", "--trusted-key", public]);
    assert!(!ok && err.contains("is not signed"), "{err}");
    let (ok, _, err) = registry(&s3, &["sign", "fraud", "2", "--signing-key", private]);
    assert!(ok, "{err}");
    let (ok, _, err) = registry(&s3, &["sign", "fraud", "2", "--signing-key", private]);
    assert!(!ok && err.contains("already signed"), "{err}");
    let (ok, _, err) = registry(&s3, &["verify", "fraud", "2", "--trusted-key", public]);
    assert!(ok, "{err}");
}

/// Puts every file under `dir` to `prefix/<its path below dir>` in the store, replacing what
/// is there (a signed put: moto refuses to replace an object by an anonymous one).
fn upload(s3: &s3::S3, dir: &std::path::Path, prefix: &str) {
    use object_store::ObjectStore;
    let store = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(s3::BUCKET)
        .with_endpoint(&s3.endpoint)
        .with_allow_http(true)
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_region("us-east-1")
        .build()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let key = format!("{prefix}/{}", path.strip_prefix(dir).unwrap().to_str().unwrap());
                let bytes = std::fs::read(&path).unwrap();
                let key = object_store::path::Path::from(key);
                runtime.block_on(store.put_opts(&key, bytes.into(), Default::default())).unwrap();
            }
        }
    }
}

#[test]
fn lineage_over_object_storage_reads_the_fleets_samples_training_set_and_audit_records() {
    use flywheel_registry::dataset::assemble;
    use flywheel_registry::manifest::SampleWindow;
    use flywheel_registry::training_set::TrainingSet;
    use flywheel_registry::{DataLineage, ManifestDraft, Registry};
    let s3 = s3::S3::start();
    let dir = tempfile::tempdir().unwrap();
    // A trainer's copy of the fleet's sample store, trained on and recorded in the store.
    let samples = dir.path().join("copy");
    support::sample_files(&samples, 0.0);
    let d = assemble(&support::spec(&samples)).unwrap();
    let window = SampleWindow { first_row: d.window_us.0, last_row: d.window_us.1, labels_until: d.labels_until_us };
    let set = TrainingSet {
        model: "m".into(),
        digest: d.digest.clone(),
        rows: 4,
        window_us: window,
        files: d.files.clone(),
        created_at: "2026-09-21T00:00:00Z".into(),
    };
    set.write(&samples, Some(&s3.remote("ops/.data"))).unwrap();
    std::fs::remove_dir_all(samples.join("training-sets")).unwrap();
    upload(&s3, &samples, "ops/.data");
    let store = Registry::mirrored(dir.path().join("models"), s3.remote("ops"));
    store.publish("m", b"first", ManifestDraft::default()).unwrap();
    let data = DataLineage { digest: d.digest.clone(), rows: 4, window: None, sample_window_us: Some(window) };
    store
        .publish("m", b"second", ManifestDraft { parent_version: Some(1), data: Some(data), ..Default::default() })
        .unwrap();
    let promote = r#"{"time":"2026-09-22T10:05:01.000Z","model":"m","actor":"controller","action":"promote",
        "from":1,"to":2,"reason":"approved by bob","evidence":null,"credential":"bob","replica":"r2"}"#;
    s3.put_raw("ops/.audit/1790000000000-r2-1.json", promote.as_bytes());
    let other = r#"{"time":"2026-09-22T10:05:02.000Z","model":"other","actor":"controller","action":"promote","from":1,"to":2}"#;
    s3.put_raw("ops/.audit/1790000000001-r2-2.json", other.as_bytes());
    // Another replica uploads rows of the training window after training.
    let late = dir.path().join("late");
    support::sample_part(&late, "part-r3.parquet", &["e", "f"], 500, 0.0);
    upload(&s3, &late, "ops/.data");

    let (ok, out, err) = registry(&s3, &["lineage", "--request-id", "c"]);
    assert!(ok, "{out}{err}");
    for needle in [
        "by version 2 on the champion arm",
        "re-assembled from the 2 files recorded at training hash to the recorded digest",
        "1 file(s) not read at training hold 2 row(s) served in the window",
        "promote by controller (bob): approved by bob",
        "parent: none (the first version)",
    ] {
        assert!(out.contains(needle), "{needle:?} in:\n{out}");
    }
    // Under version 2 (promoted to) and version 1 (promoted from); the other model's not at all.
    assert!(!out.contains("model other") && out.matches("promote by").count() == 2, "{out}");
    let file = "file: s3://flywheel/ops/.data/samples/model=m/date=2026-09-21/part-1.parquet";
    assert!(out.contains(file), "rows named by their key in the store, not the temporary copy: {out}");

    // A recorded sample file changed in the store: named, exit status 1.
    let changed = dir.path().join("changed");
    support::sample_files(&changed, 0.5);
    upload(&s3, &changed, "ops/.data");
    let (ok, out, err) = registry(&s3, &["lineage", "--request-id", "c"]);
    assert!(!ok && err.contains("version(s) 2 did not re-verify"), "{out}{err}");
    assert!(out.contains("samples/model=m/date=2026-09-21/part-1.parquet changed since training"), "{out}");
}
