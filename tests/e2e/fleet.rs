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
pub fn replica(s3: &S3, prefix: &str, config: &str) -> TestGateway {
    replica_on(s3, prefix, config, "127.0.0.1:0")
}

/// Like [`replica`], listening on `listen`.
pub fn replica_on(s3: &S3, prefix: &str, config: &str, listen: &str) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy");
    let config = format!("{config}\n[registry]\ncache_dir = {:?}\npoll_interval_ms = 200\n", copy.to_str().unwrap());
    let url = format!("s3://{BUCKET}/{prefix}");
    TestGateway::launch_over(dir, copy, OsStr::new(&url), &config, &s3.env(), listen)
}

/// The version that answers one request, 0 on a failure.
pub async fn served_version(http: &Http, base: &str, body: &serde_json::Value) -> Result<u64, String> {
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
        // No alias names 2: the check that the half upload never reached a copy is below.
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

/// The lease holder and term of `model` in the store.
fn lease_of(remote: &flywheel_registry::Remote, model: &str) -> Option<(String, u64)> {
    let bytes = remote.get_object(&[model, "controller-lease.json"]).unwrap()?;
    let lease: flywheel_registry::Lease = serde_json::from_slice(&bytes).unwrap();
    Some((lease.holder, lease.term))
}

fn audit_of(gw: &TestGateway) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(gw.repo.join("audit.jsonl")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_controllers_replica_mid_rollout_moves_the_lease_and_the_next_holder_finishes_it() {
    let s3 = S3::start();
    let remote = s3.remote("failover");
    let publisher_copy = tempfile::tempdir().unwrap();
    let registry = Registry::mirrored(publisher_copy.path(), std::sync::Arc::clone(&remote));
    let champion = registry.publish("tiny", &tiny(1).to_onnx(1), ManifestDraft::default()).unwrap().version;
    let candidate = registry.publish("tiny", &tiny(2).to_onnx(2), ManifestDraft::default()).unwrap().version;
    registry.set_alias("tiny", "champion", champion).unwrap();
    registry.set_alias("tiny", "challenger", candidate).unwrap();
    // Latency is not what this is about (a loaded CI machine), so p99 is out of reach.
    let policy = "controller_interval_ms = 100\n[models.tiny.rollout]\nchampion = \"champion\"\n\
                  canary = { version = \"challenger\", weight = 10 }\n\
                  [models.tiny.rollout.policy]\nsteps = [10, 50, 100]\nmin_dwell_ms = 2500\nmin_samples = 30\n\
                  max_p99_ratio = 10000.0\n";
    let mut replicas: Vec<TestGateway> = (0..3)
        .map(|i| replica(&s3, "failover", &format!("{policy}[fleet]\nreplica = \"r{i}\"\nlease_ttl_ms = 2000\n")))
        .collect();
    let live = Arc::new(std::sync::Mutex::new(replicas.iter().map(|g| g.base.clone()).collect::<Vec<_>>()));
    let stop = Arc::new(AtomicBool::new(false));
    let http = Http::new(false);
    let load = {
        let (http, live, stop) = (http.clone(), Arc::clone(&live), Arc::clone(&stop));
        tokio::spawn(async move {
            let body = tiny_request(&tiny_rows(1, 5));
            let mut failures = Vec::new();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let base = {
                    let live = live.lock().unwrap();
                    live[i % live.len()].clone()
                };
                i += 1;
                if let Err(e) = served_version(&http, &base, &body).await {
                    failures.push(format!("{base}: {e}"));
                }
            }
            failures
        })
    };

    // Mid-rollout: the first step passed and is in the store.
    let mid = wait_until(Duration::from_secs(30), || async {
        remote.rollout_state("tiny").unwrap().step.is_some_and(|s| s.candidate == candidate && s.step >= 1)
    })
    .await;
    assert!(mid, "the rollout never passed its first step");
    let (leader, term) = lease_of(&remote, "tiny").expect("a lease holder");
    let index: usize = leader.strip_prefix('r').unwrap().parse().unwrap();
    // The holder writes the step to the store, then its audit line (fsynced): kill it once both
    // are down, not after a fixed pause a loaded machine can outlast.
    let logged = wait_until(Duration::from_secs(10), || async {
        audit_of(&replicas[index]).iter().any(|e| e["actor"] == "controller" && e["action"] == "advance")
    })
    .await;
    assert!(logged, "the holder never audited the step it passed");
    live.lock().unwrap().retain(|b| *b != replicas[index].base);
    tokio::time::sleep(Duration::from_millis(100)).await;
    replicas[index].child.kill().unwrap();
    let killed = Instant::now();

    let promoted =
        wait_until(Duration::from_secs(30), || async { remote.resolve("tiny", "champion").ok() == Some(candidate) })
            .await;
    stop.store(true, Ordering::Relaxed);
    let failures = load.await.unwrap();
    let (next, next_term) = lease_of(&remote, "tiny").expect("a lease holder");
    eprintln!(
        "killed {leader} (term {term}); {next} took term {next_term}; promoted {:?} after the kill",
        killed.elapsed()
    );
    assert!(promoted, "the rollout was not finished after the controller's replica died");
    assert!(next != leader && next_term > term, "{next} {next_term}");
    assert!(failures.is_empty(), "{} failed requests on live replicas, first: {}", failures.len(), failures[0]);

    let old_log = audit_of(&replicas[index]);
    let new_index: usize = next.strip_prefix('r').unwrap().parse().unwrap();
    // The audit line follows the alias move.
    let audited = wait_until(Duration::from_secs(5), || async {
        audit_of(&replicas[new_index]).iter().any(|e| e["action"] == "promote")
    })
    .await;
    assert!(audited, "no promote in {next}'s audit log");
    let new_log = audit_of(&replicas[new_index]);
    let of = |log: &[serde_json::Value], action: &str| {
        log.iter().filter(|e| e["actor"] == "controller" && e["action"] == action).cloned().collect::<Vec<_>>()
    };
    let first_advance = of(&old_log, "advance");
    assert!(!first_advance.is_empty() && first_advance.iter().all(|e| e["replica"] == leader), "{old_log:?}");
    let promote = of(&new_log, "promote");
    assert!(promote.len() == 1 && promote[0]["replica"] == next, "{new_log:?}");
    let third = 3 - index - new_index;
    assert!(of(&audit_of(&replicas[third]), "promote").is_empty(), "only the holder decides");
    // The new holder resumed from the persisted step: it never judged the 10% step again.
    for advance in of(&new_log, "advance") {
        let reason = advance["reason"].as_str().unwrap();
        assert!(!reason.contains("10% -> 50%"), "step 0 judged again: {reason}");
    }
    assert!(promote[0]["evidence"]["candidate"]["requests"].as_u64().unwrap() >= 30, "{}", promote[0]);
    // The fleet's audit in the store holds both holders' decisions.
    let both = wait_until(Duration::from_secs(5), || async {
        let lines: Vec<serde_json::Value> = remote
            .read_objects(&[".audit"])
            .unwrap()
            .into_iter()
            .map(|(_, bytes)| serde_json::from_slice(&bytes).unwrap())
            .collect();
        let by = |replica: &str, action: &str| lines.iter().any(|e| e["replica"] == replica && e["action"] == action);
        by(&leader, "advance") && by(&next, "promote")
    })
    .await;
    assert!(both, "the store's audit does not show both holders' decisions");
    // Every replica shared its evidence with the fleet.
    let files: BTreeSet<String> =
        remote.read_objects(&["tiny", "evidence"]).unwrap().into_iter().map(|(name, _)| name).collect();
    assert_eq!(files, ["r0.json", "r1.json", "r2.json"].map(String::from).into(), "{files:?}");
}

#[test]
fn a_second_gateway_on_the_same_local_copy_refuses_to_start() {
    let s3 = S3::start();
    let publisher_copy = tempfile::tempdir().unwrap();
    let registry = Registry::mirrored(publisher_copy.path(), s3.remote("shared-copy"));
    registry.publish("tiny", &tiny(1).to_onnx(1), ManifestDraft::default()).unwrap();
    let first = replica(&s3, "shared-copy", "");
    let config = first.config_path.to_str().unwrap().to_owned();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--config", &config, "--listen", "127.0.0.1:0"])
        .args(["--model-repository", &format!("s3://{BUCKET}/shared-copy")])
        .envs(s3.env())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("in use by another gateway") && stderr.contains("cache_dir"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_label_posted_to_another_replica_joins_the_evidence_of_the_replica_that_answered() {
    let s3 = S3::start();
    let publisher_copy = tempfile::tempdir().unwrap();
    let registry = Registry::mirrored(publisher_copy.path(), s3.remote("relay"));
    let champion = registry.publish("tiny", &tiny(1).to_onnx(1), ManifestDraft::default()).unwrap().version;
    let candidate = registry.publish("tiny", &tiny(2).to_onnx(2), ManifestDraft::default()).unwrap().version;
    registry.set_alias("tiny", "champion", champion).unwrap();
    registry.set_alias("tiny", "challenger", candidate).unwrap();
    // A rollout that never decides here: only its evidence is looked at.
    let config = "[models.tiny.rollout]\nchampion = \"champion\"\ncanary = { version = \"challenger\", weight = 50 }\n\
                  [models.tiny.rollout.policy]\nsteps = [50, 100]\nmin_dwell_ms = 600000\n";
    let (a, b) = (
        replica(&s3, "relay", &format!("{config}[fleet]\nreplica = \"a\"\n")),
        replica(&s3, "relay", &format!("{config}[fleet]\nreplica = \"b\"\n")),
    );
    let http = Http::new(false);
    let mut ids = Vec::new();
    for i in 0..40u64 {
        let reply = http.post_json(&format!("{}/v2/models/tiny/infer", a.base), &tiny_request(&tiny_rows(1, i))).await;
        assert_eq!(reply.status, 200);
        ids.push(reply.header("x-flywheel-request-id").unwrap().to_owned());
    }
    let labels: Vec<serde_json::Value> =
        ids.iter().enumerate().map(|(i, id)| serde_json::json!({"id": id, "label": (i % 2) as f64})).collect();
    let posted =
        http.post_json(&format!("{}/v2/models/tiny/feedback", b.base), &serde_json::json!({"labels": labels})).await;
    assert_eq!(posted.status, 200, "{}", String::from_utf8_lossy(&posted.body));
    let labelled = |route: serde_json::Value| {
        let l = &route["evidence"]["labelled"];
        l["champion"].as_u64().unwrap_or(0) + l["canary"].as_u64().unwrap_or(0)
    };
    let joined = wait_until(Duration::from_secs(15), || async {
        labelled(crate::support::route_of(&http, &a.base, "tiny").await) == 40
    })
    .await;
    let on_a = labelled(crate::support::route_of(&http, &a.base, "tiny").await);
    assert!(joined, "the replica that answered joined {on_a} of the 40 labels posted to the other");
    assert_eq!(labelled(crate::support::route_of(&http, &b.base, "tiny").await), 0, "b answered none of them");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_trainers_runs_in_the_store_show_on_every_replica() {
    let s3 = S3::start();
    let remote = s3.remote("runs");
    let publisher_copy = tempfile::tempdir().unwrap();
    let registry = Registry::mirrored(publisher_copy.path(), std::sync::Arc::clone(&remote));
    registry.publish("tiny", &tiny(1).to_onnx(1), ManifestDraft::default()).unwrap();
    let gw = replica(&s3, "runs", "");
    // What `trainer run --registry s3://...` puts (tests/python/test_fleet_store.py checks that).
    let record = serde_json::json!({"model": "tiny", "outcome": "rejected", "time": "t"});
    let name = format!("{:013}-trainer-000000.json", flywheel_registry::now_ms());
    remote.put_object(&["tiny", "trainer-runs", &name], serde_json::to_vec(&record).unwrap()).unwrap();
    let http = Http::new(false);
    let shown = wait_until(Duration::from_secs(10), || async {
        let runs = http.get(&format!("{}/admin/runs/tiny", gw.base)).await.json();
        runs["runs"].as_array().is_some_and(|r| r.len() == 1 && r[0]["outcome"] == "rejected")
    })
    .await;
    assert!(shown, "{}", http.get(&format!("{}/admin/runs/tiny", gw.base)).await.json());
}
