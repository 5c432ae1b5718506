//! A fleet: several gateway processes over one registry in object storage (moto's S3 server),
//! each with its own local copy.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flywheel_onnx::fixtures::tiny;
use flywheel_registry::{ManifestDraft, Registry};

use crate::s3::{BUCKET, S3};
use crate::support::{Http, TestGateway, metric_value, tiny_request, tiny_rows, wait_until};

const CHAMPION_ONLY: &str = "[models.tiny.rollout]\nchampion = \"champion\"\n";

/// A gateway over `s3://flywheel/<prefix>` with its own local copy, polling every 200 ms.
fn replica(s3: &S3, prefix: &str, config: &str) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy");
    let config = format!("{config}\n[registry]\ncache_dir = {:?}\npoll_interval_ms = 200\n", copy.to_str().unwrap());
    let url = format!("s3://{BUCKET}/{prefix}");
    TestGateway::launch_over(dir, copy, OsStr::new(&url), &config, &s3.env())
}

/// The version that answers one request, 0 on a failure.
async fn served_version(http: &Http, base: &str, body: &serde_json::Value) -> Result<u64, String> {
    let reply = http
        .try_send(
            hyper::Method::POST,
            &format!("{base}/v2/models/tiny/infer"),
            &[("content-type", "application/json".to_owned())],
            serde_json::to_vec(body).unwrap(),
        )
        .await?;
    if reply.status != 200 {
        return Err(format!("status {}: {}", reply.status, String::from_utf8_lossy(&reply.body)));
    }
    reply.header("x-model-version").and_then(|v| v.parse().ok()).ok_or_else(|| "no x-model-version".to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_published_to_the_store_reaches_every_replica_under_load_and_a_half_upload_never_does() {
    let s3 = S3::start();
    let publisher_copy = tempfile::tempdir().unwrap();
    let registry = Registry::mirrored(publisher_copy.path(), s3.remote("publish"));
    let first = registry.publish("tiny", &tiny(1).to_onnx(1), ManifestDraft::default()).unwrap().version;
    registry.set_alias("tiny", "champion", first).unwrap();
    let replicas: Vec<TestGateway> = (0..3).map(|_| replica(&s3, "publish", CHAMPION_ONLY)).collect();

    let http = Http::new(false);
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for (i, gw) in replicas.iter().enumerate() {
        let (http, base, stop) = (http.clone(), gw.base.clone(), Arc::clone(&stop));
        load.push(tokio::spawn(async move {
            let body = tiny_request(&tiny_rows(1, i as u64));
            let (mut versions, mut failures) = (BTreeSet::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match served_version(&http, &base, &body).await {
                    Ok(v) => {
                        versions.insert(v);
                    }
                    Err(e) => failures.push(e),
                }
            }
            (versions, failures)
        }));
    }

    // An uploader that died after the model file: no manifest, so never a version.
    s3.put_raw("publish/tiny/2/model.onnx", &tiny(2).to_onnx(2));
    let next = registry.publish("tiny", &tiny(3).to_onnx(3), ManifestDraft::default()).unwrap().version;
    assert_eq!(next, 3, "the publisher skips the number the half upload holds");
    let published = Instant::now();
    registry.set_alias("tiny", "champion", next).unwrap();
    let mut reached = Vec::new();
    for gw in &replicas {
        let body = tiny_request(&tiny_rows(1, 9));
        let ok =
            wait_until(Duration::from_secs(20), || async { served_version(&http, &gw.base, &body).await == Ok(next) })
                .await;
        assert!(ok, "replica {} still not serving version {next} 20 s after the alias moved", gw.base);
        reached.push(published.elapsed());
    }
    eprintln!("alias moved in the store -> served by all 3 replicas: {reached:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        let (versions, failures) = task.await.unwrap();
        assert!(failures.is_empty(), "{} failed requests, first: {}", failures.len(), failures[0]);
        assert!(!versions.contains(&2), "the half-uploaded version was served");
        assert!(versions.contains(&next), "{versions:?}");
    }
    for gw in &replicas {
        assert!(!gw.repo.join("tiny").join("2").exists(), "the half upload was copied to {}", gw.repo.display());
        let metrics = http.get(&format!("{}/metrics", gw.base)).await;
        let text = String::from_utf8_lossy(&metrics.body);
        assert!(metric_value(&text, "flywheel_registry_syncs_total{result=\"changed\"}") >= 1.0, "{text}");
    }
}

#[test]
fn a_store_that_does_not_answer_with_no_local_copy_stops_the_start_naming_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy");
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, format!("[registry]\ncache_dir = {:?}\n", copy.to_str().unwrap())).unwrap();
    // Nothing listens on port 9 of loopback.
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--config", config.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .args(["--model-repository", "s3://flywheel/nowhere"])
        .envs([
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("AWS_ALLOW_HTTP", "true"),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("s3://flywheel/nowhere") && stderr.contains("no local copy"), "{stderr}");
}
