//! The page of each record kind from records of real lab runs (tests/data/records), of several
//! runs, and of hostile names: it parses as XML, every panel holds one chart, and the record's
//! numbers are on it. The page in headless Chromium: no console error, a screenshot.

use std::path::{Path, PathBuf};

use quick_xml::events::Event;

use super::{Esc, page};
use crate::record::{AnyRun, CellVerdict, Mark, load};
use crate::report::thousands;
use crate::stats::LOOSE;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/records")
        .join(name)
}

fn fixture(name: &str) -> AnyRun {
    load(&data(name), &LOOSE).unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

/// What a test reads off a page.
#[derive(Debug, Default)]
struct Parsed {
    /// Each panel's heading and how many charts (svg elements) it holds.
    panels: Vec<(String, usize)>,
    /// Hover texts of the charts.
    titles: Vec<String>,
    /// Every text of the page outside the charts' hover texts.
    text: String,
    articles: Vec<String>,
    several: usize,
    /// Hover texts of the lines (overlays).
    polylines: Vec<String>,
    /// `<use>` elements (matrix cells).
    uses: usize,
}

/// Parses the page strictly as XML (every element closed, names matching, references valid).
fn parse(html: &str) -> Parsed {
    let mut r = quick_xml::Reader::from_str(html);
    let mut stack: Vec<(String, String)> = Vec::new();
    let mut p = Parsed::default();
    let mut title = String::new();
    loop {
        let ev = r.read_event().unwrap_or_else(|e| {
            let at = r.buffer_position() as usize;
            panic!(
                "not well-formed at {at}: {e}\n…{}",
                &html[at.saturating_sub(300)..at.min(html.len())]
            )
        });
        let attr = |e: &quick_xml::events::BytesStart, name: &str| -> String {
            e.try_get_attribute(name)
                .unwrap()
                .map(|a| {
                    a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .unwrap()
                        .into_owned()
                })
                .unwrap_or_default()
        };
        match ev {
            Event::Start(e) => {
                let name = e.name().as_ref().to_string();
                let class = attr(&e, "class");
                if name == "section" && class == "panel" {
                    p.panels.push((String::new(), 0));
                }
                if name == "article" {
                    p.articles.push(attr(&e, "id"));
                }
                if name == "div" && class == "several" {
                    p.several += 1;
                }
                if name == "svg" && stack.iter().any(|(n, c)| n == "section" && c == "panel") {
                    p.panels.last_mut().unwrap().1 += 1;
                }
                if name == "title" {
                    title.clear();
                }
                p.text.push(' ');
                stack.push((name, class));
            }
            Event::Empty(e) => {
                let name = e.name().as_ref().to_string();
                if name == "use" {
                    p.uses += 1;
                }
                assert_ne!(name, "svg", "an empty chart");
            }
            Event::End(e) => {
                p.text.push(' ');
                let (name, _) = stack.pop().expect("an end tag without a start");
                assert_eq!(name, e.name().as_ref());
                if name == "title" && stack.iter().any(|(n, _)| n == "svg") {
                    if stack.last().is_some_and(|(n, c)| n == "path" && c == "line") {
                        p.polylines.push(title.clone());
                    }
                    p.titles.push(std::mem::take(&mut title));
                }
            }
            Event::Text(t) => text(&mut p, &stack, &mut title, &t),
            Event::GeneralRef(g) => {
                let s = match g.resolve_char_ref().unwrap() {
                    Some(c) => c.to_string(),
                    None => match &*g {
                        "amp" => "&".into(),
                        "lt" => "<".into(),
                        "gt" => ">".into(),
                        "quot" => "\"".into(),
                        "apos" => "'".into(),
                        other => panic!("unknown entity &{other};"),
                    },
                };
                text(&mut p, &stack, &mut title, &s);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
    p
}

fn text(p: &mut Parsed, stack: &[(String, String)], title: &mut String, t: &str) {
    if stack.last().is_some_and(|(n, _)| n == "title") && stack.iter().any(|(n, _)| n == "svg") {
        title.push_str(t);
        return;
    }
    if stack.last().is_some_and(|(n, _)| n == "h4")
        && let Some(last) = p.panels.last_mut()
        && stack.iter().any(|(n, c)| n == "section" && c == "panel")
    {
        last.0.push_str(t);
    }
    if stack.last().is_some_and(|(n, _)| n == "style") {
        return;
    }
    p.text.push_str(t);
}

fn has_title(p: &Parsed, want: &str) -> bool {
    p.titles.iter().any(|t| t.contains(want))
}

/// Every panel holds exactly one chart; returns the panels' headings.
fn one_chart_each(p: &Parsed) -> Vec<&str> {
    for (h, n) in &p.panels {
        assert_eq!(*n, 1, "panel {h:?} holds {n} charts");
    }
    p.panels.iter().map(|(h, _)| h.as_str()).collect()
}

#[test]
fn escapes_markup_and_quotes() {
    assert_eq!(
        Esc("<a href=\"x\">Tom's & co</a>").to_string(),
        "&lt;a href=&quot;x&quot;&gt;Tom&#39;s &amp; co&lt;/a&gt;"
    );
    assert_eq!(Esc("plain").to_string(), "plain");
}

#[test]
fn a_spread_run_shows_every_backend_the_band_the_totals_latency_and_the_verdict() {
    let run = fixture("nftables-10k.json");
    let AnyRun::Spread(r) = &run else { panic!() };
    let html = page(std::slice::from_ref(&run));
    let p = parse(&html);
    assert_eq!(p.articles, ["spread-1"]);
    let panels = one_chart_each(&p);
    for want in [
        "Connections per backend, most first",
        "Frequency: backends per connection count (pods conns)",
        "Per node",
        "Per zone",
    ] {
        assert!(panels.contains(&want), "{want} missing from {panels:?}");
    }
    // Every backend's bar, with its count and its node and zone.
    for b in &r.backends {
        let want = format!("{} {}: {}", b.name, b.node, thousands(b.count));
        assert!(has_title(&p, &want), "{want}");
    }
    // Node totals add up to what the record says.
    let node1: u64 = r.backends.iter().filter(|b| b.node == "node1").map(|b| b.count).sum();
    assert!(p.text.contains(&format!(
        "{} ({:.1}%) · 10 backends",
        thousands(node1),
        node1 as f64 / 100.0
    )));
    // The frequency bars hold every backend once.
    let in_bins: u64 = p
        .titles
        .iter()
        .filter_map(|t| {
            t.strip_suffix(" backend(s)")?
                .rsplit_once(": ")
                .map(|(_, n)| n.parse::<u64>().unwrap())
        })
        .sum();
    assert_eq!(in_bins, r.backends.len() as u64);
    for v in [r.latency_ms.p50, r.latency_ms.p99] {
        assert!(p.text.contains(&format!("{v:.3} ms")), "latency {v}");
    }
    let band = r.stats.band.unwrap();
    assert!(
        p.text.contains(&format!("[{:.1}, {:.1}]", band.lo, band.hi)),
        "{}",
        p.text
    );
    assert!(p.text.contains("10,000"));
    for line in crate::report::spread::verdict_lines(&r.stats) {
        assert!(p.text.contains(&line), "{line}");
    }
    assert!(p.text.contains(&crate::stats::p_text(r.stats.p_value.unwrap())));
    // No script, nothing to load.
    assert!(!html.contains("<script") && !html.contains(" src=\"") && !html.contains("url("));
}

#[test]
fn a_multi_source_spread_run_has_the_source_by_node_map() {
    let run = fixture("nftables-per-node.json");
    let AnyRun::Spread(r) = &run else { panic!() };
    let p = parse(&page(std::slice::from_ref(&run)));
    assert!(one_chart_each(&p).contains(&"Where each source's connections went (by backend node)"));
    for s in &r.sources {
        let to_node1: u64 = s.backends.iter().filter(|b| b.node == "node1").map(|b| b.count).sum();
        assert!(
            has_title(&p, &format!("{} → node1: {} connections", s.name, thousands(to_node1))),
            "{}",
            s.name
        );
    }
}

#[test]
fn an_affinity_run_shows_pods_changes_pool_changes_and_loss_per_interval() {
    let run = fixture("affinity-scale.json");
    let AnyRun::Affinity(r) = &run else { panic!() };
    assert!(!r.pool_changes.is_empty() && !r.changes.is_empty() && r.timeline.len() > 5);
    let p = parse(&page(std::slice::from_ref(&run)));
    let panels = one_chart_each(&p);
    for want in [
        "Sessions per pod (by the pod that answered them last)",
        "Timeline: changes and the backend pool",
        "Loss per interval",
        "Pods per session",
    ] {
        assert!(panels.contains(&want), "{want} missing from {panels:?}");
    }
    for pod in &r.pods {
        assert!(
            has_title(&p, &format!("{}: {} session(s)", pod.name, pod.sessions)),
            "{}",
            pod.name
        );
    }
    for c in &r.changes {
        let want = format!("{} session {} ", crate::report::clock(c.at_ms), c.session);
        let t = p
            .titles
            .iter()
            .find(|t| t.starts_with(&want) && t.contains(&format!("{} → {}", c.old, c.new)));
        assert!(t.is_some(), "{want}");
        assert_eq!(t.unwrap().contains("during a pool change"), c.during_pool_change);
    }
    for pc in &r.pool_changes {
        assert!(has_title(
            &p,
            &format!("{} backend pool changed", crate::report::clock(pc.at_ms))
        ));
    }
    // The intervals add up to the run's totals.
    let (mut sent, mut lost) = (0, 0);
    for t in p.titles.iter().filter(|t| t.contains(": sent ")) {
        let num = |key: &str| -> u64 {
            t.split(key)
                .nth(1)
                .unwrap()
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        sent += num(": sent ");
        lost += num(", lost ");
    }
    assert_eq!((sent, lost), (r.totals.sent, r.totals.lost));
    assert!(p.text.contains(&thousands(r.totals.sent)));
    assert!(
        p.text
            .contains("HOLDS: no session changed pod or reflective address while the backend pool was unchanged")
    );
}

#[test]
fn a_zones_run_shows_the_heat_maps_with_shares_and_bytes_and_the_cost() {
    let run = fixture("zones-prefer-same-zone.json");
    let AnyRun::Zones(r) = &run else { panic!() };
    let p = parse(&page(std::slice::from_ref(&run)));
    let panels = one_chart_each(&p);
    for want in [
        "Connections by source zone (rows) and serving zone",
        "Bytes by source zone and serving zone",
        "Connections by source node (rows) and serving node",
        "Where each source's connections were served",
    ] {
        assert!(panels.contains(&want), "{want} missing from {panels:?}");
    }
    assert!(panels.iter().any(|h| h.starts_with("Cost of the cross-zone bytes")));
    for c in &r.matrix {
        let want = format!("from {} to {}: {} (", c.from, c.to, thousands(c.conns));
        assert!(has_title(&p, &want), "{want}");
        let want = format!(
            "from {} to {}: {} (",
            c.from,
            c.to,
            crate::report::zones::bytes(c.bytes)
        );
        assert!(has_title(&p, &want), "{want}");
    }
    for c in &r.cost {
        assert!(
            p.text.contains(&crate::report::zones::usd(c.total_usd)),
            "{}",
            c.price.name
        );
    }
    assert!(p.text.contains(&format!("{:.1}%", 100.0 * r.cross_zone_share)));
}

#[test]
fn a_matrix_run_shows_three_grids_per_scenario_and_every_cell_on_hover() {
    let mut run = fixture("matrix-small.json");
    let AnyRun::Matrix(r) = &mut run else { panic!() };
    // One wrong cell, as a flushed node would give.
    let c = &mut r.scenarios[0].cells[0];
    c.observed = Mark::Timeout;
    c.verdict = CellVerdict::Incorrect;
    r.scenarios[0].incorrect += 1;
    r.incorrect += 1;
    // What a cluster run leaves out: a note, and a scenario it could not apply (no cells).
    r.notes.push("row node3 left out: no schedulable pod there".into());
    let last = r.scenarios.last_mut().expect("scenarios");
    last.skipped = Some("the cluster has no LoadBalancer controller".into());
    last.cells.clear();
    let r = r.clone();
    let p = parse(&page(std::slice::from_ref(&run)));
    let panels = one_chart_each(&p);
    assert_eq!(panels.len(), r.scenarios.len() - 1, "no panel for the skipped scenario");
    assert!(p.text.contains("note: row node3 left out: no schedulable pod there"));
    let last = r.scenarios.last().unwrap();
    assert!(p.text.contains(&format!(
        "{} ({}): skipped: the cluster has no LoadBalancer controller",
        last.name, last.description
    )));
    let cells: usize = r.scenarios.iter().map(|s| s.cells.len()).sum();
    assert_eq!(p.uses, 3 * cells, "expected, observed and comparison: one cell each");
    for s in &r.scenarios {
        for c in &s.cells {
            let want = format!("{} → {}: expected {} (", c.source, c.target, c.expected.symbol());
            let t = p
                .titles
                .iter()
                .find(|t| t.starts_with(&want))
                .unwrap_or_else(|| panic!("{want}"));
            if c.verdict != CellVerdict::Skipped {
                assert!(
                    t.contains(&format!("{} of {} attempt(s) connected", c.ok, c.attempts)),
                    "{t}"
                );
            }
        }
    }
    assert!(p.text.contains("WRONG"));
    assert!(p.text.contains("total: correct"));
}

#[test]
fn several_runs_of_each_kind_are_side_by_side_and_overlaid() {
    let dir = tempfile::tempdir().unwrap();
    let mconnect = dir.path().join("mconnect-ipvs.json");
    std::fs::write(&mconnect, r#"{"hosts":{"p1":90,"p2":110,"p3":100}}"#).unwrap();
    let mut matrix2 = fixture("matrix-small.json");
    if let AnyRun::Matrix(m) = &mut matrix2 {
        m.tag = "matrix-after".into();
        m.scenarios[0].cells[1].observed = Mark::Refused;
    }
    let runs = vec![
        fixture("nftables-10k.json"),
        fixture("iptables-10k.json"),
        fixture("nftables-per-node.json"),
        load(&mconnect, &LOOSE).unwrap(),
        fixture("affinity-scale.json"),
        fixture("affinity-scale.json"),
        fixture("zones-none.json"),
        fixture("zones-prefer-same-zone.json"),
        fixture("matrix-small.json"),
        matrix2,
    ];
    let p = parse(&page(&runs));
    assert_eq!(p.several, 4, "spread, affinity, zones, matrix");
    assert_eq!(p.articles.len(), runs.len());
    let panels = one_chart_each(&p);
    for want in [
        "Each run's backends in shares of its fair share",
        "Backends sorted by connections, overlaid (in shares of the fair share)",
        "Frequency side by side (as compare's table)",
        "Changes per run",
        "Loss per interval, overlaid",
        "Cross-zone share per run",
        "Cells not correct, per run",
    ] {
        assert!(panels.contains(&want), "{want} missing from {panels:?}");
    }
    // One line per spread run in the overlay, and the mconnect file among them.
    for tag in ["nftables-10k", "iptables-10k", "nftables-per-node", "ipvs"] {
        assert!(p.polylines.iter().any(|t| t == tag), "{tag}: {:?}", p.polylines);
    }
    assert!(
        p.text.contains("matrix-small → matrix-after: 1 cell(s) changed"),
        "{}",
        p.text
    );
    // The zones runs' difference in cross-zone share.
    assert!(p.text.contains(" pts"));
}

#[test]
fn hostile_names_stay_text() {
    let mut run = fixture("nftables-10k.json");
    let evil = "<script>alert('x')</script>&\"";
    if let AnyRun::Spread(r) = &mut run {
        r.tag = format!("t</title>{evil}");
        r.backends[0].name = evil.into();
        r.backends[1].node = evil.into();
        r.target.address = evil.into();
    }
    let html = page(&[run]);
    assert!(!html.contains("<script"), "raw markup from a record");
    let p = parse(&html);
    assert!(has_title(&p, &format!("{evil} node")));
    assert!(p.text.contains(evil));
}

#[test]
fn older_records_and_empty_runs_still_render() {
    let mut aff = fixture("affinity-scale.json");
    if let AnyRun::Affinity(a) = &mut aff {
        a.timeline.clear();
        a.changes.clear();
        a.pool_changes.clear();
        a.session_detail.clear();
    }
    let mut spread = fixture("nftables-10k.json");
    if let AnyRun::Spread(s) = &mut spread {
        s.latency_histogram_us = None;
        for b in &mut s.backends {
            b.count = 0;
        }
        s.ok = 0;
        s.stats = crate::stats::evaluate(&[("a", 0)], 10_000, &LOOSE);
    }
    let p = parse(&page(&[aff, spread]));
    one_chart_each(&p);
    assert!(p.text.contains("this record has no timeline"));
}

/// The page of 100 runs of 100 backends each: the issue's size limit (the time is measured by
/// scripts/bench.sh on a release build).
#[test]
fn a_hundred_runs_of_a_hundred_backends_stay_under_2_mb() {
    let AnyRun::Spread(base) = fixture("nftables-10k.json") else {
        panic!()
    };
    let runs: Vec<AnyRun> = (0..100)
        .map(|i| {
            let mut r = base.clone();
            r.tag = format!("run-{i:03}");
            for (k, b) in r.backends.iter_mut().enumerate() {
                b.count = 80 + ((k * 7 + i * 13) % 41) as u64;
            }
            AnyRun::Spread(r)
        })
        .collect();
    let html = page(&runs);
    assert!(html.len() < 2_000_000, "{} bytes", html.len());
    let p = parse(&html);
    assert_eq!(p.articles.len(), 100);
    one_chart_each(&p);
}

/// Headless Chromium: the browser binary, when there is one.
fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH")?
                .to_str()?
                .split(':')
                .map(|d| Path::new(d).join(name))
                .find(|p| p.is_file())
        })
}

/// Opens `page` in headless Chromium, takes a screenshot of `size` into `png`; returns the
/// console messages (the page has no script: any message is an error, e.g. a bad SVG attribute).
fn screenshot(browser: &Path, page: &Path, png: &Path, size: &str) -> Vec<String> {
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--window-size={size}"),
            &format!("--screenshot={}", png.display()),
        ])
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed: {err}");
    err.lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect()
}

#[test]
fn pages_render_in_headless_chromium_without_console_errors() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have chromium (.ci/run installs it) for this test"
        );
        eprintln!(
            "SKIPPED pages_render_in_headless_chromium_without_console_errors: no chromium on PATH (apt-get install chromium)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The check sees errors: a chart with a negative width is one.
    let canary = dir.path().join("canary.html");
    std::fs::write(
        &canary,
        "<!DOCTYPE html><html><head><title>c</title></head><body><svg><rect width=\"-1\" height=\"2\"/></svg></body></html>",
    )
    .unwrap();
    let errors = screenshot(&browser, &canary, &dir.path().join("canary.png"), "200,100");
    assert!(
        errors.iter().any(|e| e.contains("negative value")),
        "the console check is blind: {errors:?}"
    );
    let pages: Vec<(&str, Vec<AnyRun>, &str)> = vec![
        ("spread", vec![fixture("nftables-10k.json")], "1100,1000"),
        ("affinity", vec![fixture("affinity-scale.json")], "1100,1020"),
        ("zones", vec![fixture("zones-none.json")], "1100,900"),
        ("matrix", vec![fixture("matrix-small.json")], "1100,720"),
        (
            "several",
            vec![
                fixture("nftables-10k.json"),
                fixture("iptables-10k.json"),
                fixture("nftables-per-node.json"),
            ],
            "1100,1050",
        ),
    ];
    let docs = std::env::var_os("SVCLB_UPDATE_SCREENSHOTS").map(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("docs"));
    for (name, runs, size) in pages {
        let html = dir.path().join(format!("{name}.html"));
        std::fs::write(&html, page(&runs)).unwrap();
        let png = dir.path().join(format!("{name}.png"));
        let errors = screenshot(&browser, &html, &png, size);
        assert!(errors.is_empty(), "{name}: console errors:\n{}", errors.join("\n"));
        let bytes = std::fs::read(&png).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000,
            "{name}: a blank screenshot? {} bytes",
            bytes.len()
        );
        if let Some(docs) = &docs {
            std::fs::copy(&png, docs.join(format!("report-{name}.png"))).unwrap();
        }
    }
}

#[test]
fn a_disruption_run_shows_its_seconds_failures_events_and_pods() {
    let run = fixture("disruption-no-drain.json");
    let AnyRun::Disruption(r) = &run else { panic!() };
    let html = page(std::slice::from_ref(&run));
    let p = parse(&html);
    assert_eq!(p.articles, ["disruption-1"]);
    let panels = one_chart_each(&p);
    for want in [
        "New connections per second: answered, and failed by kind",
        "p99 connect latency per second (ms)",
        "Long-lived connections broken and UDP datagrams lost per second",
        "Pods answering, second by second",
    ] {
        assert!(panels.contains(&want), "{want} missing from {panels:?}");
    }
    // Every second's bar, with its counts; the failed ones with their kinds.
    for s in &r.seconds {
        let want = format!("second {}: {} new, {} ok;", s.second, s.attempts, s.ok);
        assert!(has_title(&p, &want), "{want}");
    }
    let failed = r.seconds.iter().find(|s| s.failed.total > 0).unwrap();
    assert!(has_title(
        &p,
        &format!(
            "second {}: {} new, {} ok; refused {}",
            failed.second, failed.attempts, failed.ok, failed.failed.kinds.refused
        )
    ));
    // The endpoint events on the axis, and in the table.
    for e in &r.events {
        assert!(has_title(&p, &format!("+{:.2}s {} {}", e.at_s, e.pod, e.step)), "{e:?}");
        assert!(p.text.contains(&format!("+{:.3}s", e.at_s)));
    }
    // The deleted pod's row: it answered before the action, never after it was removed.
    let gone = &r.events[0].pod;
    let removed = r
        .events
        .iter()
        .find(|e| &e.pod == gone && e.step.to_string() == "removed")
        .unwrap();
    for s in &r.seconds {
        let answered = has_title(&p, &format!("{gone}, second {}: ", s.second));
        assert_eq!(answered, s.pods.contains_key(gone), "second {}", s.second);
        if f64::from(s.second) > removed.at_s {
            assert!(!answered);
        }
    }
    assert!(
        p.text.contains("FAIL") && p.text.contains(&r.reasons[0]),
        "{}",
        r.reasons[0]
    );
    assert!(p.text.contains("counted apart"));
}

#[test]
fn disruption_runs_side_by_side_align_their_failures_on_the_action() {
    let runs = [fixture("disruption-no-drain.json"), fixture("disruption-drain-3s.json")];
    let p = parse(&page(&runs));
    assert_eq!(p.articles, ["disruption-1", "disruption-2"]);
    assert_eq!(p.several, 1);
    assert!(
        p.text
            .contains("Failed new connections per second, aligned on each run's action")
    );
    assert_eq!(
        p.polylines.iter().filter(|t| t.contains(" failed")).count(),
        2,
        "{:?}",
        p.polylines
    );
    assert!(
        p.polylines.iter().any(|t| t == "no-drain: 42 failed"),
        "{:?}",
        p.polylines
    );
    assert!(
        p.polylines.iter().any(|t| t == "drain-3s: 0 failed"),
        "{:?}",
        p.polylines
    );
}
