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
