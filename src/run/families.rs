//! A measuring command's runs, one per IP family asked (`--ip-family`): the place opened once,
//! each family's run made on the backend pointed at it, and with both families what differs
//! (`crate::families`) printed and, for `--html`, one page of both runs.

use std::path::Path;
use std::process::ExitCode;

use super::Interrupt;
use super::open::{Opened, Place};
use crate::record::AnyRun;
use crate::service::IpFamily;

/// Checks `place`, raises the open-files limit, and on a runtime of its own, with Ctrl-C
/// watched, opens `place` and makes the run `one` once per entry of `families` (`None`: the
/// target's primary family, untouched), on the backend pointed at that family; `one` saves and
/// prints its run before the next starts (an interrupt skips the runs not begun) and writes its
/// own `--html` page when given one: `html` for a single run; with both families none, and the
/// page of both runs is written here once both are measured, under what differs. The backend is
/// closed (an ephemeral lab removed, a cluster cleaned up when asked) once every run is
/// reported, and the runtime goes before this returns: nothing of the runs (UDP session threads)
/// lingers into the exit. The exit code: the first run's that is not 0, else 0.
pub fn measure(
    families: &[Option<IpFamily>],
    place: Place,
    html: Option<&Path>,
    mut one: impl AsyncFnMut(&mut Opened, &Interrupt, Option<IpFamily>, Option<&Path>) -> anyhow::Result<(ExitCode, AnyRun)>,
) -> anyhow::Result<ExitCode> {
    super::open::check(&place)?;
    super::raise_nofile();
    let rt = super::runtime(0)?;
    rt.block_on(async {
        let interrupt = Interrupt::watch();
        let mut opened = Opened::open(place, &interrupt).await?;
        let code = each(families, &mut opened, &interrupt, html, async |o, family, page| {
            one(o, &interrupt, family, page).await
        })
        .await;
        opened.close().await;
        code
    })
}

async fn each(
    families: &[Option<IpFamily>],
    opened: &mut Opened,
    interrupt: &Interrupt,
    html: Option<&Path>,
    mut one: impl AsyncFnMut(&mut Opened, Option<IpFamily>, Option<&Path>) -> anyhow::Result<(ExitCode, AnyRun)>,
) -> anyhow::Result<ExitCode> {
    let (page, each) = if families.len() > 1 { (html, None) } else { (None, html) };
    let mut code = ExitCode::SUCCESS;
    let mut runs = Vec::new();
    for &family in families {
        if !runs.is_empty() && interrupt.is_set() {
            eprintln!(
                "svclb: interrupted: the {} run was not made",
                family.map_or_else(String::new, |f| f.to_string())
            );
            break;
        }
        if let Some(f) = family {
            opened.set_family(f)?;
        }
        let (c, run) = one(opened, family, each).await?;
        if code == ExitCode::SUCCESS {
            code = c;
        }
        runs.push(run);
    }
    if let [v4, v6] = runs.as_slice()
        && let Some(c) = crate::families::compare(v4, v6)
    {
        print!("{}", crate::families::describe(&c));
        if let Some(path) = page {
            code = page_code(path, &runs, code);
        }
    }
    Ok(code)
}

/// Writes the page of `runs` to `path` (after their records were saved): `code`, or 2 when it
/// cannot be written, said on stderr. The records are not affected either way.
pub fn page_code(path: &Path, runs: &[AnyRun], code: ExitCode) -> ExitCode {
    match crate::report::html::write(path, runs) {
        Ok(size) => {
            eprintln!(
                "svclb: wrote {} ({})",
                path.display(),
                crate::report::zones_bytes(size as u64)
            );
            code
        }
        Err(e) => {
            eprintln!(
                "svclb: --html {}: {e:#} (the run's record is not affected: `kubectl svclb report` makes the page from it)",
                path.display()
            );
            ExitCode::from(2)
        }
    }
}
