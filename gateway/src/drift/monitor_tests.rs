//! The monitor keeps detectors per served version: canary and shadow rows neither trip nor reset
//! the champion's, nor do explicitly addressed rows of another version.

use std::time::{Duration, SystemTime};

use flywheel_registry::{ManifestDraft, ReferenceProfile, Registry};

use super::{DriftMonitor, DriftSettings};
use crate::protocol::{Tensor, TensorData};
use crate::tap::Served;

fn served(version: u64, arm: &'static str, row: [f32; 2]) -> Served {
    Served {
        drift: true,
        client_request_id: None,
        request_id: format!("r-{version}-{arm}"),
        time: SystemTime::now(),
        model: "m".into(),
        version,
        arm,
        status: 200,
        latency: Duration::ZERO,
        inputs: vec![Tensor { name: "input".into(), shape: vec![1, 2], data: TensorData::Fp32(row.to_vec()) }],
        outputs: vec![Tensor { name: "output".into(), shape: vec![1, 1], data: TensorData::Fp32(vec![0.1]) }],
        sampled: false,
        scores: Some(vec![0.1]),
        threshold: Some(0.5),
        route: None,
    }
}

/// A registry with versions 1 and 2 of `m`, both profiled on N(0, 1)-like inputs.
fn registry() -> (tempfile::TempDir, Registry) {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(dir.path());
    let mut rng = fastrand::Rng::with_seed(1);
    let rows: Vec<Vec<f64>> = (0..2000).map(|_| vec![rng.f64() * 2.0 - 1.0, rng.f64() * 2.0 - 1.0]).collect();
    let names = vec!["in_input_0".to_owned(), "in_input_1".to_owned()];
    let profile = ReferenceProfile::from_rows(&names, &rows, None, 500);
    for version in [1, 2] {
        registry.publish("m", b"model bytes", ManifestDraft::default()).unwrap();
        registry.write_profile("m", version, &profile).unwrap();
    }
    (dir, registry)
}

#[test]
fn canary_rows_between_champion_rows_do_not_restart_or_trip_the_champions_detectors() {
    let (_dir, registry) = registry();
    // Windows too long to close: only the per-feature Page-Hinkley detectors can trip.
    let settings = DriftSettings { window_rows: 100_000, ..DriftSettings::default() };
    let mut monitor = DriftMonitor::new(settings, Some(registry));
    let mut events = Vec::new();
    let mut rng = fastrand::Rng::with_seed(2);
    for i in 0..600 {
        // In-profile values, then feature 0 shifts by 3 after 300 champion rows.
        let x = [rng.f32() * 2.0 - 1.0 + if i >= 300 { 3.0 } else { 0.0 }, rng.f32() * 2.0 - 1.0];
        events.extend(monitor.observe(&served(1, "champion", x), |_, _| Vec::new()));
        events.extend(monitor.observe(&served(2, "canary", [-3.0, 0.0]), |_, _| Vec::new()));
        events.extend(monitor.observe(&served(2, "shadow", [-3.0, 0.0]), |_, _| Vec::new()));
        // Labels of the canary's predictions are not the champion's error stream.
        assert!(monitor.observe_outcome("m", 2, true).is_none());
    }
    assert!(!events.is_empty(), "the champion's shifted feature trips its detector");
    assert!(events.iter().all(|e| e.version == 1 && e.feature == "in_input_0"), "{events:?}");
}

/// 600 champion rows whose feature 0 shifts by 3 after 300, each followed by `between`.
fn shifted_champion_with(
    monitor: &mut DriftMonitor,
    between: impl Fn() -> Served,
) -> Vec<flywheel_registry::DriftEvent> {
    let mut events = Vec::new();
    let mut rng = fastrand::Rng::with_seed(2);
    for i in 0..600 {
        let x = [rng.f32() * 2.0 - 1.0 + if i >= 300 { 3.0 } else { 0.0 }, rng.f32() * 2.0 - 1.0];
        events.extend(monitor.observe(&served(1, "champion", x), |_, _| Vec::new()));
        events.extend(monitor.observe(&between(), |_, _| Vec::new()));
    }
    events
}

#[test]
fn clients_pinning_another_version_leave_the_champions_detectors_working() {
    let (_dir, registry) = registry();
    let settings = DriftSettings { window_rows: 100_000, ..DriftSettings::default() };
    let mut monitor = DriftMonitor::new(settings, Some(registry));
    // A Triton-style client addressing version 2 explicitly, in between.
    let events = shifted_champion_with(&mut monitor, || served(2, "explicit", [0.1, -0.1]));
    assert!(events.iter().any(|e| e.version == 1 && e.feature == "in_input_0"), "{events:?}");
    assert!(events.iter().all(|e| e.version == 1), "version 2's in-profile rows raise nothing: {events:?}");
}

#[test]
fn a_profile_written_after_the_version_appeared_is_picked_up() {
    let (_dir, registry) = registry();
    registry.publish("m", b"model bytes", ManifestDraft::default()).unwrap();
    let settings = DriftSettings { window_rows: 100_000, ..DriftSettings::default() };
    let mut monitor = DriftMonitor::new(settings, Some(registry.clone()));
    monitor.profile_recheck = Duration::ZERO;
    let served3 = |x: [f32; 2]| served(3, "champion", x);
    for _ in 0..50 {
        assert!(monitor.observe(&served3([5.0, 5.0]), |_, _| Vec::new()).is_empty(), "no profile: nothing to compare");
    }
    let profile = registry.profile("m", 1).unwrap().unwrap();
    registry.write_profile("m", 3, &profile).unwrap();
    let mut rng = fastrand::Rng::with_seed(3);
    let mut events = Vec::new();
    for i in 0..600 {
        let x = [rng.f32() * 2.0 - 1.0 + if i >= 300 { 3.0 } else { 0.0 }, rng.f32() * 2.0 - 1.0];
        events.extend(monitor.observe(&served3(x), |_, _| Vec::new()));
    }
    assert!(events.iter().any(|e| e.version == 3 && e.feature == "in_input_0"), "{events:?}");
}
