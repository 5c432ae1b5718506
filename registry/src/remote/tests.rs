//! The registry on an object store, against `object_store`'s in-memory store (the end-to-end
//! tests run the same code against an S3-compatible server).

use object_store::PutMode;

use super::*;
use crate::{AliasChange, ManifestDraft, RegistryError, RolloutState, StepState};

fn remote(name: &str) -> Arc<Remote> {
    Remote::shared(&format!("memory://{name}/registry")).unwrap()
}

fn mirror(remote: &Arc<Remote>) -> (tempfile::TempDir, Mirror) {
    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::new(Arc::clone(remote), dir.path().join("copy"), 1 << 20);
    (dir, mirror)
}

#[test]
fn a_publish_reaches_another_copy_whole_and_a_second_sync_changes_nothing() {
    let remote = remote("publish");
    let (_a, writer) = mirror(&remote);
    let (_b, reader) = mirror(&remote);
    let registry = writer.registry();
    let manifest = registry.publish("m", b"onnx-1", ManifestDraft::default()).unwrap();
    assert_eq!(manifest.version, 1);
    registry.set_alias("m", "champion", 1).unwrap();
    // The writer reads its own write at once.
    assert_eq!(registry.resolve("m", "champion").unwrap(), 1);

    let report = reader.sync().unwrap();
    assert_eq!(report.installed, [("m".to_owned(), 1)]);
    assert_eq!(report.replaced, [("m".to_owned(), "aliases.json".to_owned())]);
    let copy = reader.registry();
    let entry = copy.version("m", 1).unwrap();
    assert_eq!(copy.verify(&entry).unwrap().bytes, b"onnx-1");
    assert_eq!(copy.resolve("m", "champion").unwrap(), 1);
    let again = reader.sync().unwrap();
    assert!(!again.changed(), "{again:?}");
}

#[test]
fn a_version_without_its_manifest_is_never_copied_and_its_number_is_skipped() {
    let remote = remote("half");
    remote.write(&["m", "1", "model.onnx"], b"half-uploaded".to_vec(), PutMode::Create).unwrap();
    let (_b, reader) = mirror(&remote);
    let report = reader.sync().unwrap();
    assert!(report.installed.is_empty(), "{report:?}");
    assert!(reader.registry().versions("m").map(|(v, _)| v.is_empty()).unwrap_or(true));
    let (_a, writer) = mirror(&remote);
    assert_eq!(writer.registry().publish("m", b"whole", ManifestDraft::default()).unwrap().version, 2);
    assert_eq!(reader.sync().unwrap().installed, [("m".to_owned(), 2)]);
    assert!(reader.registry().version("m", 1).is_err());
}

#[test]
fn a_model_file_that_does_not_match_its_manifest_is_refused_once_and_never_installed() {
    let remote = remote("corrupt");
    let (_a, writer) = mirror(&remote);
    writer.registry().publish("m", b"good", ManifestDraft::default()).unwrap();
    remote.write(&["m", "1", "model.onnx"], b"tampered".to_vec(), PutMode::Overwrite).unwrap();
    let (_b, reader) = mirror(&remote);
    let report = reader.sync().unwrap();
    assert!(report.installed.is_empty());
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert!(report.refused[0].contains("memory://corrupt/registry/m/1/model.onnx"), "{}", report.refused[0]);
    assert!(reader.sync().unwrap().refused.is_empty(), "refused versions are not fetched again");
}

#[test]
fn two_copies_racing_on_an_alias_one_wins_and_the_other_names_the_conflict() {
    let remote = remote("race");
    let (_a, a) = mirror(&remote);
    let (_b, b) = mirror(&remote);
    for _ in 0..3 {
        a.registry().publish("m", b"x", ManifestDraft::default()).unwrap();
    }
    a.registry().set_alias("m", "champion", 1).unwrap();
    b.sync().unwrap();
    a.registry().change_aliases("m", &[AliasChange::swap("champion", Some(1), Some(2))]).unwrap();
    // b's copy still says 1, but the compare-and-set is against the store.
    assert_eq!(b.registry().resolve("m", "champion").unwrap(), 1);
    let err = b.registry().change_aliases("m", &[AliasChange::swap("champion", Some(1), Some(3))]).unwrap_err();
    assert!(matches!(err, RegistryError::AliasConflict { found: Some(2), .. }), "{err}");
    assert!(matches!(b.registry().set_alias("m", "champion", 9), Err(RegistryError::NoVersion { version: 9, .. })));
    b.sync().unwrap();
    assert_eq!(b.registry().resolve("m", "champion").unwrap(), 2);
}

#[test]
fn rollout_state_written_by_one_copy_is_read_by_another_and_a_bad_one_keeps_the_old() {
    let remote = remote("state");
    let (_a, a) = mirror(&remote);
    let (_b, b) = mirror(&remote);
    a.registry().publish("m", b"x", ManifestDraft::default()).unwrap();
    let state = RolloutState {
        step: Some(StepState {
            candidate: 1,
            step: 2,
            weight: 50,
            started_ms: 1,
            passed: vec![],
            ..Default::default()
        }),
        ..Default::default()
    };
    a.registry().write_rollout_state("m", &state).unwrap();
    b.sync().unwrap();
    assert_eq!(b.registry().rollout_state("m").unwrap(), state);
    remote.write(&["m", "rollout-state.json"], b"{\"step\": 1".to_vec(), PutMode::Overwrite).unwrap();
    let report = b.sync().unwrap();
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert_eq!(b.registry().rollout_state("m").unwrap(), state);
}

#[test]
fn locations_tell_stores_from_folders_and_bad_urls_name_themselves() {
    assert!(is_remote("s3://bucket/prefix"));
    assert!(!is_remote("var/models"));
    assert!(!is_remote("file:///var/models"));
    let err = Remote::shared("ftp://host/x").unwrap_err().to_string();
    assert!(err.contains("ftp://host/x") && err.contains("not supported"), "{err}");
    let err = Remote::shared("s3:///x").unwrap_err().to_string();
    assert!(err.contains("no bucket"), "{err}");
}

#[test]
fn the_fleets_drift_events_join_the_local_log_once_in_id_order_numbered_on() {
    let remote = remote("events");
    let (_b, reader) = mirror(&remote);
    let event = |id: &str, replica: &str| crate::DriftEvent {
        seq: 99,
        id: Some(id.to_owned()),
        replica: Some(replica.to_owned()),
        model: "m".into(),
        version: 1,
        detector: "psi".into(),
        feature: "in_x_0".into(),
        statistic: 0.3,
        threshold: 0.2,
        window_rows: 10,
        window_start: "a".into(),
        window_end: "b".into(),
        time: "c".into(),
        sample_files: vec![],
    };
    for (id, replica) in [("0000000000002-r1-000000", "r1"), ("0000000000001-r0-000000", "r0")] {
        let bytes = serde_json::to_vec(&event(id, replica)).unwrap();
        remote.write(&["m", "drift-events", &format!("{id}.json")], bytes, PutMode::Create).unwrap();
    }
    assert_eq!(reader.sync_events("m").unwrap(), 2);
    assert_eq!(reader.sync_events("m").unwrap(), 0, "held events are not appended again");
    let bytes = serde_json::to_vec(&event("0000000000003-r0-000001", "r0")).unwrap();
    remote.write(&["m", "drift-events", "0000000000003-r0-000001.json"], bytes, PutMode::Create).unwrap();
    assert_eq!(reader.sync_events("m").unwrap(), 1);
    let events = crate::read_drift_events(&reader.registry(), "m", 0);
    let seen: Vec<(u64, &str)> = events.iter().map(|e| (e.seq, e.replica.as_deref().unwrap())).collect();
    assert_eq!(seen, [(0, "r0"), (1, "r1"), (2, "r0")]);
}

#[test]
fn copy_down_brings_new_objects_whole_and_leaves_what_is_there() {
    let remote = remote("copy-down");
    remote.write(&["samples", "model=m", "date=d", "r0-part-1.parquet"], b"a".to_vec(), PutMode::Create).unwrap();
    remote.write(&["samples", "model=m", "date=d", "r1-part-1.parquet"], b"b".to_vec(), PutMode::Create).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("samples/model=m");
    let copied = copy_down(&remote, &["samples", "model=m"], &local).unwrap();
    assert_eq!(copied, ["date=d/r0-part-1.parquet", "date=d/r1-part-1.parquet"]);
    assert_eq!(std::fs::read(local.join("date=d/r1-part-1.parquet")).unwrap(), b"b");
    assert!(copy_down(&remote, &["samples", "model=m"], &local).unwrap().is_empty());
}

#[test]
fn concurrent_alias_writers_through_the_store_lose_no_change() {
    let remote = remote("concurrent");
    let (_a, writer) = mirror(&remote);
    for _ in 0..3 {
        writer.registry().publish("m", b"x", ManifestDraft::default()).unwrap();
    }
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let remote = Arc::clone(&remote);
            std::thread::spawn(move || {
                for round in 0..10u64 {
                    let alias = format!("a{t}");
                    remote
                        .update_aliases("m", |aliases| {
                            aliases.insert(alias.clone(), 1 + (round % 3));
                            Ok(())
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let aliases = remote.aliases("m").unwrap();
    assert_eq!(aliases.len(), 4, "every writer's alias is there: {aliases:?}");
    // Round 9 writes version 1 + 9 % 3 = 1.
    assert!(aliases.values().all(|v| *v == 1), "each holds its last write: {aliases:?}");
}

#[test]
fn an_alias_map_naming_a_version_the_copy_cannot_hold_is_not_applied() {
    let remote = remote("alias-ahead");
    let (_a, writer) = mirror(&remote);
    let registry = writer.registry();
    registry.publish("m", b"one", ManifestDraft::default()).unwrap();
    registry.set_alias("m", "champion", 1).unwrap();
    let (_b, reader) = mirror(&remote);
    reader.sync().unwrap();
    registry.publish("m", b"two", ManifestDraft::default()).unwrap();
    remote.write(&["m", "2", "model.onnx"], b"tampered".to_vec(), PutMode::Overwrite).unwrap();
    registry.set_alias("m", "champion", 2).unwrap();
    let report = reader.sync().unwrap();
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert!(report.failed.iter().any(|f| f.contains("names version 2")), "{report:?}");
    assert_eq!(reader.registry().resolve("m", "champion").unwrap(), 1, "the copy keeps a map it can serve");
    // The other aliases still move.
    registry.set_alias("m", "stable", 1).unwrap();
    reader.sync().unwrap();
    assert_eq!(reader.registry().resolve("m", "stable").unwrap(), 1);
    assert_eq!(reader.registry().resolve("m", "champion").unwrap(), 1);
}

#[test]
fn rollout_state_changes_by_compare_and_set_and_an_older_term_is_fenced_off() {
    let remote = remote("fenced");
    remote.write(&["m", "1", "model.onnx"], b"x".to_vec(), PutMode::Create).unwrap();
    let stored = remote.update_rollout_state("m", Some(2), &mut |s| s.paused = true).unwrap().unwrap();
    assert_eq!((stored.paused, stored.term), (true, 2));
    // An operator (no term) changes it on top: nothing of the controller's is lost.
    let stored = remote
        .update_rollout_state("m", None, &mut |s| {
            s.rejected.insert(7);
        })
        .unwrap()
        .unwrap();
    assert!(stored.paused && stored.rejected.contains(&7) && stored.term == 2);
    // A holder of an older term may no longer write.
    assert_eq!(remote.update_rollout_state("m", Some(1), &mut |s| s.paused = false).unwrap(), None);
    assert!(remote.rollout_state("m").unwrap().paused);
}

#[test]
fn a_log_of_records_without_seq_joins_the_local_log_once_with_its_ids() {
    let remote = remote("runs");
    let (_b, reader) = mirror(&remote);
    for (id, outcome) in [("0000000000005-trainer-000001", "rejected"), ("0000000000004-trainer-000000", "registered")]
    {
        let record = serde_json::json!({"model": "m", "outcome": outcome});
        remote
            .write(&["m", "trainer-runs", &format!("{id}.json")], serde_json::to_vec(&record).unwrap(), PutMode::Create)
            .unwrap();
    }
    assert_eq!(reader.sync_log("m", "trainer-runs", "trainer-runs.jsonl").unwrap(), 2);
    assert_eq!(reader.sync_log("m", "trainer-runs", "trainer-runs.jsonl").unwrap(), 0);
    let text = std::fs::read_to_string(reader.root().join("m/trainer-runs.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["outcome"], "registered", "in id (time) order");
    assert_eq!(lines[1]["id"], "0000000000005-trainer-000001");
    assert!(lines[0].get("seq").is_none(), "records without a seq get none");
}

#[test]
fn a_signed_version_reaches_another_copy_with_its_signature_verifying_and_can_be_signed_later() {
    let keys = tempfile::tempdir().unwrap();
    let (_, private, public) = crate::signing::generate_key_pair(&keys.path().join("k")).unwrap();
    let signer = Arc::new(crate::Signer::from_pem_file(&private).unwrap());
    let trusted = crate::TrustedKeys::from_files(&[public]).unwrap();
    let remote = remote("signed");
    let (_a, writer) = mirror(&remote);
    let draft = ManifestDraft { description: Some("ü, \"quoted\"".into()), ..Default::default() };
    writer.registry().with_signer(Arc::clone(&signer)).publish("m", b"onnx", draft).unwrap();
    // Unsigned, then signed in place (a registry adopting signatures).
    writer.registry().publish("m", b"onnx-2", ManifestDraft::default()).unwrap();
    writer.registry().sign_version("m", 2, &signer).unwrap();
    assert!(writer.registry().sign_version("m", 2, &signer).unwrap_err().to_string().contains("already signed"));
    let (_b, reader) = mirror(&remote);
    reader.sync().unwrap();
    let copy = reader.registry();
    for version in [1, 2] {
        let entry = copy.version("m", version).unwrap();
        assert_eq!(copy.check_signature(&entry, &trusted, None).unwrap().as_deref(), Some(signer.key_id()));
    }
    // The writer's own copy verifies too (the same bytes as the store's).
    let entry = writer.registry().version("m", 1).unwrap();
    assert_eq!(writer.registry().check_signature(&entry, &trusted, None).unwrap().as_deref(), Some(signer.key_id()));
}

#[test]
fn a_copy_that_held_a_version_unsigned_picks_up_a_signature_added_later_for_aliased_versions() {
    let keys = tempfile::tempdir().unwrap();
    let (_, private, public) = crate::signing::generate_key_pair(&keys.path().join("k")).unwrap();
    let signer = crate::Signer::from_pem_file(&private).unwrap();
    let trusted = crate::TrustedKeys::from_files(&[public]).unwrap();
    let remote = remote("sign-later");
    let (_a, writer) = mirror(&remote);
    writer.registry().publish("m", b"one", ManifestDraft::default()).unwrap();
    writer.registry().publish("m", b"two", ManifestDraft::default()).unwrap();
    writer.registry().set_alias("m", "champion", 1).unwrap();
    let (_b, reader) = mirror(&remote);
    let reader = reader.looking_for_signatures_every(std::time::Duration::ZERO);
    reader.sync().unwrap();
    writer.registry().sign_version("m", 1, &signer).unwrap();
    writer.registry().sign_version("m", 2, &signer).unwrap();
    let report = reader.sync().unwrap();
    assert_eq!(report.signed, [("m".to_owned(), 1)], "the aliased version only: {report:?}");
    assert!(report.changed());
    let copy = reader.registry();
    assert_eq!(
        copy.check_signature(&copy.version("m", 1).unwrap(), &trusted, None).unwrap().as_deref(),
        Some(signer.key_id())
    );
    assert_eq!(copy.check_signature(&copy.version("m", 2).unwrap(), &trusted, None).unwrap(), None);
    assert!(reader.sync().unwrap().signed.is_empty(), "found once");
}
