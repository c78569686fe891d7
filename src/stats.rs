//! Distribution statistics of per-backend counts and the spread verdict.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF};
use statrs::statistics::{Data, OrderStatistics, Statistics};

/// Pass or fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Pass,
    Fail,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
        })
    }
}

/// What the verdict demands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Criteria {
    /// Backends that must answer; `None` takes the ones that did.
    pub expect_backends: Option<usize>,
    /// Each backend within ±margin % of its fair share (xcluster's check uses 50).
    pub margin_pct: f64,
    /// Also fail when the chi-square p-value against uniform is below this.
    pub alpha: Option<f64>,
}

/// xcluster's ±50% margin, nothing else demanded (the tests' criteria).
#[cfg(test)]
pub(crate) const LOOSE: Criteria = Criteria {
    expect_backends: None,
    margin_pct: 50.0,
    alpha: None,
};

/// Statistics of one run's per-backend counts, and the verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub backends: usize,
    pub min: u64,
    pub median: f64,
    pub max: u64,
    pub mean: f64,
    pub stddev: f64,
    /// Coefficient of variation: stddev / mean.
    pub cv: f64,
    /// Jain's fairness index: 1 = perfectly even, 1/n = one backend got everything.
    pub jain: f64,
    /// Chi-square statistic against a uniform spread, its degrees of freedom and p-value.
    pub chi2: f64,
    pub df: usize,
    pub p_value: Option<f64>,
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

/// `counts`: one entry per backend, zeros included; `failed`: connections that got no answer.
pub fn evaluate(counts: &[(&str, u64)], failed: u64, criteria: &Criteria) -> Stats {
    let answered = counts.iter().filter(|(_, c)| *c > 0).count();
    let n = criteria.expect_backends.unwrap_or(answered).max(counts.len()).max(1);
    let mut values: Vec<f64> = counts.iter().map(|(_, c)| *c as f64).collect();
    values.resize(n, 0.0);
    let total: f64 = values.iter().sum();
    let mean = total / n as f64;
    let stddev = if n > 1 { values.iter().population_std_dev() } else { 0.0 };
    let sum_sq: f64 = values.iter().map(|v| v * v).sum();
    let (cv, jain) = if total > 0.0 {
        (stddev / mean, total * total / (n as f64 * sum_sq))
    } else {
        (0.0, 0.0)
    };
    let chi2 = if mean > 0.0 {
        values.iter().map(|v| (v - mean).powi(2) / mean).sum()
    } else {
        0.0
    };
    let df = n - 1;
    let p_value = (df > 0 && mean > 0.0)
        .then(|| ChiSquared::new(df as f64).ok().map(|d| d.sf(chi2)))
        .flatten();
    let median = Data::new(values.clone()).median();
    let min = values.iter().copied().fold(f64::INFINITY, f64::min) as u64;
    let max = values.iter().copied().fold(0.0, f64::max) as u64;

    let mut reasons = Vec::new();
    if total == 0.0 {
        reasons.push("no connection was answered".to_string());
    } else {
        if let Some(expect) = criteria.expect_backends {
            if answered < expect {
                reasons.push(format!("only {answered} of {expect} expected backends answered"));
            } else if answered > expect {
                reasons.push(format!("{answered} backends answered, {expect} expected"));
            }
        }
        let (lo, hi) = (
            mean * (1.0 - criteria.margin_pct / 100.0),
            mean * (1.0 + criteria.margin_pct / 100.0),
        );
        let mut outside: Vec<String> = counts
            .iter()
            .filter(|(_, c)| (*c as f64) < lo || (*c as f64) > hi)
            .map(|(name, c)| format!("{name}={c}"))
            .collect();
        if !outside.is_empty() {
            let shown = outside.len().min(3);
            let more = outside.len() - shown;
            outside.truncate(shown);
            reasons.push(format!(
                "{} backend(s) outside ±{}% of the fair share {:.1} [{:.1}, {:.1}]: {}{}",
                shown + more,
                criteria.margin_pct,
                mean,
                lo,
                hi,
                outside.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ));
        }
        if let (Some(alpha), Some(p)) = (criteria.alpha, p_value)
            && p < alpha
        {
            reasons.push(format!(
                "chi-square p-value {p:.3e} is below alpha {alpha}: not a uniform spread"
            ));
        }
    }
    if failed > 0 {
        reasons.push(format!("{failed} connection(s) failed"));
    }
    Stats {
        backends: n,
        min,
        median,
        max,
        mean,
        stddev,
        cv,
        jain,
        chi2,
        df,
        p_value,
        verdict: if reasons.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, eps: f64) -> bool {
        (a - b).abs() < eps
    }

    #[test]
    fn perfectly_even() {
        let s = evaluate(&[("a", 250), ("b", 250), ("c", 250), ("d", 250)], 0, &LOOSE);
        assert_eq!(s.verdict, Verdict::Pass);
        assert_eq!((s.min, s.max, s.median), (250, 250, 250.0));
        assert_eq!(s.cv, 0.0);
        assert_eq!(s.jain, 1.0);
        assert_eq!(s.chi2, 0.0);
        assert_eq!(s.df, 3);
        assert!(close(s.p_value.unwrap(), 1.0, 1e-12));
    }

    #[test]
    fn known_values() {
        // counts 10, 20, 30: mean 20, population sd sqrt(200/3), chi2 = (100+0+100)/20 = 10, df 2,
        // p = exp(-10/2) for 2 degrees of freedom; Jain = 60^2 / (3 * 1400).
        let s = evaluate(&[("a", 10), ("b", 20), ("c", 30)], 0, &LOOSE);
        assert!(close(s.stddev, (200.0f64 / 3.0).sqrt(), 1e-9));
        assert!(close(s.cv, (200.0f64 / 3.0).sqrt() / 20.0, 1e-9));
        assert!(close(s.chi2, 10.0, 1e-12));
        assert!(close(s.p_value.unwrap(), (-5.0f64).exp(), 1e-9));
        assert!(close(s.jain, 3600.0 / 4200.0, 1e-12));
        assert_eq!(s.median, 20.0);
        assert_eq!(s.verdict, Verdict::Pass);
        // chi2 = 10 with 2 df is p ~ 0.0067: alpha 0.01 rejects it.
        let strict = Criteria {
            alpha: Some(0.01),
            ..LOOSE
        };
        assert_eq!(
            evaluate(&[("a", 10), ("b", 20), ("c", 30)], 0, &strict).verdict,
            Verdict::Fail
        );
    }

    #[test]
    fn chi_square_p_value_matches_tables() {
        // Upper 5% point of chi-square with 9 df is 16.919.
        let d = ChiSquared::new(9.0).unwrap();
        assert!(close(d.sf(16.919), 0.05, 1e-4));
    }

    #[test]
    fn missing_and_outlying_backends_fail() {
        let c = Criteria {
            expect_backends: Some(4),
            ..LOOSE
        };
        let s = evaluate(&[("a", 100), ("b", 100), ("c", 100)], 0, &c);
        assert_eq!(s.verdict, Verdict::Fail);
        assert_eq!(s.backends, 4);
        assert_eq!(s.min, 0);
        assert!(s.reasons[0].contains("only 3 of 4"), "{:?}", s.reasons);
        let s = evaluate(&[("a", 100), ("b", 100), ("c", 100), ("d", 10)], 0, &c);
        assert_eq!(s.verdict, Verdict::Fail);
        assert!(s.reasons[0].contains("d=10"), "{:?}", s.reasons);
        let s = evaluate(&[("a", 100), ("b", 100)], 1, &LOOSE);
        assert_eq!(s.reasons, vec!["1 connection(s) failed".to_string()]);
    }

    #[test]
    fn one_backend_and_nothing() {
        let s = evaluate(&[("a", 7)], 0, &LOOSE);
        assert_eq!((s.df, s.p_value, s.verdict), (0, None, Verdict::Pass));
        let s = evaluate(&[], 5, &LOOSE);
        assert_eq!(s.verdict, Verdict::Fail);
        assert_eq!(s.reasons[0], "no connection was answered");
    }
}
