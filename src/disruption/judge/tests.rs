//! The timeline (seconds merged from every agent, gaps filled) and the verdict with its exception.

use super::*;
use crate::disruption::{Break, BreakKind, Lost, SecondTally, Tick, buckets, second_histogram};
use crate::record::{DisruptionParams, TargetInfo};
use crate::storm::Proto;

fn params() -> DisruptionParams {
    DisruptionParams {
        action: "delete-pod".into(),
        rate: 100.0,
        long_lived: 4,
        udp_sessions: 4,
        sources: "per-node".into(),
        interval_s: 0.1,
        timeout_s: 1.0,
        warmup_s: 2.0,
        settle_s: 2.0,
        duration_s: 60.0,
        grace_period_s: Some(5.0),
        drain_delay_s: Some(0.0),
        ready_delay_s: Some(0.0),
        sync_delay: Some("0ms".into()),
    }
}

fn measured(collected: Collected, events: Vec<EndpointChange>) -> Measured {
    Measured {
        tag: "t".into(),
        started_at: "2026-11-24T10:00:00Z".parse().unwrap(),
        duration_s: 10.0,
        target: TargetInfo {
            address: "10.96.0.10:5001 (clusterIP)".into(),
            mode: "lab".into(),
            protocol: Proto::Tcp,
            service: Some("default/tserver".into()),
            source: Some("per-node (2 sources)".into()),
            lab: Some("l".into()),
            ip_family: None,
        },
        params: params(),
        action: ActionInfo {
            what: "deleted pod-1".into(),
            started_s: Some(2.0),
            stable_s: Some(4.5),
            error: None,
            endpoints_before: vec!["pod-1".into(), "pod-2".into()],
            endpoints_after: vec!["pod-2".into(), "pod-3".into()],
        },
        events,
        syncs: Vec::new(),
        collected,
        sources: vec!["node1".into(), "node2".into()],
        stopped: None,
        environment: Environment::default(),
    }
}

/// A second of `ok` answers spread over `pods`, with latencies of `us` each, and `failures`.
fn second(s: u32, pods: &[(&str, u64)], us: u64, failures: Failures) -> SecondTally {
    let ok: u64 = pods.iter().map(|(_, n)| n).sum();
    let mut h = second_histogram();
    h.record_n(us, ok).unwrap();
    SecondTally {
        second: s,
        attempts: ok + failures.total(),
        ok,
        failures,
        latency_us: if ok > 0 { buckets(&h) } else { Vec::new() },
        pods: pods.iter().map(|(p, n)| (p.to_string(), *n)).collect(),
        ll_sent: 10,
        ll_answered: 10,
        udp_sent: 10,
        udp_answered: 10,
        ..SecondTally::default()
    }
}

fn event(at_s: f64, pod: &str, step: Step) -> EndpointChange {
    EndpointChange {
        at_s,
        pod: pod.into(),
        step,
    }
}

/// pod-1 ends gracefully: terminating at 2.0, not serving at 2.0, removed at 4.0.
fn graceful() -> Vec<EndpointChange> {
    vec![
        event(2.0, "pod-1", Step::Terminating),
        event(2.01, "pod-1", Step::NotServing),
        event(4.0, "pod-1", Step::Removed),
        event(2.5, "pod-3", Step::Ready),
    ]
}

fn brk(at_ms: u64, pod: &str, kind: BreakKind) -> Break {
    Break {
        at_ms,
        since_ms: 100,
        conn: 0,
        pod: pod.into(),
        kind,
    }
}

#[test]
fn seconds_merge_every_agent_and_late_deltas_and_fill_gaps() {
    let mut c = Collected::default();
    c.add(
        0,
        Tick {
            seconds: vec![second(0, &[("pod-1", 30), ("pod-2", 20)], 1000, Failures::default())],
            open: 2,
            ..Tick::default()
        },
    );
    c.add(
        1,
        Tick {
            seconds: vec![second(0, &[("pod-2", 50)], 3000, Failures::default())],
            open: 2,
            ..Tick::default()
        },
    );
    // A late result of agent 0's second 0, and its second 3: seconds 1 and 2 measured nothing.
    let refused = Failures {
        refused: 2,
        ..Failures::default()
    };
    c.add(
        0,
        Tick {
            seconds: vec![
                second(0, &[("pod-1", 1)], 90_000, Failures::default()),
                second(3, &[("pod-1", 4)], 1000, refused),
            ],
            open: 1,
            done: true,
            ..Tick::default()
        },
    );
    assert_eq!(c.open(), 3);
    assert_eq!(c.done.len(), 1);
    let r = build(measured(c, graceful()));
    let rows: Vec<(u32, u64, u64, u64)> = r
        .seconds
        .iter()
        .map(|s| (s.second, s.attempts, s.ok, s.failed.total))
        .collect();
    assert_eq!(rows, [(0, 101, 101, 0), (1, 0, 0, 0), (2, 0, 0, 0), (3, 6, 4, 2)]);
    // The per-pod counts add up to the ok column, second by second.
    for s in &r.seconds {
        assert_eq!(s.pods.values().sum::<u64>(), s.ok, "second {}", s.second);
    }
    assert_eq!(r.seconds[0].pods["pod-1"], 31);
    assert_eq!(r.seconds[0].pods["pod-2"], 70);
    // p99 of 101 connections with one at 90 ms: the slow one is in the last percent.
    let p99 = r.seconds[0].p99_ms.unwrap();
    assert!((2.9..3.1).contains(&p99), "{p99}");
    assert_eq!(r.seconds[1].p99_ms, None);
    assert_eq!((r.totals.attempts, r.totals.ok, r.totals.failed.total), (107, 105, 2));
    assert_eq!(r.totals.long_lived.sent, 40);
    assert_eq!(r.verdict, Verdict::Fail);
    assert_eq!(
        r.reasons,
        ["2 new connection(s) failed in second(s) 3 (refused 2; of 6 started in those seconds)"]
    );
}

#[test]
fn a_run_without_failures_passes() {
    let mut c = Collected::default();
    for s in 0..6 {
        c.add(
            0,
            Tick {
                seconds: vec![second(s, &[("pod-1", 50), ("pod-2", 50)], 800, Failures::default())],
                ..Tick::default()
            },
        );
    }
    let r = build(measured(c, graceful()));
    assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.reasons);
    assert!(r.reasons.is_empty() && r.notes.is_empty());
    assert_eq!(r.seconds.len(), 6);
    assert_eq!(r.kind, "DisruptionRun");
}

#[test]
fn failures_name_their_seconds_and_kinds() {
    let mut c = Collected::default();
    let f = |refused, timeout| Failures {
        refused,
        timeout,
        ..Failures::default()
    };
    for (s, fails) in [(0, f(0, 0)), (5, f(3, 0)), (6, f(1, 4)), (9, f(0, 1))] {
        c.add(
            0,
            Tick {
                seconds: vec![second(s, &[("pod-2", 10)], 800, fails)],
                ..Tick::default()
            },
        );
    }
    let r = build(measured(c, graceful()));
    assert_eq!(r.verdict, Verdict::Fail);
    assert_eq!(
        r.reasons,
        ["9 new connection(s) failed in second(s) 5-6, 9 (refused 4, timeout 5; of 39 started in those seconds)"]
    );
    assert_eq!(r.totals.failed.kinds.refused, 4);
}

#[test]
fn breaks_and_losses_on_a_pod_that_ended_gracefully_are_counted_apart() {
    let mut c = Collected::default();
    c.add(
        0,
        Tick {
            seconds: (0..6)
                .map(|s| second(s, &[("pod-2", 10)], 800, Failures::default()))
                .collect(),
            breaks: vec![brk(4_050, "pod-1", BreakKind::Closed)],
            lost: vec![Lost {
                at_ms: 2_300,
                session: 1,
                pod: Some("pod-1".into()),
                kind: LostKind::Refused,
            }],
            ..Tick::default()
        },
    );
    c.add(
        1,
        Tick {
            breaks: vec![brk(4_060, "pod-1", BreakKind::Reset)],
            ..Tick::default()
        },
    );
    let r = build(measured(c, graceful()));
    assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.reasons);
    assert_eq!(r.totals.long_lived.broken, 2);
    assert_eq!(r.totals.long_lived.broken_expected, 2);
    assert_eq!(r.seconds[4].long_lived.broken_expected, 2);
    assert_eq!((r.totals.udp.lost_expected, r.seconds[2].udp.lost_expected), (1, 1));
    assert!(r.breaks.iter().all(|b| b.expected));
    assert_eq!(r.breaks[1].source, "node2");
    assert_eq!(
        r.notes,
        [
            "2 long-lived connection(s) to pod-1 ended with their pod, removed after it stopped serving: counted apart",
            "1 UDP datagram(s) lost on sessions of pods removed after they stopped serving (pod-1 1; over at most 0.00s per pod, until the nodes' kube-proxies moved the flows): counted apart"
        ]
    );
}

#[test]
fn breaks_to_a_pod_killed_while_serving_or_before_it_terminated_fail() {
    // pod-1 killed at once (no grace): terminating, then removed without ever not serving.
    let killed = vec![
        event(2.0, "pod-1", Step::Terminating),
        event(2.05, "pod-1", Step::Removed),
    ];
    let mut c = Collected::default();
    c.add(
        0,
        Tick {
            seconds: vec![second(2, &[("pod-2", 10)], 800, Failures::default())],
            breaks: vec![brk(2_100, "pod-1", BreakKind::Reset)],
            ..Tick::default()
        },
    );
    let r = build(measured(c, killed));
    assert_eq!(r.verdict, Verdict::Fail);
    assert_eq!(
        r.reasons,
        [
            "1 long-lived connection(s) broke in second(s) 2: 1 reset on pod-1 (removed while it still served: no graceful end)"
        ]
    );
    assert!(!r.breaks[0].expected);

    // A graceful end, but the break came well before the pod was told to stop; and a pod that
    // never changed; and a loss on a session that never had an answer.
    let mut c = Collected::default();
    c.add(
        0,
        Tick {
            seconds: vec![second(0, &[("pod-2", 10)], 800, Failures::default())],
            breaks: vec![
                brk(500, "pod-1", BreakKind::Timeout),
                brk(3_000, "pod-2", BreakKind::WrongReply),
            ],
            lost: vec![Lost {
                at_ms: 3_100,
                session: 0,
                pod: None,
                kind: LostKind::Timeout,
            }],
            ..Tick::default()
        },
    );
    let r = build(measured(c, graceful()));
    assert_eq!(r.verdict, Verdict::Fail);
    assert_eq!(
        r.reasons,
        [
            "2 long-lived connection(s) broke in second(s) 0, 3: 1 timeout on pod-1; 1 wrong reply on pod-2 (not terminating)",
            "1 UDP datagram(s) lost in second(s) 3: 1 unanswered"
        ]
    );
    assert_eq!(r.seconds.len(), 4, "rows reach the last break and loss");
    assert_eq!((r.seconds[3].long_lived.broken, r.seconds[3].udp.lost_expected), (1, 0));
}

#[test]
fn slack_and_graceful_ends() {
    let g = graceful_ends(&graceful());
    assert_eq!(g.len(), 1);
    assert_eq!(g["pod-1"], 2.0);
    // Up to a second before the terminating event still counts (the watch reports it late).
    assert!(expected(&g, Some("pod-1"), 1.2));
    assert!(!expected(&g, Some("pod-1"), 0.9));
    assert!(!expected(&g, Some("pod-3"), 3.0));
    assert!(!expected(&g, None, 3.0));
    // Not serving only after removal is not a graceful end; no terminating event: not serving.
    let late = [event(1.0, "p", Step::Removed), event(2.0, "p", Step::NotServing)];
    assert!(graceful_ends(&late).is_empty());
    let watch = [event(5.0, "p", Step::NotServing), event(6.0, "p", Step::Removed)];
    assert_eq!(graceful_ends(&watch)["p"], 5.0);
    assert_eq!(ranges(&[1, 2, 3, 5, 7, 8]), "1-3, 5, 7-8");
    assert_eq!(ranges(&[]), "");
}

#[test]
fn an_action_that_did_not_finish_fails_the_run() {
    let mut c = Collected::default();
    c.add(
        0,
        Tick {
            seconds: vec![second(0, &[("pod-2", 10)], 800, Failures::default())],
            ..Tick::default()
        },
    );
    let mut m = measured(c, Vec::new());
    m.action.stable_s = None;
    let r = build(m);
    assert_eq!(
        r.reasons,
        ["the endpoints were not stable again within the run (60s): give a longer --duration"]
    );
    let mut m = measured(Collected::default(), Vec::new());
    m.action.error = Some("no pod named pod-9".into());
    let r = build(m);
    assert_eq!(r.verdict, Verdict::Fail);
    assert_eq!(
        r.reasons,
        [
            "the action did not complete: no pod named pod-9",
            "no traffic was measured"
        ]
    );
    // Interrupted: judged on what was measured, no complaint about stability.
    let mut m = measured(Collected::default(), Vec::new());
    m.action.stable_s = None;
    m.stopped = Some(Stop::Interrupted);
    let r = build(m);
    assert!(r.reasons.is_empty() && r.seconds.is_empty());
}
