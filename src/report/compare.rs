//! `compare`: one summary row per run and the side-by-side frequency table, rows aligned by
//! connection count (xcluster's `table` pastes ragged columns; these line up), bucketed and, for
//! runs of different sizes, in shares of each run's fair share; `--table` picks one table (what
//! `-o csv` writes: one table, one header).

use std::fmt::Write;

use serde::Serialize;
use tabled::builder::Builder;

use super::{CompareFormat, bin_counts, frequency_bins, heading, num, pval, styled};
use crate::record::{AffinityRun, Loaded, TargetInfo, ZonesRun};
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

/// An affinity run's summary row (also the HTML page's table of several runs).
pub(super) fn affinity_row(r: &AffinityRun) -> [String; 12] {
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
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'a TargetInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy_mode: Option<&'a str>,
    conns: u64,
    ok: u64,
    failed: u64,
    backends: &'a [BackendCount],
    stats: &'a Stats,
}

/// One table of a comparison (`--table`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompareTable {
    /// Spread runs: one row per run.
    Summary,
    /// Spread runs side by side: how many backends got each connection count (or range).
    Frequency,
    /// Spread runs: one row per run and backend.
    Backends,
    /// Affinity runs: one row per run.
    Affinity,
    /// Zones runs: one row per run, and the delta of each to the first.
    Zones,
}

impl std::fmt::Display for CompareTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum;
        f.write_str(self.to_possible_value().expect("no skipped variants").get_name())
    }
}

/// What to show of a comparison: one table or the default set, and the frequency table's rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompareView {
    /// One table only; `None`: every table that has runs (table and markdown), or the summary of
    /// the one kind of run given (csv).
    pub table: Option<CompareTable>,
    /// The frequency table with a row for every connection count, unbucketed.
    pub all_backends: bool,
}

/// The tables to print for `runs`, or why the request cannot be met: a table needs runs of its
/// kind; csv is one table, so with runs of several kinds it must be named; `--all-backends` is
/// for the frequency table; json and yaml hold every table.
pub fn tables(
    format: CompareFormat,
    view: CompareView,
    (spread, affinity, zones): (usize, usize, usize),
) -> anyhow::Result<Vec<CompareTable>> {
    use CompareTable::*;
    let kinds: Vec<(CompareTable, usize, &str)> = [
        (Summary, spread, "spread"),
        (Affinity, affinity, "affinity"),
        (Zones, zones, "zones"),
    ]
    .into_iter()
    .filter(|(_, n, _)| *n > 0)
    .collect();
    let given = kinds
        .iter()
        .map(|(_, n, k)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    if matches!(format, CompareFormat::Json | CompareFormat::Yaml) {
        if view.table.is_some() || view.all_backends {
            anyhow::bail!(
                "-o {} holds every table of every run: drop --table and --all-backends",
                if format == CompareFormat::Json { "json" } else { "yaml" }
            );
        }
        return Ok(Vec::new());
    }
    let chosen = match view.table {
        Some(t) => {
            let have = match t {
                Summary | Frequency | Backends => spread,
                Affinity => affinity,
                Zones => zones,
            };
            if have == 0 {
                anyhow::bail!("--table {t} has no runs to show: the files hold {given} run(s)");
            }
            vec![t]
        }
        None if format == CompareFormat::Csv => match kinds.as_slice() {
            [(t, _, _)] => vec![*t],
            _ => anyhow::bail!(
                "-o csv writes one table and the files hold {given} runs: pick one with --table summary|frequency|backends|affinity|zones"
            ),
        },
        None => {
            let mut all = Vec::new();
            if spread > 0 {
                all.extend([Summary, Frequency]);
            }
            if affinity > 0 {
                all.push(Affinity);
            }
            if zones > 0 {
                all.push(Zones);
            }
            all
        }
    };
    if view.all_backends && !chosen.contains(&Frequency) {
        anyhow::bail!("--all-backends is for the frequency table of spread runs: drop it, or add --table frequency");
    }
    Ok(chosen)
}

const SUMMARY: [&str; 13] = [
    "tag", "target", "mode", "proto", "conns", "ok", "failed", "backends", "min", "max", "CV", "p-value", "verdict",
];

/// How the run was made: `lab nftables`, `pod iptables` (a cluster), `address`, with the IP
/// family when the record has one (`lab nftables ipv6`); `mconnect` for its files.
fn mode(r: &Loaded) -> String {
    let mode = match (&r.target, &r.proxy_mode) {
        (None, _) => "mconnect".into(),
        (Some(t), Some(p)) => format!("{} {p}", t.mode),
        (Some(t), None) => t.mode.clone(),
    };
    match r.target.as_ref().and_then(|t| t.ip_family) {
        Some(f) => format!("{mode} {f}"),
        None => mode,
    }
}

fn summary_row(r: &Loaded) -> [String; 13] {
    [
        r.tag.clone(),
        r.target.as_ref().map_or("-".into(), |t| t.address.clone()),
        mode(r),
        r.target.as_ref().map_or("-".into(), |t| t.protocol.to_string()),
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

const BACKENDS: [&str; 8] = [
    "tag",
    "backend",
    "node",
    "zone",
    "count",
    "share %",
    "of fair share",
    "verdict",
];

/// One row per run and backend: its count, its share of the run's answers, and that share over
/// the fair one (1.00 = exactly fair).
fn backend_rows(runs: &[Loaded]) -> Vec<[String; 8]> {
    let mut rows = Vec::new();
    for r in runs {
        let n = r.backends.len().max(1) as f64;
        let ok = r.ok.max(1) as f64;
        for b in &r.backends {
            rows.push([
                r.tag.clone(),
                b.name.clone(),
                b.node.clone(),
                b.zone.clone(),
                b.count.to_string(),
                format!("{:.2}", 100.0 * b.count as f64 / ok),
                format!("{:.3}", b.count as f64 * n / ok),
                r.stats.verdict.to_string(),
            ]);
        }
    }
    rows
}

/// Rows of a compact frequency table.
const FREQUENCY_ROWS: usize = 12;

/// What the frequency table's rows count in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scale {
    /// Connections: the runs have the same connections and backends (or `--all-backends`).
    Conns,
    /// Thousandths of each run's fair share (ok / backends): runs of different sizes line up.
    FairShare,
}

/// The frequency table of spread runs: row ranges (in `scale`'s units, `lo..=hi`) and per row
/// how many backends of each run fall in it.
#[derive(Debug, PartialEq)]
pub(super) struct Frequency {
    pub scale: Scale,
    pub rows: Vec<(u64, u64)>,
    pub cells: Vec<Vec<usize>>,
}

/// A backend's count in thousandths of its run's fair share; a backend with any connection is at
/// least 1 (0 means none, the row of its own).
fn per_mille(count: u64, (ok, backends): (u64, &[BackendCount])) -> u64 {
    if count == 0 || ok == 0 {
        return 0;
    }
    let fair = ok as f64 / backends.len().max(1) as f64;
    ((count as f64 * 1000.0 / fair).round() as u64).max(1)
}

/// Runs of the same size (answered connections and backends) are tabled by connection count;
/// others by share of their fair share, where a 3,000- and a 1,000,000-connection run line up.
/// Counts go in at most 12 ranges unless `all` (then one row per count, as xcluster's).
fn frequency(runs: &[Loaded], all: bool) -> Frequency {
    let runs: Vec<(u64, &[BackendCount])> = runs.iter().map(|r| (r.ok, r.backends.as_slice())).collect();
    frequency_of(&runs, all)
}

/// [`frequency`] of runs given as (answered connections, backends).
pub(super) fn frequency_of(runs: &[(u64, &[BackendCount])], all: bool) -> Frequency {
    let same_size = runs
        .windows(2)
        .all(|w| w[0].0 == w[1].0 && w[0].1.len() == w[1].1.len());
    let scale = if all || same_size {
        Scale::Conns
    } else {
        Scale::FairShare
    };
    let values: Vec<Vec<u64>> = runs
        .iter()
        .map(|r| {
            r.1.iter()
                .map(|b| match scale {
                    Scale::Conns => b.count,
                    Scale::FairShare => per_mille(b.count, *r),
                })
                .collect()
        })
        .collect();
    let union: Vec<u64> = values.iter().flatten().copied().collect();
    let rows = frequency_bins(
        &union,
        if all { usize::MAX } else { FREQUENCY_ROWS },
        match scale {
            Scale::Conns => 1,
            // Ranges of 0.01, 0.02, 0.05, 0.1 ... of the fair share.
            Scale::FairShare => 10,
        },
    );
    let per_run: Vec<Vec<usize>> = values.iter().map(|v| bin_counts(&rows, v.iter().copied())).collect();
    let cells = (0..rows.len())
        .map(|i| per_run.iter().map(|c| c[i]).collect())
        .collect();
    Frequency { scale, rows, cells }
}

impl Frequency {
    /// A row's label: `77`, `75-79` (connections), or `0.90-0.99` (of the fair share, to 0.01;
    /// `0.987` for a single value); `0` for the backends that got nothing.
    pub(super) fn label(&self, (lo, hi): (u64, u64)) -> String {
        match self.scale {
            Scale::Conns if lo == hi => lo.to_string(),
            Scale::Conns => format!("{lo}-{hi}"),
            Scale::FairShare if hi == 0 => "0".into(),
            Scale::FairShare if lo == hi => format!("{:.3}", lo as f64 / 1000.0),
            // Hundredths, rounded down: 0.900..=0.999 is 0.90-0.99.
            Scale::FairShare => format!("{:.2}-{:.2}", (lo / 10) as f64 / 100.0, (hi / 10) as f64 / 100.0),
        }
    }

    /// The table's first column's title.
    pub(super) fn unit(&self) -> &'static str {
        match self.scale {
            Scale::Conns => "conns",
            Scale::FairShare => "of fair share",
        }
    }

    fn heading(&self) -> String {
        let ranged = self.rows.iter().any(|(lo, hi)| lo != hi);
        match (self.scale, ranged) {
            (Scale::Conns, false) => "Frequency (backends per connection count)".into(),
            (Scale::Conns, true) => format!(
                "Frequency (backends per connection count, in ranges of {}; --all-backends for every count)",
                self.rows.last().map_or(1, |(lo, hi)| hi - lo + 1)
            ),
            (Scale::FairShare, _) => "Frequency (backends per share of their run's fair share, ok / backends: the runs differ in size; --all-backends for connection counts)".into(),
        }
    }
}

/// Renders the comparison of spread, affinity and zones runs in `format` (`view`: see
/// [`tables`], which this checks first).
pub fn compare(
    runs: &[Loaded],
    affinity: &[AffinityRun],
    zones: &[ZonesRun],
    format: CompareFormat,
    view: CompareView,
) -> anyhow::Result<String> {
    let chosen = tables(format, view, (runs.len(), affinity.len(), zones.len()))?;
    let doc = || Doc {
        runs: runs
            .iter()
            .map(|r| RunDoc {
                tag: &r.tag,
                format: match r.source {
                    crate::record::Source::Record => "svclb",
                    crate::record::Source::Mconnect => "mconnect",
                },
                target: r.target.as_ref(),
                proxy_mode: r.proxy_mode.as_deref(),
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
            let [table] = chosen.as_slice() else {
                unreachable!("tables() gives csv one table")
            };
            csv(*table, runs, affinity, zones, view.all_backends)?
        }
        CompareFormat::Table => text(&chosen, runs, affinity, zones, view.all_backends, false),
        CompareFormat::Markdown => text(&chosen, runs, affinity, zones, view.all_backends, true),
    })
}

/// One table as CSV: one header, one row per record.
fn csv(
    table: CompareTable,
    runs: &[Loaded],
    affinity: &[AffinityRun],
    zones: &[ZonesRun],
    all: bool,
) -> anyhow::Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    match table {
        CompareTable::Summary => {
            w.write_record(SUMMARY)?;
            for r in runs {
                w.write_record(summary_row(r))?;
            }
        }
        CompareTable::Backends => {
            w.write_record(BACKENDS)?;
            for row in backend_rows(runs) {
                w.write_record(row)?;
            }
        }
        CompareTable::Frequency => {
            // Machine-readable bounds: connections, or the share of the fair share (3 decimals),
            // both inclusive.
            let f = frequency(runs, all);
            let (lo, hi) = match f.scale {
                Scale::Conns => ("conns_min", "conns_max"),
                Scale::FairShare => ("fair_share_min", "fair_share_max"),
            };
            w.write_record([lo, hi].into_iter().chain(runs.iter().map(|r| r.tag.as_str())))?;
            for (row, cells) in f.rows.iter().zip(&f.cells) {
                let bound = |v: u64| match f.scale {
                    Scale::Conns => v.to_string(),
                    Scale::FairShare => format!("{:.3}", v as f64 / 1000.0),
                };
                w.write_record(
                    [bound(row.0), bound(row.1)]
                        .into_iter()
                        .chain(cells.iter().map(|c| c.to_string())),
                )?;
            }
        }
        CompareTable::Affinity => {
            w.write_record(AFFINITY_SUMMARY)?;
            for r in affinity {
                w.write_record(affinity_row(r))?;
            }
        }
        CompareTable::Zones => {
            w.write_record(ZONES_SUMMARY)?;
            for r in zones {
                w.write_record(zones_row(r))?;
            }
            for r in zones.iter().skip(1) {
                w.write_record(zones_delta_row(&zones[0], r))?;
            }
        }
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}

fn text(
    chosen: &[CompareTable],
    runs: &[Loaded],
    affinity: &[AffinityRun],
    zones: &[ZonesRun],
    all: bool,
    md: bool,
) -> String {
    let mut out = String::new();
    for (i, table) in chosen.iter().enumerate() {
        let mut b = Builder::default();
        let title = match table {
            CompareTable::Summary => {
                b.push_record(SUMMARY);
                for r in runs {
                    b.push_record(summary_row(r));
                }
                "Spread runs".to_string()
            }
            CompareTable::Backends => {
                b.push_record(BACKENDS);
                for row in backend_rows(runs) {
                    b.push_record(row);
                }
                "Backends of the spread runs".to_string()
            }
            CompareTable::Frequency => {
                let f = frequency(runs, all);
                b.push_record(std::iter::once(f.unit().to_string()).chain(runs.iter().map(|r| r.tag.clone())));
                for (row, cells) in f.rows.iter().zip(&f.cells) {
                    b.push_record(
                        std::iter::once(f.label(*row)).chain(
                            cells
                                .iter()
                                .map(|c| if *c == 0 { String::new() } else { c.to_string() }),
                        ),
                    );
                }
                f.heading()
            }
            CompareTable::Affinity => {
                b.push_record(AFFINITY_SUMMARY);
                for r in affinity {
                    b.push_record(affinity_row(r));
                }
                "Affinity runs".to_string()
            }
            CompareTable::Zones => {
                b.push_record(ZONES_SUMMARY);
                for r in zones {
                    b.push_record(zones_row(r));
                }
                for r in zones.iter().skip(1) {
                    b.push_record(zones_delta_row(&zones[0], r));
                }
                "Zones runs".to_string()
            }
        };
        match (i, md) {
            (0, false) => {
                let _ = writeln!(out, "{title}:");
            }
            (0, true) => {
                let _ = writeln!(out, "### {title}\n");
            }
            _ => heading(&mut out, &title, md),
        }
        let _ = writeln!(out, "{}", styled(b, md));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Source;
    use crate::stats::{LOOSE, evaluate};

    fn loaded(tag: &str, counts: &[u64]) -> Loaded {
        let backends: Vec<BackendCount> = counts
            .iter()
            .enumerate()
            .map(|(i, c)| BackendCount {
                name: format!("pod-{i}"),
                node: String::new(),
                zone: String::new(),
                count: *c,
                bytes: 0,
            })
            .collect();
        let pairs: Vec<(&str, u64)> = backends.iter().map(|b| (b.name.as_str(), b.count)).collect();
        let stats = evaluate(&pairs, 0, &LOOSE);
        let ok = counts.iter().sum();
        Loaded {
            tag: tag.into(),
            target: None,
            proxy_mode: None,
            conns: ok,
            ok,
            failed: 0,
            backends,
            stats,
            source: Source::Mconnect,
        }
    }

    #[test]
    fn csv_is_one_table_named_when_the_runs_are_of_several_kinds() {
        use CompareTable::*;
        let csv = CompareFormat::Csv;
        let view = CompareView::default();
        assert_eq!(tables(csv, view, (2, 0, 0)).unwrap(), [Summary]);
        assert_eq!(tables(csv, view, (0, 3, 0)).unwrap(), [Affinity]);
        let e = tables(csv, view, (2, 3, 0)).unwrap_err().to_string();
        assert!(
            e.contains("the files hold 2 spread, 3 affinity runs: pick one with --table"),
            "{e}"
        );
        let one = |t| CompareView {
            table: Some(t),
            all_backends: false,
        };
        assert_eq!(tables(csv, one(Frequency), (2, 3, 0)).unwrap(), [Frequency]);
        assert_eq!(
            tables(CompareFormat::Table, view, (2, 3, 1)).unwrap(),
            [Summary, Frequency, Affinity, Zones]
        );
        assert!(tables(CompareFormat::Table, one(Zones), (2, 3, 0)).is_err());
        let all = CompareView {
            table: None,
            all_backends: true,
        };
        assert!(tables(CompareFormat::Table, all, (2, 0, 0)).is_ok());
        assert!(tables(CompareFormat::Table, all, (0, 2, 0)).is_err());
        assert!(tables(CompareFormat::Json, all, (2, 0, 0)).is_err());
    }

    #[test]
    fn runs_of_one_size_are_tabled_by_count_others_by_share_of_the_fair_share() {
        let a = loaded("a", &[90, 100, 110]);
        let b = loaded("b", &[100, 100, 100]);
        let f = frequency(&[a.clone(), b], false);
        assert_eq!(f.scale, Scale::Conns);
        assert_eq!(f.rows, [(90, 90), (100, 100), (110, 110)]);
        assert_eq!(f.cells, [vec![1, 0], vec![1, 3], vec![1, 0]]);
        // 10x the connections, 0 on one backend: shares line up, the silent one has its row.
        let c = loaded("c", &[0, 1500, 1500]);
        let f = frequency(&[a.clone(), c.clone()], false);
        assert_eq!(f.scale, Scale::FairShare);
        assert_eq!(f.rows, [(0, 0), (900, 900), (1000, 1000), (1100, 1100), (1500, 1500)]);
        assert_eq!(f.label((900, 900)), "0.900");
        assert_eq!(f.label((0, 0)), "0");
        assert_eq!(f.label((900, 999)), "0.90-0.99");
        // --all-backends: connection counts, whatever the sizes.
        assert_eq!(frequency(&[a, c], true).scale, Scale::Conns);
    }

    #[test]
    fn many_shares_go_in_ranges_of_a_round_fraction() {
        // 50 backends from 0.5 to 1.49 of the fair share.
        let counts: Vec<u64> = (0..50).map(|i| 500 + 20 * i).collect();
        let wide = loaded("wide", &counts);
        let f = frequency(&[wide, loaded("other", &[1, 1])], false);
        assert_eq!(f.scale, Scale::FairShare);
        assert!(f.rows.len() <= FREQUENCY_ROWS, "{:?}", f.rows);
        assert_eq!(f.label(f.rows[0]), "0.50-0.59");
        assert!(f.heading().contains("share of their run's fair share"));
    }
}
