//! What recording one answered request in an arm's live record costs (issue 15 named its lock
//! and histogram among the hot path's hidden costs): alone, and with two threads recording
//! into the same record at once (two HTTP threads answering for one arm).
#![allow(clippy::expect_used)] // bench code: a recording thread that panicked is a failed run

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use flywheel_shadow::ArmRecord;

fn record(c: &mut Criterion) {
    let record = ArmRecord::new();
    let mut i = 0u64;
    c.bench_function("arm record_ok, one thread", |b| {
        b.iter(|| {
            i = i.wrapping_add(7919);
            record.record_ok(Duration::from_micros(200 + i % 5000), Some(0.5));
        })
    });
    c.bench_function("arm record_ok, two threads on one record", |b| {
        b.iter_custom(|iters| {
            let shared = Arc::new(ArmRecord::new());
            // Both threads start recording together; the clock starts when they do, so
            // spawning them is not timed.
            let go = Arc::new(Barrier::new(3));
            let threads: Vec<_> = (0..2)
                .map(|t| {
                    let (shared, go) = (Arc::clone(&shared), Arc::clone(&go));
                    std::thread::spawn(move || {
                        go.wait();
                        for n in 0..iters {
                            shared.record_ok(Duration::from_micros(200 + (n * 7919 + t) % 5000), Some(0.5));
                        }
                    })
                })
                .collect();
            go.wait();
            let start = Instant::now();
            for thread in threads {
                thread.join().expect("recording thread");
            }
            // Wall time per request recorded, both threads' requests counted: half the
            // one-thread figure if the two never waited for each other, the whole of it if the
            // lock made them take turns, more if the record's cache line moving between cores
            // costs more than the work.
            black_box(start.elapsed() / 2)
        })
    });
}

criterion_group!(benches, record);
criterion_main!(benches);
