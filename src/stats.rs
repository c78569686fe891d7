//! Distribution statistics of per-backend counts and the spread verdict.

use serde::{Deserialize, Serialize};
use statrs::distribution::{Binomial, ChiSquared, ContinuousCDF, DiscreteCDF};
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

/// The significance level of the spread tests when none is given (`--alpha`).
pub const DEFAULT_ALPHA: f64 = 0.001;

/// What the verdict demands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Criteria {
    /// Backends that must answer; `None` takes the ones that did.
    pub expect_backends: Option<usize>,
    /// Each backend within ±margin % of its fair share (xcluster's check uses 50), where the
    /// sample is large enough for a fair balancer to stay within it (see [`Band`]).
    pub margin_pct: f64,
    /// Significance level of the chi-square and per-backend tests; `None` is [`DEFAULT_ALPHA`].
    pub alpha: Option<f64>,
}

/// xcluster's ±50% margin, nothing else demanded (the tests' criteria).
#[cfg(test)]
pub(crate) const LOOSE: Criteria = Criteria {
    expect_backends: None,
    margin_pct: 50.0,
    alpha: None,
};

/// A check of the verdict: the ones that failed decide a FAIL, the spread tests that held a PASS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    /// Some connection was answered.
    Answered,
    /// Every expected backend answered, and no other.
    Backends,
    /// Every backend within ±margin of the fair share, where the sample makes that meaningful.
    Margin,
    /// Every backend within the fair-random binomial bound, where ±margin is not meaningful.
    BinomialBound,
    /// Chi-square goodness of fit against a uniform spread at alpha.
    ChiSquare,
    /// No connection failed.
    Failures,
}

/// The per-backend band: ±margin of the fair share, widened where a fair random balancer
/// strays further by chance to the bound it reaches with probability `alpha / (2 backends)` per
/// side (binomial, Bonferroni over the backends: all of a fair run's backends stay inside with
/// probability at least 1 - alpha).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Band {
    pub margin_pct: f64,
    pub lo: f64,
    pub hi: f64,
    /// The band is ±margin: a fair balancer stays within it (probability ≥ 1 - alpha). When
    /// false, at least one side is the fair-random bound and the verdict rests on chi-square and
    /// that bound.
    pub margin_meaningful: bool,
}

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
    /// Significance level the tests used (absent in records made before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// The per-backend band applied (absent with a single backend, and in older records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub band: Option<Band>,
    pub verdict: Verdict,
    /// A FAIL: the checks that failed, in the order of `reasons`. A PASS: the spread tests that
    /// held (chi-square, and margin or binomial-bound). Empty in older records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decided_by: Vec<Check>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

/// `counts`: one entry per backend, zeros included; `failed`: connections that got no answer.
pub fn evaluate(counts: &[(&str, u64)], failed: u64, criteria: &Criteria) -> Stats {
    let alpha = criteria.alpha.unwrap_or(DEFAULT_ALPHA);
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
    let ok = total as u64;
    let fair = (n > 1 && ok > 0).then(|| FairBound::new(ok, n, alpha));
    let band = fair.as_ref().map(|f| f.band(mean, criteria.margin_pct));

    let mut failures: Vec<(Check, String)> = Vec::new();
    if ok == 0 {
        failures.push((Check::Answered, "no connection was answered".to_string()));
    } else {
        let silent: Vec<&str> = counts.iter().filter(|(_, c)| *c == 0).map(|(name, _)| *name).collect();
        let missing = match criteria.expect_backends {
            Some(expect) if answered > expect => Some(format!("{answered} backends answered, {expect} expected")),
            Some(expect) if answered < expect => {
                Some(format!("only {answered} of {expect} expected backends answered"))
            }
            None if !silent.is_empty() => Some(format!("only {answered} of {n} backends answered")),
            _ => None,
        };
        if let Some(mut reason) = missing {
            if !silent.is_empty() {
                reason.push_str(&format!("; {} never answered", listed(&silent, 3)));
            }
            if let Some(f) = &fair
                && answered < n
                && let Some(note) = f.empty_note(mean)
            {
                reason.push_str(&format!("; {note}"));
            }
            failures.push((Check::Backends, reason));
        }
        if let (Some(f), Some(band)) = (&fair, &band)
            && let Some(reason) = f.outliers(counts, mean, band)
        {
            let check = if band.margin_meaningful {
                Check::Margin
            } else {
                Check::BinomialBound
            };
            failures.push((check, reason));
        }
        if let Some(p) = p_value
            && p < alpha
        {
            failures.push((
                Check::ChiSquare,
                format!("chi-square p={} < {alpha}: not a uniform spread", p_text(p)),
            ));
        }
    }
    if failed > 0 {
        failures.push((Check::Failures, format!("{failed} connection(s) failed")));
    }
    let (verdict, decided_by, reasons) = if failures.is_empty() {
        let held = match &band {
            Some(b) if b.margin_meaningful => vec![Check::ChiSquare, Check::Margin],
            Some(_) => vec![Check::ChiSquare, Check::BinomialBound],
            None => Vec::new(),
        };
        (Verdict::Pass, held, Vec::new())
    } else {
        let (checks, reasons) = failures.into_iter().unzip();
        (Verdict::Fail, checks, reasons)
    };
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
        alpha: Some(alpha),
        band,
        verdict,
        decided_by,
        reasons,
    }
}

/// What a fair random balancer does with `ok` connections over `n` backends: each backend's
/// count is Binomial(ok, 1/n).
struct FairBound {
    dist: Binomial,
    n: usize,
    alpha: f64,
    /// Counts below `lo` or above `hi` happen to a fair run's backend with probability below
    /// alpha / (2n) each.
    lo: u64,
    hi: u64,
}

impl FairBound {
    fn new(ok: u64, n: usize, alpha: f64) -> Self {
        let dist = Binomial::new(1.0 / n as f64, ok).expect("n > 1 backends, ok > 0 connections");
        let tail = alpha / (2.0 * n as f64);
        // The smallest count with P(X <= c) >= tail, and the smallest with P(X > c) <= tail.
        let lo = first(ok, |c| dist.cdf(c) >= tail);
        let hi = first(ok, |c| dist.sf(c) <= tail);
        Self { dist, n, alpha, lo, hi }
    }

    /// ±margin where it holds a fair run's backends (probability ≥ 1 - alpha), else widened to
    /// the fair bound on the side(s) where it does not.
    fn band(&self, mean: f64, margin_pct: f64) -> Band {
        let (lo_m, hi_m) = (mean * (1.0 - margin_pct / 100.0), mean * (1.0 + margin_pct / 100.0));
        let (lo_b, hi_b) = (self.lo as f64, self.hi as f64);
        Band {
            margin_pct,
            lo: lo_m.min(lo_b).max(0.0),
            hi: hi_m.max(hi_b),
            margin_meaningful: lo_m <= lo_b && hi_b <= hi_m,
        }
    }

    /// Bonferroni-adjusted two-sided p-value of one backend's count: how often a fair run puts
    /// some backend at least this far out on that side.
    fn p_value(&self, count: u64, mean: f64) -> f64 {
        let tail = if count as f64 >= mean {
            self.dist.sf(count.saturating_sub(1))
        } else {
            self.dist.cdf(count)
        };
        (2.0 * self.n as f64 * tail).min(1.0)
    }

    /// The reason naming the backends outside `band`, most extreme first; `None` when all are in.
    /// Backends without a connection are the expected-backends check's, not this one's.
    fn outliers(&self, counts: &[(&str, u64)], mean: f64, band: &Band) -> Option<String> {
        let mut out: Vec<(&str, u64, f64)> = counts
            .iter()
            .filter(|(_, c)| *c > 0 && ((*c as f64) < band.lo || (*c as f64) > band.hi))
            .map(|(name, c)| (*name, *c, self.p_value(*c, mean)))
            .collect();
        out.sort_by(|a, b| a.2.total_cmp(&b.2));
        let range = if band.margin_meaningful {
            format!("±{}% [{:.1}, {:.1}]", band.margin_pct, band.lo, band.hi)
        } else {
            format!("the fair-random bound [{:.0}, {:.0}]", band.lo, band.hi)
        };
        let share = |c: u64| c as f64 / mean;
        match out.as_slice() {
            [] => None,
            [(name, c, p)] => Some(format!(
                "backend {name} got {:.2}× its fair share {mean:.1} ({c} connections, outside {range}; p{})",
                share(*c),
                p_cmp(*p)
            )),
            many => {
                let shown: Vec<String> = many
                    .iter()
                    .map(|(name, c, p)| format!("{name} {:.2}× ({c}, p{})", share(*c), p_cmp(*p)))
                    .collect();
                let shown: Vec<&str> = shown.iter().map(String::as_str).collect();
                Some(format!(
                    "{} backends outside {range} of the fair share {mean:.1}: {}",
                    many.len(),
                    listed(&shown, 3)
                ))
            }
        }
    }

    /// When a fair run of this size leaves some backend without a connection more often than
    /// alpha: how often, and how many connections make that rare.
    fn empty_note(&self, mean: f64) -> Option<String> {
        let n = self.n as f64;
        let p_empty_one = (1.0 - 1.0 / n).powf(self.dist.n() as f64);
        let p_empty = (n * p_empty_one).min(1.0);
        (p_empty > self.alpha).then(|| {
            let enough = ((self.alpha / n).ln() / (1.0 - 1.0 / n).ln()).ceil();
            format!(
                "at {mean:.1} connections per backend a fair balancer leaves some backend without any \
                 in up to {:.0}% of runs: storm with at least {enough:.0} connections",
                100.0 * p_empty
            )
        })
    }
}

/// The smallest `c` in `0..=max` where `holds` (monotone: false, then true; true at `max`).
fn first(max: u64, holds: impl Fn(u64) -> bool) -> u64 {
    let (mut lo, mut hi) = (0, max);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if holds(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// Up to `max` names, then "and N more".
fn listed(names: &[&str], max: usize) -> String {
    let shown = names.iter().take(max).copied().collect::<Vec<_>>().join(", ");
    match names.len().saturating_sub(max) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// A p-value for a sentence or a cell: three decimals, scientific below 0.001.
pub fn p_text(p: f64) -> String {
    if p >= 0.001 {
        format!("{p:.3}")
    } else {
        format!("{p:.1e}")
    }
}

/// `" < 1e-9"` below that (the tail functions' accuracy), else `"="` and the value.
fn p_cmp(p: f64) -> String {
    if p < 1e-9 {
        " < 1e-9".to_string()
    } else {
        format!("={}", p_text(p))
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
        assert!(s.reasons[0].starts_with("backend d got 0.13×"), "{:?}", s.reasons);
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

    fn pods(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("pod-{i:03}")).collect()
    }

    #[test]
    fn a_fair_small_sample_outside_the_margin_passes_by_chi_square() {
        // Issue 16.12: 3,000 connections over 100 backends, 30 expected each. 46 and 14 are
        // outside ±50% but well within what a fair random balancer does (the old verdict failed).
        let names = pods(100);
        let mut counts: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), 30)).collect();
        counts[7].1 = 46;
        counts[8].1 = 14;
        let s = evaluate(&counts, 0, &LOOSE);
        assert_eq!(s.verdict, Verdict::Pass, "{:?}", s.reasons);
        assert_eq!(s.decided_by, [Check::ChiSquare, Check::BinomialBound]);
        assert_eq!(s.alpha, Some(DEFAULT_ALPHA));
        let band = s.band.unwrap();
        assert!(!band.margin_meaningful);
        assert!(band.lo < 14.0 && band.hi > 46.0, "{band:?}");
        // 2.5× on one backend is far beyond that bound, though chi-square over 99 degrees of
        // freedom does not see it (p ~ 0.99): the per-backend bound decides.
        counts[7].1 = 75;
        counts[8].1 = 29;
        for c in &mut counts[9..53] {
            c.1 = 29;
        }
        assert_eq!(counts.iter().map(|c| c.1).sum::<u64>(), 3000);
        let s = evaluate(&counts, 0, &LOOSE);
        assert!(s.p_value.unwrap() > 0.5, "{s:?}");
        assert_eq!(
            (s.verdict, s.decided_by.as_slice()),
            (Verdict::Fail, &[Check::BinomialBound][..])
        );
        assert!(
            s.reasons[0].starts_with(
                "backend pod-007 got 2.50× its fair share 30.0 (75 connections, outside the fair-random bound ["
            ),
            "{:?}",
            s.reasons
        );
        assert!(s.reasons[0].ends_with("p < 1e-9)"), "{:?}", s.reasons);
    }

    #[test]
    fn margin_and_alpha_tighten_or_loosen() {
        // 100,000 connections over 10 backends: 10,000 expected (sd 95), one backend +4.5%.
        let names = pods(10);
        let mut counts: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), 9950)).collect();
        counts[0].1 = 10_450;
        let judge = |margin_pct: f64, alpha: Option<f64>| {
            evaluate(
                &counts,
                0,
                &Criteria {
                    expect_backends: None,
                    margin_pct,
                    alpha,
                },
            )
        };
        // ±50%: chi-square p ~ 0.007 holds at 0.001, and the backend is within the margin.
        let s = judge(50.0, None);
        assert_eq!(
            (s.verdict, s.decided_by.as_slice()),
            (Verdict::Pass, &[Check::ChiSquare, Check::Margin][..])
        );
        // ±4% is still wider than a fair balancer strays (±3.7% here): it is the band, and +4.5%
        // is outside it.
        let s = judge(4.0, None);
        assert!(s.band.unwrap().margin_meaningful);
        assert_eq!(
            (s.verdict, s.decided_by.as_slice()),
            (Verdict::Fail, &[Check::Margin][..])
        );
        assert!(
            s.reasons[0].contains("outside ±4% [9600.0, 10400.0]"),
            "{:?}",
            s.reasons
        );
        // ±3% is tighter than chance: the band is the fair-random bound, which +4.5% still exceeds.
        let s = judge(3.0, None);
        let band = s.band.unwrap();
        assert!(
            !band.margin_meaningful && band.hi > 10_300.0 && band.hi < 10_450.0,
            "{band:?}"
        );
        assert_eq!(s.decided_by, [Check::BinomialBound]);
        // A looser alpha fails the spread by chi-square; a stricter one widens the bound past it.
        let s = judge(50.0, Some(0.01));
        assert_eq!(
            (s.verdict, s.decided_by.as_slice()),
            (Verdict::Fail, &[Check::ChiSquare][..])
        );
        let s = judge(3.0, Some(1e-6));
        assert_eq!(s.verdict, Verdict::Pass, "{:?}", s.reasons);
    }

    #[test]
    fn a_silent_backend_fails_and_small_samples_say_how_many_connections_it_takes() {
        let names = pods(100);
        let mut counts: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), 100)).collect();
        counts[5].1 = 0;
        let s = evaluate(&counts, 0, &LOOSE);
        assert_eq!(s.verdict, Verdict::Fail);
        assert_eq!(s.decided_by[0], Check::Backends);
        assert_eq!(s.reasons[0], "only 99 of 100 backends answered; pod-005 never answered");
        // One connection per backend: a fair balancer leaves some backend empty almost always.
        for c in &mut counts {
            c.1 = c.1.min(1);
        }
        let s = evaluate(&counts, 0, &LOOSE);
        assert_eq!(s.decided_by[0], Check::Backends);
        assert!(
            s.reasons[0].ends_with("in up to 100% of runs: storm with at least 1146 connections"),
            "{:?}",
            s.reasons
        );
    }
}
