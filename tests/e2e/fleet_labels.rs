//! Labels in a fleet are acknowledged from the store: a replica whose disk is lost right after
//! answering `/feedback` loses none of them, and the store's journal objects of a replica that
//! lives on are deleted once its label file is up.

use std::collections::BTreeSet;
use std::time::Duration;

use flywheel_onnx::fixtures::tiny;
use flywheel_registry::{ManifestDraft, Registry, Remote, samples::JournaledLabel};
use serde_json::json;

use crate::fleet::replica;
use crate::s3::S3;
use crate::support::{Http, TestGateway, wait_until};

/// Every label id in the store's label journal of `tiny`, with the replica name each object
/// carries.
fn journaled(store: &Remote) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, bytes) in store.read_objects(&["label-journal", "model=tiny"]).unwrap() {
        let writer = name.split('-').nth(1).unwrap_or_default().to_owned();
        for line in String::from_utf8(bytes).unwrap().lines() {
            let label: JournaledLabel = serde_json::from_str(line).unwrap();
            out.push((writer.clone(), label.id));
        }
    }
    out
}

async fn post_labels(http: &Http, gw: &TestGateway, prefix: &str, n: usize) -> BTreeSet<String> {
    let url = format!("{}/v2/models/tiny/feedback", gw.base);
    let mut ids = BTreeSet::new();
    for call in 0..4 {
        let labels: Vec<_> =
            (0..n / 4).map(|i| json!({"id": format!("{prefix}{call}-{i}"), "label": (i % 2) as f64})).collect();
        let reply = http.post_json(&url, &json!({"labels": labels})).await;
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
        assert_eq!(reply.json()["stored"], (n / 4) as u64);
        ids.extend(labels.iter().map(|l| l["id"].as_str().unwrap().to_owned()));
    }
    ids
}

/// Publishes tiny v1 as `champion` under `s3://flywheel/<prefix>`.
fn publish_champion(s3: &S3, prefix: &str) {
    let copy = tempfile::tempdir().unwrap();
    let registry = Registry::mirrored(copy.path(), s3.remote(prefix));
    let v = registry.publish("tiny", &tiny(1).to_onnx(1), ManifestDraft::default()).unwrap().version;
    registry.set_alias("tiny", "champion", v).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_lost_with_its_disk_after_acknowledging_labels_loses_none_and_a_living_one_tidies_up() {
    let s3 = S3::start();
    publish_champion(&s3, "labels");
    let store = s3.remote("labels/.data");
    let rollout = "[models.tiny.rollout]\nchampion = \"champion\"\n";
    // The label file of "lost" would not be finalized for ten minutes: only the store has them.
    let lost = replica(
        &s3,
        "labels",
        &format!("{rollout}[fleet]\nreplica = \"lost\"\n[sampling]\nrate = 1.0\nmax_file_age_ms = 600000\n"),
    );
    let kept = replica(
        &s3,
        "labels",
        &format!(
            "{rollout}[fleet]\nreplica = \"kept\"\n[sampling]\nrate = 1.0\nmax_file_age_ms = 300\nupload_interval_ms = 200\n"
        ),
    );
    let http = Http::new(false);
    let lost_ids = post_labels(&http, &lost, "l", 40).await;
    // Right after the last answer: the process and its disk are gone.
    let pid = lost.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-9", &pid]).status().unwrap().success());
    let disk = lost.repo.parent().unwrap().join("samples");
    std::fs::remove_dir_all(&disk).unwrap();
    let in_store: BTreeSet<String> =
        journaled(&store).into_iter().filter(|(w, _)| w == "lost").map(|(_, id)| id).collect();
    assert_eq!(in_store, lost_ids, "every label the lost replica acknowledged is in the store");

    let kept_ids = post_labels(&http, &kept, "k", 40).await;
    assert!(
        journaled(&store).iter().filter(|(w, _)| w == "kept").count() == 40
            || store.read_objects(&["labels", "model=tiny"]).unwrap().iter().any(|(n, _)| n.contains("kept-")),
        "acknowledged from the store (in the journal, or already in an uploaded file)"
    );
    // The living replica's file is finalized and uploaded: its journal objects go.
    let tidied = wait_until(Duration::from_secs(20), || async {
        let uploaded = store.read_objects(&["labels", "model=tiny"]).unwrap().iter().any(|(n, _)| n.contains("kept-"));
        uploaded && !journaled(&store).iter().any(|(w, _)| w == "kept")
    })
    .await;
    assert!(tidied, "the kept replica's journal objects outlived its uploaded label file: {:?}", journaled(&store));
    assert_eq!(kept_ids.len(), 40);
    assert_eq!(
        journaled(&store).into_iter().filter(|(w, _)| w == "lost").count(),
        40,
        "the lost replica's objects stay for the trainer"
    );
    // A replica's samples are not a fleet's training rows: its lineage re-check refuses.
    let verify = http.get(&format!("{}/admin/lineage/any?verify=true", kept.base)).await;
    assert_eq!(verify.status, 400);
    assert!(
        verify.json()["error"].as_str().unwrap().contains("registry --root <registry URL> lineage"),
        "{:?}",
        verify.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn labels_the_store_refuses_are_refused_with_its_reason_and_disk_acknowledgement_still_takes_them() {
    let s3 = S3::start();
    publish_champion(&s3, "refused");
    // A sample store whose bucket does not exist: every put fails.
    let base = "[models.tiny.rollout]\nchampion = \"champion\"\n[sampling]\nstore_url = \"s3://no-such-bucket/data\"\n";
    let strict = replica(&s3, "refused", base);
    let http = Http::new(false);
    let body = json!({"labels": [{"id": "x", "label": 1.0}]});
    let reply = http.post_json(&format!("{}/v2/models/tiny/feedback", strict.base), &body).await;
    let text = String::from_utf8_lossy(&reply.body).to_string();
    assert_eq!(reply.status, 503, "{text}");
    assert!(text.contains("sample store") && text.contains("retry"), "{text}");
    let relaxed = replica(&s3, "refused", &format!("{base}label_ack = \"disk\"\n"));
    let reply = http.post_json(&format!("{}/v2/models/tiny/feedback", relaxed.base), &body).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.json()["stored"], 1);
}
