//! Signed versions: under `require_signature` an unsigned, a wrongly signed or an altered
//! version is refused with its reason and the old champion keeps serving; a key rotation
//! trusts old and new keys at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flywheel_onnx::fixtures::tiny;
use flywheel_registry::{ManifestDraft, Registry, Signer, signing};
use serde_json::Value;

use crate::support::{Http, TestGateway, route_of, routing, tiny_request, tiny_rows};

/// A key pair in `dir`: the signer and the public key's path.
fn key(dir: &Path, name: &str) -> (Arc<Signer>, PathBuf) {
    let (_, private, public) = signing::generate_key_pair(&dir.join(name)).unwrap();
    (Arc::new(Signer::from_pem_file(&private).unwrap()), public)
}

fn config(trusted: &[&Path], require: bool) -> String {
    let keys: Vec<String> = trusted.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
    format!(
        "trusted_keys = [{}]\nrequire_signature = {require}\n[models.tiny.rollout]\nchampion = \"champion\"\n",
        keys.join(", ")
    )
}

fn publish(registry: &Registry, signer: Option<&Arc<Signer>>, seed: u64) -> u64 {
    let registry = match signer {
        Some(s) => registry.clone().with_signer(Arc::clone(s)),
        None => registry.clone(),
    };
    registry.publish("tiny", &tiny(seed).to_onnx(seed as i64), ManifestDraft::default()).unwrap().version
}

/// Points the champion alias at `version` and waits until the reload says `needle`.
async fn champion_refused(http: &Http, gw: &TestGateway, registry: &Registry, version: u64, needle: &str) {
    registry.set_alias("tiny", "champion", version).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let last = routing(http, &gw.base).await["last_reload"].clone();
        if last.to_string().contains(needle) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no reload mentioned {needle:?}; last: {last}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn serves(http: &Http, gw: &TestGateway, version: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let route = route_of(http, &gw.base, "tiny").await;
        if route["champion"] == version {
            let reply =
                http.post_json(&format!("{}/v2/models/tiny/infer", gw.base), &tiny_request(&tiny_rows(1, 1))).await;
            assert_eq!((reply.status, reply.header("x-model-version")), (200, Some(version.to_string().as_str())));
            return route;
        }
        assert!(std::time::Instant::now() < deadline, "version {version} never served: {route}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn signed_by(route: &Value, version: u64) -> Value {
    let versions = route["versions"].as_array().unwrap();
    versions.iter().find(|v| v["version"] == version).map(|v| v["signed_by"].clone()).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_untrusted_and_altered_versions_are_refused_and_the_signed_champion_serves() {
    let keys = tempfile::tempdir().unwrap();
    let (release, release_pub) = key(keys.path(), "release");
    let (rogue, _) = key(keys.path(), "rogue");
    let gw = TestGateway::start_registry(&config(&[&release_pub], true), |r| {
        let v = publish(r, Some(&release), 1);
        r.set_alias("tiny", "champion", v).unwrap();
    });
    let (registry, http) = (Registry::open(&gw.repo), Http::new(false));
    let route = serves(&http, &gw, 1).await;
    assert_eq!(signed_by(&route, 1), release.key_id());

    let unsigned = publish(&registry, None, 2);
    champion_refused(&http, &gw, &registry, unsigned, "is not signed (manifest.sig missing) and require_signature")
        .await;
    serves(&http, &gw, 1).await;

    let untrusted = publish(&registry, Some(&rogue), 3);
    champion_refused(
        &http,
        &gw,
        &registry,
        untrusted,
        &format!("signed by key {}, which is not trusted", rogue.key_id()),
    )
    .await;
    serves(&http, &gw, 1).await;

    // Signed, then the manifest edited (its lineage rewritten): the signature no longer matches.
    let altered = publish(&registry, Some(&release), 4);
    let manifest = gw.repo.join("tiny").join(altered.to_string()).join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap().replace("\"description\": null", "\"description\": \"x\"");
    std::fs::write(&manifest, text).unwrap();
    champion_refused(&http, &gw, &registry, altered, "does not match manifest.json").await;
    serves(&http, &gw, 1).await;

    let good = publish(&registry, Some(&release), 5);
    registry.set_alias("tiny", "champion", good).unwrap();
    let route = serves(&http, &gw, good).await;
    assert_eq!(signed_by(&route, good), release.key_id());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_trusts_both_keys_and_a_retired_key_no_longer_serves() {
    let keys = tempfile::tempdir().unwrap();
    let (old, old_pub) = key(keys.path(), "old");
    let (new, new_pub) = key(keys.path(), "new");
    let gw = TestGateway::start_registry(&config(&[&old_pub], true), |r| {
        let v = publish(r, Some(&old), 1);
        r.set_alias("tiny", "champion", v).unwrap();
    });
    let (registry, http) = (Registry::open(&gw.repo), Http::new(false));
    serves(&http, &gw, 1).await;
    // Step 1: trust both; a version signed by the new key serves.
    std::fs::write(&gw.config_path, config(&[&old_pub, &new_pub], true)).unwrap();
    let v2 = publish(&registry, Some(&new), 2);
    registry.set_alias("tiny", "champion", v2).unwrap();
    let route = serves(&http, &gw, v2).await;
    assert_eq!(signed_by(&route, v2), new.key_id());
    // Step 2: retire the old key; going back to its version is refused.
    std::fs::write(&gw.config_path, config(&[&new_pub], true)).unwrap();
    champion_refused(&http, &gw, &registry, 1, &format!("signed by key {}, which is not trusted", old.key_id())).await;
    serves(&http, &gw, v2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_require_signature_unsigned_versions_serve_but_a_bad_signature_is_refused() {
    let keys = tempfile::tempdir().unwrap();
    let (release, release_pub) = key(keys.path(), "release");
    let (rogue, _) = key(keys.path(), "rogue");
    let gw = TestGateway::start_registry(&config(&[&release_pub], false), |r| {
        let v = publish(r, None, 1);
        r.set_alias("tiny", "champion", v).unwrap();
    });
    let (registry, http) = (Registry::open(&gw.repo), Http::new(false));
    let route = serves(&http, &gw, 1).await;
    assert_eq!(signed_by(&route, 1), Value::Null);
    let untrusted = publish(&registry, Some(&rogue), 2);
    champion_refused(&http, &gw, &registry, untrusted, "which is not trusted").await;
    serves(&http, &gw, 1).await;
    let signed = publish(&registry, Some(&release), 3);
    registry.set_alias("tiny", "champion", signed).unwrap();
    assert_eq!(signed_by(&serves(&http, &gw, signed).await, signed), release.key_id());
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_configured_later_re_check_the_version_that_serves() {
    let keys = tempfile::tempdir().unwrap();
    let (_, release_pub) = key(keys.path(), "release");
    let (rogue, _) = key(keys.path(), "rogue");
    let gw = TestGateway::start_registry(&config(&[], false), |r| {
        let v = publish(r, Some(&rogue), 1);
        r.set_alias("tiny", "champion", v).unwrap();
    });
    let (registry, http) = (Registry::open(&gw.repo), Http::new(false));
    serves(&http, &gw, 1).await;
    // The serving version is checked again at the reload that brings keys (not reused as it was
    // loaded): it is refused, named, and keeps serving until a good version replaces it.
    std::fs::write(&gw.config_path, config(&[&release_pub], false)).unwrap();
    champion_refused(&http, &gw, &registry, 1, &format!("signed by key {}, which is not trusted", rogue.key_id()))
        .await;
    serves(&http, &gw, 1).await;
}

#[test]
fn a_config_that_requires_signatures_without_keys_or_with_a_bad_key_file_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pub.pem");
    std::fs::write(&bad, "not a key").unwrap();
    for (text, needle) in [
        ("require_signature = true\n".to_owned(), "trusted_keys is empty".to_owned()),
        (format!("trusted_keys = [{:?}]\n", bad.display().to_string()), format!("trusted key {}", bad.display())),
    ] {
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["--config", path.to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(&needle), "{needle}: {stderr}");
    }
}
