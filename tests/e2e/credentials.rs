//! Credentials: a gateway reachable from other hosts does not start without tokens, labels
//! need the feedback token once one is configured, and named credentials get their roles (the
//! audit names the one that acted).

use std::process::{Command, Stdio};

use hyper::Method;
use serde_json::json;

use crate::support::{Http, TestGateway};

#[test]
fn listening_on_every_interface_without_tokens_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let repo = crate::support::model_repo(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--listen", "0.0.0.0:0", "--model-repository"])
        .arg(&repo)
        .env_remove("FLYWHEEL_ADMIN_TOKEN")
        .env_remove("FLYWHEEL_FEEDBACK_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "refused as a config error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("admin_token and feedback_token must be set"), "{stderr}");
    assert!(stderr.contains("insecure_allow_unauthenticated"), "names the opt-out: {stderr}");
    assert!(out.stdout.is_empty(), "it never listened");
}

#[tokio::test(flavor = "multi_thread")]
async fn labels_need_the_feedback_token_once_one_is_set() {
    let gw = TestGateway::start(
        "feedback_token = \"labels-labels-labels\"\nadmin_token = \"admin-admin-admin-admin\"\n[sampling]\nrate = 1.0\n",
    );
    let http = Http::new(false);
    let url = format!("{}/v2/models/tiny/feedback", gw.base);
    let body = serde_json::to_vec(&json!({"labels": [{"id": "r1", "label": 1.0}]})).unwrap();
    let send = |auth: Option<&str>| {
        let headers: Vec<(&str, String)> = auth.map(|a| ("authorization", format!("Bearer {a}"))).into_iter().collect();
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        async move { http.send(Method::POST, &url, &headers, body).await }
    };
    let missing = send(None).await;
    assert_eq!(missing.status, 401);
    assert!(missing.json()["error"].as_str().unwrap().contains("feedback_token"));
    assert_eq!(send(Some("wrong-wrong-wrong-wrong")).await.status, 401);
    let ok = send(Some("labels-labels-labels")).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(send(Some("admin-admin-admin-admin")).await.status, 200, "the admin token writes labels too");
    let admin = http.get(&format!("{}/admin/routing", gw.base)).await;
    assert_eq!(admin.status, 401, "the feedback token is not an admin credential");
    let with_label = http
        .send(
            Method::GET,
            &format!("{}/admin/routing", gw.base),
            &[("authorization", "Bearer labels-labels-labels".into())],
            vec![],
        )
        .await;
    assert_eq!(with_label.status, 403, "known, but without the read role");
    assert!(with_label.json()["error"].as_str().unwrap().contains("'feedback' lacks the 'read' role"));
}

#[tokio::test(flavor = "multi_thread")]
async fn labels_join_on_the_gateway_id_so_a_reused_client_id_relabels_nothing() {
    let gw = TestGateway::start("[sampling]\nrate = 1.0\n");
    let http = Http::new(false);
    let url = format!("{}/v2/models/tiny/infer", gw.base);
    let body = serde_json::to_vec(&crate::support::tiny_request(&[0.1; 16])).unwrap();
    let mut gateway_ids = Vec::new();
    for _ in 0..2 {
        // Two clients that happen to pick the same id.
        let reply = http.send(Method::POST, &url, &[("x-request-id", "order-42".into())], body.clone()).await;
        assert_eq!(reply.header("x-request-id"), Some("order-42"), "the client's id is echoed");
        let own = reply.header("x-flywheel-request-id").unwrap().to_owned();
        assert_eq!(own.len(), 32);
        gateway_ids.push(own);
    }
    assert_ne!(gateway_ids[0], gateway_ids[1], "each request has its own join id");
    // The tap has taken both predictions in before their labels arrive.
    let metrics_url = format!("{}/metrics", gw.base);
    let tapped = crate::support::wait_until(std::time::Duration::from_secs(5), || async {
        String::from_utf8(http.get(&metrics_url).await.body.to_vec())
            .unwrap()
            .contains("flywheel_sample_rows_total{model=\"tiny\"} 2")
    })
    .await;
    assert!(tapped);
    let feedback = format!("{}/v2/models/tiny/feedback", gw.base);
    let forged = http.post_json(&feedback, &json!({"id": "order-42", "label": 0})).await;
    assert_eq!(forged.status, 200);
    let real = http.post_json(&feedback, &json!({"id": gateway_ids[1], "label": 1})).await;
    assert_eq!(real.status, 200);
    let metrics = String::from_utf8(http.get(&format!("{}/metrics", gw.base)).await.body.to_vec()).unwrap();
    let count = |outcome: &str| {
        let series = format!("flywheel_labels_total{{model=\"tiny\",outcome=\"{outcome}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&series)).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0)
    };
    assert_eq!(count("unmatched"), 1, "the client's id scores no prediction:\n{metrics}");
    assert_eq!(count("matched"), 1, "the gateway's id does:\n{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn named_credentials_get_their_roles_and_the_audit_names_who_acted() {
    use flywheel_onnx::fixtures::tiny;
    use flywheel_registry::ManifestDraft;
    let config = "[models.tiny.rollout]\nchampion = \"champion\"\n\
        [[credentials]]\nname = \"reader\"\ntoken = \"reader-reader-reader\"\nroles = [\"read\"]\n\
        [[credentials]]\nname = \"oncall-alice\"\ntoken = \"operator-operator-op\"\nroles = [\"read\", \"operate\"]\n\
        [[credentials]]\nname = \"label-feed\"\ntoken = \"labels-labels-labels\"\nroles = [\"label\"]\n";
    let gw = TestGateway::start_registry(config, |r| {
        let v = r.publish("tiny", &tiny(1).to_onnx(1), ManifestDraft::default()).unwrap().version;
        r.set_alias("tiny", "champion", v).unwrap();
    });
    let http = Http::new(false);
    let call = |method: Method, path: &str, token: Option<&str>, body: Vec<u8>| {
        let headers: Vec<(&str, String)> =
            token.map(|t| ("authorization", format!("Bearer {t}"))).into_iter().collect();
        let (http, url) = (http.clone(), format!("{}{path}", gw.base));
        async move { http.send(method, &url, &headers, body).await }
    };
    assert_eq!(call(Method::GET, "/admin/routing", None, vec![]).await.status, 401, "loopback needs it too");
    assert_eq!(call(Method::GET, "/admin/routing", Some("reader-reader-reader"), vec![]).await.status, 200);
    let labeller = call(Method::GET, "/admin/routing", Some("labels-labels-labels"), vec![]).await;
    assert_eq!(labeller.status, 403);
    let pause = || call(Method::POST, "/admin/models/tiny/pause", Some("reader-reader-reader"), vec![]);
    let refused = pause().await;
    assert_eq!(refused.status, 403);
    assert!(refused.json()["error"].as_str().unwrap().contains("'reader' lacks the 'operate' role"));
    let body = serde_json::to_vec(&json!({"reason": "night freeze"})).unwrap();
    let paused = call(Method::POST, "/admin/models/tiny/pause", Some("operator-operator-op"), body).await;
    assert_eq!(paused.status, 200, "{:?}", paused.body);
    let audit = call(Method::GET, "/admin/audit", Some("reader-reader-reader"), vec![]).await.json();
    let entry = audit["entries"].as_array().unwrap().iter().find(|e| e["action"] == "pause").cloned().unwrap();
    assert_eq!(entry["credential"], "oncall-alice", "the audit names the credential: {entry}");
    assert!(!entry.to_string().contains("operator-operator-op"), "never its token");
    let labels = serde_json::to_vec(&json!({"labels": [{"id": "r1", "label": 1.0}]})).unwrap();
    let feedback = "/v2/models/tiny/feedback";
    assert_eq!(call(Method::POST, feedback, None, labels.clone()).await.status, 401);
    assert_eq!(call(Method::POST, feedback, Some("reader-reader-reader"), labels.clone()).await.status, 403);
    assert_eq!(call(Method::POST, feedback, Some("labels-labels-labels"), labels).await.status, 200);
}
