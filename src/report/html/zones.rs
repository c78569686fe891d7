//! Zones runs: the source-zone × serving-zone heat maps (connections, bytes), source node ×
//! serving node, where each source's connections were served, the cost, the `--watch` cycles;
//! several runs' cross-zone share and cost side by side.

use std::collections::BTreeMap;

use super::svg::{self, Cell, HBar, Plot, Svg};
use super::{Kind, Page, facts, note, table, verdict_box};
use crate::record::{Billed, Locality, ZonesRun};
use crate::report::thousands;
use crate::report::zones::{bytes, usd};
use crate::stats::Verdict;
use crate::storm::Stop;

fn natural(a: &str, b: &str) -> std::cmp::Ordering {
    alphanumeric_sort::compare_str(a, b)
}

impl Kind for ZonesRun {
    const ID: &'static str = "zones";
    const TITLE: &'static str = "Zones runs";

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
        let mut rows = vec![
            ("target", format!("{} ({})", self.target.address, self.target.mode)),
            (
                "trafficDistribution",
                self.traffic_distribution.map_or("-".into(), |t| t.to_string()),
            ),
            ("internalTrafficPolicy", self.internal_traffic_policy.to_string()),
            ("sources", format!("{} ({})", self.sources.len(), self.params.sources)),
            ("conns", thousands(self.conns)),
            ("ok", thousands(self.ok)),
            ("failed", thousands(self.failed.total)),
            (
                "cross-zone",
                format!(
                    "{} ({:.1}%)",
                    thousands(self.cross_zone_conns),
                    100.0 * self.cross_zone_share
                ),
            ),
        ];
        if self.params.bytes.is_some() {
            rows.push((
                "cross-zone bytes",
                format!("{} of {}", bytes(self.cross_zone_bytes), bytes(self.bytes)),
            ));
        }
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
        p.html(&verdict_box(&lines, self.verdict == Verdict::Pass));
        p.panel(
            "Connections by source zone (rows) and serving zone",
            &zone_matrix(self, false),
            &note("Each cell: connections and the share of the row; outlined: the same zone."),
        );
        if self.params.bytes.is_some() {
            p.panel(
                "Bytes by source zone and serving zone",
                &zone_matrix(self, true),
                &note("Response bytes; each cell's share is of the row."),
            );
        }
        p.panel(
            "Connections by source node (rows) and serving node",
            &node_matrix(self),
            &note("Outlined: the source's own node."),
        );
        p.panel(
            "Where each source's connections were served",
            &locality(self),
            &note(
                "Hover a row for what its node's kube-proxy does and why (pkg/proxy/topology.go); \
                 red: connections that left where kube-proxy keeps them local.",
            ),
        );
        if !self.cost.is_empty() {
            let (chart, tbl) = cost(self);
            p.panel(
                &format!("Cost of the cross-zone bytes ({})", bytes(self.cross_zone_bytes)),
                &chart,
                &tbl,
            );
        }
        if self.cycles.len() > 1 {
            p.panel(
                "Local share per source zone, each --watch cycle",
                &cycles(self),
                &note("The share of each source zone's answered connections served in that zone."),
            );
        }
    }

    fn several(runs: &[&Self], p: &mut Page) {
        let first = runs[0];
        p.html(&table(
            &[
                "tag",
                "trafficDistribution",
                "conns",
                "ok",
                "cross-zone",
                "Δ vs first",
                "cross-zone bytes",
                "left",
                "verdict",
            ],
            runs.iter().map(|r| {
                [
                    r.tag.clone(),
                    r.traffic_distribution.map_or("-".into(), |t| t.to_string()),
                    r.conns.to_string(),
                    r.ok.to_string(),
                    format!("{:.1}%", 100.0 * r.cross_zone_share),
                    format!("{:+.1} pts", 100.0 * (r.cross_zone_share - first.cross_zone_share)),
                    r.cross_zone_bytes.to_string(),
                    r.sources.iter().map(|s| s.left).sum::<u64>().to_string(),
                    r.verdict.to_string(),
                ]
            }),
        ));
        let rows: Vec<HBar> = runs
            .iter()
            .map(|r| HBar {
                label: r.tag.clone(),
                value: 100.0 * r.cross_zone_share,
                class: if r.verdict == Verdict::Pass { "bar" } else { "hi" },
                text: format!(
                    "{:.1}% · {}",
                    100.0 * r.cross_zone_share,
                    r.traffic_distribution
                        .map_or("no trafficDistribution".into(), |t| t.to_string())
                ),
                title: format!(
                    "{}: {} of {} connections cross-zone",
                    r.tag,
                    thousands(r.cross_zone_conns),
                    thousands(r.ok)
                ),
                mark: Some(100.0 * first.cross_zone_share),
            })
            .collect();
        p.panel(
            "Cross-zone share per run",
            &svg::hbars("cross-zone share per run", &rows, Some("the first run")),
            "",
        );
        let priced: Vec<HBar> = runs
            .iter()
            .flat_map(|r| {
                r.cost.iter().filter_map(move |c| {
                    let m = c.monthly_usd?;
                    Some(HBar {
                        label: format!("{} · {}", r.tag, c.price.name),
                        value: m,
                        class: "bar",
                        text: format!("{} USD/month", usd(m)),
                        title: format!(
                            "{} at {} USD/{}: {} USD/month",
                            r.tag,
                            c.price.usd_per_unit,
                            c.price.unit,
                            usd(m)
                        ),
                        mark: None,
                    })
                })
            })
            .collect();
        if !priced.is_empty() {
            p.panel(
                "Cross-zone cost per month, per run and price",
                &svg::hbars("monthly cost", &priced, None),
                &note("Projected at each run's --rate for a month of 730 hours."),
            );
        }
    }
}

fn share(part: u64, of: u64) -> f64 {
    if of == 0 { 0.0 } else { part as f64 / of as f64 }
}

fn zone_matrix(r: &ZonesRun, in_bytes: bool) -> String {
    let mut to: Vec<&str> = r.matrix.iter().map(|c| c.to.as_str()).collect();
    to.sort_by(|a, b| natural(a, b));
    to.dedup();
    let mut from: Vec<&str> = r.matrix.iter().map(|c| c.from.as_str()).collect();
    from.dedup();
    let value = |c: &crate::record::ZoneCell| if in_bytes { c.bytes } else { c.conns };
    let cells: Vec<Vec<Cell>> = from
        .iter()
        .map(|f| {
            let row: Vec<_> = r.matrix.iter().filter(|c| c.from == *f).collect();
            let total: u64 = row.iter().map(|c| value(c)).sum();
            to.iter()
                .map(|t| {
                    let v = row.iter().find(|c| c.to == *t).map_or(0, |c| value(c));
                    let s = share(v, total);
                    let shown = if in_bytes { bytes(v) } else { thousands(v) };
                    Cell {
                        heat: s,
                        lines: vec![shown.clone(), format!("{:.1}%", 100.0 * s)],
                        title: format!(
                            "from {f} to {t}: {shown} ({:.1}% of {f}'s {})",
                            100.0 * s,
                            if in_bytes { "bytes" } else { "connections" }
                        ),
                        outline: f == t,
                    }
                })
                .collect()
        })
        .collect();
    let rows: Vec<String> = from.iter().map(|s| s.to_string()).collect();
    let cols: Vec<String> = to.iter().map(|s| s.to_string()).collect();
    svg::heatmap(
        if in_bytes {
            "bytes by zone"
        } else {
            "connections by zone"
        },
        &rows,
        &cols,
        &cells,
        "from \\ to",
    )
}

fn node_matrix(r: &ZonesRun) -> String {
    let mut nodes: Vec<&str> = r
        .sources
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| b.node.as_str()))
        .collect();
    nodes.sort_by(|a, b| natural(a, b));
    nodes.dedup();
    let rows: Vec<String> = r
        .sources
        .iter()
        .map(|s| {
            if s.zone.is_empty() {
                s.node.clone()
            } else {
                format!("{} ({})", s.node, s.zone)
            }
        })
        .collect();
    let cells: Vec<Vec<Cell>> = r
        .sources
        .iter()
        .map(|s| {
            let mut by: BTreeMap<&str, u64> = BTreeMap::new();
            for b in &s.backends {
                *by.entry(b.node.as_str()).or_default() += b.count;
            }
            nodes
                .iter()
                .map(|n| {
                    let c = by.get(n).copied().unwrap_or(0);
                    let sh = share(c, s.ok);
                    Cell {
                        heat: sh,
                        lines: vec![thousands(c), format!("{:.0}%", 100.0 * sh)],
                        title: format!(
                            "{} ({}) → {n}: {} connections ({:.1}%)",
                            s.name,
                            s.node,
                            thousands(c),
                            100.0 * sh
                        ),
                        outline: *n == s.node,
                    }
                })
                .collect()
        })
        .collect();
    let cols: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
    svg::heatmap("connections by node", &rows, &cols, &cells, "source node \\ to")
}

/// One stacked bar per source: same node, same zone on another node, another zone; what left.
fn locality(r: &ZonesRun) -> String {
    let labels: Vec<String> = r
        .sources
        .iter()
        .map(|s| {
            format!(
                "{} ({}, {})",
                s.name,
                s.node,
                if s.zone.is_empty() { "no zone" } else { &s.zone }
            )
        })
        .collect();
    let label_w = labels.iter().map(|l| l.chars().count()).max().unwrap_or(4).clamp(4, 40) as f64 * 6.6 + 12.0;
    let (bar_w, row_h) = (520.0, 22.0);
    let w = label_w + bar_w + 380.0;
    let h = 30.0 + row_h * r.sources.len() as f64;
    let mut svg = Svg::new(w, h, "where each source's connections were served");
    for (i, (s, label)) in r.sources.iter().zip(&labels).enumerate() {
        let y = 4.0 + row_h * i as f64;
        svg.text(label_w - 6.0, y + 15.0, "end", "", label);
        let ok = s.ok.max(1) as f64;
        let zone_only = s.same_zone.saturating_sub(s.same_node);
        let other = s.ok.saturating_sub(s.same_zone);
        let mut x = label_w;
        for (n, class, what) in [
            (s.same_node, "same-node", "on its node"),
            (zone_only, "same-zone", "in its zone, another node"),
            (other, "other-zone", "in another zone"),
        ] {
            let len = n as f64 / ok * bar_w;
            let title = format!(
                "{}: {} of {} connections served {what} ({:.1}%)",
                s.name,
                thousands(n),
                thousands(s.ok),
                100.0 * n as f64 / ok
            );
            svg.rect(x, y + 3.0, len, row_h - 6.0, class, Some(&title));
            x += len;
        }
        let keeps = match s.locality {
            Locality::Any => "anywhere",
            Locality::Zone => "in its zone",
            Locality::Node => "on its node",
        };
        let text = format!(
            "same zone {:.0}% · kube-proxy keeps it {keeps}{}",
            100.0 * share(s.same_zone, s.ok),
            if s.left > 0 {
                format!(" · {} left", thousands(s.left))
            } else {
                String::new()
            }
        );
        let class = if s.left > 0 { "left" } else { "m" };
        let _ = std::fmt::Write::write_fmt(
            &mut svg.s,
            format_args!(
                "<text x=\"{}\" y=\"{}\" class=\"{class}\"><title>{}</title>{}</text>",
                svg::N(label_w + bar_w + 6.0),
                svg::N(y + 15.0),
                super::esc(&format!(
                    "{}: {}; {} endpoint(s) expected",
                    s.node,
                    s.why,
                    s.expected.len()
                )),
                super::esc(&text)
            ),
        );
    }
    let y = h - 8.0;
    svg::legend(
        &mut svg,
        label_w,
        y,
        &[
            ("same-node", "on its node"),
            ("same-zone", "its zone, another node"),
            ("other-zone", "another zone"),
        ],
    );
    svg.finish()
}

fn cost(r: &ZonesRun) -> (String, String) {
    let monthly = r.cost.iter().all(|c| c.monthly_usd.is_some());
    let rows: Vec<HBar> = r
        .cost
        .iter()
        .map(|c| {
            let v = if monthly {
                c.monthly_usd.unwrap_or(0.0)
            } else {
                c.total_usd
            };
            HBar {
                label: c.price.name.clone(),
                value: v,
                class: "bar",
                text: format!("{} USD{}", usd(v), if monthly { "/month" } else { " this run" }),
                title: format!(
                    "{}: {} USD/{} ({}); this run {} USD",
                    c.price.name,
                    c.price.usd_per_unit,
                    c.price.unit,
                    match c.price.billed {
                        Billed::EachSide => "each side",
                        Billed::Sender => "sender",
                    },
                    usd(c.total_usd)
                ),
                mark: None,
            }
        })
        .collect();
    let month = r
        .params
        .rate
        .map_or("USD/month".to_string(), |rate| format!("USD/month at {rate} conn/s"));
    let tbl = table(
        &[
            "price",
            "per unit",
            "billed",
            "server side",
            "client side",
            "total USD",
            &month,
            "source",
        ],
        r.cost.iter().map(|c| {
            [
                c.price.name.clone(),
                format!("{} USD/{}", c.price.usd_per_unit, c.price.unit),
                match c.price.billed {
                    Billed::EachSide => "each side".into(),
                    Billed::Sender => "sender".into(),
                },
                usd(c.server_side_usd),
                usd(c.client_side_usd),
                usd(c.total_usd),
                c.monthly_usd.map_or("-".into(), usd),
                if c.price.as_of.is_empty() {
                    c.price.source.clone()
                } else {
                    format!("{} (read {})", c.price.source, c.price.as_of)
                },
            ]
        }),
    );
    (svg::hbars("cost", &rows, None), tbl)
}

fn cycles(r: &ZonesRun) -> String {
    let mut zones: Vec<&str> = r
        .cycles
        .iter()
        .flat_map(|c| c.local_share.iter().map(|(z, _)| z.as_str()))
        .collect();
    zones.sort_by(|a, b| natural(a, b));
    zones.dedup();
    let mut plot = Plot::new(
        760.0,
        250.0,
        48.0,
        50.0,
        1.0,
        |v| format!("{:.0}%", v * 100.0),
        "local share per cycle",
    );
    plot.x_min = 1.0;
    plot.x_max = r.cycles.len().max(2) as f64;
    plot.x_axis(|v| format!("{v:.0}"));
    for (i, z) in zones.iter().enumerate() {
        let pts: Vec<(f64, f64)> = r
            .cycles
            .iter()
            .filter_map(|c| {
                let s = c.local_share.iter().find(|(n, _)| n == z)?.1;
                Some((plot.x(f64::from(c.cycle)), plot.y(s)))
            })
            .collect();
        plot.svg.polyline(&pts, svg::color(i), Some(z));
    }
    let items: Vec<(&str, &str)> = zones.iter().enumerate().map(|(i, z)| (svg::color(i), *z)).collect();
    let y = plot.top_px + plot.height + 40.0;
    svg::legend(&mut plot.svg, plot.left, y, &items);
    plot.finish()
}
