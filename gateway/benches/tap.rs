//! Criterion micro-benchmarks of the work beside serving (issue 15): what the tap's thread
//! spends per sampled row (Arrow columns, then Parquet with ZSTD), and what a request pays to
//! ask the drift intake whether its rows go to the detectors, and the label join's index of
//! recent predictions.
#![allow(clippy::unwrap_used)] // benchmark code: a failure is a broken benchmark

use std::time::{Duration, SystemTime};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flywheel_gateway::drift::intake::DriftIntake;
use flywheel_gateway::protocol::{Tensor, TensorData};
use flywheel_gateway::tap::Served;
use flywheel_gateway::tap::columns::{Plan, Rows};
use flywheel_gateway::tap::files::{PartFile, Rotation};
use flywheel_gateway::tap::recent::RecentPredictions;

fn served(i: usize) -> Served {
    let input: Vec<f32> = (0..16).map(|f| ((i * 16 + f) as f32 * 0.37).sin()).collect();
    Served {
        request_id: format!("00000000-0000-4000-8000-{i:012}"),
        client_request_id: None,
        time: SystemTime::now(),
        model: "tiny".into(),
        version: 1,
        arm: "champion",
        status: 200,
        latency: Duration::from_micros(40),
        inputs: vec![Tensor { name: "input".into(), shape: vec![1, 16], data: TensorData::Fp32(input) }],
        outputs: vec![Tensor { name: "output".into(), shape: vec![1, 1], data: TensorData::Fp32(vec![0.5]) }],
        sampled: true,
        drift: false,
        scores: Some(vec![0.5]),
        threshold: Some(0.5),
        route: None,
    }
}

fn sampling(c: &mut Criterion) {
    let requests: Vec<Served> = (0..1024).map(served).collect();
    let plan = Plan::for_served(&requests[0]);
    let mut group = c.benchmark_group("tap");
    group.throughput(Throughput::Elements(requests.len() as u64));
    group.bench_function("1024 sampled 1x16 rows into Arrow columns", |b| {
        let mut rows = Rows::new(plan.clone());
        b.iter(|| {
            for s in &requests {
                rows.push(s);
            }
            rows.take().unwrap()
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let rotation = Rotation {
        max_rows: usize::MAX,
        max_bytes: usize::MAX,
        max_age: Duration::from_secs(3600),
        row_group_rows: 65_536,
    };
    let mut rows = Rows::new(plan.clone());
    for s in &requests {
        rows.push(s);
    }
    let batch = rows.take().unwrap();
    // Encoded as they are written (pages compressed as they fill; a row group reaches the
    // file every 65,536 rows): one open file, as the tap keeps one per model.
    let mut file = PartFile::open(dir.path(), plan.schema.clone(), &rotation, "2026-12-07".into()).unwrap();
    group.bench_function("1024 sampled 1x16 rows encoded into a Parquet file", |b| {
        b.iter(|| file.write(&batch).unwrap())
    });
    file.finish().unwrap();
    group.finish();
}

/// Remembering a prediction for the label join once the tap's index is full (200,000
/// predictions, as the tap sizes it): each one expires the oldest. Ids are random, as the
/// gateway's are, so the index is touched at random places.
fn label_join_index(c: &mut Criterion) {
    let mut recent = RecentPredictions::new(Duration::from_secs(3600), 200_000);
    let ids: Vec<String> = (0..400_000).map(|_| format!("{:032x}", fastrand::u128(..))).collect();
    for id in &ids[..200_000] {
        recent.remember(id, ("tiny", 1, 0.5), ("champion", None), &[0.5]);
    }
    let mut next = ids.iter().cycle().skip(200_000);
    let mut group = c.benchmark_group("tap");
    group.throughput(Throughput::Elements(1024));
    group.bench_function("1024 predictions remembered in a full label index (200k)", |b| {
        b.iter(|| {
            for id in next.by_ref().take(1024) {
                recent.remember(id, ("tiny", 1, 0.5), ("champion", None), &[0.5]);
            }
        })
    });
    group.bench_function("1024 labels looked up in a full label index (200k)", |b| {
        let mut probe = ids.iter().cycle();
        b.iter(|| probe.by_ref().take(1024).filter(|id| recent.find(id, 0).is_some()).count())
    });
    group.finish();
}

fn drift_intake(c: &mut Criterion) {
    let intake = DriftIntake::default();
    c.bench_function("drift intake: ask for 1 row at 1000 rows/s", |b| b.iter(|| intake.admit(1000, 1)));
}

criterion_group!(benches, sampling, label_join_index, drift_intake);
criterion_main!(benches);
