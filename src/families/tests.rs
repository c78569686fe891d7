use super::*;
use crate::record::{Environment, Latency, Params, SPREAD_KIND, SPREAD_VERSION, TargetInfo};
use crate::stats::{Criteria, evaluate};
use crate::storm::{BackendCount, Failures, Proto};

fn spread_run(family: IpFamily, counts: &[(&str, u64)], timeouts: u64, duration_s: f64) -> SpreadRun {
    let criteria = Criteria {
        expect_backends: Some(counts.len()),
        margin_pct: 50.0,
        alpha: None,
    };
    let ok: u64 = counts.iter().map(|(_, n)| n).sum();
    SpreadRun {
        kind: SPREAD_KIND.into(),
        version: SPREAD_VERSION,
        tag: format!("t-{family}"),
        started_at: jiff::Timestamp::UNIX_EPOCH,
        duration_s,
        target: TargetInfo {
            address: "x".into(),
            mode: "lab".into(),
            protocol: Proto::Tcp,
            service: None,
            source: None,
            lab: None,
            ip_family: Some(family),
        },
        params: Params {
            conns: ok + timeouts,
            parallel: 10,
            rate: None,
            timeout_s: 2.0,
            deadline_s: None,
            srccidr: None,
            expect_backends: Some(counts.len()),
            margin_pct: 50.0,
            alpha: None,
            graceful_close: false,
        },
        conns: ok + timeouts,
        ok,
        failed: Failures {
            timeout: timeouts,
            ..Failures::default()
        }
        .into(),
        stopped: None,
        stats: evaluate(counts, timeouts, &criteria),
        backends: counts
            .iter()
            .map(|(name, count)| BackendCount {
                name: name.to_string(),
                node: String::new(),
                zone: String::new(),
                count: *count,
                bytes: 0,
            })
            .collect(),
        sources: vec![],
        latency_ms: Latency {
            p50: 0.1,
            p90: 0.2,
            p99: 0.5,
            max: 1.0,
            mean: 0.12,
        },
        latency_histogram_us: None,
        environment: Environment::default(),
    }
}

fn both(a: SpreadRun, b: SpreadRun) -> Comparison {
    compare(&AnyRun::Spread(Box::new(a)), &AnyRun::Spread(Box::new(b))).unwrap()
}

#[test]
fn the_same_spread_over_both_families_differs_in_nothing_but_notes_the_rates() {
    let v4 = spread_run(IpFamily::Ipv4, &[("a", 500), ("b", 500)], 0, 1.0);
    let v6 = spread_run(IpFamily::Ipv6, &[("a", 480), ("b", 470)], 0, 1.0);
    let c = both(v4, v6);
    assert!(c.differences.is_empty(), "{c:?}");
    assert_eq!(
        c.notes,
        [
            "connect rate: ipv4 1000/s, ipv6 950/s",
            "the ipv6 rate is 95% of the ipv4 rate"
        ]
    );
    assert!(describe(&c).contains("no difference between the families"));
}

#[test]
fn a_backend_missing_in_one_family_failures_and_a_slow_family_are_flagged() {
    let v4 = spread_run(IpFamily::Ipv4, &[("a", 500), ("b", 500)], 0, 1.0);
    // IPv6: pod b never answers (say its ip6 rule is missing); its share times out.
    let v6 = spread_run(IpFamily::Ipv6, &[("a", 400), ("b", 0)], 100, 1.0);
    let c = both(v4, v6);
    let text = describe(&c);
    assert!(
        c.differences.contains(&"verdict: ipv4 PASS, ipv6 FAIL".to_string()),
        "{text}"
    );
    assert!(
        c.differences
            .contains(&"backends answering: ipv4 2, ipv6 1".to_string()),
        "{text}"
    );
    assert!(
        c.differences
            .contains(&"failures: ipv4 none, ipv6 100 timeout".to_string()),
        "{text}"
    );
    assert!(
        c.differences.contains(&"answered over ipv4 only: b".to_string()),
        "{text}"
    );
    assert!(
        c.differences
            .contains(&"the ipv6 rate is 40% of the ipv4 rate".to_string()),
        "{text}"
    );
    assert!(text.contains("  ! verdict: ipv4 PASS, ipv6 FAIL\n"), "{text}");
}

#[test]
fn runs_of_different_commands_are_not_compared() {
    let v4 = spread_run(IpFamily::Ipv4, &[("a", 1)], 0, 1.0);
    let m = AnyRun::Mconnect(Box::new(crate::record::Loaded::from(v4.clone())));
    assert!(compare(&AnyRun::Spread(Box::new(v4)), &m).is_none());
}

#[test]
fn a_both_run_tags_each_family() {
    assert_eq!(
        tag("spread-20261123-101010", IpFamily::Ipv6),
        "spread-20261123-101010-ipv6"
    );
}
