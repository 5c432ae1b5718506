//! Online drift detection for each model, fed by the tap off the hot path: tumbling windows of
//! rows compared with the serving version's reference profile (PSI and KS per feature and on
//! the prediction, Bonferroni across features), Page-Hinkley on each standardised feature and
//! on the prediction, ADWIN on the prediction, and NaN-rate and out-of-range checks. A tripped (detector, feature) raises one event and stays quiet until a
//! window comes back under threshold (hysteresis), so one shift is one event.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use flywheel_registry::{DRIFT_EVENTS_FILE, DriftEvent, FeatureProfile, ReferenceProfile, Registry};
use serde::Deserialize;

use super::adwin::Adwin;
use super::ddm::Ddm;
use super::page_hinkley::PageHinkley;
use super::stats::{ks_pvalue, ks_statistic, psi};
use crate::metrics::{DRIFT_EVENTS, DRIFT_KS_PVALUE, DRIFT_PSI};
use crate::tap::Served;

/// Detector settings (`[drift]` in the config).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DriftSettings {
    pub enabled: bool,
    /// Share of requests the detectors see (deterministic by request id).
    pub rate: f64,
    /// At most this many of a version's rows a second reach the detectors (0: no limit): under
    /// load they see an even subsample. Windows keep `window_rows` rows, so a statistic's
    /// power is the same; a window spans more time.
    pub max_rows_per_second: u32,
    /// Rows per tumbling window.
    pub window_rows: usize,
    /// PSI above this trips.
    pub psi_threshold: f64,
    /// Family-wise significance of the KS tests (split over the features, Bonferroni).
    pub ks_alpha: f64,
    /// Page-Hinkley tolerance and threshold on the prediction stream.
    pub page_hinkley_delta: f64,
    pub page_hinkley_lambda: f64,
    /// A NaN rate this much above the reference's trips the data-quality check.
    pub max_nan_rate_increase: f64,
    /// Share of a window's values outside the reference's [min, max] that trips the
    /// data-quality check.
    pub max_out_of_range: f64,
    /// ADWIN's confidence on the prediction stream (smaller: fewer false alarms).
    pub adwin_delta: f64,
    /// Labelled predictions before DDM may signal (fewer false alarms, later detection).
    pub ddm_min_samples: u64,
    /// `http://host:port/path` to POST each event to, as JSON.
    pub webhook: Option<String>,
}

impl Default for DriftSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            rate: 1.0,
            max_rows_per_second: 1000,
            window_rows: 1000,
            psi_threshold: 0.2,
            ks_alpha: 0.01,
            page_hinkley_delta: 0.005,
            page_hinkley_lambda: 50.0,
            max_nan_rate_increase: 0.05,
            max_out_of_range: 0.05,
            adwin_delta: 0.002,
            ddm_min_samples: 1000,
            webhook: None,
        }
    }
}

impl DriftSettings {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.rate) {
            return Err(format!("drift.rate must be in 0..=1, given {}", self.rate));
        }
        if self.max_rows_per_second > 10_000_000 {
            return Err(format!(
                "drift.max_rows_per_second must be in 0..=10000000 (0: no limit), given {}",
                self.max_rows_per_second
            ));
        }
        if !(50..=10_000_000).contains(&self.window_rows) {
            return Err(format!("drift.window_rows must be in 50..=10000000, given {}", self.window_rows));
        }
        if let Some(url) = &self.webhook {
            super::webhook::parse_url(url)?;
        }
        if !(self.ks_alpha > 0.0 && self.ks_alpha < 1.0) {
            return Err(format!("drift.ks_alpha must be in (0, 1), given {}", self.ks_alpha));
        }
        if !(self.adwin_delta > 0.0 && self.adwin_delta < 1.0) {
            return Err(format!("drift.adwin_delta must be in (0, 1), given {}", self.adwin_delta));
        }
        let positive = |key: &str, v: f64, max: f64| {
            if v > 0.0 && v <= max { Ok(()) } else { Err(format!("drift.{key} must be in (0, {max}], given {v}")) }
        };
        positive("psi_threshold", self.psi_threshold, 100.0)?;
        positive("page_hinkley_lambda", self.page_hinkley_lambda, 1e9)?;
        let share = |key: &str, v: f64| {
            if (0.0..=1.0).contains(&v) { Ok(()) } else { Err(format!("drift.{key} must be in 0..=1, given {v}")) }
        };
        share("max_nan_rate_increase", self.max_nan_rate_increase)?;
        share("max_out_of_range", self.max_out_of_range)?;
        if !(0.0..=1e9).contains(&self.page_hinkley_delta) {
            return Err(format!("drift.page_hinkley_delta must be in 0..=1e9, given {}", self.page_hinkley_delta));
        }
        if !(1..=1_000_000_000).contains(&self.ddm_min_samples) {
            return Err(format!("drift.ddm_min_samples must be in 1..=1000000000, given {}", self.ddm_min_samples));
        }
        Ok(())
    }
}

/// Detector state of one (model, version).
struct ModelDrift {
    profile: Option<Arc<ReferenceProfile>>,
    /// When the profile was last looked for (a version may be served before its profile is
    /// written; it is looked for again every [`PROFILE_RECHECK`]).
    profile_checked: Instant,
    last_seen: Instant,
    columns: Vec<Vec<f64>>,
    predictions: Vec<f64>,
    window_start: Option<SystemTime>,
    page_hinkley: PageHinkley,
    /// On the prediction stream.
    adwin: Adwin,
    /// On each feature, standardised by the reference mean and deviation.
    feature_ph: Vec<PageHinkley>,
    /// On the error stream, fed by labels.
    ddm: Ddm,
    active: HashSet<String>,
}

/// How often a version without a profile looks for one again.
const PROFILE_RECHECK: Duration = Duration::from_secs(5);
/// Versions of one model with detector state at once (the least recently seen is dropped).
const VERSIONS_PER_MODEL: usize = 4;

/// Detectors for every (model, version) that serves; owned by the tap thread. Each version
/// has its own: explicitly addressed traffic for one version never resets another's.
pub struct DriftMonitor {
    settings: DriftSettings,
    registry: Option<Registry>,
    /// This replica's name in a fleet: events get fleet-wide ids and go to the store too.
    replica: Option<String>,
    models: HashMap<(String, u64), ModelDrift>,
    /// Next event `seq` per model (events of all versions share the model's log).
    seqs: HashMap<String, u64>,
    /// How often a version without a profile looks again ([`PROFILE_RECHECK`]; tests shorten it).
    pub(crate) profile_recheck: Duration,
}

impl DriftMonitor {
    pub fn new(settings: DriftSettings, registry: Option<Registry>) -> Self {
        let replica = None;
        Self {
            settings,
            registry,
            replica,
            models: HashMap::new(),
            seqs: HashMap::new(),
            profile_recheck: PROFILE_RECHECK,
        }
    }

    /// Names this replica: with a registry in object storage, events are also put there.
    pub fn with_replica(self, replica: Option<String>) -> Self {
        Self { replica, ..self }
    }

    /// Feeds one served request; returns the events it raised (already appended to the log).
    pub fn observe(&mut self, served: &Served, files: impl Fn(&str, SystemTime) -> Vec<String>) -> Vec<DriftEvent> {
        // Detectors follow served versions: canary and shadow rows are a candidate's trial,
        // not traffic it answers for; explicitly addressed rows feed their own version.
        if !self.settings.enabled
            || !served.drift
            || served.status != 200
            || served.inputs.is_empty()
            || matches!(served.arm, "shadow" | "canary")
        {
            return Vec::new();
        }
        let settings = self.settings.clone();
        let (registry, replica) = (self.registry.clone(), self.replica.clone());
        let next_seq = self.next_seq(&served.model);
        let state = self.state_for(&served.model, served.version);
        let Some(profile) = state.profile.clone() else { return Vec::new() };
        let input = &served.inputs[0];
        let rows = served.rows();
        let width = profile.features.len();
        let (Some(values), true) = (input.data.to_f64(), input.data.len() == rows * width) else {
            return Vec::new();
        };
        state.window_start.get_or_insert(served.time);
        let mut events = Vec::new();
        for row in values.chunks_exact(width) {
            for (i, v) in row.iter().enumerate() {
                state.columns[i].push(*v);
                let reference = &profile.features[i];
                let z = (v - reference.mean) / reference.std.max(1e-12);
                if let Some(statistic) = state.feature_ph[i].update(z)
                    && state.active.insert(reference.name.clone())
                {
                    let rows = state.columns[i].len();
                    let trip = (statistic, settings.page_hinkley_lambda);
                    events.push(make_event(served, ("page_hinkley", &reference.name), trip, rows, state, &files));
                }
            }
        }
        let predictions = served.scores.clone().unwrap_or_default();
        for p in &predictions {
            state.predictions.push(*p);
            if let Some(statistic) = state.page_hinkley.update(*p) {
                let rows = state.predictions.len();
                let trip = (statistic, settings.page_hinkley_lambda);
                events.push(make_event(served, ("page_hinkley", "prediction"), trip, rows, state, &files));
            }
            if let Some(change) = state.adwin.update(*p) {
                let rows = state.predictions.len();
                events.push(make_event(
                    served,
                    ("adwin", "prediction"),
                    (change, settings.adwin_delta),
                    rows,
                    state,
                    &files,
                ));
            }
        }
        if state.columns.first().is_some_and(|c| c.len() >= settings.window_rows) {
            events.extend(close_window(served, &settings, &profile, state, &files));
        }
        let mut seq = next_seq;
        for event in &mut events {
            seq = append_event(registry.as_ref(), replica.as_deref(), event, seq);
            metrics::counter!(DRIFT_EVENTS, "model" => event.model.clone(), "detector" => event.detector.clone())
                .increment(1);
            tracing::warn!(model = %event.model, detector = %event.detector, feature = %event.feature, statistic = event.statistic, "drift detected");
        }
        self.seqs.insert(served.model.clone(), seq);
        events
    }

    /// The next event `seq` of `model` (counted from its log on first use).
    fn next_seq(&mut self, model: &str) -> u64 {
        let registry = self.registry.as_ref();
        *self.seqs.entry(model.to_owned()).or_insert_with(|| count_events(registry, model))
    }

    /// Feeds one labelled prediction of `model` `version` to DDM; returns the event it raised.
    pub fn observe_outcome(&mut self, model: &str, version: u64, mistake: bool) -> Option<DriftEvent> {
        if !self.settings.enabled {
            return None;
        }
        let (registry, replica) = (self.registry.clone(), self.replica.clone());
        let next_seq = self.next_seq(model);
        // Labels go to the error stream of the version that answered; a canary's has none (its
        // rows are not observed).
        let state = self.models.get_mut(&(model.to_owned(), version))?;
        let rate = state.ddm.update(mistake)?;
        let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let mut event = DriftEvent {
            seq: 0,
            id: None,
            replica: None,
            model: model.to_owned(),
            version,
            detector: "ddm".into(),
            feature: "error".into(),
            statistic: rate,
            threshold: 3.0,
            window_rows: 0,
            window_start: now.clone(),
            window_end: now.clone(),
            time: now,
            sample_files: Vec::new(),
        };
        let seq = append_event(registry.as_ref(), replica.as_deref(), &mut event, next_seq);
        self.seqs.insert(model.to_owned(), seq);
        if let Some(url) = &self.settings.webhook {
            super::webhook::post(url, &event);
        }
        metrics::counter!(DRIFT_EVENTS, "model" => model.to_owned(), "detector" => "ddm").increment(1);
        tracing::warn!(model, version, error_rate = rate, "error rate drift (DDM)");
        Some(event)
    }

    fn state_for(&mut self, model: &str, version: u64) -> &mut ModelDrift {
        let registry = self.registry.clone();
        let settings = &self.settings;
        let fresh = || {
            let profile = registry.as_ref().and_then(|r| match r.profile(model, version) {
                Ok(Some(p)) => Some(Arc::new(p)),
                Ok(None) => {
                    tracing::debug!(model, version, "no reference profile yet; drift detection waits for one");
                    None
                }
                Err(e) => {
                    tracing::warn!(model, version, error = %e, "reference profile unreadable; drift detection is off");
                    None
                }
            });
            let width = profile.as_ref().map_or(0, |p| p.features.len());
            ModelDrift {
                profile,
                profile_checked: Instant::now(),
                last_seen: Instant::now(),
                columns: vec![Vec::new(); width],
                predictions: Vec::new(),
                window_start: None,
                page_hinkley: PageHinkley::new(settings.page_hinkley_delta, settings.page_hinkley_lambda, 100),
                adwin: Adwin::new(settings.adwin_delta, 4000, 32),
                // On standardised values: tolerate 0.1 sd of wander, alarm at 50 (no alarm in
                // 100 000 stationary steps; a 1 sd shift in about 60).
                feature_ph: (0..width).map(|_| PageHinkley::new(0.1, settings.page_hinkley_lambda, 100)).collect(),
                ddm: Ddm::new(settings.ddm_min_samples),
                active: HashSet::new(),
            }
        };
        let key = (model.to_owned(), version);
        if !self.models.contains_key(&key) {
            let mut held: Vec<(Instant, u64)> =
                self.models.iter().filter(|((m, _), _)| m == model).map(|((_, v), d)| (d.last_seen, *v)).collect();
            held.sort();
            for (_, old) in held.iter().take((held.len() + 1).saturating_sub(VERSIONS_PER_MODEL)) {
                self.models.remove(&(model.to_owned(), *old));
            }
        }
        let entry = self.models.entry(key).or_insert_with(fresh);
        if entry.profile.is_none() && entry.profile_checked.elapsed() >= self.profile_recheck {
            // Written after the version appeared: start the detectors with it now.
            *entry = fresh();
        }
        entry.last_seen = Instant::now();
        entry
    }
}

/// Computes the window's statistics, raises events for features newly over threshold, resets.
fn close_window(
    served: &Served,
    settings: &DriftSettings,
    profile: &ReferenceProfile,
    state: &mut ModelDrift,
    files: &impl Fn(&str, SystemTime) -> Vec<String>,
) -> Vec<DriftEvent> {
    let window_rows = state.columns.first().map_or(0, Vec::len);
    let tests = profile.features.len() + usize::from(profile.prediction.is_some());
    let alpha = settings.ks_alpha / tests.max(1) as f64;
    let mut trips = Vec::new();
    let mut shown = Vec::new();
    let mut checks: Vec<(&FeatureProfile, Vec<f64>)> =
        profile.features.iter().zip(std::mem::take(&mut state.columns)).collect();
    if let Some(p) = &profile.prediction {
        checks.push((p, std::mem::take(&mut state.predictions)));
    }
    for (feature, mut values) in checks {
        let nan_rate = values.iter().filter(|v| v.is_nan()).count() as f64 / values.len().max(1) as f64;
        let value = psi(&feature.edges, &feature.proportions, &values);
        values.retain(|v| !v.is_nan());
        values.sort_by(f64::total_cmp);
        let d = ks_statistic(&values, &feature.sample);
        let p = ks_pvalue(d, values.len(), feature.sample.len());
        let labels = [("model", served.model.clone()), ("feature", feature.name.clone())];
        metrics::gauge!(DRIFT_PSI, &labels).set(value);
        metrics::gauge!(DRIFT_KS_PVALUE, &labels).set(p);
        let outside = values.iter().filter(|v| **v < feature.min || **v > feature.max).count() as f64
            / values.len().max(1) as f64;
        let tripped = if nan_rate > feature.nan_rate + settings.max_nan_rate_increase {
            Some(("data_quality", nan_rate, feature.nan_rate + settings.max_nan_rate_increase))
        } else if outside > settings.max_out_of_range {
            Some(("data_quality", outside, settings.max_out_of_range))
        } else if value > settings.psi_threshold {
            Some(("psi", value, settings.psi_threshold))
        } else if p < alpha {
            Some(("ks", d, alpha))
        } else {
            None
        };
        shown.push(crate::dashboard::history::FeatureWindow {
            feature: feature.name.clone(),
            psi: value,
            ks: d,
            ks_p_value: p,
            tripped: tripped.map(|t| t.0),
        });
        match tripped {
            Some(trip) if state.active.insert(feature.name.clone()) => trips.push((feature.name.clone(), trip)),
            Some(_) => {}
            None => {
                state.active.remove(&feature.name);
            }
        }
    }
    let events = trips
        .into_iter()
        .map(|(feature, (detector, statistic, threshold))| {
            make_event(served, (detector, &feature), (statistic, threshold), window_rows, state, files)
        })
        .collect();
    state.columns = vec![Vec::new(); profile.features.len()];
    state.window_start = None;
    let window = crate::dashboard::history::DriftWindow {
        version: served.version,
        time_ms: crate::dashboard::history::unix_ms(SystemTime::now()),
        rows: window_rows,
        features: shown,
    };
    crate::dashboard::history::global().record_drift_window(&served.model, window);
    events
}

/// An event for (detector, feature) with (statistic, threshold) over `window_rows` rows.
fn make_event(
    served: &Served,
    (detector, feature): (&str, &str),
    (statistic, threshold): (f64, f64),
    window_rows: usize,
    state: &ModelDrift,
    files: &impl Fn(&str, SystemTime) -> Vec<String>,
) -> DriftEvent {
    let start = state.window_start.unwrap_or(served.time);
    DriftEvent {
        seq: 0,
        id: None,
        replica: None,
        model: served.model.clone(),
        version: served.version,
        detector: detector.to_owned(),
        feature: feature.to_owned(),
        statistic,
        threshold,
        window_rows: window_rows as u64,
        window_start: humantime::format_rfc3339_millis(start).to_string(),
        window_end: humantime::format_rfc3339_millis(served.time).to_string(),
        time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        sample_files: files(&served.model, start),
    }
}

fn events_path(registry: &Registry, model: &str) -> std::path::PathBuf {
    registry.root().join(model).join(DRIFT_EVENTS_FILE)
}

fn count_events(registry: Option<&Registry>, model: &str) -> u64 {
    registry.and_then(|r| std::fs::read_to_string(events_path(r, model)).ok()).map_or(0, |t| t.lines().count() as u64)
}

/// Appends `event` with sequence number `seq`; returns the next sequence number. In a fleet
/// (a registry in object storage and a replica name) the event also gets a fleet-wide id and is
/// put to `<model>/drift-events/<id>.json` there by the store's writer thread (a slow store
/// must not hold the tap).
fn append_event(registry: Option<&Registry>, replica: Option<&str>, event: &mut DriftEvent, seq: u64) -> u64 {
    event.seq = seq;
    let Some(registry) = registry else { return seq + 1 };
    if let (Some(remote), Some(replica)) = (registry.remote().cloned(), replica) {
        let ms = flywheel_registry::now_ms();
        let id = format!("{ms:013}-{replica}-{seq:06}");
        event.id = Some(id.clone());
        event.replica = Some(replica.to_owned());
        if let Some(writer) = crate::rollout::store_writer::StoreWriter::for_remote(&remote) {
            let parts = vec![event.model.clone(), flywheel_registry::DRIFT_EVENTS_DIR.to_owned(), format!("{id}.json")];
            writer.put("drift_event", parts, serde_json::to_vec(event).unwrap_or_default());
        }
    }
    let path = events_path(registry, &event.model);
    let line = serde_json::to_string(event).unwrap_or_default();
    let written = std::fs::OpenOptions::new().create(true).append(true).open(&path).and_then(|mut f| {
        f.write_all(format!("{line}\n").as_bytes())?;
        f.sync_data()
    });
    if let Err(e) = written {
        tracing::error!(path = %path.display(), error = %e, "drift event not written");
    }
    seq + 1
}

#[cfg(test)]
#[path = "monitor_tests.rs"]
mod tests;
