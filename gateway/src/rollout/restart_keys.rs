//! Which config keys a reload cannot apply. Everything under `[models]` (batching, rollouts,
//! sample rates), `[batching]`, `sampling.rate`, `admin_token`, `feedback_token` and
//! `insecure_allow_unauthenticated` are read live and take effect on reload; the keys below are
//! copied once at start (into the socket, the server state, the tap or the audit log) and need a
//! restart. A reload that changes one says so in its result, its log line and the audit log.

use crate::config::Config;

/// Keys whose value in `new` differs from the one the process started with and which only a
/// restart applies, in a stable order.
pub fn restart_only_changes(started: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |key: &'static str, differs: bool| {
        if differs {
            changed.push(key);
        }
    };
    check("listen", started.listen != new.listen);
    check("grpc_listen", started.grpc_listen != new.grpc_listen);
    check("grpc_max_message_bytes", started.grpc_max_message_bytes != new.grpc_max_message_bytes);
    check(
        "model_repository",
        started.model_repository != new.model_repository || started.registry_url != new.registry_url,
    );
    check("registry.cache_dir", started.registry.cache_dir != new.registry.cache_dir);
    // The fleet's identity and timing are taken at start (lease holder name, evidence files).
    check("fleet.replica", started.fleet.replica != new.fleet.replica);
    check("fleet.lease_ttl_ms", started.fleet.lease_ttl_ms != new.fleet.lease_ttl_ms);
    check("fleet.evidence_stale_ms", started.fleet.evidence_stale_ms != new.fleet.evidence_stale_ms);
    check("ort_library", started.ort_library != new.ort_library);
    check("http_threads", started.http_threads != new.http_threads);
    check("max_body_bytes", started.max_body_bytes != new.max_body_bytes);
    check("max_in_flight", started.max_in_flight != new.max_in_flight);
    check("shutdown_grace_ms", started.shutdown_grace_ms != new.shutdown_grace_ms);
    check("controller_interval_ms", started.controller_interval_ms != new.controller_interval_ms);
    check("audit_log", started.audit_log != new.audit_log);
    let (a, b) = (&started.server, &new.server);
    check("server.header_timeout_ms", a.header_timeout_ms != b.header_timeout_ms);
    check("server.body_timeout_ms", a.body_timeout_ms != b.body_timeout_ms);
    check("server.idle_timeout_ms", a.idle_timeout_ms != b.idle_timeout_ms);
    check("server.request_timeout_ms", a.request_timeout_ms != b.request_timeout_ms);
    check("server.write_timeout_ms", a.write_timeout_ms != b.write_timeout_ms);
    check("server.max_connections", a.max_connections != b.max_connections);
    check("server.max_in_flight_bytes", a.max_in_flight_bytes != b.max_in_flight_bytes);
    check("server.h2_max_concurrent_streams", a.h2_max_concurrent_streams != b.h2_max_concurrent_streams);
    check("server.h2_keep_alive_ms", a.h2_keep_alive_ms != b.h2_keep_alive_ms);
    check("server.drain_delay_ms", a.drain_delay_ms != b.drain_delay_ms);
    // `sampling.rate` is live; the rest of [sampling] and all of [drift] belong to the tap.
    let (a, b) = (&started.sampling, &new.sampling);
    let live_rate = |s: &crate::tap::SamplingSettings| crate::tap::SamplingSettings { rate: 0.0, ..s.clone() };
    check("sampling (every key but rate)", live_rate(a) != live_rate(b));
    check("drift", started.drift != new.drift);
    // `dashboard.enabled` is read per request; the sampler's timing is taken at start.
    let (a, b) = (&started.dashboard, &new.dashboard);
    check("dashboard.interval_ms", a.interval_ms != b.interval_ms);
    check("dashboard.keep_minutes", a.keep_minutes != b.keep_minutes);
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_keys_are_named_and_live_ones_are_not() {
        let started = Config::default();
        let mut new = Config::default();
        new.sampling.rate = 0.5;
        new.admin_token = Some("0123456789abcdef".into());
        new.batching.max_batch_size = 8;
        new.dashboard.enabled = false;
        assert!(restart_only_changes(&started, &new).is_empty(), "live keys need no restart");
        new.max_in_flight = 7;
        new.server.body_timeout_ms = 1234;
        new.sampling.max_file_age_ms = 500;
        new.drift.window_rows = 77;
        new.fleet.lease_ttl_ms = 2000;
        new.registry.poll_interval_ms = 500;
        new.dashboard.interval_ms = 1000;
        assert_eq!(
            restart_only_changes(&started, &new),
            vec![
                "fleet.lease_ttl_ms",
                "max_in_flight",
                "server.body_timeout_ms",
                "sampling (every key but rate)",
                "drift",
                "dashboard.interval_ms"
            ]
        );
    }
}
