//! One matrix run: per scenario the truth table (sources × targets), its summary, and every cell
//! that is not correct with what was expected, why and what was measured; the JUnit file for CI;
//! and the cells that changed between runs (`compare`).

use std::fmt::Write;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use tabled::builder::Builder;

use super::{CompareFormat, RunFormat, heading, styled, title};
use crate::matrix::{CellChange, changes};
use crate::record::{CellVerdict, Mark, MatrixCell, MatrixRun, MatrixScenario};
use crate::service::TrafficDistribution;

/// Renders a run in `format`. JSON is exactly the run record.
pub fn matrix(run: &MatrixRun, format: RunFormat) -> anyhow::Result<String> {
    Ok(match format {
        RunFormat::Json => serde_json::to_string_pretty(run)? + "\n",
        RunFormat::Yaml => serde_saphyr::to_string(run)?,
        RunFormat::Table => text(run, false),
        RunFormat::Markdown => text(run, true),
    })
}

/// `zone-a` → `a`, `node3` → `3`: what fits a cell.
fn short(name: &str) -> &str {
    name.strip_prefix("zone-")
        .or_else(|| name.strip_prefix("node"))
        .unwrap_or(name)
}

/// A cell as the table shows it: the observed mark, `!` when wrong; with trafficDistribution
/// the zones (PreferSameZone) or nodes (PreferSameNode) that answered.
fn cell_text(s: &MatrixScenario, c: &MatrixCell) -> String {
    let mut t = c.observed.symbol().to_string();
    if c.observed == Mark::Connected {
        let (list, when) = match s.options.traffic_distribution {
            Some(TrafficDistribution::PreferSameNode) => (&c.answered_nodes, true),
            Some(_) => (&c.answered_zones, true),
            None => (&c.answered_zones, false),
        };
        if when {
            t += &list.iter().map(|n| short(n)).collect::<Vec<_>>().join("+");
        }
    }
    if c.verdict == CellVerdict::Incorrect {
        t.push('!');
    }
    t
}

fn summary(s: &MatrixScenario) -> String {
    format!(
        "correct {}, incorrect {}, inconclusive {}",
        s.correct, s.incorrect, s.inconclusive
    )
}

fn table(out: &mut String, s: &MatrixScenario, markdown: bool) {
    let mut rows: Vec<String> = Vec::new();
    for c in &s.cells {
        if !rows.contains(&c.source) {
            rows.push(c.source.clone());
        }
    }
    let mut b = Builder::default();
    b.push_record(std::iter::once("source".to_string()).chain(s.targets.iter().map(|t| t.name.clone())));
    for r in &rows {
        let mut rec = vec![r.clone()];
        for t in &s.targets {
            rec.push(
                s.cells
                    .iter()
                    .find(|c| &c.source == r && c.target == t.name)
                    .map_or_else(|| " ".into(), |c| cell_text(s, c)),
            );
        }
        b.push_record(rec);
    }
    let _ = writeln!(out, "{}", styled(b, markdown));
}

fn text(run: &MatrixRun, markdown: bool) -> String {
    let mut out = String::new();
    title(&mut out, "Matrix", &run.tag, markdown);
    let _ = writeln!(
        out,
        "{} on {}{}: {} scenario(s), {} source(s), {:.1} s{}",
        run.target.service.as_deref().unwrap_or("service"),
        match (&run.target.lab, &run.environment.context) {
            (Some(l), _) => format!("lab {l}"),
            (None, Some(c)) => format!("context {c}"),
            (None, None) => run.target.mode.clone(),
        },
        run.environment
            .proxy_mode
            .as_deref()
            .map_or(String::new(), |m| format!(" ({m})")),
        run.scenarios.len(),
        run.sources.len(),
        run.duration_s,
        if run.stopped.is_some() { " (interrupted)" } else { "" },
    );
    let _ = writeln!(
        out,
        "cells: . connected  R refused  T timed out  ? inconclusive  - not a path of this source  ! wrong; \
         with trafficDistribution the zones (PreferSameZone) or nodes (PreferSameNode) that answered"
    );
    for n in &run.notes {
        let _ = writeln!(out, "note: {n}");
    }
    for s in &run.scenarios {
        if let Some(why) = &s.skipped {
            heading(
                &mut out,
                &format!("{} ({}): skipped: {why}", s.name, s.description),
                markdown,
            );
            continue;
        }
        heading(
            &mut out,
            &format!("{} ({}): {}", s.name, s.description, summary(s)),
            markdown,
        );
        table(&mut out, s, markdown);
        for c in s
            .cells
            .iter()
            .filter(|c| matches!(c.verdict, CellVerdict::Incorrect | CellVerdict::Inconclusive))
        {
            let resolved = if c.resolved.is_empty() {
                String::new()
            } else {
                format!(
                    "; resolved to {}",
                    c.resolved.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
                )
            };
            let _ = writeln!(
                out,
                "  {} {} -> {}: expected {}, observed {} ({} of {} connected, {} refused, {} timed out; answered by {} endpoint(s) on {}{resolved}; {} round(s)): {}",
                if c.verdict == CellVerdict::Incorrect {
                    "WRONG"
                } else {
                    "INCONCLUSIVE"
                },
                c.source,
                c.target,
                c.expected.symbol(),
                c.observed.symbol(),
                c.ok,
                c.attempts,
                c.failures.refused,
                c.failures.timeout,
                c.answered,
                if c.answered_nodes.is_empty() {
                    "-".into()
                } else {
                    c.answered_nodes.join(",")
                },
                c.rounds,
                c.why
            );
        }
    }
    let _ = writeln!(
        out,
        "\ntotal: correct {}, incorrect {}, inconclusive {}",
        run.correct, run.incorrect, run.inconclusive
    );
    out
}

/// A JUnit XML report: one test suite per scenario, one test case per source × target
/// measured (cells that are not a path of their source are left out); a wrong cell is a
/// failure, an inconclusive one an error.
pub fn junit(run: &MatrixRun) -> anyhow::Result<String> {
    let mut report = Report::new(format!("kubectl-svclb matrix {}", run.tag));
    for s in &run.scenarios {
        let mut suite = TestSuite::new(s.name.clone());
        if let Some(why) = &s.skipped {
            let mut st = TestCaseStatus::skipped();
            st.set_message(why.clone());
            let mut case = TestCase::new("scenario", st);
            case.set_classname(s.name.clone());
            suite.add_test_case(case);
        }
        for c in s.cells.iter().filter(|c| c.verdict != CellVerdict::Skipped) {
            let status = match c.verdict {
                CellVerdict::Incorrect => {
                    let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    // Same mark, yet wrong (endpoints, a DNS answer): the first clause of why.
                    st.set_message(if c.expected == c.observed {
                        c.why.split(';').next().unwrap_or_default().to_string()
                    } else {
                        format!("expected {}, observed {}", c.expected.symbol(), c.observed.symbol())
                    });
                    st.set_description(c.why.clone());
                    st
                }
                CellVerdict::Inconclusive => {
                    let mut st = TestCaseStatus::non_success(NonSuccessKind::Error);
                    st.set_message(format!("inconclusive after {} round(s)", c.rounds));
                    st.set_description(c.why.clone());
                    st
                }
                _ => TestCaseStatus::success(),
            };
            let mut case = TestCase::new(format!("{} -> {}", c.source, c.target), status);
            case.set_classname(s.name.clone());
            suite.add_test_case(case);
        }
        report.add_test_suite(suite);
    }
    Ok(report.to_string()?)
}

/// The cells that changed from the first matrix run to each of the others.
pub fn matrix_compare(runs: &[MatrixRun], format: CompareFormat) -> anyhow::Result<String> {
    let Some(first) = runs.first() else {
        return Ok(String::new());
    };
    let diffs: Vec<(&str, Vec<CellChange>)> = runs[1..].iter().map(|r| (r.tag.as_str(), changes(first, r))).collect();
    let mark = |m: Option<Mark>| m.map_or("(none)", Mark::symbol);
    let verdict = |v: Option<CellVerdict>| v.map_or("(none)".into(), |v| format!("{v:?}").to_lowercase());
    let rows = |d: &[CellChange]| -> Vec<[String; 6]> {
        d.iter()
            .map(|c| {
                [
                    c.scenario.clone(),
                    c.source.clone(),
                    c.target.clone(),
                    format!("{} -> {}", mark(c.before), mark(c.after)),
                    verdict(c.verdict_before),
                    verdict(c.verdict_after),
                ]
            })
            .collect()
    };
    let mut out = String::new();
    match format {
        CompareFormat::Json | CompareFormat::Yaml => {
            let doc: Vec<serde_json::Value> = diffs
                .iter()
                .map(|(tag, d)| {
                    serde_json::json!({
                        "from": first.tag, "to": tag,
                        "changed": rows(d).iter().map(|r| serde_json::json!({
                            "scenario": r[0], "source": r[1], "target": r[2], "observed": r[3],
                            "verdict_before": r[4], "verdict_after": r[5],
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            out = if format == CompareFormat::Json {
                serde_json::to_string_pretty(&doc)? + "\n"
            } else {
                serde_saphyr::to_string(&doc)?
            };
        }
        CompareFormat::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record([
                "from",
                "to",
                "scenario",
                "source",
                "target",
                "observed",
                "verdict_before",
                "verdict_after",
            ])?;
            for (tag, d) in &diffs {
                for r in rows(d) {
                    w.write_record(
                        [first.tag.as_str(), tag]
                            .into_iter()
                            .chain(r.iter().map(String::as_str)),
                    )?;
                }
            }
            out = String::from_utf8(w.into_inner()?)?;
        }
        CompareFormat::Table | CompareFormat::Markdown => {
            let markdown = format == CompareFormat::Markdown;
            for r in runs {
                let _ = writeln!(
                    out,
                    "matrix {}: {} scenario(s), correct {}, incorrect {}, inconclusive {}{}",
                    r.tag,
                    r.scenarios.len(),
                    r.correct,
                    r.incorrect,
                    r.inconclusive,
                    r.environment
                        .proxy_mode
                        .as_deref()
                        .map_or(String::new(), |m| format!(" ({m})"))
                );
            }
            for (tag, d) in &diffs {
                heading(
                    &mut out,
                    &format!("cells changed from {} to {tag}: {}", first.tag, d.len()),
                    markdown,
                );
                if d.is_empty() {
                    continue;
                }
                let mut b = Builder::default();
                b.push_record(["scenario", "source", "target", "observed", "before", "after"]);
                for r in rows(d) {
                    b.push_record(r);
                }
                let _ = writeln!(out, "{}", styled(b, markdown));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::{Measured, build, scenario, skipped, variants};
    use crate::record::{CellVerdict, Environment, MatrixParams, TargetInfo};
    use crate::storm::{Failures, Proto};

    /// A cluster run: the default scenario with one wrong DNS cell, terminating skipped, a note.
    fn run() -> MatrixRun {
        let v = variants();
        let cell = MatrixCell {
            source: "node-2".into(),
            target: "headless".into(),
            expected: Mark::Connected,
            observed: Mark::Connected,
            verdict: CellVerdict::Incorrect,
            attempts: 3,
            ok: 3,
            failures: Failures::default(),
            rounds: 1,
            allowed_nodes: vec!["node-1".into(), "node-2".into()],
            answered: 1,
            answered_nodes: vec!["node-1".into()],
            answered_zones: vec![],
            strays: 0,
            self_answered: None,
            resolved: vec!["10.244.1.5".parse().unwrap()],
            why: "resolved to [10.244.1.5], expected [10.244.1.5, 10.244.2.5]".into(),
        };
        build(Measured {
            tag: "mx".into(),
            started_at: jiff::Timestamp::UNIX_EPOCH,
            duration_s: 9.0,
            target: TargetInfo {
                address: "2 scenario(s)".into(),
                mode: "cluster".into(),
                protocol: Proto::Tcp,
                service: Some("svclb/svclb-mx-*".into()),
                source: None,
                lab: None,
                ip_family: None,
            },
            params: MatrixParams {
                protocols: vec![Proto::Tcp],
                test: None,
                conns: 3,
                attempts: 3,
                timeout_s: 1.0,
                parallel: 64,
            },
            sources: vec![],
            scenarios: vec![
                scenario(&v[0], Proto::Tcp, vec![], vec![cell], 1.0),
                skipped(&v[6], Proto::Tcp, "not made on a cluster".into()),
            ],
            stopped: None,
            notes: vec!["client row left out: this machine does not reach node-1's NodePort".into()],
            environment: Environment {
                context: Some("kind-svclb".into()),
                ..Environment::local()
            },
        })
    }

    #[test]
    fn a_cluster_run_says_what_it_left_out_skipped_and_resolved() {
        let r = run();
        let text = matrix(&r, RunFormat::Table).unwrap();
        assert!(text.contains("svclb/svclb-mx-* on context kind-svclb"), "{text}");
        assert!(
            text.contains("note: client row left out: this machine does not reach node-1's NodePort"),
            "{text}"
        );
        assert!(
            text.contains(
                "terminating/tcp (every endpoint terminating, still serving): skipped: not made on a cluster"
            ),
            "{text}"
        );
        assert!(text.contains("WRONG node-2 -> headless"), "{text}");
        assert!(
            text.contains("on node-1; resolved to 10.244.1.5; 1 round(s))"),
            "{text}"
        );
        // JUnit: the wrong cell fails, the skipped scenario is one skipped case with its reason.
        let xml = junit(&r).unwrap();
        assert!(
            xml.contains(r#"<testsuite name="terminating/tcp" tests="1" skipped="1" errors="0" failures="0">"#),
            "{xml}"
        );
        assert!(xml.contains(r#"<skipped message="not made on a cluster"/>"#), "{xml}");
        assert!(
            xml.contains(r#"<failure message="resolved to [10.244.1.5], expected [10.244.1.5, 10.244.2.5]">"#),
            "{xml}"
        );
    }
}
