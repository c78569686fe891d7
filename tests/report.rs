//! `kubectl svclb report` and `--html` end to end: real runs against `serve` on loopback, saved
//! records of lab runs (tests/data/records), the page on disk.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BIN, Server, svclb};

fn records() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/records")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A page as this test reads it: the CSP that loads nothing, no script, the given texts.
fn assert_page(html: &str, texts: &[&str]) {
    assert!(html.starts_with("<!DOCTYPE html>"), "{}", &html[..html.len().min(200)]);
    assert!(html.contains("content=\"default-src 'none'; style-src 'unsafe-inline'\""));
    assert!(!html.contains("<script"));
    for t in texts {
        assert!(html.contains(t), "{t} missing");
    }
}

#[test]
fn spread_html_writes_the_page_of_the_run_it_made() {
    let server = Server::start("127.0.0.1", "pod-a", "node1", "zone-a");
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("run.html");
    let addr = server.addr.to_string();
    let (code, out, err) = svclb(&[
        "spread",
        "--address",
        &addr,
        "--conns",
        "500",
        "--tag",
        "loop",
        "--save",
        dir.path().to_str().unwrap(),
        "--html",
        page.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains(&format!("svclb: wrote {}", page.display())), "{err}");
    // The record is saved, and the page shows it.
    let record: serde_json::Value = serde_json::from_str(&read(&dir.path().join("loop.json"))).unwrap();
    assert_eq!(record["ok"], 500);
    let html = read(&page);
    assert_page(
        &html,
        &[
            "<code>loop</code>",
            &format!("<dd>{addr}</dd>"),
            "<dd>500</dd>",
            "pod-a node1: 500</title>",
            "Connections per backend, most first",
            "PASS",
        ],
    );
}

#[test]
fn html_to_a_missing_directory_is_refused_before_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = svclb(&[
        "spread",
        "--address",
        "127.0.0.1:9",
        "--save",
        dir.path().to_str().unwrap(),
        "--html",
        "/nonexistent-svclb-dir/run.html",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("--html /nonexistent-svclb-dir/run.html: directory /nonexistent-svclb-dir does not exist"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no run was made");
}

#[test]
fn a_page_that_cannot_be_written_keeps_the_record_and_exits_2() {
    let server = Server::start("127.0.0.1", "pod-a", "node1", "zone-a");
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("run.html");
    // 300 connections at 150/s: two seconds in which the page's path becomes a directory.
    let child = Command::new(BIN)
        .args([
            "spread",
            "--address",
            &server.addr.to_string(),
            "--conns",
            "300",
            "--rate",
            "150",
            "--tag",
            "kept",
            "--save",
            dir.path().to_str().unwrap(),
            "--html",
            page.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    std::fs::create_dir_all(page.join("in-the-way")).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("svclb: --html {}: cannot write", page.display())),
        "{err}"
    );
    let record: serde_json::Value = serde_json::from_str(&read(&dir.path().join("kept.json"))).unwrap();
    assert_eq!(record["ok"], 300);
    // The report went to stdout all the same, and no temporary file is left behind.
    assert!(String::from_utf8_lossy(&out.stdout).contains("PASS"));
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.iter().all(|n| !n.ends_with(".tmp")), "{left:?}");
}

#[test]
fn affinity_html_has_loss_per_interval_from_the_runs_timeline() {
    let server = Server::start("127.0.0.1", "pod-a", "node1", "zone-a");
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("aff.html");
    let (code, out, err) = svclb(&[
        "affinity",
        "--udp",
        "--address",
        &server.addr.to_string(),
        "--sessions",
        "5",
        "--interval",
        "100ms",
        "--duration",
        "2500ms",
        "--stats-interval",
        "1s",
        "--no-save",
        "--html",
        page.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let record: serde_json::Value = serde_json::from_str(&out).unwrap();
    let timeline = record["timeline"].as_array().unwrap();
    assert!(timeline.len() >= 2, "{timeline:?}");
    assert_eq!(timeline.last().unwrap()["sent"], record["sent"]);
    // The live stats line every second, on stderr with -o json.
    let stats = err.lines().filter(|l| l.contains("] sessions 5 sent ")).count();
    assert!((1..=3).contains(&stats), "{stats} stats lines:\n{err}");
    let html = read(&page);
    assert_page(&html, &["Loss per interval", "Sessions per pod", "HOLDS"]);
}

#[test]
fn report_reads_files_and_directories_and_skips_bad_files_found_in_them() {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "nftables-10k.json",
        "iptables-10k.json",
        "zones-none.json",
        "matrix-small.json",
    ] {
        std::fs::copy(records().join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("broken.json"), "{").unwrap();
    std::fs::write(dir.path().join("mconnect-ipvs.json"), r#"{"hosts":{"p1":90,"p2":110}}"#).unwrap();
    let out = dir.path().join("page.html");
    let affinity = records().join("affinity-scale.json");
    let (code, _, err) = svclb(&[
        "report",
        dir.path().to_str().unwrap(),
        affinity.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("broken.json is not JSON") && err.contains("skipped"),
        "{err}"
    );
    assert!(err.contains("(6 run(s), "), "{err}");
    let html = read(&out);
    assert_page(
        &html,
        &[
            "kubectl svclb report: 6 runs",
            "<code>nftables-10k</code>",
            "<code>iptables-10k</code>",
            "<code>ipvs</code>",
            "<code>zones-none</code>",
            "<code>matrix-small</code>",
            "<code>affinity-scale</code>",
            "3 runs side by side",
        ],
    );
    // A file named on the command line that cannot be read stops it.
    let (code, _, err) = svclb(&[
        "report",
        dir.path().join("broken.json").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("broken.json is not JSON"), "{err}");
    // -o - writes the page to stdout.
    let (code, stdout, _) = svclb(&["report", records().join("zones-none.json").to_str().unwrap(), "-o", "-"]);
    assert_eq!(code, 0);
    assert_page(&stdout, &["<code>zones-none</code>"]);
}

#[test]
fn report_open_starts_the_browser_on_the_page() {
    let dir = tempfile::tempdir().unwrap();
    // A "browser" that writes down what it was asked to open.
    let seen = dir.path().join("opened");
    let browser = dir.path().join("browser.sh");
    std::fs::write(&browser, format!("#!/bin/sh\necho \"$@\" > {}\n", seen.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(BIN)
        .args([
            "report",
            records().join("nftables-10k.json").to_str().unwrap(),
            "-o",
            "p.html",
            "--open",
        ])
        .current_dir(dir.path())
        .env("BROWSER", &browser)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let want = std::fs::canonicalize(dir.path().join("p.html")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !seen.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(read(&seen).trim(), want.to_str().unwrap());
    // --open with -o - has nothing to open.
    let (code, _, err) = svclb(&[
        "report",
        records().join("nftables-10k.json").to_str().unwrap(),
        "-o",
        "-",
        "--open",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("--open needs a file"), "{err}");
}
