//! One affinity run: summary, pods, changes, pool changes, verdict.

use std::fmt::Write;

use tabled::builder::Builder;

use super::{RunFormat, elapsed, heading, num, styled, title};
use crate::affinity::{ChangeKind, Verdict};
use crate::record::AffinityRun;
use crate::storm::Stop;

/// Changes listed in the text report (the record keeps more).
const SHOWN_CHANGES: usize = 20;

/// Renders a run in `format`. JSON is exactly the run record.
pub fn affinity(run: &AffinityRun, format: RunFormat) -> anyhow::Result<String> {
    Ok(match format {
        RunFormat::Json => serde_json::to_string_pretty(run)? + "\n",
        RunFormat::Yaml => serde_saphyr::to_string(run)?,
        RunFormat::Table => text(run, false),
        RunFormat::Markdown => text(run, true),
    })
}

/// `HH:MM:SS.mmm` (UTC) of a time in ms since the epoch.
pub fn clock(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64)
        .map(|t| t.strftime("%H:%M:%S%.3f").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

fn text(run: &AffinityRun, md: bool) -> String {
    let mut out = String::new();
    title(&mut out, "Affinity", &run.tag, md);
    let t = &run.totals;
    let lost_pct = if t.sent > 0 {
        100.0 * t.lost as f64 / t.sent as f64
    } else {
        0.0
    };
    let mut b = Builder::default();
    b.push_record([
        "target",
        "proto",
        "sessions",
        "sent",
        "answered",
        "lost",
        "lost %",
        "late",
        "pod changes",
        "address changes",
        "changes during pool change",
        "elapsed",
    ]);
    b.push_record([
        format!("{} ({})", run.target.address, run.target.mode),
        run.target.protocol.to_string(),
        run.sessions.to_string(),
        t.sent.to_string(),
        t.answered.to_string(),
        t.lost.to_string(),
        num(Some(lost_pct), 3),
        t.late.to_string(),
        t.pod_changes.to_string(),
        t.address_changes.to_string(),
        run.changes_during_pool_change.to_string(),
        elapsed(run.duration_s),
    ]);
    let _ = writeln!(out, "{}", styled(b, md));
    if t.stray + t.connect_failures > 0 {
        let _ = writeln!(
            out,
            "{} stray repl(ies), {} failed connect(s)/socket(s)",
            t.stray, t.connect_failures
        );
    }

    heading(&mut out, "Pods (sessions by the pod that answered them last)", md);
    let mut b = Builder::default();
    b.push_record(["pod", "sessions", "answered"]);
    for p in &run.pods {
        b.push_record([p.name.clone(), p.sessions.to_string(), p.answered.to_string()]);
    }
    let _ = writeln!(out, "{}", styled(b, md));

    if !run.pool_changes.is_empty() {
        heading(&mut out, "Backend pool changes", md);
        let mut b = Builder::default();
        b.push_record(["time", "removed", "added"]);
        for p in &run.pool_changes {
            b.push_record([clock(p.at_ms), p.removed.join(" "), p.added.join(" ")]);
        }
        let _ = writeln!(out, "{}", styled(b, md));
    }

    let total = t.pod_changes + t.address_changes;
    if total > 0 {
        let shown = run.changes.len().min(SHOWN_CHANGES);
        heading(&mut out, &format!("Changes (first {shown} of {total})"), md);
        let mut b = Builder::default();
        b.push_record(["time", "session", "what", "old", "new", "pool changing"]);
        for c in run.changes.iter().take(SHOWN_CHANGES) {
            b.push_record([
                clock(c.at_ms),
                c.session.to_string(),
                match c.kind {
                    ChangeKind::Pod => "pod".to_string(),
                    ChangeKind::Address => "address".to_string(),
                },
                c.old.clone(),
                c.new.clone(),
                if c.during_pool_change { "yes" } else { "no" }.to_string(),
            ]);
        }
        let _ = writeln!(out, "{}", styled(b, md));
    }

    let _ = writeln!(out);
    for line in verdict_lines(run) {
        let _ = writeln!(out, "{line}");
    }
    out
}

/// The verdict as lines: `HOLDS: <the rule>`, one `VIOLATED: <reason>` each, or `INTERRUPTED: …`.
pub(super) fn verdict_lines(run: &AffinityRun) -> Vec<String> {
    if run.stopped == Some(Stop::Interrupted) {
        return vec![format!(
            "INTERRUPTED: after {:.1} s; the record is partial (on what was measured: {})",
            run.duration_s, run.verdict
        )];
    }
    match run.verdict {
        Verdict::Holds => {
            let rule = if run.params.new_connection_per_message {
                "the last 15 replies of every session came from one pod"
            } else if run.pool_known {
                "no session changed pod or reflective address while the backend pool was unchanged"
            } else {
                "no session changed pod or reflective address"
            };
            vec![format!("HOLDS: {rule}")]
        }
        Verdict::Violated => run.reasons.iter().map(|r| format!("VIOLATED: {r}")).collect(),
    }
}
