//! What the dashboard charts: per model and arm, over the last `dashboard.keep_minutes`, the
//! request rate, error rate and p50/p99 latency, live quality from joined labels, and the latest
//! drift window's per-feature statistics. A sampler thread takes one point every
//! `dashboard.interval_ms` from the routes' lifetime arm records (the difference from the
//! previous point, so each point is that interval alone); the tap thread feeds the labels it
//! joins and the drift windows it closes. Nothing here runs on a request's path.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flywheel_shadow::arm::ArmExport;
use flywheel_shadow::quality::Quality;
use serde::Serialize;

use crate::model::table::{ArmsRecord, RoutingTable};

/// Labels an arm's quality is computed over: at most this many, the newest ...
const QUALITY_ROWS: usize = 1000;
/// ... and none older than this.
const QUALITY_WINDOW: Duration = Duration::from_secs(300);

/// One sampled interval of a model.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Point {
    /// End of the interval, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Length of the interval.
    pub seconds: f64,
    /// `champion` and, while a rollout runs, `canary`.
    pub arms: BTreeMap<&'static str, ArmPoint>,
}

/// One arm over one interval.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ArmPoint {
    pub version: u64,
    /// The canary's traffic share in percent (None for the champion).
    pub weight: Option<u32>,
    /// Answered requests and server-side failures in the interval.
    pub requests: u64,
    pub errors: u64,
    /// Requests per second over the interval.
    pub rate: f64,
    pub error_rate: Option<f64>,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    /// Live quality over the arm's recent labels ([`QUALITY_ROWS`], [`QUALITY_WINDOW`]).
    pub quality: Option<QualityPoint>,
}

/// Quality of an arm's recent labelled answers.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct QualityPoint {
    pub rows: usize,
    /// None while the labels hold one class only.
    pub auc: Option<f64>,
    pub log_loss: f64,
    pub accuracy: f64,
    /// Expected calibration error (ten bins).
    pub ece: f64,
}

/// The statistics of the last drift window a model's detectors closed.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DriftWindow {
    pub version: u64,
    pub time_ms: u64,
    pub rows: usize,
    pub features: Vec<FeatureWindow>,
}

/// One feature (or the prediction) in a drift window.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FeatureWindow {
    pub feature: String,
    pub psi: f64,
    /// Kolmogorov-Smirnov distance and its p-value against the reference sample.
    pub ks: f64,
    pub ks_p_value: f64,
    /// The detector that tripped on this feature in this window (`psi`, `ks`, `data_quality`).
    pub tripped: Option<&'static str>,
}

/// What `/admin/history/{model}` answers.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ModelView {
    pub model: String,
    pub interval_ms: u64,
    pub points: Vec<Point>,
    pub drift_window: Option<DriftWindow>,
}

struct LabelRow {
    at: Instant,
    version: u64,
    score: f64,
    label: f64,
    threshold: f64,
}

/// The previous look at one arm's lifetime record.
struct Previous {
    /// The lifetime record looked at (a new route starts a new one). Held, so its address is
    /// never another record's.
    record: Arc<ArmsRecord>,
    version: u64,
    export: ArmExport,
}

/// One model's arms as exported before the history's lock is taken.
struct Looked {
    model: String,
    record: Arc<ArmsRecord>,
    /// (arm, version, canary weight, export) of the arms the route has.
    arms: Vec<(&'static str, u64, Option<u32>, ArmExport)>,
}

#[derive(Default)]
struct ModelHistory {
    points: VecDeque<Point>,
    previous: HashMap<&'static str, Previous>,
    labels: HashMap<&'static str, VecDeque<LabelRow>>,
    drift: Option<DriftWindow>,
}

struct Inner {
    keep: usize,
    interval: Duration,
    last_sample: Option<Instant>,
    models: HashMap<String, ModelHistory>,
}

/// The process's dashboard history (one per process, like the metrics recorder).
pub struct History {
    inner: Mutex<Inner>,
}

/// The process-wide history the tap feeds and the admin API reads.
pub fn global() -> &'static History {
    static HISTORY: OnceLock<History> = OnceLock::new();
    HISTORY.get_or_init(|| History::new(Duration::from_secs(5), 720))
}

impl History {
    /// An empty history keeping `keep` points taken every `interval`.
    pub fn new(interval: Duration, keep: usize) -> Self {
        Self { inner: Mutex::new(Inner { keep, interval, last_sample: None, models: HashMap::new() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the sampling interval and how many points are kept (at start, from the config).
    pub fn configure(&self, interval: Duration, keep: usize) {
        let mut inner = self.lock();
        inner.interval = interval;
        inner.keep = keep.max(1);
        for m in inner.models.values_mut() {
            while m.points.len() > keep.max(1) {
                m.points.pop_front();
            }
        }
    }

    /// Records a label the tap joined to the answer `arm` of `model` version `version` gave.
    pub fn record_label(
        &self,
        model: &str,
        (version, arm): (u64, &'static str),
        score: f64,
        label: f64,
        threshold: f64,
    ) {
        if !score.is_finite() || !label.is_finite() {
            return;
        }
        let mut inner = self.lock();
        let Some(m) = model_entry(&mut inner.models, model) else { return };
        let rows = m.labels.entry(arm).or_default();
        rows.push_back(LabelRow { at: Instant::now(), version, score, label, threshold });
        while rows.len() > QUALITY_ROWS {
            rows.pop_front();
        }
    }

    /// Records the statistics of a drift window the detectors just closed.
    pub fn record_drift_window(&self, model: &str, window: DriftWindow) {
        let mut inner = self.lock();
        if let Some(m) = model_entry(&mut inner.models, model) {
            m.drift = Some(window);
        }
    }

    /// Takes one point per served model from its route's lifetime records.
    pub fn sample(&self, table: &RoutingTable) {
        // Exported first, outside the history's lock: each export holds its arm's lock (which
        // requests take) only for its own copy, and readers of the history never wait on it.
        let looked: Vec<Looked> = table
            .models
            .iter()
            .map(|(name, served)| {
                let route = &served.route;
                let lifetime = &route.evidence.lifetime;
                let mut arms = vec![("champion", route.champion, None, lifetime.champion.export())];
                if let Some((version, weight)) = route.canary {
                    arms.push(("canary", version, Some(weight), lifetime.canary.export()));
                }
                Looked { model: name.clone(), record: Arc::clone(lifetime), arms }
            })
            .collect();
        let now = Instant::now();
        let time_ms = unix_ms(SystemTime::now());
        let mut inner = self.lock();
        let seconds = inner.last_sample.map_or(inner.interval, |t| now.duration_since(t)).as_secs_f64().max(1e-3);
        inner.last_sample = Some(now);
        let keep = inner.keep;
        inner.models.retain(|name, _| table.models.contains_key(name));
        for Looked { model, record, arms: looked_arms } in looked {
            let Some(m) = model_entry(&mut inner.models, &model) else { continue };
            let mut arms = BTreeMap::new();
            m.previous.retain(|arm, _| looked_arms.iter().any(|(a, ..)| a == arm));
            for (arm, version, weight, export) in looked_arms {
                let before = m.previous.get(arm).filter(|p| {
                    Arc::ptr_eq(&p.record, &record) && p.version == version && p.export.requests <= export.requests
                });
                let mut point = interval_point(before.map(|p| &p.export), &export, seconds);
                point.version = version;
                point.weight = weight;
                point.quality = m.labels.get_mut(arm).and_then(|rows| quality(rows, version, now));
                m.previous.insert(arm, Previous { record: Arc::clone(&record), version, export });
                arms.insert(arm, point);
            }
            m.points.push_back(Point { time_ms, seconds, arms });
            while m.points.len() > keep {
                m.points.pop_front();
            }
        }
    }

    /// The history of `model` from `since_ms` on (exclusive); None if the model has none.
    pub fn view(&self, model: &str, since_ms: u64) -> Option<ModelView> {
        let inner = self.lock();
        let m = inner.models.get(model)?;
        Some(ModelView {
            model: model.to_owned(),
            interval_ms: inner.interval.as_millis() as u64,
            points: m.points.iter().filter(|p| p.time_ms > since_ms).cloned().collect(),
            drift_window: m.drift.clone(),
        })
    }
}

/// Models are few; a flood of names (a client inventing them is refused before the tap, but
/// be safe) never grows the history past this.
const MAX_MODELS: usize = 256;

fn model_entry<'a>(models: &'a mut HashMap<String, ModelHistory>, model: &str) -> Option<&'a mut ModelHistory> {
    if !models.contains_key(model) && models.len() >= MAX_MODELS {
        return None;
    }
    Some(models.entry(model.to_owned()).or_default())
}

/// The interval between two looks at an arm's record: counts and latency quantiles of what
/// was added in between (`before` None: the record is new, all of it is the interval's).
fn interval_point(before: Option<&ArmExport>, now: &ArmExport, seconds: f64) -> ArmPoint {
    let zero = ArmExport::default();
    let before = before.unwrap_or(&zero);
    let requests = now.requests.saturating_sub(before.requests);
    let errors = now.errors.saturating_sub(before.errors);
    let earlier: HashMap<u64, u64> = before.latency_us.iter().copied().collect();
    let buckets: Vec<(u64, u64)> = now
        .latency_us
        .iter()
        .map(|&(value, count)| (value, count.saturating_sub(earlier.get(&value).copied().unwrap_or(0))))
        .filter(|(_, count)| *count > 0)
        .collect();
    ArmPoint {
        version: 0,
        weight: None,
        requests,
        errors,
        rate: requests as f64 / seconds,
        error_rate: (requests > 0).then(|| errors as f64 / requests as f64),
        p50_us: quantile(&buckets, 0.5),
        p99_us: quantile(&buckets, 0.99),
        quality: None,
    }
}

/// The value at quantile `q` of (value, count) buckets in ascending value order.
fn quantile(buckets: &[(u64, u64)], q: f64) -> Option<u64> {
    let total: u64 = buckets.iter().map(|(_, c)| c).sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    buckets.iter().find_map(|&(value, count)| {
        seen += count;
        (seen >= rank).then_some(value)
    })
}

/// Quality of the arm's labels for `version` within the window; old rows are dropped.
fn quality(rows: &mut VecDeque<LabelRow>, version: u64, now: Instant) -> Option<QualityPoint> {
    while rows.front().is_some_and(|r| now.duration_since(r.at) > QUALITY_WINDOW) {
        rows.pop_front();
    }
    let (mut scores, mut labels, mut threshold) = (Vec::new(), Vec::new(), 0.5);
    for r in rows.iter().filter(|r| r.version == version) {
        scores.push(r.score);
        labels.push(r.label);
        threshold = r.threshold;
    }
    if scores.is_empty() {
        return None;
    }
    let q = Quality::of(&scores, &labels, threshold);
    Some(QualityPoint {
        rows: q.rows,
        auc: q.auc.is_finite().then_some(q.auc),
        log_loss: q.log_loss,
        accuracy: q.accuracy,
        ece: q.ece,
    })
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;
