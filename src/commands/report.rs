//! `kubectl svclb report FILE|DIR...`: one self-contained HTML page with charts for saved runs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;

use crate::stats::Criteria;

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run records (spread, affinity, zones and matrix runs) or mconnect `-output json` files; a
    /// directory stands for its *.json files (hidden ones left out; one that cannot be read is
    /// skipped with a warning).
    #[arg(required = true, value_name = "FILE|DIR")]
    pub files: Vec<PathBuf>,
    /// Write the page to FILE (`-`: stdout). Styles are inlined and charts are SVG, so the page needs
    /// no network.
    #[arg(short = 'o', long, default_value = "report.html", value_name = "FILE")]
    pub output: PathBuf,
    /// Open the page when written: in $BROWSER when set, else with xdg-open (open on macOS).
    #[arg(long)]
    pub open: bool,
    /// Margin (±%) for judging mconnect files, which carry no verdict of their own.
    #[arg(long, default_value_t = 50.0)]
    pub margin: f64,
}

pub fn run(args: ReportArgs) -> Result<ExitCode> {
    if !(0.0..=1000.0).contains(&args.margin) {
        bail!(
            "--margin {} is out of range: give a percentage between 0 and 1000",
            args.margin
        );
    }
    if args.open && args.output.as_os_str() == "-" {
        bail!("--open needs a file: drop -o - or --open");
    }
    crate::report::html::check_path(&args.output, "-o")?;
    let criteria = Criteria {
        expect_backends: None,
        margin_pct: args.margin,
        alpha: None,
    };
    let mut runs = Vec::new();
    let mut skipped = 0;
    for input in super::compare::expand(&args.files)? {
        match crate::record::load(&input.path, &criteria) {
            Ok(r) => runs.push(r),
            Err(e) if !input.named => {
                eprintln!("svclb: warning: {e:#}; skipped");
                skipped += 1;
            }
            Err(e) => return Err(e),
        }
    }
    if runs.is_empty() {
        bail!("nothing to report: all {skipped} .json files were skipped (see the warnings above)");
    }
    let size = crate::report::html::write(&args.output, &runs)?;
    if args.output.as_os_str() != "-" {
        eprintln!(
            "svclb: wrote {} ({} run(s), {})",
            args.output.display(),
            runs.len(),
            crate::report::zones_bytes(size as u64)
        );
    }
    if args.open
        && let Err(e) = open(&args.output)
    {
        eprintln!("svclb: warning: --open: {e:#}; open {} yourself", args.output.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Starts a browser on `page` and does not wait for it: the first command of $BROWSER (a
/// colon-separated list; `%s` stands for the page, else it is appended), else the desktop's opener.
fn open(page: &Path) -> Result<()> {
    let page = std::fs::canonicalize(page)?;
    let page = page.to_string_lossy().into_owned();
    let browser = std::env::var("BROWSER").unwrap_or_default();
    let (program, mut argv): (String, Vec<String>) = match browser.split(':').find(|c| !c.trim().is_empty()) {
        Some(cmd) => {
            let mut words = cmd.split_whitespace().map(str::to_string);
            let program = words.next().unwrap_or_default();
            (program, words.collect())
        }
        None if cfg!(target_os = "macos") => ("open".into(), Vec::new()),
        None => ("xdg-open".into(), Vec::new()),
    };
    if argv.iter().any(|a| a.contains("%s")) {
        for a in &mut argv {
            *a = a.replace("%s", &page);
        }
    } else {
        argv.push(page);
    }
    std::process::Command::new(&program)
        .args(&argv)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {program}: {e}"))?;
    Ok(())
}
