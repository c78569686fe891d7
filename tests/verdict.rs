//! The spread verdict against simulated balancers: a fair random one must pass (false FAIL ≤ 1%)
//! at every size, a skewed one and one with a missing backend must fail.

use rand::SeedableRng;
use rand::distr::Distribution;
use rand::rngs::SmallRng;
use statrs::distribution::Binomial;
use svclb::stats::{Check, Criteria, Stats, Verdict, evaluate};

/// Simulated runs per size.
const RUNS: usize = 1000;

/// One run of `conns` connections over backends weighted `weights`: the multinomial counts,
/// drawn backend by backend as binomials of what is left (exact, and O(backends) per run).
fn sample(rng: &mut SmallRng, weights: &[f64], conns: u64) -> Vec<u64> {
    let mut left = conns;
    let mut weight_left: f64 = weights.iter().sum();
    weights
        .iter()
        .map(|w| {
            let c = if left == 0 || *w == 0.0 {
                0
            } else if *w >= weight_left {
                left
            } else {
                Binomial::new(w / weight_left, left).unwrap().sample(rng)
            };
            left -= c;
            weight_left -= w;
            c
        })
        .collect()
}

/// `runs` simulated runs judged with the default criteria and every backend expected.
fn judge(seed: u64, weights: &[f64], conns: u64, runs: usize) -> Vec<Stats> {
    let names: Vec<String> = (1..=weights.len()).map(|i| format!("pod-{i:04}")).collect();
    let criteria = Criteria {
        expect_backends: Some(weights.len()),
        margin_pct: 50.0,
        alpha: None,
    };
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..runs)
        .map(|_| {
            let counts = sample(&mut rng, weights, conns);
            let named: Vec<(&str, u64)> = names.iter().map(String::as_str).zip(counts).collect();
            evaluate(&named, 0, &criteria)
        })
        .collect()
}

fn failures(runs: &[Stats]) -> usize {
    runs.iter().filter(|s| s.verdict == Verdict::Fail).count()
}

#[test]
fn a_fair_random_balancer_passes_at_every_size() {
    // (backends, connections): a few connections per backend up to thousands.
    for (seed, (backends, conns)) in [
        (3, 300),
        (10, 100),
        (100, 3_000),
        (100, 10_000),
        (20, 1_000_000),
        (1_000, 100_000),
    ]
    .into_iter()
    .enumerate()
    {
        let runs = judge(seed as u64, &vec![1.0; backends], conns, RUNS);
        let failed = failures(&runs);
        let by_margin = runs
            .iter()
            .filter(|s| s.band.is_some_and(|b| b.margin_meaningful))
            .count();
        let by: Vec<&Vec<Check>> = runs
            .iter()
            .filter(|s| s.verdict == Verdict::Fail)
            .map(|s| &s.decided_by)
            .collect();
        eprintln!(
            "fair {backends} x {conns}: {failed}/{RUNS} false FAIL; ±50% margin meaningful in {by_margin}; failed by {by:?}"
        );
        assert!(
            failed * 100 <= RUNS,
            "{backends} x {conns}: {failed} of {RUNS} fair runs failed"
        );
    }
}

#[test]
fn the_margin_decides_where_the_sample_supports_it() {
    // 30 expected per backend: ±50% is 2.7 standard deviations, a fair run's 100 backends stray
    // beyond it half of the time: chi-square and the binomial bound decide.
    let small = &judge(7, &[1.0; 100], 3_000, 1)[0];
    let band = small.band.unwrap();
    assert!(!band.margin_meaningful, "{small:?}");
    assert_eq!((band.lo, band.hi), (9.0, 57.0), "{band:?}");
    if small.verdict == Verdict::Pass {
        assert_eq!(small.decided_by, [Check::ChiSquare, Check::BinomialBound]);
    }
    // 100 expected per backend: ±50% is 5 standard deviations, and it is the band.
    let large = &judge(8, &[1.0; 100], 10_000, 1)[0];
    let band = large.band.unwrap();
    assert!(band.margin_meaningful, "{large:?}");
    assert_eq!((band.lo, band.hi), (50.0, 150.0));
}

#[test]
fn a_two_to_one_skew_on_one_backend_fails() {
    let mut weights = vec![1.0; 100];
    weights[41] = 2.0;
    let runs = judge(100, &weights, 10_000, RUNS);
    let failed = failures(&runs);
    let named = runs
        .iter()
        .filter(|s| s.decided_by.contains(&Check::Margin) && s.reasons[0].contains("pod-0042"))
        .count();
    eprintln!("2:1 skew on 1 of 100 at 10,000 conns: {failed}/{RUNS} FAIL, {named} naming pod-0042 by the margin");
    assert!(failed * 100 >= 99 * RUNS, "only {failed} of {RUNS} skewed runs failed");
    assert!(named * 100 >= 99 * RUNS, "{named}");
}

#[test]
fn a_missing_backend_always_fails() {
    for (seed, (backends, conns)) in [(3, 300), (100, 3_000), (100, 10_000)].into_iter().enumerate() {
        let mut weights = vec![1.0; backends];
        weights[backends / 2] = 0.0;
        let runs = judge(200 + seed as u64, &weights, conns, RUNS);
        assert_eq!(failures(&runs), RUNS, "{backends} x {conns}");
        assert!(runs.iter().all(|s| s.decided_by[0] == Check::Backends), "{:?}", runs[0]);
    }
}
