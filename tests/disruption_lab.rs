//! `disruption --lab` end to end (root): real namespaces, kube-proxy's rules in both modes, real
//! servers going through the lab's lifecycle while traffic runs from every node. Every test uses
//! its own lab state directory (SVCLB_LAB_DIR) and a unique lab name, removed even when it fails
//! (LabGuard).
// Network namespaces and netfilter: Linux only.
#![cfg(target_os = "linux")]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{LabGuard, agents_in_netns, has_agent_child, output_json as json};
use serde_json::Value;

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

impl LabGuard {
    /// `disruption --lab NAME --no-save -o json ARGS`: exit code and the record.
    fn disruption(&self, args: &[&str]) -> (Option<i32>, Value) {
        let mut all = vec!["disruption", "--lab", self.name.as_str(), "--no-save", "-o", "json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        (out.status.code(), json(&out))
    }

    fn status(&self) -> Value {
        json(&self.run(&["lab", "status", "--name", &self.name, "-o", "json"]))
    }

    fn pods(&self) -> Vec<(String, String)> {
        self.status()["pods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["name"].as_str().unwrap().into(), p["node"].as_str().unwrap().into()))
            .collect()
    }
}

/// What every record must hold: per second the pods add up to the ok column, ok plus failures
/// to the attempts, and the totals to the seconds.
fn consistent(r: &Value) {
    let seconds = r["seconds"].as_array().unwrap();
    assert!(!seconds.is_empty(), "{r}");
    let (mut attempts, mut ok) = (0, 0);
    for (i, s) in seconds.iter().enumerate() {
        assert_eq!(u(&s["second"]), i as u64, "seconds in order, none missing");
        let pods: u64 = s["pods"].as_object().unwrap().values().map(u).sum();
        assert_eq!(pods, u(&s["ok"]), "second {i}: per-pod counts add up to ok: {s}");
        assert_eq!(
            u(&s["ok"]) + u(&s["failed"]["total"]),
            u(&s["attempts"]),
            "second {i}: {s}"
        );
        attempts += u(&s["attempts"]);
        ok += u(&s["ok"]);
    }
    assert_eq!((attempts, ok), (u(&r["totals"]["attempts"]), u(&r["totals"]["ok"])));
    let ll = &r["totals"]["long_lived"];
    assert!(u(&ll["broken_expected"]) <= u(&ll["broken"]));
}

/// The first time `pod` went through `step`.
fn event(r: &Value, pod: &str, step: &str) -> Option<f64> {
    r["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["pod"] == pod && e["step"] == step)
        .map(|e| f(&e["at_s"]))
}

/// Seconds with failed new connections.
fn failed_seconds(r: &Value) -> Vec<u64> {
    r["seconds"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| u(&s["failed"]["total"]) > 0)
        .map(|s| u(&s["second"]))
        .collect()
}

fn none_passes(mode: &str) {
    let lab = LabGuard::up(
        &format!("dn{}", &mode[..1]),
        &["--nodes", "3", "--pods", "6", "--proxy-mode", mode],
    );
    let (code, r) = lab.disruption(&[
        "--duration",
        "4s",
        "--rate",
        "100",
        "--long-lived",
        "6",
        "--udp-sessions",
        "6",
    ]);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["kind"], "DisruptionRun");
    assert_eq!(r["verdict"], "PASS", "{}", r["reasons"]);
    assert_eq!(r["environment"]["proxy_mode"], mode);
    consistent(&r);
    let t = &r["totals"];
    assert_eq!(u(&t["failed"]["total"]), 0);
    // 100/s for 4 s (the last second cut short by the end).
    assert!((330..=410).contains(&u(&t["attempts"])), "{}", t["attempts"]);
    assert_eq!(u(&t["long_lived"]["broken"]), 0);
    assert_eq!(u(&t["long_lived"]["sent"]), u(&t["long_lived"]["answered"]));
    assert_eq!(u(&t["udp"]["lost"]), 0);
    assert_eq!(u(&t["udp"]["sent"]), u(&t["udp"]["answered"]));
    // Every pod answered; every node ran a client; nothing happened to the endpoints.
    let pods: std::collections::BTreeSet<&str> = r["seconds"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["pods"].as_object().unwrap().keys().map(String::as_str))
        .collect();
    assert_eq!(pods.len(), 6, "{pods:?}");
    assert_eq!(r["target"]["source"], "per-node (3 sources)");
    assert!(r["events"].as_array().unwrap().is_empty());
    assert_eq!(r["action"]["what"], "none");
}

#[test]
fn lab_disruption_none_passes_nftables() {
    none_passes("nftables");
}

#[test]
fn lab_disruption_none_passes_iptables() {
    none_passes("iptables");
}

/// A drain longer than the nodes' sync: no new connection fails; the long-lived connections to
/// the deleted pod break when it is killed at the end of its grace period, after it stopped
/// serving, and are counted apart.
fn drained_delete_passes(mode: &str) {
    drained_delete_passes_in(&format!("dd{}", &mode[..1]), mode, "ipv4");
}

fn drained_delete_passes_in(tag: &str, mode: &str, family: &str) {
    let lab = LabGuard::up(
        tag,
        &[
            "--nodes",
            "3",
            "--pods",
            "3",
            "--proxy-mode",
            mode,
            "--ip-family",
            family,
        ],
    );
    let (code, r) = lab.disruption(&[
        "--ip-family",
        family,
        "--action",
        "delete-pod=pod-002",
        "--grace-period",
        "3",
        "--drain-delay",
        "1s",
        "--rate",
        "100",
        "--long-lived",
        "30",
        "--udp-sessions",
        "6",
        "--warmup",
        "1s",
        "--settle",
        "1s",
        "--timeout",
        "2s",
    ]);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["verdict"], "PASS", "{}", r["reasons"]);
    assert_eq!(r["target"]["ip_family"], family, "{}", r["target"]);
    consistent(&r);
    assert_eq!(u(&r["totals"]["failed"]["total"]), 0);
    // Terminating at the action, not serving once the drain delay is over, removed when its
    // grace period ended (it keeps the open connections until killed).
    let start = f(&r["action"]["started_s"]);
    let terminating = event(&r, "pod-002", "terminating").expect("terminating");
    let not_serving = event(&r, "pod-002", "not-serving").expect("not serving");
    let removed = event(&r, "pod-002", "removed").expect("removed");
    assert!((terminating - start).abs() < 0.3, "{terminating} vs {start}");
    assert!(
        not_serving - terminating >= 0.95,
        "drain: {terminating} → {not_serving}"
    );
    assert!(removed - terminating >= 2.9, "grace: {terminating} → {removed}");
    // Its replacement became ready and answered.
    let new = r["action"]["endpoints_after"].as_array().unwrap();
    assert!(!new.iter().any(|p| p == "pod-002") && new.len() == 3, "{new:?}");
    let replacement = new.iter().find(|p| *p == "pod-004").expect("pod-004 replaced pod-002");
    assert!(event(&r, replacement.as_str().unwrap(), "ready").is_some());
    // 30 long-lived connections over 3 pods: pod-002 had some; each broke with it, apart.
    let ll = &r["totals"]["long_lived"];
    assert!(u(&ll["broken"]) > 0, "{ll}");
    assert_eq!(u(&ll["broken"]), u(&ll["broken_expected"]), "{ll}");
    for b in r["breaks"].as_array().unwrap() {
        assert_eq!(b["pod"], "pod-002", "{b}");
        assert_eq!(b["expected"], true);
        assert!(f(&b["at_s"]) >= removed - 0.5, "broke at its removal: {b}");
    }
    let udp = &r["totals"]["udp"];
    assert_eq!(u(&udp["lost"]), u(&udp["lost_expected"]), "{udp}");
    assert!(
        r["notes"][0].as_str().unwrap().contains("counted apart"),
        "{}",
        r["notes"]
    );
    // The lab is as it was: three pods, pod-002 replaced.
    assert_eq!(lab.pods().len(), 3);
}

#[test]
fn lab_disruption_drained_delete_passes_nftables() {
    drained_delete_passes("nftables");
}

/// Over IPv6 (an IPv6-only lab: the long-lived connections, the storm and the UDP sessions all
/// go to the IPv6 ClusterIP; the drain and the UDP conntrack cleanup of the `ip6` rules).
#[test]
fn lab_disruption_drained_delete_passes_ipv6_nftables() {
    drained_delete_passes_in("dd6", "nftables", "ipv6");
}

#[test]
fn lab_disruption_drained_delete_passes_iptables() {
    drained_delete_passes("iptables");
}

/// Nodes that apply changes 2 s late and a pod that stops at once (no drain, 1 s of grace):
/// the nodes keep sending new connections to it, refused while its listeners are closed, timed
/// out once it is gone, until they sync. FAIL, with those seconds.
fn sync_slower_than_drain_fails(mode: &str) {
    let lab = LabGuard::up(
        &format!("ds{}", &mode[..1]),
        &[
            "--nodes",
            "3",
            "--pods",
            "3",
            "--proxy-mode",
            mode,
            "--sync-delay",
            "2s",
        ],
    );
    let (code, r) = lab.disruption(&[
        "--action",
        "delete-pod=pod-001",
        "--grace-period",
        "1",
        "--rate",
        "150",
        "--long-lived",
        "6",
        "--udp-sessions",
        "6",
        "--warmup",
        "2s",
        "--settle",
        "2s",
    ]);
    assert_eq!(code, Some(1), "{r}");
    assert_eq!(r["verdict"], "FAIL");
    consistent(&r);
    assert_eq!(r["params"]["sync_delay"], "2000ms");
    let k = &r["totals"]["failed"];
    assert!(u(&k["refused"]) > 0, "refused while not serving: {k}");
    assert!(u(&k["timeout"]) > 0, "timeouts once removed: {k}");
    // In the right seconds: from the action until the nodes synced, nothing before.
    let start = f(&r["action"]["started_s"]);
    let last_sync = r["syncs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| f(&s["at_s"]))
        .fold(0.0, f64::max);
    assert!(
        last_sync >= start + 1.9,
        "the nodes synced {last_sync}, the action at {start}"
    );
    let seconds = failed_seconds(&r);
    assert!(!seconds.is_empty());
    assert!(
        seconds
            .iter()
            .all(|&s| s as f64 >= start.floor() && (s as f64) < last_sync + 1.0),
        "failures in {seconds:?}, action at {start}, last sync at {last_sync}"
    );
    // Refused first (closed listeners), timeouts after the pod was removed.
    let removed = event(&r, "pod-001", "removed").expect("removed");
    let first_timeout = r["seconds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| u(&s["failed"]["timeout"]) > 0)
        .map(|s| u(&s["second"]))
        .unwrap();
    assert!(
        first_timeout as f64 >= removed.floor(),
        "timeouts from {first_timeout}, removed at {removed}"
    );
    let reason = r["reasons"][0].as_str().unwrap();
    assert!(
        reason.contains("new connection(s) failed in second(s) ") && reason.contains("refused"),
        "{reason}"
    );
}

#[test]
fn lab_disruption_sync_slower_than_drain_fails_nftables() {
    sync_slower_than_drain_fails("nftables");
}

#[test]
fn lab_disruption_sync_slower_than_drain_fails_iptables() {
    sync_slower_than_drain_fails("iptables");
}

/// scale=N up and down: new pods answer once ready, removed ones stop; the lab is scaled back
/// to its pods afterwards.
#[test]
fn lab_disruption_scale_up_and_down_and_back() {
    let lab = LabGuard::up("dsc", &["--nodes", "3", "--pods", "3"]);
    let (code, r) = lab.disruption(&[
        "--action",
        "scale=5",
        "--rate",
        "100",
        "--long-lived",
        "6",
        "--udp-sessions",
        "6",
        "--warmup",
        "1s",
        "--settle",
        "2s",
    ]);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["verdict"], "PASS", "{}", r["reasons"]);
    consistent(&r);
    assert_eq!(r["action"]["what"], "scaled from 3 to 5 pods");
    assert_eq!(r["action"]["endpoints_after"].as_array().unwrap().len(), 5);
    // The new pods: ready after the action, answering only from then on.
    let start = f(&r["action"]["started_s"]);
    for pod in ["pod-004", "pod-005"] {
        let ready = event(&r, pod, "ready").unwrap_or_else(|| panic!("{pod} ready: {}", r["events"]));
        assert!(ready >= start, "{pod} ready at {ready}");
        for s in r["seconds"].as_array().unwrap() {
            if s["pods"].get(pod).is_some() {
                assert!(
                    u(&s["second"]) as f64 >= ready.floor(),
                    "{pod} answered in {s} before ready"
                );
            }
        }
        assert!(
            r["seconds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["pods"].get(pod).is_some()),
            "{pod} never answered"
        );
    }
    // Scaled back to 3 once the record was made.
    assert_eq!(lab.pods().len(), 3, "{:?}", lab.pods());

    // Down to 2, with a drain: the newest pod goes, nothing fails; back to 3 afterwards.
    let (code, r) = lab.disruption(&[
        "--action",
        "scale=2",
        "--drain-delay",
        "1s",
        "--grace-period",
        "2",
        "--rate",
        "100",
        "--long-lived",
        "6",
        "--udp-sessions",
        "0",
        "--warmup",
        "1s",
        "--settle",
        "1s",
        "--timeout",
        "2s",
    ]);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["verdict"], "PASS", "{}", r["reasons"]);
    consistent(&r);
    let gone: Vec<&str> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["step"] == "removed")
        .map(|e| e["pod"].as_str().unwrap())
        .collect();
    assert_eq!(gone.len(), 1, "{}", r["events"]);
    assert_eq!(r["action"]["endpoints_after"].as_array().unwrap().len(), 2);
    assert_eq!(u(&r["totals"]["udp"]["sent"]), 0);
    assert_eq!(lab.pods().len(), 3);
}

/// rollout-restart replaces every pod in steps; drain-node empties a node and places the
/// replacements elsewhere. With a drain, neither fails a connection.
#[test]
fn lab_disruption_rollout_restart_and_drain_node() {
    let lab = LabGuard::up("drr", &["--nodes", "3", "--pods", "4"]);
    let before: Vec<String> = lab.pods().into_iter().map(|(p, _)| p).collect();
    let (code, r) = lab.disruption(&[
        "--action",
        "rollout-restart",
        "--drain-delay",
        "1s",
        "--grace-period",
        "2",
        "--rate",
        "100",
        "--long-lived",
        "8",
        "--udp-sessions",
        "4",
        "--warmup",
        "1s",
        "--settle",
        "1s",
        "--timeout",
        "2s",
    ]);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["verdict"], "PASS", "{}", r["reasons"]);
    consistent(&r);
    assert_eq!(
        r["action"]["what"],
        "rolling restart of 4 pods (maxSurge 1, maxUnavailable 1)"
    );
    let after: Vec<String> = lab.pods().into_iter().map(|(p, _)| p).collect();
    assert_eq!(after.len(), 4);
    assert!(after.iter().all(|p| !before.contains(p)), "{before:?} → {after:?}");
    for p in &before {
        assert!(event(&r, p, "removed").is_some(), "{p} removed: {}", r["events"]);
    }

    // The node with the most pods.
    let pods = lab.pods();
    let count = |node: &str| pods.iter().filter(|(_, n)| n == node).count();
    let node = ["node1", "node2", "node3"]
        .into_iter()
        .max_by_key(|n| count(n))
        .unwrap();
    let on_node = count(node);
    let action = format!("drain-node={node}");
    let (code, r) = lab.disruption(&[
        "--action",
        &action,
        "--drain-delay",
        "1s",
        "--grace-period",
        "2",
        "--rate",
        "100",
        "--long-lived",
        "8",
        "--udp-sessions",
        "4",
        "--warmup",
        "1s",
        "--settle",
        "1s",
        "--timeout",
        "2s",
    ]);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["verdict"], "PASS", "{}", r["reasons"]);
    assert!(
        r["action"]["what"]
            .as_str()
            .unwrap()
            .starts_with(&format!("drained {node}: {on_node} pod(s) evicted")),
        "{}",
        r["action"]["what"]
    );
    let pods = lab.pods();
    assert_eq!(pods.len(), 4);
    assert!(pods.iter().all(|(_, n)| n != node), "{pods:?}");
}

/// Ctrl-C during the action: exit 130, the partial record saved, the lab put back (its pod
/// count), no agent left.
#[test]
fn lab_disruption_interrupted_saves_restores_and_cleans_up() {
    let lab = LabGuard::up("din", &["--nodes", "3", "--pods", "3"]);
    let prefix = format!("svclb-{}.", lab.name);
    let saves = tempfile::tempdir().unwrap();
    let child = Command::new(common::BIN)
        .args([
            "disruption",
            "--lab",
            &lab.name,
            "--action",
            "scale=5",
            "--ready-delay",
            "3s",
        ])
        .args(["--rate", "100", "--warmup", "1s", "--tag", "cut", "--save"])
        .arg(saves.path())
        .env("SVCLB_LAB_DIR", lab.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let t0 = Instant::now();
    while !has_agent_child(pid) {
        assert!(t0.elapsed() < Duration::from_secs(60), "the agents never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // After the warm-up, while the new pods wait out their ready delay.
    let r = common::interrupt(child, Duration::from_millis(2000), saves.path(), "cut");
    assert_eq!(r["kind"], "DisruptionRun");
    assert!(f(&r["action"]["started_s"]) >= 1.0);
    assert!(r["action"]["stable_s"].is_null(), "{}", r["action"]);
    assert!(u(&r["totals"]["attempts"]) > 100);
    consistent(&r);
    assert_eq!(agents_in_netns(&prefix), Vec::<u32>::new(), "agents left running");
    assert_eq!(lab.pods().len(), 3, "scaled back: {:?}", lab.pods());
}

/// Two runs side by side in `compare`, failures aligned on their actions.
#[test]
fn lab_disruption_runs_compare_side_by_side() {
    let lab = LabGuard::up("dcm", &["--nodes", "2", "--pods", "2"]);
    let saves = tempfile::tempdir().unwrap();
    let save = saves.path().to_str().unwrap();
    for (tag, grace) in [("abrupt", "0"), ("graceful", "2")] {
        let out = lab.run(&[
            "disruption",
            "--lab",
            &lab.name,
            "--action",
            "delete-pod",
            "--grace-period",
            grace,
            "--drain-delay",
            if grace == "0" { "0s" } else { "1s" },
            "--rate",
            "100",
            "--long-lived",
            "10",
            "--udp-sessions",
            "0",
            "--warmup",
            "1s",
            "--settle",
            "1s",
            "--tag",
            tag,
            "--save",
            save,
            "--html",
            &format!("{save}/{tag}.html"),
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("Timeline (one row per second"), "{text}{err}");
        assert!(text.contains("▶ delete-pod"), "{text}");
        assert!(!text.contains("action error"), "{text}{err}");
    }
    let out = lab.run(&[
        "compare",
        &format!("{save}/abrupt.json"),
        &format!("{save}/graceful.json"),
    ]);
    let cmp = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{cmp}");
    assert!(cmp.contains("Disruption runs:"), "{cmp}");
    assert!(cmp.contains("Failed new connections per second (+0: the second the action started)"));
    let row = |tag: &str| {
        cmp.lines()
            .find(|l| l.trim_start().starts_with(tag))
            .unwrap()
            .to_string()
    };
    // Killed at once, its long-lived connections broke with it while it served: a failure.
    assert!(row("abrupt").contains("FAIL"), "{cmp}");
    assert!(row("graceful").contains("PASS"), "{cmp}");
    let out = lab.run(&["compare", "-o", "json", save]);
    let doc = json(&out);
    assert_eq!(doc["disruption_runs"].as_array().unwrap().len(), 2);
    // Each run's page, and one page of both.
    for tag in ["abrupt", "graceful"] {
        let page = std::fs::read_to_string(format!("{save}/{tag}.html")).unwrap();
        assert!(page.contains("id=\"disruption-1\"") && page.contains("<svg"), "{tag}");
    }
    let all = format!("{save}/both.html");
    let out = lab.run(&["report", save, "-o", &all]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let page = std::fs::read_to_string(&all).unwrap();
    assert!(page.contains("id=\"disruption-several\"") && page.contains("id=\"disruption-2\""));
}

#[test]
fn disruption_bad_input_is_one_line_and_exit_2() {
    for (args, says) in [
        (&["--action", "reboot"][..], "give delete-pod[=POD]"),
        (&["--action", "scale=lots"][..], "scale=N takes a number"),
        (&["--rate", "-1"][..], "--rate -1"),
        (&["--rate", "1e6"][..], "at most 100000"),
        (
            &["--rate", "0", "--long-lived", "0", "--udp-sessions", "0"][..],
            "no traffic",
        ),
        (
            &["--action", "delete-pod", "--duration", "2s", "--warmup", "3s"][..],
            "ends before the action starts",
        ),
        (&["--timeout", "0s"][..], "--timeout 0s"),
    ] {
        let mut all = vec!["disruption", "--lab", "nolab", "--no-save"];
        all.extend_from_slice(args);
        let (code, _, err) = common::svclb(&all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // A cluster's grace period is only for the pods a run deletes or evicts.
    let (code, _, err) = common::svclb(&["disruption", "--action", "rollout-restart", "--grace-period", "3"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("on a cluster it is the deleted or evicted pod's"), "{err}");
    // A lab setting without a lab, and a lab that does not exist.
    let (code, _, err) = common::svclb(&["disruption", "--drain-delay", "1s"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--lab"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let out = common::lab_svclb(dir.path(), &["disruption", "--lab", "nolab", "--no-save"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no lab named nolab"), "{err}");
}
