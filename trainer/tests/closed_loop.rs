//! The closed loop end to end: the real `trainer demo` starts the real gateway and
//! `trainer watch`, drives synthetic traffic with delayed labels and injects drift. With clean
//! labels a retrained version must be registered with lineage and promoted, and live quality
//! must recover to within the demo's margin of a model trained offline on post-drift rows; with
//! labels that are noise after the drift the gate must reject and nothing may be promoted.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

use flywheel_registry::Registry;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Builds the gateway binary of this profile (cargo builds only this package's binaries for its
/// tests) and returns its path.
fn gateway() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .current_dir(root())
        .args(["build", "--quiet", "-p", "flywheel-gateway", "--bin", "gateway"])
        .status()
        .unwrap();
    assert!(status.success(), "building the gateway");
    let trainer = PathBuf::from(env!("CARGO_BIN_EXE_trainer"));
    trainer.parent().unwrap().join("gateway")
}

/// The demos run one at a time: each is timed traffic on a two-core machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs a short demo in a fresh folder; returns the folder, the exit code and the summary.
fn demo(extra: &[&str]) -> (tempfile::TempDir, i32, Value) {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let output = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .current_dir(root())
        .args(["demo", "--dir"])
        .arg(&demo_dir)
        .arg("--gateway")
        .arg(gateway())
        .args(["--rate", "200", "--before-s", "10", "--after-s", "6", "--max-s", "150", "--bootstrap-rows", "8000"])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    let summary: Value = std::fs::read(demo_dir.join("summary.json"))
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap_or_else(|e| panic!("no summary.json ({e}); demo output:\n{stdout}"));
    (dir, output.status.code().unwrap_or(-1), summary)
}

#[test]
fn drift_is_detected_retrained_gated_registered_and_promoted_and_quality_recovers() {
    let (dir, code, summary) = demo(&[]);
    assert_eq!(code, 0, "{summary:#}");
    assert_eq!(summary["failed_requests"], 0, "no request failed through the swaps");
    let marks = &summary["milestones"];
    for mark in ["drift_detected", "registered", "first_canary_step", "promoted"] {
        assert!(marks[mark].is_number(), "{mark} happened: {marks:#}");
    }
    assert_eq!(summary["recovered"], true, "live AUC after promotion within the margin: {summary:#}");
    let after = summary["phases"][3]["quality"]["auc"].as_f64().unwrap();
    let stale = summary["phases"][1]["quality"]["auc"].as_f64().unwrap();
    assert!(after > stale, "the promoted model serves drifted traffic better ({after:.3} vs {stale:.3})");

    let registry = Registry::open(dir.path().join("demo/models"));
    let champion = registry.resolve("fraud", "champion").unwrap();
    assert!(champion >= 2, "champion moved to a retrained version");
    assert!(registry.resolve("fraud", "challenger").is_err(), "the candidate alias is gone after promotion");
    let manifest = registry.version("fraud", champion).unwrap().manifest.unwrap().unwrap();
    assert_eq!(manifest.parent_version, Some(1));
    assert!(manifest.data.unwrap().rows >= 1000);
    assert_eq!(manifest.gate.unwrap()["verdict"]["passed"], true);
    let trigger = manifest.trigger.unwrap();
    assert_eq!(trigger["drift_event"]["model"], "fraud", "lineage names the drift event: {trigger:#}");
    let audit = std::fs::read_to_string(dir.path().join("demo/models/audit.jsonl")).unwrap();
    assert!(audit.lines().any(|l| l.contains("\"promote\"")), "{audit}");
}

#[test]
fn when_labels_turn_to_noise_the_gate_rejects_and_nothing_is_promoted() {
    let (dir, code, summary) = demo(&["--label-noise", "1.0", "--expect", "rejected"]);
    assert_eq!(code, 0, "{summary:#}");
    assert!(summary["milestones"]["rejected"].is_number());
    assert!(summary["milestones"]["promoted"].is_null());
    assert_eq!(summary["run"]["outcome"], "rejected");
    let registry = Registry::open(dir.path().join("demo/models"));
    assert_eq!(registry.resolve("fraud", "champion").unwrap(), 1);
    assert_eq!(registry.versions("fraud").unwrap().0.len(), 1, "a rejected candidate is never registered");
}
