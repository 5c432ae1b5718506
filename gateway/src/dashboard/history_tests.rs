#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::model::table::{Route, RouteEvidence, RoutingTable, ServedModel};

fn table(champion: u64, canary: Option<(u64, u32)>, evidence: Arc<RouteEvidence>) -> RoutingTable {
    let route = Route { champion, canary, shadow: None, routing_key_header: "x-routing-key".into(), evidence };
    let mut models = BTreeMap::new();
    models.insert("fraud".to_owned(), ServedModel { name: "fraud".into(), versions: BTreeMap::new(), route });
    RoutingTable { models }
}

fn record(evidence: &RouteEvidence, canary: bool, latencies_us: &[u64], errors: u64) {
    let arm = if canary { &evidence.lifetime.canary } else { &evidence.lifetime.champion };
    for us in latencies_us {
        arm.record_ok(Duration::from_micros(*us), None);
    }
    for _ in 0..errors {
        arm.record_error();
    }
}

#[test]
fn each_point_counts_only_its_interval() {
    let history = History::new(Duration::from_secs(5), 10);
    let evidence = RouteEvidence::new((1, Some(2), None), Some(10), 0.5);
    let t = table(1, Some((2, 10)), Arc::clone(&evidence));
    record(&evidence, false, &[100; 90], 0);
    record(&evidence, true, &[5000; 10], 0);
    history.sample(&t);
    // The second interval: slow champion answers and a failing canary; the first interval's
    // fast answers must not dilute its quantiles or its counts.
    record(&evidence, false, &[900; 40], 0);
    record(&evidence, true, &[], 5);
    history.sample(&t);
    let view = history.view("fraud", 0).unwrap();
    assert_eq!(view.points.len(), 2);
    let first = &view.points[0].arms;
    assert_eq!(first["champion"].requests, 90);
    assert_eq!(first["champion"].p99_us, Some(100));
    assert_eq!(first["canary"].requests, 10);
    assert_eq!(first["canary"].weight, Some(10));
    assert_eq!(first["canary"].version, 2);
    let second = &view.points[1].arms;
    assert_eq!(second["champion"].requests, 40);
    assert_eq!(second["champion"].p50_us, Some(900));
    assert_eq!(second["champion"].error_rate, Some(0.0));
    assert_eq!(second["canary"].requests, 5);
    assert_eq!(second["canary"].errors, 5);
    assert_eq!(second["canary"].error_rate, Some(1.0));
    assert_eq!(second["canary"].p50_us, None, "no answer, no latency");
    // `since` returns only later points.
    let later = history.view("fraud", view.points[0].time_ms).unwrap();
    assert!(later.points.len() <= 1);
}

#[test]
fn a_new_route_starts_its_arms_from_zero() {
    let history = History::new(Duration::from_secs(5), 10);
    let old = RouteEvidence::new((1, Some(2), None), Some(10), 0.5);
    record(&old, false, &[100; 50], 0);
    history.sample(&table(1, Some((2, 10)), old));
    // Promotion: version 2 is the champion with a fresh record holding fewer requests than the
    // old one; the point is the new record's count, never a negative or a wrapped difference.
    let new = RouteEvidence::new((2, None, None), None, 0.5);
    record(&new, false, &[200; 7], 0);
    history.sample(&table(2, None, new));
    let view = history.view("fraud", 0).unwrap();
    let last = &view.points[1].arms;
    assert_eq!(last["champion"].version, 2);
    assert_eq!(last["champion"].requests, 7);
    assert!(!last.contains_key("canary"), "no canary after promotion");
}

#[test]
fn quality_is_per_arm_and_version_over_recent_labels() {
    let history = History::new(Duration::from_secs(5), 10);
    let evidence = RouteEvidence::new((1, Some(2), None), Some(50), 0.5);
    let t = table(1, Some((2, 50)), Arc::clone(&evidence));
    // Champion: perfectly ranked; canary: every score on the wrong side.
    for i in 0..100 {
        let label = f64::from(i % 2);
        history.record_label("fraud", (1, "champion"), 0.1 + 0.8 * label, label, 0.5);
        history.record_label("fraud", (2, "canary"), 0.9 - 0.8 * label, label, 0.5);
    }
    // A label for a version the arm no longer serves is not counted in its quality.
    history.record_label("fraud", (7, "champion"), 0.99, 0.0, 0.5);
    history.sample(&t);
    let view = history.view("fraud", 0).unwrap();
    let arms = &view.points[0].arms;
    let champion = arms["champion"].quality.as_ref().unwrap();
    let canary = arms["canary"].quality.as_ref().unwrap();
    assert_eq!(champion.rows, 100);
    assert_eq!(champion.auc, Some(1.0));
    assert_eq!(champion.accuracy, 1.0);
    assert_eq!(canary.auc, Some(0.0));
    assert_eq!(canary.accuracy, 0.0);
    assert!(canary.log_loss > champion.log_loss);
}

#[test]
fn one_class_labels_have_no_auc_and_old_points_are_dropped() {
    let history = History::new(Duration::from_secs(5), 3);
    let evidence = RouteEvidence::new((1, None, None), None, 0.5);
    let t = table(1, None, evidence);
    history.record_label("fraud", (1, "champion"), 0.2, 0.0, 0.5);
    for _ in 0..5 {
        history.sample(&t);
    }
    let view = history.view("fraud", 0).unwrap();
    assert_eq!(view.points.len(), 3, "keeps the newest `keep` points");
    assert_eq!(view.points[2].arms["champion"].quality.as_ref().unwrap().auc, None);
    assert!(history.view("other", 0).is_none());
}

#[test]
fn quantiles_of_buckets() {
    assert_eq!(quantile(&[], 0.5), None);
    assert_eq!(quantile(&[(10, 1)], 0.99), Some(10));
    let buckets = [(10, 50), (20, 49), (1000, 1)];
    assert_eq!(quantile(&buckets, 0.5), Some(10));
    assert_eq!(quantile(&buckets, 0.99), Some(20));
    assert_eq!(quantile(&buckets, 1.0), Some(1000));
}
