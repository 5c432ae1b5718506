//! Sampling to Parquet, crash safety, labels, and drift detection on live traffic.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flywheel_onnx::fixtures::tiny;
use flywheel_registry::{ManifestDraft, ReferenceProfile, Registry};
use hyper::Method;
use serde_json::{Value, json};

use crate::support::{Http, TestGateway, tiny_request, tiny_rows, wait_until};

/// Every finished part file under `dir` (recursively), and the temporary ones.
fn part_files(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut done, mut tmp) = (Vec::new(), Vec::new());
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                stack.push(p);
            } else if name.ends_with(".parquet") {
                done.push(p);
            } else if name.ends_with(".parquet.tmp") {
                tmp.push(p);
            }
        }
    }
    (done, tmp)
}

/// Rows in a Parquet file, read through its footer (fails on a torn file).
fn parquet_rows(path: &Path) -> i64 {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    reader.metadata().file_metadata().num_rows()
}

fn samples_dir(gw: &TestGateway) -> PathBuf {
    gw.repo.parent().unwrap().join("samples")
}

const FAST_ROTATION: &str = "[sampling]\nrate = 1.0\nmax_rows_per_file = 40\nmax_file_age_ms = 200\n";

#[tokio::test(flavor = "multi_thread")]
async fn sampled_rows_survive_kill_9_and_leftovers_are_cleaned_on_restart() {
    let gw = TestGateway::start(FAST_ROTATION);
    let http = Http::new(false);
    let url = format!("{}/v2/models/tiny/infer", gw.base);
    let body = tiny_request(&crate::support::tiny_rows(1, 1));
    for _ in 0..200 {
        assert_eq!(http.post_json(&url, &body).await.status, 200);
    }
    let dir = samples_dir(&gw);
    assert!(
        wait_until(Duration::from_secs(5), || async { part_files(&dir).0.len() >= 3 }).await,
        "files rotate by rows"
    );
    // Keep traffic flowing, then kill -9 mid-stream.
    let traffic = {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        tokio::spawn(async move {
            for _ in 0..400 {
                let _ = http.post_json(&url, &body).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let pid = gw.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-9", &pid]).status().unwrap().success());
    let _ = traffic.await;
    let (finished, _) = part_files(&dir);
    let before: Vec<(PathBuf, i64)> = finished.iter().map(|p| (p.clone(), parquet_rows(p))).collect();
    assert!(before.iter().all(|(_, rows)| *rows > 0), "every finished file reads back");

    // Restart over the same folders: leftovers go, finished files are untouched.
    let _restarted = crate::support::restart_over(&gw.config_path, &gw.repo);
    let (after, tmp) = part_files(&dir);
    assert!(tmp.is_empty(), "temporary files removed at startup: {tmp:?}");
    for (path, rows) in before {
        assert!(after.contains(&path));
        assert_eq!(parquet_rows(&path), rows, "{} unchanged", path.display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn labels_are_stored_once_and_shutdown_finalizes_every_file() {
    let mut gw = TestGateway::start("[sampling]\nrate = 1.0\n");
    let http = Http::new(false);
    let url = format!("{}/v2/models/tiny/infer", gw.base);
    let mut ids = Vec::new();
    for i in 0..20 {
        let id = format!("req-{i}");
        let reply = http
            .send(
                Method::POST,
                &url,
                &[("x-request-id", id.clone())],
                serde_json::to_vec(&tiny_request(&[0.1; 16])).unwrap(),
            )
            .await;
        assert_eq!(reply.status, 200);
        // Labels join on the gateway's own id of the request.
        ids.push(reply.header("x-flywheel-request-id").unwrap().to_owned());
    }
    let feedback = format!("{}/v2/models/tiny/feedback", gw.base);
    let labels: Vec<_> = ids.iter().take(10).map(|id| json!({"id": id, "label": 1})).collect();
    let first = http.post_json(&feedback, &json!({"labels": labels})).await;
    assert_eq!(first.json(), json!({"model": "tiny", "received": 10, "stored": 10}));
    let again = http.post_json(&feedback, &json!({"labels": labels})).await;
    assert_eq!(again.json()["stored"], 0, "repeats are not stored twice");
    let bad = http.post_json(&feedback, &json!({"labels": [{"id": "x"}]})).await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].as_str().unwrap().contains("feedback body must be"));
    assert_eq!(
        http.post_json(&format!("{}/v2/models/nope/feedback", gw.base), &json!({"id": "a", "label": 1})).await.status,
        404
    );
    let metrics = String::from_utf8(http.get(&format!("{}/metrics", gw.base)).await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("flywheel_quality{model=\"tiny\",version=\"2\",arm=\"champion\",measure=\"accuracy\"}"),
        "{metrics}"
    );

    gw.terminate();
    let status = gw.wait_exit(Duration::from_secs(20)).expect("exited");
    assert!(status.success());
    let dir = samples_dir(&gw);
    let (finished, tmp) = part_files(&dir);
    assert!(tmp.is_empty(), "nothing left half-written: {tmp:?}");
    let count = |kind: &str| {
        finished
            .iter()
            .filter(|p| p.to_string_lossy().contains(&format!("/{kind}/model=tiny/date=")))
            .map(|p| parquet_rows(p))
            .sum::<i64>()
    };
    assert_eq!(count("samples"), 20);
    assert_eq!(count("labels"), 10);
}

/// Standard normal draws from a fixed seed.
fn normal(rng: &mut fastrand::Rng) -> f32 {
    let (u, v) = (rng.f64().max(1e-12), rng.f64());
    ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
}

/// A gateway over a tiny champion with a standard-normal reference profile, `drift` settings
/// in its config.
fn profiled_tiny(drift: &str) -> TestGateway {
    let config = format!("[drift]\n{drift}[models.tiny.rollout]\nchampion = \"champion\"\n");
    TestGateway::start_registry(&config, |r| {
        let v = r.publish("tiny", &tiny(1).to_onnx(1), ManifestDraft::default()).unwrap().version;
        r.set_alias("tiny", "champion", v).unwrap();
        let mut rng = fastrand::Rng::with_seed(1);
        let rows: Vec<Vec<f64>> = (0..5000).map(|_| (0..16).map(|_| f64::from(normal(&mut rng))).collect()).collect();
        let names: Vec<String> = (0..16).map(|i| flywheel_registry::samples::input_column("input", i)).collect();
        r.write_profile("tiny", v, &ReferenceProfile::from_rows(&names, &rows, None, 1000)).unwrap();
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn under_load_the_detectors_see_no_more_rows_than_their_intake_allows() {
    // One row a second reaches the detectors: 2400 shifted rows sent at once fill no window.
    let gw = profiled_tiny("window_rows = 300\nmax_rows_per_second = 1\n");
    let http = Http::new(false);
    let url = format!("{}/v2/models/tiny/infer", gw.base);
    let mut rng = fastrand::Rng::with_seed(2);
    for _ in 0..80 {
        let rows: Vec<f32> = (0..30 * 16).map(|i| normal(&mut rng) + if i % 16 == 3 { 1.5 } else { 0.0 }).collect();
        assert_eq!(http.post_json(&url, &tiny_request(&rows)).await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = flywheel_gateway::drift::read_events(&Registry::open(&gw.repo), "tiny", 0);
    assert!(events.is_empty(), "the same traffic with every row taken raises an event (next test): {events:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_covariate_shift_in_one_feature_raises_one_event_naming_it() {
    // Every row to the detectors (the default takes 1000 a second: this test sends faster).
    let gw = profiled_tiny("window_rows = 300\nmax_rows_per_second = 0\n");
    let http = Http::new(false);
    let url = format!("{}/v2/models/tiny/infer", gw.base);
    let mut rng = fastrand::Rng::with_seed(2);
    let mut send = |shift: f32| {
        let rows: Vec<f32> = (0..30 * 16).map(|i| normal(&mut rng) + if i % 16 == 3 { shift } else { 0.0 }).collect();
        tiny_request(&rows)
    };
    // 1200 unshifted rows (four windows): no event.
    for _ in 0..40 {
        assert_eq!(http.post_json(&url, &send(0.0)).await.status, 200);
    }
    let registry = Registry::open(&gw.repo);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = flywheel_gateway::drift::read_events(&registry, "tiny", 0);
    assert!(events.is_empty(), "no drift on reference-like traffic: {events:?}");
    // Feature 3 moves by 1.5 standard deviations.
    for _ in 0..40 {
        assert_eq!(http.post_json(&url, &send(1.5)).await.status, 200);
    }
    let found = wait_until(Duration::from_secs(5), || async {
        !flywheel_gateway::drift::read_events(&registry, "tiny", 0).is_empty()
    })
    .await;
    assert!(found, "the shift was detected");
    let events = flywheel_gateway::drift::read_events(&registry, "tiny", 0);
    let features: Vec<&str> = events.iter().map(|e| e.feature.as_str()).collect();
    assert_eq!(features, ["in_input_3"], "one event, naming the shifted feature: {events:?}");
    assert!(["psi", "ks", "page_hinkley"].contains(&events[0].detector.as_str()), "{events:?}");
    assert!(events[0].window_rows > 0 && events[0].window_rows <= 300);
    let admin = http.get(&format!("{}/admin/drift/tiny?since=0", gw.base)).await.json();
    assert_eq!(admin["events"][0]["feature"], "in_input_3");
    assert_eq!(admin["next"], 1);
}

/// (client_request_id, arm, version) of every sample row under `dir`.
fn sample_rows(dir: &Path) -> Vec<(String, String, u64)> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::UInt64Type;
    let mut rows = Vec::new();
    for path in part_files(dir).0.into_iter().filter(|p| p.to_string_lossy().contains("/samples/model=")) {
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap())
                .unwrap()
                .build()
                .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let ids = batch.column_by_name("client_request_id").unwrap().as_string::<i32>().clone();
            let arms = batch.column_by_name("arm").unwrap().as_string::<i32>().clone();
            let versions = batch.column_by_name("version").unwrap().as_primitive::<UInt64Type>().clone();
            for i in 0..batch.num_rows() {
                rows.push((ids.value(i).to_owned(), arms.value(i).to_owned(), versions.value(i)));
            }
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread")]
async fn sampled_shadow_answers_are_stored_beside_the_primary() {
    let config = "[sampling]\nrate = 1.0\n[models.tiny.rollout]\nchampion = \"champion\"\nshadow = { version = \"1\", fraction = 1.0 }\n";
    let mut gw = TestGateway::start_registry(config, |r| {
        r.publish("tiny", &tiny(1).to_onnx(1), ManifestDraft::default()).unwrap();
        let v = r.publish("tiny", &tiny(2).to_onnx(2), ManifestDraft::default()).unwrap().version;
        r.set_alias("tiny", "champion", v).unwrap();
    });
    let http = Http::new(false);
    let url = format!("{}/v2/models/tiny/infer", gw.base);
    for i in 0..10 {
        let body = serde_json::to_vec(&tiny_request(&[0.2; 16])).unwrap();
        let reply = http.send(Method::POST, &url, &[("x-request-id", format!("s-{i}"))], body).await;
        assert_eq!(reply.header("x-model-version"), Some("2"));
    }
    let paired = wait_until(Duration::from_secs(5), || async {
        crate::support::route_of(&http, &gw.base, "tiny").await["evidence"]["shadow"]["pairs"] == 10
    })
    .await;
    assert!(paired);
    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(20)).expect("exited").success());
    let mut rows = sample_rows(&samples_dir(&gw));
    rows.sort();
    let expected: Vec<(String, String, u64)> = (0..10)
        .flat_map(|i| [(format!("s-{i}"), "champion".to_owned(), 2), (format!("s-{i}"), "shadow".to_owned(), 1)])
        .collect();
    let mut expected = expected;
    expected.sort();
    assert_eq!(rows, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_lineage_finds_a_sampled_request_and_its_version() {
    let config = format!("{FAST_ROTATION}[models.tiny.rollout]\nchampion = \"champion\"\n");
    let gw = TestGateway::start_registry(&config, |r| {
        let v = r.publish("tiny", &tiny(1).to_onnx(1), ManifestDraft::default()).unwrap().version;
        r.set_alias("tiny", "champion", v).unwrap();
    });
    let http = Http::new(false);
    let reply = http.post_json(&format!("{}/v2/models/tiny/infer", gw.base), &tiny_request(&tiny_rows(2, 1))).await;
    let id = reply.header("x-flywheel-request-id").unwrap().to_owned();
    let url = format!("{}/admin/lineage/{id}", gw.base);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let found: Value = loop {
        let reply = http.get(&url).await;
        if reply.status == 200 {
            break reply.json();
        }
        assert!(std::time::Instant::now() < deadline, "the request was never found: {:?}", reply.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((found["model"].as_str(), found["version"].as_u64()), (Some("tiny"), Some(1)));
    let rows = found["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "both rows of the request: {found}");
    assert_eq!(rows[0]["arm"], "champion");
    assert_eq!(rows[0]["inputs"].as_object().unwrap().len(), 16);
    assert_eq!(found["versions"][0]["version"], 1);
    assert!(found["versions"][0]["decisions"].as_array().is_some());
    let missing = http.get(&format!("{}/admin/lineage/no-such-request", gw.base)).await;
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].as_str().unwrap().contains("no-such-request"));
}
