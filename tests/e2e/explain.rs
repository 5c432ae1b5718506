//! Automatic explanations: every answered row the policy flags (score at or above its
//! threshold) gets an explanation row beside the samples, with its request id and version, and
//! the lineage of the request shows it; rows below the threshold get none.

use std::time::{Duration, Instant};

use flywheel_onnx::fixtures::tiny;
use flywheel_registry::{ManifestDraft, ReferenceProfile};
use serde_json::Value;

use crate::support::{Http, TestGateway, output_f32, tiny_request, tiny_rows};

#[tokio::test(flavor = "multi_thread")]
async fn flagged_predictions_each_get_an_explanation_row_and_others_none() {
    let mlp = tiny(1);
    // The threshold: the median score of the rows about to be sent, so both sides are exercised.
    let rows: Vec<Vec<f32>> = (0..24).map(|seed| tiny_rows(1, 100 + seed)).collect();
    let mut scores: Vec<f32> = rows.iter().map(|r| mlp.forward(r)[0]).collect();
    scores.sort_by(f32::total_cmp);
    let threshold = f64::from(scores[12]);
    let config = format!(
        "[sampling]\nrate = 1.0\nmax_file_age_ms = 200\n[explain]\nexact_max_features = 4\npermutations = 8\n\
         background_rows = 20\n[models.tiny.explain]\nthreshold = {threshold}\n"
    );
    let gw = TestGateway::start_registry(&config, |r| {
        let names: Vec<String> = (0..16).map(|j| format!("in_input_{j}")).collect();
        let training: Vec<Vec<f64>> = (0..200).map(|s| tiny_rows(1, s).into_iter().map(f64::from).collect()).collect();
        let profile = ReferenceProfile::from_rows(&names, &training, None, 100);
        r.publish_with_profile("tiny", &mlp.to_onnx(1), ManifestDraft::default(), Some(&profile)).unwrap();
    });
    let http = Http::new(false);
    let mut sent = Vec::new();
    for row in &rows {
        let reply = http.post_json(&format!("{}/v2/models/tiny/infer", gw.base), &tiny_request(row)).await;
        assert_eq!(reply.status, 200);
        let id = reply.header("x-flywheel-request-id").unwrap().to_owned();
        sent.push((id, f64::from(output_f32(&reply.json(), 0)[0])));
    }
    let lineage = |id: String| {
        let (http, url) = (http.clone(), format!("{}/admin/lineage/{id}", gw.base));
        async move { http.get(&url).await }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut flagged = 0;
    for (id, score) in sent.iter().filter(|(_, s)| *s >= threshold) {
        flagged += 1;
        let explanation: Value = loop {
            let reply = lineage(id.clone()).await;
            let found = if reply.status == 200 { reply.json()["explanations"][0].clone() } else { Value::Null };
            if !found.is_null() {
                break found;
            }
            assert!(Instant::now() < deadline, "request {id} (score {score}) was never explained: {:?}", reply.body);
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!((explanation["version"].as_u64(), explanation["row"].as_u64()), (Some(1), Some(0)));
        assert_eq!((explanation["output"].as_str(), explanation["method"].as_str()), (Some("output"), Some("sampled")));
        let attributions: Vec<f64> =
            explanation["attributions"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(attributions.len(), 16);
        let (base, prediction) =
            (explanation["base_value"].as_f64().unwrap(), explanation["prediction"].as_f64().unwrap());
        assert!((prediction - score).abs() < 1e-5, "the explained score is the answer's: {prediction} vs {score}");
        assert!((attributions.iter().sum::<f64>() - (prediction - base)).abs() < 1e-9, "additive");
        assert_eq!(explanation["top_features"].as_array().unwrap().len(), 5);
    }
    assert!(flagged >= 10, "half the rows are at or above the median: {flagged}");
    // Everything flagged is written; the rows below the threshold have no explanation.
    for (id, _) in sent.iter().filter(|(_, s)| *s < threshold) {
        let reply = loop {
            let reply = lineage(id.clone()).await;
            if reply.status == 200 {
                break reply;
            }
            assert!(Instant::now() < deadline, "request {id} was never sampled: {:?}", reply.body);
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(reply.json()["explanations"], serde_json::json!([]), "request {id} is below the threshold");
    }
    let metrics = http.get(&format!("{}/metrics", gw.base)).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let explained = crate::support::metric_value(&text, "flywheel_explained_rows_total{model=\"tiny\"}");
    assert_eq!(explained as usize, flagged, "{text}");
}
