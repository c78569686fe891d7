//! Judging a disruption run: the per-second timeline (what every agent measured, merged, with
//! gaps filled), the endpoint events on the same axis, and the verdict.
//!
//! The rule: PASS when no new connection failed, no long-lived connection broke and no UDP
//! datagram was lost, **except** on a pod that ended gracefully (its endpoint stopped serving
//! before it was removed) once that pod was terminating: those connections had to end with their
//! pod and are counted apart. Everything else fails the run, with the seconds and the kinds.
//! A break to a pod killed while it still served (no grace, or a grace period shorter than its
//! drain) is a failure; so is a loss on a session whose pod is unknown (never answered).

use std::collections::{BTreeMap, BTreeSet};

use super::{Collected, CollectedSecond, LostKind};
use crate::record::{
    ActionInfo, BrokenConn, DISRUPTION_KIND, DISRUPTION_VERSION, DisruptionParams, DisruptionRun, DisruptionTotals,
    EndpointChange, Environment, Failed, LongLivedSecond, MAX_BREAKS, NodeSyncAt, SecondRow, Step, TargetInfo,
    UdpSecond,
};
use crate::stats::Verdict;
use crate::storm::{Failures, Stop};

/// A break or loss this long before its pod's `terminating` event still counts as after it:
/// a kubelet sends SIGTERM as the EndpointSlice changes, and the watch (or the lab's probe)
/// reports it a little later.
pub const SLACK_S: f64 = 1.0;

/// Everything a run measured, for [`build`].
pub struct Measured {
    pub tag: String,
    pub started_at: jiff::Timestamp,
    pub duration_s: f64,
    pub target: TargetInfo,
    pub params: DisruptionParams,
    pub action: ActionInfo,
    pub events: Vec<EndpointChange>,
    pub syncs: Vec<NodeSyncAt>,
    pub collected: Collected,
    /// The agents' sources, by index.
    pub sources: Vec<String>,
    pub stopped: Option<Stop>,
    pub environment: Environment,
}

/// The pods that ended gracefully (stopped serving, then were removed), with the time they
/// started terminating (or stopped serving, when no terminating event was seen).
pub fn graceful_ends(events: &[EndpointChange]) -> BTreeMap<String, f64> {
    let first = |pod: &str, step: Step| {
        events
            .iter()
            .filter(|e| e.pod == pod && e.step == step)
            .map(|e| e.at_s)
            .reduce(f64::min)
    };
    let pods: BTreeSet<&str> = events.iter().map(|e| e.pod.as_str()).collect();
    let mut out = BTreeMap::new();
    for pod in pods {
        let (Some(not_serving), Some(removed)) = (first(pod, Step::NotServing), first(pod, Step::Removed)) else {
            continue;
        };
        if not_serving <= removed {
            let since = first(pod, Step::Terminating).unwrap_or(not_serving).min(not_serving);
            out.insert(pod.to_string(), since);
        }
    }
    out
}

/// A break or loss at `at_s` on `pod` is counted apart: its pod ended gracefully and was
/// terminating by then.
pub fn expected(graceful: &BTreeMap<String, f64>, pod: Option<&str>, at_s: f64) -> bool {
    pod.and_then(|p| graceful.get(p))
        .is_some_and(|since| at_s + SLACK_S >= *since)
}

/// `[3, 4, 5, 9]` → `3-5, 9`.
pub fn ranges(seconds: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < seconds.len() {
        let mut j = i;
        while j + 1 < seconds.len() && seconds[j + 1] == seconds[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            seconds[i].to_string()
        } else {
            format!("{}-{}", seconds[i], seconds[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

/// `refused 3, timeout 2` (kinds with a count).
fn kinds(f: &Failures) -> String {
    f.kinds()
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{} {n}", if *k == "unparsable" { "wrong reply" } else { k }))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ms_to_s(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// One second as the record has it (before breaks and losses are judged into it).
pub fn row(s: u32, cs: &CollectedSecond) -> SecondRow {
    let t = &cs.tally;
    SecondRow {
        second: s,
        attempts: t.attempts,
        ok: t.ok,
        failed: Failed::from(t.failures),
        p99_ms: (!cs.latency.is_empty()).then(|| cs.latency.value_at_quantile(0.99) as f64 / 1000.0),
        pods: t.pods.clone(),
        long_lived: LongLivedSecond {
            sent: t.ll_sent,
            answered: t.ll_answered,
            broken: 0,
            broken_expected: 0,
            connect_failed: t.ll_connect_failures.total(),
        },
        udp: UdpSecond {
            sent: t.udp_sent,
            answered: t.udp_answered,
            lost: t.udp_lost,
            lost_expected: 0,
        },
    }
}

/// Judges and builds the `DisruptionRun`.
pub fn build(m: Measured) -> DisruptionRun {
    let graceful = graceful_ends(&m.events);
    let c = &m.collected;
    let source = |i: usize| m.sources.get(i).cloned().unwrap_or_else(|| format!("agent {i}"));

    // Breaks and losses, judged one by one, then placed in their seconds.
    let mut breaks: Vec<BrokenConn> = c
        .breaks
        .iter()
        .map(|(i, b)| {
            let at_s = ms_to_s(b.at_ms);
            BrokenConn {
                at_s,
                source: source(*i),
                conn: b.conn,
                pod: b.pod.clone(),
                kind: b.kind,
                expected: expected(&graceful, Some(&b.pod), at_s),
            }
        })
        .collect();
    breaks.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    let mut broken: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for b in &breaks {
        let e = broken.entry(b.at_s as u32).or_default();
        e.0 += 1;
        e.1 += u64::from(b.expected);
    }
    // Per second: lost, lost apart; and the unexpected ones by kind and pod for the reasons.
    let mut lost: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    let mut lost_kinds: BTreeMap<LostKind, u64> = BTreeMap::new();
    // Pod → (count, first, last) of the losses counted apart.
    let mut lost_apart: BTreeMap<String, (u64, f64, f64)> = BTreeMap::new();
    for (_, l) in &c.lost {
        let at_s = ms_to_s(l.at_ms);
        let apart = expected(&graceful, l.pod.as_deref(), at_s);
        let e = lost.entry((l.at_ms / 1000) as u32).or_default();
        e.1 += u64::from(apart);
        if apart {
            let e = lost_apart
                .entry(l.pod.clone().unwrap_or_default())
                .or_insert((0, f64::MAX, f64::MIN));
            e.0 += 1;
            e.1 = e.1.min(at_s);
            e.2 = e.2.max(at_s);
        } else {
            e.0 += 1;
            *lost_kinds.entry(l.kind).or_default() += 1;
        }
    }

    // Rows: every second from the first to the last measured, gaps filled with zeros.
    let last = [
        c.last_second(),
        broken.keys().next_back().copied(),
        lost.keys().next_back().copied(),
    ]
    .into_iter()
    .flatten()
    .max();
    let mut seconds = Vec::new();
    let mut totals = DisruptionTotals::default();
    let mut ll_failures = Failures::default();
    for s in 0..=last.unwrap_or(0) {
        if last.is_none() {
            break;
        }
        let (row, connect_failed) = match c.seconds.get(&s) {
            Some(cs) => (row(s, cs), cs.tally.ll_connect_failures),
            None => (row(s, &CollectedSecond::empty(s)), Failures::default()),
        };
        let mut row = row;
        if let Some((b, e)) = broken.get(&s) {
            row.long_lived.broken = *b;
            row.long_lived.broken_expected = *e;
        }
        if let Some((_, apart)) = lost.get(&s) {
            row.udp.lost_expected = *apart;
        }
        totals.attempts += row.attempts;
        totals.ok += row.ok;
        ll_failures.merge(&connect_failed);
        let (ll, u) = (&mut totals.long_lived, &mut totals.udp);
        ll.sent += row.long_lived.sent;
        ll.answered += row.long_lived.answered;
        ll.broken += row.long_lived.broken;
        ll.broken_expected += row.long_lived.broken_expected;
        ll.connect_failed += row.long_lived.connect_failed;
        u.sent += row.udp.sent;
        u.answered += row.udp.answered;
        u.lost += row.udp.lost;
        u.lost_expected += row.udp.lost_expected;
        seconds.push(row);
    }
    // The run's failures: new connections and long-lived reconnects.
    totals.failed = Failed::from(seconds.iter().fold(Failures::default(), |mut f, r| {
        f.merge(&r.failed.kinds);
        f
    }));

    let mut reasons = Vec::new();
    let mut notes = Vec::new();
    if let Some(e) = &m.action.error {
        reasons.push(format!("the action did not complete: {e}"));
    } else if m.action.started_s.is_some() && m.action.stable_s.is_none() && m.stopped != Some(Stop::Interrupted) {
        reasons.push(format!(
            "the endpoints were not stable again within the run ({:.0}s): give a longer --duration",
            m.params.duration_s
        ));
    }
    let failed_seconds: Vec<u32> = seconds
        .iter()
        .filter(|r| r.failed.total > 0)
        .map(|r| r.second)
        .collect();
    if !failed_seconds.is_empty() {
        let started: u64 = seconds.iter().filter(|r| r.failed.total > 0).map(|r| r.attempts).sum();
        reasons.push(format!(
            "{} new connection(s) failed in second(s) {} ({}; of {started} started in those seconds)",
            totals.failed.total,
            ranges(&failed_seconds),
            kinds(&totals.failed.kinds)
        ));
    }
    let reconnect_seconds: Vec<u32> = seconds
        .iter()
        .filter(|r| r.long_lived.connect_failed > 0)
        .map(|r| r.second)
        .collect();
    if !reconnect_seconds.is_empty() {
        reasons.push(format!(
            "{} long-lived (re)connect(s) failed in second(s) {} ({})",
            totals.long_lived.connect_failed,
            ranges(&reconnect_seconds),
            kinds(&ll_failures)
        ));
    }
    let unexpected: Vec<&BrokenConn> = breaks.iter().filter(|b| !b.expected).collect();
    if !unexpected.is_empty() {
        let secs: BTreeSet<u32> = unexpected.iter().map(|b| b.at_s as u32).collect();
        let mut by: BTreeMap<(String, String), u64> = BTreeMap::new();
        for b in &unexpected {
            *by.entry((b.kind.to_string(), b.pod.clone())).or_default() += 1;
        }
        let what: Vec<String> = by
            .iter()
            .map(|((kind, pod), n)| format!("{n} {kind} on {pod}{}", pod_state(&m.events, pod)))
            .collect();
        reasons.push(format!(
            "{} long-lived connection(s) broke in second(s) {}: {}",
            unexpected.len(),
            ranges(&secs.into_iter().collect::<Vec<_>>()),
            what.join("; ")
        ));
    }
    let lost_unexpected: u64 = lost_kinds.values().sum();
    if lost_unexpected > 0 {
        let secs: Vec<u32> = lost.iter().filter(|(_, (n, _))| *n > 0).map(|(s, _)| *s).collect();
        let what: Vec<String> = lost_kinds
            .iter()
            .map(|(k, n)| {
                format!(
                    "{n} {}",
                    match k {
                        LostKind::Timeout => "unanswered",
                        LostKind::Refused => "refused (ICMP)",
                    }
                )
            })
            .collect();
        reasons.push(format!(
            "{lost_unexpected} UDP datagram(s) lost in second(s) {}: {}",
            ranges(&secs),
            what.join(", ")
        ));
    }
    let expected_breaks: Vec<&BrokenConn> = breaks.iter().filter(|b| b.expected).collect();
    if !expected_breaks.is_empty() {
        let pods: BTreeSet<&str> = expected_breaks.iter().map(|b| b.pod.as_str()).collect();
        notes.push(format!(
            "{} long-lived connection(s) to {} ended with their pod, removed after it stopped serving: counted apart",
            expected_breaks.len(),
            pods.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    if !lost_apart.is_empty() {
        let n: u64 = lost_apart.values().map(|v| v.0).sum();
        let per: Vec<String> = lost_apart.iter().map(|(p, v)| format!("{p} {}", v.0)).collect();
        let longest = lost_apart.values().map(|v| v.2 - v.1).fold(0.0, f64::max);
        notes.push(format!(
            "{n} UDP datagram(s) lost on sessions of pods removed after they stopped serving ({}; over at most {longest:.2}s per pod, until the nodes' kube-proxies moved the flows): counted apart",
            per.join(", ")
        ));
    }
    let nothing = totals.attempts + totals.long_lived.sent + totals.udp.sent == 0;
    if nothing && m.stopped != Some(Stop::Interrupted) {
        reasons.push("no traffic was measured".into());
    }
    let verdict = if reasons.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    breaks.truncate(MAX_BREAKS);
    DisruptionRun {
        kind: DISRUPTION_KIND.into(),
        version: DISRUPTION_VERSION,
        tag: m.tag,
        started_at: m.started_at,
        duration_s: m.duration_s,
        target: m.target,
        params: m.params,
        action: m.action,
        events: m.events,
        syncs: m.syncs,
        seconds,
        totals,
        breaks,
        stopped: m.stopped,
        verdict,
        reasons,
        notes,
        environment: m.environment,
    }
}

/// ` (still serving)`, ` (killed while serving)`, ...: what the pod was doing, for a reason.
fn pod_state(events: &[EndpointChange], pod: &str) -> &'static str {
    let steps: Vec<Step> = events.iter().filter(|e| e.pod == pod).map(|e| e.step).collect();
    match (
        steps.contains(&Step::Terminating),
        steps.contains(&Step::NotServing),
        steps.contains(&Step::Removed),
    ) {
        (_, false, true) => " (removed while it still served: no graceful end)",
        (true, false, false) => " (terminating, still serving)",
        (false, false, false) => " (not terminating)",
        _ => "",
    }
}

#[cfg(test)]
mod tests;
