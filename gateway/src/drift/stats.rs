//! Drift statistics: population stability index over reference quantile bins, and the
//! two-sample Kolmogorov–Smirnov test with its asymptotic p-value.

use flywheel_registry::profile::bin_of;

/// Smallest bin share used in PSI, so empty bins do not make it infinite.
pub const PSI_FLOOR: f64 = 1e-4;

/// PSI of `values` against reference bin `edges` and `expected` shares:
/// Σ (aᵢ − eᵢ) · ln(aᵢ / eᵢ), both shares floored at [`PSI_FLOOR`]. NaN values are skipped.
pub fn psi(edges: &[f64], expected: &[f64], values: &[f64]) -> f64 {
    // Profiles are validated when read; this guards against one built in memory.
    if expected.is_empty() {
        return 0.0;
    }
    let mut counts = vec![0u64; expected.len()];
    let mut n = 0u64;
    for v in values.iter().filter(|v| !v.is_nan()) {
        counts[bin_of(edges, *v).min(expected.len() - 1)] += 1;
        n += 1;
    }
    if n == 0 {
        return 0.0;
    }
    counts
        .iter()
        .zip(expected)
        .map(|(c, e)| {
            let a = (*c as f64 / n as f64).max(PSI_FLOOR);
            let e = e.max(PSI_FLOOR);
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// The two-sample KS statistic: the largest gap between the empirical CDFs of two sorted samples.
pub fn ks_statistic(a: &[f64], b: &[f64]) -> f64 {
    let (n, m) = (a.len(), b.len());
    if n == 0 || m == 0 {
        return 0.0;
    }
    let (mut i, mut j, mut d) = (0, 0, 0.0f64);
    while i < n && j < m {
        let x = a[i].min(b[j]);
        while i < n && a[i] <= x {
            i += 1;
        }
        while j < m && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / n as f64 - j as f64 / m as f64).abs());
    }
    d
}

/// Asymptotic two-sided p-value of KS statistic `d` for samples of sizes `n` and `m`: the
/// Kolmogorov distribution's survival function at √(nm/(n+m)) · d (scipy's `kstwobign.sf`).
pub fn ks_pvalue(d: f64, n: usize, m: usize) -> f64 {
    if n == 0 || m == 0 {
        return 1.0;
    }
    let en = (n * m) as f64 / (n + m) as f64;
    kolmogorov_sf(en.sqrt() * d)
}

/// P(K > x) for the Kolmogorov distribution.
pub fn kolmogorov_sf(x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    if x < 1.0 {
        // For small x the alternating series converges slowly; use the Jacobi-theta form of the CDF.
        let pi2 = std::f64::consts::PI.powi(2);
        let sum: f64 = (1..=8).map(|k| (-(f64::from(2 * k - 1)).powi(2) * pi2 / (8.0 * x * x)).exp()).sum();
        return (1.0 - (2.0 * std::f64::consts::PI).sqrt() / x * sum).clamp(0.0, 1.0);
    }
    let sum: f64 = (1..=100)
        .map(|k| {
            let sign = if k % 2 == 1 { 1.0 } else { -1.0 };
            sign * (-2.0 * f64::from(k * k) * x * x).exp()
        })
        .sum();
    (2.0 * sum).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flywheel_registry::FeatureProfile;

    // Fixed data shared with the reference computation:
    //   ref = [(i*37 % 101)/10 for i in range(200)]
    //   cur = [((i*53 % 97)/10) + 1.5 for i in range(150)]
    fn reference() -> Vec<f64> {
        (0..200).map(|i| f64::from(i * 37 % 101) / 10.0).collect()
    }
    fn current() -> Vec<f64> {
        (0..150).map(|i| f64::from(i * 53 % 97) / 10.0 + 1.5).collect()
    }

    #[test]
    fn psi_matches_an_independent_computation() {
        // numpy 2.4.6: edges = np.quantile(ref, np.linspace(0.1, 0.9, 9));
        // shares = np.clip(np.bincount(np.searchsorted(edges, x, side='left'), minlength=10)/len(x), 1e-4, None);
        // psi = np.sum((a - e) * np.log(a / e))  ->  0.775583362895407
        let profile = FeatureProfile::from_values("x", &reference(), 1000, 1);
        let value = psi(&profile.edges, &profile.proportions, &current());
        assert!((value - 0.775583362895407).abs() < 1e-12, "{value}");
        assert!(psi(&profile.edges, &profile.proportions, &reference()).abs() < 1e-12, "no shift, no PSI");
    }

    #[test]
    fn ks_matches_scipy() {
        // scipy 1.17.1: stats.ks_2samp(ref, cur).statistic -> 0.15;
        // stats.kstwobign.sf(np.sqrt(200*150/350) * 0.15) -> 0.04225616120892953
        let (mut a, mut b) = (reference(), current());
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        let d = ks_statistic(&a, &b);
        assert!((d - 0.15).abs() < 1e-12, "{d}");
        let p = ks_pvalue(d, a.len(), b.len());
        assert!((p - 0.04225616120892953).abs() < 1e-9, "{p}");
    }

    #[test]
    fn kolmogorov_survival_matches_scipy_on_both_branches() {
        // scipy 1.17.1: kstwobign.sf(0.5), sf(1.0), sf(2.0)
        for (x, expected) in [(0.5, 0.9639452436648751), (1.0, 0.26999967167735456), (2.0, 0.0006709252557796953)] {
            let got = kolmogorov_sf(x);
            assert!((got - expected).abs() < 1e-9, "sf({x}) = {got}, scipy {expected}");
        }
    }
}
