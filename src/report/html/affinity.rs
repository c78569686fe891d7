//! Affinity runs: sessions per pod, the timeline of pod and address changes against the backend
//! pool's changes, loss per interval, pods per session; several runs' loss overlaid.

use std::fmt::Write;

use super::svg::{self, HBar, N, Plot};
use super::{Kind, Page, esc, facts, note, table, verdict_box};
use crate::affinity::{ChangeKind, Verdict};
use crate::record::AffinityRun;
use crate::report::{clock, elapsed, thousands};

impl Kind for AffinityRun {
    const ID: &'static str = "affinity";
    const TITLE: &'static str = "Affinity runs";

    fn tag(&self) -> &str {
        &self.tag
    }

    fn verdict(&self) -> Option<(&'static str, bool)> {
        Some(match self.verdict {
            Verdict::Holds => ("HOLDS", true),
            Verdict::Violated => ("VIOLATED", false),
        })
    }

    fn run(&self, p: &mut Page) {
        let t = &self.totals;
        let mut rows = vec![
            ("target", format!("{} ({})", self.target.address, self.target.mode)),
            ("protocol", self.target.protocol.to_string()),
            ("sessions", thousands(u64::from(self.sessions))),
            ("sent", thousands(t.sent)),
            ("answered", thousands(t.answered)),
            ("lost", thousands(t.lost)),
            ("lost %", format!("{:.3}", pct(t.lost, t.sent))),
            ("late", thousands(t.late)),
            ("pod changes", thousands(t.pod_changes)),
            ("address changes", thousands(t.address_changes)),
            ("during pool change", thousands(self.changes_during_pool_change)),
            ("elapsed", elapsed(self.duration_s)),
        ];
        rows.push((
            "started (UTC)",
            self.started_at.strftime("%Y-%m-%d %H:%M:%S").to_string(),
        ));
        p.html(&facts(&rows));
        p.html(&verdict_box(
            &crate::report::affinity::verdict_lines(self),
            self.verdict == Verdict::Holds,
        ));
        p.panel("Sessions per pod (by the pod that answered them last)", &pods(self), "");
        let mut text = format!(
            "Each dot: a session whose serving pod (orange) or reflective address (blue) changed; pale: during a \
             backend pool change (excused). Dashed purple: the pool changed. {} of {} change(s) shown",
            self.changes.len(),
            t.pod_changes + t.address_changes
        );
        if self.changes_dropped > 0 {
            let _ = write!(text, " (the record keeps the first {})", self.changes.len());
        }
        text.push('.');
        p.panel("Timeline: changes and the backend pool", &timeline(self), &note(&text));
        match loss(self) {
            Some(chart) => p.panel(
                "Loss per interval",
                &chart,
                &note(
                    "Messages that timed out in each interval, as a share of those answered or timed out in it; \
                     hover a bar for its counts.",
                ),
            ),
            None => p.html(&note(
                "Loss per interval: this record has no timeline (made before kubectl-svclb kept one).",
            )),
        }
        if let Some(chart) = pods_per_session(self) {
            p.panel(
                "Pods per session",
                &chart,
                &note("How many pods answered each session over the run: with affinity, one."),
            );
        }
    }

    fn several(runs: &[&Self], p: &mut Page) {
        p.html(&table(
            &[
                "tag",
                "target",
                "proto",
                "sessions",
                "sent",
                "answered",
                "lost",
                "late",
                "pod changes",
                "address changes",
                "during pool change",
                "verdict",
            ],
            runs.iter().map(|r| crate::report::compare::affinity_row(r)),
        ));
        let rows: Vec<HBar> = runs
            .iter()
            .map(|r| {
                let changes = r.totals.pod_changes + r.totals.address_changes;
                let violating = changes.saturating_sub(r.changes_during_pool_change);
                HBar {
                    label: r.tag.clone(),
                    value: changes as f64,
                    class: if r.verdict == Verdict::Holds { "bar" } else { "hi" },
                    text: format!(
                        "{} pod, {} address ({} during pool changes) · lost {:.3}%",
                        thousands(r.totals.pod_changes),
                        thousands(r.totals.address_changes),
                        thousands(r.changes_during_pool_change),
                        pct(r.totals.lost, r.totals.sent)
                    ),
                    title: format!(
                        "{}: {changes} change(s), {violating} while the pool was unchanged; {}",
                        r.tag, r.verdict
                    ),
                    mark: None,
                }
            })
            .collect();
        p.panel(
            "Changes per run",
            &svg::hbars("changes per run", &rows, None),
            &note("Red: the run's verdict is VIOLATED."),
        );
        if runs.iter().any(|r| r.timeline.len() > 1) {
            p.panel("Loss per interval, overlaid", &loss_overlay(runs), "");
        }
    }
}

fn pct(part: u64, of: u64) -> f64 {
    if of == 0 { 0.0 } else { 100.0 * part as f64 / of as f64 }
}

fn pods(r: &AffinityRun) -> String {
    let rows: Vec<HBar> = r
        .pods
        .iter()
        .map(|p| HBar {
            label: p.name.clone(),
            value: p.sessions as f64,
            class: if p.sessions == 0 { "lo" } else { "bar" },
            text: format!("{} session(s) · {} answered", p.sessions, thousands(p.answered)),
            title: format!(
                "{}: {} session(s) last answered here, {} message(s) answered",
                p.name,
                p.sessions,
                thousands(p.answered)
            ),
            mark: None,
        })
        .collect();
    svg::hbars("sessions per pod", &rows, None)
}

/// Milliseconds since the epoch of the run's start.
fn start_ms(r: &AffinityRun) -> u64 {
    r.started_at.as_millisecond().max(0) as u64
}

/// Seconds from the start to the last thing the record knows of.
fn span_s(r: &AffinityRun) -> f64 {
    let start = start_ms(r);
    let last = r
        .changes
        .iter()
        .map(|c| c.at_ms)
        .chain(r.pool_changes.iter().map(|p| p.at_ms))
        .chain(r.timeline.iter().map(|s| s.at_ms))
        .max()
        .unwrap_or(start);
    (r.duration_s).max(last.saturating_sub(start) as f64 / 1000.0).max(1.0)
}

/// The pool's changes as dashed lines across a plot whose x is seconds since the start.
fn pool_lines(plot: &mut Plot, r: &AffinityRun) {
    let start = start_ms(r);
    for pc in &r.pool_changes {
        let x = plot.x(pc.at_ms.saturating_sub(start) as f64 / 1000.0);
        let mut what: Vec<String> = pc.removed.iter().map(|n| format!("-{n}")).collect();
        what.extend(pc.added.iter().map(|n| format!("+{n}")));
        let _ = write!(
            plot.svg.s,
            "<g><title>{} backend pool changed: {}</title><line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" class=\"pool\"/></g>",
            clock(pc.at_ms),
            esc(&what.join(" ")),
            N(plot.top_px),
            N(plot.top_px + plot.height),
            x = N(x)
        );
    }
}

fn timeline(r: &AffinityRun) -> String {
    let start = start_ms(r);
    let sessions = r.sessions.max(1) as f64;
    let mut plot = Plot::new(
        820.0,
        300.0,
        56.0,
        48.0,
        sessions,
        |v| format!("{v:.0}"),
        "changes over time by session",
    );
    plot.x_max = span_s(r);
    plot.x_axis(|v| format!("{v:.0} s"));
    pool_lines(&mut plot, r);
    // Pod changes first (larger), address changes over them.
    for kind in [ChangeKind::Pod, ChangeKind::Address] {
        for c in r.changes.iter().filter(|c| c.kind == kind) {
            let x = plot.x(c.at_ms.saturating_sub(start) as f64 / 1000.0);
            let y = plot.y(f64::from(c.session) + 0.5);
            let (class, radius, what) = match kind {
                ChangeKind::Pod => ("pod", 4.0, "pod"),
                ChangeKind::Address => ("addr", 2.5, "address"),
            };
            let class = if c.during_pool_change {
                format!("{class} excused")
            } else {
                class.to_string()
            };
            let title = format!(
                "{} session {} {what} {} → {}{}",
                clock(c.at_ms),
                c.session,
                c.old,
                c.new,
                if c.during_pool_change {
                    " (during a pool change)"
                } else {
                    ""
                }
            );
            plot.svg.circle(x, y, radius, &class, &title);
        }
    }
    let y = plot.top_px + plot.height + 40.0;
    svg::legend(
        &mut plot.svg,
        plot.left,
        y,
        &[
            ("pod", "pod changed"),
            ("addr", "address changed"),
            ("pod excused", "during a pool change"),
        ],
    );
    let x = plot.left + plot.width;
    plot.svg.text(
        x,
        plot.top_px + plot.height + 40.0,
        "end",
        "m",
        "y: session · x: seconds since the start",
    );
    plot.finish()
}

/// One interval of the timeline: from, to (ms since the epoch) and the counters' differences.
struct Interval {
    from: u64,
    to: u64,
    sent: u64,
    answered: u64,
    lost: u64,
    late: u64,
}

fn intervals(r: &AffinityRun) -> Vec<Interval> {
    let mut prev_at = start_ms(r);
    let mut prev = crate::affinity::Totals::default();
    let mut out = Vec::new();
    for s in &r.timeline {
        let t = s.totals;
        out.push(Interval {
            from: prev_at,
            to: s.at_ms,
            sent: t.sent.saturating_sub(prev.sent),
            answered: t.answered.saturating_sub(prev.answered),
            lost: t.lost.saturating_sub(prev.lost),
            late: t.late.saturating_sub(prev.late),
        });
        prev_at = s.at_ms;
        prev = t;
    }
    out
}

fn loss_share(i: &Interval) -> f64 {
    pct(i.lost, i.answered + i.lost)
}

fn loss(r: &AffinityRun) -> Option<String> {
    if r.timeline.is_empty() {
        return None;
    }
    let start = start_ms(r);
    let iv = intervals(r);
    let max = iv.iter().map(loss_share).fold(1.0, f64::max);
    let mut plot = Plot::new(
        820.0,
        230.0,
        56.0,
        34.0,
        max,
        |v| format!("{v:.0}%"),
        "loss per interval",
    );
    plot.x_max = span_s(r);
    plot.x_axis(|v| format!("{v:.0} s"));
    for i in &iv {
        let (x1, x2) = (
            plot.x(i.from.saturating_sub(start) as f64 / 1000.0),
            plot.x(i.to.saturating_sub(start) as f64 / 1000.0),
        );
        let share = loss_share(i);
        let y = plot.y(share);
        let title = format!(
            "{} to {}: sent {}, answered {}, lost {} ({share:.2}%), late {}",
            clock(i.from),
            clock(i.to),
            i.sent,
            i.answered,
            i.lost,
            i.late
        );
        let h = plot.top_px + plot.height - y;
        // Every interval gets a hover target, a lossless one a thin sliver.
        plot.svg.rect(
            x1 + 0.5,
            y.min(plot.top_px + plot.height - 1.0),
            (x2 - x1 - 1.0).max(1.0),
            h.max(1.0),
            if i.lost > 0 { "hi" } else { "band" },
            Some(&title),
        );
    }
    pool_lines(&mut plot, r);
    Some(plot.finish())
}

fn pods_per_session(r: &AffinityRun) -> Option<String> {
    if r.session_detail.is_empty() {
        return None;
    }
    let mut by: std::collections::BTreeMap<usize, u64> = std::collections::BTreeMap::new();
    for s in &r.session_detail {
        *by.entry(s.pods.len()).or_default() += 1;
    }
    let rows: Vec<HBar> = by
        .iter()
        .map(|(pods, n)| HBar {
            label: format!("{pods} pod{}", if *pods == 1 { "" } else { "s" }),
            value: *n as f64,
            class: if *pods <= 1 { "bar" } else { "lo" },
            text: format!("{n} session(s)"),
            title: format!("{n} session(s) answered by {pods} pod(s)"),
            mark: None,
        })
        .collect();
    Some(svg::hbars("pods per session", &rows, None))
}

fn loss_overlay(runs: &[&AffinityRun]) -> String {
    let series: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|r| {
            let start = start_ms(r);
            intervals(r)
                .iter()
                .map(|i| (i.to.saturating_sub(start) as f64 / 1000.0, loss_share(i)))
                .collect()
        })
        .collect();
    let max = series.iter().flatten().map(|p| p.1).fold(1.0, f64::max);
    let span = runs.iter().map(|r| span_s(r)).fold(1.0, f64::max);
    let legend_rows = runs.len().min(12).div_ceil(4);
    let mut plot = Plot::new(
        820.0,
        240.0 + 16.0 * legend_rows as f64,
        56.0,
        34.0 + 16.0 * legend_rows as f64,
        max,
        |v| format!("{v:.0}%"),
        "loss per interval overlaid",
    );
    plot.x_max = span;
    plot.x_axis(|v| format!("{v:.0} s"));
    for (i, (r, s)) in runs.iter().zip(&series).enumerate() {
        let pts: Vec<(f64, f64)> = s.iter().map(|(x, y)| (plot.x(*x), plot.y(*y))).collect();
        if !pts.is_empty() {
            plot.svg.polyline(&pts, svg::color(i), Some(&r.tag));
        }
    }
    for (row, chunk) in runs.chunks(4).take(3).enumerate() {
        let items: Vec<(&str, &str)> = chunk
            .iter()
            .enumerate()
            .map(|(k, r)| (svg::color(row * 4 + k), r.tag.as_str()))
            .collect();
        let y = plot.top_px + plot.height + 34.0 + 16.0 * row as f64;
        svg::legend(&mut plot.svg, plot.left, y, &items);
    }
    plot.finish()
}
