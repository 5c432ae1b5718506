//! What the demo prints as it happens, and the milestones it keeps for the summary: drift
//! events and rollout steps read from the gateway's admin API, the watcher's lines, the champion
//! alias in the registry, and live quality every few seconds.

use std::collections::HashSet;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flywheel_registry::Registry;
use serde_json::Value;

use super::traffic::Log;

/// Times (seconds since the demo started) of what happened.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Milestones {
    pub drift_detected: Option<f64>,
    pub first_event: Option<String>,
    pub drift_events: usize,
    pub run_started: Option<f64>,
    pub registered: Option<f64>,
    pub candidate: Option<u64>,
    pub rejected: Option<f64>,
    pub first_canary_step: Option<f64>,
    pub promoted: Option<f64>,
    pub rolled_back: Option<f64>,
}

pub struct Timeline {
    pub start: Instant,
    agent: ureq::Agent,
    base: String,
    model: String,
    registry: Registry,
    next_event: u64,
    audit_seen: HashSet<String>,
    pub champion: u64,
    pub marks: Milestones,
    last_live: Instant,
    live_from: usize,
    /// The last routing line printed.
    routing: String,
    /// Run log lines already read.
    runs_seen: usize,
}

impl Timeline {
    pub fn new(start: Instant, base: &str, model: &str, registry: Registry, champion: u64) -> Self {
        Self {
            start,
            agent: ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build(),
            base: base.to_owned(),
            model: model.to_owned(),
            registry,
            next_event: 0,
            audit_seen: HashSet::new(),
            champion,
            marks: Milestones::default(),
            last_live: Instant::now(),
            live_from: 0,
            routing: String::new(),
            runs_seen: 0,
        }
    }

    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Prints one timeline line.
    pub fn say(&self, source: &str, text: &str) {
        println!("[{:6.1} s] {source:<8} │ {text}", self.now());
    }

    fn get(&self, path: &str) -> Option<Value> {
        self.agent.get(&format!("{}{path}", self.base)).call().ok()?.into_json().ok()
    }

    /// Reads every source once and prints what is new.
    pub fn poll(&mut self, watch: &Receiver<String>, log: &Arc<Mutex<Log>>) {
        while let Ok(line) = watch.try_recv() {
            self.watch_line(&line);
        }
        self.runs();
        self.drift_events();
        self.audit();
        self.routing();
        if let Ok(v) = self.registry.resolve(&self.model, "champion")
            && v != self.champion
        {
            self.say("registry", &format!("'champion' now points at version {v} (was {})", self.champion));
            self.champion = v;
        }
        if self.last_live.elapsed() >= Duration::from_secs(5) {
            self.last_live = Instant::now();
            self.live(log);
        }
    }

    fn watch_line(&mut self, line: &str) {
        if !(line.starts_with("waiting: cooldown") || line.starts_with("ignored:")) {
            self.say("trainer", line); // the routine ones stay in the trainer log
        }
    }

    /// Outcomes of the trainer's runs, from its run log.
    fn runs(&mut self) {
        let records = crate::cycle::read_records(&self.registry, &self.model);
        let now = self.now();
        for r in records.iter().skip(self.runs_seen) {
            match r.outcome.as_str() {
                "registered" => {
                    self.marks.registered.get_or_insert(now);
                    self.marks.candidate = r.version;
                }
                "rejected" => {
                    self.marks.rejected.get_or_insert(now);
                }
                _ => {}
            }
        }
        self.runs_seen = records.len();
    }

    fn drift_events(&mut self) {
        let Some(body) = self.get(&format!("/admin/drift/{}?since={}", self.model, self.next_event)) else { return };
        let events = body["events"].as_array().cloned().unwrap_or_default();
        self.next_event = body["next"].as_u64().unwrap_or(self.next_event);
        for e in &events {
            self.marks.drift_events += 1;
            let text = format!(
                "drift: {} on {} of version {}: {:.3} (threshold {:.3}, window of {} rows)",
                e["detector"].as_str().unwrap_or("?"),
                e["feature"].as_str().unwrap_or("?"),
                e["version"],
                e["statistic"].as_f64().unwrap_or(f64::NAN),
                e["threshold"].as_f64().unwrap_or(f64::NAN),
                e["window_rows"]
            );
            if self.marks.drift_detected.is_none() {
                self.marks.drift_detected = Some(self.now());
                self.marks.first_event = Some(text.clone());
            }
            if self.marks.drift_events <= 4 {
                self.say("gateway", &text);
            } else if self.marks.drift_events == 5 {
                self.say("gateway", "more drift events follow (all in drift-events.jsonl)");
            }
        }
    }

    /// Prints the model's routing whenever it changes (shadow and canary appear, weights move).
    fn routing(&mut self) {
        let Some(body) = self.get("/admin/routing") else { return };
        let Some(m) = body["models"].as_array().and_then(|ms| ms.iter().find(|m| m["name"] == self.model.as_str()))
        else {
            return;
        };
        let mut line = format!("routing: champion v{}", m["champion"]);
        if m["canary"].is_object() {
            line += &format!(", canary v{} at {}%", m["canary"]["version"], m["canary"]["weight"]);
        }
        if m["shadow"].is_object() {
            let fraction = m["shadow"]["fraction"].as_f64().unwrap_or(0.0);
            line += &format!(", shadow v{} ({:.0}% mirrored)", m["shadow"]["version"], fraction * 100.0);
        }
        if line != self.routing {
            self.say("gateway", &line);
            self.routing = line;
        }
    }

    fn audit(&mut self) {
        let Some(body) = self.get("/admin/audit") else { return };
        for entry in body["entries"].as_array().cloned().unwrap_or_default() {
            let key = entry.to_string();
            if !self.audit_seen.insert(key) {
                continue;
            }
            let action = entry["action"].as_str().unwrap_or("?").to_owned();
            let now = self.now();
            match action.as_str() {
                "set_weight" => {
                    self.marks.first_canary_step.get_or_insert(now);
                }
                "promote" => {
                    self.marks.promoted.get_or_insert(now);
                }
                "roll_back" => {
                    self.marks.rolled_back.get_or_insert(now);
                }
                _ => {}
            }
            self.say("gateway", &format!("{action}: {}", entry["reason"].as_str().unwrap_or("")));
        }
    }

    fn live(&mut self, log: &Arc<Mutex<Log>>) {
        let Ok(log) = log.lock() else { return };
        let window = &log.answers[self.live_from.min(log.answers.len())..];
        self.live_from = log.answers.len();
        if window.is_empty() {
            return;
        }
        let p: Vec<f64> = window.iter().map(|a| a.prediction).collect();
        let y: Vec<f64> = window.iter().map(|a| a.label).collect();
        let q = flywheel_shadow::Quality::of(&p, &y, 0.5);
        let mut versions: Vec<(u64, usize)> = Vec::new();
        for a in window {
            match versions.iter_mut().find(|(v, _)| *v == a.version) {
                Some((_, n)) => *n += 1,
                None => versions.push((a.version, 1)),
            }
        }
        versions.sort();
        let served: Vec<String> =
            versions.iter().map(|(v, n)| format!("v{v} {:.0}%", 100.0 * *n as f64 / window.len() as f64)).collect();
        let drifted = window.iter().filter(|a| a.drifted).count();
        self.say(
            "live",
            &format!(
                "{} requests{}: AUC {:.3}, log loss {:.3}, {:.1}% fraud; served by {}",
                window.len(),
                if drifted > 0 { " (drifted)" } else { "" },
                q.auc,
                q.log_loss,
                100.0 * q.positives as f64 / q.rows.max(1) as f64,
                served.join(", ")
            ),
        );
    }
}
