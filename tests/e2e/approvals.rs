//! Approvals: a rollout policy that wants a human holds the candidate once its evidence passed,
//! until a credential with the `approve` role approves (the controller proceeds) or rejects
//! (rolled back); a credential without the role gets 403, and every action is audited with the
//! credential's name.

use std::time::{Duration, Instant};

use flywheel_onnx::fixtures::tiny;
use flywheel_registry::{ManifestDraft, Registry};
use hyper::Method;
use serde_json::{Value, json};

use crate::support::{Http, Reply, TestGateway, tiny_request, tiny_rows};

const OPERATOR: &str = "operator-token-0001";
const APPROVER: &str = "approver-token-0001";

fn config(require_approval: &str) -> String {
    format!(
        "controller_interval_ms = 50\n\
         [[credentials]]\nname = \"alice\"\ntoken = \"{OPERATOR}\"\nroles = [\"read\", \"operate\"]\n\
         [[credentials]]\nname = \"bob\"\ntoken = \"{APPROVER}\"\nroles = [\"read\", \"approve\"]\n\
         [models.tiny.rollout]\nchampion = \"champion\"\ncanary = {{ version = \"challenger\", weight = 10 }}\n\
         [models.tiny.rollout.policy]\nsteps = [50, 100]\nmin_dwell_ms = 300\nmin_samples = 30\n\
         max_p99_ratio = 10000.0\nrequire_approval = \"{require_approval}\"\n"
    )
}

fn start(require_approval: &str) -> (TestGateway, Http) {
    let gw = TestGateway::start_registry(&config(require_approval), |r| {
        for (alias, seed) in [("champion", 1), ("challenger", 2)] {
            let v = r.publish("tiny", &tiny(seed).to_onnx(seed as i64), ManifestDraft::default()).unwrap().version;
            r.set_alias("tiny", alias, v).unwrap();
        }
    });
    (gw, Http::new(false))
}

async fn admin(http: &Http, gw: &TestGateway, token: &str, action: &str, body: Value) -> Reply {
    let url = format!("{}/admin/models/tiny/{action}", gw.base);
    let auth = [("authorization", format!("Bearer {token}"))];
    http.send(Method::POST, &url, &auth, serde_json::to_vec(&body).unwrap()).await
}

async fn route(http: &Http, gw: &TestGateway) -> Value {
    let auth = [("authorization", format!("Bearer {APPROVER}"))];
    let all = http.send(Method::GET, &format!("{}/admin/routing", gw.base), &auth, vec![]).await.json();
    all["models"].as_array().unwrap().iter().find(|m| m["name"] == "tiny").cloned().unwrap()
}

/// Serves traffic (every answer a 200) until `done` holds of the route, at most 30 s.
async fn serve_until(http: &Http, gw: &TestGateway, done: impl Fn(&Value) -> bool) -> Value {
    let url = format!("{}/v2/models/tiny/infer", gw.base);
    let body = tiny_request(&tiny_rows(1, 3));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for _ in 0..20 {
            assert_eq!(http.post_json(&url, &body).await.status, 200);
        }
        let route = route(http, gw).await;
        if done(&route) {
            return route;
        }
        assert!(Instant::now() < deadline, "route never got there: {route}");
    }
}

fn audit(gw: &TestGateway) -> Vec<Value> {
    let text = std::fs::read_to_string(gw.repo.join("audit.jsonl")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rollout_holds_for_an_approver_and_promotes_once_approved() {
    let (gw, http) = start("promote");
    let held = serve_until(&http, &gw, |r| !r["awaiting_approval"].is_null()).await;
    assert_eq!(held["awaiting_approval"]["step"], 1, "held before leaving the last step: {held}");
    assert_eq!(held["awaiting_approval"]["next"], "promoting version 2");
    assert!(held["awaiting_approval"]["evidence"]["candidate"]["requests"].as_u64().unwrap() >= 30);
    // It holds: more traffic, more ticks, no promotion.
    let still = serve_until(&http, &gw, |_| true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!((still["champion"].as_u64(), route(&http, &gw).await["champion"].as_u64()), (Some(1), Some(1)));
    assert_eq!(Registry::open(&gw.repo).resolve("tiny", "champion").unwrap(), 1);

    // An operator may not approve, nor promote by hand under this policy.
    for action in ["approve", "promote", "reject"] {
        let refused = admin(&http, &gw, OPERATOR, action, json!({"version": 2})).await;
        assert_eq!(refused.status, 403, "{action}: {:?}", refused.body);
        let error = refused.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains("alice") && error.contains("approve"), "{error}");
    }
    // An approval names the candidate; approving another step than the one held is a conflict.
    let unnamed = admin(&http, &gw, APPROVER, "approve", json!({})).await;
    assert_eq!(unnamed.status, 400, "{:?}", unnamed.body);
    let wrong = admin(&http, &gw, APPROVER, "approve", json!({"version": 2, "step": 0})).await;
    assert_eq!(wrong.status, 409, "{:?}", wrong.body);
    assert!(wrong.json()["error"].as_str().unwrap().contains("awaits approval of step 1, not 0"));
    let ok = admin(&http, &gw, APPROVER, "approve", json!({"version": 2, "comment": "reviewed the evidence"})).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);

    let promoted = serve_until(&http, &gw, |r| r["champion"] == 2).await;
    assert!(promoted["awaiting_approval"].is_null() && promoted["canary"].is_null(), "{promoted}");
    let log = audit(&gw);
    let find = |action: &str| log.iter().find(|e| e["action"] == action).cloned().unwrap_or(Value::Null);
    assert_eq!(find("await_approval")["actor"], "controller", "{log:?}");
    let approve = find("approve");
    assert_eq!((approve["credential"].as_str(), approve["to"].as_u64()), (Some("bob"), Some(2)), "{approve}");
    assert!(approve["reason"].as_str().unwrap().contains("reviewed the evidence"), "{approve}");
    assert_eq!(find("approve_conflict")["credential"], "bob");
    let promote = find("promote");
    assert_eq!((promote["actor"].as_str(), promote["credential"].as_str()), (Some("controller"), Some("bob")));
    assert!(promote["reason"].as_str().unwrap().contains("approved by bob"), "{promote}");
    assert_eq!(promote["evidence"]["approval"]["credential"], "bob");
    let by_alice: Vec<&Value> = log.iter().filter(|e| e["credential"] == "alice").collect();
    assert!(by_alice.is_empty(), "a refused (403) call changed nothing and wrote nothing: {by_alice:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_rolls_a_held_candidate_back_and_nothing_awaits_before_the_evidence_passed() {
    let (gw, http) = start("each_step");
    let early = admin(&http, &gw, APPROVER, "approve", json!({"version": 2})).await;
    assert_eq!(early.status, 409, "{:?}", early.body);
    assert!(early.json()["error"].as_str().unwrap().contains("does not await approval"));
    let held = serve_until(&http, &gw, |r| !r["awaiting_approval"].is_null()).await;
    assert_eq!(held["awaiting_approval"]["step"], 0, "each step waits: {held}");
    assert_eq!(held["awaiting_approval"]["next"], "canary weight 50% -> 100%");
    assert_eq!(held["canary"]["weight"], 50, "the held step keeps its weight");
    // An operator cannot walk it up by hand (lowering stays an operator's call).
    let raised = admin(&http, &gw, OPERATOR, "weight", json!({"weight": 100})).await;
    assert_eq!(raised.status, 403, "{:?}", raised.body);
    assert!(raised.json()["error"].as_str().unwrap().contains("'approve' role"));
    let lowered = admin(&http, &gw, OPERATOR, "weight", json!({"weight": 40})).await;
    assert_eq!(lowered.status, 200, "{:?}", lowered.body);
    let rejected = admin(&http, &gw, APPROVER, "reject", json!({"version": 2, "reason": "not this quarter"})).await;
    assert_eq!(rejected.status, 200, "{:?}", rejected.body);
    let after = serve_until(&http, &gw, |r| r["canary"].is_null()).await;
    assert_eq!(after["champion"], 1);
    assert!(Registry::open(&gw.repo).resolve("tiny", "challenger").is_err(), "the challenger alias is consumed");
    let log = audit(&gw);
    let rollback = log.iter().find(|e| e["action"] == "roll_back").unwrap();
    assert_eq!((rollback["actor"].as_str(), rollback["credential"].as_str()), (Some("admin"), Some("bob")));
    assert!(rollback["reason"].as_str().unwrap().contains("rejected by approver bob: not this quarter"), "{rollback}");
}
