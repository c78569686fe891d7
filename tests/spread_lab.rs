//! `spread --lab` end to end (root): real namespaces, kube-proxy rules, server processes, storms.
//! Every test uses its own lab state directory (SVCLB_LAB_DIR) and unique lab names, and checks
//! that nothing is left behind.
// Network namespaces and netfilter: Linux only (the darwin workflow runs the rest).
#![cfg(target_os = "linux")]

mod common;

use common::{LabGuard, has_agent_child, lab_svclb as svclb, netns_with_prefix, output_json as json};

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn root_routes() -> String {
    let out = Command::new("ip")
        .args(["route", "show", "table", "all"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl LabGuard {
    fn spread(&self, args: &[&str]) -> (Option<i32>, serde_json::Value) {
        let mut all = vec!["spread", "--lab", self.name.as_str(), "-o", "json", "--no-save"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        (out.status.code(), json(&out))
    }
}

fn counts(r: &serde_json::Value) -> Vec<(String, String, u64)> {
    r["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["node"].as_str().unwrap().to_string(),
                b["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn lab_spread_default_ephemeral_lab_reaches_all_100_pods() {
    let routes_before = root_routes();
    let dir = tempfile::tempdir().unwrap();
    let out = svclb(
        dir.path(),
        &["spread", "--lab", "--conns", "10000", "-o", "json", "--no-save"],
    );
    let r = json(&out);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(r["target"]["mode"], "lab");
    assert_eq!(r["conns"], 10000);
    assert_eq!(r["ok"], 10000);
    let c = counts(&r);
    assert_eq!(c.len(), 100);
    assert!(c.iter().all(|(_, _, n)| *n > 0), "every pod answers: {c:?}");
    assert_eq!(r["stats"]["verdict"], "PASS");
    assert!(
        r["stats"]["p_value"].as_f64().unwrap() > 1e-6,
        "kernel-random spread looks uniform: {}",
        r["stats"]
    );
    assert_eq!(r["environment"]["proxy_mode"], "nftables");
    // The lab made for the run is gone, and the root namespace is untouched.
    let lab = r["target"]["lab"].as_str().unwrap();
    assert!(netns_with_prefix(&format!("svclb-{lab}.")).is_empty());
    assert_eq!(root_routes(), routes_before);
}

#[test]
fn lab_spread_per_node_sources_and_host_paths() {
    let lab = LabGuard::up("sp", &["--nodes", "3", "--pods", "9", "--proxy-mode", "iptables"]);
    let (code, r) = lab.spread(&["--conns", "900", "--sources", "per-node"]);
    assert_eq!(code, Some(0), "{} {}", r["failed"], r["stats"]);
    let sources = r["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 3);
    assert_eq!(r["conns"], 2700);
    assert_eq!(r["ok"], 2700);
    for s in sources {
        assert_eq!(s["ok"], 900);
        let landed: u64 = s["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .sum();
        assert_eq!(landed, 900);
    }
    assert_eq!(counts(&r).len(), 9);
    // --conns is per source: the line before the storm says the total and each source's share,
    // and the table shows the sources.
    let out = svclb(
        lab.dir.path(),
        &[
            "spread",
            "--lab",
            &lab.name,
            "--conns",
            "300",
            "--sources",
            "per-node",
            "--no-save",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("svclb: 900 TCP connections (300 from each of 3 sources, a pod on every node) to 10.96.0.10:5001 (clusterIP)\n"),
        "{err}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\nSources:\n") && text.contains("Source x backend node"),
        "{text}"
    );

    for (args, what) in [
        (&["--from", "host", "--node-port", "node2"][..], "nodePort"),
        (&["--from", "host", "--lb"][..], "loadBalancer"),
        (&["--from", "host", "--lb", "--udp"][..], "loadBalancer"),
    ] {
        let mut all = vec!["--conns", "450"];
        all.extend_from_slice(args);
        let (code, r) = lab.spread(&all);
        assert_eq!(code, Some(0), "{args:?}: {r}");
        assert_eq!(r["ok"], 450, "{args:?}");
        assert_eq!(r["target"]["source"], "client");
        assert!(r["target"]["address"].as_str().unwrap().contains(what));
        assert_eq!(counts(&r).len(), 9);
    }
    // A named source pod and an unknown one.
    let (code, r) = lab.spread(&["--conns", "900", "--pod", "pod-002"]);
    assert_eq!(code, Some(0), "{}", r["stats"]);
    assert_eq!(r["target"]["source"], "pod-002");
    let out = svclb(
        lab.dir.path(),
        &["spread", "--lab", &lab.name, "--pod", "pod-999", "--no-save"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no pod named pod-999"));
}

#[test]
fn lab_spread_interrupt_saves_partial_record_and_removes_the_lab() {
    let dir = tempfile::tempdir().unwrap();
    let saves = tempfile::tempdir().unwrap();
    let child = Command::new(common::BIN)
        .args([
            "spread", "--lab", "--conns", "1000000", "--rate", "2000", "--tag", "cut",
        ])
        .arg("--save")
        .arg(saves.path())
        .env("SVCLB_LAB_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let prefix = format!("svclb-run{}.", child.id());
    // Wait until the lab is up and the storm agent runs (a child of ours running `agent`).
    let t0 = Instant::now();
    while !has_agent_child(child.id()) {
        assert!(t0.elapsed() < Duration::from_secs(60), "the storm agent never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let saved = common::interrupt(child, Duration::from_millis(1500), saves.path(), "cut");
    let ok = saved["ok"].as_u64().unwrap();
    assert!(ok > 0 && ok < 1_000_000, "partial: {ok}");
    assert_eq!(counts(&saved).len(), 100, "known pods listed, zeros included");
    assert!(netns_with_prefix(&prefix).is_empty(), "interrupted run removed its lab");
}

#[test]
fn lab_spread_needs_root() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            common::BIN,
            "spread",
            "--lab",
            "--no-save",
        ])
        .env("SVCLB_LAB_DIR", dir.path())
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"), "{err}");
}

/// A second lab in another lab's state directory, removed on drop.
struct Also<'a>(&'a LabGuard, String);

impl Drop for Also<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["lab", "down", "--name", &self.1]);
    }
}

#[test]
fn lab_spread_without_a_name_on_a_busy_machine() {
    // The README's main command with other labs running: one lab is used, several are not.
    let a = LabGuard::up("busya", &["--nodes", "1", "--pods", "2"]);
    let out = a.run(&["spread", "--lab", "--conns", "200", "-o", "json", "--no-save"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&out)["target"]["lab"], a.name.as_str());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("using lab {}", a.name)));

    let b = Also(&a, format!("busyb{}", std::process::id() % 100_000));
    let up = a.run(&["lab", "up", "--name", &b.1, "--nodes", "1", "--pods", "1"]);
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    // The README's main command, as printed there (plus where to save), with two other labs
    // running: it builds its own lab, says so, prints the compact table and removes the lab.
    let saves = tempfile::tempdir().unwrap();
    let out = a.run(&[
        "spread",
        "--lab",
        "--conns",
        "10000",
        "--tag",
        "readme",
        "--save",
        saves.path().to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // PASS is what the README shows; a fair balancer fails by chance about 0.2% of the time, which
    // is no matter here (the lab used and the output are).
    assert!(matches!(out.status.code(), Some(0 | 1)), "{stderr}");
    assert!(stderr.contains("2 labs running"), "{stderr}");
    assert!(
        stderr.contains("svclb: 10,000 TCP connections from pod-001 (node1) to 10.96.0.10:5001 (clusterIP)"),
        "{stderr}"
    );
    assert!(
        stdout.contains(
            "Backends (5 with the most and 5 with the fewest connections of 100; --all-backends for every one):"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("… 90 more backends"), "{stdout}");
    assert!(stdout.lines().count() < 45, "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("PASS: ") || l.starts_with("FAIL: ")),
        "{stdout}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saves.path().join("readme.json")).unwrap()).unwrap();
    let made = r["target"]["lab"].as_str().unwrap();
    assert!(made.starts_with("run"), "{made}");
    assert_eq!(r["ok"], 10000);
    assert_eq!(counts(&r).len(), 100);
    assert!(netns_with_prefix(&format!("svclb-{made}.")).is_empty());
    // `--lab new` builds a fresh one even with exactly one lab running.
    drop(b);
    // (300 connections over 100 pods leave some pods without any: the verdict may fail, the run may not.)
    let out = a.run(&["spread", "--lab", "new", "--conns", "300", "-o", "json", "--no-save"]);
    assert_ne!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let r = json(&out);
    assert_eq!(r["ok"], 300);
    assert!(r["target"]["lab"].as_str().unwrap().starts_with("run"));
}

#[test]
fn lab_commands_without_a_name_pick_the_only_lab() {
    let lab = LabGuard::up("only", &["--nodes", "1", "--pods", "1"]);
    let out = lab.run(&["lab", "status", "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&out)["name"], lab.name.as_str());
    // `lab scale N` is `lab scale --pods N`.
    let out = lab.run(&["lab", "scale", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = lab.run(&["lab", "status", "-o", "json"]);
    assert_eq!(json(&out)["pods"].as_array().unwrap().len(), 2);
    let out = lab.run(&["lab", "scale", "1", "--pods", "1"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn lab_up_with_a_relative_server_path() {
    // `--server ./kubectl-svclb` from the binary's directory: resolved there before the build and
    // recorded absolute, so `lab scale` from another directory starts the same program.
    let bin = std::path::Path::new(common::BIN);
    let guard = LabGuard {
        name: format!("rel{}", std::process::id() % 100_000),
        dir: tempfile::tempdir().unwrap(),
    };
    let up = |server: &str| {
        Command::new(bin)
            .args([
                "lab",
                "up",
                "--name",
                &guard.name,
                "--nodes",
                "1",
                "--pods",
                "2",
                "--server",
                server,
            ])
            .current_dir(bin.parent().unwrap())
            .env("SVCLB_LAB_DIR", guard.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // A program that is not there: one line before anything is built.
    let out = up("./no-such-server");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--server ./no-such-server: No such file"), "{err}");
    assert!(netns_with_prefix(&format!("svclb-{}.", guard.name)).is_empty());

    let out = up("./kubectl-svclb");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = guard.run(&["lab", "scale", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let st = json(&guard.run(&["lab", "status", "-o", "json"]));
    let pods = st["pods"].as_array().unwrap();
    assert_eq!(pods.len(), 3, "{st}");
    assert!(pods.iter().all(|p| p["alive"] == true), "{st}");
    let (code, r) = guard.spread(&["--conns", "300", "--margin", "1000"]);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(counts(&r).len(), 3);
}
