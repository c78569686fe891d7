//! Rendering: tables (tabled), markdown, JSON, YAML, CSV.

mod affinity;
mod compare;
pub mod lab;
pub mod live;
mod matrix;
mod spread;
mod zones;

pub use affinity::{affinity, clock};
pub use compare::compare;
pub use matrix::{junit, matrix, matrix_compare};
pub use spread::spread;
pub use zones::{cycle_line as zones_cycle_line, zones};

use clap::ValueEnum;

/// `-o` for commands that print one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunFormat {
    Table,
    Json,
    Yaml,
    Markdown,
}

/// `-o` for `compare`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompareFormat {
    Table,
    Json,
    Yaml,
    Markdown,
    Csv,
}

/// xcluster's frequency table: `(conns, pods)` pairs — how many backends got each count —
/// ascending by conns, zero-count backends included.
pub fn frequency(counts: impl IntoIterator<Item = u64>) -> Vec<(u64, usize)> {
    let mut map = std::collections::BTreeMap::new();
    for c in counts {
        *map.entry(c).or_insert(0usize) += 1;
    }
    map.into_iter().collect()
}

/// A section heading: `### Title` in markdown, `Title:` on a terminal.
fn heading(out: &mut String, title: &str, markdown: bool) {
    use std::fmt::Write;
    let _ = if markdown {
        writeln!(out, "\n### {title}\n")
    } else {
        writeln!(out, "\n{title}:")
    };
}

/// The report's first line: `## Kind run `tag`` in markdown, `Kind run tag` on a terminal.
fn title(out: &mut String, kind: &str, tag: &str, markdown: bool) {
    use std::fmt::Write;
    let _ = if markdown {
        writeln!(out, "## {kind} run `{tag}`\n")
    } else {
        writeln!(out, "{kind} run {tag}")
    };
}

/// A table: blank-bordered for terminals, GitHub markdown otherwise; numeric columns right-aligned.
fn styled(builder: tabled::builder::Builder, markdown: bool) -> String {
    use tabled::settings::{Alignment, Style, object::Columns};
    let mut table = builder.build();
    if markdown {
        table.with(Style::markdown());
    } else {
        table.with(Style::blank());
    }
    table.modify(Columns::new(1..), Alignment::right());
    table.to_string()
}

/// A float for a table cell: fixed decimals, `-` when absent.
fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".into(),
    }
}

/// A p-value cell, `-` when absent.
fn pval(p: Option<f64>) -> String {
    match p {
        Some(p) => crate::stats::p_text(p),
        None => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn frequency_counts_pods_per_conns() {
        assert_eq!(super::frequency([3, 0, 3, 5, 3]), vec![(0, 1), (3, 3), (5, 1)]);
    }
}
