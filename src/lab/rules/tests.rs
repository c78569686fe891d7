//! Unit tests of the rules: kube-proxy's names, endpoint selection, both writers' syncs.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::service::{base32, hash_and_truncate, ipt_sep, nft_ep_base, port_proto_hash, sep_chain};
use super::{Cluster, NftExisting, NodeEndpoints, PORTS, ipt_existing, iptables_restore, nft_transaction};
use crate::lab::{Node, Pod};
use crate::service::{ServiceOptions, SessionAffinity, Topology, TrafficDistribution, TrafficPolicy};

#[test]
fn base32_matches_go_std_encoding() {
    // Go: base32.StdEncoding.EncodeToString([]byte("foobar")) == "MZXW6YTBOI======"
    assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    assert_eq!(base32(b"f"), "MY");
}

#[test]
fn chain_names_match_kube_proxys_golden_output() {
    // From pkg/proxy/{iptables,nftables}/proxier_test.go (ns1/svc1 port p80, 10.180.0.1:80).
    assert_eq!(port_proto_hash("ns1/svc1:p80", "tcp"), "XPGD46QRK7WJZT7O");
    assert_eq!(
        sep_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80"),
        "KUBE-SEP-SXIVWICOYRO3J4NJ"
    );
    assert_eq!(hash_and_truncate("ns1/svc1/tcp/p80"), "ULMVA6XW-ns1/svc1/tcp/p80");
    assert_eq!(
        hash_and_truncate("ns1/svc1/tcp/p80__10.180.0.1/80"),
        "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    );
}

fn node(i: u8, zone: &str) -> Node {
    Node {
        name: format!("node{i}"),
        zone: zone.to_string(),
        ip: Ipv4Addr::new(172, 31, 0, 10 + i),
        pod_cidr: format!("10.244.{i}.0/24").parse().unwrap(),
        netns: format!("svclb-t.node{i}"),
    }
}

fn pod(n: u8, node: u8, zone: &str, hint: bool) -> Pod {
    Pod {
        name: format!("pod-{n:03}"),
        node: format!("node{node}"),
        zone: zone.to_string(),
        ip: Ipv4Addr::new(10, 244, node, n + 1),
        netns: format!("svclb-t.pod-{n:03}"),
        veth: format!("vp{n}"),
        node_hint: None,
        pid: 0,
        hint: hint.then(|| zone.to_string()),
        hint_dropped: !hint,
        conditions: Default::default(),
    }
}

fn cluster<'a>(options: &'a ServiceOptions, pods: &'a [Pod]) -> Cluster<'a> {
    Cluster {
        cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
        service_cidr: "10.96.0.0/16",
        cluster_cidr: "10.244.0.0/16",
        lb_ip: Ipv4Addr::new(172, 30, 0, 10),
        options,
        pods,
    }
}

fn names(ps: &[&Pod]) -> Vec<String> {
    ps.iter().map(|p| p.name.clone()).collect()
}

#[test]
fn prefer_close_needs_every_hint_and_a_match() {
    let o = ServiceOptions {
        traffic_distribution: Some(TrafficDistribution::PreferClose),
        ..ServiceOptions::default()
    };
    let pods = vec![
        pod(1, 1, "zone-a", true),
        pod(2, 2, "zone-b", true),
        pod(3, 3, "zone-a", true),
    ];
    let c = cluster(&o, &pods);
    let a = NodeEndpoints::categorize(&c, &node(1, "zone-a"));
    assert_eq!(a.topology, Topology::PreferSameZone);
    assert_eq!(names(&a.cluster), ["pod-001", "pod-003"]);
    // No endpoint hinted for zone-c: all endpoints.
    let z = NodeEndpoints::categorize(&c, &node(4, "zone-c"));
    assert_eq!(z.topology, Topology::None);
    assert_eq!(z.cluster.len(), 3);
    // One hint missing: all endpoints everywhere.
    let pods = vec![
        pod(1, 1, "zone-a", true),
        pod(2, 2, "zone-b", false),
        pod(3, 3, "zone-a", true),
    ];
    let c = cluster(&o, &pods);
    assert_eq!(NodeEndpoints::categorize(&c, &node(1, "zone-a")).cluster.len(), 3);
}

#[test]
fn local_policies_use_local_endpoints() {
    let o = ServiceOptions {
        internal_traffic_policy: TrafficPolicy::Local,
        external_traffic_policy: TrafficPolicy::Local,
        ..ServiceOptions::default()
    };
    let pods = vec![
        pod(1, 1, "zone-a", false),
        pod(2, 2, "zone-b", false),
        pod(3, 1, "zone-a", false),
    ];
    let c = cluster(&o, &pods);
    let e = NodeEndpoints::categorize(&c, &node(1, "zone-a"));
    assert_eq!(names(e.internal(&o)), ["pod-001", "pod-003"]);
    assert_eq!(names(e.external(&o)), ["pod-001", "pod-003"]);
    let empty = NodeEndpoints::categorize(&c, &node(3, "zone-c"));
    assert!(empty.internal(&o).is_empty());
    // ...and such a node drops (not rejects) the traffic.
    let tx = nft_transaction(&c, &node(3, "zone-c"), &NftExisting::default(), false);
    assert!(tx.contains("no-endpoint-services { 10.96.0.10 . tcp . 5001 comment \"default/tserver:tcp\" : drop }"));
    assert!(tx.contains("no-endpoint-nodeports { tcp . 30001 comment \"default/tserver:tcp\" : drop }"));
    let ipt = iptables_restore(&c, &node(3, "zone-c"), &BTreeSet::new(), false);
    assert!(ipt.contains("default/tserver:tcp has no local endpoints"), "{ipt}");
}

#[test]
fn nft_sync_deletes_stale_objects_and_keeps_affinity_sets() {
    let o = ServiceOptions {
        affinity: SessionAffinity::ClientIp,
        ..ServiceOptions::default()
    };
    let pods = vec![pod(1, 1, "zone-a", false), pod(2, 2, "zone-b", false)];
    let c = cluster(&o, &pods);
    let n = node(1, "zone-a");
    let full = nft_transaction(&c, &n, &NftExisting::default(), false);
    assert!(full.contains("numgen random mod 2 vmap"));
    let grab = |kw: &str| -> BTreeSet<String> {
        full.lines()
            .filter_map(|l| l.strip_prefix(&format!("add {kw} ip kube-proxy ")))
            .map(|r| r.split_whitespace().next().unwrap().to_string())
            .collect()
    };
    let existing = NftExisting {
        chains: grab("chain"),
        sets: grab("set"),
    };
    // pod-002 goes away.
    let c1 = cluster(&o, &pods[..1]);
    let tx = nft_transaction(&c1, &n, &existing, false);
    let gone = nft_ep_base(&PORTS[0], &pods[1]);
    let kept = nft_ep_base(&PORTS[0], &pods[0]);
    assert!(tx.contains(&format!("delete chain ip kube-proxy endpoint-{gone}")));
    assert!(tx.contains(&format!("delete set ip kube-proxy affinity-{gone}")));
    assert!(!tx.contains(&format!("delete set ip kube-proxy affinity-{kept}")));
    assert!(!tx.contains("delete chain ip kube-proxy services"));
    assert!(tx.contains("numgen random mod 1 vmap"));
    // A new timeout recreates every affinity set.
    let tx = nft_transaction(&c1, &n, &existing, true);
    assert!(tx.contains(&format!("delete set ip kube-proxy affinity-{kept}")));
}

#[test]
fn iptables_sync_flushes_and_deletes_stale_chains() {
    let o = ServiceOptions::default();
    let pods = vec![
        pod(1, 1, "zone-a", false),
        pod(2, 2, "zone-b", false),
        pod(3, 1, "zone-a", false),
    ];
    let c = cluster(&o, &pods);
    let n = node(1, "zone-a");
    let full = iptables_restore(&c, &n, &BTreeSet::new(), true);
    assert!(full.contains("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"));
    assert!(full.contains("--probability 0.3333333333"));
    assert!(full.contains("--probability 0.5000000000"));
    let existing = ipt_existing(&full);
    let c1 = cluster(&o, &pods[..2]);
    let tx = iptables_restore(&c1, &n, &existing, false);
    let gone = ipt_sep(&PORTS[0], &pods[2]);
    assert!(
        tx.contains(&format!(":{gone} - [0:0]")),
        "stale chain declared (flushed)"
    );
    assert!(tx.contains(&format!("-X {gone}")));
    assert!(!tx.contains("-A PREROUTING"), "built-in jumps only on the first sync");
}

#[test]
fn probability_format_is_kube_proxys() {
    assert_eq!(format!("{:.10}", 1.0 / 3.0_f64), "0.3333333333");
}

#[test]
fn parses_existing_nft_objects() {
    let e = NftExisting::parse(
        "table ip kube-proxy {\n\tchain services {\n\t}\n\tchain endpoint-AB-x/y {\n\t}\n}\n",
        "table ip kube-proxy {\n\tset affinity-XY-a/b {\n\t\ttype ipv4_addr\n\t}\n\tmap service-ips {\n\t}\n}\n",
    );
    assert!(e.chains.contains("endpoint-AB-x/y"));
    assert!(e.sets.contains("affinity-XY-a/b"));
}
