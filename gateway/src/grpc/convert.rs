//! The read-only answers (metadata, model configuration, statistics, repository index) from
//! the JSON the HTTP endpoints build, so both protocols report the same numbers.

use serde_json::Value;

use super::pb;

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}

fn int(v: &Value) -> u64 {
    v.as_u64().unwrap_or_default()
}

fn dims(v: &Value) -> Vec<i64> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_i64).collect()).unwrap_or_default()
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// `GET /v2/models/<m>` as `ModelMetadataResponse`.
pub fn metadata(v: &Value) -> pb::ModelMetadataResponse {
    let tensors = |key: &str| {
        list(&v[key])
            .iter()
            .map(|t| pb::model_metadata_response::TensorMetadata {
                name: text(t, "name"),
                datatype: text(t, "datatype"),
                shape: dims(&t["shape"]),
            })
            .collect()
    };
    pb::ModelMetadataResponse {
        name: text(v, "name"),
        versions: list(&v["versions"]).iter().filter_map(|s| s.as_str().map(str::to_owned)).collect(),
        platform: text(v, "platform"),
        inputs: tensors("inputs"),
        outputs: tensors("outputs"),
    }
}

/// Triton's model configuration (the JSON of `GET /v2/models/<m>/config`).
pub fn config(v: &Value) -> pb::ModelConfig {
    let datatype =
        |t: &Value| pb::DataType::from_str_name(t["data_type"].as_str().unwrap_or_default()).unwrap_or_default() as i32;
    let input = list(&v["input"])
        .iter()
        .map(|t| pb::ModelInput { name: text(t, "name"), data_type: datatype(t), dims: dims(&t["dims"]) })
        .collect();
    let output = list(&v["output"])
        .iter()
        .map(|t| pb::ModelOutput { name: text(t, "name"), data_type: datatype(t), dims: dims(&t["dims"]) })
        .collect();
    use pb::model_version_policy::{All, Latest, PolicyChoice, Specific};
    let policy = &v["version_policy"];
    let policy_choice = if let Some(latest) = policy.get("latest") {
        Some(PolicyChoice::Latest(Latest { num_versions: int(&latest["num_versions"]) as u32 }))
    } else if let Some(specific) = policy.get("specific") {
        Some(PolicyChoice::Specific(Specific { versions: dims(&specific["versions"]) }))
    } else {
        policy.get("all").map(|_| PolicyChoice::All(All {}))
    };
    let scheduling_choice = v.get("dynamic_batching").map(|d| {
        pb::model_config::SchedulingChoice::DynamicBatching(pb::ModelDynamicBatching {
            preferred_batch_size: dims(&d["preferred_batch_size"]).into_iter().map(|n| n as i32).collect(),
            max_queue_delay_microseconds: int(&d["max_queue_delay_microseconds"]),
        })
    });
    let instance_group = list(&v["instance_group"])
        .iter()
        .map(|g| pb::ModelInstanceGroup {
            name: text(g, "name"),
            count: int(&g["count"]) as i32,
            kind: pb::model_instance_group::Kind::from_str_name(g["kind"].as_str().unwrap_or_default())
                .unwrap_or_default() as i32,
        })
        .collect();
    pb::ModelConfig {
        name: text(v, "name"),
        platform: text(v, "platform"),
        backend: text(v, "backend"),
        version_policy: Some(pb::ModelVersionPolicy { policy_choice }),
        max_batch_size: v["max_batch_size"].as_i64().unwrap_or_default() as i32,
        input,
        output,
        scheduling_choice,
        instance_group,
    }
}

fn duration(v: &Value) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration { count: int(&v["count"]), ns: int(&v["ns"]) })
}

/// `GET /v2/models/<m>/stats` as `ModelStatisticsResponse`.
pub fn statistics(v: &Value) -> pb::ModelStatisticsResponse {
    let model_stats = list(&v["model_stats"])
        .iter()
        .map(|s| {
            let i = &s["inference_stats"];
            pb::ModelStatistics {
                name: text(s, "name"),
                version: text(s, "version"),
                last_inference: int(&s["last_inference"]),
                inference_count: int(&s["inference_count"]),
                execution_count: int(&s["execution_count"]),
                inference_stats: Some(pb::InferStatistics {
                    success: duration(&i["success"]),
                    fail: duration(&i["fail"]),
                    queue: duration(&i["queue"]),
                    compute_input: duration(&i["compute_input"]),
                    compute_infer: duration(&i["compute_infer"]),
                    compute_output: duration(&i["compute_output"]),
                    cache_hit: duration(&i["cache_hit"]),
                    cache_miss: duration(&i["cache_miss"]),
                }),
                batch_stats: list(&s["batch_stats"])
                    .iter()
                    .map(|b| pb::InferBatchStatistics {
                        batch_size: int(&b["batch_size"]),
                        compute_input: duration(&b["compute_input"]),
                        compute_infer: duration(&b["compute_infer"]),
                        compute_output: duration(&b["compute_output"]),
                    })
                    .collect(),
            }
        })
        .collect();
    pb::ModelStatisticsResponse { model_stats }
}

/// `POST /v2/repository/index` as `RepositoryIndexResponse`.
pub fn index(v: &Value) -> pb::RepositoryIndexResponse {
    let models = list(v)
        .iter()
        .map(|m| pb::repository_index_response::ModelIndex {
            name: text(m, "name"),
            version: text(m, "version"),
            state: text(m, "state"),
            reason: text(m, "reason"),
        })
        .collect();
    pb::RepositoryIndexResponse { models }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_json_fills_the_protobuf_fields_perf_analyzer_reads() {
        let json = serde_json::json!({
            "name": "tiny", "platform": "onnxruntime_onnx", "backend": "onnxruntime",
            "version_policy": {"specific": {"versions": [1, 2]}},
            "max_batch_size": 64,
            "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [16]}],
            "output": [{"name": "output", "data_type": "TYPE_INT64", "dims": [1]}],
            "instance_group": [{"name": "tiny", "kind": "KIND_CPU", "count": 2}],
            "dynamic_batching": {"max_queue_delay_microseconds": 500, "preferred_batch_size": []},
        });
        let c = config(&json);
        assert_eq!(c.max_batch_size, 64);
        assert_eq!(c.input[0].data_type, pb::DataType::TypeFp32 as i32);
        assert_eq!(c.output[0].data_type, pb::DataType::TypeInt64 as i32);
        assert_eq!(c.input[0].dims, [16]);
        assert_eq!(c.instance_group[0].kind, pb::model_instance_group::Kind::Cpu as i32);
        assert!(
            matches!(c.scheduling_choice, Some(pb::model_config::SchedulingChoice::DynamicBatching(ref d)) if d.max_queue_delay_microseconds == 500)
        );
        assert!(matches!(
            c.version_policy.and_then(|p| p.policy_choice),
            Some(pb::model_version_policy::PolicyChoice::Specific(ref s)) if s.versions == [1, 2]
        ));
        let stats = statistics(&serde_json::json!({"model_stats": [{"name": "tiny", "version": "1",
            "inference_count": 7, "execution_count": 3,
            "inference_stats": {"success": {"count": 7, "ns": 700}},
            "batch_stats": [{"batch_size": 4, "compute_infer": {"count": 1, "ns": 9}}]}]}));
        let s = &stats.model_stats[0];
        assert_eq!((s.inference_count, s.execution_count), (7, 3));
        assert_eq!(s.inference_stats.as_ref().and_then(|i| i.success.as_ref()).map(|d| d.ns), Some(700));
        assert_eq!(s.batch_stats[0].compute_infer.as_ref().map(|d| d.count), Some(1));
    }
}
