//! Bad files in the registry: a corrupt profile, manifest or alias file is refused with its
//! reason, and serving, sampling and labels go on.

use std::time::Duration;

use flywheel_onnx::fixtures::tiny;
use flywheel_registry::{ManifestDraft, ReferenceProfile};
use serde_json::json;

use crate::support::{Http, TestGateway, tiny_request, tiny_rows, wait_until};

const CONFIG: &str = "[sampling]\nrate = 1.0\nmax_file_age_ms = 200\n[drift]\nwindow_rows = 50\nmax_rows_per_second = 0\n\
                      [models.tiny.rollout]\nchampion = \"champion\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_profile_with_empty_bins_is_refused_and_sampling_and_labels_go_on() {
    let gw = TestGateway::start_registry(CONFIG, |r| {
        let v = r.publish("tiny", &tiny(1).to_onnx(1), ManifestDraft::default()).unwrap().version;
        r.set_alias("tiny", "champion", v).unwrap();
        let names: Vec<String> = (0..16).map(|i| flywheel_registry::samples::input_column("input", i)).collect();
        let rows: Vec<Vec<f64>> = (0..200).map(|i| vec![f64::from(i); 16]).collect();
        let mut profile = ReferenceProfile::from_rows(&names, &rows, None, 100);
        // What used to panic the tap thread: no reference bins at all.
        profile.features[3].proportions.clear();
        r.write_profile("tiny", v, &profile).unwrap();
    });
    let http = Http::new(false);
    let url = format!("{}/v2/models/tiny/infer", gw.base);
    for i in 0..20 {
        assert_eq!(http.post_json(&url, &tiny_request(&tiny_rows(10, i))).await.status, 200);
    }
    let feedback =
        http.post_json(&format!("{}/v2/models/tiny/feedback", gw.base), &json!({"id": "x", "label": 1})).await;
    assert_eq!(feedback.status, 200, "the tap thread is alive: {:?}", feedback.body);
    let samples = gw.repo.parent().unwrap().join("samples/samples/model=tiny");
    let written = wait_until(Duration::from_secs(5), || async { walk_parquet(&samples) > 0 }).await;
    assert!(written, "samples keep being written");
    let ready = http.get(&format!("{}/v2/health/ready", gw.base)).await;
    assert_eq!(ready.status, 200);
    assert!(ready.json().get("degraded").is_none(), "nothing panicked: {}", ready.json());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_manifest_or_alias_file_is_refused_naming_it_and_the_champion_serves() {
    let gw = TestGateway::start_registry(CONFIG, |r| {
        let v = r.publish("tiny", &tiny(1).to_onnx(1), ManifestDraft::default()).unwrap().version;
        r.set_alias("tiny", "champion", v).unwrap();
    });
    let http = Http::new(false);
    let url = format!("{}/v2/models/tiny/infer", gw.base);
    let registry = flywheel_registry::Registry::open(&gw.repo);
    // Version 2 claims to be version 9: refused; the champion stays on 1.
    let v2 = registry.publish("tiny", &tiny(2).to_onnx(1), ManifestDraft::default()).unwrap().version;
    let manifest_path = gw.repo.join(format!("tiny/{v2}/manifest.json"));
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["version"] = json!(9);
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    std::fs::write(gw.repo.join("tiny/aliases.json"), br#"{"champion": 2, "../../etc": 1}"#).unwrap();
    let refused = wait_until(Duration::from_secs(10), || async {
        let routing = crate::support::routing(&http, &gw.base).await;
        routing.to_string().contains("aliases.json")
    })
    .await;
    let routing = crate::support::routing(&http, &gw.base).await;
    assert!(refused, "the reload names the alias file: {routing:#}");
    assert!(routing.to_string().contains("not a valid alias name"), "{routing:#}");
    let reply = http.post_json(&url, &tiny_request(&tiny_rows(1, 1))).await;
    assert_eq!((reply.status, reply.header("x-model-version")), (200, Some("1")), "the old champion serves");
    // Aliases mended by hand: version 2 is now wanted, and refused for its manifest.
    std::fs::write(gw.repo.join("tiny/aliases.json"), format!("{{\"champion\": {v2}}}")).unwrap();
    let named = wait_until(Duration::from_secs(10), || async {
        crate::support::routing(&http, &gw.base).await.to_string().contains("version is 9")
    })
    .await;
    assert!(named, "{:#}", crate::support::routing(&http, &gw.base).await);
    let reply = http.post_json(&url, &tiny_request(&tiny_rows(1, 1))).await;
    assert_eq!((reply.status, reply.header("x-model-version")), (200, Some("1")));
}

fn walk_parquet(dir: &std::path::Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for p in std::fs::read_dir(&d).into_iter().flatten().flatten().map(|e| e.path()) {
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "parquet") {
                n += 1;
            }
        }
    }
    n
}
