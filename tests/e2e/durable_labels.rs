//! Durable labels: a label is on disk before `/feedback` answers, so `kill -9` right after the
//! answer loses none of them; the restart replays them into Parquet.

use std::collections::HashSet;
use std::path::Path;

use arrow_array::cast::AsArray;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::json;

use crate::support::{Http, TestGateway, restart_over};

/// Every request id in the label Parquet files under `dir`.
fn label_ids(dir: &Path) -> Vec<String> {
    let mut ids = Vec::new();
    let mut stack = vec![dir.join("labels")];
    while let Some(d) = stack.pop() {
        for path in std::fs::read_dir(&d).into_iter().flatten().flatten().map(|e| e.path()) {
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                    .build()
                    .unwrap();
                for batch in reader {
                    let batch = batch.unwrap();
                    let column = batch.column_by_name("request_id").unwrap().as_string::<i32>();
                    ids.extend(column.iter().flatten().map(str::to_owned));
                }
            }
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn every_acknowledged_label_survives_kill_9() {
    // Label files rotate after 60 s by default: without the journal these labels would be only
    // in memory when the process dies.
    let gw = TestGateway::start("[sampling]\nrate = 1.0\n");
    let http = Http::new(false);
    let url = format!("{}/v2/models/tiny/feedback", gw.base);
    let mut calls = Vec::new();
    for call in 0..8 {
        let labels: Vec<_> = (0..25).map(|i| json!({"id": format!("r{call}-{i}"), "label": (i % 2)})).collect();
        let (http, url) = (http.clone(), url.clone());
        calls.push(tokio::spawn(async move { http.post_json(&url, &json!({"labels": labels})).await }));
    }
    for call in calls {
        let reply = call.await.unwrap();
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(reply.json()["stored"], 25);
    }
    // Right after the last acknowledgement.
    let pid = gw.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-9", &pid]).status().unwrap().success());
    let samples = gw.repo.parent().unwrap().join("samples");
    assert!(label_ids(&samples).is_empty(), "nothing was in Parquet yet: the journal alone held the labels");

    let (_restarted, _base) = restart_over(&gw.config_path, &gw.repo);
    let ids = label_ids(&samples);
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 200, "every acknowledged label is in Parquet after the restart");
    assert_eq!(ids.len(), 200, "each once");
    let journal = samples.join("labels/.journal");
    let left: Vec<_> = std::fs::read_dir(&journal).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(left.is_empty(), "the replayed journal is gone: {left:?}");
}
