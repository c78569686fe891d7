//! One spread run: summary, per-backend table, frequency table, verdict.

use std::fmt::Write;

use tabled::builder::Builder;

use super::{RunFormat, frequency, heading, num, pval, styled, title};
use crate::record::SpreadRun;
use crate::stats::{Stats, Verdict, p_text};
use crate::storm::Stop;

/// Renders a run in `format`. JSON is exactly the run record.
pub fn spread(run: &SpreadRun, format: RunFormat) -> anyhow::Result<String> {
    Ok(match format {
        RunFormat::Json => serde_json::to_string_pretty(run)? + "\n",
        RunFormat::Yaml => serde_saphyr::to_string(run)?,
        RunFormat::Table => text(run, false),
        RunFormat::Markdown => text(run, true),
    })
}

fn text(run: &SpreadRun, md: bool) -> String {
    let mut out = String::new();
    let rate = if run.duration_s > 0.0 {
        run.conns as f64 / run.duration_s
    } else {
        0.0
    };
    title(&mut out, "Spread", &run.tag, md);
    let mut b = Builder::default();
    b.push_record([
        "target", "protocol", "conns", "ok", "failed", "seconds", "conn/s", "p50 ms", "p90 ms", "p99 ms", "max ms",
    ]);
    b.push_record([
        format!("{} ({})", run.target.address, run.target.mode),
        run.target.protocol.to_string(),
        run.conns.to_string(),
        run.ok.to_string(),
        run.failed.total.to_string(),
        format!("{:.2}", run.duration_s),
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

    heading(&mut out, "Backends", md);
    let mut b = Builder::default();
    b.push_record(["backend", "node", "zone", "count", "share"]);
    let total = run.ok.max(1) as f64;
    for be in &run.backends {
        b.push_record([
            be.name.clone(),
            be.node.clone(),
            be.zone.clone(),
            be.count.to_string(),
            format!("{:.2}%", 100.0 * be.count as f64 / total),
        ]);
    }
    let _ = writeln!(out, "{}", styled(b, md));

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

    heading(&mut out, "Frequency (pods conns)", md);
    if md {
        out.push_str("```\n");
    }
    for (conns, pods) in frequency(run.backends.iter().map(|b| b.count)) {
        let _ = writeln!(out, "{pods:>5} {conns}");
    }
    if md {
        out.push_str("```\n");
    }

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
fn verdict_lines(s: &Stats) -> Vec<String> {
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
    use crate::stats::{LOOSE, evaluate};

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
