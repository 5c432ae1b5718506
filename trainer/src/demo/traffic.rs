//! The demo's client: synthetic transactions sent to the gateway at a steady rate (drift
//! injected at a given row), their labels posted to the feedback API after a delay, and every
//! answer kept so live quality can be measured per phase.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::synthetic::Synthetic;

/// One answered request.
#[derive(Clone, Debug)]
pub struct Answer {
    /// Seconds since the demo started.
    pub at: f64,
    pub version: u64,
    pub prediction: f64,
    /// The label sent as feedback (after any noise).
    pub label: f64,
    pub features: [f64; 12],
    pub drifted: bool,
}

/// What the traffic thread shares with the timeline.
#[derive(Default)]
pub struct Log {
    pub answers: Vec<Answer>,
    /// Non-200 answers and transport errors.
    pub failures: Vec<String>,
    /// When the first drifted row was sent (seconds since start).
    pub drift_at: Option<f64>,
    pub labels_sent: usize,
}

pub struct Traffic {
    pub base: String,
    pub model: String,
    pub rate: f64,
    pub stream: Synthetic,
    pub label_delay: Duration,
    /// Share of post-drift labels replaced by a coin toss.
    pub label_noise: f64,
    pub start: Instant,
}

impl Traffic {
    /// Sends until `stop` is set.
    pub fn run(self, log: Arc<Mutex<Log>>, stop: Arc<AtomicBool>) {
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
        let infer = format!("{}/v2/models/{}/infer", self.base, self.model);
        let feedback = format!("{}/v2/models/{}/feedback", self.base, self.model);
        let mut rng = fastrand::Rng::with_seed(self.stream.seed ^ 0x5eed);
        let mut due: VecDeque<(Instant, Value)> = VecDeque::new();
        let interval = Duration::from_secs_f64(1.0 / self.rate.max(1.0));
        let mut next = Instant::now();
        for (index, row) in self.stream.stream().enumerate() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            next += interval;
            let drifted = self.stream.progress(index as u64) > 0.0;
            let at = self.start.elapsed().as_secs_f64();
            if drifted {
                log.lock().map(|mut l| l.drift_at.get_or_insert(at).to_owned()).ok();
            }
            let id = format!("demo-{index}");
            let body = json!({"id": id, "inputs": [{"name": "input", "shape": [1, 12], "datatype": "FP32", "data": row.features}]});
            match agent.post(&infer).set("x-request-id", &id).send_json(body) {
                Ok(response) => {
                    let version = response.header("x-model-version").and_then(|v| v.parse().ok()).unwrap_or(0);
                    // Labels join on the gateway's own id of the request, not on ours.
                    let join_id = response.header("x-flywheel-request-id").unwrap_or(&id).to_owned();
                    let prediction = response
                        .into_json::<Value>()
                        .ok()
                        .and_then(|v| v["outputs"][0]["data"][0].as_f64())
                        .unwrap_or(f64::NAN);
                    let label = if drifted && rng.f64() < self.label_noise {
                        f64::from(u8::from(rng.bool()))
                    } else {
                        row.label
                    };
                    due.push_back((
                        Instant::now() + self.label_delay,
                        json!({"id": join_id, "row": 0, "label": label}),
                    ));
                    let answer = Answer { at, version, prediction, label, features: row.features, drifted };
                    if let Ok(mut l) = log.lock() {
                        l.answers.push(answer);
                    }
                }
                Err(e) => {
                    if let Ok(mut l) = log.lock() {
                        l.failures.push(e.to_string());
                    }
                }
            }
            // Labels go in batches: once the oldest waiting one is a quarter second overdue.
            if due.front().is_some_and(|(t, _)| *t + Duration::from_millis(250) <= Instant::now()) {
                let ready: Vec<Value> = std::iter::from_fn(|| {
                    // Labels go in batches: once the oldest waiting one is a quarter second overdue.
                    if due.front().is_some_and(|(t, _)| *t + Duration::from_millis(250) <= Instant::now()) {
                        due.pop_front().map(|(_, l)| l)
                    } else {
                        None
                    }
                })
                .collect();
                let n = ready.len();
                match agent.post(&feedback).send_json(json!({"labels": ready})) {
                    Ok(_) => {
                        if let Ok(mut l) = log.lock() {
                            l.labels_sent += n;
                        }
                    }
                    Err(e) => {
                        if let Ok(mut l) = log.lock() {
                            l.failures.push(format!("feedback: {e}"));
                        }
                    }
                }
            }
        }
    }
}
