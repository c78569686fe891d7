//! Rendering: tables (tabled), markdown, JSON, YAML, CSV.

mod affinity;
mod compare;
mod disruption;
pub mod html;
pub mod lab;
pub mod live;
mod matrix;
mod spread;
mod zones;

pub use affinity::{affinity, clock};
pub use compare::{CompareTable, CompareView, compare};
pub use disruption::{disruption, disruption_compare, second_line as disruption_second_line};
pub use matrix::{junit, matrix, matrix_compare};
pub use spread::spread;
pub use zones::{bytes as zones_bytes, cycle_line as zones_cycle_line, zones};

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

/// The line a run says on stderr before its storm starts: how many connections (`what`), from
/// which sources (described; none for this process) and to where. With several sources,
/// `per_source` is each one's share and the total comes first.
pub fn storm_line(per_source: u64, what: &str, sources: &[String], how: Option<&str>, to: &str) -> String {
    match sources {
        [] => format!("{} {what} to {to}", thousands(per_source)),
        [one] => format!("{} {what} from {one} to {to}", thousands(per_source)),
        many => format!(
            "{} {what} ({} from each of {} sources{}) to {to}",
            thousands(per_source.saturating_mul(many.len() as u64)),
            thousands(per_source),
            many.len(),
            how.map(|h| format!(", {h}")).unwrap_or_default()
        ),
    }
}

/// A progress bar's style: `{pos}/{len} conns`, the rate as `14,192/s` (indicatif's `{per_sec}`
/// prints four decimals), the time left.
pub fn progress_style(unit: &str) -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(&format!(
        "{{spinner}} {{bar:40}} {{human_pos}}/{{human_len}} {unit} {{rate}} eta {{eta}}"
    ))
    .expect("static template")
    .with_key("rate", |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = w.write_str(&rate(s.per_sec()));
    })
}

/// A rate for a person: `14,192/s`, `0.5/s` below one a second.
pub fn rate(per_sec: f64) -> String {
    if !per_sec.is_finite() || per_sec <= 0.0 {
        "-/s".into()
    } else if per_sec < 1.0 {
        format!("{per_sec:.1}/s")
    } else {
        format!("{}/s", thousands(per_sec.round() as u64))
    }
}

/// `n` with thousands separators: `14,192`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A run's length for a person: `42 ms` below a second, `1.24 s` below a minute, `10m 05s` beyond.
pub fn elapsed(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".into();
    }
    if secs < 0.001 {
        format!("{:.2} ms", secs * 1000.0)
    } else if secs < 1.0 {
        // 0.9996 s would round to "1000 ms": say 1.00 s.
        let ms = (secs * 1000.0).round();
        if ms < 1000.0 {
            format!("{ms:.0} ms")
        } else {
            "1.00 s".into()
        }
    } else if secs < 60.0 {
        format!("{secs:.2} s")
    } else {
        let whole = secs.round() as u64;
        format!("{}m {:02}s", whole / 60, whole % 60)
    }
}

/// The rows of a frequency table over `values` (one per backend): value ranges `lo..=hi`, in
/// ascending order. Zero (a backend that got nothing) is always a row of its own. The other
/// values get one row each when at most `max_rows` distinct ones occur; else they are bucketed
/// in ranges of one width (`unit` × 1, 2 or 5 × a power of ten, the smallest that needs at most
/// `max_rows` rows), aligned on multiples of the width, empty ones between included so the
/// shape shows.
pub fn frequency_bins(values: &[u64], max_rows: usize, unit: u64) -> Vec<(u64, u64)> {
    let max_rows = max_rows.max(1) as u64;
    let mut rows = Vec::new();
    if values.contains(&0) {
        rows.push((0, 0));
    }
    let distinct: std::collections::BTreeSet<u64> = values.iter().copied().filter(|v| *v > 0).collect();
    let (Some(&min), Some(&max)) = (distinct.first(), distinct.last()) else {
        return rows;
    };
    if distinct.len() as u64 <= max_rows {
        rows.extend(distinct.iter().map(|v| (*v, *v)));
        return rows;
    }
    let unit = unit.max(1);
    let width = (0..)
        .flat_map(|e: u32| [1, 2, 5].map(|m| unit.saturating_mul(m).saturating_mul(10u64.saturating_pow(e))))
        .find(|w| max / w - min / w < max_rows)
        .expect("a width of u64::MAX needs one row");
    let mut lo = min / width * width;
    while lo <= max {
        rows.push((lo.max(1), lo.saturating_add(width - 1)));
        lo = match lo.checked_add(width) {
            Some(next) => next,
            None => break,
        };
    }
    rows
}

/// How many of `values` fall in each of `bins` (from [`frequency_bins`]).
pub fn bin_counts(bins: &[(u64, u64)], values: impl IntoIterator<Item = u64>) -> Vec<usize> {
    let mut counts = vec![0; bins.len()];
    for v in values {
        // Bins ascend and do not overlap: the last one starting at or below v.
        let i = bins.partition_point(|(lo, _)| *lo <= v);
        if i > 0 && v <= bins[i - 1].1 {
            counts[i - 1] += 1;
        }
    }
    counts
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
    styled_with_notes(builder, markdown, &[])
}

/// [`styled`], with the first cell of each row in `notes` spanning the whole line on a terminal
/// (e.g. `… 90 more backends`; markdown has no spans: it stays in the first column).
fn styled_with_notes(builder: tabled::builder::Builder, markdown: bool, notes: &[usize]) -> String {
    use tabled::settings::{Alignment, Span, Style, object::Columns};
    let mut table = builder.build();
    if markdown {
        table.with(Style::markdown());
    } else {
        table.with(Style::blank());
    }
    table.modify(Columns::new(1..), Alignment::right());
    if !markdown {
        for row in notes {
            table.modify((*row, 0), Span::column(0));
        }
    }
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
    use super::{bin_counts, elapsed, frequency_bins, thousands};

    #[test]
    fn storm_lines_say_how_many_from_each_source() {
        use super::storm_line;
        assert_eq!(
            storm_line(10_000, "TCP connections", &[], None, "127.0.0.1:5001"),
            "10,000 TCP connections to 127.0.0.1:5001"
        );
        assert_eq!(
            storm_line(
                10_000,
                "TCP connections",
                &["pod-001 (node1)".into()],
                None,
                "10.96.0.10:5001 (clusterIP)"
            ),
            "10,000 TCP connections from pod-001 (node1) to 10.96.0.10:5001 (clusterIP)"
        );
        let ten: Vec<String> = (1..=10).map(|i| format!("pod-{i:03}")).collect();
        assert_eq!(
            storm_line(
                3_000,
                "TCP connections",
                &ten,
                Some("a pod on every node"),
                "10.96.0.10:5001 (clusterIP)"
            ),
            "30,000 TCP connections (3,000 from each of 10 sources, a pod on every node) to 10.96.0.10:5001 (clusterIP)"
        );
    }

    #[test]
    fn rates_without_decimals() {
        assert_eq!(super::rate(14191.6277), "14,192/s");
        assert_eq!(super::rate(0.25), "0.2/s");
        assert_eq!(super::rate(0.0), "-/s");
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(14_192), "14,192");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn elapsed_in_ms_below_a_second() {
        assert_eq!(elapsed(0.0423), "42 ms");
        assert_eq!(elapsed(0.0004), "0.40 ms");
        assert_eq!(elapsed(0.9996), "1.00 s");
        assert_eq!(elapsed(1.2449), "1.24 s");
        assert_eq!(elapsed(605.2), "10m 05s");
    }

    #[test]
    fn few_values_get_a_row_each_and_zero_its_own() {
        assert_eq!(frequency_bins(&[3, 0, 3, 5], 12, 1), [(0, 0), (3, 3), (5, 5)]);
        assert_eq!(frequency_bins(&[], 12, 1), []);
    }

    #[test]
    fn many_values_are_bucketed_in_round_widths_with_the_empty_ones() {
        // 77..=139: width 5 needs 14 rows, 10 needs 7.
        let values: Vec<u64> = (77..=139).collect();
        let bins = frequency_bins(&values, 12, 1);
        assert_eq!(bins.first(), Some(&(70, 79)));
        assert_eq!(bins.last(), Some(&(130, 139)));
        assert_eq!(bins.len(), 7);
        let counts = bin_counts(&bins, values.iter().copied());
        assert_eq!(counts, [3, 10, 10, 10, 10, 10, 10]);
        // A gap stays visible as an empty row; zero stays apart from the first bucket.
        let bins = frequency_bins(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 40], 12, 1);
        assert_eq!(
            bins,
            [
                (0, 0),
                (1, 4),
                (5, 9),
                (10, 14),
                (15, 19),
                (20, 24),
                (25, 29),
                (30, 34),
                (35, 39),
                (40, 44)
            ]
        );
        assert_eq!(bin_counts(&bins, [0, 1, 2, 3, 40]), [1, 3, 0, 0, 0, 0, 0, 0, 0, 1]);
        // In units of 10: widths 10, 20, 50, 100...
        let bins = frequency_bins(&[850, 900, 1000, 1010, 1150, 1201], 3, 10);
        assert_eq!(bins, [(800, 999), (1000, 1199), (1200, 1399)]);
    }
}
