//! Credentials: a gateway reachable from other hosts does not start without tokens, and labels
//! need the feedback token once one is configured.

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
    assert_eq!(with_label.status, 401);
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
