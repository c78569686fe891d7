//! Live lines of an affinity run: changes as they happen and the periodic stats line. On stdout
//! with the table output, on stderr otherwise (stdout then holds exactly the record); coloured on
//! a terminal.

use std::io::{IsTerminal, Write};

use super::RunFormat;
use crate::affinity::{Change, ChangeKind, PoolChange, Totals, now_ms};

pub struct Live {
    to_stdout: bool,
    color: bool,
    started_ms: u64,
}

impl Live {
    pub fn new(output: RunFormat) -> Self {
        let to_stdout = output == RunFormat::Table;
        let color = if to_stdout {
            std::io::stdout().is_terminal()
        } else {
            std::io::stderr().is_terminal()
        };
        Self {
            to_stdout,
            color,
            started_ms: now_ms(),
        }
    }

    fn print(&self, line: &str) {
        if self.to_stdout {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        } else {
            eprintln!("{line}");
        }
    }

    pub fn change(&self, c: &Change) {
        let (what, color) = match c.kind {
            ChangeKind::Pod => ("pod", "\x1b[33m"),
            ChangeKind::Address => ("address", "\x1b[36m"),
        };
        let text = format!("session {} {what} {} → {}", c.session, c.old, c.new);
        let text = if self.color {
            format!("{color}{text}\x1b[0m")
        } else {
            text
        };
        self.print(&format!("{} {text}", super::clock(c.at_ms)));
    }

    pub fn stats(&self, sessions: u32, t: &Totals) {
        let secs = now_ms().saturating_sub(self.started_ms) / 1000;
        self.print(&format!(
            "[{secs:>5}s] sessions {sessions} sent {} answered {} lost {} late {} pod changes {} address changes {}",
            t.sent, t.answered, t.lost, t.late, t.pod_changes, t.address_changes
        ));
    }

    pub fn pool(&self, p: &PoolChange) {
        let mut parts: Vec<String> = p.removed.iter().map(|n| format!("-{n}")).collect();
        parts.extend(p.added.iter().map(|n| format!("+{n}")));
        self.print(&format!(
            "{} backend pool changed: {}",
            super::clock(p.at_ms),
            parts.join(" ")
        ));
    }
}
