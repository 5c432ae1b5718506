//! Registry behaviour: atomic publish, listing, aliases, corrupt entries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{ManifestDraft, Registry, RegistryError};

fn registry() -> (tempfile::TempDir, Registry) {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(dir.path());
    (dir, registry)
}

#[test]
fn publish_numbers_versions_and_records_lineage() {
    let (_dir, r) = registry();
    let first = r.publish("fraud", b"one", ManifestDraft::default()).unwrap();
    let draft = ManifestDraft { parent_version: Some(1), code_revision: Some("abc".into()), ..Default::default() };
    let second = r.publish("fraud", b"two", draft).unwrap();
    assert_eq!((first.version, second.version), (1, 2));
    assert_eq!(second.parent_version, Some(1));
    let (entries, skipped) = r.versions("fraud").unwrap();
    assert!(skipped.is_empty());
    assert_eq!(entries.iter().map(|e| e.version).collect::<Vec<_>>(), vec![1, 2]);
    let manifest = entries[1].manifest.clone().unwrap().unwrap();
    assert_eq!(manifest.sha256, crate::sha256_hex(b"two"));
    assert_eq!(r.verify(&entries[1]).unwrap().bytes, b"two");
}

#[test]
fn a_concurrent_reader_never_sees_a_partial_version() {
    let (_dir, r) = registry();
    r.publish("m", b"seed", ManifestDraft::default()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (r, stop) = (r.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut checked = 0;
            while !stop.load(Ordering::Relaxed) {
                for entry in r.versions("m").unwrap().0 {
                    let manifest = entry.manifest.clone().expect("every visible version has its manifest").unwrap();
                    r.verify(&entry).expect("every visible version is complete");
                    assert_eq!(manifest.version, entry.version);
                    checked += 1;
                }
            }
            checked
        })
    };
    let payload = vec![7u8; 256 * 1024];
    for _ in 0..30 {
        r.publish("m", &payload, ManifestDraft::default()).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    assert_eq!(r.versions("m").unwrap().0.len(), 31);
}

#[test]
fn concurrent_publishers_get_distinct_versions() {
    let (_dir, r) = registry();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let r = r.clone();
            std::thread::spawn(move || {
                (0..5).map(|_| r.publish("m", &[i], ManifestDraft::default()).unwrap().version).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<u64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    all.sort();
    assert_eq!(all, (1..=20).collect::<Vec<_>>());
}

#[test]
fn aliases_move_and_resolve() {
    let (_dir, r) = registry();
    for bytes in [b"a", b"b", b"c"] {
        r.publish("m", bytes, ManifestDraft::default()).unwrap();
    }
    r.set_alias("m", "champion", 2).unwrap();
    r.set_alias("m", "challenger", 3).unwrap();
    assert_eq!(r.resolve("m", "champion").unwrap(), 2);
    r.set_alias("m", "champion", 3).unwrap();
    assert_eq!(r.resolve("m", "champion").unwrap(), 3);
    assert_eq!(r.resolve("m", "latest").unwrap(), 3);
    assert_eq!(r.resolve("m", "1").unwrap(), 1);
    assert!(r.remove_alias("m", "challenger").unwrap());
    assert!(!r.remove_alias("m", "challenger").unwrap());
    assert!(matches!(r.resolve("m", "challenger"), Err(RegistryError::UnknownReference { .. })));
    assert!(matches!(r.set_alias("m", "champion", 9), Err(RegistryError::NoVersion { version: 9, .. })));
    for bad in ["7", "latest", "a b", ""] {
        assert!(matches!(r.set_alias("m", bad, 1), Err(RegistryError::BadAlias(_))), "{bad:?}");
    }
}

#[test]
fn corrupt_entries_are_skipped_or_refused_with_a_reason() {
    let (dir, r) = registry();
    r.publish("m", b"good", ManifestDraft::default()).unwrap();
    let root = dir.path().join("m");
    std::fs::create_dir_all(root.join("draft")).unwrap();
    std::fs::create_dir_all(root.join("5")).unwrap();
    std::fs::create_dir_all(root.join(".publish-1-2")).unwrap();
    let (entries, skipped) = r.versions("m").unwrap();
    assert_eq!(entries.len(), 1);
    let mut reasons: Vec<String> = skipped.iter().map(|s| s.reason.clone()).collect();
    reasons.sort();
    assert_eq!(reasons, vec!["folder name is not a version number", "no model.onnx inside"]);

    std::fs::write(root.join("1/model.onnx"), b"tampered").unwrap();
    let entry = r.version("m", 1).unwrap();
    let err = r.verify(&entry).unwrap_err().to_string();
    assert!(err.contains("SHA-256") && err.contains("the manifest says"), "{err}");

    std::fs::write(root.join("1/manifest.json"), b"{not json").unwrap();
    let err = r.verify(&r.version("m", 1).unwrap()).unwrap_err().to_string();
    assert!(err.contains("manifest.json"), "{err}");
    assert!(matches!(r.publish("bad/name", b"x", ManifestDraft::default()), Err(RegistryError::BadModelName(_))));
}

#[test]
fn invalid_profiles_manifests_and_aliases_are_refused_naming_file_field_and_value() {
    let (dir, r) = registry();
    r.publish("m", b"good", ManifestDraft::default()).unwrap();
    let version_dir = dir.path().join("m/1");
    let values: Vec<f64> = (0..100).map(f64::from).collect();
    let good = crate::ReferenceProfile::from_rows(
        &["amount".into()],
        &values.iter().map(|v| vec![*v]).collect::<Vec<_>>(),
        None,
        50,
    );
    r.write_profile("m", 1, &good).unwrap();
    assert_eq!(r.profile("m", 1).unwrap(), Some(good.clone()));

    let mut empty = good.clone();
    empty.features[0].proportions.clear();
    std::fs::write(version_dir.join("profile.json"), serde_json::to_vec(&empty).unwrap()).unwrap();
    let err = r.profile("m", 1).unwrap_err().to_string();
    assert!(
        err.contains("profile.json") && err.contains("features[0] (\"amount\").proportions has 0 values, expected 10"),
        "{err}"
    );
    let mut off = good.clone();
    off.features[0].proportions[0] = 0.9;
    std::fs::write(version_dir.join("profile.json"), serde_json::to_vec(&off).unwrap()).unwrap();
    assert!(r.profile("m", 1).unwrap_err().to_string().contains("proportions must sum to 1"));

    let manifest_path = version_dir.join("manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["version"] = serde_json::json!(7);
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let err = r.verify(&r.version("m", 1).unwrap()).unwrap_err().to_string();
    assert!(err.contains("manifest.json: version is 7, but the file is in version folder 1"), "{err}");
    manifest["version"] = serde_json::json!(1);
    manifest["sha256"] = serde_json::json!("abc");
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let err = r.verify(&r.version("m", 1).unwrap()).unwrap_err().to_string();
    assert!(err.contains("sha256 must be 64 lower-case hex digits, given \"abc\""), "{err}");

    std::fs::write(dir.path().join("m/aliases.json"), br#"{"champion": 1, "../x": 1}"#).unwrap();
    let err = r.aliases("m").unwrap_err().to_string();
    assert!(err.contains("aliases.json") && err.contains("alias \"../x\" is not a valid alias name"), "{err}");
    std::fs::write(dir.path().join("m/aliases.json"), br#"{"champion": -1}"#).unwrap();
    assert!(r.aliases("m").unwrap_err().to_string().contains("aliases.json"));
}

#[test]
fn a_version_published_with_its_profile_never_exists_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(dir.path());
    let names = vec!["x".to_owned()];
    let rows: Vec<Vec<f64>> = (0..100).map(|i| vec![f64::from(i)]).collect();
    let profile = crate::ReferenceProfile::from_rows(&names, &rows, None, 50);
    let manifest = registry.publish_with_profile("m", b"onnx", ManifestDraft::default(), Some(&profile)).unwrap();
    assert_eq!(registry.profile("m", manifest.version).unwrap(), Some(profile));
    let staged: Vec<_> = std::fs::read_dir(dir.path().join("m")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(staged, [std::ffi::OsString::from("1")], "no staging folder left behind");
}

#[test]
fn a_signing_registry_signs_what_it_publishes_and_an_unsigned_version_can_be_signed_once() {
    let (_dir, registry) = registry();
    let keys = tempfile::tempdir().unwrap();
    let (_, private, public) = crate::signing::generate_key_pair(&keys.path().join("k")).unwrap();
    let signer = std::sync::Arc::new(crate::Signer::from_pem_file(&private).unwrap());
    let trusted = crate::TrustedKeys::from_files(&[public]).unwrap();
    let signing = registry.clone().with_signer(std::sync::Arc::clone(&signer));
    let v1 = signing.publish("m", b"one", ManifestDraft::default()).unwrap().version;
    let v2 = registry.publish("m", b"two", ManifestDraft::default()).unwrap().version;
    let check = |v| registry.check_signature(&registry.version("m", v).unwrap(), &trusted, None);
    assert_eq!(check(v1).unwrap().as_deref(), Some(signer.key_id()));
    assert_eq!(check(v2).unwrap(), None);
    registry.sign_version("m", v2, &signer).unwrap();
    assert_eq!(check(v2).unwrap().as_deref(), Some(signer.key_id()));
    let err = registry.sign_version("m", v2, &signer).unwrap_err().to_string();
    assert!(err.contains("already signed") && err.contains("manifest.sig"), "{err}");
    // The model file is bound through the manifest's digest: swapping it fails verify().
    std::fs::write(registry.version("m", v1).unwrap().model_file(), b"evil").unwrap();
    assert!(registry.verify(&registry.version("m", v1).unwrap()).is_err());
}
