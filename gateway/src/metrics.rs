//! Every metric the gateway exports: names, units, descriptions and histogram buckets in one
//! place, plus the Prometheus recorder behind `GET /metrics`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use metrics::{Counter, Gauge, Histogram, Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests answered, by model, version and HTTP status code.
pub const REQUESTS: &str = "flywheel_requests_total";
/// Time from request start to response, per request.
pub const REQUEST_SECONDS: &str = "flywheel_request_duration_seconds";
/// Time a request waited in its batch queue.
pub const QUEUE_SECONDS: &str = "flywheel_queue_duration_seconds";
/// Time a batch took on its inference thread (merge, run, split).
pub const COMPUTE_SECONDS: &str = "flywheel_compute_duration_seconds";
/// Rows per executed batch.
pub const BATCH_ROWS: &str = "flywheel_batch_rows";
/// Requests waiting in a batch queue, sampled at each admission.
pub const QUEUE_DEPTH: &str = "flywheel_queue_depth";
/// Requests handed to a version's batch queue and not yet answered (waiting or computing): the
/// counterpart of Triton's `nv_inference_pending_request_count`.
pub const PENDING: &str = "flywheel_pending_requests";
/// Cumulative seconds inference threads spent working; `rate()` over it divided by
/// `flywheel_inference_instances` is thread utilisation. A gauge only because the `metrics`
/// crate's counters are integers; it never decreases.
pub const BUSY_SECONDS: &str = "flywheel_inference_busy_seconds";
/// Inference threads per model version.
pub const INSTANCES: &str = "flywheel_inference_instances";
/// Requests that were alone in the gateway and ran inline on the connection's thread (a cheap
/// model's inline lane, `batching.inline_max_us`) instead of on an inference thread.
pub const INLINE_RUNS: &str = "flywheel_inline_runs_total";
/// Panics caught in background work, by component (tap, watcher, controller, inference).
pub const COMPONENT_PANICS: &str = "flywheel_component_panics_total";
/// 1 while a component is degraded (it panicked in the last 10 minutes), else 0.
pub const COMPONENT_DEGRADED: &str = "flywheel_component_degraded";
/// Batches that failed and were retried request by request (failure isolation).
pub const BATCH_RETRIES: &str = "flywheel_batch_retries_total";
/// Requests refused because a queue was full.
pub const REJECTED: &str = "flywheel_rejected_total";
/// Inference requests being handled right now (read, queued, computing or answering).
pub const IN_FLIGHT: &str = "flywheel_requests_in_flight";
/// Reloads of config and registry, by result (ok, partial, config_rejected).
pub const RELOADS: &str = "flywheel_reloads_total";
/// Requests answered per arm (champion, canary, explicit).
pub const ARM_REQUESTS: &str = "flywheel_arm_requests_total";
/// Mirrored shadow requests, by outcome (ok, error, dropped_budget, dropped_queue).
pub const SHADOW_REQUESTS: &str = "flywheel_shadow_requests_total";
/// Served requests the tap dropped because its channel was full.
pub const TAP_DROPPED: &str = "flywheel_tap_dropped_total";
/// Sample rows handed to the Parquet writer.
pub const SAMPLE_ROWS: &str = "flywheel_sample_rows_total";
/// Finalized Parquet part files, by kind (samples, labels).
pub const SAMPLE_FILES: &str = "flywheel_sample_files_total";
/// Failures writing sample or label files (disk full, unwritable folder).
pub const SAMPLE_WRITE_ERRORS: &str = "flywheel_sample_write_errors_total";
/// Labels received, by outcome (matched, unmatched, duplicate).
pub const LABELS: &str = "flywheel_labels_total";
/// Live quality per model, version and arm, by measure (accuracy, log_loss, ece).
pub const QUALITY: &str = "flywheel_quality";
/// Drift events raised, by detector.
pub const DRIFT_EVENTS: &str = "flywheel_drift_events_total";
/// PSI of the last window, per feature.
pub const DRIFT_PSI: &str = "flywheel_drift_psi";
/// KS p-value of the last window, per feature.
pub const DRIFT_KS_PVALUE: &str = "flywheel_drift_ks_pvalue";
/// Drift events the webhook did not accept.
pub const WEBHOOK_FAILURES: &str = "flywheel_drift_webhook_failures_total";
/// Model versions that failed to load.
pub const LOAD_FAILURES: &str = "flywheel_model_load_failures_total";
/// Syncs of the local copy of a registry in object storage, by result.
pub const REGISTRY_SYNCS: &str = "flywheel_registry_syncs_total";
/// Sample and label part files put to the sample store, by result.
pub const SAMPLE_UPLOADS: &str = "flywheel_sample_uploads_total";
/// Audit lines and drift events put to the fleet's store, by kind and result.
pub const STORE_RECORDS: &str = "flywheel_store_records_total";
/// 1 while this replica holds the model's controller lease (a fleet).
pub const CONTROLLER_LEADER: &str = "flywheel_controller_leader";
/// Requests sent to the registry's object store.
pub const REGISTRY_REQUESTS: &str = "flywheel_registry_store_requests_total";
/// Rollout and reload decisions written to the audit log, by model, action (`promote`,
/// `roll_back`, `advance`, `set_weight`, `swap`, `reject`, ...) and actor.
pub const DECISIONS: &str = "flywheel_rollout_decisions_total";
/// Connections the server closed on a deadline, by reason (header_timeout, idle_timeout,
/// write_timeout).
pub const CONNECTIONS_CLOSED: &str = "flywheel_connections_closed_total";
/// Requests cut off on a deadline or a budget, by reason (body_timeout, request_timeout,
/// body_bytes_budget).
pub const REQUESTS_CUT: &str = "flywheel_requests_cut_total";

/// Rows explained (`/explain`), by model.
pub const EXPLAINED_ROWS: &str = "flywheel_explained_rows_total";
/// Rows an explanation policy picked but did not explain, by model and reason (queue_full,
/// budget, serving_busy, failed, write_failed): explanations are shed first.
pub const EXPLANATIONS_DROPPED: &str = "flywheel_explanations_dropped_total";
/// Time one explanation request took to compute, by model.
pub const EXPLAIN_SECONDS: &str = "flywheel_explain_seconds";

/// Counts `rows` explained in `took`.
pub fn count_explanations(model: &str, rows: usize, took: std::time::Duration) {
    metrics::counter!(EXPLAINED_ROWS, "model" => model.to_owned()).increment(rows as u64);
    metrics::histogram!(EXPLAIN_SECONDS, "model" => model.to_owned()).record(took.as_secs_f64());
}

const LATENCY_BUCKETS: [f64; 16] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder once per process and returns the handle that renders it.
pub fn install() -> Option<&'static PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Some(h);
    }
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &LATENCY_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_ROWS.to_owned()), &BATCH_BUCKETS));
    let handle = match builder.and_then(|b| b.install_recorder()) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "metrics recorder not installed; /metrics will be empty");
            return None;
        }
    };
    describe();
    // Counters that alerts page on exist from the start at zero (unlabelled), so a rule's
    // `increase()` sees them before the first event and the dashboard's queries resolve.
    for name in [
        DRIFT_EVENTS,
        DECISIONS,
        TAP_DROPPED,
        REQUESTS_CUT,
        CONNECTIONS_CLOSED,
        COMPONENT_PANICS,
        SAMPLE_WRITE_ERRORS,
        WEBHOOK_FAILURES,
    ] {
        metrics::counter!(name).increment(0);
    }
    metrics::gauge!(COMPONENT_DEGRADED).set(0.0);
    Some(HANDLE.get_or_init(|| handle))
}

fn describe() {
    describe_counter!(REQUESTS, "Inference requests answered, by status code");
    describe_histogram!(REQUEST_SECONDS, Unit::Seconds, "Total time per inference request");
    describe_histogram!(QUEUE_SECONDS, Unit::Seconds, "Time a request waited in its batch queue");
    describe_histogram!(COMPUTE_SECONDS, Unit::Seconds, "Time a batch spent on its inference thread");
    describe_histogram!(BATCH_ROWS, Unit::Count, "Rows per executed batch");
    describe_gauge!(QUEUE_DEPTH, Unit::Count, "Requests waiting in the batch queue");
    describe_gauge!(PENDING, Unit::Count, "Requests queued or computing on a model version");
    describe_gauge!(BUSY_SECONDS, Unit::Seconds, "Cumulative seconds inference threads spent busy");
    describe_gauge!(INSTANCES, Unit::Count, "Inference threads per model version");
    describe_counter!(
        INLINE_RUNS,
        "Requests run inline on the connection's thread (alone in the gateway, cheap model)"
    );
    describe_counter!(REJECTED, "Requests refused because the queue was full");
    describe_counter!(COMPONENT_PANICS, "Panics caught in background work, by component");
    describe_gauge!(COMPONENT_DEGRADED, "1 while a component is degraded (a recent panic)");
    describe_counter!(BATCH_RETRIES, "Failed batches retried request by request");
    describe_gauge!(IN_FLIGHT, Unit::Count, "Inference requests being handled right now");
    describe_counter!(RELOADS, "Config and registry reloads, by result");
    describe_counter!(ARM_REQUESTS, "Inference requests per routing arm");
    describe_counter!(DECISIONS, "Rollout and reload decisions written to the audit log, by action and actor");
    describe_counter!(SHADOW_REQUESTS, "Mirrored shadow requests, by outcome");
    describe_counter!(TAP_DROPPED, "Served requests dropped because the tap channel was full");
    describe_counter!(SAMPLE_ROWS, "Sample rows handed to the Parquet writer");
    describe_counter!(SAMPLE_FILES, "Finalized Parquet part files");
    describe_counter!(SAMPLE_WRITE_ERRORS, "Failures writing sample or label files");
    describe_counter!(LABELS, "Labels received, by outcome");
    describe_gauge!(QUALITY, "Live quality from labels, by measure");
    describe_counter!(DRIFT_EVENTS, "Drift events raised");
    describe_gauge!(DRIFT_PSI, "Population stability index of the last window");
    describe_gauge!(DRIFT_KS_PVALUE, "Kolmogorov-Smirnov p-value of the last window");
    describe_counter!(WEBHOOK_FAILURES, "Drift events the webhook did not accept");
    describe_counter!(LOAD_FAILURES, "Model versions that failed to load");
    describe_counter!(REGISTRY_SYNCS, "Syncs of the local registry copy from object storage, by result");
    describe_counter!(REGISTRY_REQUESTS, "Requests sent to the registry's object store");
    describe_counter!(SAMPLE_UPLOADS, "Sample and label part files put to the sample store, by result");
    describe_counter!(STORE_RECORDS, "Audit lines and drift events put to the fleet's store, by kind and result");
    describe_gauge!(CONTROLLER_LEADER, "1 while this replica holds the model's controller lease");
    describe_counter!(CONNECTIONS_CLOSED, "Connections closed by the server on a deadline, by reason");
    describe_counter!(REQUESTS_CUT, "Requests cut off on a deadline or the body-bytes budget, by reason");
    describe_counter!(EXPLAINED_ROWS, "Rows explained (/explain and the automatic policy), by model");
    describe_counter!(EXPLANATIONS_DROPPED, "Rows an explanation policy picked but shed, by model and reason");
    describe_histogram!(EXPLAIN_SECONDS, "Time one /explain request spent computing attributions, by model");
}

/// Metric handles for one model version, registered once at load so the hot path does not
/// build label sets per request.
#[derive(Clone)]
pub struct VersionMetrics {
    model: String,
    version: String,
    pub ok: Counter,
    pub request_seconds: Histogram,
    pub queue_seconds: Histogram,
    pub compute_seconds: Histogram,
    pub batch_rows: Histogram,
    pub busy_seconds: Gauge,
    pub rejected: Counter,
    pub queue_depth: Gauge,
    pub pending: Gauge,
    pub batch_retries: Counter,
    pub inline_runs: Counter,
    /// `flywheel_arm_requests_total` of this model per arm: champion, canary, explicit.
    arm_requests: [Counter; 3],
}

impl VersionMetrics {
    /// Registers the handles for `model` / `version`.
    pub fn new(model: &str, version: u64) -> Self {
        let labels = [("model", model.to_owned()), ("version", version.to_string())];
        let with_code = [labels[0].clone(), labels[1].clone(), ("code", "200".to_owned())];
        Self {
            model: model.to_owned(),
            version: version.to_string(),
            ok: metrics::counter!(REQUESTS, &with_code),
            request_seconds: metrics::histogram!(REQUEST_SECONDS, &labels),
            queue_seconds: metrics::histogram!(QUEUE_SECONDS, &labels),
            compute_seconds: metrics::histogram!(COMPUTE_SECONDS, &labels),
            batch_rows: metrics::histogram!(BATCH_ROWS, &labels),
            busy_seconds: metrics::gauge!(BUSY_SECONDS, &labels),
            rejected: metrics::counter!(REJECTED, &labels),
            queue_depth: metrics::gauge!(QUEUE_DEPTH, &labels),
            pending: metrics::gauge!(PENDING, &labels),
            batch_retries: metrics::counter!(BATCH_RETRIES, &labels),
            inline_runs: metrics::counter!(INLINE_RUNS, &labels),
            arm_requests: ["champion", "canary", "explicit"]
                .map(|arm| metrics::counter!(ARM_REQUESTS, "model" => model.to_owned(), "arm" => arm)),
        }
    }

    /// Counts a request answered by `arm` (`champion`, `canary` or `explicit`).
    pub fn count_arm(&self, arm: &str) {
        let index = match arm {
            "champion" => 0,
            "canary" => 1,
            _ => 2,
        };
        self.arm_requests[index].increment(1);
    }

    /// Counts a request answered with `code`.
    pub fn count_response(&self, code: u16) {
        if code == 200 {
            self.ok.increment(1);
        } else {
            metrics::counter!(REQUESTS, "model" => self.model.clone(), "version" => self.version.clone(), "code" => code.to_string())
                .increment(1);
        }
    }

    /// Sets the instance count gauge.
    pub fn set_instances(&self, instances: usize) {
        metrics::gauge!(INSTANCES, "model" => self.model.clone(), "version" => self.version.clone())
            .set(instances as f64);
    }
}

/// Counts one inference request in `flywheel_requests_in_flight` until dropped, so a request
/// abandoned mid-way (client gone, future dropped) is uncounted too.
pub struct InFlight(Gauge);

/// What `flywheel_requests_in_flight` shows, readable on the hot path.
static IN_FLIGHT_NOW: AtomicUsize = AtomicUsize::new(0);

/// Inference requests (HTTP and gRPC) being handled right now.
pub fn requests_in_flight() -> usize {
    IN_FLIGHT_NOW.load(Ordering::Relaxed)
}

impl InFlight {
    /// Starts counting one request.
    pub fn start() -> Self {
        // Resolved once, on the first request (after the recorder is installed at start).
        static GAUGE: OnceLock<Gauge> = OnceLock::new();
        let gauge = GAUGE.get_or_init(|| metrics::gauge!(IN_FLIGHT)).clone();
        gauge.increment(1.0);
        IN_FLIGHT_NOW.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

/// Counts one request in its version's `flywheel_pending_requests` until dropped.
pub struct Pending(Gauge);

impl Pending {
    /// Starts counting one request handed to `metrics`' version.
    pub fn start(metrics: &VersionMetrics) -> Self {
        metrics.pending.increment(1.0);
        Self(metrics.pending.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT_NOW.fetch_sub(1, Ordering::Relaxed);
        self.0.decrement(1.0);
    }
}

/// Counts a connection the server closed on a deadline (rare: a label set per call is fine).
pub fn count_connection_closed(reason: &'static str) {
    metrics::counter!(CONNECTIONS_CLOSED, "reason" => reason).increment(1);
}

/// Counts a request cut off on a deadline or a budget.
pub fn count_request_cut(reason: &'static str) {
    metrics::counter!(REQUESTS_CUT, "reason" => reason).increment(1);
}

/// Prometheus text without the series of versions not in `live` (model, version): a retired
/// version's series stop being exported. The recorder keeps their few atomics: the `metrics`
/// crate cannot unregister, and its exporter's idle timeout would orphan the handles that live
/// versions cache (their later increments would be lost).
pub fn without_retired(text: &str, live: &std::collections::HashSet<(String, u64)>) -> String {
    let label = |line: &str, name: &str| -> Option<String> {
        let start = line.find(&format!("{name}=\""))? + name.len() + 2;
        let end = line[start..].find('"')? + start;
        Some(line[start..end].to_owned())
    };
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let retired = !line.starts_with('#')
            && match (label(line, "model"), label(line, "version").and_then(|v| v.parse::<u64>().ok())) {
                (Some(model), Some(version)) => !live.contains(&(model, version)),
                _ => false,
            };
        if !retired {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_of_retired_versions_are_left_out_and_the_rest_kept() {
        let text = "# TYPE flywheel_requests_total counter\n\
                    flywheel_requests_total{model=\"tiny\",version=\"1\",code=\"200\"} 5\n\
                    flywheel_requests_total{model=\"tiny\",version=\"2\",code=\"200\"} 7\n\
                    flywheel_requests_in_flight 0\n\
                    flywheel_labels_total{model=\"tiny\",outcome=\"matched\"} 3\n";
        let live = [("tiny".to_owned(), 2)].into_iter().collect();
        let kept = without_retired(text, &live);
        assert!(!kept.contains("version=\"1\""), "{kept}");
        assert!(kept.contains("version=\"2\"") && kept.contains("in_flight") && kept.contains("labels_total"));
        assert!(kept.contains("# TYPE"));
    }
}
