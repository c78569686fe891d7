//! `matrix --lab` end to end (root): real namespaces, kube-proxy's rules in both proxy modes,
//! real servers, probes from pods, nodes and the client. Every test uses its own lab state
//! directory (SVCLB_LAB_DIR) and a unique lab name, removed even when it fails (LabGuard).
// Network namespaces and netfilter: Linux only.
#![cfg(target_os = "linux")]

mod common;

use common::{LabGuard, output_json as json};
use serde_json::Value;

fn matrix(lab: &LabGuard, args: &[&str]) -> (Option<i32>, Value) {
    let mut all = vec!["matrix", "--lab", lab.name.as_str(), "--no-save", "-o", "json"];
    all.extend_from_slice(args);
    let out = lab.run(&all);
    (out.status.code(), json(&out))
}

fn scenario<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no scenario {name}"))
}

fn cell<'a>(s: &'a Value, source: &str, target: &str) -> &'a Value {
    s["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["source"] == source && c["target"] == target)
        .unwrap_or_else(|| panic!("no cell {source} -> {target} in {}", s["name"]))
}

fn measured(s: &Value) -> impl Iterator<Item = &Value> {
    s["cells"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["verdict"] != "skipped")
}

fn wrong(s: &Value) -> Vec<String> {
    measured(s)
        .filter(|c| c["verdict"] != "correct")
        .map(|c| format!("{} -> {}: {} {}", c["source"], c["target"], c["verdict"], c["why"]))
        .collect()
}

/// 4 nodes and 3 pods: node4 has no endpoint. Default, eTP Local and no endpoints, TCP and UDP,
/// with a JUnit file; the lab's Service is as before afterwards.
fn full_matrix(mode: &str) {
    let lab = LabGuard::up(
        &format!("mx{}", &mode[..1]),
        &["--nodes", "4", "--pods", "3", "--proxy-mode", mode],
    );
    let junit = lab.dir.path().join("matrix.xml");
    let page = lab.dir.path().join("matrix.html");
    // The full default matrix: every variant, TCP and UDP.
    let (code, r) = matrix(
        &lab,
        &["--junit", junit.to_str().unwrap(), "--html", page.to_str().unwrap()],
    );
    let names: Vec<&str> = r["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    let variants = [
        "default",
        "etp-local",
        "itp-local",
        "both-local",
        "affinity",
        "no-endpoints",
        "terminating",
        "prefer-same-zone",
        "prefer-same-node",
    ];
    let expected: Vec<String> = variants
        .iter()
        .flat_map(|v| [format!("{v}/tcp"), format!("{v}/udp")])
        .collect();
    assert_eq!(names, expected);
    for s in r["scenarios"].as_array().unwrap() {
        assert!(wrong(s).is_empty(), "{}: {:#?}", s["name"], wrong(s));
    }
    assert_eq!(code, Some(0));
    // 3 pod sources + 4 nodes + client; cip, 4 NodePorts, lb, 3 pods, hairpin.
    let default = scenario(&r, "default/tcp");
    assert_eq!(default["cells"].as_array().unwrap().len(), 8 * 10);
    assert!(measured(default).all(|c| c["observed"] == "."));

    for proto in ["tcp", "udp"] {
        let etp = scenario(&r, &format!("etp-local/{proto}"));
        // From outside: only a node with endpoints answers, with its own.
        let c = cell(etp, "client", "np:node1");
        assert_eq!(
            (c["observed"].as_str(), &c["answered_nodes"]),
            (Some("."), &serde_json::json!(["node1"]))
        );
        assert_eq!(cell(etp, "client", "np:node4")["observed"], "T");
        // node4 reaching its own NodePort is short-circuited to every endpoint; node1's packet
        // to node4 comes from outside the cluster CIDR: dropped.
        assert_eq!(cell(etp, "node4", "np:node4")["observed"], ".");
        assert_eq!(cell(etp, "node1", "np:node4")["observed"], "T");
        assert_eq!(cell(etp, "node4", "np:node1")["observed"], ".");

        let none = scenario(&r, &format!("no-endpoints/{proto}"));
        for c in measured(none).filter(|c| !c["target"].as_str().unwrap().starts_with("pod:")) {
            // iptables mode rejects a LoadBalancer IP without endpoints in INPUT and FORWARD
            // only: a node's own connection leaves undNATed and times out.
            let node_to_lb = c["source"].as_str().unwrap().starts_with("node") && c["target"] == "lb";
            let want = if mode == "iptables" && node_to_lb { "T" } else { "R" };
            assert_eq!(c["observed"], want, "{c}");
        }
    }

    for proto in ["tcp", "udp"] {
        // iTP Local: a node's own endpoints only; node4 has none, so its traffic is dropped.
        let itp = scenario(&r, &format!("itp-local/{proto}"));
        let c = cell(itp, "node1", "cip");
        assert_eq!(
            (c["observed"].as_str(), &c["answered_nodes"]),
            (Some("."), &serde_json::json!(["node1"])),
            "{c}"
        );
        assert_eq!(cell(itp, "node4", "cip")["observed"], "T");
        // Terminating endpoints that still serve are used when no endpoint is ready.
        let term = scenario(&r, &format!("terminating/{proto}"));
        assert!(measured(term).all(|c| c["observed"] == "."), "{term}");
        // PreferSameNode: a node with an endpoint keeps its traffic.
        let psn = scenario(&r, &format!("prefer-same-node/{proto}"));
        assert_eq!(
            cell(psn, "pod-002", "cip")["answered_nodes"],
            serde_json::json!(["node2"])
        );
    }

    // The JUnit file parses: one test case per scenario × source × target measured.
    let xml = std::fs::read_to_string(&junit).unwrap();
    let mut reader = quick_xml::Reader::from_str(&xml);
    let (mut cases, mut suites) = (0, 0);
    loop {
        match reader.read_event().expect("well-formed JUnit XML") {
            quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e) => {
                let name = e.name();
                if name.as_ref() == "testcase" {
                    cases += 1;
                } else if name.as_ref() == "testsuite" {
                    suites += 1;
                }
            }
            quick_xml::events::Event::Eof => break,
            _ => {}
        }
    }
    let want: usize = r["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| measured(s).count())
        .sum();
    assert_eq!((suites, cases), (18, want));

    // The page of the run (--html): three grids per scenario, a cell each in them.
    let html = std::fs::read_to_string(&page).unwrap();
    let cells: usize = r["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["cells"].as_array().unwrap().len())
        .sum();
    assert_eq!(html.matches("<use href=").count(), 3 * cells);
    for name in &names {
        assert!(html.contains(&format!("<h4>{name} (")), "{name}");
    }

    // The Service and its endpoints are as they were.
    let status = json(&lab.run(&["lab", "status", "--name", &lab.name, "-o", "json"]));
    assert_eq!(status["service"]["options"]["external_traffic_policy"], "Cluster");
    assert!(
        status["pods"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["conditions"]["ready"] == true)
    );
}

#[test]
fn lab_matrix_full_nftables() {
    full_matrix("nftables");
}

#[test]
fn lab_matrix_full_iptables() {
    full_matrix("iptables");
}

/// node2's rules flushed: every wrong cell is in node2's row (its pod or itself as source) or
/// column (its NodePort); the run exits 1.
fn broken_node(mode: &str) {
    let lab = LabGuard::up(
        &format!("mb{}", &mode[..1]),
        &["--nodes", "3", "--pods", "3", "--proxy-mode", mode],
    );
    let flush: &[&str] = if mode == "nftables" {
        &["nft", "flush", "ruleset"]
    } else {
        &["sh", "-c", "iptables -t nat -F && iptables -t filter -F"]
    };
    let mut exec = vec!["lab", "exec", "node2", "--name", lab.name.as_str(), "--"];
    exec.extend_from_slice(flush);
    assert!(lab.run(&exec).status.success());
    let (code, r) = matrix(&lab, &["--test", "^default/"]);
    assert_eq!(code, Some(1));
    let status = json(&lab.run(&["lab", "status", "--name", &lab.name, "-o", "json"]));
    let on_node2: Vec<&str> = status["pods"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["node"] == "node2")
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let mut seen = 0;
    for s in r["scenarios"].as_array().unwrap() {
        for c in measured(s).filter(|c| c["verdict"] == "incorrect") {
            seen += 1;
            let (src, tgt) = (c["source"].as_str().unwrap(), c["target"].as_str().unwrap());
            assert!(
                src == "node2" || on_node2.contains(&src) || tgt == "np:node2",
                "{src} -> {tgt} is wrong outside node2's row and column: {c}"
            );
        }
    }
    assert!(seen > 0, "no wrong cell with node2's rules flushed");
    // Its NodePort from the client and node2's own pod to the clusterIP are among them.
    let tcp = scenario(&r, "default/tcp");
    assert_eq!(cell(tcp, "client", "np:node2")["verdict"], "incorrect");
    assert_eq!(cell(tcp, on_node2[0], "cip")["verdict"], "incorrect");
}

#[test]
fn lab_matrix_broken_node_nftables() {
    broken_node("nftables");
}

#[test]
fn lab_matrix_broken_node_iptables() {
    broken_node("iptables");
}

#[test]
fn lab_matrix_test_filter_and_bad_input() {
    let lab = LabGuard::up("mf", &["--nodes", "2", "--pods", "2"]);
    let (code, r) = matrix(&lab, &["--test", "prefer-same-node", "--protocol", "udp"]);
    assert_eq!(code, Some(0), "{r}");
    let names: Vec<&str> = r["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["prefer-same-node/udp"]);
    // PreferSameNode: a pod's clusterIP traffic is answered on its own node.
    let s = scenario(&r, "prefer-same-node/udp");
    let c = cell(s, "node1", "cip");
    assert_eq!(c["answered_nodes"], serde_json::json!(["node1"]));
    let out = lab.run(&["matrix", "--lab", &lab.name, "--no-save", "--test", "nothing-like-this"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("selects no scenario"));
    let out = lab.run(&["matrix", "--lab", &lab.name, "--no-save", "--test", "("]);
    assert_eq!(out.status.code(), Some(2));
}
