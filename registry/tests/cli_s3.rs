//! The `registry` binary against an S3-compatible server (moto), as an operator uses it.
#![allow(clippy::unwrap_used, dead_code)] // test code; the shared S3 helper has more than this uses

#[path = "../../tests/e2e/s3.rs"]
mod s3;

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
