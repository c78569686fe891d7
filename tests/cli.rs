//! The command line: help, kubectl flags, exit codes and one-line errors, saves and compare.

mod common;

use std::path::Path;

use assert_cmd::Command;
use common::{Server, svclb};
use predicates::prelude::*;

fn one_line_error(args: &[&str], needle: &str) {
    let (code, out, err) = svclb(args);
    assert_eq!(code, 2, "{args:?}: exit {code}, stdout {out}, stderr {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: not one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
    assert!(out.is_empty(), "{args:?} printed to stdout: {out}");
}

/// A kubeconfig whose API server is a closed loopback port (nothing is ever contacted beyond it).
const KUBECONFIG_DOWN: (&str, &str) = (
    "tests/data/kubeconfig-down.yaml",
    "context kind-down: cannot reach the API server",
);

#[test]
fn unreachable_api_is_one_line_naming_the_context() {
    one_line_error(&["status", "--kubeconfig", KUBECONFIG_DOWN.0], KUBECONFIG_DOWN.1);
    one_line_error(
        &["cleanup", "--kubeconfig", KUBECONFIG_DOWN.0, "--context", "kind-down"],
        KUBECONFIG_DOWN.1,
    );
    one_line_error(
        &["status", "--kubeconfig", KUBECONFIG_DOWN.0, "--context", "nope"],
        "nope",
    );
}

#[test]
fn manifests_print_rendered_yaml_offline() {
    let (code, out, err) = svclb(&[
        "manifests",
        "-n",
        "lb",
        "--replicas",
        "6",
        "--service-type",
        "LoadBalancer",
        "--session-affinity",
        "ClientIP",
        "--external-traffic-policy",
        "Local",
        "--traffic-distribution",
        "PreferClose",
        "--image",
        "example.org/svclb:dev",
    ]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "kind: Deployment",
        "namespace: lb",
        "replicas: 6",
        "type: LoadBalancer",
        "sessionAffinity: ClientIP",
        "timeoutSeconds: 10800",
        "externalTrafficPolicy: Local",
        "trafficDistribution: PreferClose",
        "image: example.org/svclb:dev",
    ] {
        assert!(out.contains(want), "{want} missing:\n{out}");
    }
    let (code, out, _) = svclb(&["manifests", "--rbac", "-n", "team"]);
    assert_eq!(code, 0);
    assert!(out.contains("kind: ClusterRole") && out.contains("pods/exec") && out.contains("namespace: team"));
}

#[test]
fn completion_scripts_and_the_kubectl_shim() {
    let (code, out, _) = svclb(&["completion", "bash"]);
    assert_eq!(code, 0);
    assert!(out.contains("kubectl-svclb") && out.contains("spread"));
    let (code, out, _) = svclb(&["completion", "--kubectl-shim"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("#!/usr/bin/env sh") && out.contains("kubectl-svclb __complete \"$@\""));
    let (code, out, _) = svclb(&["__complete", "spread", "--sources", ""]);
    assert_eq!(code, 0);
    assert_eq!(out, "one\nper-node\n:4\n");
}

#[test]
fn help_reads_as_a_kubectl_plugin() {
    Command::new(common::BIN)
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("Usage: kubectl svclb"))
        .stdout(predicate::str::contains("spread"))
        .stdout(predicate::str::contains("compare"))
        .stdout(predicate::str::contains("serve"));
    Command::new(common::BIN)
        .args(["spread", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Usage: kubectl svclb spread"))
        .stdout(predicate::str::contains("--kubeconfig"))
        .stdout(predicate::str::contains("--srccidr"));
}

#[test]
fn kubectl_flags_are_on_the_cluster_commands_only() {
    // Accepted after the verb of a command that talks to a cluster (kubectl refuses flags before
    // a plugin's name): the run reaches the kubeconfig named.
    one_line_error(
        &[
            "status",
            "--kubeconfig",
            KUBECONFIG_DOWN.0,
            "--context",
            "kind-down",
            "-n",
            "svclb",
            "--as",
            "someone",
        ],
        KUBECONFIG_DOWN.1,
    );
    // Listed in the cluster commands' help under their own heading, absent from the others'.
    for cmd in [&["spread"][..], &["deploy"], &["zones"], &["affinity"]] {
        let (_, out, _) = svclb(&[cmd, &["--help"]].concat());
        let heading = out.find("Cluster options:").unwrap_or_else(|| panic!("{cmd:?}: {out}"));
        assert!(out[heading..].contains("--context <NAME>"), "{cmd:?}: {out}");
    }
    for cmd in [
        &["lab", "up"][..],
        &["lab", "status"],
        &["lab", "scale"],
        &["lab", "down"],
        &["serve"],
        &["compare"],
        &["completion"],
    ] {
        let (code, out, _) = svclb(&[cmd, &["--help"]].concat());
        assert_eq!(code, 0, "{cmd:?}");
        for flag in ["--kubeconfig", "--context", "--namespace", "--as "] {
            assert!(!out.contains(flag), "{cmd:?} --help lists {flag}:\n{out}");
        }
    }
    // Given where they mean nothing: refused in one line.
    one_line_error(&["lab", "status", "--context", "x"], "unexpected argument '--context'");
    one_line_error(&["serve", "-n", "x"], "unexpected argument '-n'");
    one_line_error(&["--context", "x", "status"], "unexpected argument '--context'");
    one_line_error(
        &[
            "spread",
            "--address",
            "127.0.0.1:9",
            "--context",
            "kind-x",
            "-n",
            "svclb",
        ],
        "--context, --namespace pick(s) a cluster, and --address contacts none: drop them",
    );
    one_line_error(
        &["affinity", "--udp", "--lab", "x", "--as", "me"],
        "--as pick(s) a cluster, and --lab contacts none: drop it",
    );
    one_line_error(
        &["zones", "--lab", "x", "--kubeconfig", "/elsewhere"],
        "--kubeconfig pick(s) a cluster, and --lab contacts none",
    );
    // KUBECONFIG from the environment is no flag given: an --address run goes on.
    let s = Server::start("127.0.0.41", "pod-k", "n", "z");
    let out = Command::new(common::BIN)
        .args([
            "spread",
            "--address",
            &s.addr.to_string(),
            "--conns",
            "20",
            "--no-save",
            "-o",
            "json",
        ])
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    one_line_error(&["spread", "--address", "nonsense", "--no-save"], "want HOST:PORT");
    one_line_error(
        &["spread", "--address", "127.0.0.1:99999", "--no-save"],
        "want HOST:PORT",
    );
    one_line_error(&["spread", "--address", "127.0.0.1:5001", "--conns", "0"], "--conns 0");
    one_line_error(
        &["spread", "--address", "127.0.0.1:5001", "--parallel", "0"],
        "--parallel 0",
    );
    one_line_error(&["spread", "--address", "127.0.0.1:5001", "--rate", "-3"], "--rate");
    one_line_error(
        &["spread", "--address", "127.0.0.1:5001", "--timeout", "soon"],
        "bad duration",
    );
    one_line_error(
        &["spread", "--address", "127.0.0.1:5001", "-o", "xml"],
        "possible values",
    );
    one_line_error(
        &["spread", "--address", "127.0.0.1:5001", "--srccidr", "10.0.0.0/33"],
        "--srccidr",
    );
    // Without --address or --lab the cluster is the target; these never reach a real cluster.
    one_line_error(
        &["spread", "--conns", "5", "--kubeconfig", "/nonexistent/kubeconfig"],
        "cannot read kubeconfig /nonexistent/kubeconfig",
    );
    one_line_error(
        &["deploy", "--kubeconfig", "/nonexistent/kubeconfig"],
        "cannot read kubeconfig",
    );
    one_line_error(&["manifests", "--replicas", "0", "-n", "x"], "--replicas 0");
    one_line_error(
        &["manifests", "-n", "x", "--affinity-timeout", "5"],
        "--affinity-timeout needs --session-affinity ClientIP",
    );
    one_line_error(
        &["status", "--as-group", "g", "--kubeconfig", KUBECONFIG_DOWN.0],
        "--as-group needs --as",
    );
    one_line_error(&["compare", "-o", "pdf", "x.json"], "possible values");
    one_line_error(&["frobnicate"], "unrecognized subcommand");
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn compare_rejects_bad_files_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = write(
        dir.path(),
        "corrupt.json",
        "{\"kind\":\"SpreadRun\",\"version\":1,\"tag\":",
    );
    let other = write(dir.path(), "other.json", "{\"hello\": 1}");
    let wrong = write(
        dir.path(),
        "wrong.json",
        "{\"kind\":\"SpreadRun\",\"version\":1,\"tag\":\"x\"}",
    );
    let missing = dir.path().join("missing.json").to_string_lossy().into_owned();
    one_line_error(&["compare", &corrupt], "corrupt.json is not JSON");
    one_line_error(&["compare", &other], "other.json: neither a svclb run record");
    one_line_error(&["compare", &wrong], "wrong.json: corrupt SpreadRun record");
    one_line_error(&["compare", &missing], "cannot read");
    let empty = tempfile::tempdir().unwrap();
    one_line_error(&["compare", &empty.path().to_string_lossy()], "holds no .json files");
}

const MCONNECT: &str = r#"{"hosts":{"mconnect-a":30,"mconnect-b":36,"mconnect-c":34},"connects":100,"failed_connects":0,"failed_reads":0}"#;

#[test]
fn saves_never_overwrite_and_compare_aligns_runs() {
    let s = Server::start("127.0.0.42", "pod-s", "n", "z");
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().to_string_lossy().into_owned();
    let addr = s.addr.to_string();
    for expect in ["same", "same-2"] {
        let (code, out, err) = svclb(&[
            "spread",
            "--address",
            &addr,
            "--conns",
            "40",
            "--tag",
            "same",
            "--save",
            &save,
            "-o",
            "json",
        ]);
        assert_eq!(code, 0, "{err}");
        // -o json prints exactly the saved record.
        let printed: serde_json::Value = serde_json::from_str(&out).unwrap();
        let saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(format!("{expect}.json"))).unwrap()).unwrap();
        assert_eq!(printed, saved);
        assert_eq!(saved["tag"], expect);
    }
    let mc = write(dir.path(), "mconnect-ipvs.json", MCONNECT);
    let (code, out, err) = svclb(&["compare", &save]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("same-2"), "{out}");
    assert!(out.contains("ipvs"), "mconnect tag without prefix: {out}");
    // Frequency rows are aligned by connection count: 30, 34, 36 (mconnect) and 40 (ours).
    let freq: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("Frequency"))
        .skip(2)
        .collect();
    let first: Vec<&str> = freq.iter().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(first, ["30", "34", "36", "40"], "{out}");
    let row40: Vec<&str> = freq[3].split_whitespace().collect();
    assert_eq!(row40, ["40", "1", "1"], "{out}");

    let (code, out, _) = svclb(&[
        "compare",
        "-o",
        "json",
        &mc,
        &dir.path().join("same.json").to_string_lossy(),
    ]);
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let runs = doc["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["tag"], "ipvs");
    assert_eq!(runs[0]["conns"], 100);
    assert_eq!(runs[0]["ok"], 100);
    assert_eq!(runs[0]["stats"]["verdict"], "PASS");
    assert_eq!(runs[0]["stats"]["backends"], 3);
    assert_eq!(runs[1]["tag"], "same");
    let (_, csv, _) = svclb(&["compare", "-o", "csv", &mc]);
    assert_eq!(
        csv.lines().next(),
        Some("tag,conns,ok,failed,backends,min,max,CV,p-value,verdict")
    );
    assert!(csv.lines().nth(1).unwrap().starts_with("ipvs,100,100,0,3,30,36,"));
    let (_, md, _) = svclb(&["compare", "-o", "markdown", &mc]);
    assert!(md.contains("| tag "), "{md}");
}

#[test]
fn spread_outputs_render() {
    let s = Server::start("127.0.0.43", "pod-o", "n", "z");
    let addr = s.addr.to_string();
    for (fmt, needle) in [
        ("table", "Frequency (pods conns)"),
        ("markdown", "| backend"),
        ("yaml", "kind: SpreadRun"),
    ] {
        let (code, out, err) = svclb(&["spread", "--address", &addr, "--conns", "30", "--no-save", "-o", fmt]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(needle), "{fmt}: {out}");
    }
}

#[test]
fn spread_says_what_it_storms_first_and_a_short_run_in_ms() {
    let s = Server::start("127.0.0.44", "pod-m", "n", "z");
    let addr = s.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().to_str().unwrap();
    let (code, out, err) = svclb(&[
        "spread",
        "--address",
        &addr,
        "--conns",
        "1200",
        "--tag",
        "ms",
        "--save",
        save,
    ]);
    assert_eq!(code, 0, "{err}");
    // Before the storm (before its results and the save): how many, to where.
    let first = err.lines().next().unwrap_or_default();
    assert_eq!(first, format!("svclb: 1,200 TCP connections to {addr}"), "{err}");
    let (code, out_udp, err) = svclb(&["spread", "--address", &addr, "--conns", "20", "--udp", "--no-save"]);
    assert_eq!(code, 0, "{out_udp}");
    assert!(
        err.starts_with(&format!("svclb: 20 UDP datagrams (a socket each) to {addr}\n")),
        "{err}"
    );
    // The elapsed cell: ms below a second, seconds with 2 decimals above, as the record says.
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("ms.json")).unwrap()).unwrap();
    let secs = record["duration_s"].as_f64().unwrap();
    let header = out.lines().nth(1).unwrap();
    let row = out.lines().nth(2).unwrap();
    let at = header.find("elapsed").unwrap();
    let cell = row[..at + "elapsed".len()].rsplit("  ").next().unwrap().trim();
    let want = if secs < 0.9995 {
        format!("{} ms", (secs * 1000.0).round())
    } else {
        format!("{secs:.2} s")
    };
    assert_eq!(cell, want, "{out}");
    // -o json prints no such line: stdout is the record, stderr stays quiet.
    let (_, _, err) = svclb(&["spread", "--address", &addr, "--conns", "20", "--no-save", "-o", "json"]);
    assert!(err.is_empty(), "{err}");
}

#[test]
fn where_a_run_saves_is_checked_before_it_runs() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    // Nothing listens there: a run would take seconds; the refusal comes first.
    let started = std::time::Instant::now();
    let (code, out, err) = svclb(&["spread", "--address", "127.0.0.29:1", "--save", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--save") && err.contains("is not a directory"), "{err}");
    let long = "t".repeat(300);
    let (code, _, err) = svclb(&["affinity", "--udp", "--address", "127.0.0.29:1", "--tag", &long]);
    assert_eq!(code, 2);
    assert!(err.contains("--tag of 300 bytes"), "{err}");
    let (code, _, err) = svclb(&["spread", "--address", "127.0.0.29:1", "--deadline", "0s"]);
    assert_eq!(code, 2);
    assert!(err.contains("--deadline 0s"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
