//! Shapley values of one prediction against a background sample (interventional: a feature
//! outside a coalition takes each background row's value in turn), evaluated through the model
//! in large batches.
//!
//! With `v(S)` = the mean over the background rows `b` of `f(x_S, b_rest)`, the value of
//! feature `i` is `Σ_{S ∌ i} |S|! (F-|S|-1)! / F! · (v(S ∪ {i}) - v(S))`.
//! - **Exact** (every coalition, `2^F · B` model rows) when `F <= exact_max_features`.
//! - **Sampled** above that: `permutations` random orderings in antithetic pairs (each ordering
//!   and its reverse), each walked once, adding one feature at a time (`(F - 1) · B` rows per
//!   ordering, plus the two shared ends). The standard error of each value is the spread of the
//!   pair means over `sqrt(pairs)`.
//!
//! Either way the values add up exactly (to rounding) to the prediction minus the background
//! mean, `f(x) - mean_b f(b)`: the exact sum telescopes over coalitions, and each sampled
//! ordering's contributions telescope from `v(∅)` to `v(all)`.

/// How to compute.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShapleySettings {
    /// Largest feature count computed exactly (every coalition).
    pub exact_max_features: usize,
    /// Orderings sampled above that (rounded up to an even number: antithetic pairs).
    pub permutations: usize,
    /// Most input values (rows x features) sent to the model at once.
    pub chunk_values: usize,
    pub seed: u64,
}

impl Default for ShapleySettings {
    fn default() -> Self {
        Self { exact_max_features: 12, permutations: 64, chunk_values: 1 << 20, seed: 0x5eed }
    }
}

/// One row's attributions.
#[derive(Clone, Debug, PartialEq)]
pub struct Attribution {
    /// `mean_b f(b)`: the model's mean over the background.
    pub base_value: f64,
    /// `f(x)`.
    pub prediction: f64,
    /// One per feature, in input column order; they sum to `prediction - base_value`.
    pub values: Vec<f64>,
    /// Per feature, for the sampled method.
    pub standard_error: Option<Vec<f64>>,
    /// Model rows evaluated.
    pub evaluations: usize,
    /// `exact` or `sampled`.
    pub method: &'static str,
}

/// Evaluates `n` rows given row-major (`n * F` values); returns `n` scores.
pub type Model<'a> = dyn FnMut(&[f64], usize) -> Result<Vec<f64>, String> + 'a;

/// The Shapley values of `x` against `background` (rows of `x.len()` values).
pub fn explain(
    x: &[f64],
    background: &[Vec<f64>],
    settings: &ShapleySettings,
    model: &mut Model<'_>,
) -> Result<Attribution, String> {
    let features = x.len();
    if features == 0 || background.is_empty() {
        return Err("explaining needs at least one feature and one background row".into());
    }
    if let Some((i, row)) = background.iter().enumerate().find(|(_, r)| r.len() != features) {
        return Err(format!("background row {i} has {} values, the input has {features}", row.len()));
    }
    let chunk_rows = (settings.chunk_values / features).max(background.len());
    let mut values = CoalitionValues { x, background, model, chunk_rows, evaluations: 0 };
    if exact_applies(features, settings) {
        exact(&mut values)
    } else {
        sampled(&mut values, settings.permutations.max(2).div_ceil(2), settings.seed)
    }
}

fn exact_applies(features: usize, settings: &ShapleySettings) -> bool {
    features <= settings.exact_max_features.min(20)
}

/// Model rows one explained row costs with `features` and `background` rows.
pub fn cost(features: usize, background: usize, settings: &ShapleySettings) -> u64 {
    let (f, b) = (features as u64, background as u64);
    if exact_applies(features, settings) {
        (1u64 << f) * b
    } else {
        let orderings = settings.permutations.max(2).div_ceil(2) as u64 * 2;
        2 * b + orderings * f.saturating_sub(1) * b
    }
}

/// `v(S)` for coalitions given as masks (bit `j`: feature `j` from `x`).
struct CoalitionValues<'a, 'm> {
    x: &'a [f64],
    background: &'a [Vec<f64>],
    model: &'a mut Model<'m>,
    chunk_rows: usize,
    evaluations: usize,
}

impl CoalitionValues<'_, '_> {
    /// `v` of each coalition, each coalition's `B` rows batched with its neighbours'.
    fn of(&mut self, coalitions: &[Vec<bool>]) -> Result<Vec<f64>, String> {
        let (features, rows_per) = (self.x.len(), self.background.len());
        let per_chunk = (self.chunk_rows / rows_per).max(1);
        let mut out = Vec::with_capacity(coalitions.len());
        for chunk in coalitions.chunks(per_chunk) {
            let mut rows = Vec::with_capacity(chunk.len() * rows_per * features);
            for coalition in chunk {
                for b in self.background {
                    rows.extend((0..features).map(|j| if coalition[j] { self.x[j] } else { b[j] }));
                }
            }
            let n = chunk.len() * rows_per;
            let scores = (self.model)(&rows, n)?;
            if scores.len() != n {
                return Err(format!("the model answered {} scores for {n} rows", scores.len()));
            }
            self.evaluations += n;
            out.extend(scores.chunks(rows_per).map(|s| s.iter().sum::<f64>() / rows_per as f64));
        }
        Ok(out)
    }
}

fn exact(values: &mut CoalitionValues<'_, '_>) -> Result<Attribution, String> {
    let features = values.x.len();
    let masks = 1usize << features;
    let coalitions: Vec<Vec<bool>> = (0..masks).map(|m| (0..features).map(|j| m >> j & 1 == 1).collect()).collect();
    let v = values.of(&coalitions)?;
    // weight[s] = s! (F-s-1)! / F! = 1 / (F * C(F-1, s)).
    let mut weight = vec![0.0; features];
    let mut choose = 1.0f64;
    for (s, w) in weight.iter_mut().enumerate() {
        *w = 1.0 / (features as f64 * choose);
        choose = choose * (features - 1 - s) as f64 / (s + 1) as f64;
    }
    let mut phi = vec![0.0; features];
    for mask in 0..masks {
        let size = mask.count_ones() as usize;
        for (i, p) in phi.iter_mut().enumerate() {
            if mask >> i & 1 == 0 {
                *p += weight[size] * (v[mask | 1 << i] - v[mask]);
            }
        }
    }
    Ok(Attribution {
        base_value: v[0],
        prediction: v[masks - 1],
        values: phi,
        standard_error: None,
        evaluations: values.evaluations,
        method: "exact",
    })
}

fn sampled(values: &mut CoalitionValues<'_, '_>, pairs: usize, seed: u64) -> Result<Attribution, String> {
    let features = values.x.len();
    let ends = values.of(&[vec![false; features], vec![true; features]])?;
    let (empty, full) = (ends[0], ends[1]);
    let mut rng = fastrand::Rng::with_seed(seed);
    // Per pair: the mean of the ordering's and its reverse's contribution of each feature.
    let mut pair_means: Vec<Vec<f64>> = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        let mut order: Vec<usize> = (0..features).collect();
        rng.shuffle(&mut order);
        let reverse: Vec<usize> = order.iter().rev().copied().collect();
        let mut mean = vec![0.0; features];
        for ordering in [&order, &reverse] {
            // The coalitions strictly between empty and full along this ordering.
            let mut inside = vec![false; features];
            let chain: Vec<Vec<bool>> = ordering[..features - 1]
                .iter()
                .map(|&j| {
                    inside[j] = true;
                    inside.clone()
                })
                .collect();
            let mut v = vec![empty];
            v.extend(values.of(&chain)?);
            v.push(full);
            for (t, &j) in ordering.iter().enumerate() {
                mean[j] += (v[t + 1] - v[t]) / 2.0;
            }
        }
        pair_means.push(mean);
    }
    let n = pair_means.len() as f64;
    let phi: Vec<f64> = (0..features).map(|j| pair_means.iter().map(|m| m[j]).sum::<f64>() / n).collect();
    let standard_error = (0..features)
        .map(|j| {
            if pair_means.len() < 2 {
                return f64::NAN;
            }
            let var = pair_means.iter().map(|m| (m[j] - phi[j]).powi(2)).sum::<f64>() / (n - 1.0);
            (var / n).sqrt()
        })
        .collect();
    Ok(Attribution {
        base_value: empty,
        prediction: full,
        values: phi,
        standard_error: Some(standard_error),
        evaluations: values.evaluations,
        method: "sampled",
    })
}

/// The `k` largest attributions by magnitude: (feature index, value), largest first.
pub fn top(values: &[f64], k: usize) -> Vec<(usize, f64)> {
    let mut ranked: Vec<(usize, f64)> = values.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then(a.0.cmp(&b.0)));
    ranked.truncate(k);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn background(rows: usize, features: usize) -> Vec<Vec<f64>> {
        let mut rng = fastrand::Rng::with_seed(3);
        (0..rows).map(|_| (0..features).map(|_| rng.f64() * 2.0 - 1.0).collect()).collect()
    }

    /// `f(z) = Σ w_j z_j + pair · z_0 z_1 + triple · z_0 z_1 z_2`.
    fn model(weights: Vec<f64>, (pair, triple): (f64, f64)) -> impl FnMut(&[f64], usize) -> Result<Vec<f64>, String> {
        move |rows: &[f64], n: usize| {
            let f = weights.len();
            Ok((0..n)
                .map(|r| {
                    let z = &rows[r * f..(r + 1) * f];
                    let linear: f64 = z.iter().zip(&weights).map(|(a, w)| a * w).sum();
                    linear + pair * z[0] * z[1] + triple * z[0] * z[1] * z[2]
                })
                .collect())
        }
    }

    #[test]
    fn a_linear_model_gets_weight_times_distance_from_the_background_mean() {
        let weights = vec![1.0, -2.0, 0.5, 3.0];
        let bg = background(20, 4);
        let x = [0.3, 0.9, -0.4, 0.1];
        let a = explain(&x, &bg, &ShapleySettings::default(), &mut model(weights.clone(), (0.0, 0.0))).unwrap();
        for j in 0..4 {
            let mean = bg.iter().map(|b| b[j]).sum::<f64>() / 20.0;
            assert!((a.values[j] - weights[j] * (x[j] - mean)).abs() < 1e-12, "{j}: {:?}", a.values);
        }
        assert_eq!((a.method, a.evaluations), ("exact", 16 * 20));
    }

    #[test]
    fn exact_values_add_up_to_prediction_minus_base_and_split_an_interaction_evenly() {
        let bg = vec![vec![0.0; 3]];
        let x = [1.0, 1.0, 1.0];
        let a = explain(&x, &bg, &ShapleySettings::default(), &mut model(vec![0.0, 0.0, 1.0], (4.0, 0.0))).unwrap();
        assert!((a.values.iter().sum::<f64>() - (a.prediction - a.base_value)).abs() < 1e-12);
        assert!((a.values[0] - 2.0).abs() < 1e-12 && (a.values[1] - 2.0).abs() < 1e-12, "{:?}", a.values);
        assert!((a.values[2] - 1.0).abs() < 1e-12);
        assert_eq!(top(&a.values, 2), [(0, 2.0), (1, 2.0)]);
    }

    #[test]
    fn the_sampled_estimate_is_additive_and_within_its_stated_error_of_the_exact_values() {
        let features = 10;
        let weights: Vec<f64> = (0..features).map(|j| (j as f64 - 4.5) / 3.0).collect();
        let bg = background(16, features);
        let x: Vec<f64> = (0..features).map(|j| (j as f64 / 10.0) - 0.3).collect();
        let exact_values =
            explain(&x, &bg, &ShapleySettings::default(), &mut model(weights.clone(), (0.0, 2.5))).unwrap();
        let settings = ShapleySettings { exact_max_features: 4, permutations: 200, ..Default::default() };
        let sampled = explain(&x, &bg, &settings, &mut model(weights, (0.0, 2.5))).unwrap();
        assert_eq!(sampled.method, "sampled");
        assert!((sampled.values.iter().sum::<f64>() - (sampled.prediction - sampled.base_value)).abs() < 1e-9);
        assert!((sampled.base_value - exact_values.base_value).abs() < 1e-12);
        let se = sampled.standard_error.as_ref().unwrap();
        for (j, se) in se.iter().enumerate() {
            let diff = (sampled.values[j] - exact_values.values[j]).abs();
            assert!(diff <= 4.0 * se + 1e-9, "feature {j}: |{diff}| > 4 x {se}");
        }
        // Only the three interacting features vary between orderings (antithetic pairs make a
        // pairwise interaction exact; a three-way one is not).
        assert!(se[..3].iter().all(|s| *s > 0.0) && se[3..].iter().all(|s| *s < 1e-12), "{se:?}");
        assert_eq!(sampled.evaluations, 2 * 16 + 200 * 9 * 16);
    }

    #[test]
    fn bad_shapes_are_refused_and_a_model_that_fails_says_so() {
        let bg = vec![vec![0.0; 2]];
        let err = explain(&[1.0, 2.0, 3.0], &bg, &ShapleySettings::default(), &mut model(vec![1.0; 3], (0.0, 0.0)));
        assert!(err.unwrap_err().contains("background row 0 has 2 values, the input has 3"));
        let mut failing = |_: &[f64], _: usize| -> Result<Vec<f64>, String> { Err("boom".into()) };
        assert_eq!(explain(&[1.0, 2.0], &bg, &ShapleySettings::default(), &mut failing).unwrap_err(), "boom");
        let mut short = |_: &[f64], _: usize| -> Result<Vec<f64>, String> { Ok(vec![0.0]) };
        assert!(explain(&[1.0, 2.0], &bg, &ShapleySettings::default(), &mut short).unwrap_err().contains("scores for"));
    }
}
