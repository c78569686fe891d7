//! One spread run: summary, per-backend table, frequency table, verdict.

use std::fmt::Write;

use tabled::builder::Builder;

use super::{RunFormat, bin_counts, elapsed, frequency_bins, heading, num, pval, styled, styled_with_notes, title};
use crate::record::SpreadRun;
use crate::stats::{Stats, Verdict, p_text};
use crate::storm::{BackendCount, Stop};

/// Backends shown at each end (most and fewest connections) of a compact table.
const ENDS: usize = 5;
/// Rows of a compact frequency table (besides the row of backends that got nothing).
const FREQUENCY_ROWS: usize = 12;
/// The widest bar of the compact frequency table.
const BAR: usize = 40;

/// Renders a run in `format`. JSON is exactly the run record. The tables show every backend and
/// every connection count with `all_backends`; else, beyond 12 backends, the 5 with the most and
/// the 5 with the fewest connections, and the frequency table in at most 12 ranges.
pub fn spread(run: &SpreadRun, format: RunFormat, all_backends: bool) -> anyhow::Result<String> {
    Ok(match format {
        RunFormat::Json => serde_json::to_string_pretty(run)? + "\n",
        RunFormat::Yaml => serde_saphyr::to_string(run)?,
        RunFormat::Table => text(run, false, all_backends),
        RunFormat::Markdown => text(run, true, all_backends),
    })
}

/// The backends' rows of the table: every one (in the record's order) or, when there are more
/// than `2 * ends + 2`, the `ends` with the most connections, then the `ends` with the fewest
/// (most first, ties in the record's order), and how many are left out between them.
fn shown_backends(
    backends: &[BackendCount],
    all: bool,
    ends: usize,
) -> (Vec<&BackendCount>, Vec<&BackendCount>, usize) {
    if all || backends.len() <= 2 * ends + 2 {
        return (backends.iter().collect(), Vec::new(), 0);
    }
    let mut by_count: Vec<&BackendCount> = backends.iter().collect();
    by_count.sort_by_key(|b| std::cmp::Reverse(b.count));
    let bottom = by_count.split_off(by_count.len() - ends);
    let left_out = by_count.len() - ends;
    by_count.truncate(ends);
    (by_count, bottom, left_out)
}

/// The frequency table, `<pods> <conns>` lines (xcluster's): one per count with `all` or few
/// counts, else ranges of counts with a bar.
fn frequency_text(run: &SpreadRun, all: bool, md: bool, out: &mut String) {
    let counts: Vec<u64> = run.backends.iter().map(|b| b.count).collect();
    let bins = frequency_bins(&counts, if all { usize::MAX } else { FREQUENCY_ROWS }, 1);
    let ranged = bins.iter().any(|(lo, hi)| lo != hi);
    let title = match bins.last() {
        Some((lo, hi)) if ranged => format!(
            "Frequency (pods conns, in ranges of {}; --all-backends for every count)",
            hi - lo + 1
        ),
        _ => "Frequency (pods conns)".to_string(),
    };
    heading(out, &title, md);
    if md {
        out.push_str("```\n");
    }
    let n = bin_counts(&bins, counts.iter().copied());
    let labels: Vec<String> = bins
        .iter()
        .map(|(lo, hi)| if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") })
        .collect();
    let label_width = labels.iter().map(String::len).max().unwrap_or(0);
    let most = n.iter().copied().max().unwrap_or(0).max(1);
    for (pods, label) in n.iter().zip(&labels) {
        if ranged {
            // At most BAR marks; one for any non-empty range.
            let marks = if *pods == 0 { 0 } else { (pods * BAR).div_ceil(most) };
            let line = format!("{pods:>5} {label:<label_width$} {}", "#".repeat(marks));
            let _ = writeln!(out, "{}", line.trim_end());
        } else {
            let _ = writeln!(out, "{pods:>5} {label}");
        }
    }
    if md {
        out.push_str("```\n");
    }
}

fn text(run: &SpreadRun, md: bool, all_backends: bool) -> String {
    let mut out = String::new();
    let rate = if run.duration_s > 0.0 {
        run.conns as f64 / run.duration_s
    } else {
        0.0
    };
    title(&mut out, "Spread", &run.tag, md);
    let mut b = Builder::default();
    b.push_record([
        "target", "protocol", "conns", "ok", "failed", "elapsed", "conn/s", "p50 ms", "p90 ms", "p99 ms", "max ms",
    ]);
    b.push_record([
        format!("{} ({})", run.target.address, run.target.mode),
        run.target.protocol.to_string(),
        run.conns.to_string(),
        run.ok.to_string(),
        run.failed.total.to_string(),
        elapsed(run.duration_s),
        format!("{rate:.0}"),
        format!("{:.3}", run.latency_ms.p50),
        format!("{:.3}", run.latency_ms.p90),
        format!("{:.3}", run.latency_ms.p99),
        format!("{:.3}", run.latency_ms.max),
    ]);
    let _ = writeln!(out, "{}", styled(b, md));
    if run.failed.total > 0 {
        let kinds: Vec<String> = run
            .failed
            .kinds
            .kinds()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(out, "failed: {}", kinds.join(", "));
    }

    let (top, bottom, left_out) = shown_backends(&run.backends, all_backends, ENDS);
    if left_out == 0 {
        heading(&mut out, "Backends", md);
    } else {
        heading(
            &mut out,
            &format!(
                "Backends ({} with the most and {} with the fewest connections of {}; --all-backends for every one)",
                top.len(),
                bottom.len(),
                run.backends.len()
            ),
            md,
        );
    }
    let mut b = Builder::default();
    b.push_record(["backend", "node", "zone", "count", "share"]);
    let total = run.ok.max(1) as f64;
    let row = |be: &BackendCount| {
        [
            be.name.clone(),
            be.node.clone(),
            be.zone.clone(),
            be.count.to_string(),
            format!("{:.2}%", 100.0 * be.count as f64 / total),
        ]
    };
    for be in &top {
        b.push_record(row(be));
    }
    let mut notes = Vec::new();
    if left_out > 0 {
        notes.push(top.len() + 1);
        b.push_record([
            format!("… {left_out} more backends"),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]);
    }
    for be in &bottom {
        b.push_record(row(be));
    }
    let _ = writeln!(out, "{}", styled_with_notes(b, md, &notes));

    if !run.sources.is_empty() {
        heading(&mut out, "Sources", md);
        let mut b = Builder::default();
        b.push_record(["source", "node", "zone", "conns", "ok", "failed", "backends"]);
        for s in &run.sources {
            b.push_record([
                s.name.clone(),
                s.node.clone(),
                s.zone.clone(),
                s.conns.to_string(),
                s.ok.to_string(),
                s.failed.total.to_string(),
                s.backends.iter().filter(|b| b.count > 0).count().to_string(),
            ]);
        }
        let _ = writeln!(out, "{}", styled(b, md));

        // Source x backend node: where each source's connections landed.
        let mut nodes: Vec<&str> = run.backends.iter().map(|b| b.node.as_str()).collect();
        nodes.sort_by(|a, b| alphanumeric_sort::compare_str(a, b));
        nodes.dedup();
        heading(&mut out, "Source x backend node", md);
        let mut b = Builder::default();
        b.push_record(std::iter::once("source").chain(nodes.iter().copied()));
        for s in &run.sources {
            let mut row = vec![s.name.clone()];
            for n in &nodes {
                row.push(
                    s.backends
                        .iter()
                        .filter(|b| b.node == *n)
                        .map(|b| b.count)
                        .sum::<u64>()
                        .to_string(),
                );
            }
            b.push_record(row);
        }
        let _ = writeln!(out, "{}", styled(b, md));
    }

    frequency_text(run, all_backends, md, &mut out);

    heading(&mut out, "Summary", md);
    let s = &run.stats;
    let mut b = Builder::default();
    b.push_record([
        "backends", "min", "median", "max", "CV", "Jain", "chi2", "df", "p-value", "verdict",
    ]);
    b.push_record([
        s.backends.to_string(),
        s.min.to_string(),
        num(Some(s.median), 1),
        s.max.to_string(),
        num(Some(s.cv), 4),
        num(Some(s.jain), 4),
        num(Some(s.chi2), 2),
        s.df.to_string(),
        pval(s.p_value),
        s.verdict.to_string(),
    ]);
    let _ = writeln!(out, "{}", styled(b, md));
    out.push('\n');
    if run.stopped == Some(Stop::Interrupted) {
        let _ = writeln!(
            out,
            "INTERRUPTED: after {} of {} connections; the record is partial (on what was measured: {})",
            run.conns, run.params.conns, s.verdict
        );
    } else {
        for line in verdict_lines(s) {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

/// The verdict and the tests that decided it: `PASS: ...` or one `FAIL: ...` line per reason,
/// and a note when the sample is too small for the ±margin test.
pub(super) fn verdict_lines(s: &Stats) -> Vec<String> {
    let mut lines = match s.verdict {
        Verdict::Pass => {
            let mut held = Vec::new();
            if let (Some(p), Some(alpha)) = (s.p_value, s.alpha) {
                held.push(format!("chi-square p={} ≥ {alpha}", p_text(p)));
            }
            match &s.band {
                Some(b) if b.margin_meaningful => held.push(format!(
                    "every backend within ±{}% of the fair share [{:.1}, {:.1}]",
                    b.margin_pct, b.lo, b.hi
                )),
                Some(b) => held.push(format!(
                    "every backend within the fair-random bound [{:.0}, {:.0}]",
                    b.lo, b.hi
                )),
                None => held.push("a single backend answered every connection".to_string()),
            }
            vec![format!("PASS: {}", held.join("; "))]
        }
        Verdict::Fail => s.reasons.iter().map(|r| format!("FAIL: {r}")).collect(),
    };
    if let Some(b) = s.band.filter(|b| !b.margin_meaningful) {
        lines.push(format!(
            "note: at {:.1} connections per backend the ±{}% margin is not meaningful (a fair random balancer \
             strays beyond it by chance): the verdict is by chi-square and the fair-random bound",
            s.mean, b.margin_pct
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::verdict_lines;
    use crate::record::{Params, SpreadRun, TargetInfo};
    use crate::report::RunFormat;
    use crate::spread::{KnownBackend, build_record};
    use crate::stats::{LOOSE, evaluate};
    use crate::storm::{BackendCount, Failures, Outcome, Proto, new_histogram};

    /// A lab run of 10,000 connections over 100 backends on 10 nodes in 3 zones, the counts drawn
    /// by a fixed-seed generator (no network): what `spread --lab` prints by default.
    fn hundred_backends() -> SpreadRun {
        let mut counts = [0u64; 100];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..10_000 {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            counts[(x % 100) as usize] += 1;
        }
        let known: Vec<KnownBackend> = (1..=100)
            .map(|i| KnownBackend {
                name: format!("pod-{i:03}"),
                node: format!("node{}", (i - 1) % 10 + 1),
                zone: ["zone-a", "zone-b", "zone-c"][(i - 1) % 10 % 3].to_string(),
            })
            .collect();
        let mut latency = new_histogram();
        for us in [9_000, 12_111, 12_500, 16_591, 19_807, 23_439] {
            latency.record(us).unwrap();
        }
        let outcome = Outcome {
            attempted: 10_000,
            ok: 10_000,
            failures: Failures::default(),
            backends: known
                .iter()
                .zip(counts)
                .map(|(k, count)| BackendCount {
                    name: k.name.clone(),
                    node: k.node.clone(),
                    zone: k.zone.clone(),
                    count,
                    bytes: 0,
                })
                .collect(),
            latency,
            elapsed: std::time::Duration::from_millis(1_240),
            stopped: None,
        };
        let target = TargetInfo {
            address: "10.96.0.10:5001 (clusterIP)".into(),
            mode: "lab".into(),
            protocol: Proto::Tcp,
            service: None,
            source: Some("pod-001".into()),
            lab: Some("run8556".into()),
            ip_family: None,
        };
        let params = Params {
            conns: 10_000,
            parallel: 100,
            rate: None,
            timeout_s: 2.0,
            deadline_s: None,
            srccidr: None,
            expect_backends: None,
            margin_pct: 50.0,
            alpha: None,
            graceful_close: false,
        };
        build_record(
            "nft-10k".into(),
            jiff::Timestamp::UNIX_EPOCH,
            target,
            params,
            &outcome,
            &known,
            &LOOSE,
        )
    }

    /// Golden: the compact default table (5 + 5 backends, the counts in ranges). With
    /// `SVCLB_UPDATE_GOLDEN=1` the file is rewritten from this build's output.
    #[test]
    fn golden_compact_table_for_100_backends() {
        const GOLDEN: &str = "tests/data/spread-100-backends.txt";
        let text = super::spread(&hundred_backends(), RunFormat::Table, false).unwrap();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
        if std::env::var_os("SVCLB_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text, want,
            "the compact table changed: review, then SVCLB_UPDATE_GOLDEN=1"
        );
        // 100 backends in at most 40 lines, not ~150.
        assert!(text.lines().count() <= 40, "{} lines:\n{text}", text.lines().count());
    }

    #[test]
    fn all_backends_shows_every_row_and_every_count() {
        let run = hundred_backends();
        let all = super::spread(&run, RunFormat::Table, true).unwrap();
        for b in &run.backends {
            assert!(all.contains(&format!(" {} ", b.name)), "{} missing", b.name);
        }
        assert!(!all.contains("more backends"));
        let distinct: std::collections::BTreeSet<u64> = run.backends.iter().map(|b| b.count).collect();
        let freq = all.split("Frequency (pods conns):\n").nth(1).unwrap();
        assert_eq!(freq.lines().take_while(|l| !l.is_empty()).count(), distinct.len());
        // The compact table names the most and the fewest.
        let compact = super::spread(&run, RunFormat::Table, false).unwrap();
        let most = run.backends.iter().max_by_key(|b| b.count).unwrap();
        let fewest = run.backends.iter().min_by_key(|b| b.count).unwrap();
        assert!(compact.contains(&format!(" {} ", most.name)) && compact.contains(&format!(" {} ", fewest.name)));
        assert!(compact.contains("… 90 more backends"));
    }

    #[test]
    fn few_backends_are_all_shown() {
        let mut run = hundred_backends();
        run.backends.truncate(12);
        let text = super::spread(&run, RunFormat::Table, false).unwrap();
        assert!(!text.contains("more backends"), "{text}");
        assert!(text.contains("\nBackends:\n"), "{text}");
        assert!(run.backends.iter().all(|b| text.contains(&format!(" {} ", b.name))));
    }

    #[test]
    fn verdict_lines_say_which_test_decided() {
        let names: Vec<String> = (0..100).map(|i| format!("pod-{i:03}")).collect();
        let even = |per: u64| -> Vec<(&str, u64)> { names.iter().map(|n| (n.as_str(), per)).collect() };
        assert_eq!(
            verdict_lines(&evaluate(&even(100), 0, &LOOSE)),
            ["PASS: chi-square p=1.000 ≥ 0.001; every backend within ±50% of the fair share [50.0, 150.0]"]
        );
        let mut counts = even(30);
        counts[7].1 = 46;
        counts[8].1 = 14;
        let lines = verdict_lines(&evaluate(&counts, 0, &LOOSE));
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("PASS: chi-square p=1.000 ≥ 0.001; every backend within the fair-random bound ["),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("note: at 30.0 connections per backend the ±50% margin is not meaningful"),
            "{lines:?}"
        );
        counts[7].1 = 200;
        let lines = verdict_lines(&evaluate(&counts, 2, &LOOSE));
        assert!(lines[0].starts_with("FAIL: backend pod-007 got 6.3"), "{lines:?}");
        assert!(lines[1].starts_with("FAIL: chi-square p="), "{lines:?}");
        assert_eq!(lines[2], "FAIL: 2 connection(s) failed");
    }
}
