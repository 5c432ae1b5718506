//! `/dashboard`: a live page of the loop per model — routing, the rollout's steps with their
//! evidence and verdicts, per-arm traffic, latency and errors, live quality with the promotion
//! and rollback moments, drift, trainer runs and the audit log. The page is three static files
//! compiled into the binary (no CDN, no build step); it reads the admin API (`/admin/routing`,
//! `/admin/history/{m}`, `/admin/drift/{m}`, `/admin/runs/{m}`, `/admin/audit`) every
//! couple of seconds, so the data needs the `read` role wherever the admin API does, and the
//! page itself holds nothing secret. [`history`] keeps what the charts plot.

pub mod history;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use serde::Deserialize;

use crate::model::table::RoutingTable;
use crate::rollout::background::Background;
use crate::server::HttpResponse;

/// `[dashboard]`: the page and the history it charts.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardSettings {
    /// Serve `/dashboard` (the admin API answers either way).
    pub enabled: bool,
    /// How often a point of the per-arm history is taken.
    pub interval_ms: u64,
    /// How far back the history goes.
    pub keep_minutes: u64,
}

impl Default for DashboardSettings {
    fn default() -> Self {
        Self { enabled: true, interval_ms: 5000, keep_minutes: 60 }
    }
}

/// Most points one model's history holds.
const MAX_POINTS: u64 = 20_000;

impl DashboardSettings {
    pub fn validate(&self) -> Result<(), String> {
        if !(100..=600_000).contains(&self.interval_ms) {
            return Err(format!("dashboard.interval_ms must be in 100..=600000, given {}", self.interval_ms));
        }
        if !(1..=1440).contains(&self.keep_minutes) {
            return Err(format!("dashboard.keep_minutes must be in 1..=1440, given {}", self.keep_minutes));
        }
        if self.points() > MAX_POINTS {
            return Err(format!(
                "dashboard.keep_minutes / dashboard.interval_ms keep {} points per model, more than {MAX_POINTS}: \
                 raise interval_ms or lower keep_minutes",
                self.points()
            ));
        }
        Ok(())
    }

    /// Points kept per model.
    pub fn points(&self) -> u64 {
        (self.keep_minutes * 60_000).div_ceil(self.interval_ms.max(1))
    }
}

/// Starts the thread taking a history point every `settings.interval_ms` from `table`.
pub fn spawn_sampler(table: Arc<ArcSwap<RoutingTable>>, settings: &DashboardSettings) -> std::io::Result<Background> {
    let interval = Duration::from_millis(settings.interval_ms);
    history::global().configure(interval, settings.points() as usize);
    Background::spawn("dashboard-history", move |running| {
        let mut next = std::time::Instant::now() + interval;
        while running.keep_going() {
            // Short sleeps so a stopping gateway is not held for a whole interval.
            std::thread::sleep(Duration::from_millis(100).min(interval));
            if std::time::Instant::now() < next {
                continue;
            }
            // After a stall, one point now rather than a burst that would push real ones out.
            next = (next + interval).max(std::time::Instant::now());
            crate::health::guard("dashboard", || history::global().sample(&table.load()));
        }
    })
}

/// The page's files: (name, content type, content).
const ASSETS: [(&str, &str, &str); 3] = [
    ("index.html", "text/html; charset=utf-8", include_str!("assets/index.html")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("assets/app.js")),
    ("app.css", "text/css; charset=utf-8", include_str!("assets/app.css")),
];

/// `GET /dashboard` (the page) and `GET /dashboard/{file}`; None for a file that is not one.
pub fn asset(file: Option<&str>) -> Option<HttpResponse> {
    let wanted = file.unwrap_or("index.html");
    let (_, content_type, body) = ASSETS.iter().find(|(name, _, _)| *name == wanted)?;
    Response::builder()
        .status(200)
        .header("content-type", *content_type)
        // The files change with the binary: revalidate rather than trust a cached copy.
        .header("cache-control", "no-cache")
        .header("x-content-type-options", "nosniff")
        .header(
            "content-security-policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
        )
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .ok()
}

/// Total bytes of the page's files (the page weight, before compression).
pub fn page_bytes() -> usize {
    ASSETS.iter().map(|(_, _, body)| body.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_with_their_key() {
        assert!(DashboardSettings::default().validate().is_ok());
        assert_eq!(DashboardSettings::default().points(), 720);
        let fast = DashboardSettings { interval_ms: 100, keep_minutes: 1440, ..Default::default() };
        assert!(fast.validate().unwrap_err().contains("keep_minutes / dashboard.interval_ms"));
        let zero = DashboardSettings { interval_ms: 0, ..Default::default() };
        assert!(zero.validate().unwrap_err().contains("dashboard.interval_ms"));
    }

    #[test]
    fn the_page_and_its_files_are_served_and_nothing_else() {
        for file in [None, Some("app.js"), Some("app.css")] {
            let r = asset(file).unwrap();
            assert_eq!(r.status(), 200);
        }
        assert!(asset(Some("../Cargo.toml")).is_none());
        assert!(asset(Some("secret")).is_none());
        // The page loads its script and style from the gateway, never a CDN.
        let (_, _, html) = ASSETS[0];
        assert!(html.contains("/dashboard/app.js") && html.contains("/dashboard/app.css"));
        assert!(!html.contains("http://") && !html.contains("https://"), "no outside address in the page");
    }
}
