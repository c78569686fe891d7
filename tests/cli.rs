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
    let (code, out, err) = svclb(&[
        "manifests",
        "-n",
        "lb",
        "--ip-family-policy",
        "preferdualstack",
        "--ip-families",
        "IPv6,ipv4",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("ipFamilyPolicy: PreferDualStack") && out.contains("ipFamilies:\n  - IPv6\n  - IPv4\n"),
        "{out}"
    );
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
    for cmd in [&["spread"][..], &["deploy"], &["zones"], &["affinity"], &["matrix"]] {
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
        &["report"],
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
    one_line_error(
        &["matrix", "--lab", "x", "-n", "svclb"],
        "--namespace pick(s) a cluster, and --lab contacts none: drop it",
    );
    // matrix's own cluster flags mean nothing on a lab either.
    one_line_error(&["matrix", "--lab", "x", "--lb-wait", "5s"], "cannot be used with");
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
    one_line_error(
        &[
            "matrix",
            "--test",
            "^default/tcp$",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
        ],
        "cannot read kubeconfig /nonexistent/kubeconfig",
    );
    one_line_error(
        &[
            "matrix",
            "--cluster-domain",
            "Not_A_Domain",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
        ],
        "--cluster-domain \"Not_A_Domain\": give a DNS domain",
    );
    one_line_error(&["manifests", "--replicas", "0", "-n", "x"], "--replicas 0");
    for (args, needle) in [
        (
            &["--ip-family-policy", "SingleStack", "--ip-families", "IPv4,IPv6"][..],
            "SingleStack takes one family",
        ),
        (
            &["--ip-family-policy", "PreferDualStack", "--ip-families", "IPv6,IPv6"],
            "give each family once",
        ),
        (&["--ip-families", "IPv4,IPv6"], "two families need --ip-family-policy"),
        (&["--ip-families", "IPv5"], "possible values: IPv4, IPv6"),
        (&["--ip-family-policy", "DualStack"], "possible values: SingleStack"),
    ] {
        let mut a = vec!["manifests", "-n", "x"];
        a.extend_from_slice(args);
        one_line_error(&a, needle);
    }
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
    // The summary says where each run went, how, and over what.
    let summary: Vec<&str> = out.lines().take_while(|l| !l.is_empty()).collect();
    assert!(
        summary[1]
            .split_whitespace()
            .collect::<Vec<_>>()
            .starts_with(&["tag", "target", "mode", "proto"]),
        "{out}"
    );
    let row = |tag: &str, n: usize| -> Vec<&str> {
        let line = summary.iter().find(|l| l.trim_start().starts_with(tag)).unwrap();
        line.split_whitespace().take(n).collect()
    };
    // The mode says the IP family of the address the run went to.
    assert_eq!(
        row("same-2", 5),
        ["same-2", addr.as_str(), "address", "ipv4", "tcp"],
        "{out}"
    );
    assert_eq!(row("ipvs", 4), ["ipvs", "-", "mconnect", "-"], "{out}");
    // The runs differ in size (40 connections to 1 backend, 100 to 3): the frequency rows are
    // shares of each run's fair share, so they line up: 30, 34 and 36 of 33.3, and 40 of 40.
    let freq = |out: &str| -> Vec<Vec<String>> {
        out.lines()
            .skip_while(|l| !l.starts_with("Frequency"))
            .skip(2)
            .take_while(|l| !l.is_empty())
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect()
    };
    assert!(
        out.contains("Frequency (backends per share of their run's fair share"),
        "{out}"
    );
    let rows = freq(&out);
    let first: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(first, ["0.900", "1.000", "1.020", "1.080"], "{out}");
    assert_eq!(rows[1], ["1.000", "1", "1"], "{out}");
    // --all-backends: one row per connection count, as xcluster's table (sparse here).
    let (code, out, _) = svclb(&["compare", &save, "--all-backends"]);
    assert_eq!(code, 0);
    let rows = freq(&out);
    let first: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(first, ["30", "34", "36", "40"], "{out}");
    assert_eq!(rows[3], ["40", "1", "1"], "{out}");

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
        Some("tag,target,mode,proto,conns,ok,failed,backends,min,max,CV,p-value,verdict")
    );
    assert!(
        csv.lines()
            .nth(1)
            .unwrap()
            .starts_with("ipvs,-,mconnect,-,100,100,0,3,30,36,")
    );
    let (_, md, _) = svclb(&["compare", "-o", "markdown", &mc]);
    assert!(md.contains("| tag "), "{md}");
}

/// A saved spread record with these per-backend counts (a UDP run on an iptables lab), written
/// in the record's shape and judged by the library's verdict, as `spread` would.
fn record(dir: &Path, tag: &str, counts: &[u64]) -> String {
    let ok: u64 = counts.iter().sum();
    let backends: Vec<serde_json::Value> = counts
        .iter()
        .enumerate()
        .map(|(i, c)| serde_json::json!({"name": format!("pod-{i}"), "node": "n1", "zone": "z1", "count": c, "bytes": 0}))
        .collect();
    let named: Vec<(String, u64)> = counts
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("pod-{i}"), *c))
        .collect();
    let pairs: Vec<(&str, u64)> = named.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    let stats = svclb::stats::evaluate(
        &pairs,
        0,
        &svclb::stats::Criteria {
            expect_backends: None,
            margin_pct: 50.0,
            alpha: None,
        },
    );
    let doc = serde_json::json!({
        "kind": "SpreadRun", "version": 1, "tag": tag, "started_at": "2026-11-23T10:00:00Z", "duration_s": 1.0,
        "target": {"address": "10.96.0.10:5001 (clusterIP)", "mode": "lab", "protocol": "udp", "lab": "x"},
        "params": {"conns": ok, "parallel": 100, "timeout_s": 2.0, "margin_pct": 50.0},
        "conns": ok, "ok": ok, "failed": svclb::record::Failed::default(), "backends": backends,
        "latency_ms": {"p50": 1.0, "p90": 1.0, "p99": 1.0, "max": 1.0, "mean": 1.0},
        "stats": stats,
        "environment": {"tool_version": "0", "proxy_mode": "iptables"},
    });
    write(dir, &format!("{tag}.json"), &doc.to_string())
}

#[test]
fn compare_csv_is_one_table_and_runs_of_different_sizes_line_up() {
    let dir = tempfile::tempdir().unwrap();
    // 20 backends: 2,000 connections (fair share 100) and 200,000 (fair share 10,000), the same
    // shape: each backend at 0.8, 0.9, 1.0, 1.1 or 1.2 of the fair share, 4 at each.
    let shape = [0.8, 0.9, 1.0, 1.1, 1.2];
    let small: Vec<u64> = (0..20).map(|i| (shape[i % 5] * 100.0) as u64).collect();
    let big: Vec<u64> = (0..20).map(|i| (shape[i % 5] * 10_000.0) as u64).collect();
    let a = record(dir.path(), "small", &small);
    let b = record(dir.path(), "big", &big);
    let (code, out, err) = svclb(&["compare", &a, &b]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip_while(|l| !l.starts_with("Frequency"))
        .skip(2)
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            ["0.800", "4", "4"],
            ["0.900", "4", "4"],
            ["1.000", "4", "4"],
            ["1.100", "4", "4"],
            ["1.200", "4", "4"]
        ],
        "{out}"
    );
    assert!(out.contains("lab iptables") && out.contains(" udp "), "{out}");

    // -o csv: one table, one header; the summary by default.
    let (code, csv, _) = svclb(&["compare", "-o", "csv", &a, &b]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert_eq!(
        lines[0],
        "tag,target,mode,proto,conns,ok,failed,backends,min,max,CV,p-value,verdict"
    );
    assert!(
        lines[1].starts_with("small,10.96.0.10:5001 (clusterIP),lab iptables,udp,2000,2000,0,20,80,120,"),
        "{csv}"
    );
    assert!(lines.iter().all(|l| l.split(',').count() == 13), "{csv}");
    // The frequency table on its own, in shares of the fair share (inclusive bounds).
    let (_, csv, _) = svclb(&["compare", "-o", "csv", "--table", "frequency", &a, &b]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "fair_share_min,fair_share_max,small,big");
    assert_eq!(lines[1], "0.800,0.800,4,4");
    assert_eq!(lines.len(), 6, "{csv}");
    // Every backend of every run, one row each.
    let (_, csv, _) = svclb(&["compare", "-o", "csv", "--table", "backends", &a, &b]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "tag,backend,node,zone,count,share %,of fair share,verdict");
    assert_eq!(lines.len(), 41);
    // (±20% passes by chance at 100 per backend, never at 10,000: the big run fails.)
    assert_eq!(lines[1], "small,pod-0,n1,z1,80,4.00,0.800,PASS");
    assert_eq!(lines[40], "big,pod-19,n1,z1,12000,6.00,1.200,FAIL");
    // Counts spread wider than 12 rows go in ranges.
    let wide: Vec<u64> = (0..40).map(|i| 60 + 2 * i).collect();
    let c = record(dir.path(), "wide", &wide);
    let (_, out, _) = svclb(&["compare", &c]);
    assert!(
        out.contains("Frequency (backends per connection count, in ranges of 10;"),
        "{out}"
    );
    // What cannot be met is one line.
    one_line_error(
        &["compare", "-o", "json", "--table", "summary", &a],
        "-o json holds every table",
    );
    one_line_error(
        &["compare", "--table", "affinity", &a],
        "--table affinity has no runs to show",
    );
    one_line_error(
        &["compare", "--table", "summary", "--all-backends", &a],
        "--all-backends is for the frequency table",
    );
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

/// `--ip-family` on a bare address: the run goes to the address of that family (its record says
/// which), a family the address lacks is one line and exit 2, and `both` is refused with a
/// format that is one record.
#[test]
fn ip_family_picks_the_address_family_and_says_what_is_missing() {
    let s = Server::start("::1", "pod-6", "n", "z");
    let addr = s.addr.to_string();
    let (code, out, err) = svclb(&[
        "spread",
        "--address",
        &addr,
        "--conns",
        "20",
        "--ip-family",
        "ipv6",
        "--no-save",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["target"]["ip_family"], "ipv6", "{out}");
    assert_eq!(r["ok"], 20, "{out}");
    one_line_error(
        &["spread", "--address", &addr, "--ip-family", "ipv4", "--no-save"],
        "has no ipv4 address",
    );
    one_line_error(
        &["spread", "--address", &addr, "--ip-family", "both", "-o", "json"],
        "--ip-family both prints two runs side by side",
    );
    one_line_error(
        &[
            "affinity",
            "--udp",
            "--address",
            &addr,
            "--ip-family",
            "both",
            "-o",
            "yaml",
        ],
        "--ip-family both prints two runs side by side",
    );
}
