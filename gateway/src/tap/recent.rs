//! Recent predictions, kept so a label that arrives later can be scored against its answer.
//!
//! At 100% sampling every answer is remembered for `label_window_ms` (up to `capacity`), so
//! this is built for churn on the tap thread, which shares the cores that serve:
//! - predictions sit in a ring in arrival order, sized once (they expire from its front and
//!   their slots are reused), one score kept inline (no allocation per prediction);
//! - the index from a request's key to its place is split into generations of
//!   `capacity / GENERATIONS` keys. A prediction is only ever inserted, into the newest
//!   generation (small enough to stay in cache); a whole generation is cleared, and its table
//!   reused, once every prediction in it has left the ring. One hash table of every key, with a
//!   removal per expired prediction, missed cache twice per sampled request on its 12.6 MB of
//!   buckets and was a third of the tap thread's time.
//!
//! A lookup (a label arriving) probes the generations newest first: the newest remembrance of a
//! key wins.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::table::RouteEvidence;

/// The route evidence a prediction was recorded in, and the arm that answered.
pub type RouteArm = Option<(Arc<RouteEvidence>, crate::model::Arm)>;

/// How many generations the index is cut into (one more may be filling).
const GENERATIONS: usize = 8;

/// The smallest generation: below it, tiny capacities (tests) would start a table per key.
const MIN_GENERATION: usize = 64;

/// A remembered prediction's scores: one row inline, more boxed.
#[derive(Debug)]
enum Scores {
    One(f64),
    Many(Box<[f64]>),
}

impl Scores {
    fn of(scores: &[f64]) -> Self {
        match scores {
            [one] => Scores::One(*one),
            many => Scores::Many(many.into()),
        }
    }

    fn get(&self, row: u32) -> Option<f64> {
        match self {
            Scores::One(p) => (row == 0).then_some(*p),
            Scores::Many(all) => all.get(row as usize).copied(),
        }
    }
}

/// One remembered prediction.
pub struct Prediction {
    at: Instant,
    key: u128,
    pub model: Arc<str>,
    pub version: u64,
    pub arm: &'static str,
    pub route: RouteArm,
    pub threshold: f64,
    scores: Scores,
    /// Rows below 64 already joined into the route's labelled evidence, one bit each (rows
    /// from 64 on are in [`RecentPredictions::joined_high`]).
    joined: u64,
}

impl Prediction {
    /// The score of `row`, if the prediction has that row.
    pub fn score(&self, row: u32) -> Option<f64> {
        self.scores.get(row)
    }
}

/// A prediction found for a label: the prediction and whether `row` was already joined into
/// its route's evidence (a corrected label must not count twice there).
pub struct Found<'a> {
    pub prediction: &'a Prediction,
    /// The prediction's score of the label's row.
    pub score: f64,
    pub first_join: bool,
}

/// A prediction's key: the gateway's request id (32 hex digits) as its 128-bit number, so no
/// string is kept per prediction; any other id through two per-process keyed hashes (nobody
/// outside can make one collide with a request's).
struct IdKeys(RandomState, RandomState);

impl IdKeys {
    fn key(&self, id: &str) -> u128 {
        if id.len() == 32
            && let Ok(v) = u128::from_str_radix(id, 16)
        {
            return v;
        }
        (u128::from(self.0.hash_one(id)) << 64) | u128::from(self.1.hash_one(id))
    }
}

/// Hashes a key that is already uniformly random (a request id, or a keyed hash) by folding it.
#[derive(Default)]
struct FoldKey(u64);

impl Hasher for FoldKey {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = (v as u64) ^ ((v >> 64) as u64);
    }
}

type KeyMap = HashMap<u128, u64, BuildHasherDefault<FoldKey>>;

/// One generation of the index: the sequence numbers of the keys inserted while it was newest.
struct Generation {
    /// The sequence number of the first prediction inserted in it.
    first: u64,
    keys: KeyMap,
}

/// Recent predictions, bounded in count and age.
pub struct RecentPredictions {
    window: Duration,
    capacity: usize,
    per_generation: usize,
    keys: IdKeys,
    models: HashMap<String, Arc<str>>,
    ring: VecDeque<Prediction>,
    /// The sequence number of `ring`'s front.
    first_seq: u64,
    /// Oldest first; the last one is filling.
    generations: VecDeque<Generation>,
    /// A cleared table kept for the next generation.
    spare: Option<KeyMap>,
    /// (sequence number, row) of joined rows from 64 on (rare: requests of many rows).
    joined_high: BTreeSet<(u64, u32)>,
}

impl RecentPredictions {
    pub fn new(window: Duration, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            window,
            capacity,
            per_generation: (capacity / GENERATIONS).max(MIN_GENERATION),
            keys: IdKeys(RandomState::new(), RandomState::new()),
            models: HashMap::new(),
            // Sized once: growing it by doubling copied every prediction into fresh memory.
            // The pages are only touched as predictions arrive.
            ring: VecDeque::with_capacity(capacity),
            first_seq: 0,
            generations: VecDeque::new(),
            spare: None,
            joined_high: BTreeSet::new(),
        }
    }

    /// Predictions held.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Remembers a prediction (one score per row).
    pub fn remember(
        &mut self,
        id: &str,
        (model, version, threshold): (&str, u64, f64),
        (arm, route): (&'static str, RouteArm),
        scores: &[f64],
    ) {
        let now = Instant::now();
        self.expire(now);
        if self.ring.len() >= self.capacity {
            self.forget_oldest();
        }
        let model = match self.models.get(model) {
            Some(name) => Arc::clone(name),
            None => Arc::clone(self.models.entry(model.to_owned()).or_insert_with(|| Arc::from(model))),
        };
        let key = self.keys.key(id);
        let seq = self.first_seq + self.ring.len() as u64;
        self.newest_generation(seq).keys.insert(key, seq);
        self.ring.push_back(Prediction {
            at: now,
            key,
            model,
            version,
            arm,
            route,
            threshold,
            scores: Scores::of(scores),
            joined: 0,
        });
    }

    /// The generation to insert `seq` into: the newest, or a new one when it is full.
    fn newest_generation(&mut self, seq: u64) -> &mut Generation {
        let full = self.generations.back().is_none_or(|g| g.keys.len() >= self.per_generation);
        if full {
            let keys = self.spare.take().unwrap_or_else(|| {
                KeyMap::with_capacity_and_hasher(self.per_generation, BuildHasherDefault::default())
            });
            self.generations.push_back(Generation { first: seq, keys });
        }
        let newest = self.generations.len() - 1;
        &mut self.generations[newest]
    }

    /// The recent prediction for `id` and `row` (the newest if the id was remembered twice),
    /// marking `row` joined.
    pub fn find(&mut self, id: &str, row: u32) -> Option<Found<'_>> {
        self.expire(Instant::now());
        let key = self.keys.key(id);
        let seq = self.generations.iter().rev().find_map(|g| g.keys.get(&key).copied())?;
        let at = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        let prediction = self.ring.get_mut(at).filter(|p| p.key == key)?;
        let score = prediction.score(row)?;
        let first_join = if row < 64 {
            let bit = 1u64 << row;
            let first = prediction.joined & bit == 0;
            prediction.joined |= bit;
            first
        } else {
            self.joined_high.insert((seq, row))
        };
        Some(Found { prediction, score, first_join })
    }

    /// Drops the oldest prediction, and every generation whose predictions have all left.
    fn forget_oldest(&mut self) {
        if self.ring.pop_front().is_none() {
            return;
        }
        self.first_seq += 1;
        // A generation ends where the next begins; the newest (still filling) always stays.
        while self.generations.len() > 1 && self.generations[1].first <= self.first_seq {
            if let Some(mut old) = self.generations.pop_front() {
                old.keys.clear();
                self.spare = Some(old.keys);
            }
        }
        while self.joined_high.first().is_some_and(|(seq, _)| *seq < self.first_seq) {
            self.joined_high.pop_first();
        }
    }

    /// Forgets predictions older than the window.
    fn expire(&mut self, now: Instant) {
        let Some(cutoff) = now.checked_sub(self.window) else { return };
        while self.ring.front().is_some_and(|p| p.at < cutoff) {
            self.forget_oldest();
        }
    }

    /// Keys held by the index (every generation), for tests of its bound.
    #[cfg(test)]
    fn indexed(&self) -> usize {
        self.generations.iter().map(|g| g.keys.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u64) -> String {
        format!("{i:032x}")
    }

    fn remember(recent: &mut RecentPredictions, i: u64, scores: &[f64]) {
        recent.remember(&id(i), ("m", i, 0.5), ("champion", None), scores);
    }

    #[test]
    fn finds_every_prediction_still_in_the_ring_and_none_that_left() {
        // 1000 predictions through a ring of 300 (generations of 64): the last 300 are found,
        // with their own version and score; the older ones are not.
        let mut recent = RecentPredictions::new(Duration::from_secs(60), 300);
        for i in 0..1000 {
            remember(&mut recent, i, &[i as f64 / 1000.0]);
        }
        assert_eq!(recent.len(), 300);
        for i in 0..1000 {
            let found = recent.find(&id(i), 0).map(|f| (f.prediction.version, f.prediction.score(0)));
            if i >= 700 {
                assert_eq!(found, Some((i, Some(i as f64 / 1000.0))), "prediction {i}");
            } else {
                assert_eq!(found, None, "prediction {i} left the ring");
            }
        }
        // The index holds the ring's keys and at most one generation more, never all 1000.
        assert!((300..=300 + 64).contains(&recent.indexed()), "{}", recent.indexed());
        assert!(recent.generations.len() <= 300 / 64 + 2);
    }

    #[test]
    fn a_key_remembered_again_is_found_as_its_newest_prediction() {
        let mut recent = RecentPredictions::new(Duration::from_secs(60), 200);
        remember(&mut recent, 1, &[0.9]);
        for i in 2..100 {
            remember(&mut recent, i, &[0.1]);
        }
        // Id 1 again, in a later generation, as version 9.
        recent.remember(&id(1), ("m", 9, 0.5), ("champion", None), &[0.3]);
        assert_eq!(recent.find(&id(1), 0).map(|f| f.prediction.version), Some(9));
        // Once the first remembrance leaves the ring, the second is still found.
        for i in 100..250 {
            remember(&mut recent, i, &[0.1]);
        }
        assert_eq!(recent.find(&id(1), 0).map(|f| f.prediction.version), Some(9));
    }

    #[test]
    fn a_row_is_joined_once_and_rows_past_the_scores_are_not_found() {
        let mut recent = RecentPredictions::new(Duration::from_secs(60), 10);
        let scores: Vec<f64> = (0..70).map(|r| r as f64 / 100.0).collect();
        recent.remember("client-7", ("m", 7, 0.5), ("champion", None), &scores);
        for row in [0, 63, 64, 69] {
            let found = recent.find("client-7", row).expect("row of the prediction");
            assert!(found.first_join, "row {row}, first label");
            assert_eq!(found.prediction.score(row), Some(row as f64 / 100.0));
            assert!(!recent.find("client-7", row).expect("again").first_join, "row {row}, a correction");
        }
        assert!(recent.find("client-7", 70).is_none(), "no row 70");
        assert!(recent.find("client-8", 0).is_none(), "unknown id");
        // A one-row prediction has only row 0.
        recent.remember("one", ("m", 1, 0.5), ("champion", None), &[0.4]);
        assert!(recent.find("one", 1).is_none());
        assert_eq!(recent.find("one", 0).map(|f| f.prediction.score(0)), Some(Some(0.4)));
    }

    #[test]
    fn predictions_past_the_window_are_forgotten_with_their_generations() {
        // 300 predictions (five generations of 64), then the window passes: one more
        // prediction leaves only its own generation, the old tables cleared.
        let mut recent = RecentPredictions::new(Duration::from_millis(200), 512);
        for i in 0..300 {
            remember(&mut recent, i, &[0.9]);
        }
        assert!(recent.generations.len() >= 5);
        std::thread::sleep(Duration::from_millis(300));
        remember(&mut recent, 300, &[0.9]);
        assert_eq!(recent.len(), 1);
        assert!(recent.find(&id(1), 0).is_none() && recent.find(&id(299), 0).is_none());
        assert_eq!(recent.find(&id(300), 0).map(|f| f.score), Some(0.9));
        assert_eq!(recent.generations.len(), 1, "older generations dropped");
        assert!(recent.indexed() <= 64, "{} keys held", recent.indexed());
    }

    #[test]
    fn rows_from_64_on_are_forgotten_with_their_prediction() {
        let mut recent = RecentPredictions::new(Duration::from_secs(60), 2);
        let scores = [0.5; 100];
        recent.remember("many", ("m", 1, 0.5), ("champion", None), &scores);
        assert!(recent.find("many", 99).expect("row 99").first_join);
        assert_eq!(recent.joined_high.len(), 1);
        remember(&mut recent, 1, &[0.1]);
        remember(&mut recent, 2, &[0.1]);
        assert!(recent.find("many", 99).is_none(), "pushed out of the ring");
        assert!(recent.joined_high.is_empty(), "its joined rows went with it");
    }
}
