//! `zones --lab` end to end (root): real namespaces, kube-proxy's rules with topology hints, real
//! servers and storms from every zone or node. Every test uses its own lab state directory
//! (SVCLB_LAB_DIR) and a unique lab name, removed even when it fails (LabGuard).
// Network namespaces and netfilter: Linux only (the darwin workflow runs the rest).
#![cfg(target_os = "linux")]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{LabGuard, agents_in_netns, has_agent_child, netns_with_prefix, output_json as json};
use serde_json::Value;

impl LabGuard {
    /// `zones --lab NAME --no-save ARGS`: exit code, stdout, the record (with `-o json`).
    fn zones(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let mut all = vec!["zones", "--lab", self.name.as_str(), "--no-save"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn zones_json(&self, args: &[&str]) -> (Option<i32>, Value) {
        let mut all = vec!["zones", "--lab", self.name.as_str(), "--no-save", "-o", "json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        (out.status.code(), json(&out))
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// `(name, node, zone, count)` of a source's backends that answered.
fn answered(source: &Value) -> Vec<(String, String, String, u64)> {
    source["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| u(&b["count"]) > 0)
        .map(|b| {
            (
                b["name"].as_str().unwrap().into(),
                b["node"].as_str().unwrap().into(),
                b["zone"].as_str().unwrap().into(),
                u(&b["count"]),
            )
        })
        .collect()
}

fn cell(r: &Value, from: &str, to: &str) -> u64 {
    let c = r["matrix"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["from"] == from && c["to"] == to)
        .unwrap_or_else(|| panic!("no cell {from} -> {to}: {}", r["matrix"]));
    u(&c["conns"])
}

#[test]
fn lab_zones_prefer_same_zone_stays_in_every_zone() {
    prefer_same_zone_stays_in_every_zone("zsz", &[], "ipv4");
}

/// Over IPv6 (an IPv6-only lab, iptables mode: `ip6tables` rules): the same hints, the same
/// zones, measured from each zone's node over its IPv6 address.
#[test]
fn lab_zones_prefer_same_zone_stays_in_every_zone_ipv6_iptables() {
    prefer_same_zone_stays_in_every_zone("zs6", &["--ip-family", "ipv6", "--proxy-mode", "iptables"], "ipv6");
}

fn prefer_same_zone_stays_in_every_zone(tag: &str, lab_args: &[&str], family: &str) {
    let mut args = vec![
        "--nodes",
        "3",
        "--pods",
        "9",
        "--traffic-distribution",
        "PreferSameZone",
    ];
    args.extend_from_slice(lab_args);
    let lab = LabGuard::up(tag, &args);
    let (code, r) = lab.zones_json(&[
        "--conns-per-source",
        "600",
        "--bytes",
        "64KiB",
        "--rate",
        "100",
        "--ip-family",
        family,
    ]);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["kind"], "ZonesRun");
    assert_eq!(r["target"]["ip_family"], family, "{}", r["target"]);
    assert_eq!(r["traffic_distribution"], "PreferSameZone");
    let sources = r["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 3, "one source per zone");
    for s in sources {
        assert_eq!((u(&s["ok"]), u(&s["same_zone"]), u(&s["left"])), (600, 600, 0), "{s}");
        assert_eq!(s["locality"], "zone");
        assert_eq!(
            s["why"],
            format!("endpoints hinted for zone {}", s["zone"].as_str().unwrap())
        );
        // All three pods of its zone answered, and only they.
        let got = answered(s);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got.iter().all(|b| b.2 == s["zone"]), "{got:?}");
    }
    for z in ["zone-a", "zone-b", "zone-c"] {
        assert_eq!(cell(&r, z, z), 600);
    }
    // 64 KiB of body per connection, all of it local: nothing to pay.
    assert!(u(&r["bytes"]) > 1800 * 65_536, "{}", r["bytes"]);
    assert_eq!((u(&r["cross_zone_conns"]), u(&r["cross_zone_bytes"])), (0, 0));
    let cost = r["cost"].as_array().unwrap();
    assert_eq!(cost.len(), 3);
    assert!(
        cost.iter().all(|c| c["total_usd"] == 0.0 && c["monthly_usd"] == 0.0),
        "{cost:?}"
    );
    assert_eq!(r["verdict"], "PASS");
}

#[test]
fn lab_zones_without_traffic_distribution_spread_over_all_zones() {
    let lab = LabGuard::up("zno", &["--nodes", "3", "--pods", "9"]);
    let (code, r) = lab.zones_json(&["--conns-per-source", "3000"]);
    assert_eq!(code, Some(0), "{r}");
    for s in r["sources"].as_array().unwrap() {
        assert_eq!(s["locality"], "any");
        assert!(
            s["why"]
                .as_str()
                .unwrap()
                .starts_with("using all endpoints: endpoint pod-"),
            "{}",
            s["why"]
        );
        assert_eq!(answered(s).len(), 9);
        // Near uniform over the 9 pods (chi-square against a uniform spread, from `stats`)...
        assert!(s["p_value"].as_f64().unwrap() > 1e-4, "{s}");
        // ... and so over the zones, 3 pods each: the source zone's row, judged the same way.
        let zone = s["zone"].as_str().unwrap();
        let row: Vec<(&str, u64)> = ["zone-a", "zone-b", "zone-c"]
            .iter()
            .map(|z| (*z, cell(&r, zone, z)))
            .collect();
        let stats = svclb::stats::evaluate(
            &row,
            0,
            &svclb::stats::Criteria {
                expect_backends: Some(3),
                margin_pct: 50.0,
                alpha: None,
            },
        );
        assert!(stats.p_value.unwrap() > 1e-4, "{row:?}: {stats:?}");
    }
    let share = r["cross_zone_share"].as_f64().unwrap();
    assert!((0.6..0.73).contains(&share), "two thirds leave their zone: {share}");
}

#[test]
fn lab_zones_prefer_same_node_reaches_only_its_node() {
    let lab = LabGuard::up(
        "zsn",
        &[
            "--nodes",
            "3",
            "--pods",
            "9",
            "--traffic-distribution",
            "PreferSameNode",
        ],
    );
    let (code, r) = lab.zones_json(&["--conns-per-source", "600", "--sources", "per-node"]);
    assert_eq!(code, Some(0), "{r}");
    let sources = r["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 3, "one source per node");
    for s in sources {
        let node = s["node"].as_str().unwrap();
        assert_eq!(s["locality"], "node");
        assert_eq!(s["why"], format!("endpoints hinted for node {node}"));
        assert_eq!((u(&s["same_node"]), u(&s["left"])), (600, 0), "{s}");
        let got = answered(s);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got.iter().all(|b| b.1 == node), "{got:?}");
    }
}

#[test]
fn lab_zones_one_missing_hint_uses_all_endpoints_and_says_why() {
    let lab = LabGuard::up(
        "zmh",
        &[
            "--nodes",
            "3",
            "--pods",
            "9",
            "--traffic-distribution",
            "PreferSameZone",
        ],
    );
    let out = lab.run(&["lab", "set", "--name", &lab.name, "--drop-hint", "pod-005"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, stdout, stderr) = lab.zones(&["--conns-per-source", "900", "--bytes", "4KiB"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    for node in ["node1 (zone-a)", "node2 (zone-b)", "node3 (zone-c)"] {
        let line = format!("{node}: using all endpoints: endpoint pod-005 has no zone hint; 9 endpoint(s)");
        assert!(stdout.contains(&line), "{line} missing from:\n{stdout}");
    }
    assert!(stdout.contains("verdict: PASS"), "{stdout}");

    // The same in the record, and the cost of what left, by hand: AWS bills 0.01 USD per GB
    // (10^9 bytes) on each side, GCP 0.01 USD per GiB to the sender, Azure nothing.
    let (_, r) = lab.zones_json(&["--conns-per-source", "900", "--bytes", "4KiB"]);
    let cross = u(&r["cross_zone_bytes"]) as f64;
    assert!(cross > 0.0, "{r}");
    let cost: Vec<(String, f64)> = r["cost"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["price"]["name"].as_str().unwrap().into(),
                c["total_usd"].as_f64().unwrap(),
            )
        })
        .collect();
    let want = [
        ("aws", 2.0 * cross / 1e9 * 0.01),
        ("gcp", cross / 1_073_741_824.0 * 0.01),
        ("azure", 0.0),
    ];
    for ((name, got), (want_name, want)) in cost.iter().zip(want) {
        assert_eq!(name, want_name);
        assert!((got - want).abs() <= 1e-15, "{name}: {got} != {want}");
    }
}

#[test]
fn lab_zones_a_zone_without_endpoints_reaches_all() {
    // Pods on node1 (zone-a) and node2 (zone-b); node3 (zone-c) has none and storms from itself.
    let lab = LabGuard::up(
        "zze",
        &[
            "--nodes",
            "3",
            "--pods",
            "2",
            "--traffic-distribution",
            "PreferSameZone",
        ],
    );
    let (code, r) = lab.zones_json(&["--conns-per-source", "600"]);
    assert_eq!(code, Some(0), "{r}");
    let c = r["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["zone"] == "zone-c")
        .expect("a source in zone-c")
        .clone();
    assert_eq!(c["name"], "node3", "the node itself is the client");
    assert_eq!(c["why"], "using all endpoints: no endpoint hinted for zone zone-c");
    assert_eq!(answered(&c).len(), 2, "{c}");
    assert!(cell(&r, "zone-c", "zone-a") > 0 && cell(&r, "zone-c", "zone-b") > 0);
    assert_eq!(cell(&r, "zone-a", "zone-a"), 600);
    assert_eq!(cell(&r, "zone-b", "zone-b"), 600);
    assert_eq!(r["verdict"], "PASS");
}

#[test]
fn lab_zones_watch_prints_one_line_per_cycle_and_stops() {
    let lab = LabGuard::up("zwa", &["--nodes", "3", "--pods", "3"]);
    let saves = tempfile::tempdir().unwrap();
    let save = saves.path().to_str().unwrap();
    let out = lab.run(&[
        "zones",
        "--lab",
        &lab.name,
        "--conns-per-source",
        "100",
        "--watch",
        "300ms",
        "--cycles",
        "4",
        "--bytes",
        "1kB",
        "--tag",
        "w",
        "--save",
        save,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("cycle ")).collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(lines[3].starts_with("cycle 4/4 "), "{}", lines[3]);
    assert!(
        lines
            .iter()
            .all(|l| l.contains("local zone-a ") && l.contains("cross-zone "))
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(saves.path().join("w.json")).unwrap()).unwrap();
    assert_eq!(r["cycles"].as_array().unwrap().len(), 4);
    assert_eq!(u(&r["conns"]), 4 * 3 * 100);
    // Cycles start every 300 ms: the fourth at 0.9 s at the earliest.
    assert!(r["cycles"][3]["at_s"].as_f64().unwrap() >= 0.9, "{}", r["cycles"]);

    // compare: two zone runs side by side with the delta.
    let out = lab.run(&[
        "zones",
        "--lab",
        &lab.name,
        "--conns-per-source",
        "100",
        "--tag",
        "x",
        "--save",
        save,
        "--html",
        &format!("{save}/x.html"),
    ]);
    assert_eq!(out.status.code(), Some(0));
    // --html: the run's page, its zone matrix cell by cell.
    let html = std::fs::read_to_string(saves.path().join("x.html")).unwrap();
    let x: Value = serde_json::from_str(&std::fs::read_to_string(saves.path().join("x.json")).unwrap()).unwrap();
    assert!(html.contains("<code>x</code>"));
    for c in x["matrix"].as_array().unwrap() {
        assert!(
            html.contains(&format!(
                "<title>from {} to {}: {} (",
                c["from"].as_str().unwrap(),
                c["to"].as_str().unwrap(),
                u(&c["conns"])
            )),
            "{c}"
        );
    }
    let out = lab.run(&["compare", &format!("{save}/w.json"), &format!("{save}/x.json")]);
    let cmp = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{cmp}");
    assert!(cmp.contains("Zones runs:") && cmp.contains("Δ x vs w"), "{cmp}");
}

#[test]
fn lab_zones_watch_interrupted_saves_partial_record_and_leaves_the_lab_as_it_was() {
    let lab = LabGuard::up("zin", &["--nodes", "3", "--pods", "6"]);
    let status = || {
        let out = lab.run(&["lab", "status", "--name", &lab.name, "-o", "json"]);
        json(&out)
    };
    let prefix = format!("svclb-{}.", lab.name);
    let (before, namespaces) = (status(), netns_with_prefix(&prefix));
    let saves = tempfile::tempdir().unwrap();
    let cycles = 1000;
    let child = Command::new(common::BIN)
        .args([
            "zones",
            "--lab",
            &lab.name,
            "--conns-per-source",
            "300",
            "--watch",
            "300ms",
        ])
        .args(["--cycles", &cycles.to_string(), "--tag", "cut", "--save"])
        .arg(saves.path())
        .env("SVCLB_LAB_DIR", lab.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let t0 = Instant::now();
    while !has_agent_child(pid) {
        assert!(t0.elapsed() < Duration::from_secs(60), "the storm agents never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Exit 130, INTERRUPTED, the partial record saved and marked interrupted.
    let r = common::interrupt(child, Duration::from_millis(1500), saves.path(), "cut");
    assert_eq!(r["kind"], "ZonesRun");
    let done = r["cycles"].as_array().unwrap();
    assert!(!done.is_empty() && done.len() < cycles, "{} cycles", done.len());
    assert_eq!(r["params"]["cycles"], cycles);
    // The record sums the cycles it kept, one source per zone.
    let sum: u64 = done.iter().map(|c| u(&c["conns"])).sum();
    assert_eq!(u(&r["conns"]), sum);
    assert!(sum > 0 && sum <= 300 * 3 * done.len() as u64, "{sum}");
    assert_eq!(r["sources"].as_array().unwrap().len(), 3);
    // Nothing left behind: no storm agent in the lab's namespaces, the lab as it was.
    // (The run waits for its agents to exit before it saves.)
    assert_eq!(agents_in_netns(&prefix), Vec::<u32>::new(), "agents left running");
    assert_eq!(netns_with_prefix(&prefix), namespaces);
    assert_eq!(status(), before);
}

#[test]
fn zones_bad_input_is_one_line_and_exit_2() {
    for (args, says) in [
        (&["--bytes", "5 parsecs"][..], "bad size unit"),
        (&["--conns-per-source", "0"][..], "--conns-per-source 0"),
        (
            &["--price", "cheap", "--bytes", "1kB"][..],
            "give aws, gcp, azure or USD per GB",
        ),
        (&["--cycles", "3"][..], "--watch"),
    ] {
        let mut all = vec!["zones", "--lab", "nolab", "--no-save"];
        all.extend_from_slice(args);
        let (code, _, err) = common::svclb(&all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
