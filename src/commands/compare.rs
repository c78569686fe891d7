//! `kubectl svclb compare FILE...`: saved runs side by side.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::record::{AnyRun, Loaded};
use crate::report::{self, CompareFormat, CompareTable, CompareView};
use crate::stats::Criteria;

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Run records (spread, affinity, zones, matrix and disruption runs) or mconnect `-output json` files; a directory stands for its *.json files
    /// (hidden ones left out; one that cannot be read is skipped with a warning).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Output format: table and markdown print every table that has runs (spread: summary and
    /// frequency); csv prints one table, one header (the summary of the one kind of run given, or
    /// the one --table names); json and yaml hold everything.
    #[arg(short = 'o', long, value_enum, default_value_t = CompareFormat::Table)]
    pub output: CompareFormat,
    /// Print this table only: spread runs' `summary`, `frequency` (backends per connection count,
    /// runs side by side) or `backends` (one row per run and backend), or the `affinity` or
    /// `zones` runs' summary.
    #[arg(long, value_enum)]
    pub table: Option<CompareTable>,
    /// Frequency table: a row for every connection count (by default at most 12 ranges, in shares
    /// of each run's fair share when the runs differ in connections or backends).
    #[arg(long)]
    pub all_backends: bool,
    /// Margin (±%) for judging mconnect files, which carry no verdict of their own.
    #[arg(long, default_value_t = 50.0)]
    pub margin: f64,
}

/// A file to compare. A bad file the user named stops the command; a bad one found in a directory
/// is skipped with a warning.
pub(super) struct Input {
    pub path: PathBuf,
    pub named: bool,
}

/// Named files as given; a directory's `*.json` files, hidden ones (a save's temporary file, an
/// editor's) left out.
pub(super) fn expand(files: &[PathBuf]) -> Result<Vec<Input>> {
    let mut out = Vec::new();
    for f in files {
        if f.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(f)
                .with_context(|| format!("cannot read directory {}", f.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
                .collect();
            if inside.is_empty() {
                bail!(
                    "{} holds no .json files: give run records or mconnect JSON files",
                    f.display()
                );
            }
            inside.sort();
            out.extend(inside.into_iter().map(|path| Input { path, named: false }));
        } else {
            out.push(Input {
                path: f.clone(),
                named: true,
            });
        }
    }
    Ok(out)
}

pub fn run(args: CompareArgs) -> Result<ExitCode> {
    if !(0.0..=1000.0).contains(&args.margin) {
        bail!(
            "--margin {} is out of range: give a percentage between 0 and 1000",
            args.margin
        );
    }
    let criteria = Criteria {
        expect_backends: None,
        margin_pct: args.margin,
        alpha: None,
    };
    let (mut spread, mut affinity, mut zones, mut matrix) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut disruption = Vec::new();
    let mut skipped = 0;
    for input in expand(&args.files)? {
        match crate::record::load(&input.path, &criteria) {
            Ok(AnyRun::Spread(r)) => spread.push(Loaded::from(*r)),
            Ok(AnyRun::Mconnect(r)) => spread.push(*r),
            Ok(AnyRun::Affinity(r)) => affinity.push(*r),
            Ok(AnyRun::Disruption(r)) => disruption.push(*r),
            Ok(AnyRun::Zones(r)) => zones.push(*r),
            Ok(AnyRun::Matrix(r)) => matrix.push(*r),
            Err(e) if !input.named => {
                eprintln!("svclb: warning: {e:#}; skipped");
                skipped += 1;
            }
            Err(e) => return Err(e),
        }
    }
    // Runs of one IP family together (the order given kept within each), IPv4 first; records
    // without a family are from before IPv6 runs existed: IPv4.
    let family = |t: Option<&crate::record::TargetInfo>| t.and_then(|t| t.ip_family).unwrap_or_default();
    spread.sort_by_key(|r| family(r.target.as_ref()));
    affinity.sort_by_key(|r| family(Some(&r.target)));
    zones.sort_by_key(|r| family(Some(&r.target)));
    matrix.sort_by_key(|r| family(Some(&r.target)));
    disruption.sort_by_key(|r| family(Some(&r.target)));
    if spread.is_empty() && affinity.is_empty() && zones.is_empty() && matrix.is_empty() && disruption.is_empty() {
        bail!("nothing to compare: all {skipped} .json files were skipped (see the warnings above)");
    }
    let others = !(spread.is_empty() && affinity.is_empty() && zones.is_empty());
    if others && !matrix.is_empty() && args.output == CompareFormat::Csv {
        bail!("-o csv writes one table: compare the matrix runs apart from the other runs");
    }
    if (others || !matrix.is_empty()) && !disruption.is_empty() && args.output == CompareFormat::Csv {
        bail!("-o csv writes one table: compare the disruption runs apart from the other runs");
    }
    if others {
        let view = CompareView {
            table: args.table,
            all_backends: args.all_backends,
        };
        print!("{}", report::compare(&spread, &affinity, &zones, args.output, view)?);
    }
    if !matrix.is_empty() {
        print!("{}", report::matrix_compare(&matrix, args.output)?);
    }
    if !disruption.is_empty() {
        print!("{}", report::disruption_compare(&disruption, args.output)?);
    }
    Ok(ExitCode::SUCCESS)
}
