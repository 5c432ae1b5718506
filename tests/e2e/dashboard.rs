//! `/dashboard`: the page is served from the binary, its data (the admin API) needs the `read`
//! role, and the history it charts counts what each arm served, interval by interval.

use hyper::Method;

use crate::support::{Http, TestGateway, tiny_request, wait_until};

#[tokio::test(flavor = "multi_thread")]
async fn the_page_is_served_and_its_data_needs_the_read_role() {
    let config = "[[credentials]]\nname = \"viewer\"\ntoken = \"viewer-viewer-viewer\"\nroles = [\"read\"]\n\
        [[credentials]]\nname = \"label-feed\"\ntoken = \"labels-labels-labels\"\nroles = [\"label\"]\n";
    let gw = TestGateway::start(config);
    let http = Http::new(false);
    let page = http.get(&format!("{}/dashboard", gw.base)).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(page.header("content-security-policy").unwrap().contains("default-src 'self'"));
    assert_eq!(http.get(&format!("{}/dashboard/app.js", gw.base)).await.status, 200);
    assert_eq!(http.get(&format!("{}/dashboard/nothing.js", gw.base)).await.status, 404);
    let get = |path: &str, token: Option<&str>| {
        let headers: Vec<(&str, String)> =
            token.map(|t| ("authorization", format!("Bearer {t}"))).into_iter().collect();
        let (http, url) = (http.clone(), format!("{}{path}", gw.base));
        async move { http.send(Method::GET, &url, &headers, vec![]).await }
    };
    for path in ["/admin/routing", "/admin/history/tiny", "/admin/audit?model=tiny", "/admin/drift/tiny"] {
        assert_eq!(get(path, None).await.status, 401, "{path} without a credential");
        assert_eq!(get(path, Some("labels-labels-labels")).await.status, 403, "{path} without the read role");
    }
    let history = get("/admin/history/tiny", Some("viewer-viewer-viewer")).await;
    assert_eq!(history.status, 200, "{:?}", history.body);
    assert_eq!(history.json()["model"], "tiny");
    let missing = get("/admin/history/nope", Some("viewer-viewer-viewer")).await;
    assert_eq!(missing.status, 404);
    let bad = get("/admin/audit?limit=lots", Some("viewer-viewer-viewer")).await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].as_str().unwrap().contains("limit must be a number, given \"lots\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_history_counts_each_intervals_requests_and_latency() {
    let gw = TestGateway::start("[dashboard]\ninterval_ms = 100\nkeep_minutes = 1\n");
    let http = Http::new(false);
    let url = format!("{}/v2/models/tiny/infer", gw.base);
    for _ in 0..30 {
        assert_eq!(http.post_json(&url, &tiny_request(&[0.5; 16])).await.status, 200);
    }
    let history_url = format!("{}/admin/history/tiny", gw.base);
    let counted = |points: &serde_json::Value| -> u64 {
        points.as_array().unwrap().iter().filter_map(|p| p["arms"]["champion"]["requests"].as_u64()).sum()
    };
    let done = wait_until(std::time::Duration::from_secs(10), || {
        let (http, url) = (http.clone(), history_url.clone());
        async move { counted(&http.get(&url).await.json()["points"]) == 30 }
    })
    .await;
    let view = http.get(&history_url).await.json();
    assert!(done, "every request counted once over the points: {view:#}");
    let busy = view["points"].as_array().unwrap().iter().find(|p| p["arms"]["champion"]["requests"].as_u64() > Some(0));
    let arm = &busy.unwrap()["arms"]["champion"];
    assert!(arm["p50_us"].as_u64().unwrap() > 0 && arm["p99_us"].as_u64() >= arm["p50_us"].as_u64(), "{arm}");
    assert_eq!(arm["errors"], 0);
    assert!(arm["rate"].as_f64().unwrap() > 0.0);
    // `since` returns only later points.
    let last = view["points"].as_array().unwrap().last().unwrap()["time_ms"].as_u64().unwrap();
    let later = http.get(&format!("{history_url}?since={last}")).await.json();
    assert!(later["points"].as_array().unwrap().iter().all(|p| p["time_ms"].as_u64() > Some(last)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disabled_dashboard_is_not_served() {
    let gw = TestGateway::start("[dashboard]\nenabled = false\n");
    let http = Http::new(false);
    assert_eq!(http.get(&format!("{}/dashboard", gw.base)).await.status, 404);
}
