//! Saved records on disk: `compare DIR` with a corrupt or foreign file among good ones, and what
//! a save leaves in its directory.

mod common;

use std::path::Path;

use common::{Server, svclb};

const MCONNECT: &str = r#"{"hosts":{"mconnect-a":30,"mconnect-b":36,"mconnect-c":34},"connects":100,"failed_connects":0,"failed_reads":0}"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

/// Saves a real 40-connection run tagged `tag` in `dir`.
fn save_run(server: &Server, dir: &Path, tag: &str) {
    let (code, _, err) = svclb(&[
        "spread",
        "--address",
        &server.addr.to_string(),
        "--conns",
        "40",
        "--tag",
        tag,
        "--save",
        &dir.to_string_lossy(),
    ]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn compare_dir_skips_bad_files_with_a_warning_and_a_named_one_stops_it() {
    let s = Server::start("127.0.0.51", "pod-s", "n", "z");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    save_run(&s, d, "good");
    // What a save leaves: only the record, no temporary file.
    let names: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["good.json"]);
    write(d, "mconnect-ipvs.json", MCONNECT);
    let good = std::fs::read_to_string(d.join("good.json")).unwrap();
    // A record cut off midway (what an in-place save killed with SIGKILL left), a record of a
    // future version, and a killed save's temporary file, which is not even looked at.
    let corrupt = write(d, "corrupt.json", &good[..good.len() / 2]);
    let mut future: serde_json::Value = serde_json::from_str(&good).unwrap();
    future["version"] = 99.into();
    future["tag"] = "future".into();
    write(d, "future.json", &future.to_string());
    write(d, ".svclb-save-4242-0.tmp", &good[..100]);

    let (code, out, err) = svclb(&["compare", &d.to_string_lossy()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("good") && out.contains("ipvs"), "{out}");
    assert!(!out.contains("future"), "{out}");
    let warnings: Vec<&str> = err.lines().collect();
    assert_eq!(warnings.len(), 2, "{err}");
    assert!(
        warnings[0].starts_with("svclb: warning: ") && warnings[0].contains("corrupt.json is not JSON"),
        "{err}"
    );
    assert!(
        warnings[1].contains("future.json: SpreadRun version 99 is not supported"),
        "{err}"
    );
    assert!(warnings.iter().all(|w| w.ends_with("; skipped")), "{err}");

    // Named explicitly, the same file is an error: one line, exit 2.
    let (code, out, err) = svclb(&["compare", &corrupt, &d.join("good.json").to_string_lossy()]);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("corrupt.json is not JSON"),
        "{err}"
    );
    assert!(out.is_empty(), "{out}");
}

#[test]
fn compare_dir_of_only_bad_files_fails() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.json", "{\"kind\":\"SpreadRun\",\"version\":1,\"tag\":");
    write(dir.path(), "b.json", "{\"hello\": 1}");
    let (code, out, err) = svclb(&["compare", &dir.path().to_string_lossy()]);
    assert_eq!(code, 2, "{out}{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines[0].contains("a.json is not JSON"), "{err}");
    assert!(lines[1].contains("b.json: neither a svclb run record"), "{err}");
    assert_eq!(
        lines[2],
        "error: nothing to compare: all 2 .json files were skipped (see the warnings above)"
    );
    assert!(out.is_empty(), "{out}");
}
