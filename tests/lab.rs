//! End-to-end tests of the lab: real namespaces, real kube-proxy rules, real servers, real
//! storms (`kubectl-svclb spread` run inside lab namespaces). They need root (CI runs as
//! root); without it they are skipped with a note on stderr.
//!
//! Every test builds labs with unique names, tears them down even when it panics (a guard
//! whose Drop runs `down_by_name`), and checks that no namespace, process, root-namespace
//! route or address was left behind.
// Network namespaces and netfilter: Linux only (the darwin workflow runs the rest).
#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use svclb::lab::{self, EndpointEvent, Lab, LabChanges, LabConfig, LabStatus, LabTiming, ProxyMode, SyncDelay};
use svclb::service::{IpFamily, ServiceOptions, SessionAffinity, TrafficDistribution, TrafficPolicy};

const EXE: &str = env!("CARGO_BIN_EXE_kubectl-svclb");

/// The lab tests need root: fail loudly (never pass without testing) when run without it.
fn is_root() -> bool {
    // SAFETY: no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "the lab tests need root (CAP_NET_ADMIN, CAP_SYS_ADMIN): run them as root, as CI does"
    );
    root
}

fn root_net() -> (String, String) {
    let run =
        |args: &[&str]| String::from_utf8(Command::new("ip").args(args).output().expect("ip").stdout).expect("utf8");
    // Both families' routes (`ip route` alone lists IPv4 only); `ip addr` lists both.
    let routes = run(&["route", "show", "table", "all"]) + &run(&["-6", "route", "show", "table", "all"]);
    (routes, run(&["addr"]))
}

/// A lab that is always torn down; `finish` also checks nothing was left.
struct TestLab {
    lab: Option<Lab>,
    name: String,
    root_before: (String, String),
}

impl TestLab {
    fn up(base: &str, cfg: LabConfig) -> TestLab {
        let name = format!("{base}-{}", std::process::id() % 100_000);
        let root_before = root_net();
        let cfg = LabConfig {
            name: name.clone(),
            server: Some(EXE.into()),
            ..cfg
        };
        // Leftovers of an earlier crashed run with the same pid would block `up`.
        let _ = lab::down_by_name(&name);
        let lab = Lab::up(&cfg).unwrap_or_else(|e| panic!("lab up {name}: {e:#}"));
        TestLab {
            lab: Some(lab),
            name,
            root_before,
        }
    }

    fn lab(&mut self) -> &mut Lab {
        self.lab.as_mut().expect("lab is up")
    }

    fn finish(mut self) {
        let lab = self.lab.take().expect("lab is up");
        let pids: Vec<u32> = lab.status().pods.iter().map(|p| p.pid).collect();
        lab.down().expect("lab down");
        assert_clean(&self.name, &pids, &self.root_before);
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if self.lab.is_some() {
            let _ = lab::down_by_name(&self.name);
        }
    }
}

fn assert_clean(name: &str, pids: &[u32], root_before: &(String, String)) {
    let left = namespaces_with(&lab::netns_prefix(name));
    assert!(left.is_empty(), "namespaces left: {left:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if alive.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "processes left: {alive:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!lab::labs_dir().join(name).exists(), "state dir left");
    let after = root_net();
    assert_eq!(root_before.0, after.0, "root namespace routes changed");
    assert_eq!(root_before.1, after.1, "root namespace addresses changed");
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn small(nodes: usize, pods: usize, mode: ProxyMode) -> LabConfig {
    LabConfig {
        nodes,
        pods,
        zones: 3,
        proxy_mode: mode,
        ..LabConfig::default()
    }
}

/// What one storm saw.
#[derive(Debug)]
struct Storm {
    ok: u64,
    failed: u64,
    refused: u64,
    timeout: u64,
    backends: BTreeMap<String, u64>,
    verdict: String,
    p_value: Option<f64>,
}

impl Storm {
    fn names(&self) -> Vec<&str> {
        self.backends
            .iter()
            .filter(|(_, c)| **c > 0)
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

/// Runs `kubectl-svclb spread` inside `who`'s namespace against `addr`.
fn spread(lab: &Lab, who: &str, addr: &str, conns: u64, udp: bool) -> Storm {
    spread_parallel(lab, who, addr, conns, 20, udp)
}

fn spread_parallel(lab: &Lab, who: &str, addr: &str, conns: u64, parallel: usize, udp: bool) -> Storm {
    // The record is read from its save: a run where nothing answered reports in one line (exit 2).
    let saves = tempfile::tempdir().expect("tempdir");
    let mut cmd = lab.command(who, Path::new(EXE)).expect("command");
    cmd.args(["spread", "--address", addr, "--conns", &conns.to_string()])
        .args(["--parallel", &parallel.to_string()])
        .args(["--timeout", "1s", "--deadline", "30s", "-o", "json", "--tag", "run"])
        .arg("--save")
        .arg(saves.path());
    if udp {
        cmd.arg("--udp");
    }
    let out = cmd.output().expect("run spread");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(0)
            || out.status.code() == Some(1)
            || (out.status.code() == Some(2) && stderr.contains("connections to")),
        "spread in {who} to {addr} could not run: {stderr}"
    );
    let saved = std::fs::read(saves.path().join("run.json")).expect("the run was saved");
    let v: serde_json::Value = serde_json::from_slice(&saved).expect("a JSON run record");
    let backends = v["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            (
                b["name"].as_str().expect("name").to_string(),
                b["count"].as_u64().expect("count"),
            )
        })
        .collect();
    Storm {
        ok: v["ok"].as_u64().expect("ok"),
        failed: v["failed"]["total"].as_u64().expect("failed"),
        refused: v["failed"]["refused"].as_u64().expect("refused"),
        timeout: v["failed"]["timeout"].as_u64().expect("timeout"),
        backends,
        verdict: v["stats"]["verdict"].as_str().expect("verdict").to_string(),
        p_value: v["stats"]["p_value"].as_f64(),
    }
}

/// The first line a TCP server at `ip:port` sends to a connection from `who` (bash /dev/tcp).
fn hello(lab: &Lab, who: &str, ip: &str, port: u16) -> Option<String> {
    let out = over_tcp(lab, who, ip, port, "head -1 <&3");
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !line.is_empty()).then_some(line)
}

/// Runs `then` in bash inside `who`'s namespace with fd 3 connected to `ip:port` (/dev/tcp), for
/// at most 2 s.
fn over_tcp(lab: &Lab, who: &str, ip: &str, port: u16, then: &str) -> std::process::Output {
    let script = format!("exec 3<>/dev/tcp/{ip}/{port} && {then}");
    lab.command(who, Path::new("timeout"))
        .expect("command")
        .args(["2", "bash", "-c", &script])
        .output()
        .expect("run bash")
}

/// `client=` address (without port) from a server line.
fn client_ip(line: &str) -> String {
    let c = line
        .split_whitespace()
        .find_map(|t| t.strip_prefix("client="))
        .expect("client= field");
    c.rsplit_once(':').expect("ip:port").0.to_string()
}

fn pods_on(lab: &Lab, node: &str) -> Vec<String> {
    lab.pods()
        .iter()
        .filter(|p| p.node == node)
        .map(|p| p.name.clone())
        .collect()
}

fn pods_in_zone(lab: &Lab, zone: &str) -> Vec<String> {
    lab.pods()
        .iter()
        .filter(|p| p.zone == zone)
        .map(|p| p.name.clone())
        .collect()
}

fn all_pods(lab: &Lab) -> Vec<String> {
    lab.pods().iter().map(|p| p.name.clone()).collect()
}

/// Every pod answered, none got less than a third of its fair share.
fn assert_plausible(s: &Storm, pods: &[String]) {
    assert_eq!(s.failed, 0, "{s:?}");
    assert_eq!(s.names(), pods.iter().map(String::as_str).collect::<Vec<_>>(), "{s:?}");
    let fair = s.ok as f64 / pods.len() as f64;
    for (n, c) in &s.backends {
        assert!(
            (*c as f64) > fair / 3.0,
            "{n} got {c} of {} (fair {fair:.0}): {s:?}",
            s.ok
        );
    }
}

fn cluster_spread(mode: ProxyMode, base: &str) {
    let mut t = TestLab::up(base, small(3, 9, mode));
    let lab = t.lab();
    let pods = all_pods(lab);
    let tcp = spread(lab, "pod-001", "10.96.0.10:5001", 1800, false);
    assert_plausible(&tcp, &pods);
    let udp = spread(lab, "pod-002", "10.96.0.10:5001", 900, true);
    assert_plausible(&udp, &pods);
    // Pod to ClusterIP is not masqueraded: another backend sees the pod's own address; a
    // hairpin (the pod reaching itself) is masqueraded to the node's address.
    let (mut other, mut hairpin) = (0, 0);
    for _ in 0..60 {
        let line = hello(lab, "pod-001", "10.96.0.10", 5001).expect("answer");
        if line.starts_with("pod-001 ") {
            assert_eq!(client_ip(&line), "172.31.0.11", "hairpin is masqueraded: {line}");
            hairpin += 1;
        } else {
            assert_eq!(client_ip(&line), lab.pods()[0].ip.to_string(), "{line}");
            other += 1;
        }
        if other > 0 && hairpin > 0 {
            break;
        }
    }
    assert!(
        other > 0 && hairpin > 0,
        "saw {other} other / {hairpin} hairpin answers"
    );
    let rules = lab.rules("node1").expect("rules");
    match mode {
        ProxyMode::Nftables => {
            assert!(rules.contains("numgen random mod 9 vmap"), "{rules}");
            assert!(rules.contains("masquerade fully-random"), "{rules}");
        }
        ProxyMode::Iptables => {
            // The kernel keeps the probability as a 32-bit fraction: iptables-save prints
            // 0.11111111101; the restore input carries kube-proxy's %0.10f.
            assert!(
                rules.contains("-m statistic --mode random --probability 0.1111111"),
                "{rules}"
            );
            assert!(rules.contains("MASQUERADE --random-fully"), "{rules}");
            let generated = lab.generated_rules("node1").expect("generated");
            assert!(
                generated.contains("--probability 0.1111111111 -j KUBE-SEP-"),
                "{generated}"
            );
        }
    }
    t.finish();
}

#[test]
fn lab_nftables_clusterip_spread_tcp_udp() {
    if is_root() {
        cluster_spread(ProxyMode::Nftables, "nftcip");
    }
}

#[test]
fn lab_iptables_clusterip_spread_tcp_udp() {
    if is_root() {
        cluster_spread(ProxyMode::Iptables, "iptcip");
    }
}

fn affinity(mode: ProxyMode, base: &str) {
    let cfg = LabConfig {
        options: ServiceOptions {
            affinity: SessionAffinity::ClientIp,
            ..ServiceOptions::default()
        },
        ..small(3, 6, mode)
    };
    let mut t = TestLab::up(base, cfg);
    let lab = t.lab();
    // The first connection creates the affinity entry; connections racing it (first
    // packets in flight together) are balanced independently, in a real cluster too.
    spread_parallel(lab, "pod-001", "10.96.0.10:5001", 1, 1, false);
    spread_parallel(lab, "client", "172.31.0.12:30001", 1, 1, false);
    let from_pod = spread(lab, "pod-001", "10.96.0.10:5001", 200, false);
    assert_eq!(from_pod.ok, 200, "{from_pod:?}");
    assert_eq!(from_pod.names().len(), 1, "one client, one backend: {from_pod:?}");
    let from_client = spread(lab, "client", "172.31.0.12:30001", 200, false);
    assert_eq!(from_client.ok, 200, "{from_client:?}");
    assert_eq!(from_client.names().len(), 1, "one client, one backend: {from_client:?}");
    // Deleting another pod rewrites the rules but keeps the affinity state.
    let pinned = from_pod.names()[0].to_string();
    let other = all_pods(lab)
        .into_iter()
        .find(|p| *p != pinned && p != "pod-001")
        .expect("another pod");
    lab.delete_pod(&other).expect("delete pod");
    let again = spread(lab, "pod-001", "10.96.0.10:5001", 100, false);
    assert_eq!(
        again.names(),
        vec![pinned.as_str()],
        "affinity survives the rewrite: {again:?}"
    );
    // Without affinity the same client is spread again.
    lab.set(&LabChanges {
        affinity: Some(SessionAffinity::None),
        ..Default::default()
    })
    .expect("set");
    let spread_again = spread(lab, "pod-001", "10.96.0.10:5001", 300, false);
    assert_eq!(spread_again.names().len(), 5, "{spread_again:?}");
    t.finish();
}

#[test]
fn lab_nftables_affinity_clientip() {
    if is_root() {
        affinity(ProxyMode::Nftables, "nftaff");
    }
}

#[test]
fn lab_iptables_affinity_clientip() {
    if is_root() {
        affinity(ProxyMode::Iptables, "iptaff");
    }
}

/// 3 nodes, 4 pods: node1 has pod-001 and pod-004, node2 pod-002, node3 pod-003.
fn etp_local(mode: ProxyMode, base: &str) {
    let cfg = LabConfig {
        options: ServiceOptions {
            external_traffic_policy: TrafficPolicy::Local,
            ..ServiceOptions::default()
        },
        ..small(3, 4, mode)
    };
    let mut t = TestLab::up(base, cfg);
    let lab = t.lab();
    lab.delete_pod("pod-003").expect("empty node3");
    // node3 has no local endpoint: its nodePort gets nothing.
    let none = spread(lab, "client", "172.31.0.13:30001", 20, false);
    assert_eq!(none.ok, 0, "{none:?}");
    // node1: only its own pods answer, and they see the client's own address.
    let n1 = spread(lab, "client", "172.31.0.11:30001", 400, false);
    assert_plausible(&n1, &pods_on(lab, "node1"));
    let line = hello(lab, "client", "172.31.0.11", 30001).expect("answer");
    assert_eq!(
        client_ip(&line),
        "172.31.0.2",
        "eTP Local keeps the client address: {line}"
    );
    // The LoadBalancer IP goes to node1 as well.
    let lb = spread(lab, "client", "172.30.0.10:5001", 200, false);
    assert_plausible(&lb, &pods_on(lab, "node1"));
    // eTP Cluster: every pod answers via any node, masqueraded to the node's address.
    lab.set(&LabChanges {
        external_traffic_policy: Some(TrafficPolicy::Cluster),
        ..Default::default()
    })
    .expect("set");
    let all = spread(lab, "client", "172.31.0.13:30001", 600, false);
    assert_plausible(&all, &all_pods(lab));
    let line = hello(lab, "client", "172.31.0.11", 30001).expect("answer");
    assert_eq!(
        client_ip(&line),
        "172.31.0.11",
        "eTP Cluster masquerades to the node: {line}"
    );
    t.finish();
}

#[test]
fn lab_nftables_external_traffic_policy_local() {
    if is_root() {
        etp_local(ProxyMode::Nftables, "nftetp");
    }
}

#[test]
fn lab_iptables_external_traffic_policy_local() {
    if is_root() {
        etp_local(ProxyMode::Iptables, "iptetp");
    }
}

fn itp_local(mode: ProxyMode, base: &str) {
    let cfg = LabConfig {
        options: ServiceOptions {
            internal_traffic_policy: TrafficPolicy::Local,
            ..ServiceOptions::default()
        },
        ..small(3, 5, mode)
    };
    let mut t = TestLab::up(base, cfg);
    let lab = t.lab();
    // node1: pod-001, pod-004; node2: pod-002, pod-005; node3: pod-003.
    let s = spread(lab, "pod-001", "10.96.0.10:5001", 400, false);
    assert_plausible(&s, &pods_on(lab, "node1"));
    let s = spread(lab, "pod-003", "10.96.0.10:5001", 100, false);
    assert_plausible(&s, &pods_on(lab, "node3"));
    lab.delete_pod("pod-003").expect("empty node3");
    // No local endpoint: node3's ClusterIP traffic is dropped.
    let s = spread(lab, "node3", "10.96.0.10:5001", 10, false);
    assert_eq!(s.ok, 0, "{s:?}");
    t.finish();
}

#[test]
fn lab_nftables_internal_traffic_policy_local() {
    if is_root() {
        itp_local(ProxyMode::Nftables, "nftitp");
    }
}

#[test]
fn lab_iptables_internal_traffic_policy_local() {
    if is_root() {
        itp_local(ProxyMode::Iptables, "iptitp");
    }
}

/// kube-proxy's external chain (pkg/proxy/{nftables,iptables}/proxier.go): with eTP Local, traffic
/// from a pod or the node itself to a NodePort or the LB IP is short-circuited to the *cluster*
/// endpoints, also when iTP is Local and also on a node without local endpoints; only traffic from
/// outside is kept local (and dropped where there is no local endpoint).
fn external_short_circuit(mode: ProxyMode, base: &str) {
    let cfg = LabConfig {
        options: ServiceOptions {
            external_traffic_policy: TrafficPolicy::Local,
            internal_traffic_policy: TrafficPolicy::Local,
            ..ServiceOptions::default()
        },
        ..small(3, 4, mode)
    };
    let mut t = TestLab::up(base, cfg);
    let lab = t.lab();
    lab.delete_pod("pod-003").expect("empty node3");
    let all = all_pods(lab);
    // node1 (pod-001, pod-004): a pod and the node itself reach every endpoint via the LB IP
    // and the node's own NodePort.
    let s = spread(lab, "pod-001", "172.30.0.10:5001", 300, false);
    assert_plausible(&s, &all);
    let s = spread(lab, "node1", "172.31.0.11:30001", 300, false);
    assert_plausible(&s, &all);
    // node3 has no local endpoint and still delivers its own and its pods' traffic.
    let s = spread(lab, "node3", "172.31.0.13:30001", 300, false);
    assert_plausible(&s, &all);
    let s = spread(lab, "node3", "172.30.0.10:5001", 300, false);
    assert_plausible(&s, &all);
    // From outside: node1 keeps it local, node3 drops it (time-outs, not refusals).
    let s = spread(lab, "client", "172.31.0.11:30001", 200, false);
    assert_plausible(&s, &pods_on(lab, "node1"));
    let s = spread(lab, "client", "172.31.0.13:30001", 10, false);
    assert_eq!((s.ok, s.timeout), (0, 10), "{s:?}");
    // iTP Local: node3's ClusterIP traffic is dropped.
    let s = spread(lab, "node3", "10.96.0.10:5001", 10, false);
    assert_eq!((s.ok, s.timeout), (0, 10), "{s:?}");
    // NodePorts on localhost: iptables mode serves them (route_localnet=1), nftables does not.
    let s = spread(lab, "node1", "127.0.0.1:30001", 100, false);
    match mode {
        ProxyMode::Iptables => assert_plausible(&s, &all),
        ProxyMode::Nftables => assert_eq!((s.ok, s.refused), (0, 100), "{s:?}"),
    }
    t.finish();
}

#[test]
fn lab_nftables_external_short_circuit() {
    if is_root() {
        external_short_circuit(ProxyMode::Nftables, "nftsc");
    }
}

#[test]
fn lab_iptables_external_short_circuit() {
    if is_root() {
        external_short_circuit(ProxyMode::Iptables, "iptsc");
    }
}

/// The v1.34 nftables layout is what the kernel has, and loadBalancerSourceRanges filter the LB IP
/// (not the NodePorts) in both modes.
fn source_ranges(mode: ProxyMode, base: &str) {
    let cfg = LabConfig {
        options: ServiceOptions {
            source_ranges: vec!["203.0.113.0/24".parse().unwrap()],
            ..ServiceOptions::default()
        },
        ..small(2, 2, mode)
    };
    let mut t = TestLab::up(base, cfg);
    let lab = t.lab();
    if mode == ProxyMode::Nftables {
        let rules = lab.rules("node1").expect("rules");
        for chain in ["filter-prerouting-pre-dnat", "filter-output-pre-dnat", "firewall-check"] {
            assert!(rules.contains(&format!("chain {chain} {{")), "{chain}: {rules}");
        }
        assert!(rules.contains("hook input priority filter"), "{rules}");
        assert!(!rules.contains("filter-output-post-dnat"), "{rules}");
    }
    // The client (172.31.0.2) is outside the range: the LB IP drops it, the NodePort does not.
    let s = spread(lab, "client", "172.30.0.10:5001", 10, false);
    assert_eq!((s.ok, s.timeout), (0, 10), "{s:?}");
    let s = spread(lab, "client", "172.31.0.11:30001", 100, false);
    assert_plausible(&s, &all_pods(lab));
    lab.set(&LabChanges {
        source_ranges: Some(vec!["172.31.0.2/32".parse().unwrap()]),
        ..Default::default()
    })
    .expect("set");
    let s = spread(lab, "client", "172.30.0.10:5001", 100, false);
    assert_plausible(&s, &all_pods(lab));
    t.finish();
}

#[test]
fn lab_nftables_source_ranges() {
    if is_root() {
        source_ranges(ProxyMode::Nftables, "nftsr");
    }
}

#[test]
fn lab_iptables_source_ranges() {
    if is_root() {
        source_ranges(ProxyMode::Iptables, "iptsr");
    }
}

fn prefer_close(mode: ProxyMode, base: &str) {
    let cfg = LabConfig {
        options: ServiceOptions {
            traffic_distribution: Some(TrafficDistribution::PreferClose),
            ..ServiceOptions::default()
        },
        ..small(3, 9, mode)
    };
    let mut t = TestLab::up(base, cfg);
    let lab = t.lab();
    let zone_a = pods_in_zone(lab, "zone-a");
    assert_eq!(zone_a.len(), 3);
    let expected: Vec<String> = lab
        .endpoints("node1", lab::Reach::ClusterIp)
        .unwrap()
        .iter()
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(expected, zone_a);
    let s = spread(lab, "pod-001", "10.96.0.10:5001", 600, false);
    assert_plausible(&s, &zone_a);
    // One endpoint without a hint: kube-proxy ignores topology, every pod answers.
    lab.set(&LabChanges {
        drop_hints: vec!["pod-005".into()],
        ..Default::default()
    })
    .expect("set");
    assert!(
        lab.status()
            .pods
            .iter()
            .any(|p| p.name == "pod-005" && p.hint.is_none())
    );
    let s = spread(lab, "pod-001", "10.96.0.10:5001", 1800, false);
    assert_plausible(&s, &all_pods(lab));
    lab.set(&LabChanges {
        restore_hints: true,
        ..Default::default()
    })
    .expect("set");
    let s = spread(lab, "pod-002", "10.96.0.10:5001", 600, false);
    assert_plausible(&s, &pods_in_zone(lab, "zone-b"));
    t.finish();
}

#[test]
fn lab_nftables_prefer_close() {
    if is_root() {
        prefer_close(ProxyMode::Nftables, "nftpc");
    }
}

#[test]
fn lab_iptables_prefer_close() {
    if is_root() {
        prefer_close(ProxyMode::Iptables, "iptpc");
    }
}

/// PreferSameNode: endpoints carry node hints too; a node with endpoints of its own uses only them,
/// a node without any falls back to its zone's (kube-proxy's topologyModeFromHints).
fn prefer_same_node(mode: ProxyMode, base: &str) {
    let cfg = LabConfig {
        options: ServiceOptions {
            traffic_distribution: Some(TrafficDistribution::PreferSameNode),
            ..ServiceOptions::default()
        },
        // 4 nodes in 3 zones, 3 pods: node4 (zone-a) has none of its own.
        ..small(4, 3, mode)
    };
    let mut t = TestLab::up(base, cfg);
    let lab = t.lab();
    let on = |node: &str| -> Vec<String> {
        lab.pods()
            .iter()
            .filter(|p| p.node == node)
            .map(|p| p.name.clone())
            .collect()
    };
    let chosen = |node: &str| -> Vec<String> {
        lab.endpoints(node, lab::Reach::ClusterIp)
            .unwrap()
            .iter()
            .map(|p| p.name.clone())
            .collect()
    };
    assert_eq!(chosen("node1"), on("node1"));
    assert_eq!(chosen("node4"), pods_in_zone(lab, "zone-a"));
    assert!(lab.status().pods.iter().all(|p| p.hint.is_some()));
    let s = spread(lab, "pod-002", "10.96.0.10:5001", 300, false);
    assert_plausible(&s, &on("node2"));
    t.finish();
}

#[test]
fn lab_nftables_prefer_same_node() {
    if is_root() {
        prefer_same_node(ProxyMode::Nftables, "nftsn");
    }
}

#[test]
fn lab_iptables_prefer_same_node() {
    if is_root() {
        prefer_same_node(ProxyMode::Iptables, "iptsn");
    }
}

fn delete_and_scale(mode: ProxyMode, base: &str) {
    let mut t = TestLab::up(base, small(3, 6, mode));
    let lab = t.lab();
    let gone_ip = lab
        .pods()
        .iter()
        .find(|p| p.name == "pod-003")
        .expect("pod-003")
        .ip
        .to_string();
    lab.delete_pod("pod-003").expect("delete");
    assert!(
        !lab.rules("node1").expect("rules").contains(&gone_ip),
        "rules still name {gone_ip}"
    );
    assert!(lab.netns("pod-003").is_err());
    let s = spread(lab, "pod-001", "10.96.0.10:5001", 600, false);
    assert_plausible(&s, &all_pods(lab));
    assert!(!s.backends.contains_key("pod-003"));
    lab.scale(9).expect("scale up");
    assert_eq!(lab.pods().len(), 9);
    let s = spread(lab, "pod-001", "10.96.0.10:5001", 1800, false);
    assert_plausible(&s, &all_pods(lab));
    lab.scale(2).expect("scale down");
    assert_eq!(all_pods(lab), vec!["pod-001", "pod-002"]);
    let s = spread(lab, "client", "172.31.0.13:30001", 200, false);
    assert_plausible(&s, &all_pods(lab));
    let prefix = lab::netns_prefix(lab.name());
    let namespaces = std::fs::read_dir("/run/netns")
        .expect("netns dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .count();
    assert_eq!(namespaces, 2 + 3 + 2, "net, client, 3 nodes, 2 pods");
    t.finish();
}

#[test]
fn lab_nftables_delete_pod_and_scale() {
    if is_root() {
        delete_and_scale(ProxyMode::Nftables, "nftscale");
    }
}

#[test]
fn lab_iptables_delete_pod_and_scale() {
    if is_root() {
        delete_and_scale(ProxyMode::Iptables, "iptscale");
    }
}

#[test]
fn lab_ecmp_loadbalancer_reaches_every_node() {
    if !is_root() {
        return;
    }
    let cfg = LabConfig {
        ecmp: true,
        options: ServiceOptions {
            external_traffic_policy: TrafficPolicy::Local,
            ..ServiceOptions::default()
        },
        ..small(3, 6, ProxyMode::Nftables)
    };
    let mut t = TestLab::up("ecmp", cfg);
    let lab = t.lab();
    // ECMP with an L4 hash spreads connections over the nodes; eTP Local keeps each on
    // its node's pods, so every pod answers.
    let s = spread(lab, "client", "172.30.0.10:5001", 1200, false);
    assert_eq!(s.failed, 0, "{s:?}");
    assert_eq!(s.names().len(), 6, "{s:?}");
    t.finish();
}

/// An HTTP/1.0 GET from `who` (bash /dev/tcp): the status code and the body.
fn http_get(lab: &Lab, who: &str, ip: &str, port: u16, path: &str) -> (u16, String) {
    let request = format!("printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3");
    let out = over_tcp(lab, who, ip, port, &request);
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\n\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// kube-proxy's healthCheckNodePort answers per node (200 with local ready endpoints, 503
/// without), and the health-checked ECMP load balancer sends nothing to nodes without endpoints.
/// With IPv6 (`families`), the health servers answer on the nodes' IPv6 addresses too and the
/// load balancer routes the IPv6 LoadBalancer IP over the same healthy nodes.
fn health_checked_ecmp(mode: ProxyMode, base: &str, families: lab::LabFamilies) {
    let cfg = LabConfig {
        ecmp: true,
        families,
        options: ServiceOptions {
            external_traffic_policy: TrafficPolicy::Local,
            ..ServiceOptions::default()
        },
        ..small(3, 2, mode)
    };
    let mut t = TestLab::up(base, cfg);
    let lab = t.lab();
    let v6 = families.has(IpFamily::Ipv6);
    // A lab address in each of the Service's families: (for bash's /dev/tcp, for a storm).
    let addrs = |ip: &str| -> Vec<(String, String)> {
        let v4: std::net::Ipv4Addr = ip.parse().unwrap();
        families
            .families()
            .iter()
            .map(|f| match f {
                IpFamily::Ipv4 => (ip.to_string(), ip.to_string()),
                IpFamily::Ipv6 => {
                    let a = lab::in_family(v4, *f).to_string();
                    (a.clone(), format!("[{a}]"))
                }
            })
            .collect()
    };
    // node1: pod-001, node2: pod-002, node3: none.
    for (node1, _) in addrs("172.31.0.11") {
        let (code, body) = http_get(lab, "client", &node1, 32000, "/healthz");
        assert_eq!(code, 200, "{node1}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(
            (v["localEndpoints"].as_u64(), v["serviceProxyHealthy"].as_bool()),
            (Some(1), Some(true))
        );
    }
    for (node3, _) in addrs("172.31.0.13") {
        assert_eq!(http_get(lab, "client", &node3, 32000, "/").0, 503, "{node3}");
        let (code, body) = http_get(lab, "client", &node3, 10256, "/healthz");
        assert_eq!(code, 200, "{node3}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["status"].get("IPv6").is_some(), v6, "{v}");
    }
    assert_eq!(lab.status().service.lb_next_hops, ["node1", "node2"]);
    for (_, lb) in addrs("172.30.0.10") {
        let s = spread(lab, "client", &format!("{lb}:5001"), 300, false);
        assert_eq!((s.failed, s.names()), (0, vec!["pod-001", "pod-002"]), "{lb}: {s:?}");
    }
    // node2 loses its pod: its health check fails and the load balancer drains it.
    lab.delete_pod("pod-002").expect("delete");
    for (node2, _) in addrs("172.31.0.12") {
        assert_eq!(http_get(lab, "client", &node2, 32000, "/").0, 503, "{node2}");
    }
    lab.wait_lb(Duration::from_secs(10))
        .expect("the load balancer converges");
    assert_eq!(lab.status().service.lb_next_hops, ["node1"]);
    for (_, lb) in addrs("172.30.0.10") {
        let s = spread(lab, "client", &format!("{lb}:5001"), 100, false);
        assert_eq!((s.failed, s.names()), (0, vec!["pod-001"]), "{lb}: {s:?}");
    }
    // eTP Cluster: no healthCheckNodePort; the load balancer checks kube-proxy's /healthz.
    lab.set(&LabChanges {
        external_traffic_policy: Some(TrafficPolicy::Cluster),
        ..Default::default()
    })
    .expect("set");
    lab.wait_lb(Duration::from_secs(10))
        .expect("the load balancer converges");
    assert_eq!(lab.status().service.lb_next_hops, ["node1", "node2", "node3"]);
    for (node1, _) in addrs("172.31.0.11") {
        assert_eq!(http_get(lab, "client", &node1, 32000, "/").0, 0, "the port is closed");
    }
    t.finish();
}

#[test]
fn lab_nftables_health_checked_ecmp() {
    if is_root() {
        health_checked_ecmp(ProxyMode::Nftables, "nfthc", lab::LabFamilies::Ipv4);
    }
}

#[test]
fn lab_iptables_health_checked_ecmp() {
    if is_root() {
        health_checked_ecmp(ProxyMode::Iptables, "ipthc", lab::LabFamilies::Ipv4);
    }
}

#[test]
fn lab_nftables_health_checked_ecmp_dual_stack() {
    if is_root() {
        health_checked_ecmp(ProxyMode::Nftables, "nfthc6", lab::LabFamilies::Dual);
    }
}

#[test]
fn lab_iptables_health_checked_ecmp_ipv6() {
    if is_root() {
        health_checked_ecmp(ProxyMode::Iptables, "ipthc6", lab::LabFamilies::Ipv6);
    }
}

#[test]
fn lab_two_labs_coexist() {
    if !is_root() {
        return;
    }
    let mut a = TestLab::up("twoa", small(2, 4, ProxyMode::Nftables));
    let mut b = TestLab::up("twob", small(3, 3, ProxyMode::Iptables));
    let sa = spread(a.lab(), "pod-001", "10.96.0.10:5001", 400, false);
    let pods_a = all_pods(a.lab());
    assert_plausible(&sa, &pods_a);
    let sb = spread(b.lab(), "pod-001", "10.96.0.10:5001", 300, false);
    let pods_b = all_pods(b.lab());
    assert_plausible(&sb, &pods_b);
    a.finish();
    let sb = spread(b.lab(), "client", "172.31.0.11:30001", 300, false);
    assert_plausible(&sb, &pods_b);
    b.finish();
}

#[test]
fn lab_down_after_state_loss() {
    if !is_root() {
        return;
    }
    let name = format!("lost-{}", std::process::id() % 100_000);
    let before = root_net();
    let _ = lab::down_by_name(&name);
    let lab = Lab::up(&LabConfig {
        name: name.clone(),
        server: Some(EXE.into()),
        ..small(2, 4, ProxyMode::Nftables)
    })
    .expect("up");
    let pids: Vec<u32> = lab.status().pods.iter().map(|p| p.pid).collect();
    assert!(pids.iter().all(|p| alive(*p)));
    // A process someone started in the lab (not recorded anywhere) goes too.
    let mut stray = lab
        .command("client", Path::new("sleep"))
        .expect("command")
        .arg("600")
        .spawn()
        .expect("sleep");
    // `ip netns exec` enters the namespace, then execs sleep: wait until it is in there.
    let client_ns = std::fs::metadata(format!("/run/netns/{}", lab.netns("client").expect("client"))).expect("ns");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::metadata(format!("/proc/{}/ns/net", stray.id()))
        .map(|m| m.ino())
        .ok()
        != Some(client_ns.ino())
    {
        assert!(Instant::now() < deadline, "sleep never entered the client namespace");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The state is lost, as after a crash or kill -9 of the tool.
    std::fs::remove_dir_all(lab::labs_dir().join(&name)).expect("remove state");
    drop(lab);
    assert!(Lab::open(&name).is_err());
    assert!(Lab::list().expect("list").contains(&name), "found from the namespaces");
    lab::down_by_name(&name).expect("down from the prefix");
    let _ = stray.wait();
    let mut all = pids.clone();
    all.push(stray.id());
    assert_clean(&name, &all, &before);
    assert!(lab::down_by_name(&name).is_err(), "nothing left to remove");
}

fn big(mode: ProxyMode, base: &str) {
    let t0 = Instant::now();
    let mut t = TestLab::up(
        base,
        LabConfig {
            proxy_mode: mode,
            ..LabConfig::default()
        },
    );
    let up = t0.elapsed();
    let lab = t.lab();
    assert_eq!(lab.pods().len(), 100);
    assert!(lab.status().pods.iter().all(|p| p.alive));
    // xcluster's test: 10,000 connects reach all 100 pods, and the spread is kernel-random:
    // within ±50% of the fair share and not rejected by chi-square against uniform.
    let s = spread_parallel(lab, "pod-050", "10.96.0.10:5001", 10_000, 100, false);
    assert_eq!((s.ok, s.failed), (10_000, 0), "{s:?}");
    assert_eq!(s.names().len(), 100, "{s:?}");
    assert_eq!(s.verdict, "PASS", "{s:?}");
    assert!(
        s.p_value.is_some_and(|p| p > 1e-6),
        "chi-square rejects the spread: {s:?}"
    );
    let per_node: Vec<usize> = lab.status().nodes.iter().map(|n| n.pods).collect();
    assert_eq!(per_node, vec![10; 10]);
    let t1 = Instant::now();
    t.finish();
    let down = t1.elapsed();
    eprintln!(
        "{base}: up {:.2}s, down (with checks) {:.2}s",
        up.as_secs_f64(),
        down.as_secs_f64()
    );
    assert!(up < Duration::from_secs(10), "up took {up:?}");
    assert!(down < Duration::from_secs(5), "down took {down:?}");
}

#[test]
fn lab_nftables_10_nodes_100_pods() {
    if is_root() {
        big(ProxyMode::Nftables, "bignft");
    }
}

#[test]
fn lab_iptables_10_nodes_100_pods() {
    if is_root() {
        big(ProxyMode::Iptables, "bigipt");
    }
}

#[test]
fn lab_cli_up_status_exec_rules_down() {
    if !is_root() {
        return;
    }
    let name = format!("cli-{}", std::process::id() % 100_000);
    let before = root_net();
    let _ = lab::down_by_name(&name);
    let cli = |args: &[&str]| Command::new(EXE).arg("lab").args(args).output().expect("run");
    let out = cli(&[
        "up",
        "--name",
        &name,
        "--nodes",
        "2",
        "--pods",
        "2",
        "--proxy-mode",
        "iptables",
    ]);
    // Torn down below even if an assertion fails.
    struct Down(String);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = lab::down_by_name(&self.0);
        }
    }
    let _guard = Down(name.clone());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("10.96.0.10") && text.contains("30001") && text.contains("172.30.0.10"),
        "{text}"
    );

    let out = cli(&["status", "--name", &name, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(v["pods"].as_array().expect("pods").len(), 2);
    assert_eq!(v["service"]["cluster_ip"], "10.96.0.10");
    let pids: Vec<u32> = v["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap() as u32)
        .collect();
    let out = cli(&["status", "--name", &name, "-o", "yaml"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("cluster_ip"));

    let out = cli(&["exec", "--name", &name, "client", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "exit code passed through");
    let out = cli(&["exec", "--name", &name, "nosuch", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node or pod named nosuch"));

    let out = cli(&["rules", "--name", &name, "node2"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("KUBE-SVC-"));
    let out = cli(&[
        "set",
        "--name",
        &name,
        "--drop-hint",
        "pod-001",
        "--traffic-distribution",
        "PreferClose",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let out = cli(&["status", "--name", "nosuchlab"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("run `kubectl svclb lab up --name nosuchlab`"));
    let out = cli(&["up", "--name", "Bad_Name"]);
    assert_eq!(out.status.code(), Some(2));

    let out = cli(&["down", "--name", &name]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_clean(&name, &pids, &before);
}

#[test]
fn lab_names_are_validated() {
    for ok in ["a", "lab", "my-lab-2", "abcdefghijklmnop"] {
        assert!(lab::validate_name(ok).is_ok(), "{ok}");
    }
    for bad in ["", "-a", "a-", "A", "a.b", "a_b", "abcdefghijklmnopq", "a/b"] {
        assert!(lab::validate_name(bad).is_err(), "{bad}");
    }
    assert_eq!(lab::netns_prefix("a"), "svclb-a.");
}

#[test]
fn lab_needs_root() {
    if !is_root() || !Path::new("/usr/bin/setpriv").exists() {
        return;
    }
    // As nobody: one line saying what to do, exit 2, nothing built.
    let out = Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", EXE])
        .args(["lab", "up", "--name", "noroot", "--nodes", "1", "--pods", "1"])
        .output()
        .expect("setpriv");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "error: the lab needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN): run with sudo"
    );
    assert!(!Path::new("/run/netns/svclb-noroot.client").exists());
}

/// A UDP socket created inside `who`'s namespace (a socket stays in the namespace it was
/// created in), connected to `addr`: one long-lived UDP flow from a fixed source port.
fn udp_flow(lab: &Lab, who: &str, addr: &str) -> std::net::UdpSocket {
    let ns = std::fs::File::open(format!("/run/netns/{}", lab.netns(who).expect("netns"))).expect("open netns");
    let addr = addr.to_string();
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on this short-lived thread only.
        assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
        let any = if addr.starts_with('[') { "[::]:0" } else { "0.0.0.0:0" };
        let s = std::net::UdpSocket::bind(any).expect("bind");
        s.connect(&addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
        s
    })
    .join()
    .expect("thread")
}

/// The backend answering one datagram on `flow`, if any.
fn ask(flow: &std::net::UdpSocket) -> Option<String> {
    flow.send(b"hello").ok()?;
    let mut buf = [0u8; 512];
    let n = flow.recv(&mut buf).ok()?;
    String::from_utf8_lossy(&buf[..n])
        .split_whitespace()
        .next()
        .map(str::to_string)
}

/// kube-proxy's conntrack cleanup (`conntrack/cleanup.go`) after each node's sync: a UDP flow
/// stays on its endpoint while the endpoint serves (terminating too), moves once it no longer
/// serves, and when no endpoint is left its entry goes as well (the Service's reject answers).
fn udp_flow_moves_on_delete(mode: ProxyMode, base: &str) {
    let mut t = TestLab::up(base, small(2, 4, mode));
    let name = t.lab().name().to_string();
    let flow = udp_flow(t.lab(), "node1", "10.96.0.10:5001");
    let first = ask(&flow).expect("an answer");
    for _ in 0..5 {
        assert_eq!(
            ask(&flow).as_deref(),
            Some(first.as_str()),
            "conntrack keeps a UDP flow on one backend"
        );
    }
    let deleting = first.clone();
    let deleter = std::thread::spawn(move || {
        let timing = LabTiming {
            drain_delay: Duration::from_millis(1500),
            ..LabTiming::default()
        };
        Lab::open(&name).expect("open").delete_pod_with(&deleting, &timing)
    });
    // Terminating and applied on node1, but still serving: the flow stays where it is.
    let name = t.lab().name().to_string();
    wait_for(&name, "node1", |s| pod_is(s, &first, "terminating"));
    assert_eq!(
        ask(&flow).as_deref(),
        Some(first.as_str()),
        "a serving endpoint keeps its flows"
    );
    // No longer serving, applied on node1: its entry was deleted, the next datagram is balanced
    // again instead of vanishing until the entry times out.
    wait_for(&name, "node1", |s| !pod_is(s, &first, "terminating"));
    let next = ask(&flow).expect("the flow is answered again at once");
    assert_ne!(next, first);
    deleter.join().expect("deleter").expect("delete");
    // Down to one pod, which the flow reaches.
    let lab = t.lab();
    let zero = LabTiming {
        grace_period: Duration::ZERO,
        ..LabTiming::default()
    };
    lab.scale_with(1, &zero).expect("scale to 1");
    let last = lab.pods()[0].clone();
    let answered = ask(&flow).or_else(|| ask(&flow));
    assert_eq!(answered.as_deref(), Some(last.name.as_str()));
    // It stops serving but lives on (a connection keeps it): no serving endpoint is left, and
    // the flow's entry goes too, so its next datagram is a new connection and meets the
    // Service's reject, which a sender on the node itself gets as EPERM. (kube-proxy v1.34
    // skips such a Service and keeps the entry: the datagram would go on to the pod's closed
    // port.)
    let (held, _) = tcp_conn(lab, "node1", &format!("{}:5001", last.ip));
    let deleting = (name.clone(), last.name.clone());
    let deleter = std::thread::spawn(move || {
        let timing = LabTiming {
            grace_period: Duration::from_secs(30),
            ..LabTiming::default()
        };
        Lab::open(&deleting.0)
            .expect("open")
            .delete_pod_with(&deleting.1, &timing)
    });
    wait_for(&name, "node1", |s| pod_is(s, &last.name, "terminating, not serving"));
    let err = flow.send(b"hello").expect_err("rejected");
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    drop(held);
    deleter.join().expect("deleter").expect("delete");
    t.finish();
}

#[test]
fn lab_nftables_udp_flow_moves_when_its_pod_is_deleted() {
    if is_root() {
        udp_flow_moves_on_delete(ProxyMode::Nftables, "nftudp");
    }
}

#[test]
fn lab_iptables_udp_flow_moves_when_its_pod_is_deleted() {
    if is_root() {
        udp_flow_moves_on_delete(ProxyMode::Iptables, "iptudp");
    }
}

#[test]
fn lab_up_names_the_packages_it_misses() {
    if !is_root() {
        return;
    }
    let empty = tempfile::tempdir().unwrap();
    for (mode, want) in [
        ("nftables", "apt-get install iproute2 nftables"),
        ("iptables", "apt-get install iproute2 iptables"),
    ] {
        let out = Command::new(EXE)
            .args(["lab", "up", "--name", "notools", "--proxy-mode", mode])
            .env("PATH", empty.path())
            .env("SVCLB_LAB_DIR", empty.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{err}");
    }
    assert!(
        std::fs::read_dir(empty.path()).unwrap().next().is_none(),
        "nothing was built"
    );
}

/// Two `lab delete-pod` at once: each re-reads the state once it holds the lab's lock, so
/// neither deletion is lost (before, the second saved the state it read before the lock, and
/// the first pod came back).
fn concurrent_deletes(mode: ProxyMode, base: &str) {
    let mut t = TestLab::up(base, small(2, 4, mode));
    let name = t.lab().name().to_string();
    let delete = |pod: &str| {
        Command::new(EXE)
            .args(["lab", "delete-pod", pod, "--name", &name])
            .spawn()
            .expect("start delete-pod")
    };
    let (a, b) = (delete("pod-001"), delete("pod-002"));
    for child in [a, b] {
        let out = child.wait_with_output().expect("delete-pod");
        assert!(out.status.success(), "{out:?}");
    }
    let lab = Lab::open(&name).expect("open");
    assert_eq!(all_pods(&lab), ["pod-003", "pod-004"]);
    for node in ["node1", "node2"] {
        let rules = lab.rules(node).expect("rules");
        for gone in ["10.244.1.2", "10.244.2.2"] {
            assert!(!rules.contains(gone), "{node} still sends to {gone}");
        }
    }
    // A deletion killed while its pod drains leaves it terminating; deleting it again takes
    // over (with its own grace period) instead of refusing it.
    let mut slow = Command::new(EXE)
        .args(["lab", "delete-pod", "pod-003", "--name", &name])
        .args(["--grace-period", "60", "--drain-delay", "60s"])
        .spawn()
        .expect("start delete-pod");
    wait_for(&name, "node1", |s| pod_is(s, "pod-003", "terminating"));
    slow.kill().expect("kill the first delete-pod");
    slow.wait().expect("reap");
    let out = Command::new(EXE)
        .args(["lab", "delete-pod", "pod-003", "--name", &name, "--grace-period", "0"])
        .output()
        .expect("delete-pod again");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("pod-003: removed at "), "{text}");
    assert_eq!(all_pods(&Lab::open(&name).expect("open")), ["pod-004"]);
    t.finish();
}

#[test]
fn lab_nftables_concurrent_deletes_both_happen() {
    if is_root() {
        concurrent_deletes(ProxyMode::Nftables, "nftrace");
    }
}

#[test]
fn lab_iptables_concurrent_deletes_both_happen() {
    if is_root() {
        concurrent_deletes(ProxyMode::Iptables, "iptrace");
    }
}

/// Waits until `check` holds on the lab's status and `node` has applied the lab's generation.
fn wait_for(name: &str, node: &str, check: impl Fn(&LabStatus) -> bool) -> LabStatus {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = Lab::open(name).expect("open").status();
        let n = s.nodes.iter().find(|n| n.name == node).expect("node");
        if check(&s) && n.generation == s.generation {
            return s;
        }
        assert!(Instant::now() < deadline, "never came: {s:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `pod` is in the lab with these conditions ("ready", "terminating", ...).
fn pod_is(s: &LabStatus, pod: &str, what: &str) -> bool {
    s.pods.iter().any(|p| p.name == pod && p.conditions.describe() == what)
}

/// A TCP connection made inside `who`'s namespace to `addr`, with the server's greeting read.
fn tcp_conn(lab: &Lab, who: &str, addr: &str) -> (std::net::TcpStream, String) {
    use std::io::{BufRead, BufReader};
    let ns = std::fs::File::open(format!("/run/netns/{}", lab.netns(who).expect("netns"))).expect("open netns");
    let addr: std::net::SocketAddr = addr.parse().expect("address");
    let c = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on this short-lived thread only.
        assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect")
    })
    .join()
    .expect("thread");
    c.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let mut greeting = String::new();
    BufReader::new(&c).read_line(&mut greeting).expect("greeting");
    (c, greeting)
}

/// eTP Local, the only local pod of node2 deleted: while it drains it is node2's endpoint
/// (terminating, serving: kube-proxy's fallback when no local endpoint is ready) and new
/// connections via node2 reach it; once its server closed its listeners nothing local serves
/// and they are dropped; its open connection is finished; it is removed when that closes.
fn terminating_fallback(mode: ProxyMode, base: &str) {
    let cfg = LabConfig {
        options: ServiceOptions {
            external_traffic_policy: TrafficPolicy::Local,
            ..ServiceOptions::default()
        },
        ..small(2, 3, mode)
    };
    // node1: pod-001, pod-003; node2: pod-002.
    let mut t = TestLab::up(base, cfg);
    let name = t.lab().name().to_string();
    let (mut held, greeting) = tcp_conn(t.lab(), "client", "172.31.0.12:30001");
    assert!(greeting.starts_with("pod-002 "), "{greeting}");
    let deleting = name.clone();
    let deleter = std::thread::spawn(move || {
        let timing = LabTiming {
            grace_period: Duration::from_secs(30),
            drain_delay: Duration::from_millis(1500),
            ..LabTiming::default()
        };
        Lab::open(&deleting).expect("open").delete_pod_with("pod-002", &timing)
    });
    wait_for(&name, "node2", |s| pod_is(s, "pod-002", "terminating"));
    let lab = Lab::open(&name).expect("open");
    let local: Vec<&str> = lab
        .endpoints("node2", lab::Reach::FromOutside)
        .expect("endpoints")
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(local, ["pod-002"], "the serving terminating endpoint is the fallback");
    let line = hello(&lab, "client", "172.31.0.12", 30001).expect("a new connection while it drains");
    assert!(line.starts_with("pod-002 "), "{line}");
    // node1 still has ready local endpoints: the terminating one is not used there.
    let n1 = spread(&lab, "client", "172.31.0.11:30001", 60, false);
    assert_eq!(n1.names(), ["pod-001", "pod-003"], "{n1:?}");

    wait_for(&name, "node2", |s| pod_is(s, "pod-002", "terminating, not serving"));
    let lab = Lab::open(&name).expect("open");
    assert!(
        lab.endpoints("node2", lab::Reach::FromOutside)
            .expect("endpoints")
            .is_empty()
    );
    assert_eq!(
        hello(&lab, "client", "172.31.0.12", 30001),
        None,
        "dropped once it stopped serving"
    );
    // Its open connection is still served.
    use std::io::{Read, Write};
    writeln!(held, "svclb held 1").expect("write");
    let mut buf = [0u8; 256];
    let n = held.read(&mut buf).expect("answer on the open connection");
    let reply = String::from_utf8_lossy(&buf[..n]);
    assert!(reply.starts_with("pod-002 ") && reply.ends_with(" seq=1\n"), "{reply}");
    drop(held);
    let tl = deleter.join().expect("deleter").expect("delete");
    let at = |e| tl.at("pod-002", e).unwrap_or_else(|| panic!("no {e}: {tl:?}"));
    let (term, not_serving, removed) = (
        at(EndpointEvent::Terminating),
        at(EndpointEvent::NotServing),
        at(EndpointEvent::Removed),
    );
    assert!(not_serving >= term + Duration::from_millis(1500), "{tl:?}");
    assert!(
        removed >= not_serving && removed < Duration::from_secs(30),
        "exited on its own: {tl:?}"
    );
    assert!(Lab::open(&name).expect("open").netns("pod-002").is_err());
    t.finish();
}

#[test]
fn lab_nftables_terminating_endpoint_is_the_local_fallback_while_it_drains() {
    if is_root() {
        terminating_fallback(ProxyMode::Nftables, "nftterm");
    }
}

#[test]
fn lab_iptables_terminating_endpoint_is_the_local_fallback_while_it_drains() {
    if is_root() {
        terminating_fallback(ProxyMode::Iptables, "iptterm");
    }
}

/// A new pod enters the rules only `--ready-delay` after its server answers: a storm while its
/// server already answers, but before it is ready, never reaches it; once ready, it does.
fn ready_delay(mode: ProxyMode, base: &str) {
    let mut t = TestLab::up(base, small(2, 2, mode));
    let name = t.lab().name().to_string();
    let scaling = name.clone();
    let scaler = std::thread::spawn(move || {
        let timing = LabTiming {
            ready_delay: Duration::from_secs(2),
            ..LabTiming::default()
        };
        Lab::open(&scaling).expect("open").scale_with(3, &timing)
    });
    // Its server answers (asked directly, not through the Service).
    let deadline = Instant::now() + Duration::from_secs(10);
    let lab = loop {
        let lab = Lab::open(&name).expect("open");
        if let Some(p) = lab.pods().iter().find(|p| p.name == "pod-003")
            && p.pid != 0
            && hello(&lab, "pod-001", &p.ip.to_string(), 5001).is_some()
        {
            break lab;
        }
        assert!(Instant::now() < deadline, "pod-003 never answered");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(pod_is(&lab.status(), "pod-003", "not ready"));
    for node in ["node1", "node2"] {
        let eps = lab.endpoints(node, lab::Reach::ClusterIp).expect("endpoints");
        assert!(eps.iter().all(|p| p.name != "pod-003"), "{node}");
    }
    let s = spread(&lab, "pod-001", "10.96.0.10:5001", 100, false);
    let storm_end = Instant::now();
    assert_eq!(s.names(), ["pod-001", "pod-002"], "{s:?}");
    let tl = scaler.join().expect("scaler").expect("scale");
    let ready = tl.at("pod-003", EndpointEvent::Ready).expect("ready");
    assert!(ready >= Duration::from_secs(2), "{tl:?}");
    assert!(
        tl.start + ready > storm_end,
        "the storm ran before it was ready: {tl:?}"
    );
    let lab = Lab::open(&name).expect("open");
    let s = spread(&lab, "pod-001", "10.96.0.10:5001", 300, false);
    assert_plausible(&s, &all_pods(&lab));
    t.finish();
}

#[test]
fn lab_nftables_new_pod_enters_the_rules_after_the_ready_delay() {
    if is_root() {
        ready_delay(ProxyMode::Nftables, "nftready");
    }
}

#[test]
fn lab_iptables_new_pod_enters_the_rules_after_the_ready_delay() {
    if is_root() {
        ready_delay(ProxyMode::Iptables, "iptready");
    }
}

/// With a sync delay each node applies a change at its own time: for a moment after a
/// deletion one node still sends to the removed pod while another no longer does.
fn per_node_sync(mode: ProxyMode, base: &str) {
    let cfg = LabConfig {
        sync_delay: SyncDelay::new(Duration::ZERO, Duration::from_millis(1500)).expect("delay"),
        ..small(3, 6, mode)
    };
    let mut t = TestLab::up(base, cfg);
    let name = t.lab().name().to_string();
    let nodes = ["node1", "node2", "node3"];
    let mut seen = None;
    // Each try deletes one pod; the nodes' random delays are nearly equal once in a while.
    for pod in ["pod-004", "pod-005", "pod-006"] {
        let lab = Lab::open(&name).expect("open");
        let ip = lab.pods().iter().find(|p| p.name == pod).expect("pod").ip.to_string();
        let deleting = (name.clone(), pod.to_string());
        let deleter = std::thread::spawn(move || {
            let zero = LabTiming {
                grace_period: Duration::ZERO,
                ..LabTiming::default()
            };
            Lab::open(&deleting.0)
                .expect("open")
                .delete_pod_with(&deleting.1, &zero)
        });
        while !deleter.is_finished() {
            // Rules are only ever taken out here: a node read later that still has the pod
            // had it while one read earlier had not.
            let has: Vec<bool> = nodes
                .iter()
                .map(|n| lab.rules(n).expect("rules").contains(&ip))
                .collect();
            if let (Some(without), Some(with)) = (has.iter().position(|h| !h), has.iter().rposition(|h| *h))
                && without < with
            {
                seen = Some((nodes[without], nodes[with]));
            }
        }
        let tl = deleter.join().expect("deleter").expect("delete");
        let removal = tl.syncs.iter().map(|s| s.generation).max().expect("synced");
        let at: Vec<Duration> = tl
            .syncs
            .iter()
            .filter(|s| s.generation == removal)
            .map(|s| s.at)
            .collect();
        assert_eq!(at.len(), 3, "every node applied the removal: {tl:?}");
        assert!(nodes.iter().all(|n| !lab.rules(n).expect("rules").contains(&ip)));
        if seen.is_some() {
            break;
        }
    }
    let (without, with) = seen.expect("no moment where the nodes disagreed in three deletions");
    eprintln!("{base}: {without} no longer sent to the deleted pod while {with} still did");
    let s = Lab::open(&name).expect("open").status();
    assert!(s.nodes.iter().all(|n| n.generation == s.generation), "{s:?}");
    t.finish();
}

#[test]
fn lab_nftables_nodes_apply_a_deletion_each_at_its_own_time() {
    if is_root() {
        per_node_sync(ProxyMode::Nftables, "nftsync");
    }
}

#[test]
fn lab_iptables_nodes_apply_a_deletion_each_at_its_own_time() {
    if is_root() {
        per_node_sync(ProxyMode::Iptables, "iptsync");
    }
}

/// Sends `sig` to `child` once `ready` holds (polled every 20 ms, at most 30 s).
fn signal_when(child: &std::process::Child, sig: i32, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "the condition to send the signal never held");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// The network namespaces whose names start with `prefix`.
fn namespaces_with(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn pod_namespaces(name: &str) -> usize {
    namespaces_with(&format!("{}pod-", lab::netns_prefix(name))).len()
}

#[test]
fn ctrl_c_during_lab_up_removes_the_half_built_lab_and_says_so() {
    if !is_root() {
        return;
    }
    let name = format!("intr-{}", std::process::id() % 100_000);
    let root_before = root_net();
    let _ = lab::down_by_name(&name);
    // The servers start last: 60 pods give time to interrupt while they do.
    let child = Command::new(EXE)
        .args([
            "lab", "up", "--name", &name, "--nodes", "2", "--pods", "60", "--server", EXE,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("lab up");
    signal_when(&child, libc::SIGINT, || pod_namespaces(&name) > 0);
    let out = child.wait_with_output().expect("lab up ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let cleaned = std::panic::catch_unwind(|| assert_clean(&name, &[], &root_before));
    let _ = lab::down_by_name(&name);
    assert_eq!(out.status.code(), Some(130), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("interrupted: lab {name} was removed")),
        "stderr: {stderr}"
    );
    assert!(cleaned.is_ok(), "the interrupted lab left something behind");
}

#[test]
fn an_interrupted_scale_leaves_an_incomplete_lab_that_runs_refuse_and_status_flags() {
    if !is_root() {
        return;
    }
    let t = TestLab::up("incomplete", small(2, 2, ProxyMode::Nftables));
    let name = t.name.clone();
    // A slow readiness probe keeps the new pods starting long enough to interrupt.
    let child = Command::new(EXE)
        .args(["lab", "scale", "--name", &name, "6", "--ready-delay", "20s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("lab scale");
    signal_when(&child, libc::SIGTERM, || pod_namespaces(&name) == 6);
    let out = child.wait_with_output().expect("lab scale ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("lab {name} is incomplete")),
        "stderr: {stderr}"
    );

    let status = Command::new(EXE)
        .args(["lab", "status", "--name", &name])
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("INCOMPLETE: `lab scale` did not finish"), "{text}");
    let list = Command::new(EXE).args(["lab", "list"]).output().expect("list");
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.lines().any(|l| l.starts_with(&name) && l.contains("incomplete")),
        "{text}"
    );
    let run = Command::new(EXE)
        .args(["spread", "--lab", &name, "--conns", "10", "--no-save"])
        .output()
        .expect("spread");
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(&format!("lab {name} is incomplete")), "{err}");
    t.finish();
}

#[test]
fn a_lab_left_by_a_killed_run_is_marked_then_removed_by_the_next_run() {
    if !is_root() {
        return;
    }
    // Its own labs directory: the next run must find no other lab to use.
    let dir = tempfile::tempdir().unwrap();
    let svclb = |args: &[&str]| {
        let mut c = Command::new(EXE);
        c.args(args).env("SVCLB_LAB_DIR", dir.path());
        c
    };
    let mut killed = svclb(&["spread", "--lab", "new", "--conns", "2000", "--rate", "50", "--no-save"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spread");
    let name = format!("run{}", killed.id());
    let state = dir.path().join(&name).join("state.json");
    // Killed once its lab is built and the storm runs (no `building` left in the state).
    let built = || {
        std::fs::read_to_string(&state).is_ok_and(|s| !s.contains("\"building\""))
            && pod_namespaces(&name) == LabConfig::default().pods
    };
    signal_when(&killed, libc::SIGKILL, built);
    killed.wait().expect("killed");

    let list = svclb(&["lab", "list"]).output().expect("lab list");
    let text = String::from_utf8_lossy(&list.stdout);
    let marked = text
        .lines()
        .any(|l| l.starts_with(&name) && l.contains(&format!("built for a run that is gone, pid {}", killed.id())));

    let next = svclb(&["spread", "--lab", "--conns", "200", "--no-save"])
        .output()
        .expect("spread");
    let err = String::from_utf8_lossy(&next.stderr);
    let left = pod_namespaces(&name);
    // Only this test's labs: `lab down --all` would take every lab on the machine, other tests' too.
    for e in std::fs::read_dir(dir.path()).into_iter().flatten().flatten() {
        let _ = Command::new(EXE)
            .args(["lab", "down", "--name"])
            .arg(e.file_name())
            .env("SVCLB_LAB_DIR", dir.path())
            .output();
    }
    let _ = lab::down_by_name(&name);
    assert!(marked, "lab list: {text}");
    assert!(
        err.contains(&format!(
            "removed lab {name}, built for a run that is gone (pid {})",
            killed.id()
        )),
        "{err}"
    );
    assert_eq!(left, 0, "the orphan's namespaces are left");
    // Then it built its own lab, ran on it (0 PASS or 1 FAIL: the verdict of 200 connections
    // does not matter here) and removed it.
    assert!(matches!(next.status.code(), Some(0 | 1)), "{err}");
    assert!(err.contains("no lab running: building lab run"), "{err}");
    assert!(
        err.contains("svclb: 200 TCP connections from pod-001 (node1) to "),
        "{err}"
    );
    assert!(!dir.path().join(&name).exists());
}

/// IPv6 (`lab up --ip-family`): 3 nodes, 6 pods. A dual-stack lab (`dual`) answers on both
/// families, an IPv6-only one (`!dual`) on IPv6 only. Over IPv6: spread from a pod (ClusterIP,
/// TCP and UDP) and from the client (NodePort, LB IP) reaches every pod; ClientIP affinity
/// holds; eTP Local keeps the client's IPv6 address. Nothing is added to the root namespace.
fn ipv6(mode: ProxyMode, base: &str, dual: bool) {
    use svclb::lab::LabFamilies;
    let families = if dual { LabFamilies::Dual } else { LabFamilies::Ipv6 };
    let mut t = TestLab::up(
        base,
        LabConfig {
            families,
            ..small(3, 6, mode)
        },
    );
    let lab = t.lab();
    let st = lab.status();
    let svc = &st.service;
    let (cip, lb) = ("[fd00:5b1a::a60:a]:5001", "[fd00:5b1a::ac1e:a]:5001");
    assert_eq!(
        svc.cluster_ip_v6.map(|ip| ip.to_string()).as_deref(),
        Some("fd00:5b1a::a60:a")
    );
    assert_eq!(
        st.client.ipv6.map(|ip| ip.to_string()).as_deref(),
        Some("fd00:5b1a::ac1f:2")
    );
    assert!(st.pods.iter().all(|p| p.ipv6.is_some()), "{:?}", st.pods);
    let want: Vec<&str> = if dual { vec!["ipv4", "ipv6"] } else { vec!["ipv6"] };
    let got: Vec<String> = svc.ip_families.iter().map(|f| f.to_string()).collect();
    assert_eq!(got, want);
    let rules = lab.rules("node2").expect("rules");
    let v6_table = match mode {
        ProxyMode::Nftables => "table ip6 kube-proxy",
        ProxyMode::Iptables => "[fd00:5b1a::af4:",
    };
    assert!(rules.contains(v6_table), "{rules}");
    let pods = all_pods(lab);
    assert_plausible(&spread(lab, "pod-001", cip, 600, false), &pods);
    assert_plausible(&spread(lab, "pod-002", cip, 600, true), &pods);
    assert_plausible(&spread(lab, "client", "[fd00:5b1a::ac1f:c]:30001", 600, false), &pods);
    assert_plausible(&spread(lab, "client", lb, 600, false), &pods);
    // The IPv4 ClusterIP: served in a dual-stack lab only.
    let v4 = spread(lab, "pod-001", "10.96.0.10:5001", if dual { 600 } else { 10 }, false);
    if dual {
        assert_plausible(&v4, &pods);
    } else {
        assert_eq!(v4.ok, 0, "an IPv6-only Service has no IPv4 rules: {v4:?}");
    }
    // ClientIP affinity, keyed by the IPv6 source.
    lab.set(&LabChanges {
        affinity: Some(SessionAffinity::ClientIp),
        ..Default::default()
    })
    .expect("set affinity");
    // One connection first: parallel first connections race past the affinity entry (see
    // `affinity` above).
    spread_parallel(lab, "pod-003", cip, 1, 1, false);
    let sticky = spread(lab, "pod-003", cip, 200, false);
    assert_eq!((sticky.ok, sticky.names().len()), (200, 1), "{sticky:?}");
    // eTP Local: node1's own pods, reached with the client's own IPv6 address.
    lab.set(&LabChanges {
        affinity: Some(SessionAffinity::None),
        external_traffic_policy: Some(TrafficPolicy::Local),
        ..Default::default()
    })
    .expect("set eTP Local");
    let n1 = spread(lab, "client", "[fd00:5b1a::ac1f:b]:30001", 300, false);
    assert_plausible(&n1, &pods_on(lab, "node1"));
    let line = hello(lab, "client", "fd00:5b1a::ac1f:b", 30001).expect("answer");
    assert_eq!(
        client_ip(&line),
        "[fd00:5b1a::ac1f:2]",
        "eTP Local keeps the client address: {line}"
    );
    // The IPv6 conntrack cleanup: a UDP flow's endpoint is deleted, its entry goes with it and
    // the next datagram is balanced again (not sent on to the gone pod).
    let flow = udp_flow(lab, "node1", cip);
    let first = ask(&flow).expect("an answer over IPv6 UDP");
    assert_eq!(ask(&flow).as_deref(), Some(first.as_str()), "one flow, one backend");
    lab.delete_pod(&first).expect("delete the flow's pod");
    let next = ask(&flow).expect("the flow is answered again at once");
    assert_ne!(next, first);
    t.finish();
}

#[test]
fn lab_nftables_dual_stack() {
    if is_root() {
        ipv6(ProxyMode::Nftables, "nftdual", true);
    }
}

#[test]
fn lab_iptables_ipv6_only() {
    if is_root() {
        ipv6(ProxyMode::Iptables, "iptv6", false);
    }
}

/// A namespace of the test's own, deleted when dropped (also on failure).
struct Scratch(String);

impl Scratch {
    fn new(name: String) -> Scratch {
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let ok = Command::new("ip").args(["netns", "add", &name]).status();
        assert!(ok.is_ok_and(|s| s.success()), "ip netns add {name}");
        Scratch(name)
    }

    /// Runs `program` in the namespace, feeding it `input`; its stdout.
    fn run(&self, program: &str, args: &[&str], input: &str) -> String {
        in_netns(&self.0, program, args, input)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn in_netns(ns: &str, program: &str, args: &[&str], input: &str) -> String {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("input");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{program} {args:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// kube-proxy's objects in a namespace, in a form two namespaces can be compared by: each
/// chain, set and map without its handle (set elements sorted), and each chain's rules in order.
/// nftables: the `ip`/`ip6 kube-proxy` tables; iptables: the KUBE-* chains and the built-in
/// chains' jumps to them (nat and filter).
fn kube_proxy_objects(ns: &str, mode: ProxyMode) -> BTreeMap<String, Vec<String>> {
    let mut objects: BTreeMap<String, Vec<String>> = BTreeMap::new();
    match mode {
        ProxyMode::Nftables => {
            let listing = in_netns(ns, "nft", &["-j", "list", "ruleset"], "");
            let v: serde_json::Value = serde_json::from_str(&listing).expect("nft JSON");
            for item in v["nftables"].as_array().expect("nftables array") {
                let (kind, body) = item.as_object().and_then(|o| o.iter().next()).expect("an object");
                if kind == "metainfo" || body["table"] != "kube-proxy" {
                    continue;
                }
                let mut body = body.clone();
                let o = body.as_object_mut().expect("object");
                o.remove("handle");
                if let Some(elems) = o.get_mut("elem").and_then(|e| e.as_array_mut()) {
                    elems.sort_by_key(|e| e.to_string());
                }
                let family = body["family"].as_str().unwrap_or_default().to_string();
                let key = match kind.as_str() {
                    "rule" => format!("{family} rules of {}", body["chain"]),
                    _ => format!("{family} {kind} {}", body["name"]),
                };
                objects.entry(key).or_default().push(body.to_string());
            }
        }
        ProxyMode::Iptables => {
            let listing = in_netns(ns, "iptables-save", &[], "");
            let mut table = String::new();
            for line in listing.lines() {
                if let Some(t) = line.strip_prefix('*') {
                    table = t.to_string();
                } else if let Some(decl) = line.strip_prefix(':') {
                    let name = decl.split(' ').next().unwrap_or_default();
                    if name.starts_with("KUBE-") {
                        objects.entry(format!("{table} chain {name}")).or_default();
                    }
                } else if let Some(rule) = line.strip_prefix("-A ") {
                    let chain = rule.split(' ').next().unwrap_or_default();
                    if chain.starts_with("KUBE-") || rule.contains("-j KUBE-") {
                        objects
                            .entry(format!("{table} rules of {chain}"))
                            .or_default()
                            .push(rule.to_string());
                    }
                }
            }
        }
    }
    objects
}

/// Every node's kube-proxy objects after the lab's incremental syncs equal those a full sync
/// writes into an empty namespace (`lab rules --generated`, as kube-proxy's first sync).
fn assert_as_a_full_sync(lab: &Lab, mode: ProxyMode, scratch: &Scratch, step: &str) {
    for n in lab.nodes() {
        let synced = kube_proxy_objects(&n.netns, mode);
        let generated = lab.generated_rules(&n.name).expect("generated rules");
        match mode {
            ProxyMode::Nftables => {
                scratch.run("nft", &["flush", "ruleset"], "");
                scratch.run("nft", &["-f", "-"], &generated);
            }
            ProxyMode::Iptables => {
                scratch.run("iptables-restore", &[], &generated);
            }
        }
        let fresh = kube_proxy_objects(&scratch.0, mode);
        assert!(
            synced.len() > 10,
            "{step}: {} has only {} objects",
            n.name,
            synced.len()
        );
        for (key, want) in &fresh {
            assert_eq!(synced.get(key), Some(want), "{step}: {} {key}", n.name);
        }
        let extra: Vec<&String> = synced.keys().filter(|k| !fresh.contains_key(*k)).collect();
        assert!(extra.is_empty(), "{step}: {} keeps {extra:?}", n.name);
    }
}

/// The lab writes only what changed (chains whose rules differ, sets that are new), where
/// kube-proxy rewrites every chain of a changed Service; the table it leaves must be the same.
/// Checked on every node after each change of a series that touches every kind of object.
fn incremental_syncs(mode: ProxyMode, base: &str, families: lab::LabFamilies) {
    let mut t = TestLab::up(
        base,
        LabConfig {
            families,
            ..small(3, 6, mode)
        },
    );
    let scratch = Scratch::new(format!("svclbt-{base}-{}", std::process::id() % 100_000));
    let lab = t.lab();
    assert_as_a_full_sync(lab, mode, &scratch, "up");
    let zero = LabTiming {
        grace_period: Duration::ZERO,
        ..LabTiming::default()
    };
    let steps: Vec<(&str, LabChanges)> = vec![
        (
            "eTP and iTP Local",
            LabChanges {
                external_traffic_policy: Some(TrafficPolicy::Local),
                internal_traffic_policy: Some(TrafficPolicy::Local),
                ..LabChanges::default()
            },
        ),
        (
            "ClientIP affinity",
            LabChanges {
                affinity: Some(SessionAffinity::ClientIp),
                ..LabChanges::default()
            },
        ),
        (
            "a terminating endpoint",
            LabChanges {
                conditions: vec![("pod-001".into(), lab::Conditions::TERMINATING)],
                ..LabChanges::default()
            },
        ),
        (
            "another affinity timeout",
            LabChanges {
                affinity_timeout: Some(600),
                ..LabChanges::default()
            },
        ),
        (
            "Cluster policies, source ranges, PreferSameZone without one hint",
            LabChanges {
                external_traffic_policy: Some(TrafficPolicy::Cluster),
                internal_traffic_policy: Some(TrafficPolicy::Cluster),
                source_ranges: Some(vec!["172.31.0.2/32".parse().unwrap()]),
                traffic_distribution: Some(Some(TrafficDistribution::PreferSameZone)),
                drop_hints: vec!["pod-002".into()],
                ..LabChanges::default()
            },
        ),
        (
            "no affinity, every endpoint ready, hints back",
            LabChanges {
                affinity: Some(SessionAffinity::None),
                conditions: vec![("pod-001".into(), lab::Conditions::READY)],
                traffic_distribution: Some(None),
                restore_hints: true,
                source_ranges: Some(Vec::new()),
                ..LabChanges::default()
            },
        ),
    ];
    for (i, (step, change)) in steps.iter().enumerate() {
        lab.set(change).unwrap_or_else(|e| panic!("{step}: {e:#}"));
        assert_as_a_full_sync(lab, mode, &scratch, step);
        if i == 2 {
            lab.delete_pod_with("pod-003", &zero).expect("delete");
            assert_as_a_full_sync(lab, mode, &scratch, "a pod deleted");
            lab.scale_with(8, &zero).expect("scale");
            assert_as_a_full_sync(lab, mode, &scratch, "scaled to 8");
        }
    }
    drop(scratch);
    t.finish();
}

#[test]
fn lab_nftables_incremental_syncs_leave_what_a_full_sync_writes() {
    if is_root() {
        incremental_syncs(ProxyMode::Nftables, "nftinc", lab::LabFamilies::Dual);
    }
}

#[test]
fn lab_iptables_incremental_syncs_leave_what_a_full_sync_writes() {
    if is_root() {
        incremental_syncs(ProxyMode::Iptables, "iptinc", lab::LabFamilies::Ipv4);
    }
}
