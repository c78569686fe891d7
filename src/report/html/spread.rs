//! Spread runs (and mconnect files): connections per backend against the fair share and its
//! band, the frequency histogram (xcluster's `pods conns`), per node and per zone totals, latency,
//! sources, the verdict; several runs in shares of their fair share, overlaid and side by side.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::svg::{self, Cell, HBar, N, Plot, Svg};
use super::{Kind, Page, esc, facts, note, table, verdict_box};
use crate::record::{AnyRun, Loaded, SpreadRun, TargetInfo};
use crate::report::compare::{Scale, frequency_of};
use crate::report::{bin_counts, elapsed, frequency_bins, num, pval, thousands};
use crate::stats::{Stats, Verdict};
use crate::storm::{BackendCount, Stop};

/// A spread run as the page sees it: a whole record, or an mconnect file's counts.
pub struct Spread<'a> {
    pub tag: &'a str,
    pub target: Option<&'a TargetInfo>,
    pub proxy_mode: Option<&'a str>,
    /// The record, when the run is one of ours (latency, sources, failures by kind).
    pub record: Option<&'a SpreadRun>,
    pub conns: u64,
    pub ok: u64,
    pub failed: u64,
    pub backends: &'a [BackendCount],
    pub stats: &'a Stats,
}

impl<'a> Spread<'a> {
    pub fn of(r: &'a AnyRun) -> Option<Self> {
        match r {
            AnyRun::Spread(s) => Some(Self::record(s)),
            AnyRun::Mconnect(l) => Some(Self::mconnect(l)),
            _ => None,
        }
    }

    fn record(r: &'a SpreadRun) -> Self {
        Self {
            tag: &r.tag,
            target: Some(&r.target),
            proxy_mode: r.environment.proxy_mode.as_deref(),
            record: Some(r),
            conns: r.conns,
            ok: r.ok,
            failed: r.failed.total,
            backends: &r.backends,
            stats: &r.stats,
        }
    }

    fn mconnect(l: &'a Loaded) -> Self {
        Self {
            tag: &l.tag,
            target: l.target.as_ref(),
            proxy_mode: l.proxy_mode.as_deref(),
            record: None,
            conns: l.conns,
            ok: l.ok,
            failed: l.failed,
            backends: &l.backends,
            stats: &l.stats,
        }
    }

    /// Connections per backend if the spread were even: answered / backends.
    fn fair(&self) -> f64 {
        self.ok as f64 / self.backends.len().max(1) as f64
    }

    /// `lab nftables`, `address`, `mconnect`.
    fn mode(&self) -> String {
        match (self.target, self.proxy_mode) {
            (None, _) => "mconnect".into(),
            (Some(t), Some(p)) => format!("{} {p}", t.mode),
            (Some(t), None) => t.mode.clone(),
        }
    }

    /// The class of a backend's bar: outside the band above or below, none, or within.
    fn class(&self, count: u64) -> &'static str {
        let c = count as f64;
        match self.stats.band {
            _ if count == 0 => "zero",
            Some(b) if c > b.hi => "hi",
            Some(b) if c < b.lo => "lo",
            _ => "bar",
        }
    }
}

/// `node1` before `node10`.
fn natural(a: &str, b: &str) -> std::cmp::Ordering {
    alphanumeric_sort::compare_str(a, b)
}

impl Kind for Spread<'_> {
    const ID: &'static str = "spread";
    const TITLE: &'static str = "Spread runs";

    fn tag(&self) -> &str {
        self.tag
    }

    fn verdict(&self) -> Option<(&'static str, bool)> {
        Some(match self.stats.verdict {
            Verdict::Pass => ("PASS", true),
            Verdict::Fail => ("FAIL", false),
        })
    }

    fn run(&self, p: &mut Page) {
        summary(self, p);
        let prefix = common_prefix(self.backends);
        let mut notes = band_note(self);
        if !prefix.is_empty() {
            notes.push_str(&note(&format!(
                "Names in the chart leave out what every backend's name starts with: {prefix}"
            )));
        }
        p.panel("Connections per backend, most first", &per_backend(self), &notes);
        let (chart, notes) = histogram(self);
        p.panel("Frequency: backends per connection count (pods conns)", &chart, &notes);
        for (what, key) in [("node", 0), ("zone", 1)] {
            if let Some(chart) = totals(self, what, key) {
                p.panel(
                    &format!("Per {what}"),
                    &chart,
                    &note(&format!(
                        "The tick is the {what}'s fair share: its backends × the fair share per backend ({:.1}).",
                        self.fair()
                    )),
                );
            }
        }
        if let Some(r) = self.record
            && !r.sources.is_empty()
        {
            p.panel(
                "Where each source's connections went (by backend node)",
                &sources(r),
                &note("Each cell: connections, and the share of the source's answered connections."),
            );
        }
        stats(self, p);
    }

    fn several(runs: &[&Self], p: &mut Page) {
        p.html(&table(
            &[
                "tag", "target", "mode", "proto", "conns", "ok", "failed", "backends", "min", "max", "CV", "p-value",
                "verdict",
            ],
            runs.iter().map(|r| {
                [
                    r.tag.to_string(),
                    r.target.map_or("-".into(), |t| t.address.clone()),
                    r.mode(),
                    r.target.map_or("-".into(), |t| t.protocol.to_string()),
                    r.conns.to_string(),
                    r.ok.to_string(),
                    r.failed.to_string(),
                    r.stats.backends.to_string(),
                    r.stats.min.to_string(),
                    r.stats.max.to_string(),
                    num(Some(r.stats.cv), 4),
                    pval(r.stats.p_value),
                    r.stats.verdict.to_string(),
                ]
            }),
        ));
        p.panel(
            "Each run's backends in shares of its fair share",
            &ranges(runs),
            &note(
                "Whiskers: fewest to most connections; box: 10th to 90th percentile of the backends; \
                 tick: median; green: the run's band. 1.00 is exactly the fair share (answered / backends).",
            ),
        );
        p.panel(
            "Backends sorted by connections, overlaid (in shares of the fair share)",
            &overlay(runs),
            &note("A perfectly even balancer is a flat line at 1.00; hover a line for its run."),
        );
        let (chart, unit) = side_by_side(runs);
        p.panel(
            "Frequency side by side (as compare's table)",
            &chart,
            &note(&format!(
                "One histogram per run over the same ranges of {unit} (compare's rows) and the same scale; \
                 red: the run failed. Hover a run for its counts."
            )),
        );
    }
}

fn summary(r: &Spread, p: &mut Page) {
    let mut rows: Vec<(&str, String)> = vec![
        (
            "target",
            r.target.map_or("- (mconnect file)".into(), |t| t.address.clone()),
        ),
        ("mode", r.mode()),
        ("protocol", r.target.map_or("-".into(), |t| t.protocol.to_string())),
        ("conns", thousands(r.conns)),
        ("ok", thousands(r.ok)),
        ("failed", thousands(r.failed)),
        ("backends", r.backends.len().to_string()),
    ];
    if let Some(rec) = r.record {
        let rate = if rec.duration_s > 0.0 {
            rec.conns as f64 / rec.duration_s
        } else {
            0.0
        };
        rows.extend([("elapsed", elapsed(rec.duration_s)), ("conn/s", format!("{rate:.0}"))]);
        // Latency percentiles: connect time (TCP) or round trip (UDP).
        let l = &rec.latency_ms;
        let keys = if rec.target.protocol == crate::storm::Proto::Udp {
            ["RTT p50", "p90", "p99", "max"]
        } else {
            ["connect p50", "p90", "p99", "max"]
        };
        if rec.ok > 0 {
            for (k, v) in keys.into_iter().zip([l.p50, l.p90, l.p99, l.max]) {
                rows.push((k, format!("{v:.3} ms")));
            }
        }
        rows.push((
            "started (UTC)",
            rec.started_at.strftime("%Y-%m-%d %H:%M:%S").to_string(),
        ));
        if let Some(src) = &rec.target.source {
            rows.push(("from", src.clone()));
        }
    }
    p.html(&facts(&rows));
    if let Some(rec) = r.record
        && rec.failed.total > 0
    {
        let kinds: Vec<String> = rec
            .failed
            .kinds
            .kinds()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        p.html(&note(&format!("failed: {}", kinds.join(", "))));
    }
}

fn band_note(r: &Spread) -> String {
    let fair = r.fair();
    let text = match r.stats.band {
        Some(b) if b.margin_meaningful => format!(
            "Dashed line: the fair share {fair:.1} (answered / backends); green: ±{}% of it [{:.1}, {:.1}].",
            b.margin_pct, b.lo, b.hi
        ),
        Some(b) => format!(
            "Dashed line: the fair share {fair:.1}; green: the fair-random bound [{:.0}, {:.0}] (at {:.1} connections per \
             backend ±{}% is not meaningful: a fair random balancer strays beyond it by chance).",
            b.lo, b.hi, r.stats.mean, b.margin_pct
        ),
        None => format!("Dashed line: the fair share {fair:.1}."),
    };
    note(&text)
}

/// Vertical bars, most connections first, with the fair share and the band.
fn per_backend(r: &Spread) -> String {
    let prefix = common_prefix(r.backends);
    let mut sorted: Vec<&BackendCount> = r.backends.iter().collect();
    sorted.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| natural(&a.name, &b.name)));
    let n = sorted.len().max(1);
    let step = (1100.0 / n as f64).clamp(1.2, 28.0);
    let named = n <= 40;
    let name_len = sorted.iter().map(|b| b.name.chars().count()).max().unwrap_or(0).min(24) as f64;
    // Names (or ranks) under the bars, then the legend.
    let bottom = if named { name_len * 6.2 + 14.0 } else { 30.0 } + 22.0;
    let left = 56.0;
    let w = left + step * n as f64 + 20.0;
    let band = r.stats.band;
    let y_max = r.stats.max.max(1) as f64;
    let y_max = band.map_or(y_max, |b| y_max.max(b.hi));
    let mut plot = Plot::new(
        w.max(320.0),
        260.0 + bottom - 30.0,
        left,
        bottom,
        y_max,
        svg::label,
        "connections per backend",
    );
    let x0 = plot.left;
    let right = x0 + step * n as f64;
    if let Some(b) = band {
        let (y1, y2) = (plot.y(b.hi), plot.y(b.lo));
        plot.svg.rect(x0, y1, right - x0, y2 - y1, "band", None);
    }
    let fair = r.fair();
    let bar_w = if step > 3.0 { step - 1.0 } else { step };
    let base = plot.top_px + plot.height;
    // Bars of one colour in one group, drawn upwards from the axis (a flipped group: no y per
    // bar); the backends without a connection as marks under the axis.
    let mut open: Option<&str> = None;
    for (i, b) in sorted.iter().enumerate() {
        let x = x0 + step * i as f64;
        let class = r.class(b.count);
        if open != Some(class) {
            if open.is_some() {
                plot.svg.s.push_str("</g>");
            }
            // Each bar a vertical stroke of the bar's width: the shortest element with a hover text.
            if b.count == 0 {
                let _ = write!(plot.svg.s, "<g class=\"s{class}\" stroke-width=\"{}\">", N(bar_w));
            } else {
                let _ = write!(
                    plot.svg.s,
                    "<g class=\"s{class}\" stroke-width=\"{}\" transform=\"matrix(1 0 0 -1 0 {})\">",
                    N(bar_w),
                    N(base)
                );
            }
            open = Some(class);
        }
        // Name, node and count: the zone is the per-zone panel's, the share the fair line's.
        let name = &b.name[prefix.len()..];
        let title = if b.node.is_empty() {
            format!("{name}: {}", thousands(b.count))
        } else {
            format!("{name} {}: {}", b.node, thousands(b.count))
        };
        let cx = x + bar_w / 2.0;
        let d = if b.count == 0 {
            format!("M{} {}v4", N(cx), N(base + 1.0))
        } else {
            format!("M{} 0v{}", N(cx), N(base - plot.y(b.count as f64)))
        };
        let _ = write!(plot.svg.s, "<path d=\"{d}\"><title>{}</title></path>", esc(&title));
    }
    if open.is_some() {
        plot.svg.s.push_str("</g>");
    }
    if named {
        for (i, b) in sorted.iter().enumerate() {
            let x = x0 + step * i as f64;
            plot.svg
                .text_up(x + bar_w / 2.0 + 4.0, base + 8.0, &b.name[prefix.len()..]);
        }
    }
    let yf = plot.y(fair);
    plot.svg.line(x0, yf, right, yf, "fair");
    if !named {
        // Ranks under the axis: 1, then round ones.
        let (_, every) = svg::nice(n as f64, 10);
        let mut k = 1.0;
        while k <= n as f64 {
            let x = x0 + step * (k - 0.5);
            plot.svg.text(
                x,
                plot.top_px + plot.height + 16.0,
                "middle",
                "m",
                &format!("{}", k as u64),
            );
            k = if k == 1.0 { every } else { k + every };
        }
        plot.svg.text(
            right,
            plot.top_px + plot.height + 28.0,
            "end",
            "m",
            "backends by rank (hover a bar for its name)",
        );
    }
    let mut items = vec![("bar", "within the band"), ("hi", "above"), ("lo", "below")];
    if sorted.iter().any(|b| b.count == 0) {
        items.push(("zero", "no connection (mark under the axis)"));
    }
    let y = plot.top_px + plot.height + bottom - 6.0;
    svg::legend(&mut plot.svg, x0, y, &items);
    plot.finish()
}

/// The start every backend's name shares, up to and including its last `-` (a Deployment's pods:
/// `svclb-tserver-6f7c9d8b5-`), when it is long enough to be worth leaving out of the chart.
fn common_prefix(backends: &[BackendCount]) -> &str {
    let Some(first) = backends.first() else {
        return "";
    };
    let mut len = first.name.len();
    for b in &backends[1..] {
        len = first
            .name
            .bytes()
            .zip(b.name.bytes())
            .take(len)
            .take_while(|(x, y)| x == y)
            .count();
    }
    while !first.name.is_char_boundary(len) {
        len -= 1;
    }
    let shared = &first.name[..len];
    match shared.rfind('-') {
        // Every name keeps something after the prefix.
        Some(i) if i + 1 >= 8 && backends.len() > 1 && backends.iter().all(|b| b.name.len() > i + 1) => &shared[..=i],
        _ => "",
    }
}

/// Backends per connection count (or range of counts), the band's bins coloured.
fn histogram(r: &Spread) -> (String, String) {
    let counts: Vec<u64> = r.backends.iter().map(|b| b.count).collect();
    let bins = frequency_bins(&counts, 16, 1);
    let n = bin_counts(&bins, counts.iter().copied());
    let ranged = bins.iter().any(|(lo, hi)| lo != hi);
    let labels: Vec<String> = bins
        .iter()
        .map(|(lo, hi)| if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") })
        .collect();
    let k = bins.len().max(1);
    let step = (900.0 / k as f64).clamp(14.0, 48.0);
    // Labels upright, on every bin or every few where they would touch.
    let label_len = labels.iter().map(|l| l.len()).max().unwrap_or(1) as f64 * 6.8 + 6.0;
    let every = (label_len / (step - 2.0)).ceil().max(1.0) as usize;
    let bottom = 34.0;
    let left = 48.0;
    let most = n.iter().copied().max().unwrap_or(0).max(1);
    let mut plot = Plot::new(
        (left + step * k as f64 + 20.0).max(320.0),
        200.0 + bottom,
        left,
        bottom,
        most as f64,
        svg::label,
        "backends per connection count",
    );
    for (i, ((lo, hi), pods)) in bins.iter().zip(&n).enumerate() {
        let x = plot.left + step * i as f64;
        let mid = (lo + hi) / 2;
        let class = r.class(if *hi == 0 { 0 } else { mid });
        let y = plot.y(*pods as f64);
        let title = format!("{}: {pods} backend(s)", labels[i]);
        plot.svg.rect(
            x + 1.0,
            y,
            step - 2.0,
            plot.top_px + plot.height - y,
            class,
            Some(&title),
        );
        if *pods > 0 {
            plot.svg.text(x + step / 2.0, y - 3.0, "middle", "m", &pods.to_string());
        }
        if i % every == 0 {
            plot.svg.text(
                x + step / 2.0,
                plot.top_px + plot.height + 14.0,
                "middle",
                "m",
                &labels[i],
            );
        }
    }
    let y = plot.top_px + plot.height + bottom - 6.0;
    plot.svg
        .text(plot.left, y, "start", "m", "connections → (bars: backends)");
    let text = if ranged {
        format!(
            "Counts in ranges of {} connections; a bar's colour: where its middle falls against the band.",
            bins.last().map_or(1, |(lo, hi)| hi - lo + 1)
        )
    } else {
        "One bar per connection count; colour: against the band.".to_string()
    };
    (plot.finish(), note(&text))
}

/// Node or zone totals (`key` 0: node, 1: zone), with each one's fair share as a tick; `None`
/// when the record does not know them.
fn totals(r: &Spread, what: &str, key: usize) -> Option<String> {
    let of = |b: &BackendCount| if key == 0 { b.node.clone() } else { b.zone.clone() };
    if r.backends.iter().all(|b| of(b).is_empty()) {
        return None;
    }
    let mut groups: BTreeMap<String, (u64, usize)> = BTreeMap::new();
    for b in r.backends {
        let g = groups.entry(of(b)).or_default();
        g.0 += b.count;
        g.1 += 1;
    }
    let mut groups: Vec<(String, (u64, usize))> = groups.into_iter().collect();
    groups.sort_by(|a, b| natural(&a.0, &b.0));
    let fair = r.fair();
    let ok = r.ok.max(1) as f64;
    let rows: Vec<HBar> = groups
        .iter()
        .map(|(name, (count, n))| {
            let name = if name.is_empty() {
                format!("(no {what})")
            } else {
                name.clone()
            };
            let its_fair = fair * *n as f64;
            HBar {
                title: String::new(),
                text: format!(
                    "{} ({:.1}%) · {n} backend{} · {:.2}× fair",
                    thousands(*count),
                    100.0 * *count as f64 / ok,
                    if *n == 1 { "" } else { "s" },
                    if its_fair > 0.0 { *count as f64 / its_fair } else { 0.0 },
                ),
                label: name,
                value: *count as f64,
                class: "bar",
                mark: Some(its_fair),
            }
        })
        .collect();
    Some(svg::hbars(
        &format!("connections per {what}"),
        &rows,
        Some(&format!("the {what}'s fair share")),
    ))
}

/// Sources × backend nodes.
fn sources(r: &SpreadRun) -> String {
    let mut nodes: Vec<&str> = r.backends.iter().map(|b| b.node.as_str()).collect();
    nodes.sort_by(|a, b| natural(a, b));
    nodes.dedup();
    let rows: Vec<String> = r
        .sources
        .iter()
        .map(|s| {
            if s.node.is_empty() {
                s.name.clone()
            } else {
                format!("{} ({})", s.name, s.node)
            }
        })
        .collect();
    let cells: Vec<Vec<Cell>> = r
        .sources
        .iter()
        .map(|s| {
            let ok = s.ok.max(1) as f64;
            nodes
                .iter()
                .map(|n| {
                    let c: u64 = s.backends.iter().filter(|b| b.node == *n).map(|b| b.count).sum();
                    let share = c as f64 / ok;
                    Cell {
                        heat: share * nodes.len() as f64 / 2.0,
                        lines: vec![thousands(c), format!("{:.1}%", 100.0 * share)],
                        title: format!("{} → {n}: {} connections ({:.1}%)", s.name, thousands(c), 100.0 * share),
                        outline: *n == s.node && !n.is_empty(),
                    }
                })
                .collect()
        })
        .collect();
    let cols: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
    svg::heatmap("sources by backend node", &rows, &cols, &cells, "source \\ node")
}

fn stats(r: &Spread, p: &mut Page) {
    let s = r.stats;
    p.html(&table(
        &[
            "backends", "min", "median", "max", "mean", "CV", "Jain", "chi2", "df", "p-value", "verdict",
        ],
        [[
            s.backends.to_string(),
            s.min.to_string(),
            num(Some(s.median), 1),
            s.max.to_string(),
            num(Some(s.mean), 1),
            num(Some(s.cv), 4),
            num(Some(s.jain), 4),
            num(Some(s.chi2), 2),
            s.df.to_string(),
            pval(s.p_value),
            s.verdict.to_string(),
        ]],
    ));
    let lines = match r.record {
        Some(rec) if rec.stopped == Some(Stop::Interrupted) => vec![format!(
            "INTERRUPTED: after {} of {} connections; the record is partial (on what was measured: {})",
            rec.conns, rec.params.conns, s.verdict
        )],
        _ => crate::report::spread::verdict_lines(s),
    };
    p.html(&verdict_box(&lines, s.verdict == Verdict::Pass));
}

/// Share of the fair share of each backend of a run, sorted ascending.
fn shares(r: &Spread) -> Vec<f64> {
    let fair = r.fair();
    let mut v: Vec<f64> = r
        .backends
        .iter()
        .map(|b| if fair > 0.0 { b.count as f64 / fair } else { 0.0 })
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = (q * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One row per run: min..max whiskers, p10..p90 box, median, band.
fn ranges(runs: &[&Spread]) -> String {
    let all: Vec<Vec<f64>> = runs.iter().map(|r| shares(r)).collect();
    let max = all
        .iter()
        .filter_map(|v| v.last().copied())
        .chain(runs.iter().filter_map(|r| {
            let f = r.fair();
            r.stats.band.map(|b| if f > 0.0 { b.hi / f } else { 0.0 })
        }))
        .fold(2.0f64, f64::max);
    let label_w = runs
        .iter()
        .map(|r| r.tag.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 30) as f64
        * 6.6
        + 12.0;
    let (w, row_h) = (label_w + 700.0, 20.0);
    let h = 30.0 + row_h * runs.len() as f64;
    let mut svg = Svg::new(w, h, "runs in shares of their fair share");
    let (top, _) = svg::nice(max, 8);
    let x = |v: f64| label_w + v.clamp(0.0, top) / top * 680.0;
    let (_, step) = svg::nice(top, 8);
    let mut v = 0.0;
    while v <= top + 1e-9 {
        svg.line(
            x(v),
            4.0,
            x(v),
            h - 22.0,
            if (v - 1.0).abs() < 1e-9 { "fair" } else { "grid" },
        );
        svg.text(x(v), h - 8.0, "middle", "m", &format!("{v:.2}"));
        v += step;
    }
    for (i, (r, s)) in runs.iter().zip(&all).enumerate() {
        let y = 6.0 + row_h * i as f64;
        let mid = y + row_h / 2.0 - 2.0;
        svg.text(label_w - 6.0, mid + 4.0, "end", "", r.tag);
        let fair = r.fair();
        if let (Some(b), true) = (r.stats.band, fair > 0.0) {
            svg.rect(
                x(b.lo / fair),
                y + 1.0,
                x(b.hi / fair) - x(b.lo / fair),
                row_h - 6.0,
                "band",
                None,
            );
        }
        if s.is_empty() {
            continue;
        }
        let (mn, p10, med, p90, mx) = (
            s[0],
            quantile(s, 0.1),
            quantile(s, 0.5),
            quantile(s, 0.9),
            s[s.len() - 1],
        );
        let title = format!(
            "{}: min {mn:.3}, p10 {p10:.3}, median {med:.3}, p90 {p90:.3}, max {mx:.3} of the fair share {fair:.1}; {}",
            r.tag, r.stats.verdict
        );
        let _ = write!(
            svg.s,
            "<path class=\"axis\" d=\"M{a} {m}H{b}M{a} {t}v8M{b} {t}v8\"/>",
            a = N(x(mn)),
            b = N(x(mx)),
            m = N(mid),
            t = N(mid - 4.0)
        );
        let class = if r.stats.verdict == Verdict::Pass { "bar" } else { "hi" };
        svg.rect(x(p10), mid - 5.0, (x(p90) - x(p10)).max(1.5), 10.0, class, Some(&title));
        svg.line(x(med), mid - 7.0, x(med), mid + 7.0, "diag");
    }
    svg.finish()
}

/// Every run's backends sorted, in shares of its fair share, over the rank as a share of its
/// backends (runs of different sizes overlay).
fn overlay(runs: &[&Spread]) -> String {
    let all: Vec<Vec<f64>> = runs.iter().map(|r| shares(r)).collect();
    let max = all.iter().filter_map(|v| v.last().copied()).fold(1.5f64, f64::max);
    let legend_rows = if runs.len() <= 12 { runs.len().div_ceil(4) } else { 0 };
    let mut plot = Plot::new(
        780.0,
        300.0 + 16.0 * legend_rows as f64,
        48.0,
        34.0 + 16.0 * legend_rows as f64,
        max,
        |v| format!("{v:.2}"),
        "sorted backends overlaid",
    );
    plot.x_axis(|v| format!("{:.0}%", v * 100.0));
    let y1 = plot.y(1.0);
    plot.svg.line(plot.left, y1, plot.left + plot.width, y1, "fair");
    for (i, (r, s)) in runs.iter().zip(&all).enumerate().rev() {
        let n = s.len().max(2) - 1;
        // At most 60 points a line: every k-th backend, the first and the last always.
        let every = s.len().div_ceil(60).max(1);
        let pts: Vec<(f64, f64)> = s
            .iter()
            .enumerate()
            .filter(|(k, _)| k % every == 0 || *k + 1 == s.len())
            .map(|(k, v)| (plot.x(k as f64 / n as f64), plot.y(*v)))
            .collect();
        plot.svg.polyline(&pts, svg::color(i), Some(r.tag));
    }
    if legend_rows > 0 {
        for (row, chunk) in runs.chunks(4).enumerate() {
            let items: Vec<(&str, &str)> = chunk
                .iter()
                .enumerate()
                .map(|(k, r)| (svg::color(row * 4 + k), r.tag))
                .collect();
            let y = plot.top_px + plot.height + 34.0 + 16.0 * row as f64;
            svg::legend(&mut plot.svg, plot.left, y, &items);
        }
    }
    plot.finish()
}

/// compare's frequency table as small multiples: one histogram per run over the same rows (counts,
/// or shares of the fair share when the runs differ in size) and the same scale.
fn side_by_side(runs: &[&Spread]) -> (String, &'static str) {
    let pairs: Vec<(u64, &[BackendCount])> = runs.iter().map(|r| (r.ok, r.backends)).collect();
    let f = frequency_of(&pairs, false);
    let most = f.cells.iter().flatten().copied().max().unwrap_or(0).max(1) as f64;
    let labels: Vec<String> = f.rows.iter().map(|r| f.label(*r)).collect();
    let bins = f.rows.len().max(1);
    let (cw, ch, per_row) = (200.0, 118.0, 5usize);
    let bar = 180.0 / bins as f64;
    let lines = runs.len().div_ceil(per_row);
    let mut svg = Svg::new(
        cw * per_row.min(runs.len()) as f64 + 10.0,
        ch * lines as f64 + 4.0,
        "frequency side by side",
    );
    for (i, r) in runs.iter().enumerate() {
        let (x0, y0) = (10.0 + cw * (i % per_row) as f64, 4.0 + ch * (i / per_row) as f64);
        let base = y0 + 80.0;
        let counts: Vec<String> = labels
            .iter()
            .zip(&f.cells)
            .filter(|(_, c)| c[i] > 0)
            .map(|(l, c)| format!("{l}: {}", c[i]))
            .collect();
        let _ = write!(
            svg.s,
            "<g><title>{} ({}) · {}: {}</title><rect x=\"{}\" y=\"{}\" width=\"180\" height=\"80\" class=\"band\"/>",
            esc(r.tag),
            r.stats.verdict,
            f.unit(),
            esc(&counts.join(", ")),
            N(x0),
            N(y0)
        );
        let class = if r.stats.verdict == Verdict::Pass { "bar" } else { "hi" };
        let _ = write!(
            svg.s,
            "<g class=\"{class}\" transform=\"matrix(1 0 0 -1 0 {})\">",
            N(base)
        );
        for (k, c) in f.cells.iter().enumerate() {
            if c[i] > 0 {
                let _ = write!(
                    svg.s,
                    "<rect x=\"{}\" width=\"{}\" height=\"{}\"/>",
                    N(x0 + bar * k as f64),
                    N((bar - 1.0).max(0.5)),
                    N(c[i] as f64 / most * 76.0)
                );
            }
        }
        svg.s.push_str("</g></g>");
        svg.text(x0, base + 12.0, "start", "m", &labels[0]);
        svg.text(
            x0 + 180.0,
            base + 12.0,
            "end",
            "m",
            labels.last().map_or("", String::as_str),
        );
        svg.text(x0, base + 26.0, "start", "", r.tag);
    }
    let unit = match f.scale {
        Scale::Conns => "connections per backend",
        Scale::FairShare => "shares of each run's fair share (the runs differ in size)",
    };
    (svg.finish(), unit)
}
