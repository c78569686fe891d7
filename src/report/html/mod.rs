//! `kubectl svclb report` and `--html`: one self-contained HTML page for any saved runs. Charts are
//! SVG drawn here (docs/report.md says why): no script, no style sheet or font from elsewhere, and a
//! Content-Security-Policy that lets the page load nothing at all.
//!
//! Each record kind is one module with one `impl Kind`: a section per run, and panels side by side
//! when there are several runs of the kind. A new kind is a new module and one line in [`page`].

mod affinity;
mod disruption;
mod matrix;
mod spread;
mod svg;
mod zones;

use std::fmt::{self, Display, Write};

use crate::record::AnyRun;

/// Text made safe for HTML and SVG, in element content and in quoted attribute values.
pub struct Esc<'a>(pub &'a str);

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// Shorthand for [`Esc`].
fn esc(s: &str) -> Esc<'_> {
    Esc(s)
}

/// A record kind on the page. One module per kind implements it.
trait Kind {
    /// Anchor prefix: `spread`.
    const ID: &'static str;
    /// The heading of the kind's part of the page: `Spread runs`.
    const TITLE: &'static str;
    fn tag(&self) -> &str;
    /// The verdict as the text report says it, and whether it is the good one; `None` when the
    /// record has none.
    fn verdict(&self) -> Option<(&'static str, bool)>;
    /// One run: a summary and one panel (a chart) per section.
    fn run(&self, p: &mut Page);
    /// Two or more runs of the kind side by side and overlaid (as `compare`).
    fn several(runs: &[&Self], p: &mut Page);
}

/// The page as it is written: the navigation and the main part grow together.
pub(super) struct Page {
    nav: String,
    main: String,
    runs: usize,
    kinds: Vec<String>,
}

impl Page {
    fn new() -> Self {
        Self {
            nav: String::new(),
            main: String::new(),
            runs: 0,
            kinds: Vec::new(),
        }
    }

    /// The part of the page for the runs of one kind.
    fn part<K: Kind>(&mut self, runs: &[&K]) {
        if runs.is_empty() {
            return;
        }
        self.kinds.push(format!("{} {}", runs.len(), K::ID));
        let _ = write!(
            self.nav,
            "<li><a href=\"#{id}\">{title}</a> ({n})<ul>",
            id = K::ID,
            title = K::TITLE,
            n = runs.len()
        );
        let _ = writeln!(self.main, "<h2 id=\"{}\">{}</h2>", K::ID, K::TITLE);
        if runs.len() > 1 {
            let _ = writeln!(
                self.main,
                "<div class=\"several\" id=\"{}-several\"><h3>{} runs side by side</h3>",
                K::ID,
                runs.len()
            );
            K::several(runs, self);
            self.main.push_str("</div>\n");
            let _ = write!(self.nav, "<li><a href=\"#{}-several\">side by side</a></li>", K::ID);
        }
        for (i, r) in runs.iter().enumerate() {
            self.runs += 1;
            let id = format!("{}-{}", K::ID, i + 1);
            let badge = r.verdict().map(badge).unwrap_or_default();
            let _ = write!(self.nav, "<li><a href=\"#{id}\">{}</a> {badge}</li>", esc(r.tag()));
            let _ = writeln!(
                self.main,
                "<article class=\"run\" id=\"{id}\" data-kind=\"{}\"><h3>{} <code>{}</code> {badge}</h3>",
                K::ID,
                K::TITLE.trim_end_matches('s'),
                esc(r.tag())
            );
            r.run(self);
            self.main.push_str("</article>\n");
        }
        self.nav.push_str("</ul></li>");
    }

    /// A panel: a heading, one chart, and notes under it (already HTML).
    fn panel(&mut self, title: &str, chart: &str, notes: &str) {
        let _ = write!(
            self.main,
            "<section class=\"panel\"><h4>{}</h4>\n{chart}\n{notes}</section>\n",
            esc(title)
        );
    }

    /// Raw HTML into the main part.
    fn html(&mut self, s: &str) {
        self.main.push_str(s);
    }

    fn finish(self, title: &str) -> String {
        let mut out = String::with_capacity(self.main.len() + self.nav.len() + CSS.len() + 1024);
        let _ = write!(
            out,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\
             <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\"/>\
             <meta name=\"generator\" content=\"kubectl-svclb {version}\"/>\
             <title>{title}</title><style>{CSS}</style></head>\n<body>\n<header><h1>{title}</h1>\
             <p class=\"sub\">{runs} run(s): {kinds} · kubectl-svclb {version} · hover a bar, a point or a cell for its numbers</p>\
             <nav><ul>{nav}</ul></nav></header>\n<main>\n{main}</main>\n</body></html>\n",
            version = env!("CARGO_PKG_VERSION"),
            title = esc(title),
            runs = self.runs,
            kinds = self.kinds.join(", "),
            nav = self.nav,
            main = self.main,
        );
        out
    }
}

/// `PASS` in green, `FAIL` in red.
fn badge((word, good): (&'static str, bool)) -> String {
    format!(
        "<span class=\"badge {}\">{word}</span>",
        if good { "good" } else { "bad" }
    )
}

/// A run's facts: name over value, wrapping on narrow pages.
fn facts(rows: &[(&str, String)]) -> String {
    let mut s = String::from("<dl class=\"facts\">");
    for (k, v) in rows {
        let _ = write!(s, "<div><dt>{}</dt><dd>{}</dd></div>", esc(k), esc(v));
    }
    s.push_str("</dl>\n");
    s
}

/// A table: a header row, then rows; every cell escaped; numeric-looking cells right-aligned.
fn table<I, R, C>(head: &[&str], rows: I) -> String
where
    I: IntoIterator<Item = R>,
    R: IntoIterator<Item = C>,
    C: AsRef<str>,
{
    let mut s = String::from("<table class=\"rows\"><tr>");
    for h in head {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr>");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let c = c.as_ref();
            let numeric = c.starts_with(|ch: char| ch.is_ascii_digit() || ch == '-' || ch == '+' || ch == '.')
                && c.chars().any(|ch| ch.is_ascii_digit());
            if numeric {
                let _ = write!(s, "<td class=\"n\">{}</td>", esc(c));
            } else {
                let _ = write!(s, "<td>{}</td>", esc(c));
            }
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>\n");
    s
}

/// Verdict lines (`PASS: …`, `FAIL: …`) in a box coloured by the verdict.
fn verdict_box(lines: &[String], good: bool) -> String {
    let mut s = format!("<div class=\"verdict {}\">", if good { "good" } else { "bad" });
    for l in lines {
        let _ = write!(s, "<p>{}</p>", esc(l));
    }
    s.push_str("</div>\n");
    s
}

/// A note under a chart.
fn note(text: &str) -> String {
    format!("<p class=\"note\">{}</p>\n", esc(text))
}

/// The page for `runs`, in the order of the kinds (spread and mconnect files, affinity, zones,
/// matrix, disruption), each kind's runs in the order given.
pub fn page(runs: &[AnyRun]) -> String {
    let spread: Vec<spread::Spread> = runs.iter().filter_map(spread::Spread::of).collect();
    let affinity: Vec<_> = pick(runs, |r| match r {
        AnyRun::Affinity(a) => Some(&**a),
        _ => None,
    });
    let zones: Vec<_> = pick(runs, |r| match r {
        AnyRun::Zones(z) => Some(&**z),
        _ => None,
    });
    let matrix: Vec<_> = pick(runs, |r| match r {
        AnyRun::Matrix(m) => Some(&**m),
        _ => None,
    });
    let disruption: Vec<_> = pick(runs, |r| match r {
        AnyRun::Disruption(d) => Some(&**d),
        _ => None,
    });
    let mut p = Page::new();
    p.part(&spread.iter().collect::<Vec<_>>());
    p.part(&affinity);
    p.part(&zones);
    if !matrix.is_empty() {
        p.html(matrix::DEFS);
    }
    p.part(&matrix);
    p.part(&disruption);
    let title = match runs {
        [one] => format!("kubectl svclb report: {}", tag_of(one)),
        _ => format!("kubectl svclb report: {} runs", runs.len()),
    };
    p.finish(&title)
}

fn pick<'a, T: ?Sized>(runs: &'a [AnyRun], f: impl Fn(&'a AnyRun) -> Option<&'a T>) -> Vec<&'a T> {
    runs.iter().filter_map(f).collect()
}

fn tag_of(r: &AnyRun) -> &str {
    match r {
        AnyRun::Spread(s) => &s.tag,
        AnyRun::Mconnect(l) => &l.tag,
        AnyRun::Affinity(a) => &a.tag,
        AnyRun::Zones(z) => &z.tag,
        AnyRun::Matrix(m) => &m.tag,
        AnyRun::Disruption(d) => &d.tag,
    }
}

/// Writes the page for `runs` to `path` (`-`: stdout) through a temporary file beside it, so a
/// reader never sees half a page; returns its size in bytes.
pub fn write(path: &std::path::Path, runs: &[AnyRun]) -> anyhow::Result<usize> {
    use anyhow::Context;
    let html = page(runs);
    if path.as_os_str() == "-" {
        use std::io::Write;
        std::io::stdout().write_all(html.as_bytes())?;
        return Ok(html.len());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{}: give a file name for the page", path.display()))?;
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    std::fs::write(&tmp, &html).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!("cannot write {}: {e}", path.display())
    })?;
    Ok(html.len())
}

/// Checks before a run that its page can be written at `path`: a file name in a directory that
/// exists (a measurement must not end in a page that cannot be written). `flag` names the option
/// in the error.
pub fn check_path(path: &std::path::Path, flag: &str) -> anyhow::Result<()> {
    if path.as_os_str() == "-" {
        return Ok(());
    }
    if path.is_dir() || path.file_name().is_none() {
        anyhow::bail!("{flag} {}: give a file name, e.g. run.html", path.display());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        anyhow::bail!(
            "{flag} {}: directory {} does not exist: create it or give another path",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Light and dark; every colour the charts use is a class here.
const CSS: &str = r#"
:root{--fg:#1d2430;--mute:#5b6472;--line:#d9dde3;--bg:#fff;--panel:#f7f8fa;--good:#1a7f37;--bad:#c62828;--warn:#b26a00;--bar:#4c78a8}
@media (prefers-color-scheme: dark){:root{--fg:#e6e8eb;--mute:#9aa3ad;--line:#3a414b;--bg:#15191e;--panel:#1d232a;--bar:#6b9ac4}}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{padding:16px 24px;border-bottom:1px solid var(--line)}
h1{font-size:20px;margin:0 0 4px}
h2{font-size:18px;margin:28px 0 8px;padding-bottom:4px;border-bottom:2px solid var(--line)}
h3{font-size:16px;margin:18px 0 8px}
h4{font-size:14px;margin:0 0 6px}
main{padding:0 24px 40px;max-width:1280px}
.sub,.note{color:var(--mute);margin:4px 0}
.note{font-size:12.5px}
nav ul{margin:4px 0;padding-left:18px}
nav>ul>li{margin:2px 0}
nav ul ul{display:flex;flex-wrap:wrap;gap:2px 14px;padding-left:8px;list-style:none}
a{color:inherit}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,monospace}
.badge{font:600 11px system-ui,sans-serif;padding:1px 6px;border-radius:9px;color:#fff;vertical-align:middle}
.badge.good{background:var(--good)}.badge.bad{background:var(--bad)}
article.run,.several{border:1px solid var(--line);border-radius:6px;padding:4px 16px 12px;margin:14px 0}
.several{background:var(--panel)}
.panels{display:flex;flex-wrap:wrap;gap:12px}
section.panel{margin:12px 0;padding:8px 10px;border:1px solid var(--line);border-radius:4px;background:var(--bg);overflow-x:auto}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
th,td{padding:2px 8px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
td.n{text-align:right;font-variant-numeric:tabular-nums}
dl.facts{display:flex;flex-wrap:wrap;gap:4px 18px;margin:6px 0}
dl.facts div{min-width:0}
dl.facts dt{font-size:12px;color:var(--mute)}
dl.facts dd{margin:0;font-variant-numeric:tabular-nums}
th{font-weight:600;color:var(--mute)}
.verdict{border-left:4px solid;padding:4px 10px;margin:8px 0}
.verdict p{margin:2px 0}
.verdict.good{border-color:var(--good)}.verdict.bad{border-color:var(--bad)}
svg{max-width:100%;height:auto;display:block}
svg.defs{position:absolute;width:0;height:0;overflow:hidden}
svg text{fill:var(--fg);font:11px system-ui,sans-serif}
svg text.m{fill:var(--mute)}
svg text.on{fill:#fff}
svg .grid{stroke:var(--line);stroke-width:1}
svg .axis{stroke:var(--mute);stroke-width:1}
svg .bar{fill:var(--bar)}
svg .sbar{stroke:var(--bar)}svg .shi{stroke:#e45756}svg .slo{stroke:#f2a541}svg .szero{stroke:var(--bad)}
svg .hi{fill:#e45756}
svg .lo{fill:#f2a541}
svg .zero{fill:var(--bad)}
svg .band{fill:#54a24b;fill-opacity:.16}
svg .fair{stroke:var(--fg);stroke-width:1.2;stroke-dasharray:5 3}
svg .pool{stroke:#8e44ad;stroke-width:1.5;stroke-dasharray:3 2}
svg .pod{fill:#f28e2b}
svg .addr{fill:#17a2b8}
svg .excused{fill-opacity:.35}
svg .line{fill:none;stroke-width:1.6}
svg .diag{fill:none;stroke:var(--fg);stroke-width:1.5}
svg .same-node{fill:#2e7d32}
svg .same-zone{fill:#81c784}
svg .other-zone{fill:#ef8a62}
svg .left{fill:var(--bad)}
svg .f-refused{fill:#c62828}svg .f-reset{fill:#f28e2b}svg .f-timeout{fill:#8e44ad}svg .f-wrong{fill:#9c755f}svg .f-other{fill:#bab0ac}
"#;

#[cfg(test)]
mod tests;
