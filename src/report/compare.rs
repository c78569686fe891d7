//! `compare`: one summary row per run and the side-by-side frequency table, rows aligned by
//! connection count (xcluster's `table` pastes ragged columns; these line up).

use std::collections::BTreeSet;
use std::fmt::Write;

use serde::Serialize;
use tabled::builder::Builder;
use tabled::settings::object::Columns;
use tabled::settings::{Alignment, Style};

use super::{CompareFormat, frequency, num, pval};
use crate::record::Loaded;
use crate::stats::Stats;
use crate::storm::BackendCount;

#[derive(Serialize)]
struct Doc<'a> {
    runs: Vec<RunDoc<'a>>,
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

/// Renders the comparison of `runs` in `format`.
pub fn compare(runs: &[Loaded], format: CompareFormat) -> anyhow::Result<String> {
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
    };
    Ok(match format {
        CompareFormat::Json => serde_json::to_string_pretty(&doc())? + "\n",
        CompareFormat::Yaml => serde_saphyr::to_string(&doc())?,
        CompareFormat::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(SUMMARY)?;
            for r in runs {
                w.write_record(summary_row(r))?;
            }
            String::from_utf8(w.into_inner()?)?
        }
        CompareFormat::Table => text(runs, false),
        CompareFormat::Markdown => text(runs, true),
    })
}

fn styled(builder: Builder, md: bool) -> String {
    let mut table = builder.build();
    table.with(if md {
        Style::markdown().into()
    } else {
        tabled::settings::Theme::from_style(Style::blank())
    });
    table.modify(Columns::new(1..), Alignment::right());
    table.to_string()
}

fn text(runs: &[Loaded], md: bool) -> String {
    let mut out = String::new();
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
    let _ = writeln!(
        out,
        "\n{}",
        if md {
            "### Frequency (pods per connection count)\n"
        } else {
            "Frequency (pods per connection count):"
        }
    );
    let _ = writeln!(out, "{}", styled(b, md));
    out
}
