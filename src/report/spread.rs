//! One spread run: summary, per-backend table, frequency table, verdict.

use std::fmt::Write;

use tabled::builder::Builder;

use super::{RunFormat, frequency, heading, num, pval, styled, title};
use crate::record::SpreadRun;
use crate::stats::Verdict;

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
        let nodes: std::collections::BTreeSet<&str> = run.backends.iter().map(|b| b.node.as_str()).collect();
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
    match s.verdict {
        Verdict::Pass => {
            let _ = writeln!(
                out,
                "\nPASS: every backend within ±{}% of the fair share",
                run.params.margin_pct
            );
        }
        Verdict::Fail => {
            out.push('\n');
            for r in &s.reasons {
                let _ = writeln!(out, "FAIL: {r}");
            }
        }
    }
    out
}
