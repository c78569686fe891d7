//! `compare`: one summary row per run and the side-by-side frequency table, rows aligned by
//! connection count (xcluster's `table` pastes ragged columns; these line up).

use std::collections::BTreeSet;
use std::fmt::Write;

use serde::Serialize;
use tabled::builder::Builder;

use super::{CompareFormat, frequency, heading, num, pval, styled};
use crate::record::{AffinityRun, Loaded};
use crate::stats::Stats;
use crate::storm::BackendCount;

#[derive(Serialize)]
struct Doc<'a> {
    runs: Vec<RunDoc<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    affinity_runs: Vec<AffinityDoc<'a>>,
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
    "tag", "target", "proto", "sessions", "sent", "answered", "lost", "late", "pod chg", "addr chg", "pool chg",
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
pub fn compare(runs: &[Loaded], affinity: &[AffinityRun], format: CompareFormat) -> anyhow::Result<String> {
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
            String::from_utf8(w.into_inner()?)?
        }
        CompareFormat::Table => text(runs, affinity, false),
        CompareFormat::Markdown => text(runs, affinity, true),
    })
}

fn text(runs: &[Loaded], affinity: &[AffinityRun], md: bool) -> String {
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
