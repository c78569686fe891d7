//! Disruption runs: new connections per second (answered, and failed by kind, stacked), with the
//! action and the endpoint events on the same axis; p99 connect latency; long-lived connections
//! broken and UDP datagrams lost per second (counted apart or not); which pods answered, second by
//! second; the endpoint events. Several runs: their failures per second aligned on each action.

use std::collections::BTreeSet;
use std::fmt::Write;

use super::svg::{self, N, Plot, Svg};
use super::{Esc, Kind, Page, facts, note, table, verdict_box};
use crate::record::{DisruptionRun, SecondRow, Step};
use crate::report::thousands;
use crate::stats::Verdict;
use crate::storm::Stop;

/// A failure kind: its name, its CSS class, its count in a row.
type FailKind = (&'static str, &'static str, fn(&SecondRow) -> u64);

/// Failure kinds as stacked on the answered connections.
const KINDS: [FailKind; 5] = [
    ("refused", "f-refused", |r| r.failed.kinds.refused),
    ("reset", "f-reset", |r| r.failed.kinds.reset),
    ("timeout", "f-timeout", |r| r.failed.kinds.timeout),
    ("wrong reply", "f-wrong", |r| r.failed.kinds.unparsable),
    ("other", "f-other", |r| {
        r.failed.kinds.read + r.failed.kinds.unreachable + r.failed.kinds.other
    }),
];

/// At most this many pods get a row in the pods chart (the ones whose endpoints changed first).
const MAX_POD_ROWS: usize = 40;

impl Kind for DisruptionRun {
    const ID: &'static str = "disruption";
    const TITLE: &'static str = "Disruption runs";

    fn tag(&self) -> &str {
        &self.tag
    }

    fn verdict(&self) -> Option<(&'static str, bool)> {
        Some(match self.verdict {
            Verdict::Pass => ("PASS", true),
            Verdict::Fail => ("FAIL", false),
        })
    }

    fn run(&self, p: &mut Page) {
        let a = &self.action;
        let mut rows = vec![
            ("target", format!("{} ({})", self.target.address, self.target.mode)),
            (
                "action",
                if a.what.is_empty() {
                    "none".into()
                } else {
                    a.what.clone()
                },
            ),
            (
                "sources",
                self.target
                    .source
                    .clone()
                    .unwrap_or_else(|| self.params.sources.clone()),
            ),
            (
                "traffic",
                format!(
                    "{} new conn/s, {} long-lived, {} UDP sessions",
                    self.params.rate, self.params.long_lived, self.params.udp_sessions
                ),
            ),
        ];
        let life: Vec<String> = [
            ("grace", self.params.grace_period_s),
            ("drain", self.params.drain_delay_s),
            ("ready delay", self.params.ready_delay_s),
        ]
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k} {v}s")))
        .chain(self.params.sync_delay.iter().map(|s| format!("node sync {s}")))
        .collect();
        if !life.is_empty() {
            rows.push(("lifecycle", life.join(", ")));
        }
        if let Some(s) = a.started_s {
            rows.push(("action at", format!("+{s:.2}s")));
        }
        if let (Some(s), Some(e)) = (a.started_s, a.stable_s) {
            rows.push(("stable after", format!("{:.2}s", e - s)));
        }
        let t = &self.totals;
        rows.push((
            "new connections",
            format!("{} ({} failed)", thousands(t.attempts), thousands(t.failed.total)),
        ));
        rows.push((
            "long-lived broken",
            format!("{} ({} apart)", t.long_lived.broken, t.long_lived.broken_expected),
        ));
        rows.push(("UDP lost", format!("{} ({} apart)", t.udp.lost, t.udp.lost_expected)));
        rows.push(("elapsed", crate::report::elapsed(self.duration_s)));
        p.html(&facts(&rows));
        let mut lines = vec![if self.stopped == Some(Stop::Interrupted) {
            format!(
                "INTERRUPTED: the record is partial (on what was measured: {})",
                self.verdict
            )
        } else {
            format!("verdict: {}", self.verdict)
        }];
        lines.extend(self.reasons.iter().cloned());
        lines.extend(self.notes.iter().map(|n| format!("note: {n}")));
        if let Some(e) = &a.error {
            lines.push(format!("action error: {e}"));
        }
        p.html(&verdict_box(&lines, self.verdict == Verdict::Pass));
        p.panel(
            "New connections per second: answered, and failed by kind",
            &connections(self),
            &note(
                "A connection counts in the second it started. Dashed: the action started; solid: the \
                 endpoints were stable again; ticks on top: endpoint events (hover them).",
            ),
        );
        p.panel(
            "p99 connect latency per second (ms)",
            &latency(self),
            &note("Of the connections answered in that second."),
        );
        if self.params.long_lived + self.params.udp_sessions > 0 {
            p.panel(
                "Long-lived connections broken and UDP datagrams lost per second",
                &flows(self),
                &note("Pale: counted apart (their pod ended gracefully: it stopped serving before it was removed)."),
            );
        }
        p.panel("Pods answering, second by second", &pods(self), &pods_note(self));
        if !self.events.is_empty() {
            p.html(&table(
                &["at", "pod", "step"],
                self.events
                    .iter()
                    .map(|e| [format!("+{:.3}s", e.at_s), e.pod.clone(), e.step.to_string()]),
            ));
        }
    }

    fn several(runs: &[&Self], p: &mut Page) {
        p.html(&table(
            &[
                "tag",
                "action",
                "proxy",
                "new conns",
                "failed",
                "ll broken (apart)",
                "UDP lost (apart)",
                "stable after",
                "verdict",
            ],
            runs.iter().map(|r| {
                let t = &r.totals;
                [
                    r.tag.clone(),
                    r.params.action.clone(),
                    r.environment.proxy_mode.clone().unwrap_or_else(|| "-".into()),
                    t.attempts.to_string(),
                    t.failed.total.to_string(),
                    format!("{} ({})", t.long_lived.broken, t.long_lived.broken_expected),
                    format!("{} ({})", t.udp.lost, t.udp.lost_expected),
                    r.action
                        .started_s
                        .zip(r.action.stable_s)
                        .map_or("-".into(), |(s, e)| format!("{:.2}s", e - s)),
                    r.verdict.to_string(),
                ]
            }),
        ));
        p.panel(
            "Failed new connections per second, aligned on each run's action",
            &aligned(runs),
            &note("0 on the x axis: the second each run's action started in."),
        );
    }
}

/// A chart over the run's seconds: the plot, the x range set, seconds labelled.
fn over_seconds(run: &DisruptionRun, y_max: f64, name: &str) -> Plot {
    let mut plot = Plot::new(760.0, 240.0, 52.0, 30.0, y_max, svg::label, name);
    plot.x_min = 0.0;
    plot.x_max = run.seconds.len().max(1) as f64;
    plot.x_axis(|v| format!("{v:.0}s"));
    plot
}

/// The action's start (dashed) and the stable endpoints (solid) across the plot.
fn marks(run: &DisruptionRun, plot: &mut Plot) {
    let (top, bottom) = (plot.top_px, plot.top_px + plot.height);
    if let Some(s) = run.action.started_s {
        let x = plot.x(s);
        plot.svg.line(x, top, x, bottom, "fair");
    }
    if let Some(e) = run.action.stable_s {
        let x = plot.x(e);
        plot.svg.line(x, top, x, bottom, "axis");
    }
}

fn connections(run: &DisruptionRun) -> String {
    let max = run.seconds.iter().map(|r| r.attempts).max().unwrap_or(0) as f64;
    let mut plot = over_seconds(run, max.max(1.0), "new connections per second");
    let slot = plot.width / run.seconds.len().max(1) as f64;
    for r in &run.seconds {
        let x = plot.x(f64::from(r.second)) + slot * 0.1;
        let w = slot * 0.8;
        let mut kinds: Vec<String> = KINDS
            .iter()
            .filter(|(_, _, f)| f(r) > 0)
            .map(|(n, _, f)| format!("{n} {}", f(r)))
            .collect();
        if kinds.is_empty() {
            kinds.push("none failed".into());
        }
        let title = format!(
            "second {}: {} new, {} ok; {}; p99 {}; {} pods answered",
            r.second,
            r.attempts,
            r.ok,
            kinds.join(", "),
            r.p99_ms.map_or("-".into(), |v| format!("{v:.1} ms")),
            r.pods.len()
        );
        let mut base = 0.0;
        let mut stack = vec![("bar", r.ok)];
        stack.extend(KINDS.iter().map(|(_, class, f)| (*class, f(r))));
        for (class, n) in stack {
            if n == 0 {
                continue;
            }
            let (y0, y1) = (plot.y(base), plot.y(base + n as f64));
            plot.svg.rect(x, y1, w, y0 - y1, class, Some(&title));
            base += n as f64;
        }
    }
    marks(run, &mut plot);
    // Endpoint events: a tick each along the top, the pod and step on hover.
    for e in &run.events {
        let x = plot.x(e.at_s);
        let class = match e.step {
            Step::Ready => "same-node",
            Step::Terminating => "lo",
            Step::NotServing => "hi",
            Step::Removed => "zero",
        };
        plot.svg.rect(
            x - 1.5,
            plot.top_px - 8.0,
            3.0,
            8.0,
            class,
            Some(&format!("+{:.2}s {} {}", e.at_s, e.pod, e.step)),
        );
    }
    let mut legend = vec![("bar", "answered")];
    legend.extend(KINDS.iter().map(|(n, c, _)| (*c, *n)));
    let y = plot.top_px + plot.height + 28.0;
    svg::legend(&mut plot.svg, plot.left + 160.0, y, &legend);
    plot.finish()
}

fn latency(run: &DisruptionRun) -> String {
    let max = run.seconds.iter().filter_map(|r| r.p99_ms).fold(0.0, f64::max);
    let mut plot = over_seconds(run, max.max(1.0), "p99 connect latency per second");
    let points: Vec<(f64, f64)> = run
        .seconds
        .iter()
        .filter_map(|r| Some((plot.x(f64::from(r.second) + 0.5), plot.y(r.p99_ms?))))
        .collect();
    if !points.is_empty() {
        plot.svg
            .polyline(&points, svg::color(0), Some("p99 connect latency (ms)"));
    }
    for r in &run.seconds {
        if let Some(v) = r.p99_ms {
            let (x, y) = (plot.x(f64::from(r.second) + 0.5), plot.y(v));
            plot.svg
                .circle(x, y, 2.5, "pod", &format!("second {}: p99 {v:.1} ms", r.second));
        }
    }
    marks(run, &mut plot);
    plot.finish()
}

fn flows(run: &DisruptionRun) -> String {
    let max = run
        .seconds
        .iter()
        .map(|r| r.long_lived.broken.max(r.udp.lost))
        .max()
        .unwrap_or(0) as f64;
    let mut plot = over_seconds(run, max.max(1.0), "long-lived broken and UDP lost per second");
    let slot = plot.width / run.seconds.len().max(1) as f64;
    for r in &run.seconds {
        let x = plot.x(f64::from(r.second));
        let w = slot * 0.4;
        let ll = &r.long_lived;
        let u = &r.udp;
        for (x, n, apart, class, what) in [
            (
                x + slot * 0.1,
                ll.broken,
                ll.broken_expected,
                "pod",
                "long-lived broken",
            ),
            (x + slot * 0.5, u.lost, u.lost_expected, "addr", "UDP datagrams lost"),
        ] {
            if n == 0 {
                continue;
            }
            let title = format!("second {}: {n} {what}, {apart} counted apart", r.second);
            let (y0, ya, y1) = (plot.y(0.0), plot.y(apart as f64), plot.y(n as f64));
            plot.svg
                .rect(x, ya, w, y0 - ya, &format!("{class} excused"), Some(&title));
            plot.svg.rect(x, y1, w, ya - y1, class, Some(&title));
        }
    }
    marks(run, &mut plot);
    let y = plot.top_px + plot.height + 28.0;
    svg::legend(
        &mut plot.svg,
        plot.left + 160.0,
        y,
        &[("pod", "long-lived broken"), ("addr", "UDP lost")],
    );
    plot.finish()
}

/// The pods the chart shows: those whose endpoints changed first, then the others by name.
fn pod_rows(run: &DisruptionRun) -> (Vec<String>, usize) {
    let answered: BTreeSet<&str> = run
        .seconds
        .iter()
        .flat_map(|r| r.pods.keys().map(String::as_str))
        .collect();
    let mut rows: Vec<String> = Vec::new();
    for e in &run.events {
        if !rows.contains(&e.pod) {
            rows.push(e.pod.clone());
        }
    }
    let mut steady: Vec<&str> = answered
        .iter()
        .copied()
        .filter(|p| !rows.iter().any(|r| r == p))
        .collect();
    steady.sort_by(|a, b| alphanumeric_sort::compare_str(a, b));
    rows.extend(steady.into_iter().map(str::to_string));
    let all = rows.len();
    rows.truncate(MAX_POD_ROWS);
    (rows, all)
}

fn pods_note(run: &DisruptionRun) -> String {
    let (rows, all) = pod_rows(run);
    let mut text = String::from("Darker: more of that second's answers. Pods whose endpoint changed come first.");
    if all > rows.len() {
        let _ = write!(text, " {} more pods that answered are not drawn.", all - rows.len());
    }
    note(&text)
}

fn pods(run: &DisruptionRun) -> String {
    let (rows, _) = pod_rows(run);
    let label_w = rows.iter().map(|r| r.chars().count()).max().unwrap_or(4).clamp(4, 34) as f64 * 6.6 + 10.0;
    let n = run.seconds.len().max(1);
    let cell_w = (640.0 / n as f64).clamp(3.0, 24.0);
    let (row_h, top) = (14.0, 18.0);
    let w = label_w + cell_w * n as f64 + 10.0;
    let h = top + rows.len() as f64 * row_h + 6.0;
    let mut s = Svg::new(w, h, "pods answering per second");
    // Seconds along the top, every few.
    let every = (n / 12).max(1);
    for i in (0..n).step_by(every) {
        s.text(label_w + i as f64 * cell_w, 12.0, "start", "m", &format!("{i}s"));
    }
    for (i, pod) in rows.iter().enumerate() {
        let y = top + i as f64 * row_h;
        let _ = write!(
            s.s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            N(label_w - 6.0),
            N(y + 11.0),
            Esc(pod)
        );
        for r in &run.seconds {
            let Some(&count) = r.pods.get(pod) else { continue };
            let share = count as f64 / r.ok.max(1) as f64;
            let fair = 1.0 / r.pods.len().max(1) as f64;
            let heat = (share / fair / 2.0).clamp(0.15, 1.0);
            let _ = write!(
                s.s,
                "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" class=\"bar\" fill-opacity=\"{:.2}\"><title>{}</title></rect>",
                N(label_w + f64::from(r.second) * cell_w),
                N(y + 1.0),
                N((cell_w - 0.5).max(1.0)),
                N(row_h - 2.0),
                heat,
                Esc(&format!("{pod}, second {}: {count} of {} answers", r.second, r.ok))
            );
        }
    }
    // The action's second, outlined down the grid.
    if let Some(a) = run.action.started_s {
        let x = label_w + a * cell_w;
        s.line(x, top, x, h - 4.0, "fair");
    }
    s.finish()
}

/// Failed new connections per second of several runs, each shifted to its action's second.
fn aligned(runs: &[&DisruptionRun]) -> String {
    let shift = |r: &DisruptionRun| r.action.started_s.map_or(0.0, f64::floor);
    let lo = runs.iter().map(|r| -shift(r)).fold(0.0, f64::min);
    let hi = runs
        .iter()
        .map(|r| r.seconds.len() as f64 - shift(r))
        .fold(1.0, f64::max);
    let max = runs
        .iter()
        .flat_map(|r| r.seconds.iter().map(|s| s.failed.total))
        .max()
        .unwrap_or(0) as f64;
    let mut plot = Plot::new(
        760.0,
        260.0,
        52.0,
        30.0,
        max.max(1.0),
        svg::label,
        "failed per second, aligned",
    );
    plot.x_min = lo;
    plot.x_max = hi;
    plot.x_axis(|v| format!("{v:+.0}s"));
    let x0 = plot.x(0.0);
    plot.svg.line(x0, plot.top_px, x0, plot.top_px + plot.height, "fair");
    let mut legend = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let points: Vec<(f64, f64)> = r
            .seconds
            .iter()
            .map(|s| {
                (
                    plot.x(f64::from(s.second) - shift(r) + 0.5),
                    plot.y(s.failed.total as f64),
                )
            })
            .collect();
        plot.svg.polyline(
            &points,
            svg::color(i),
            Some(&format!("{}: {} failed", r.tag, r.totals.failed.total)),
        );
        legend.push((svg::color(i), r.tag.as_str()));
    }
    let y = plot.top_px + plot.height + 28.0;
    svg::legend(&mut plot.svg, plot.left + 120.0, y, &legend);
    plot.finish()
}
