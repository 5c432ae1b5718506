//! Labels from the feedback API: parsing, their Parquet rows, the index of recent predictions
//! that turns labels into live quality metrics, and idempotency on repeats.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arrow_array::builder::{Float64Builder, StringBuilder, TimestampMicrosecondBuilder, UInt32Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use flywheel_registry::samples;
use flywheel_shadow::quality::row_log_loss;
use serde::{Deserialize, Serialize};

use super::recent::{Found, RecentPredictions};
use crate::metrics::{LABELS, QUALITY};

/// One label: the true outcome for row `row` of request `id`.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Label {
    pub id: String,
    #[serde(default)]
    pub row: u32,
    pub label: f64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Body {
    Many { labels: Vec<Label> },
    One(Label),
}

/// Parses `{"labels": [...]}` or a single `{"id", "row"?, "label"}`; the message says what is wrong.
pub fn parse(body: &[u8]) -> Result<Vec<Label>, String> {
    let labels = match serde_json::from_slice::<Body>(body) {
        Ok(Body::Many { labels }) => labels,
        Ok(Body::One(label)) => vec![label],
        Err(_) => {
            return Err(
                "feedback body must be {\"labels\": [{\"id\": \"<request id>\", \"row\": 0, \"label\": 1.0}, ...]} or one such object".into(),
            );
        }
    };
    if labels.is_empty() {
        return Err("feedback has no labels".into());
    }
    if let Some(bad) = labels.iter().find(|l| l.id.is_empty() || l.id.len() > 128 || !l.label.is_finite()) {
        return Err(format!(
            "label for id {:?} is invalid: ids are 1..=128 characters and labels finite numbers, given {}",
            bad.id, bad.label
        ));
    }
    Ok(labels)
}

/// The schema of label files.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(samples::REQUEST_ID, DataType::Utf8, false),
        Field::new(samples::ROW, DataType::UInt32, false),
        Field::new(samples::LABEL, DataType::Float64, false),
        Field::new(samples::TIME, DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
    ]))
}

/// Label rows being buffered for one model.
pub struct LabelRows {
    id: StringBuilder,
    row: UInt32Builder,
    label: Float64Builder,
    time: TimestampMicrosecondBuilder,
    pub len: usize,
}

impl Default for LabelRows {
    fn default() -> Self {
        Self {
            id: StringBuilder::new(),
            row: UInt32Builder::new(),
            label: Float64Builder::new(),
            time: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            len: 0,
        }
    }
}

impl LabelRows {
    pub fn push(&mut self, label: &Label, at: SystemTime) {
        self.id.append_value(&label.id);
        self.row.append_value(label.row);
        self.label.append_value(label.label);
        self.time.append_value(at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64));
        self.len += 1;
    }

    pub fn take(&mut self) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.row.finish()),
            Arc::new(self.label.finish()),
            Arc::new(self.time.finish()),
        ];
        self.len = 0;
        RecordBatch::try_new(schema(), arrays)
    }
}

pub use super::recent::RouteArm;

/// Running quality of one (model, version, arm).
#[derive(Default)]
struct Quality {
    n: u64,
    correct: u64,
    log_loss: f64,
    /// Per probability decile: (count, sum of p, sum of y).
    bins: [(u64, f64, f64); 10],
}

impl Quality {
    fn add(&mut self, p: f64, y: f64, threshold: f64) {
        self.n += 1;
        self.correct += u64::from((p >= threshold) == (y >= 0.5));
        // The trainer's gate scores rows with the same function: one model, one log loss.
        self.log_loss += row_log_loss(p, y);
        let (p, y) = (p.clamp(0.0, 1.0), if y >= 0.5 { 1.0 } else { 0.0 });
        let bin = ((p * 10.0) as usize).min(9);
        self.bins[bin].0 += 1;
        self.bins[bin].1 += p;
        self.bins[bin].2 += y;
    }

    /// Expected calibration error over the deciles.
    fn ece(&self) -> f64 {
        self.bins
            .iter()
            .filter(|b| b.0 > 0)
            .map(|(c, p, y)| (*c as f64 / self.n as f64) * ((p - y) / *c as f64).abs())
            .sum()
    }
}

/// What became of one label.
#[derive(Debug, PartialEq)]
pub struct Accepted {
    pub stored: bool,
    /// (model, version, mistake) when the label matched a recent prediction.
    pub scored: Option<(String, u64, bool)>,
}

/// Recent predictions (to score labels against) and labels seen (to store each once), both
/// bounded in count and age.
pub struct LabelIndex {
    window: Duration,
    capacity: usize,
    recent: RecentPredictions,
    seen: HashMap<(String, u32), f64>,
    seen_order: VecDeque<(Instant, (String, u32))>,
    quality: HashMap<(String, u64, &'static str), Quality>,
}

impl LabelIndex {
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window,
            capacity,
            recent: RecentPredictions::new(window, capacity),
            seen: HashMap::new(),
            seen_order: VecDeque::new(),
            quality: HashMap::new(),
        }
    }

    /// Remembers a tapped prediction (first output's values per row).
    pub fn remember(
        &mut self,
        id: &str,
        model: (&str, u64, f64),
        (arm, route): (&'static str, RouteArm),
        scores: &[f64],
    ) {
        // Labels seen expire here too (not only when labels arrive): `is_repeat` reads them.
        if !self.seen_order.is_empty() {
            self.expire();
        }
        self.recent.remember(id, model, (arm, route), scores);
    }

    /// Takes a label in: `stored` is false when it repeats one already stored (same id, row and
    /// value), which must not be written again. When its prediction is recent, it is scored,
    /// and `scored` says (model, version, whether the prediction was a mistake).
    pub fn accept(&mut self, model: &str, label: &Label) -> Accepted {
        self.expire();
        let key = (label.id.clone(), label.row);
        if self.seen.get(&key) == Some(&label.label) {
            metrics::counter!(LABELS, "model" => model.to_owned(), "outcome" => "duplicate").increment(1);
            return Accepted { stored: false, scored: None };
        }
        if self.seen.len() < self.capacity {
            self.seen.insert(key.clone(), label.label);
            self.seen_order.push_back((Instant::now(), key));
        }
        let (outcome, scored) = self.join(label);
        metrics::counter!(LABELS, "model" => model.to_owned(), "outcome" => outcome).increment(1);
        Accepted { stored: true, scored }
    }

    /// Joins a label another replica stored (relayed through the fleet's store) to this
    /// replica's prediction, if it answered the request and the prediction is recent; never
    /// stores it. Returns whether it joined.
    pub fn join_relayed(&mut self, model: &str, label: &Label) -> Option<(String, u64, bool)> {
        self.expire();
        // The same label relayed twice (a client retry to another replica) scores once.
        let key = (label.id.clone(), label.row);
        if self.seen.get(&key) == Some(&label.label) {
            return None;
        }
        if self.seen.len() < self.capacity {
            self.seen.insert(key.clone(), label.label);
            self.seen_order.push_back((Instant::now(), key));
        }
        let (_, scored) = self.join(label);
        if scored.is_some() {
            metrics::counter!(LABELS, "model" => model.to_owned(), "outcome" => "relayed").increment(1);
        }
        scored
    }

    /// Scores `label` against its recent prediction: the route's labelled evidence (once per
    /// row) and the live quality gauges. Returns the outcome and (model, version, mistake).
    fn join(&mut self, label: &Label) -> (&'static str, Option<(String, u64, bool)>) {
        let matched = self.recent.find(&label.id, label.row);
        let scored = matched.as_ref().map(|Found { prediction: r, score: p, .. }| {
            (r.model.to_string(), r.version, (*p >= r.threshold) != (label.label >= 0.5))
        });
        let outcome = match matched {
            Some(Found { prediction: recent, score: p, first_join }) => {
                if let Some((evidence, arm)) = &recent.route
                    && first_join
                {
                    evidence.record_label(*arm, p, label.label);
                }
                let labels = [
                    ("model", recent.model.to_string()),
                    ("version", recent.version.to_string()),
                    ("arm", recent.arm.to_owned()),
                ];
                let q = self.quality.entry((recent.model.to_string(), recent.version, recent.arm)).or_default();
                q.add(p, label.label, recent.threshold);
                crate::dashboard::history::global().record_label(
                    &recent.model,
                    (recent.version, recent.arm),
                    p,
                    label.label,
                    recent.threshold,
                );
                metrics::gauge!(
                    QUALITY,
                    &[labels[0].clone(), labels[1].clone(), labels[2].clone(), ("measure", "accuracy".to_owned())]
                )
                .set(q.correct as f64 / q.n as f64);
                metrics::gauge!(
                    QUALITY,
                    &[labels[0].clone(), labels[1].clone(), labels[2].clone(), ("measure", "log_loss".to_owned())]
                )
                .set(q.log_loss / q.n as f64);
                metrics::gauge!(
                    QUALITY,
                    &[labels[0].clone(), labels[1].clone(), labels[2].clone(), ("measure", "ece".to_owned())]
                )
                .set(q.ece());
                "matched"
            }
            None => "unmatched",
        };
        (outcome, scored)
    }

    /// Whether `label` repeats one already stored (same id, row and value).
    pub fn is_repeat(&self, label: &Label) -> bool {
        self.seen.get(&(label.id.clone(), label.row)) == Some(&label.label)
    }

    /// Forgets labels seen longer ago than the window (predictions expire on their own).
    fn expire(&mut self) {
        let Some(cutoff) = Instant::now().checked_sub(self.window) else { return };
        while self.seen_order.front().is_some_and(|(at, _)| *at < cutoff) {
            if let Some((_, key)) = self.seen_order.pop_front() {
                self.seen.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Arm;
    use crate::model::table::RouteEvidence;

    #[test]
    fn parses_one_or_many_and_names_what_is_wrong() {
        assert_eq!(parse(br#"{"id": "a", "label": 1}"#).unwrap(), vec![Label { id: "a".into(), row: 0, label: 1.0 }]);
        assert_eq!(parse(br#"{"labels": [{"id": "a", "row": 2, "label": 0}]}"#).unwrap()[0].row, 2);
        assert!(parse(b"{}").unwrap_err().contains("feedback body must be"));
        assert!(parse(br#"{"labels": []}"#).unwrap_err().contains("no labels"));
        assert!(parse(br#"{"id": "", "label": 1}"#).unwrap_err().contains("invalid"));
        assert!(parse(br#"{"id": "a", "label": 1, "extra": 2}"#).is_err());
    }

    #[test]
    fn the_oldest_prediction_goes_first_and_a_key_remembered_again_keeps_its_newest() {
        let mut index = LabelIndex::new(Duration::from_secs(60), 3);
        let id = |i: u128| format!("{i:032x}");
        let label = |i: u128| Label { id: id(i), row: 0, label: 1.0 };
        for i in 1..=3 {
            index.remember(&id(i), ("m", i as u64, 0.5), ("champion", None), &[0.9]);
        }
        // Version 1's prediction is remembered again under the same id (as version 9).
        index.remember(&id(1), ("m", 9, 0.5), ("champion", None), &[0.9]);
        assert_eq!(index.recent.len(), 3, "bounded by its capacity");
        assert_eq!(index.accept("m", &label(2)).scored, Some(("m".into(), 2, false)));
        // The first remembrance of id 1 was dropped; the index still finds the newest.
        assert_eq!(index.accept("m", &label(1)).scored, Some(("m".into(), 9, false)));
        index.remember(&id(4), ("m", 4, 0.5), ("champion", None), &[0.9]);
        index.remember(&id(5), ("m", 5, 0.5), ("champion", None), &[0.9]);
        assert_eq!(index.accept("m", &label(3)).scored, None, "3 was the oldest left: forgotten");
        assert_eq!(index.accept("m", &label(5)).scored, Some(("m".into(), 5, false)));
        // Ids that are not the gateway's 32 hex digits join as well.
        index.remember("client-7", ("m", 7, 0.5), ("champion", None), &[0.1]);
        assert_eq!(
            index.accept("m", &Label { id: "client-7".into(), row: 0, label: 1.0 }).scored,
            Some(("m".into(), 7, true))
        );
        assert_eq!(index.accept("m", &Label { id: "client-8".into(), row: 0, label: 1.0 }).scored, None);
        // Past the window, everything is forgotten.
        let mut short = LabelIndex::new(Duration::from_millis(1), 10);
        short.remember(&id(1), ("m", 1, 0.5), ("champion", None), &[0.9]);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(short.accept("m", &label(1)).scored, None);
        assert!(short.recent.is_empty());
    }

    #[test]
    fn repeats_are_not_stored_twice_and_labels_score_recent_predictions() {
        let mut index = LabelIndex::new(Duration::from_secs(60), 100);
        let evidence = RouteEvidence::new((1, Some(2), None), Some(10), 0.5);
        index.remember("r1", ("m", 1, 0.5), ("champion", Some((Arc::clone(&evidence), Arm::Champion))), &[0.9, 0.2]);
        let label = Label { id: "r1".into(), row: 0, label: 1.0 };
        assert_eq!(index.accept("m", &label), Accepted { stored: true, scored: Some(("m".into(), 1, false)) });
        assert!(!index.accept("m", &label).stored, "same label again is a no-op");
        assert!(index.accept("m", &Label { label: 0.0, ..label.clone() }).stored, "a correction is stored");
        assert_eq!(
            index.accept("m", &Label { id: "r1".into(), row: 1, label: 0.0 }).scored,
            Some(("m".into(), 1, false))
        );
        assert_eq!(index.accept("m", &Label { id: "zz".into(), row: 0, label: 0.0 }).scored, None, "unknown id");
        let q = &index.quality[&("m".to_owned(), 1, "champion")];
        assert_eq!((q.n, q.correct), (3, 2));
        // log loss: -(ln 0.9 + ln 0.1 + ln 0.8) / 3
        let expected = -((0.9f64).ln() + (0.1f64).ln() + (0.8f64).ln()) / 3.0;
        assert!((q.log_loss / q.n as f64 - expected).abs() < 1e-12);
        // The scored labels reached the champion's labelled record of the route's step.
        assert_eq!(evidence.step.champion_labelled.len(), 2, "rows 0 and 1; a correction is not joined twice");
        assert_eq!(evidence.lifetime.champion_labelled.len(), 2);
        assert!(evidence.step.canary_labelled.is_empty());
        let online = flywheel_shadow::quality::log_loss(&[0.9, 0.9, 0.2], &[1.0, 0.0, 0.0]);
        assert!((q.log_loss / q.n as f64 - online).abs() < 1e-12, "the gate's log loss, the same rows");
    }
}
