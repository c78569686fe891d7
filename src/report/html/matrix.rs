//! Matrix runs: per scenario the expected, observed and comparison grids (sources × targets),
//! coloured by cell state, each cell's attempts and why on hover; several runs' totals and the
//! cells that changed from the first.

use std::fmt::Write;

use super::svg::{self, HBar, N, Svg};
use super::{Kind, Page, esc, facts, note, table, verdict_box};
use crate::matrix::changes;
use crate::record::{CellVerdict, Mark, MatrixCell, MatrixRun, MatrixScenario};
use crate::storm::Stop;

/// Cell size in pixels.
const CELL: f64 = 16.0;

/// The cells' pictures, defined once per page and drawn with `<use>` (a full matrix has
/// thousands of cells in each of three grids). Colours are attributes: a page's style sheet does
/// not reach into what `<use>` draws.
pub const DEFS: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"defs\" width=\"0\" height=\"0\" aria-hidden=\"true\"><defs>\
<g id=\"mC\"><rect fill=\"#4caf50\" x=\"0.5\" y=\"0.5\" width=\"15\" height=\"15\"/><text x=\"8\" y=\"12\" text-anchor=\"middle\" fill=\"#111\" font-size=\"10\" font-weight=\"600\" font-family=\"monospace\">.</text></g>\
<g id=\"mR\"><rect fill=\"#ff9800\" x=\"0.5\" y=\"0.5\" width=\"15\" height=\"15\"/><text x=\"8\" y=\"12\" text-anchor=\"middle\" fill=\"#111\" font-size=\"10\" font-weight=\"600\" font-family=\"monospace\">R</text></g>\
<g id=\"mT\"><rect fill=\"#e53935\" x=\"0.5\" y=\"0.5\" width=\"15\" height=\"15\"/><text x=\"8\" y=\"12\" text-anchor=\"middle\" fill=\"#111\" font-size=\"10\" font-weight=\"600\" font-family=\"monospace\">T</text></g>\
<g id=\"mQ\"><rect fill=\"#fdd835\" x=\"0.5\" y=\"0.5\" width=\"15\" height=\"15\"/><text x=\"8\" y=\"12\" text-anchor=\"middle\" fill=\"#111\" font-size=\"10\" font-weight=\"600\" font-family=\"monospace\">?</text></g>\
<g id=\"mN\"><rect fill=\"#e0e0e0\" x=\"0.5\" y=\"0.5\" width=\"15\" height=\"15\"/><text x=\"8\" y=\"12\" text-anchor=\"middle\" fill=\"#111\" font-size=\"10\" font-weight=\"600\" font-family=\"monospace\">-</text></g>\
<g id=\"vC\"><rect fill=\"#c8e6c9\" x=\"0.5\" y=\"0.5\" width=\"15\" height=\"15\"/></g>\
<g id=\"vI\"><rect fill=\"#e53935\" x=\"0.5\" y=\"0.5\" width=\"15\" height=\"15\"/><text x=\"8\" y=\"12\" text-anchor=\"middle\" fill=\"#111\" font-size=\"10\" font-weight=\"600\" font-family=\"monospace\">!</text></g>\
<g id=\"vQ\"><rect fill=\"#fdd835\" x=\"0.5\" y=\"0.5\" width=\"15\" height=\"15\"/><text x=\"8\" y=\"12\" text-anchor=\"middle\" fill=\"#111\" font-size=\"10\" font-weight=\"600\" font-family=\"monospace\">?</text></g>\
<g id=\"vS\"><rect fill=\"#eeeeee\" x=\"0.5\" y=\"0.5\" width=\"15\" height=\"15\"/></g>\
</defs></svg>\n";

fn mark_id(m: Mark) -> &'static str {
    match m {
        Mark::Connected => "mC",
        Mark::Refused => "mR",
        Mark::Timeout => "mT",
        Mark::Inconclusive => "mQ",
        Mark::NotApplicable => "mN",
    }
}

fn verdict_id(v: CellVerdict) -> &'static str {
    match v {
        CellVerdict::Correct => "vC",
        CellVerdict::Incorrect => "vI",
        CellVerdict::Inconclusive => "vQ",
        CellVerdict::Skipped => "vS",
    }
}

fn mark_word(m: Mark) -> &'static str {
    match m {
        Mark::Connected => "connected",
        Mark::Refused => "refused",
        Mark::Timeout => "timed out",
        Mark::Inconclusive => "inconclusive",
        Mark::NotApplicable => "not a path of this source",
    }
}

impl Kind for MatrixRun {
    const ID: &'static str = "matrix";
    const TITLE: &'static str = "Matrix runs";

    fn tag(&self) -> &str {
        &self.tag
    }

    fn verdict(&self) -> Option<(&'static str, bool)> {
        Some(if self.incorrect == 0 {
            ("PASS", true)
        } else {
            ("FAIL", false)
        })
    }

    fn run(&self, p: &mut Page) {
        p.html(&facts(&[
            ("service", self.target.service.clone().unwrap_or_else(|| "-".into())),
            (
                "where",
                self.target
                    .lab
                    .as_deref()
                    .map_or(self.target.mode.clone(), |l| format!("lab {l}")),
            ),
            (
                "proxy mode",
                self.environment.proxy_mode.clone().unwrap_or_else(|| "-".into()),
            ),
            ("scenarios", self.scenarios.len().to_string()),
            ("sources", self.sources.len().to_string()),
            ("correct", self.correct.to_string()),
            ("incorrect", self.incorrect.to_string()),
            ("inconclusive", self.inconclusive.to_string()),
            ("conns per cell", self.params.conns.to_string()),
            ("elapsed", crate::report::elapsed(self.duration_s)),
        ]));
        let mut lines = vec![format!(
            "total: correct {}, incorrect {}, inconclusive {}",
            self.correct, self.incorrect, self.inconclusive
        )];
        if self.stopped == Some(Stop::Interrupted) {
            lines.push("INTERRUPTED: the record holds the scenarios measured before".into());
        }
        // What the run left out, as the text report says it: a cluster's notes (a source row or a
        // target column it could not make) and the scenarios it could not apply.
        lines.extend(self.notes.iter().map(|n| format!("note: {n}")));
        lines.extend(self.scenarios.iter().filter_map(|s| {
            s.skipped
                .as_ref()
                .map(|why| format!("{} ({}): skipped: {why}", s.name, s.description))
        }));
        p.html(&verdict_box(&lines, self.incorrect == 0));
        p.html(&note(
            "Cells: . connected, R refused, T timed out, ? inconclusive (mixed), - not a path of this source; \
             comparison: green correct, ! wrong, ? inconclusive. Hover a cell for its attempts and the rule behind it.",
        ));
        for s in self.scenarios.iter().filter(|s| s.skipped.is_none()) {
            p.panel(
                &format!(
                    "{} ({}): correct {}, incorrect {}, inconclusive {}",
                    s.name, s.description, s.correct, s.incorrect, s.inconclusive
                ),
                &grids(self, s),
                &wrong_cells(s),
            );
        }
    }

    fn several(runs: &[&Self], p: &mut Page) {
        p.html(&table(
            &[
                "tag",
                "proxy mode",
                "scenarios",
                "correct",
                "incorrect",
                "inconclusive",
                "elapsed",
            ],
            runs.iter().map(|r| {
                [
                    r.tag.clone(),
                    r.environment.proxy_mode.clone().unwrap_or_else(|| "-".into()),
                    r.scenarios.len().to_string(),
                    r.correct.to_string(),
                    r.incorrect.to_string(),
                    r.inconclusive.to_string(),
                    crate::report::elapsed(r.duration_s),
                ]
            }),
        ));
        let rows: Vec<HBar> = runs
            .iter()
            .map(|r| {
                let wrong = r.incorrect + r.inconclusive;
                HBar {
                    label: r.tag.clone(),
                    value: wrong as f64,
                    class: if r.incorrect == 0 { "bar" } else { "hi" },
                    text: format!(
                        "{} incorrect, {} inconclusive of {}",
                        r.incorrect,
                        r.inconclusive,
                        r.correct + wrong
                    ),
                    title: format!(
                        "{}: correct {}, incorrect {}, inconclusive {}",
                        r.tag, r.correct, r.incorrect, r.inconclusive
                    ),
                    mark: None,
                }
            })
            .collect();
        let mut diffs = String::new();
        let first = runs[0];
        for r in &runs[1..] {
            let d = changes(first, r);
            let _ = write!(
                diffs,
                "<p class=\"note\">{} → {}: {} cell(s) changed</p>",
                esc(&first.tag),
                esc(&r.tag),
                d.len()
            );
            if !d.is_empty() {
                let mark = |m: Option<Mark>| m.map_or("(none)", Mark::symbol);
                let verdict =
                    |v: Option<CellVerdict>| v.map_or("(none)".to_string(), |v| format!("{v:?}").to_lowercase());
                diffs.push_str(&table(
                    &["scenario", "source", "target", "observed", "before", "after"],
                    d.iter().map(|c| {
                        [
                            c.scenario.clone(),
                            c.source.clone(),
                            c.target.clone(),
                            format!("{} → {}", mark(c.before), mark(c.after)),
                            verdict(c.verdict_before),
                            verdict(c.verdict_after),
                        ]
                    }),
                ));
            }
        }
        p.panel(
            "Cells not correct, per run",
            &svg::hbars("cells not correct per run", &rows, None),
            &diffs,
        );
    }
}

/// A cell's hover text: what was expected and why, what was measured.
fn cell_title(c: &MatrixCell) -> String {
    let mut t = format!(
        "{} → {}: expected {} ({}), observed {} ({}); {}",
        c.source,
        c.target,
        c.expected.symbol(),
        mark_word(c.expected),
        c.observed.symbol(),
        mark_word(c.observed),
        format!("{:?}", c.verdict).to_lowercase()
    );
    if c.verdict != CellVerdict::Skipped {
        let _ = write!(
            t,
            "\n{} of {} attempt(s) connected, {} refused, {} timed out",
            c.ok, c.attempts, c.failures.refused, c.failures.timeout
        );
        let other = c.failures.total() - c.failures.refused - c.failures.timeout;
        if other > 0 {
            let _ = write!(t, ", {other} other failure(s)");
        }
        let _ = write!(t, "; {} round(s)", c.rounds);
        if c.answered > 0 {
            let _ = write!(
                t,
                "\nanswered by {} endpoint(s) on {}",
                c.answered,
                if c.answered_nodes.is_empty() {
                    "-".into()
                } else {
                    c.answered_nodes.join(", ")
                }
            );
        }
        if c.strays > 0 {
            let _ = write!(t, "; {} from endpoints kube-proxy would not pick", c.strays);
        }
        if let Some(n) = c.self_answered {
            let _ = write!(t, "; {n} answered by the source pod itself");
        }
    }
    let _ = write!(t, "\n{}", c.why);
    t
}

/// The three grids side by side: expected, observed (with the hover text), comparison.
fn grids(run: &MatrixRun, s: &MatrixScenario) -> String {
    let mut rows: Vec<&str> = Vec::new();
    for c in &s.cells {
        if !rows.contains(&c.source.as_str()) {
            rows.push(&c.source);
        }
    }
    let row_label = |name: &str| -> String {
        match run.sources.iter().find(|src| src.name == name) {
            Some(src) if !src.node.is_empty() && src.node != src.name => format!("{name} ({})", src.node),
            _ => name.to_string(),
        }
    };
    let labels: Vec<String> = rows.iter().map(|r| row_label(r)).collect();
    let label_w = labels.iter().map(|l| l.chars().count()).max().unwrap_or(4).clamp(4, 32) as f64 * 6.6 + 10.0;
    let head = s
        .targets
        .iter()
        .map(|t| t.name.chars().count())
        .max()
        .unwrap_or(3)
        .min(24) as f64
        * 6.4
        + 26.0;
    let grid_w = CELL * s.targets.len() as f64;
    let gap = 28.0;
    let w = label_w + 3.0 * grid_w + 2.0 * gap + 10.0;
    let h = head + CELL * rows.len() as f64 + 6.0;
    let mut svg = Svg::new(w, h, &format!("{} truth tables", s.name));
    for (g, title) in ["expected", "observed", "comparison"].iter().enumerate() {
        let x0 = label_w + g as f64 * (grid_w + gap);
        svg.text(x0, 12.0, "start", "", title);
        for (j, t) in s.targets.iter().enumerate() {
            let x = x0 + CELL * (j as f64 + 0.5);
            let _ = write!(
                svg.s,
                "<text x=\"{x}\" y=\"{y}\" transform=\"rotate(-90 {x} {y})\" class=\"m\"><title>{}</title>{}</text>",
                esc(&format!("{} {}", t.name, t.address)),
                esc(&t.name),
                x = N(x + 4.0),
                y = N(head - 4.0)
            );
        }
    }
    for (i, (r, label)) in rows.iter().zip(&labels).enumerate() {
        let y = head + CELL * i as f64;
        svg.text(label_w - 6.0, y + 12.0, "end", "", label);
        for (j, t) in s.targets.iter().enumerate() {
            let Some(c) = s.cells.iter().find(|c| c.source == *r && c.target == t.name) else {
                continue;
            };
            let x = |g: usize| label_w + g as f64 * (grid_w + gap) + CELL * j as f64;
            let _ = write!(
                svg.s,
                "<use href=\"#{}\" x=\"{}\" y=\"{}\"/><g><title>{}</title><use href=\"#{}\" x=\"{}\" y=\"{}\"/></g><use href=\"#{}\" x=\"{}\" y=\"{}\"/>",
                mark_id(c.expected),
                N(x(0)),
                N(y),
                esc(&cell_title(c)),
                mark_id(c.observed),
                N(x(1)),
                N(y),
                verdict_id(c.verdict),
                N(x(2)),
                N(y)
            );
        }
    }
    svg.finish()
}

/// The cells that are not correct, as the text report lists them.
fn wrong_cells(s: &MatrixScenario) -> String {
    let bad: Vec<&MatrixCell> = s
        .cells
        .iter()
        .filter(|c| matches!(c.verdict, CellVerdict::Incorrect | CellVerdict::Inconclusive))
        .collect();
    if bad.is_empty() {
        return String::new();
    }
    table(
        &[
            "",
            "source",
            "target",
            "expected",
            "observed",
            "connected",
            "refused",
            "timed out",
            "answered on",
            "rounds",
            "why",
        ],
        bad.iter().map(|c| {
            [
                if c.verdict == CellVerdict::Incorrect {
                    "WRONG"
                } else {
                    "INCONCLUSIVE"
                }
                .to_string(),
                c.source.clone(),
                c.target.clone(),
                c.expected.symbol().to_string(),
                c.observed.symbol().to_string(),
                format!("{} of {}", c.ok, c.attempts),
                c.failures.refused.to_string(),
                c.failures.timeout.to_string(),
                if c.answered_nodes.is_empty() {
                    "-".into()
                } else {
                    c.answered_nodes.join(",")
                },
                c.rounds.to_string(),
                c.why.clone(),
            ]
        }),
    )
}
