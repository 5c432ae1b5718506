//! Reference profiles: what a version's training data looked like, for drift detection.
//! Written beside the model as `profile.json`.

use serde::{Deserialize, Serialize};

/// File name of a version's reference profile.
pub const PROFILE_FILE: &str = "profile.json";
/// Quantile bins per feature (deciles).
pub const BINS: usize = 10;

/// The distribution of one feature (or of the prediction) in the reference data.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeatureProfile {
    pub name: String,
    /// `BINS - 1` interior bin edges: the reference's deciles (linear interpolation).
    pub edges: Vec<f64>,
    /// Share of reference values per bin; bin `i` holds values with exactly `i` edges below them.
    pub proportions: Vec<f64>,
    /// A uniform sample of reference values, sorted, for two-sample tests.
    pub sample: Vec<f64>,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub std: f64,
    /// Share of values that were NaN (left out of everything else).
    pub nan_rate: f64,
}

/// Every feature's profile and the prediction's, for one model version.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReferenceProfile {
    pub rows: u64,
    pub features: Vec<FeatureProfile>,
    pub prediction: Option<FeatureProfile>,
    /// A uniform sample of whole training rows (in feature order), the background explanations
    /// are computed against; empty in profiles written before explanations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub background: Vec<Vec<f64>>,
}

/// Background rows a profile keeps.
pub const BACKGROUND_ROWS: usize = 100;

impl ReferenceProfile {
    /// Checks what drift detection relies on; the message names the feature, field and value.
    pub fn validate(&self) -> Result<(), String> {
        for (i, f) in self.features.iter().enumerate() {
            f.validate().map_err(|e| format!("features[{i}] ({:?}).{e}", f.name))?;
        }
        if let Some(p) = &self.prediction {
            p.validate().map_err(|e| format!("prediction.{e}"))?;
        }
        for (i, row) in self.background.iter().enumerate() {
            if row.len() != self.features.len() {
                return Err(format!(
                    "background[{i}] has {} values, but the profile has {} features",
                    row.len(),
                    self.features.len()
                ));
            }
            if let Some(v) = row.iter().find(|v| !v.is_finite()) {
                return Err(format!("background[{i}] must hold finite values, given {v}"));
            }
        }
        Ok(())
    }
}

impl FeatureProfile {
    fn validate(&self) -> Result<(), String> {
        if self.edges.len() != BINS - 1 {
            return Err(format!("edges has {} values, expected {}", self.edges.len(), BINS - 1));
        }
        if self.proportions.len() != BINS {
            return Err(format!("proportions has {} values, expected {BINS}", self.proportions.len()));
        }
        if let Some(e) = self.edges.iter().find(|e| !e.is_finite()) {
            return Err(format!("edges must be finite, given {e}"));
        }
        if self.edges.windows(2).any(|w| w[1] < w[0]) {
            return Err(format!("edges must not decrease, given {:?}", self.edges));
        }
        if let Some(p) = self.proportions.iter().find(|p| !(0.0..=1.0).contains(*p)) {
            return Err(format!("proportions must be shares in 0..=1, given {p}"));
        }
        let total: f64 = self.proportions.iter().sum();
        // A profile of an all-NaN feature has no shares at all; otherwise they sum to one.
        if total != 0.0 && (total - 1.0).abs() > 1e-6 {
            return Err(format!("proportions must sum to 1, given a sum of {total}"));
        }
        if let Some(v) = self.sample.iter().find(|v| !v.is_finite()) {
            return Err(format!("sample must hold finite values, given {v}"));
        }
        if self.sample.windows(2).any(|w| w[1] < w[0]) {
            return Err("sample must be sorted".into());
        }
        if !(0.0..=1.0).contains(&self.nan_rate) {
            return Err(format!("nan_rate must be in 0..=1, given {}", self.nan_rate));
        }
        if self.std.is_nan() || self.std < 0.0 {
            return Err(format!("std must be at least 0, given {}", self.std));
        }
        Ok(())
    }
}

/// The `q` quantile of sorted values by linear interpolation (numpy's default, "type 7").
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let position = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (low, frac) = (position.floor() as usize, position.fract());
    let high = (low + 1).min(sorted.len() - 1);
    sorted[low] + (sorted[high] - sorted[low]) * frac
}

/// The bin of `value`: how many edges are strictly below it.
pub fn bin_of(edges: &[f64], value: f64) -> usize {
    edges.partition_point(|e| *e < value)
}

impl FeatureProfile {
    /// Profiles `values` (NaN counted and skipped), keeping a sample of at most `sample_size`
    /// values chosen deterministically with `seed`.
    pub fn from_values(name: &str, values: &[f64], sample_size: usize, seed: u64) -> Self {
        let mut clean: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
        clean.sort_by(f64::total_cmp);
        let n = clean.len();
        let edges: Vec<f64> = (1..BINS).map(|i| quantile(&clean, i as f64 / BINS as f64)).collect();
        let mut counts = [0u64; BINS];
        for v in &clean {
            counts[bin_of(&edges, *v)] += 1;
        }
        let proportions = counts.iter().map(|c| if n == 0 { 0.0 } else { *c as f64 / n as f64 }).collect();
        let mean = if n == 0 { 0.0 } else { clean.iter().sum::<f64>() / n as f64 };
        let var = if n < 2 { 0.0 } else { clean.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64 };
        let mut sample = if n <= sample_size {
            clean.clone()
        } else {
            let mut rng = SplitMix(seed);
            let mut picked: Vec<f64> = clean[..sample_size].to_vec();
            for (i, v) in clean.iter().enumerate().skip(sample_size) {
                let j = (rng.next() % (i as u64 + 1)) as usize;
                if j < sample_size {
                    picked[j] = *v;
                }
            }
            picked
        };
        sample.sort_by(f64::total_cmp);
        Self {
            name: name.to_owned(),
            edges,
            proportions,
            sample,
            min: clean.first().copied().unwrap_or(f64::NAN),
            max: clean.last().copied().unwrap_or(f64::NAN),
            mean,
            std: var.sqrt(),
            nan_rate: if values.is_empty() { 0.0 } else { (values.len() - n) as f64 / values.len() as f64 },
        }
    }
}

impl ReferenceProfile {
    /// Profiles row-major `features` (named `names`) and optional `predictions`.
    pub fn from_rows(names: &[String], rows: &[Vec<f64>], predictions: Option<&[f64]>, sample_size: usize) -> Self {
        let features = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let column: Vec<f64> = rows.iter().map(|r| r.get(i).copied().unwrap_or(f64::NAN)).collect();
                FeatureProfile::from_values(name, &column, sample_size, i as u64 + 1)
            })
            .collect();
        let prediction = predictions.map(|p| FeatureProfile::from_values("prediction", p, sample_size, 0));
        // Reservoir sample of whole rows without NaN, kept in data order.
        let mut rng = SplitMix(0xBAC6);
        let mut picked: Vec<(usize, &Vec<f64>)> = Vec::with_capacity(BACKGROUND_ROWS);
        for (seen, row) in rows.iter().filter(|r| r.len() == names.len() && r.iter().all(|v| v.is_finite())).enumerate()
        {
            if picked.len() < BACKGROUND_ROWS {
                picked.push((seen, row));
            } else if let Some(slot) = picked.get_mut((rng.next() % (seen as u64 + 1)) as usize) {
                *slot = (seen, row);
            }
        }
        picked.sort_by_key(|(i, _)| *i);
        let background = picked.into_iter().map(|(_, r)| r.clone()).collect();
        Self { rows: rows.len() as u64, features, prediction, background }
    }
}

/// A tiny deterministic generator for reservoir sampling (SplitMix64).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixed data of the drift statistics tests: `(i * 37 % 101) / 10` for i in 0..200.
    pub fn reference_values() -> Vec<f64> {
        (0..200).map(|i| f64::from(i * 37 % 101) / 10.0).collect()
    }

    #[test]
    fn deciles_match_numpy() {
        // numpy 2.4: np.quantile(ref, np.linspace(0.1, 0.9, 9)) on reference_values()
        let expected =
            [0.9900000000000002, 1.9800000000000004, 3.0, 4.0, 5.0, 6.0, 7.030000000000001, 8.020000000000001, 9.01];
        let p = FeatureProfile::from_values("x", &reference_values(), 1000, 1);
        for (a, b) in p.edges.iter().zip(expected) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        assert!((p.proportions.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(p.sample.len(), 200);
    }

    #[test]
    fn the_background_is_a_bounded_sample_of_whole_rows_without_nan_and_is_checked() {
        let names = vec!["a".to_owned(), "b".to_owned()];
        let mut rows: Vec<Vec<f64>> = (0..1000).map(|i| vec![f64::from(i), f64::from(i) * 2.0]).collect();
        rows[3][1] = f64::NAN;
        let mut p = ReferenceProfile::from_rows(&names, &rows, None, 100);
        assert_eq!(p.background.len(), BACKGROUND_ROWS);
        assert!(p.background.iter().all(|r| r[1] == r[0] * 2.0 && r[0] != 3.0), "whole rows, the NaN row left out");
        assert!(p.background.windows(2).all(|w| w[0][0] < w[1][0]), "in data order, no repeats");
        assert!(p.background.last().unwrap()[0] > 500.0, "drawn from the whole data, not its start");
        p.validate().unwrap();
        p.background[7].pop();
        assert!(p.validate().unwrap_err().contains("background[7] has 1 values, but the profile has 2 features"));
        let small = ReferenceProfile::from_rows(&names, &rows[..10], None, 100);
        assert_eq!(small.background.len(), 9);
    }

    #[test]
    fn nan_is_counted_not_binned_and_the_sample_is_bounded() {
        let mut values: Vec<f64> = (0..5000).map(f64::from).collect();
        values.extend([f64::NAN; 500]);
        let p = FeatureProfile::from_values("x", &values, 100, 7);
        assert!((p.nan_rate - 500.0 / 5500.0).abs() < 1e-12);
        assert_eq!(p.sample.len(), 100);
        assert!(p.sample.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!((p.min, p.max), (0.0, 4999.0));
        assert!(p.proportions.iter().all(|q| (q - 0.1).abs() < 0.001), "{:?}", p.proportions);
    }
}
