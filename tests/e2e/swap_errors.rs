//! Bad swaps: each is refused with a clear reason and the last good state keeps serving.

use std::time::Duration;

use flywheel_onnx::fixtures::{heavy, tiny};
use flywheel_registry::{ManifestDraft, Registry};
use hyper::Method;
use serde_json::Value;

use crate::support::{Http, TestGateway, route_of, routing, tiny_request, tiny_rows, wait_until};

const CONFIG: &str = "[models.tiny.rollout]\nchampion = \"champion\"\n";

fn start() -> (TestGateway, Registry, Http) {
    let gw = TestGateway::start_registry(CONFIG, |r| {
        let v = r.publish("tiny", &tiny(1).to_onnx(1), ManifestDraft::default()).unwrap().version;
        r.set_alias("tiny", "champion", v).unwrap();
    });
    let registry = Registry::open(&gw.repo);
    (gw, registry, Http::new(false))
}

/// Waits until the last reload mentions `needle` among its rejections or error.
async fn rejected_with(http: &Http, base: &str, needle: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let last = routing(http, base).await["last_reload"].clone();
        if last.to_string().contains(needle) {
            return last;
        }
        assert!(std::time::Instant::now() < deadline, "no reload mentioned {needle:?}; last: {last}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn still_serves_v1(http: &Http, gw: &TestGateway) {
    let reply = http.post_json(&format!("{}/v2/models/tiny/infer", gw.base), &tiny_request(&tiny_rows(1, 1))).await;
    assert_eq!((reply.status, reply.header("x-model-version")), (200, Some("1")));
    assert_eq!(route_of(http, &gw.base, "tiny").await["champion"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_onnx_file_is_rejected_and_the_old_champion_serves() {
    let (gw, registry, http) = start();
    let v = registry.publish("tiny", b"definitely not onnx", ManifestDraft::default()).unwrap().version;
    registry.set_alias("tiny", "champion", v).unwrap();
    let status = rejected_with(&http, &gw.base, "champion version 2 could not be loaded").await;
    assert!(status.to_string().contains("loading tiny version 2"), "{status}");
    still_serves_v1(&http, &gw).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_hash_mismatch_is_rejected() {
    let (gw, registry, http) = start();
    let v = registry.publish("tiny", &tiny(2).to_onnx(2), ManifestDraft::default()).unwrap().version;
    std::fs::write(gw.repo.join("tiny").join(v.to_string()).join("model.onnx"), tiny(3).to_onnx(3)).unwrap();
    registry.set_alias("tiny", "champion", v).unwrap();
    rejected_with(&http, &gw.base, "the manifest says").await;
    still_serves_v1(&http, &gw).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signature_that_would_break_clients_is_rejected() {
    let (gw, registry, http) = start();
    let v = registry.publish("tiny", &heavy(1).to_onnx(1), ManifestDraft::default()).unwrap().version;
    registry.set_alias("tiny", "champion", v).unwrap();
    let status = rejected_with(&http, &gw.base, "signature would break clients").await;
    assert!(status.to_string().contains("input FP32 [-1, 256]"), "{status}");
    still_serves_v1(&http, &gw).await;
    let audit = std::fs::read_to_string(gw.repo.join("audit.jsonl")).unwrap();
    assert_eq!(audit.matches("\"action\":\"reject\"").count(), 1, "audited once: {audit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_configs_are_refused_and_quick_successive_edits_settle_on_the_last() {
    let (gw, registry, http) = start();
    std::fs::write(&gw.config_path, format!("{CONFIG}canary = {{ version = \"1\", weight = 140 }}\n")).unwrap();
    rejected_with(&http, &gw.base, "canary.weight must be in 0..=100, given 140").await;
    still_serves_v1(&http, &gw).await;
    std::fs::write(&gw.config_path, format!("{CONFIG}canary = {{ version = \"99\", weight = 10 }}\n")).unwrap();
    rejected_with(&http, &gw.base, "rollout.canary.version = \\\"99\\\": model 'tiny' has no version 99").await;
    still_serves_v1(&http, &gw).await;

    let v2 = registry.publish("tiny", &tiny(2).to_onnx(2), ManifestDraft::default()).unwrap().version;
    for weight in [10, 20, 30, 40, 50] {
        std::fs::write(&gw.config_path, format!("{CONFIG}canary = {{ version = \"{v2}\", weight = {weight} }}\n"))
            .unwrap();
    }
    let settled = wait_until(Duration::from_secs(10), || async {
        route_of(&http, &gw.base, "tiny").await["canary"] == serde_json::json!({"version": v2, "weight": 50})
    })
    .await;
    assert!(settled, "the last of five quick edits is in force");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_registry_folder_keeps_the_loaded_version_serving() {
    let (gw, _registry, http) = start();
    std::fs::remove_dir_all(gw.repo.join("tiny").join("1")).unwrap();
    rejected_with(&http, &gw.base, "rollout.champion").await;
    still_serves_v1(&http, &gw).await;
    std::fs::remove_dir_all(gw.repo.join("tiny")).unwrap();
    rejected_with(&http, &gw.base, "still serving its loaded versions").await;
    still_serves_v1(&http, &gw).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_needs_the_token_when_one_is_configured() {
    let gw = TestGateway::start_registry(&format!("admin_token = \"s3cret-s3cret-s3cret\"\n{CONFIG}"), |r| {
        let v = r.publish("tiny", &tiny(1).to_onnx(1), ManifestDraft::default()).unwrap().version;
        r.set_alias("tiny", "champion", v).unwrap();
    });
    let http = Http::new(false);
    let url = format!("{}/admin/routing", gw.base);
    let missing = http.get(&url).await;
    assert_eq!(missing.status, 401);
    assert!(missing.json()["error"].as_str().unwrap().contains("Bearer"));
    let wrong = http.send(Method::GET, &url, &[("authorization", "Bearer nope".into())], vec![]).await;
    assert_eq!(wrong.status, 401);
    let right = http.send(Method::GET, &url, &[("authorization", "Bearer s3cret-s3cret-s3cret".into())], vec![]).await;
    assert_eq!(right.status, 200);
    assert_eq!(right.json()["models"][0]["champion"], 1);
    let paused = http
        .send(
            Method::POST,
            &format!("{}/admin/models/tiny/pause", gw.base),
            &[("authorization", "Bearer s3cret-s3cret-s3cret".into())],
            vec![],
        )
        .await;
    assert_eq!(paused.status, 200);
    assert_eq!(paused.json()["models"][0]["paused"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_declaring_a_huge_static_shape_is_refused_at_load_and_the_others_serve() {
    let gw = TestGateway::start_with("version_policy = { latest = 2 }\n", |repo| {
        use flywheel_onnx::{Dim, ElemType, GraphBuilder};
        // 4 * 10^11 bytes for one row: allocating the warm-up would abort the process.
        let mut g = GraphBuilder::new("huge");
        g.input("x", ElemType::Float, &[Dim::Fixed(1), Dim::Fixed(100_000_000_000)]);
        g.output("y", ElemType::Float, &[Dim::Fixed(1), Dim::Fixed(100_000_000_000)]);
        g.node("Identity", &["x"], &["y"], &[]);
        let dir = repo.join("tiny/3");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.onnx"), g.encode(1)).unwrap();
    });
    let http = Http::new(false);
    let meta = http.get(&format!("{}/v2/models/tiny", gw.base)).await.json();
    assert_eq!(meta["versions"], serde_json::json!(["1", "2"]), "version 3 was refused");
    let routing = crate::support::routing(&http, &gw.base).await;
    let rejected = routing["last_reload"]["report"]["rejected"].to_string();
    assert!(
        rejected.contains(
            "input 'x' of shape [1, 100000000000] needs 400000000000 bytes for one row, over max_warmup_bytes"
        ),
        "{rejected}"
    );
    let reply =
        http.post_json(&format!("{}/v2/models/tiny/infer", gw.base), &crate::support::tiny_request(&[0.0; 16])).await;
    assert_eq!(reply.header("x-model-version"), Some("2"));
}
