//! Rollouts decided on labelled quality: canaries that are healthy over HTTP but rank worse are
//! rolled back, equal or better ones are promoted once enough labels arrived, late labels count,
//! and the evidence counts only what the arm is answerable for.

use std::time::{Duration, Instant};

use flywheel_onnx::fixtures::tiny;
use flywheel_registry::{ManifestDraft, Registry};
use serde_json::{Value, json};

use crate::support::{Http, Reply, TestGateway, output_f32, route_of, tiny_request, tiny_rows, wait_until};

fn publish(registry: &Registry, seed: u64) -> u64 {
    registry.publish("tiny", &tiny(seed).to_onnx(seed as i64), ManifestDraft::default()).unwrap().version
}

/// A quality policy with labels required; latency out of reach (a 2-core CI machine's
/// scheduling hiccups are not what these tests are about), margins sized for a few hundred
/// labels.
fn quality_config(steps: &str) -> String {
    format!(
        "controller_interval_ms = 50\n\
         [models.tiny.rollout]\nchampion = \"champion\"\ncanary = {{ version = \"challenger\", weight = 10 }}\n\
         [models.tiny.rollout.policy]\nsteps = {steps}\nmin_dwell_ms = 200\nmin_samples = 30\n\
         max_p99_ratio = 10000.0\nmin_labelled = 150\nmax_auc_drop = 0.1\nmax_log_loss_increase = 0.5\n\
         require_labelled = true\n"
    )
}

fn audit(gw: &TestGateway) -> Vec<Value> {
    let text = std::fs::read_to_string(gw.repo.join("audit.jsonl")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn decided(gw: &TestGateway) -> Option<Value> {
    audit(gw).into_iter().find(|e| e["action"] == "promote" || e["action"] == "roll_back")
}

/// Drives routed traffic whose labels come from `oracle` (a served version, asked explicitly,
/// which never counts as evidence): the label is whether the oracle's score, plus noise, is
/// above the oracle's median. Labels are sent in batches, 40 requests behind their answers, as
/// they arrive in production. Returns the decision's audit entry and the arms that answered.
async fn run_labelled_rollout(gw: &TestGateway, oracle: u64) -> (Value, Vec<String>) {
    let http = Http::new(false);
    let routed = format!("{}/v2/models/tiny/infer", gw.base);
    let explicit = format!("{}/v2/models/tiny/versions/{oracle}/infer", gw.base);
    let feedback = format!("{}/v2/models/tiny/feedback", gw.base);
    let calibration = http.post_json(&explicit, &tiny_request(&tiny_rows(64, 99))).await;
    assert_eq!(calibration.status, 200, "{:?}", calibration.body);
    let mut scores = output_f32(&calibration.json(), 0);
    scores.sort_by(f32::total_cmp);
    let (median, spread) = (scores[32], (scores[51] - scores[13]).max(1e-6));
    let mut rng = fastrand::Rng::with_seed(5);
    let (mut pending, mut arms) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0u64.. {
        if let Some(entry) = decided(gw) {
            return (entry, arms);
        }
        assert!(Instant::now() < deadline, "no decision within 60 s; audit: {:?}", audit(gw));
        let body = tiny_request(&tiny_rows(1, 1000 + i));
        let asked = http.post_json(&explicit, &body).await;
        if asked.status != 200 {
            // The decision unloaded the oracle version: the watcher may apply the moved alias
            // a moment before the controller's audit line is written.
            let logged = wait_until(Duration::from_secs(5), || async { decided(gw).is_some() }).await;
            assert!(logged, "oracle gone without a decision: {:?}", asked.body);
            continue;
        }
        let truth = output_f32(&asked.json(), 0)[0];
        let reply = http.post_json(&routed, &body).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        arms.push(reply.header("x-flywheel-arm").unwrap_or_default().to_owned());
        let noisy = truth + spread * (rng.f32() - 0.5) * 0.5;
        let id = reply.header("x-flywheel-request-id").unwrap().to_owned();
        pending.push(json!({"id": id, "label": f32::from(u8::from(noisy > median))}));
        if pending.len() >= 80 {
            let late: Vec<Value> = pending.drain(..40).collect();
            let stored = http.post_json(&feedback, &json!({"labels": late})).await;
            assert_eq!(stored.status, 200, "{:?}", stored.body);
        }
    }
    unreachable!("the loop returns or fails")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_canary_that_ranks_worse_is_rolled_back_on_labels() {
    let gw = TestGateway::start_registry(&quality_config("[50, 100]"), |r| {
        r.set_alias("tiny", "champion", publish(r, 1)).unwrap();
        r.set_alias("tiny", "challenger", publish(r, 7)).unwrap();
    });
    let (entry, _) = run_labelled_rollout(&gw, 1).await;
    assert_eq!(entry["action"], "roll_back", "{entry}");
    let reason = entry["reason"].as_str().unwrap();
    assert!(reason.starts_with("AUC") && reason.contains("95% interval"), "the AUC interval decided: {reason}");
    let quality = &entry["evidence"]["quality"];
    assert!(quality["candidate_rows"].as_u64().unwrap() >= 150, "{quality}");
    assert!(quality["auc"]["high"].as_f64().unwrap() < -0.1, "{quality}");
    // Errors and latency alone would have passed it.
    assert_eq!(entry["evidence"]["candidate"]["errors"], 0);
    assert!(Registry::open(&gw.repo).resolve("tiny", "challenger").is_err(), "the challenger alias is consumed");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_equal_canary_is_promoted_only_after_min_labelled_and_a_better_one_too() {
    // The same file published again: equal in every respect.
    let gw = TestGateway::start_registry(&quality_config("[20, 50]"), |r| {
        r.set_alias("tiny", "champion", publish(r, 1)).unwrap();
        r.set_alias("tiny", "challenger", publish(r, 1)).unwrap();
    });
    let (entry, _) = run_labelled_rollout(&gw, 1).await;
    assert_eq!(entry["action"], "promote", "{entry}");
    let advance = audit(&gw).into_iter().find(|e| e["action"] == "advance").expect("step 1 passed first");
    for step in [&advance, &entry] {
        let quality = &step["evidence"]["quality"];
        assert!(quality["candidate_rows"].as_u64().unwrap() >= 150, "min_labelled held every step: {step}");
        assert!(step["reason"].as_str().unwrap().contains("AUC"), "{step}");
    }
    drop(gw);

    // A better challenger: the labels follow it, the champion ranks at random.
    let gw = TestGateway::start_registry(&quality_config("[20, 50]"), |r| {
        r.set_alias("tiny", "champion", publish(r, 7)).unwrap();
        r.set_alias("tiny", "challenger", publish(r, 1)).unwrap();
    });
    let (entry, _) = run_labelled_rollout(&gw, 2).await;
    assert_eq!(entry["action"], "promote", "{entry}");
    assert!(entry["evidence"]["quality"]["auc"]["low"].as_f64().unwrap() > 0.0, "{entry}");
    assert_eq!(Registry::open(&gw.repo).resolve("tiny", "champion").ok(), Some(2));
}

/// A key whose requests `arm` answers (found by asking).
async fn key_for(http: &Http, url: &str, arm: &str) -> String {
    for i in 0..200 {
        let key = format!("client-{i}");
        let reply = send_keyed(http, url, &key, &tiny_request(&tiny_rows(1, 1))).await;
        if reply.header("x-flywheel-arm") == Some(arm) {
            return key;
        }
    }
    panic!("no routing key lands on the {arm}");
}

async fn send_keyed(http: &Http, url: &str, key: &str, body: &Value) -> Reply {
    let headers = [("content-type", "application/json".to_owned()), ("x-routing-key", key.to_owned())];
    http.send(hyper::Method::POST, url, &headers, serde_json::to_vec(body).unwrap()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_sending_garbage_on_a_sticky_canary_key_never_rolls_it_back() {
    // No labels in this test: health decides, and client errors are not the canary's.
    let config = "controller_interval_ms = 50\n\
         [models.tiny.rollout]\nchampion = \"champion\"\ncanary = { version = \"challenger\", weight = 50 }\n\
         [models.tiny.rollout.policy]\nsteps = [50]\nmin_dwell_ms = 200\nmin_samples = 30\nmax_p99_ratio = 10000.0\n";
    let gw = TestGateway::start_registry(config, |r| {
        r.set_alias("tiny", "champion", publish(r, 1)).unwrap();
        r.set_alias("tiny", "challenger", publish(r, 2)).unwrap();
    });
    let http = Http::new(false);
    let url = format!("{}/v2/models/tiny/infer", gw.base);
    let key = key_for(&http, &url, "canary").await;
    let garbage = json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]});
    let deadline = Instant::now() + Duration::from_secs(30);
    while decided(&gw).is_none() && Instant::now() < deadline {
        for _ in 0..5 {
            let bad = send_keyed(&http, &url, &key, &garbage).await;
            assert_eq!(bad.status, 400);
            if bad.header("x-flywheel-arm") != Some("canary") {
                // The watcher may route the moved alias a moment before the audit line is written.
                let promoted = wait_until(Duration::from_secs(5), || async { decided(&gw).is_some() }).await;
                assert!(promoted, "the key leaves the canary only once it is promoted");
                break;
            }
        }
        let good = http.post_json(&url, &tiny_request(&tiny_rows(1, 3))).await;
        assert_eq!(good.status, 200);
    }
    let entry = decided(&gw).expect("a decision");
    assert_eq!(entry["action"], "promote", "{entry}");
    let candidate = &entry["evidence"]["candidate"];
    assert_eq!(candidate["errors"], 0, "{candidate}");
    assert!(candidate["client_errors"].as_u64().unwrap() >= 30, "counted beside, not against: {candidate}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shadow_that_is_also_the_canary_is_compared_on_champion_answers_only_and_never_refuses_one() {
    // Version 2 is both canary and shadow: slow (16→2048→2048→1) with a 2-deep queue, so
    // mirrored requests pile up on it. Its client lane has its own room.
    let config = "[models.tiny]\nqueue_capacity = 2\n\
         [models.tiny.rollout]\nchampion = \"champion\"\ncanary = { version = \"challenger\", weight = 30 }\n\
         shadow = { version = \"challenger\", fraction = 1.0, max_in_flight = 64 }\n";
    let gw = TestGateway::start_registry(config, |r| {
        r.set_alias("tiny", "champion", publish(r, 1)).unwrap();
        let slow = flywheel_onnx::Mlp::random(&[16, 2048, 2048, 1], 5);
        let v = r.publish("tiny", &slow.to_onnx(1), ManifestDraft::default()).unwrap().version;
        r.set_alias("tiny", "challenger", v).unwrap();
    });
    let http = Http::new(false);
    let url = format!("{}/v2/models/tiny/infer", gw.base);
    let (key, champion_key) = (key_for(&http, &url, "canary").await, key_for(&http, &url, "champion").await);
    // A flood of champion traffic mirrored to the slow shadow, beside one client on the canary.
    let flood: Vec<_> = (0..2)
        .map(|t| {
            let (http, url, key) = (http.clone(), url.clone(), champion_key.clone());
            tokio::spawn(async move {
                for i in 0..100 {
                    let reply = send_keyed(&http, &url, &key, &tiny_request(&tiny_rows(4, t * 100 + i))).await;
                    assert_eq!(
                        reply.status, 200,
                        "a champion request is never refused for the shadow: {:?}",
                        reply.body
                    );
                }
            })
        })
        .collect();
    let mut canary = 0;
    while flood.iter().any(|t| !t.is_finished()) {
        let reply = send_keyed(&http, &url, &key, &tiny_request(&tiny_rows(1, 7))).await;
        assert_eq!(reply.status, 200, "the canary's client lane is never filled by shadows: {:?}", reply.body);
        canary += 1;
    }
    for t in flood {
        t.await.unwrap();
    }
    assert!(canary > 0);
    let metrics = String::from_utf8(http.get(&format!("{}/metrics", gw.base)).await.body.to_vec()).unwrap();
    let champion_answers =
        crate::support::metric_value(&metrics, "flywheel_arm_requests_total{model=\"tiny\",arm=\"champion\"}") as u64;
    assert!(metrics.contains("outcome=\"dropped_queue\""), "the shadow lane overflowed: {metrics}");
    // Every pair is a champion answer (canary answers are never mirrored to themselves).
    let settled = wait_until(Duration::from_secs(30), || async {
        let shadow = &route_of(&http, &gw.base, "tiny").await["evidence"]["shadow"];
        // One primary record per mirrored request (pairs count output elements).
        let mirrored = shadow["primary"]["requests"].as_u64().unwrap_or(0);
        let metrics = String::from_utf8(http.get(&format!("{}/metrics", gw.base)).await.body.to_vec()).unwrap();
        let dropped: u64 = metrics
            .lines()
            .filter(|l| l.starts_with("flywheel_shadow_requests_total") && l.contains("dropped"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        mirrored + dropped == champion_answers
    })
    .await;
    assert!(settled, "mirrored + dropped = champion answers ({champion_answers}), none of the canary's");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_promotion_that_lost_the_race_to_a_rollback_is_a_conflict_and_changes_nothing() {
    let config = "[models.tiny.rollout]\nchampion = \"champion\"\ncanary = { version = \"challenger\", weight = 50 }\n";
    let gw = TestGateway::start_registry(config, |r| {
        r.set_alias("tiny", "champion", publish(r, 1)).unwrap();
        r.set_alias("tiny", "challenger", publish(r, 2)).unwrap();
    });
    let http = Http::new(false);
    let (rollback_url, promote_url) =
        (format!("{}/admin/models/tiny/rollback", gw.base), format!("{}/admin/models/tiny/promote", gw.base));
    // Both operators looked at the same route (champion 1, canary 2); the rollback lands first.
    let (a, b) = (json!({"reason": "operator A", "version": 2}), json!({"reason": "operator B", "version": 2}));
    let (rollback, promote) = tokio::join!(http.post_json(&rollback_url, &a), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        http.post_json(&promote_url, &b).await
    });
    assert_eq!(rollback.status, 200, "{:?}", rollback.body);
    assert_eq!(promote.status, 409, "{:?}", promote.body);
    let error = promote.json()["error"].as_str().unwrap().to_owned();
    assert!(error.contains("version 2 of 'tiny' was rolled back"), "{error}");
    let registry = Registry::open(&gw.repo);
    assert_eq!(registry.resolve("tiny", "champion").ok(), Some(1), "the champion never moved");
    assert!(registry.resolve("tiny", "challenger").is_err(), "the rollback consumed the alias");
    let log = audit(&gw);
    let actions: Vec<&str> =
        log.iter().filter(|e| e["actor"] == "admin").map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["roll_back", "promote_conflict"], "{log:?}");
    // The rejection is of version 2 only: the next candidate routes.
    registry.set_alias("tiny", "challenger", publish(&registry, 3)).unwrap();
    let routed = wait_until(Duration::from_secs(10), || async {
        route_of(&http, &gw.base, "tiny").await["canary"]["version"] == 3
    })
    .await;
    assert!(routed, "the new candidate routes");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_killed_mid_rollout_resumes_the_same_step_and_never_routes_a_rejected_version() {
    // Steps 10 -> 50 -> 100 with a dwell long enough that the test sees step 50 and kills the
    // gateway there.
    let config = "controller_interval_ms = 50\n\
         [models.tiny.rollout]\nchampion = \"champion\"\ncanary = { version = \"challenger\", weight = 10 }\n\
         [models.tiny.rollout.policy]\nsteps = [10, 50, 100]\nmin_dwell_ms = 300\nmin_samples = 20\n\
         max_p99_ratio = 10000.0\n";
    let mut gw = TestGateway::start_registry(config, |r| {
        r.set_alias("tiny", "champion", publish(r, 1)).unwrap();
        r.set_alias("tiny", "challenger", publish(r, 2)).unwrap();
    });
    let http = Http::new(false);
    let registry = Registry::open(&gw.repo);
    // An operator rolls version 2 back; the trainer's next candidate, version 3, walks on.
    let rollback = http.post_json(&format!("{}/admin/models/tiny/rollback", gw.base), &json!({"version": 2})).await;
    assert_eq!(rollback.status, 200, "{:?}", rollback.body);
    registry.set_alias("tiny", "challenger", publish(&registry, 3)).unwrap();
    let url = format!("{}/v2/models/tiny/infer", gw.base);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !audit(&gw).iter().any(|e| e["action"] == "advance") {
        assert!(Instant::now() < deadline, "no step passed; audit: {:?}", audit(&gw));
        assert_eq!(http.post_json(&url, &tiny_request(&tiny_rows(1, 3))).await.status, 200);
    }
    // The audit line is written just before the reload that applies the step.
    let at_50 = wait_until(Duration::from_secs(5), || async {
        route_of(&http, &gw.base, "tiny").await["canary"] == json!({"version": 3, "weight": 50})
    })
    .await;
    assert!(at_50, "step 50 routes: {}", route_of(&http, &gw.base, "tiny").await);
    // kill -9 at step 50, then a new process over the same registry and config.
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    let (_restarted, base) = crate::support::restart_over(&gw.config_path, &gw.repo);
    let route = route_of(&http, &base, "tiny").await;
    assert_eq!(
        route["canary"],
        json!({"version": 3, "weight": 50}),
        "resumed at step 50, not the config's 10: {route}"
    );
    // The rejected version stays rejected in the new process, even if an alias names it again.
    registry.set_alias("tiny", "challenger", 2).unwrap();
    let dropped =
        wait_until(Duration::from_secs(10), || async { route_of(&http, &base, "tiny").await["canary"].is_null() })
            .await;
    assert!(dropped, "version 2 is not routed again: {}", route_of(&http, &base, "tiny").await);
    let state = registry.rollout_state("tiny").unwrap();
    assert!(state.rejected.contains(&2), "{state:?}");
}

/// A classifier shaped as skl2onnx exports one (without ZipMap): `label` INT64 `[N]` and
/// `probabilities` FP32 `[N, 2]`, p = sigmoid(x · w) with w = (0.5, 0, ..., 0).
fn sklearn_shaped() -> Vec<u8> {
    use flywheel_onnx::{Attr, Dim, ElemType, GraphBuilder};
    let mut g = GraphBuilder::new("sklearn_shaped");
    g.input("input", ElemType::Float, &[Dim::batch(), Dim::Fixed(16)]);
    g.output("label", ElemType::Int64, &[Dim::batch()]);
    g.output("probabilities", ElemType::Float, &[Dim::batch(), Dim::Fixed(2)]);
    let mut w = vec![0.0f32; 16];
    w[0] = 0.5;
    g.initializer_f32("w", &[16, 1], &w);
    g.initializer_f32("one", &[1], &[1.0]);
    g.node("MatMul", &["input", "w"], &["logit"], &[]);
    g.node("Sigmoid", &["logit"], &["p"], &[]);
    g.node("Sub", &["one", "p"], &["q"], &[]);
    g.node("Concat", &["q", "p"], &["probabilities"], &[("axis", Attr::Int(1))]);
    g.node("ArgMax", &["probabilities"], &["label"], &[("axis", Attr::Int(1)), ("keepdims", Attr::Int(0))]);
    g.encode(1)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scikit_learn_shaped_classifier_is_scored_on_its_positive_class_probability() {
    let gw = TestGateway::start_registry("[sampling]\nrate = 1.0\n", |r| {
        r.publish("clf", &sklearn_shaped(), ManifestDraft::default()).unwrap();
    });
    let http = Http::new(false);
    let routing = crate::support::routing(&http, &gw.base).await;
    let model = routing["models"].as_array().unwrap().iter().find(|m| m["name"] == "clf").unwrap().clone();
    assert_eq!(
        model["versions"][0]["score"],
        json!({"output": "probabilities", "column": 1, "threshold": 0.5, "task": "classifier", "chosen_by": "default"}),
        "the admin API shows the choice"
    );
    // x0 = 2: p = sigmoid(1) = 0.731; the label says positive.
    let mut row = vec![0.0f32; 16];
    row[0] = 2.0;
    let reply = http.post_json(&format!("{}/v2/models/clf/infer", gw.base), &tiny_request(&row)).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let id = reply.header("x-flywheel-request-id").unwrap().to_owned();
    let feedback = http.post_json(&format!("{}/v2/models/clf/feedback", gw.base), &json!({"id": id, "label": 1})).await;
    assert_eq!(feedback.status, 200);
    let expected = -(1.0f64 / (1.0 + (-1.0f64).exp())).ln();
    let scored = wait_until(Duration::from_secs(5), || async {
        let metrics = String::from_utf8(http.get(&format!("{}/metrics", gw.base)).await.body.to_vec()).unwrap();
        let loss = metrics
            .lines()
            .filter(|l| l.starts_with("flywheel_quality{model=\"clf\"") && l.contains("measure=\"log_loss\""))
            .find_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        loss.is_some_and(|loss| (loss - expected).abs() < 1e-4)
    })
    .await;
    let metrics = String::from_utf8(http.get(&format!("{}/metrics", gw.base)).await.body.to_vec()).unwrap();
    let lines: Vec<&str> = metrics.lines().filter(|l| l.starts_with("flywheel_quality")).collect();
    assert!(scored, "log loss of p = 0.731 for a positive ({expected:.4}), not of the 0/1 label: {lines:?}");
}
