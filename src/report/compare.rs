//! `compare`: one summary row per run and the side-by-side frequency table, rows aligned by
//! connection count (xcluster's `table` pastes ragged columns; these line up).

use std::collections::BTreeSet;
use std::fmt::Write;

use serde::Serialize;
use tabled::builder::Builder;

use super::{CompareFormat, frequency, heading, num, pval, styled};
use crate::record::{AffinityRun, Loaded, ZonesRun};
use crate::stats::Stats;
use crate::storm::BackendCount;

#[derive(Serialize)]
struct Doc<'a> {
    runs: Vec<RunDoc<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    affinity_runs: Vec<AffinityDoc<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    zones_runs: Vec<ZonesDoc<'a>>,
}

/// A zones run in a comparison, and how it differs from the first zones run compared.
#[derive(Serialize)]
struct ZonesDoc<'a> {
    tag: &'a str,
    target: &'a str,
    traffic_distribution: Option<crate::service::TrafficDistribution>,
    conns: u64,
    ok: u64,
    cross_zone_share: f64,
    cross_zone_bytes: u64,
    left: u64,
    /// Per price: the projected monthly cost (when the run had --bytes and --rate).
    monthly_usd: Vec<(&'a str, Option<f64>)>,
    verdict: crate::stats::Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<ZonesDelta>,
}

/// This run minus the first zones run.
#[derive(Serialize)]
struct ZonesDelta {
    vs: String,
    cross_zone_share: f64,
    cross_zone_bytes: i128,
    /// Per price both runs have, with both projections.
    monthly_usd: Vec<(String, f64)>,
}

fn zones_left(r: &ZonesRun) -> u64 {
    r.sources.iter().map(|s| s.left).sum()
}

fn zones_delta(first: &ZonesRun, r: &ZonesRun) -> ZonesDelta {
    ZonesDelta {
        vs: first.tag.clone(),
        cross_zone_share: r.cross_zone_share - first.cross_zone_share,
        cross_zone_bytes: i128::from(r.cross_zone_bytes) - i128::from(first.cross_zone_bytes),
        monthly_usd: r
            .cost
            .iter()
            .filter_map(|c| {
                let before = first.cost.iter().find(|f| f.price.name == c.price.name)?.monthly_usd?;
                Some((c.price.name.clone(), c.monthly_usd? - before))
            })
            .collect(),
    }
}

fn zones_docs(zones: &[ZonesRun]) -> Vec<ZonesDoc<'_>> {
    zones
        .iter()
        .enumerate()
        .map(|(i, r)| ZonesDoc {
            tag: &r.tag,
            target: &r.target.address,
            traffic_distribution: r.traffic_distribution,
            conns: r.conns,
            ok: r.ok,
            cross_zone_share: r.cross_zone_share,
            cross_zone_bytes: r.cross_zone_bytes,
            left: zones_left(r),
            monthly_usd: r.cost.iter().map(|c| (c.price.name.as_str(), c.monthly_usd)).collect(),
            verdict: r.verdict,
            delta: (i > 0).then(|| zones_delta(&zones[0], r)),
        })
        .collect()
}

const ZONES_SUMMARY: [&str; 9] = [
    "tag",
    "trafficDistribution",
    "conns",
    "ok",
    "cross-zone",
    "cross-zone bytes",
    "left",
    "USD/month",
    "verdict",
];

/// A run's projected monthly costs, `aws 12.34, gcp 5.67`; `-` without any.
fn monthly(r: &ZonesRun) -> String {
    let parts: Vec<String> = r
        .cost
        .iter()
        .filter_map(|c| Some(format!("{} {:.2}", c.price.name, c.monthly_usd?)))
        .collect();
    if parts.is_empty() { "-".into() } else { parts.join(", ") }
}

fn zones_row(r: &ZonesRun) -> [String; 9] {
    [
        r.tag.clone(),
        r.traffic_distribution.map_or("-".into(), |t| t.to_string()),
        r.conns.to_string(),
        r.ok.to_string(),
        format!("{:.1}%", 100.0 * r.cross_zone_share),
        r.cross_zone_bytes.to_string(),
        zones_left(r).to_string(),
        monthly(r),
        r.verdict.to_string(),
    ]
}

/// The delta row of `r` against `first`.
fn zones_delta_row(first: &ZonesRun, r: &ZonesRun) -> [String; 9] {
    let d = zones_delta(first, r);
    let usd: Vec<String> = d.monthly_usd.iter().map(|(n, v)| format!("{n} {v:+.2}")).collect();
    [
        format!("Δ {} vs {}", r.tag, first.tag),
        String::new(),
        String::new(),
        String::new(),
        format!("{:+.1} pts", 100.0 * d.cross_zone_share),
        format!("{:+}", d.cross_zone_bytes),
        format!("{:+}", i128::from(zones_left(r)) - i128::from(zones_left(first))),
        if usd.is_empty() { "-".into() } else { usd.join(", ") },
        String::new(),
    ]
}

#[derive(Serialize)]
struct AffinityDoc<'a> {
    tag: &'a str,
    target: &'a str,
    protocol: crate::storm::Proto,
    sessions: u32,
    #[serde(flatten)]
    totals: &'a crate::affinity::Totals,
    changes_during_pool_change: u64,
    pods: usize,
    verdict: crate::affinity::Verdict,
}

const AFFINITY_SUMMARY: [&str; 12] = [
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
    "changes during pool change",
    "verdict",
];

fn affinity_row(r: &AffinityRun) -> [String; 12] {
    [
        r.tag.clone(),
        r.target.address.clone(),
        r.target.protocol.to_string(),
        r.sessions.to_string(),
        r.totals.sent.to_string(),
        r.totals.answered.to_string(),
        r.totals.lost.to_string(),
        r.totals.late.to_string(),
        r.totals.pod_changes.to_string(),
        r.totals.address_changes.to_string(),
        r.changes_during_pool_change.to_string(),
        r.verdict.to_string(),
    ]
}

#[derive(Serialize)]
struct RunDoc<'a> {
    tag: &'a str,
    format: &'static str,
    conns: u64,
    ok: u64,
    failed: u64,
    backends: &'a [BackendCount],
    stats: &'a Stats,
}

const SUMMARY: [&str; 10] = [
    "tag", "conns", "ok", "failed", "backends", "min", "max", "CV", "p-value", "verdict",
];

fn summary_row(r: &Loaded) -> [String; 10] {
    [
        r.tag.clone(),
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
}

/// Renders the comparison of spread `runs` and `affinity` runs in `format`.
pub fn compare(
    runs: &[Loaded],
    affinity: &[AffinityRun],
    zones: &[ZonesRun],
    format: CompareFormat,
) -> anyhow::Result<String> {
    let doc = || Doc {
        runs: runs
            .iter()
            .map(|r| RunDoc {
                tag: &r.tag,
                format: match r.source {
                    crate::record::Source::Record => "svclb",
                    crate::record::Source::Mconnect => "mconnect",
                },
                conns: r.conns,
                ok: r.ok,
                failed: r.failed,
                backends: &r.backends,
                stats: &r.stats,
            })
            .collect(),
        affinity_runs: affinity
            .iter()
            .map(|r| AffinityDoc {
                tag: &r.tag,
                target: &r.target.address,
                protocol: r.target.protocol,
                sessions: r.sessions,
                totals: &r.totals,
                changes_during_pool_change: r.changes_during_pool_change,
                pods: r.pods.len(),
                verdict: r.verdict,
            })
            .collect(),
        zones_runs: zones_docs(zones),
    };
    Ok(match format {
        CompareFormat::Json => serde_json::to_string_pretty(&doc())? + "\n",
        CompareFormat::Yaml => serde_saphyr::to_string(&doc())?,
        CompareFormat::Csv => {
            // Two sections when both kinds are given, each with its header, a blank line between.
            let mut w = csv::WriterBuilder::new().flexible(true).from_writer(Vec::new());
            if !runs.is_empty() {
                w.write_record(SUMMARY)?;
                for r in runs {
                    w.write_record(summary_row(r))?;
                }
            }
            if !affinity.is_empty() {
                if !runs.is_empty() {
                    w.write_record([""])?;
                }
                w.write_record(AFFINITY_SUMMARY)?;
                for r in affinity {
                    w.write_record(affinity_row(r))?;
                }
            }
            if !zones.is_empty() {
                if !runs.is_empty() || !affinity.is_empty() {
                    w.write_record([""])?;
                }
                w.write_record(ZONES_SUMMARY)?;
                for r in zones {
                    w.write_record(zones_row(r))?;
                }
                for r in zones.iter().skip(1) {
                    w.write_record(zones_delta_row(&zones[0], r))?;
                }
            }
            String::from_utf8(w.into_inner()?)?
        }
        CompareFormat::Table => text(runs, affinity, zones, false),
        CompareFormat::Markdown => text(runs, affinity, zones, true),
    })
}

fn text(runs: &[Loaded], affinity: &[AffinityRun], zones: &[ZonesRun], md: bool) -> String {
    let mut out = String::new();
    if !runs.is_empty() {
        spread_text(runs, md, &mut out);
    }
    if !affinity.is_empty() {
        if !runs.is_empty() {
            out.push('\n');
        }
        let _ = writeln!(out, "{}", if md { "### Affinity runs\n" } else { "Affinity runs:" });
        let mut b = Builder::default();
        b.push_record(AFFINITY_SUMMARY);
        for r in affinity {
            b.push_record(affinity_row(r));
        }
        let _ = writeln!(out, "{}", styled(b, md));
    }
    if !zones.is_empty() {
        if !runs.is_empty() || !affinity.is_empty() {
            out.push('\n');
        }
        let _ = writeln!(out, "{}", if md { "### Zones runs\n" } else { "Zones runs:" });
        let mut b = Builder::default();
        b.push_record(ZONES_SUMMARY);
        for r in zones {
            b.push_record(zones_row(r));
        }
        for r in zones.iter().skip(1) {
            b.push_record(zones_delta_row(&zones[0], r));
        }
        let _ = writeln!(out, "{}", styled(b, md));
    }
    out
}

fn spread_text(runs: &[Loaded], md: bool, out: &mut String) {
    let mut b = Builder::default();
    b.push_record(SUMMARY);
    for r in runs {
        b.push_record(summary_row(r));
    }
    let _ = writeln!(out, "{}", styled(b, md));

    // Frequency: one row per connection count seen in any run; a cell is how many of that run's
    // backends got that count.
    let freqs: Vec<Vec<(u64, usize)>> = runs
        .iter()
        .map(|r| frequency(r.backends.iter().map(|b| b.count)))
        .collect();
    let all: BTreeSet<u64> = freqs.iter().flatten().map(|(c, _)| *c).collect();
    let mut b = Builder::default();
    b.push_record(std::iter::once("conns".to_string()).chain(runs.iter().map(|r| r.tag.clone())));
    for conns in all {
        let mut row = vec![conns.to_string()];
        for f in &freqs {
            row.push(
                f.binary_search_by_key(&conns, |(c, _)| *c)
                    .map(|i| f[i].1.to_string())
                    .unwrap_or_default(),
            );
        }
        b.push_record(row);
    }
    heading(out, "Frequency (pods per connection count)", md);
    let _ = writeln!(out, "{}", styled(b, md));
}
