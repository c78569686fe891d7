//! One disruption run: what was done and when, the per-second timeline with the endpoint events
//! on the same axis, the totals and the verdict; the live line of a second; and `compare`'s view
//! of several disruption runs (summary, and failures per second aligned on each run's action).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use serde::Serialize;
use tabled::builder::Builder;

use super::{CompareFormat, RunFormat, heading, styled, title};
use crate::record::{DisruptionRun, SecondRow};
use crate::storm::Stop;

/// Renders a run in `format`. JSON is exactly the run record.
pub fn disruption(run: &DisruptionRun, format: RunFormat) -> anyhow::Result<String> {
    Ok(match format {
        RunFormat::Json => serde_json::to_string_pretty(run)? + "\n",
        RunFormat::Yaml => serde_saphyr::to_string(run)?,
        RunFormat::Table => text(run, false),
        RunFormat::Markdown => text(run, true),
    })
}

/// Seconds as `+3.01s`.
fn at(s: f64) -> String {
    format!("+{s:.2}s")
}

fn secs(s: Option<f64>) -> String {
    s.map_or("-".into(), |v| format!("{v}s"))
}

/// Per pod, the first and the last second it answered in.
fn answering(run: &DisruptionRun) -> BTreeMap<&str, (u32, u32)> {
    let mut out: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    for r in run.seconds.iter().filter(|r| r.ok > 0) {
        for p in r.pods.keys() {
            let e = out.entry(p.as_str()).or_insert((r.second, r.second));
            e.1 = r.second;
        }
    }
    out
}

/// The pods column: how many answered, the pods that answered for the first time (`+`), and
/// those that had answered for the last time the second before (`-`; not in the last two
/// seconds, which the end of the run cuts short).
fn pods_cell(row: &SecondRow, spans: &BTreeMap<&str, (u32, u32)>, first: u32, last: u32) -> String {
    let mut cell = row.pods.len().to_string();
    let came = spans
        .iter()
        .filter(|(_, (f, _))| *f == row.second && row.second > first)
        .map(|(p, _)| format!("+{p}"));
    let gone = spans
        .iter()
        .filter(|(_, (_, l))| *l + 1 == row.second && *l + 2 < last)
        .map(|(p, _)| format!("-{p}"));
    let marks: Vec<String> = gone.chain(came).collect();
    for m in marks.iter().take(4) {
        cell.push(' ');
        cell.push_str(m);
    }
    if marks.len() > 4 {
        let _ = write!(cell, " (+{} more)", marks.len() - 4);
    }
    cell
}

/// `n` or `n (k apart)`.
fn apart(n: u64, k: u64) -> String {
    if k == 0 {
        n.to_string()
    } else {
        format!("{n} ({k} apart)")
    }
}

/// What happened to endpoints (and nodes' rules) in second `s`, and the action's marks.
fn events_cell(run: &DisruptionRun, s: u32) -> String {
    let within = |t: f64| t >= f64::from(s) && t < f64::from(s) + 1.0;
    let mut parts: Vec<String> = Vec::new();
    if run.action.started_s.is_some_and(within) {
        parts.push(format!("▶ {}", run.params.action));
    }
    // Per pod, its steps in this second, in order.
    let mut pods: Vec<(String, Vec<String>)> = Vec::new();
    for e in run.events.iter().filter(|e| within(e.at_s)) {
        match pods.iter_mut().find(|(p, _)| *p == e.pod) {
            Some((_, steps)) => steps.push(e.step.to_string()),
            None => pods.push((e.pod.clone(), vec![e.step.to_string()])),
        }
    }
    let shown = pods.len().min(4);
    for (p, steps) in &pods[..shown] {
        parts.push(format!("{p} {}", steps.join("→")));
    }
    if pods.len() > shown {
        parts.push(format!("(+{} pods)", pods.len() - shown));
    }
    // Node syncs: per generation, how many nodes applied it in this second.
    let mut gens: BTreeMap<u64, usize> = BTreeMap::new();
    for n in run.syncs.iter().filter(|n| within(n.at_s)) {
        *gens.entry(n.generation).or_default() += 1;
    }
    if !gens.is_empty() {
        let g: Vec<String> = gens.iter().map(|(g, n)| format!("g{g}×{n}")).collect();
        parts.push(format!("synced {}", g.join(" ")));
    }
    if run.action.stable_s.is_some_and(within) {
        parts.push("■ stable".into());
    }
    parts.join("; ")
}

/// A timeline column: its heading and its value in a row.
type Column = (&'static str, fn(&SecondRow) -> u64);

/// The failure columns: refused, reset, timeout, wrong reply always; the rarer kinds only when
/// the run has any.
fn failure_columns(run: &DisruptionRun) -> Vec<Column> {
    let mut cols: Vec<Column> = vec![
        ("refused", |r| r.failed.kinds.refused),
        ("reset", |r| r.failed.kinds.reset),
        ("timeout", |r| r.failed.kinds.timeout),
        ("wrong", |r| r.failed.kinds.unparsable),
    ];
    let k = &run.totals.failed.kinds;
    if k.read > 0 {
        cols.push(("closed", |r| r.failed.kinds.read));
    }
    if k.unreachable > 0 {
        cols.push(("unreach", |r| r.failed.kinds.unreachable));
    }
    if k.other > 0 {
        cols.push(("other", |r| r.failed.kinds.other));
    }
    cols
}

fn timeline(run: &DisruptionRun, md: bool) -> String {
    let cols = failure_columns(run);
    let mut b = Builder::default();
    let mut head: Vec<String> = ["s", "new", "ok"].iter().map(|s| s.to_string()).collect();
    head.extend(cols.iter().map(|(n, _)| n.to_string()));
    head.extend(
        ["p99 ms", "pods", "ll broken", "udp lost", "endpoints"]
            .iter()
            .map(|s| s.to_string()),
    );
    b.push_record(head);
    let spans = answering(run);
    let (first, last) = (
        run.seconds.first().map_or(0, |r| r.second),
        run.seconds.last().map_or(0, |r| r.second),
    );
    for r in &run.seconds {
        let mut row = vec![r.second.to_string(), r.attempts.to_string(), r.ok.to_string()];
        row.extend(cols.iter().map(|(_, f)| f(r).to_string()));
        row.push(r.p99_ms.map_or("-".into(), |p| format!("{p:.1}")));
        row.push(pods_cell(r, &spans, first, last));
        let ll = apart(r.long_lived.broken, r.long_lived.broken_expected);
        row.push(if r.long_lived.connect_failed > 0 {
            format!("{ll}, {} reconnects failed", r.long_lived.connect_failed)
        } else {
            ll
        });
        row.push(apart(r.udp.lost, r.udp.lost_expected));
        row.push(events_cell(run, r.second));
        b.push_record(row);
    }
    styled(b, md)
}

fn text(run: &DisruptionRun, md: bool) -> String {
    let mut out = String::new();
    title(&mut out, "Disruption", &run.tag, md);
    let p = &run.params;
    let mut b = Builder::default();
    b.push_record([
        "target",
        "action",
        "sources",
        "new conns/s",
        "long-lived",
        "udp sessions",
        "seconds",
    ]);
    b.push_record([
        format!("{} ({})", run.target.address, run.target.mode),
        p.action.clone(),
        run.target.source.clone().unwrap_or_else(|| p.sources.clone()),
        format!("{}", p.rate),
        p.long_lived.to_string(),
        p.udp_sessions.to_string(),
        format!("{:.1}", run.duration_s),
    ]);
    let _ = writeln!(out, "{}", styled(b, md));
    let mut life = Vec::new();
    if let Some(g) = p.grace_period_s {
        life.push(format!("grace period {}", secs(Some(g))));
    }
    if let Some(d) = p.drain_delay_s {
        life.push(format!("drain delay {}", secs(Some(d))));
    }
    if let Some(r) = p.ready_delay_s {
        life.push(format!("ready delay {}", secs(Some(r))));
    }
    if let Some(s) = &p.sync_delay {
        life.push(format!("node sync delay {s}"));
    }
    if !life.is_empty() {
        let _ = writeln!(out, "lifecycle: {}", life.join(", "));
    }
    let a = &run.action;
    let mut line = format!("action: {}", if a.what.is_empty() { "none" } else { &a.what });
    if let Some(s) = a.started_s {
        let _ = write!(line, " at {}", at(s));
    }
    match (a.started_s, a.stable_s) {
        (Some(s), Some(e)) => {
            let _ = write!(line, "; endpoints stable again at {} ({:.2}s later)", at(e), e - s);
        }
        (Some(_), None) => line.push_str("; endpoints not stable again by the end"),
        _ => {}
    }
    let _ = writeln!(out, "{line}");
    if let Some(e) = &a.error {
        let _ = writeln!(out, "action error: {e}");
    }
    if !a.endpoints_before.is_empty() || !a.endpoints_after.is_empty() {
        let _ = writeln!(
            out,
            "endpoints: {} ready before, {} after",
            a.endpoints_before.len(),
            a.endpoints_after.len()
        );
    }

    heading(&mut out, "Timeline (one row per second since the run started)", md);
    let _ = writeln!(out, "{}", timeline(run, md));

    if !run.events.is_empty() || !run.syncs.is_empty() {
        heading(&mut out, "Endpoint events", md);
        for e in &run.events {
            let _ = writeln!(
                out,
                "{}{} {} {}",
                if md { "- " } else { "  " },
                at(e.at_s),
                e.pod,
                e.step
            );
        }
        let mut gens: BTreeMap<u64, (f64, f64, usize)> = BTreeMap::new();
        for n in &run.syncs {
            let g = gens.entry(n.generation).or_insert((f64::MAX, f64::MIN, 0));
            g.0 = g.0.min(n.at_s);
            g.1 = g.1.max(n.at_s);
            g.2 += 1;
        }
        for (g, (first, last, n)) in gens {
            let _ = writeln!(
                out,
                "{}rules generation {g} applied by {n} node(s) between {} and {}",
                if md { "- " } else { "  " },
                at(first),
                at(last)
            );
        }
    }

    let t = &run.totals;
    heading(&mut out, "Totals", md);
    let kinds: Vec<String> = t
        .failed
        .kinds
        .kinds()
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{} {n}", if *k == "unparsable" { "wrong reply" } else { k }))
        .collect();
    let _ = writeln!(
        out,
        "new connections: {} started, {} ok, {} failed{}",
        t.attempts,
        t.ok,
        t.failed.total,
        if kinds.is_empty() {
            String::new()
        } else {
            format!(" ({})", kinds.join(", "))
        }
    );
    let _ = writeln!(
        out,
        "long-lived: {} connection(s), {} messages, {} answered, {} broken ({} counted apart), {} reconnects failed",
        p.long_lived,
        t.long_lived.sent,
        t.long_lived.answered,
        t.long_lived.broken,
        t.long_lived.broken_expected,
        t.long_lived.connect_failed
    );
    let _ = writeln!(
        out,
        "udp: {} session(s), {} datagrams, {} answered, {} lost ({} counted apart)",
        p.udp_sessions, t.udp.sent, t.udp.answered, t.udp.lost, t.udp.lost_expected
    );

    if run.stopped == Some(Stop::Interrupted) {
        let _ = writeln!(
            out,
            "\nINTERRUPTED: after {:.1}s; the record is partial (on what was measured: {})",
            run.duration_s, run.verdict
        );
    } else {
        let _ = writeln!(out, "\nverdict: {}", run.verdict);
    }
    for r in &run.reasons {
        let _ = writeln!(out, "  {r}");
    }
    for n in &run.notes {
        let _ = writeln!(out, "  note: {n}");
    }
    out
}

/// A second as one live line (on stderr while a run goes on).
pub fn second_line(r: &SecondRow, open: u32) -> String {
    format!(
        "[{:>4}s] new {} ok {} failed {} p99 {} ms  pods {}  long-lived open {} broken {}  udp lost {}",
        r.second,
        r.attempts,
        r.ok,
        r.failed.total,
        r.p99_ms.map_or("-".into(), |p| format!("{p:.1}")),
        r.pods.len(),
        open,
        r.long_lived.broken,
        r.udp.lost
    )
}

/// A disruption run in a comparison.
#[derive(Serialize)]
struct RunDoc<'a> {
    tag: &'a str,
    action: &'a str,
    target: &'a str,
    proxy_mode: Option<&'a str>,
    attempts: u64,
    failed: u64,
    failed_seconds: Vec<u32>,
    long_lived_broken: u64,
    long_lived_broken_apart: u64,
    udp_lost: u64,
    udp_lost_apart: u64,
    /// Seconds from the action's start to stable endpoints.
    stable_after_s: Option<f64>,
    verdict: crate::stats::Verdict,
    /// Failed new connections per second, second 0 being the one the action started in.
    failures_by_action_second: BTreeMap<i64, u64>,
}

#[derive(Serialize)]
struct Doc<'a> {
    disruption_runs: Vec<RunDoc<'a>>,
}

/// The second the action started in (0 without an action).
fn action_second(r: &DisruptionRun) -> i64 {
    r.action.started_s.map_or(0, |s| s.floor() as i64)
}

fn doc(runs: &[DisruptionRun]) -> Doc<'_> {
    Doc {
        disruption_runs: runs
            .iter()
            .map(|r| RunDoc {
                tag: &r.tag,
                action: &r.params.action,
                target: &r.target.address,
                proxy_mode: r.environment.proxy_mode.as_deref(),
                attempts: r.totals.attempts,
                failed: r.totals.failed.total,
                failed_seconds: r
                    .seconds
                    .iter()
                    .filter(|s| s.failed.total > 0)
                    .map(|s| s.second)
                    .collect(),
                long_lived_broken: r.totals.long_lived.broken,
                long_lived_broken_apart: r.totals.long_lived.broken_expected,
                udp_lost: r.totals.udp.lost,
                udp_lost_apart: r.totals.udp.lost_expected,
                stable_after_s: r.action.started_s.zip(r.action.stable_s).map(|(s, e)| e - s),
                verdict: r.verdict,
                failures_by_action_second: r
                    .seconds
                    .iter()
                    .map(|s| (i64::from(s.second) - action_second(r), s.failed.total))
                    .collect(),
            })
            .collect(),
    }
}

const SUMMARY: [&str; 10] = [
    "tag",
    "action",
    "proxy",
    "new conns",
    "failed",
    "failed in seconds",
    "ll broken",
    "udp lost",
    "stable after",
    "verdict",
];

fn row(d: &RunDoc<'_>) -> [String; 10] {
    [
        d.tag.to_string(),
        d.action.to_string(),
        d.proxy_mode.unwrap_or("-").to_string(),
        d.attempts.to_string(),
        d.failed.to_string(),
        if d.failed_seconds.is_empty() {
            "-".into()
        } else {
            crate::disruption::judge::ranges(&d.failed_seconds)
        },
        apart(d.long_lived_broken, d.long_lived_broken_apart),
        apart(d.udp_lost, d.udp_lost_apart),
        d.stable_after_s.map_or("-".into(), |s| format!("{s:.2}s")),
        d.verdict.to_string(),
    ]
}

/// Disruption runs side by side: one summary row each, and their failed new connections per
/// second, aligned on the second each run's action started in (`+0`).
pub fn disruption_compare(runs: &[DisruptionRun], format: CompareFormat) -> anyhow::Result<String> {
    let d = doc(runs);
    Ok(match format {
        CompareFormat::Json => serde_json::to_string_pretty(&d)? + "\n",
        CompareFormat::Yaml => serde_saphyr::to_string(&d)?,
        CompareFormat::Csv => {
            let mut w = csv::WriterBuilder::new().flexible(true).from_writer(Vec::new());
            w.write_record(SUMMARY)?;
            for r in &d.disruption_runs {
                w.write_record(row(r))?;
            }
            String::from_utf8(w.into_inner()?)?
        }
        CompareFormat::Table | CompareFormat::Markdown => {
            let md = format == CompareFormat::Markdown;
            let mut out = String::new();
            let _ = writeln!(
                out,
                "{}",
                if md {
                    "### Disruption runs\n"
                } else {
                    "Disruption runs:"
                }
            );
            let mut b = Builder::default();
            b.push_record(SUMMARY);
            for r in &d.disruption_runs {
                b.push_record(row(r));
            }
            let _ = writeln!(out, "{}", styled(b, md));
            heading(
                &mut out,
                "Failed new connections per second (+0: the second the action started)",
                md,
            );
            let all: BTreeSet<i64> = d
                .disruption_runs
                .iter()
                .flat_map(|r| r.failures_by_action_second.keys().copied())
                .collect();
            let mut b = Builder::default();
            b.push_record(std::iter::once("s".to_string()).chain(d.disruption_runs.iter().map(|r| r.tag.to_string())));
            for s in all {
                let mut cells = vec![format!("{s:+}")];
                for r in &d.disruption_runs {
                    cells.push(
                        r.failures_by_action_second
                            .get(&s)
                            .map_or(String::new(), u64::to_string),
                    );
                }
                b.push_record(cells);
            }
            let _ = writeln!(out, "{}", styled(b, md));
            out
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{
        ActionInfo, DISRUPTION_KIND, DisruptionParams, DisruptionTotals, EndpointChange, Environment, Failed,
        LongLivedSecond, NodeSyncAt, Step, TargetInfo, UdpSecond,
    };
    use crate::stats::Verdict;
    use crate::storm::{Failures, Proto};

    fn row(second: u32, pods: &[&str], refused: u64, broken: (u64, u64)) -> SecondRow {
        let kinds = Failures {
            refused,
            ..Failures::default()
        };
        SecondRow {
            second,
            attempts: pods.len() as u64 * 10 + refused,
            ok: pods.len() as u64 * 10,
            failed: Failed::from(kinds),
            p99_ms: Some(1.25),
            pods: pods.iter().map(|p| (p.to_string(), 10)).collect(),
            long_lived: LongLivedSecond {
                sent: 10,
                answered: 10,
                broken: broken.0,
                broken_expected: broken.1,
                connect_failed: 0,
            },
            udp: UdpSecond::default(),
        }
    }

    fn run(tag: &str, refused_at: u32) -> DisruptionRun {
        let ev = |at_s, pod: &str, step| EndpointChange {
            at_s,
            pod: pod.into(),
            step,
        };
        DisruptionRun {
            kind: DISRUPTION_KIND.into(),
            version: 1,
            tag: tag.into(),
            started_at: "2026-11-24T10:00:00Z".parse().unwrap(),
            duration_s: 6.0,
            target: TargetInfo {
                address: "10.96.0.10:5001 (clusterIP)".into(),
                mode: "lab".into(),
                protocol: Proto::Tcp,
                service: None,
                source: Some("per-node (2 sources)".into()),
                lab: Some("l".into()),
                ip_family: None,
            },
            params: DisruptionParams {
                action: "delete-pod".into(),
                rate: 100.0,
                long_lived: 2,
                udp_sessions: 0,
                sources: "per-node".into(),
                interval_s: 0.1,
                timeout_s: 2.0,
                warmup_s: 2.0,
                settle_s: 1.0,
                duration_s: 60.0,
                grace_period_s: Some(5.0),
                drain_delay_s: Some(0.0),
                ready_delay_s: Some(0.0),
                sync_delay: Some("0ms".into()),
            },
            action: ActionInfo {
                what: "deleted pod-1, replaced as its ReplicaSet would".into(),
                started_s: Some(2.0),
                stable_s: Some(4.5),
                error: None,
                endpoints_before: vec!["pod-1".into(), "pod-2".into()],
                endpoints_after: vec!["pod-2".into(), "pod-3".into()],
            },
            events: vec![
                ev(2.01, "pod-1", Step::Terminating),
                ev(2.02, "pod-1", Step::NotServing),
                ev(2.1, "pod-3", Step::Ready),
                ev(4.3, "pod-1", Step::Removed),
            ],
            syncs: vec![
                NodeSyncAt {
                    at_s: 2.2,
                    node: "node1".into(),
                    generation: 5,
                },
                NodeSyncAt {
                    at_s: 2.3,
                    node: "node2".into(),
                    generation: 5,
                },
            ],
            seconds: vec![
                row(0, &["pod-1", "pod-2"], 0, (0, 0)),
                row(1, &["pod-1", "pod-2"], 0, (0, 0)),
                row(
                    2,
                    &["pod-2", "pod-3"],
                    u64::from(refused_at.min(3).saturating_sub(2) * 3),
                    (0, 0),
                ),
                row(3, &["pod-2", "pod-3"], 0, (0, 0)),
                row(4, &["pod-2", "pod-3"], 0, (1, 1)),
                row(5, &["pod-2", "pod-3"], 0, (0, 0)),
            ],
            totals: DisruptionTotals::default(),
            breaks: Vec::new(),
            stopped: None,
            verdict: if refused_at >= 3 { Verdict::Fail } else { Verdict::Pass },
            reasons: Vec::new(),
            notes: Vec::new(),
            environment: Environment::default(),
        }
    }

    #[test]
    fn the_timeline_puts_events_pods_and_breaks_in_their_seconds() {
        let text = disruption(&run("t", 3), RunFormat::Table).unwrap();
        let line = |s: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(&format!("{s} ")))
                .unwrap_or_else(|| panic!("no row {s}:\n{text}"))
                .to_string()
        };
        let two = line("2");
        assert!(two.contains("▶ delete-pod"), "{two}");
        assert!(
            two.contains("pod-1 terminating→not-serving; pod-3 ready; synced g5×2"),
            "{two}"
        );
        // pod-1 answered last in second 1, pod-3 first in second 2.
        assert!(two.contains("2 -pod-1 +pod-3"), "{two}");
        let four = line("4");
        assert!(
            four.contains("1 (1 apart)") && four.contains("pod-1 removed; ■ stable"),
            "{four}"
        );
        assert!(text.contains("rules generation 5 applied by 2 node(s) between +2.20s and +2.30s"));
        assert!(text.contains("lifecycle: grace period 5s, drain delay 0s, ready delay 0s, node sync delay 0ms"));
        assert!(
            text.contains("endpoints stable again at +4.50s (2.50s later)"),
            "{text}"
        );
        // The rarer failure kinds only when present: not here.
        assert!(!text.contains("unreach") && text.contains(" wrong "));
        let md = disruption(&run("t", 3), RunFormat::Markdown).unwrap();
        assert!(md.starts_with("## Disruption run `t`") && md.contains("| s "), "{md}");
    }

    #[test]
    fn compare_aligns_failures_on_each_action() {
        let a = run("a", 3);
        let mut b = run("b", 0);
        // b's action came a second later: its seconds shift by one.
        b.action.started_s = Some(3.4);
        b.seconds[3].failed = Failed::from(Failures {
            timeout: 4,
            ..Failures::default()
        });
        let text = disruption_compare(&[a, b], CompareFormat::Table).unwrap();
        let at = |s: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(&format!("{s} ")))
                .unwrap_or_else(|| panic!("no row {s}:\n{text}"))
                .split_whitespace()
                .skip(1)
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        // a failed in second 2 (its action's second), b in second 3 (its action's second).
        assert_eq!(at("+0"), ["3", "4"], "{text}");
        assert_eq!(at("-3"), ["0"], "a has no second -3 ... b has: {text}");
        let json = disruption_compare(&[run("a", 3)], CompareFormat::Json).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["disruption_runs"][0]["failures_by_action_second"]["0"], 3);
        assert_eq!(v["disruption_runs"][0]["failed_seconds"], serde_json::json!([2]));
    }
}
