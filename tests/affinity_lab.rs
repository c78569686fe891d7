//! `affinity --lab` end to end (root): sessions in the lab's client namespace through kube-proxy's
//! rules to pod servers. Every test uses its own lab state directory and a unique lab name, and
//! removes its lab on drop (also when it fails).
// Network namespaces and netfilter: Linux only (the darwin workflow runs the rest).
#![cfg(target_os = "linux")]

mod common;

use common::{LabGuard, output_json as json};

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

fn n(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"))
}

impl LabGuard {
    fn affinity(&self, args: &[&str]) -> (Option<i32>, serde_json::Value) {
        let mut all = vec![
            "affinity",
            "--lab",
            &self.name,
            "-o",
            "json",
            "--no-save",
            "--stats-interval",
            "1h",
        ];
        all.extend_from_slice(args);
        let out = self.run(&all);
        (out.status.code(), json(&out))
    }

    /// The pod's server counters (HTTP `/stats`, read inside the pod's namespace).
    fn pod_stats(&self, pod: &str) -> BTreeMap<String, u64> {
        let ns = format!("svclb-{}.{pod}", self.name);
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "bash", "-c"])
            .arg("exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /stats HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let body = text
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_else(|| panic!("HTTP reply: {text}"));
        body.lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(s, c)| (s.to_string(), c.parse().unwrap()))
            .collect()
    }
}

fn sessions_of(r: &serde_json::Value) -> &Vec<serde_json::Value> {
    r["session_detail"].as_array().unwrap()
}

fn ip_of(addr: &str) -> String {
    addr.parse::<std::net::SocketAddr>().unwrap().ip().to_string()
}

#[test]
fn lab_affinity_clientip_holds_with_zero_changes() {
    let lab = LabGuard::up("afc", &["--nodes", "3", "--pods", "6", "--affinity", "clientip"]);
    for proto in ["--udp", "--tcp"] {
        let (code, r) = lab.affinity(&[
            proto,
            "--sessions",
            "40",
            "--interval",
            "200ms",
            "--timeout",
            "1s",
            "--duration",
            "3s",
        ]);
        assert_eq!(code, Some(0), "{proto}: {r}");
        assert_eq!(r["verdict"], "HOLDS");
        assert_eq!((n(&r, "pod_changes"), n(&r, "address_changes")), (0, 0), "{r}");
        assert_eq!(n(&r, "sent"), n(&r, "answered") + n(&r, "lost"));
        // ClientIP: every session (one client IP) lands on the same pod.
        let serving: Vec<&serde_json::Value> = r["pods"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| n(p, "sessions") > 0)
            .collect();
        assert_eq!(serving.len(), 1, "{}", r["pods"]);
        assert_eq!(n(serving[0], "sessions"), 40);
        assert_eq!(r["pods"].as_array().unwrap().len(), 6, "every pod listed");
    }
    // ClientIP over a new source port per message: the upstream e2e rule holds.
    let (code, r) = lab.affinity(&[
        "--udp",
        "--sessions",
        "10",
        "--interval",
        "100ms",
        "--timeout",
        "1s",
        "--duration",
        "3s",
        "--new-connection-per-message",
    ]);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(n(&r, "pod_changes"), 0);
}

#[test]
fn lab_affinity_none_with_a_new_port_per_message_sees_changes() {
    let lab = LabGuard::up("afn", &["--nodes", "3", "--pods", "6", "--affinity", "none"]);
    let (code, r) = lab.affinity(&[
        "--udp",
        "--sessions",
        "10",
        "--interval",
        "100ms",
        "--timeout",
        "1s",
        "--duration",
        "3s",
        "--new-connection-per-message",
    ]);
    assert_eq!(code, Some(1), "{r}");
    assert_eq!(r["verdict"], "VIOLATED");
    assert!(n(&r, "pod_changes") > 50, "random pod per new port: {r}");
    assert!(
        r["changes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["during_pool_change"] == false)
    );
    // The same sessions with their own source port kept: conntrack keeps each on its pod.
    let (code, r) = lab.affinity(&[
        "--udp",
        "--sessions",
        "30",
        "--interval",
        "100ms",
        "--timeout",
        "1s",
        "--duration",
        "2s",
    ]);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(n(&r, "pod_changes"), 0);
}

#[test]
fn lab_affinity_delete_pod_moves_only_its_sessions_and_loss_is_exact_tcp() {
    delete_pod_moves_only_its_sessions("--tcp", "afd", "ipv4", "nftables");
}

/// UDP needs the proxy to delete the deleted endpoint's conntrack entries (kube-proxy does; the lab
/// does it over ctnetlink): otherwise the flows stay pinned to the dead pod and only lose.
#[test]
fn lab_affinity_delete_pod_moves_only_its_sessions_and_loss_is_exact_udp() {
    delete_pod_moves_only_its_sessions("--udp", "afu", "ipv4", "nftables");
}

/// The same over IPv6, iptables mode: the sessions go to the IPv6 ClusterIP, and the UDP ones
/// move only if the `ip6tables` rules and the IPv6 conntrack cleanup let go of the deleted pod.
#[test]
fn lab_affinity_delete_pod_moves_only_its_sessions_and_loss_is_exact_udp_ipv6_iptables() {
    delete_pod_moves_only_its_sessions("--udp", "af6", "ipv6", "iptables");
}

fn delete_pod_moves_only_its_sessions(proto: &str, tag: &str, family: &str, mode: &str) {
    let lab = LabGuard::up(
        tag,
        &[
            "--nodes",
            "3",
            "--pods",
            "6",
            "--affinity",
            "none",
            "--ip-family",
            family,
            "--proxy-mode",
            mode,
        ],
    );
    // 60 sessions over 6 pods: none on pod-002 has a chance of (5/6)^60 = 2e-5 (with 30 it was
    // 0.4%, and a CI run saw it).
    let child = Command::new(common::BIN)
        .args([
            "affinity",
            proto,
            "--lab",
            &lab.name,
            "--sessions",
            "60",
            "--interval",
            "200ms",
            "--timeout",
            "1s",
            "--duration",
            "5s",
            "-o",
            "json",
            "--no-save",
            "--ip-family",
            family,
        ])
        .env("SVCLB_LAB_DIR", lab.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    // A TCP session keeps its connection to a draining server, which finishes it: with a grace
    // period its sessions would move only when the pod is killed, after this run. Killed at once,
    // they move now. UDP sessions move as soon as the pod no longer serves (its conntrack entries
    // go), so they get the default grace period.
    let grace = if proto == "--tcp" { "0" } else { "5" };
    let out = lab.run(&[
        "lab",
        "delete-pod",
        "pod-002",
        "--name",
        &lab.name,
        "--grace-period",
        grace,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = child.wait_with_output().unwrap();
    let r = json(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "changes during the pool change are not violations: {r}"
    );
    assert_eq!(r["target"]["ip_family"], family, "{}", r["target"]);
    let pool = r["pool_changes"].as_array().unwrap();
    assert_eq!(pool.len(), 1, "{r}");
    assert_eq!(pool[0]["removed"][0], "pod-002");

    let changes = r["changes"].as_array().unwrap();
    let moved: Vec<&serde_json::Value> = sessions_of(&r)
        .iter()
        .filter(|s| s["pods"].get("pod-002").is_some())
        .collect();
    assert!(!moved.is_empty(), "some sessions were on pod-002: {r}");
    for s in sessions_of(&r) {
        let id = n(s, "session");
        let listed: Vec<&serde_json::Value> = changes.iter().filter(|c| n(c, "session") == id).collect();
        if s["pods"].get("pod-002").is_some() {
            assert_ne!(s["last_pod"], "pod-002", "{s}");
            assert!(
                listed
                    .iter()
                    .any(|c| c["kind"] == "pod" && c["old"] == "pod-002" && c["during_pool_change"] == true),
                "{s}: {listed:?}"
            );
        } else {
            assert_eq!(s["pods"].as_object().unwrap().len(), 1, "kept its pod: {s}");
            assert!(listed.is_empty(), "{s}: {listed:?}");
        }
    }
    assert_eq!(
        n(&r, "changes_during_pool_change"),
        n(&r, "pod_changes") + n(&r, "address_changes")
    );

    // Loss is exact: what each surviving pod's server counted per session is what the session got
    // answered by it; sessions never on pod-002 lost nothing, the others lost what was not answered.
    let prefix = r["session_prefix"].as_str().unwrap();
    let mut stats = BTreeMap::new();
    for pod in ["pod-001", "pod-003", "pod-004", "pod-005", "pod-006"] {
        stats.insert(pod, lab.pod_stats(pod));
    }
    for s in sessions_of(&r) {
        let name = format!("{prefix}-{}", n(s, "session"));
        for (pod, counts) in &stats {
            let answered = s["pods"].get(*pod).and_then(|v| v.as_u64()).unwrap_or(0);
            assert_eq!(counts.get(&name).copied().unwrap_or(0), answered, "{pod} {s}");
        }
        assert_eq!(n(s, "sent"), n(s, "answered") + n(s, "lost"));
        if s["pods"].get("pod-002").is_none() {
            assert_eq!(n(s, "lost"), 0, "{s}");
        }
    }
}

#[test]
fn lab_affinity_reflective_address_follows_external_traffic_policy() {
    // The same sessions under both policies.
    const RUN: &[&str] = &[
        "--udp",
        "--sessions",
        "20",
        "--interval",
        "200ms",
        "--timeout",
        "1s",
        "--duration",
        "2s",
    ];
    let lab = LabGuard::up(
        "afe",
        &["--nodes", "3", "--pods", "6", "--external-traffic-policy", "Local"],
    );
    let status = lab.run(&["lab", "status", "--name", &lab.name, "-o", "json"]);
    let status = json(&status);
    let client_ip = status["client"]["ip"].as_str().unwrap().to_string();
    let (code, r) = lab.affinity(RUN);
    assert_eq!(code, Some(0), "{r}");
    for s in sessions_of(&r) {
        assert_eq!(
            ip_of(s["last_address"].as_str().unwrap()),
            client_ip,
            "eTP Local keeps the client address: {s}"
        );
    }
    // eTP Cluster in a lab of its own: switching the policy in place would leave the Local run's
    // UDP conntrack entries (kube-proxy does not flush them on a policy change either), and a
    // session that reuses a source port would keep its unmasqueraded entry.
    drop(lab);
    let lab = LabGuard::up(
        "afc",
        &["--nodes", "3", "--pods", "6", "--external-traffic-policy", "Cluster"],
    );
    let status = json(&lab.run(&["lab", "status", "--name", &lab.name, "-o", "json"]));
    let node_ips: Vec<String> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["ip"].as_str().unwrap().to_string())
        .collect();
    let (code, r) = lab.affinity(RUN);
    assert_eq!(code, Some(0), "{r}");
    for s in sessions_of(&r) {
        let ip = ip_of(s["last_address"].as_str().unwrap());
        assert!(
            node_ips.contains(&ip),
            "eTP Cluster masquerades to a node address: {ip} not in {node_ips:?}"
        );
    }
}
