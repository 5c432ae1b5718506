//! `[server]` in the config: deadlines on every read, connection and byte budgets, HTTP/2 stream
//! limits and the drain a load balancer needs. Defaults are finite on purpose: a slow or abusive
//! client is cut off on a deadline and holds a bounded share of memory and connections.

use std::time::Duration;

use serde::Deserialize;

/// Deadlines, budgets and drain timing of the HTTP server (all keys optional).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerLimits {
    /// From the first byte of a request to the end of its headers (HTTP/1.1).
    pub header_timeout_ms: u64,
    /// From the end of the headers to the last byte of the body; beyond it the client gets 408.
    pub body_timeout_ms: u64,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout_ms: u64,
    /// From the headers to the response, body read included; beyond it the client gets 504.
    pub request_timeout_ms: u64,
    /// A response the client does not read for this long closes the connection.
    pub write_timeout_ms: u64,
    /// Open connections at once; at the cap the server stops accepting (the kernel's backlog
    /// holds newcomers) until one closes.
    pub max_connections: usize,
    /// Request body bytes held at once, summed over every request being read or served; a
    /// request that would pass it gets 503 + `Retry-After`.
    pub max_in_flight_bytes: usize,
    /// HTTP/2 streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 keep-alive ping interval; a peer that does not answer within the same time is
    /// dropped. 0 turns pings off.
    pub h2_keep_alive_ms: u64,
    /// On SIGTERM: readiness answers 503 at once, and the server keeps serving this long
    /// (HTTP/1.1 answers carry `Connection: close`, HTTP/2 connections get GOAWAY) so a load
    /// balancer moves traffic away before the listener closes.
    pub drain_delay_ms: u64,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_timeout_ms: 5_000,
            body_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            request_timeout_ms: 30_000,
            write_timeout_ms: 10_000,
            max_connections: 10_000,
            max_in_flight_bytes: 512 << 20,
            h2_max_concurrent_streams: 256,
            h2_keep_alive_ms: 20_000,
            drain_delay_ms: 5_000,
        }
    }
}

impl ServerLimits {
    /// Checks every value; the message names `server.<key>` and the value given.
    pub fn validate(&self) -> Result<(), String> {
        let range = |key: &str, value: u64, lo: u64, hi: u64| crate::config::check_range("server", key, value, lo, hi);
        range("header_timeout_ms", self.header_timeout_ms, 100, 600_000)?;
        range("body_timeout_ms", self.body_timeout_ms, 100, 3_600_000)?;
        range("idle_timeout_ms", self.idle_timeout_ms, 100, 3_600_000)?;
        range("request_timeout_ms", self.request_timeout_ms, 100, 3_600_000)?;
        range("write_timeout_ms", self.write_timeout_ms, 100, 3_600_000)?;
        range("max_connections", self.max_connections as u64, 1, 1_000_000)?;
        range("max_in_flight_bytes", self.max_in_flight_bytes as u64, 1 << 16, 1 << 40)?;
        range("h2_max_concurrent_streams", u64::from(self.h2_max_concurrent_streams), 1, 100_000)?;
        if self.h2_keep_alive_ms != 0 {
            range("h2_keep_alive_ms", self.h2_keep_alive_ms, 1_000, 3_600_000)?;
        }
        range("drain_delay_ms", self.drain_delay_ms, 0, 600_000)
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }
    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }
    pub fn drain_delay(&self) -> Duration {
        Duration::from_millis(self.drain_delay_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_finite() {
        let d = ServerLimits::default();
        d.validate().unwrap();
        assert!(d.max_connections < usize::MAX && d.max_in_flight_bytes < usize::MAX);
    }

    #[test]
    fn each_bad_value_is_rejected_naming_key_and_value() {
        type Case = (fn(&mut ServerLimits), &'static str);
        let cases: [Case; 10] = [
            (|l| l.header_timeout_ms = 0, "server.header_timeout_ms must be in 100..=600000, given 0"),
            (|l| l.body_timeout_ms = 10, "server.body_timeout_ms must be in 100..=3600000, given 10"),
            (|l| l.idle_timeout_ms = 0, "server.idle_timeout_ms"),
            (|l| l.request_timeout_ms = 99, "server.request_timeout_ms"),
            (|l| l.write_timeout_ms = 0, "server.write_timeout_ms"),
            (|l| l.max_connections = 0, "server.max_connections must be in 1..=1000000, given 0"),
            (|l| l.max_in_flight_bytes = 10, "server.max_in_flight_bytes"),
            (|l| l.h2_max_concurrent_streams = 0, "server.h2_max_concurrent_streams"),
            (|l| l.h2_keep_alive_ms = 5, "server.h2_keep_alive_ms must be in 1000..=3600000, given 5"),
            (|l| l.drain_delay_ms = 700_000, "server.drain_delay_ms must be in 0..=600000, given 700000"),
        ];
        for (set, expected) in cases {
            let mut limits = ServerLimits::default();
            set(&mut limits);
            let err = limits.validate().unwrap_err();
            assert!(err.contains(expected), "{err:?} should contain {expected:?}");
        }
        let off = ServerLimits { h2_keep_alive_ms: 0, ..ServerLimits::default() };
        off.validate().unwrap();
    }
}
