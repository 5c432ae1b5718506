//! `trainer watch` against a registry and samples laid out as the gateway writes them: which
//! events start a cycle, and which wait (cooldown, rollout in progress, the rejected data again).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant, UNIX_EPOCH};

use flywheel_registry::{DRIFT_EVENTS_FILE, DriftEvent, Registry};

use crate::config::TrainerConfig;
use crate::cycle::read_records;
use crate::cycle_tests::{T0, setup};
use crate::watch::{CURSOR_FILE, Note, watch};

fn event(seq: u64, version: u64) -> DriftEvent {
    let start = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_micros(T0 as u64)).to_string();
    DriftEvent {
        id: None,
        replica: None,
        seq,
        model: "fraud".into(),
        version,
        detector: "psi".into(),
        feature: "in_input_0".into(),
        statistic: 0.4,
        threshold: 0.2,
        window_rows: 1000,
        window_start: start.clone(),
        window_end: start.clone(),
        time: start,
        sample_files: Vec::new(),
    }
}

fn append(config: &TrainerConfig, e: &DriftEvent) {
    use std::io::Write;
    let path = config.registry.join("fraud").join(DRIFT_EVENTS_FILE);
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    writeln!(f, "{}", serde_json::to_string(e).unwrap()).unwrap();
}

/// A watcher on its own thread, its notes rendered as text.
struct Running {
    stop: Arc<AtomicBool>,
    notes: Receiver<String>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(config: &TrainerConfig) -> Self {
        // Start at the beginning of the log (a first start would skip what is already there).
        std::fs::write(config.registry.join("fraud").join(CURSOR_FILE), r#"{"next_seq": 0}"#).unwrap();
        Self::resume(config)
    }

    /// Starts from the cursor as the last run left it (a restart).
    fn resume(config: &TrainerConfig) -> Self {
        let (tx, notes) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (config, flag) = (config.clone(), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            watch(&config, &flag, |note| {
                let text = match note {
                    Note::Drift(e) => format!("drift v{}", e.version),
                    Note::Ignored(e, why) => format!("ignored v{}: {why}", e.version),
                    Note::Waiting(why) => format!("waiting: {why}"),
                    Note::GaveUp(why) => format!("gave up: {why}"),
                    Note::Run(r) => format!("run: {}", r.outcome),
                };
                let _ = tx.send(text);
            })
        });
        Self { stop, notes, thread: Some(thread) }
    }

    /// Notes until one starts with `prefix` (panics after 120 s).
    fn until(&self, prefix: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(note) = self.notes.recv_timeout(Duration::from_millis(100)) {
                let done = note.starts_with(prefix);
                seen.push(note);
                if done {
                    return seen;
                }
            }
        }
        panic!("no note starting with {prefix:?}; saw {seen:?}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watching(mut config: TrainerConfig, cooldown_s: u64) -> TrainerConfig {
    config.watch.poll_ms = 50;
    config.watch.cooldown_s = cooldown_s;
    config.watch.min_rows_after_event = 2000;
    config
}

#[test]
fn a_drift_event_starts_one_cycle_and_later_events_wait_or_are_ignored() {
    let (_dir, config) = setup(5000, 0.0);
    let config = watching(config, 600);
    append(&config, &event(0, 1));
    append(&config, &event(1, 1)); // the same shift: coalesced
    let w = Running::start(&config);
    let notes = w.until("run:");
    assert_eq!(notes.first().map(String::as_str), Some("drift v1"), "{notes:?}");
    assert_eq!(notes.last().map(String::as_str), Some("run: registered"), "{notes:?}");
    let registry = Registry::open(&config.registry);
    let record = read_records(&registry, "fraud").pop().unwrap();
    assert_eq!(record.trigger.unwrap()["events_coalesced"], 2);

    // Drift again while version 2 rolls out and inside the cooldown: it waits.
    append(&config, &event(2, 1));
    let notes = w.until("waiting:");
    assert!(notes.last().unwrap().contains("cooldown"), "{notes:?}");
    // An event about a version that is not the champion is ignored.
    append(&config, &event(3, 7));
    let notes = w.until("ignored");
    assert!(notes.last().unwrap().contains("no longer the champion (1)"), "{notes:?}");
    // The promotion replaces the champion: the drift still waiting is about the old one.
    registry.set_alias("fraud", "champion", 2).unwrap();
    registry.remove_alias("fraud", "challenger").unwrap();
    let notes = w.until("ignored");
    assert!(notes.last().unwrap().starts_with("ignored v1: about version 1, no longer the champion"), "{notes:?}");
    drop(w);
    assert_eq!(read_records(&registry, "fraud").len(), 1, "one run for all of it");
    let cursor = std::fs::read_to_string(config.registry.join("fraud").join(CURSOR_FILE)).unwrap();
    assert!(cursor.contains("\"next_seq\":4"), "the cursor survives restarts: {cursor}");
}

#[test]
fn after_a_rejection_it_never_trains_again_on_the_same_data() {
    let (_dir, config) = setup(5000, 1.0);
    let config = watching(config, 0);
    append(&config, &event(0, 1));
    let w = Running::start(&config);
    assert_eq!(w.until("run:").last().map(String::as_str), Some("run: rejected"));
    let notes = w.until("waiting:");
    assert!(notes.last().unwrap().contains("same as the last rejected run"), "{notes:?}");
    std::thread::sleep(Duration::from_millis(500));
    drop(w);
    let registry = Registry::open(&config.registry);
    assert_eq!(read_records(&registry, "fraud").len(), 1, "no second run on the same rows");
    assert!(registry.resolve("fraud", "challenger").is_err());
}

#[test]
fn a_restart_while_waiting_for_labels_keeps_the_drift() {
    let (_dir, config) = setup(5000, 0.0);
    let mut waiting = watching(config.clone(), 0);
    waiting.watch.min_rows_after_event = 1_000_000;
    append(&config, &event(0, 1));
    let w = Running::start(&waiting);
    let notes = w.until("waiting:");
    assert!(notes.last().unwrap().contains("labelled rows since the drift"), "{notes:?}");
    drop(w);
    let cursor = std::fs::read_to_string(config.registry.join("fraud").join(CURSOR_FILE)).unwrap();
    assert!(cursor.contains("\"next_seq\":1") && cursor.contains("\"pending\":{"), "{cursor}");
    // Restarted (the event was read before): the drift is still the work, and runs once the
    // data is there.
    let w = Running::resume(&watching(config.clone(), 0));
    let notes = w.until("run:");
    assert_eq!(notes.first().map(String::as_str), Some("drift v1"), "{notes:?}");
    assert_eq!(notes.last().map(String::as_str), Some("run: registered"), "{notes:?}");
    drop(w);
    let cursor = std::fs::read_to_string(config.registry.join("fraud").join(CURSOR_FILE)).unwrap();
    assert!(cursor.contains("\"pending\":null"), "handled: nothing pending any more: {cursor}");
}
