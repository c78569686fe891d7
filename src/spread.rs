//! The spread engine: from a storm's outcome and the backends known to exist to a judged
//! [`SpreadRun`] (zero-count backends listed, the target's view of node and zone winning over what
//! a server reports, an interrupted storm failing). The verdict itself is [`crate::stats`]'.

use crate::record::{Environment, Latency, Params, SPREAD_KIND, SPREAD_VERSION, SpreadRun, TargetInfo};
use crate::stats::{Criteria, evaluate};
use crate::storm::{BackendCount, Outcome};

/// A backend known to exist (from a lab or a cluster), so zero-count backends can be listed.
#[derive(Debug, Clone)]
pub struct KnownBackend {
    pub name: String,
    pub node: String,
    pub zone: String,
}

/// Merges observed counts with the known backends (zero-filled) and judges them.
pub fn build_record(
    tag: String,
    started_at: jiff::Timestamp,
    target: TargetInfo,
    params: Params,
    outcome: &Outcome,
    known: &[KnownBackend],
    criteria: &Criteria,
) -> SpreadRun {
    let mut backends: Vec<BackendCount> = outcome.backends.clone();
    for k in known {
        match backends.iter_mut().find(|b| b.name == k.name) {
            // The target's view (a lab's state, the API's pod -> node -> zone) wins over what a
            // server reports: a tserver cannot read its node's zone label and reports its hostname.
            Some(b) => {
                if !k.node.is_empty() {
                    b.node.clone_from(&k.node);
                }
                if !k.zone.is_empty() {
                    b.zone.clone_from(&k.zone);
                }
            }
            None => backends.push(BackendCount {
                name: k.name.clone(),
                node: k.node.clone(),
                zone: k.zone.clone(),
                count: 0,
                bytes: 0,
            }),
        }
    }
    // Natural order: pod-2 before pod-10, node2 before node10.
    backends.sort_by(|a, b| alphanumeric_sort::compare_str(&a.name, &b.name));
    let criteria = Criteria {
        expect_backends: criteria.expect_backends.or((!known.is_empty()).then_some(known.len())),
        ..*criteria
    };
    // Backends that must exist but never answered, when their names are unknown (--address runs):
    // listed with 0 so the tables and the frequency table show them.
    let missing = criteria.expect_backends.unwrap_or(0).saturating_sub(backends.len());
    backends.extend((1..=missing).map(|i| BackendCount {
        name: format!("<missing-{i}>"),
        node: String::new(),
        zone: String::new(),
        count: 0,
        bytes: 0,
    }));
    let counts: Vec<(&str, u64)> = backends.iter().map(|b| (b.name.as_str(), b.count)).collect();
    // An interrupted run is judged on what it measured; `stopped` says it is partial, and the
    // report and exit code say INTERRUPTED.
    let stats = evaluate(&counts, outcome.failures.total(), &criteria);
    SpreadRun {
        kind: SPREAD_KIND.into(),
        version: SPREAD_VERSION,
        tag,
        started_at,
        duration_s: outcome.elapsed.as_secs_f64(),
        target,
        params,
        conns: outcome.attempted,
        ok: outcome.ok,
        failed: outcome.failures.into(),
        stopped: outcome.stopped,
        backends,
        sources: Vec::new(),
        latency_ms: Latency::from_histogram(&outcome.latency),
        latency_histogram_us: None,
        stats,
        environment: Environment::local(),
    }
}

/// When no connection of a run succeeded: one line naming the failures (the report of such a run
/// would only show one zero); `None` when some succeeded or none was made.
pub fn nothing_answered(run: &SpreadRun) -> Option<String> {
    if run.ok > 0 || run.conns == 0 {
        return None;
    }
    let mut kinds: Vec<(&str, u64)> = run.failed.kinds.kinds().into_iter().filter(|(_, n)| *n > 0).collect();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    let to = &run.target.address;
    Some(match kinds.as_slice() {
        [(kind, n)] if *n == run.conns => format!("all {n} connections to {to} failed: {kind}"),
        _ => format!(
            "none of {} connections to {to} succeeded: {}",
            run.conns,
            kinds
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Verdict;
    use crate::storm::{Failures, Proto, new_histogram};

    fn outcome(ok: u64, failures: Failures) -> Outcome {
        Outcome {
            attempted: ok + failures.total(),
            ok,
            failures,
            backends: Vec::new(),
            latency: new_histogram(),
            elapsed: std::time::Duration::from_secs(1),
            stopped: None,
        }
    }

    fn record(o: &Outcome) -> SpreadRun {
        let target = TargetInfo {
            address: "127.0.0.1:1".into(),
            mode: "address".into(),
            protocol: Proto::Tcp,
            service: None,
            source: None,
            lab: None,
            ip_family: None,
        };
        let params = Params {
            conns: o.attempted,
            parallel: 1,
            rate: None,
            timeout_s: 1.0,
            deadline_s: None,
            srccidr: None,
            expect_backends: None,
            margin_pct: 50.0,
            alpha: None,
            graceful_close: false,
        };
        build_record(
            "t".into(),
            jiff::Timestamp::UNIX_EPOCH,
            target,
            params,
            o,
            &[],
            &crate::stats::LOOSE,
        )
    }

    #[test]
    fn a_run_where_nothing_answered_is_one_line() {
        let refused = Failures {
            refused: 10,
            ..Failures::default()
        };
        let r = record(&outcome(0, refused));
        assert_eq!(
            nothing_answered(&r).unwrap(),
            "all 10 connections to 127.0.0.1:1 failed: refused"
        );
        let mixed = Failures {
            refused: 3,
            timeout: 7,
            ..Failures::default()
        };
        let r = record(&outcome(0, mixed));
        assert_eq!(
            nothing_answered(&r).unwrap(),
            "none of 10 connections to 127.0.0.1:1 succeeded: 7 timeout, 3 refused"
        );
        assert_eq!(nothing_answered(&record(&outcome(1, mixed))), None);
    }

    #[test]
    fn known_backends_are_listed_with_zero_and_win_on_node_and_zone() {
        let mut o = outcome(5, Failures::default());
        o.backends = vec![BackendCount {
            name: "p1".into(),
            node: "reported".into(),
            zone: "p1".into(),
            count: 5,
            bytes: 0,
        }];
        let known = [
            KnownBackend {
                name: "p1".into(),
                node: "n1".into(),
                zone: "z1".into(),
            },
            KnownBackend {
                name: "p2".into(),
                node: "n2".into(),
                zone: "z2".into(),
            },
            KnownBackend {
                name: "p10".into(),
                node: "n10".into(),
                zone: "z1".into(),
            },
        ];
        let target = record(&o).target;
        let r = build_record(
            "t".into(),
            jiff::Timestamp::UNIX_EPOCH,
            target,
            record(&o).params,
            &o,
            &known,
            &crate::stats::LOOSE,
        );
        let rows: Vec<(&str, &str, &str, u64)> = r
            .backends
            .iter()
            .map(|b| (b.name.as_str(), b.node.as_str(), b.zone.as_str(), b.count))
            .collect();
        // In natural order: p2 before p10.
        assert_eq!(
            rows,
            [("p1", "n1", "z1", 5), ("p2", "n2", "z2", 0), ("p10", "n10", "z1", 0)]
        );
        assert_eq!(
            r.stats.verdict,
            Verdict::Fail,
            "a known backend that never answered fails"
        );
    }
}
