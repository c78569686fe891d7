//! Unit tests of the rules: kube-proxy's names, endpoint selection, both writers' syncs.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::service::{base32, hash_and_truncate, port_proto_hash, sep_chain};
use super::{
    Cluster, Endpoint, NftExisting, NoEndpoint, PORTS, PortPlan, Service, Written, ipt_existing, iptables_restore,
    nft_transaction,
};
use crate::lab::Node;
use crate::service::{Ep, ServiceOptions, ServiceType, SessionAffinity, Topology, TrafficDistribution, TrafficPolicy};

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

/// An endpoint `pod-NNN` on node `node` (ready), with its zone hint when `hint`.
fn ep(n: u8, node: u8, zone: &str, hint: bool) -> Endpoint {
    Endpoint {
        ip: Ipv4Addr::new(10, 244, node, n + 1).into(),
        ep: Ep {
            zone_hints: if hint { vec![zone.to_string()] } else { Vec::new() },
            ..Ep::ready(&format!("pod-{n:03}"), &format!("node{node}"))
        },
    }
}

/// The lab's Service (a LoadBalancer with a NodePort per port) with these endpoints.
fn lab<'a>(options: &'a ServiceOptions, endpoints: Vec<Endpoint>) -> Cluster<'a> {
    Cluster {
        family: crate::service::IpFamily::Ipv4,
        service_cidr: "10.96.0.0/16",
        cluster_cidr: "10.244.0.0/16",
        services: vec![Service {
            namespace: "default",
            name: "tserver",
            kind: ServiceType::LoadBalancer,
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10).into(),
            ports: &PORTS,
            lb_ips: vec![Ipv4Addr::new(172, 30, 0, 10).into()],
            external_ips: Vec::new(),
            health_check_node_port: 32000,
            options,
            endpoints,
        }],
    }
}

fn names(es: &[&Endpoint]) -> Vec<String> {
    es.iter().map(|e| e.ep.name.clone()).collect()
}

#[test]
fn prefer_close_needs_every_hint_and_a_match() {
    let o = ServiceOptions {
        traffic_distribution: Some(TrafficDistribution::PreferClose),
        ..ServiceOptions::default()
    };
    let c = lab(
        &o,
        vec![
            ep(1, 1, "zone-a", true),
            ep(2, 2, "zone-b", true),
            ep(3, 3, "zone-a", true),
        ],
    );
    let svc = &c.services[0];
    let a = PortPlan::new(svc, &PORTS[0], &node(1, "zone-a"));
    assert_eq!(a.topology, Topology::PreferSameZone);
    assert_eq!(names(&a.cluster), ["pod-001", "pod-003"]);
    // No endpoint hinted for zone-c: all endpoints.
    let z = PortPlan::new(svc, &PORTS[0], &node(4, "zone-c"));
    assert_eq!(z.topology, Topology::None);
    assert_eq!(z.cluster.len(), 3);
    // One hint missing: all endpoints everywhere.
    let c = lab(
        &o,
        vec![
            ep(1, 1, "zone-a", true),
            ep(2, 2, "zone-b", false),
            ep(3, 3, "zone-a", true),
        ],
    );
    assert_eq!(
        PortPlan::new(&c.services[0], &PORTS[0], &node(1, "zone-a"))
            .cluster
            .len(),
        3
    );
}

#[test]
fn endpoints_are_ordered_as_ip_port_strings() {
    let o = ServiceOptions::default();
    // Created in this order: .10 (pod 9), .3 (pod 2), .2 (pod 1).
    let c = lab(
        &o,
        vec![
            ep(9, 1, "zone-a", false),
            ep(2, 1, "zone-a", false),
            ep(1, 1, "zone-a", false),
        ],
    );
    let plan = PortPlan::new(&c.services[0], &PORTS[0], &node(1, "zone-a"));
    let ips: Vec<String> = plan.cluster.iter().map(|e| e.ip.to_string()).collect();
    // "10.244.1.10:5001" < "10.244.1.2:5001" < "10.244.1.3:5001", as kube-proxy sorts them.
    assert_eq!(ips, ["10.244.1.10", "10.244.1.2", "10.244.1.3"]);
    let tx = nft_transaction(&c, &node(1, "zone-a"), &NftExisting::default(), false).tx;
    let vmap = tx.lines().find(|l| l.contains("numgen random mod 3")).unwrap();
    assert!(vmap.contains("0 : goto endpoint-") && vmap.find("10.244.1.10/5001") < vmap.find("10.244.1.2/5001"));
}

#[test]
fn local_policies_use_local_endpoints_and_external_traffic_from_inside_uses_all() {
    let o = ServiceOptions {
        internal_traffic_policy: TrafficPolicy::Local,
        external_traffic_policy: TrafficPolicy::Local,
        ..ServiceOptions::default()
    };
    let c = lab(
        &o,
        vec![
            ep(1, 1, "zone-a", false),
            ep(2, 2, "zone-b", false),
            ep(3, 1, "zone-a", false),
        ],
    );
    let svc = &c.services[0];
    let e = PortPlan::new(svc, &PORTS[0], &node(1, "zone-a"));
    assert_eq!(names(e.internal()), ["pod-001", "pod-003"]);
    assert_eq!(names(e.external()), ["pod-001", "pod-003"]);
    // The Service is reachable from outside, so the cluster endpoints are kept: pods and the
    // node reaching the NodePort or LB IP are short-circuited to all of them.
    assert_eq!(names(e.external_from_inside()), ["pod-001", "pod-003", "pod-002"]);
    let tx = nft_transaction(&c, &node(1, "zone-a"), &NftExisting::default(), false).tx;
    let ext = format!("external-{}", svc.nft_base(&PORTS[0]));
    let cluster = format!("service-{}", svc.nft_base(&PORTS[0]));
    assert!(tx.contains(&format!(
        "add rule ip kube-proxy {ext} ip saddr 10.244.0.0/16 goto {cluster} comment \"short-circuit pod traffic\""
    )));
    assert!(tx.contains(&format!(
        "add rule ip kube-proxy {ext} fib saddr type local goto {cluster} comment \"short-circuit local traffic\""
    )));
    assert!(tx.contains(&format!("add rule ip kube-proxy {cluster} numgen random mod 3 ")));
    let ipt = iptables_restore(&c, &node(1, "zone-a"), &BTreeSet::new(), &Written::new(), false).tx;
    let h = svc.ipt_hash(&PORTS[0]);
    assert!(ipt.contains(&format!(
        "-A KUBE-EXT-{h} -m comment --comment \"route LOCAL traffic for default/tserver:tcp external destinations\" -m addrtype --src-type LOCAL -j KUBE-SVC-{h}"
    )));
}

#[test]
fn a_node_without_local_endpoints_keeps_the_short_circuits_and_drops_the_rest() {
    let o = ServiceOptions {
        internal_traffic_policy: TrafficPolicy::Local,
        external_traffic_policy: TrafficPolicy::Local,
        ..ServiceOptions::default()
    };
    let c = lab(&o, vec![ep(1, 1, "zone-a", false), ep(2, 2, "zone-b", false)]);
    let svc = &c.services[0];
    let n3 = node(3, "zone-c");
    let plan = PortPlan::new(svc, &PORTS[0], &n3);
    assert!(plan.internal().is_empty() && plan.external().is_empty());
    assert_eq!(plan.external_from_inside().len(), 2);
    let tx = nft_transaction(&c, &n3, &NftExisting::default(), false).tx;
    let ext = format!("external-{}", svc.nft_base(&PORTS[0]));
    assert!(tx.contains(&format!("add chain ip kube-proxy {ext}")), "{tx}");
    assert!(tx.contains(&format!("service-nodeports {{ tcp . 30001 : goto {ext} }}")));
    assert!(!tx.contains(&format!("add rule ip kube-proxy {ext} goto local-")));
    // ...and from outside (and to the ClusterIP) such a node drops, not rejects.
    assert!(tx.contains("no-endpoint-services { 10.96.0.10 . tcp . 5001 comment \"default/tserver:tcp\" : drop }"));
    assert!(tx.contains("no-endpoint-nodeports { tcp . 30001 comment \"default/tserver:tcp\" : drop }"));
    assert!(tx.contains("no-endpoint-services { 172.30.0.10 . tcp . 5001 comment \"default/tserver:tcp\" : drop }"));
    let ipt = iptables_restore(&c, &n3, &BTreeSet::new(), &Written::new(), false).tx;
    assert!(ipt.contains("default/tserver:tcp has no local endpoints"), "{ipt}");
    assert!(ipt.contains(&format!(":KUBE-EXT-{} - [0:0]", svc.ipt_hash(&PORTS[0]))));
}

#[test]
fn terminating_endpoints_serve_only_when_nothing_is_ready() {
    let o = ServiceOptions {
        external_traffic_policy: TrafficPolicy::Local,
        ..ServiceOptions::default()
    };
    let mut e1 = ep(1, 1, "zone-a", false);
    e1.ep.ready = false;
    e1.ep.terminating = true;
    let c = lab(&o, vec![e1.clone(), ep(2, 2, "zone-b", false)]);
    let svc = &c.services[0];
    // node1's only local endpoint is terminating (still serving): eTP Local falls back to it;
    // the cluster endpoints are the ready ones only.
    let p = PortPlan::new(svc, &PORTS[0], &node(1, "zone-a"));
    assert_eq!(names(p.external()), ["pod-001"]);
    assert_eq!(names(&p.cluster), ["pod-002"]);
    // Once it stops serving, node1 has nothing local: drop.
    let mut gone = e1;
    gone.ep.serving = false;
    let c = lab(&o, vec![gone, ep(2, 2, "zone-b", false)]);
    let p = PortPlan::new(&c.services[0], &PORTS[0], &node(1, "zone-a"));
    assert!(p.external().is_empty());
    assert_eq!(p.external_verdict(), Some(NoEndpoint::Drop));
}

#[test]
fn source_ranges_filter_the_lb_ip_before_dnat() {
    let o = ServiceOptions {
        source_ranges: vec!["203.0.113.0/25".parse().unwrap(), "172.31.0.0/24".parse().unwrap()],
        ..ServiceOptions::default()
    };
    let c = lab(&o, vec![ep(1, 1, "zone-a", false)]);
    let svc = &c.services[0];
    let tx = nft_transaction(&c, &node(1, "zone-a"), &NftExisting::default(), false).tx;
    let fw = format!("firewall-{}", svc.nft_base(&PORTS[0]));
    // The node is inside 172.31.0.0/24: the LB IP is allowed as a source too.
    assert!(tx.contains(&format!(
        "add rule ip kube-proxy {fw} ip saddr != {{ 203.0.113.0/25 , 172.31.0.0/24 , 172.30.0.10 }} drop"
    )));
    assert!(tx.contains(&format!("firewall-ips {{ 172.30.0.10 . tcp . 5001 : goto {fw} }}")));
    let ipt = iptables_restore(&c, &node(1, "zone-a"), &BTreeSet::new(), &Written::new(), false).tx;
    let h = svc.ipt_hash(&PORTS[0]);
    assert!(ipt.contains(&format!("-d 172.30.0.10 --dport 5001 -j KUBE-FW-{h}")));
    assert!(ipt.contains(&format!(
        "-A KUBE-FW-{h} -m comment --comment \"default/tserver:tcp loadbalancer IP\" -s 203.0.113.0/25 -j KUBE-EXT-{h}"
    )));
}

#[test]
fn nft_sync_deletes_stale_objects_and_keeps_affinity_sets() {
    let o = ServiceOptions {
        affinity: SessionAffinity::ClientIp,
        ..ServiceOptions::default()
    };
    let eps = vec![ep(1, 1, "zone-a", false), ep(2, 2, "zone-b", false)];
    let c = lab(&o, eps.clone());
    let n = node(1, "zone-a");
    let first = nft_transaction(&c, &n, &NftExisting::default(), false);
    let full = first.tx;
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
        written: first.written,
    };
    // pod-002 goes away.
    let c1 = lab(&o, eps[..1].to_vec());
    let svc = &c1.services[0];
    let tx = nft_transaction(&c1, &n, &existing, false).tx;
    let gone = svc.nft_ep_base(&PORTS[0], eps[1].ip);
    let kept = svc.nft_ep_base(&PORTS[0], eps[0].ip);
    assert!(tx.contains(&format!("flush chain ip kube-proxy endpoint-{gone}")));
    assert!(tx.contains(&format!("delete chain ip kube-proxy endpoint-{gone}")));
    assert!(tx.contains(&format!("delete set ip kube-proxy affinity-{gone}")));
    assert!(!tx.contains(&format!("delete set ip kube-proxy affinity-{kept}")));
    assert!(!tx.contains("delete chain ip kube-proxy services"));
    // The policy chain changes and is written again; the kept endpoint's chain and affinity
    // set hold what they should already and are not touched.
    assert!(tx.contains("numgen random mod 1 vmap"));
    assert!(tx.contains(&format!(
        "flush chain ip kube-proxy service-{}",
        svc.nft_base(&PORTS[0])
    )));
    assert!(!tx.contains(&format!("endpoint-{kept} ip saddr")));
    assert!(!tx.contains(&format!("flush chain ip kube-proxy endpoint-{kept}")));
    assert!(!tx.contains(&format!("add set ip kube-proxy affinity-{kept}")));
    // Without the record of what was written, every chain is written again.
    let unknown = NftExisting {
        written: Default::default(),
        ..existing
    };
    let tx = nft_transaction(&c1, &n, &unknown, false).tx;
    assert!(tx.contains(&format!("add rule ip kube-proxy endpoint-{kept} ip saddr")));
    let existing = NftExisting {
        written: nft_transaction(&c, &n, &NftExisting::default(), false).written,
        ..unknown
    };
    // A new timeout recreates every affinity set, and rewrites the rules that refer to them.
    let tx = nft_transaction(&c1, &n, &existing, true).tx;
    assert!(tx.contains(&format!("delete set ip kube-proxy affinity-{kept}")));
    assert!(tx.contains(&format!("add set ip kube-proxy affinity-{kept}")));
    assert!(tx.contains(&format!("flush chain ip kube-proxy endpoint-{kept}")));
    assert!(tx.contains(&format!(
        "add rule ip kube-proxy endpoint-{kept} update @affinity-{kept}"
    )));
    // A table of the layout before v1.34 gets its filter base chains rewritten.
    let mut old = existing;
    old.chains.insert("filter-output-post-dnat".into());
    let tx = nft_transaction(&c1, &n, &old, false).tx;
    assert!(tx.contains("delete chain ip kube-proxy filter-output-post-dnat"));
    assert!(tx.contains("delete chain ip kube-proxy filter-input\n"));
    assert!(
        tx.find("flush map ip kube-proxy firewall-ips") > tx.find("add map ip kube-proxy firewall-ips"),
        "the old layout has no firewall map to flush before it is added"
    );
}

#[test]
fn iptables_sync_flushes_and_deletes_stale_chains() {
    let o = ServiceOptions::default();
    let eps = vec![
        ep(1, 1, "zone-a", false),
        ep(2, 2, "zone-b", false),
        ep(3, 1, "zone-a", false),
    ];
    let c = lab(&o, eps.clone());
    let n = node(1, "zone-a");
    let first = iptables_restore(&c, &n, &BTreeSet::new(), &Written::new(), true);
    let full = first.tx;
    assert!(full.contains("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"));
    assert!(full.contains("--probability 0.3333333333"));
    assert!(full.contains("--probability 0.5000000000"));
    let existing = ipt_existing(&full);
    let c1 = lab(&o, eps[..2].to_vec());
    let tx = iptables_restore(&c1, &n, &existing, &first.written, false).tx;
    let gone = c1.services[0].ipt_sep(&PORTS[0], eps[2].ip);
    assert!(
        tx.contains(&format!(":{gone} - [0:0]")),
        "stale chain declared (flushed)"
    );
    assert!(tx.contains(&format!("-X {gone}")));
    assert!(!tx.contains("-A PREROUTING"), "built-in jumps only on the first sync");
    // The policy chain changes and is declared and written again; a kept endpoint's chain
    // holds what it should already and is left alone.
    let svc = &c1.services[0];
    let kept = svc.ipt_sep(&PORTS[0], eps[0].ip);
    assert!(tx.contains(&format!(":KUBE-SVC-{} - [0:0]", svc.ipt_hash(&PORTS[0]))));
    assert!(tx.contains("--probability 0.5000000000"));
    assert!(!tx.contains(&format!(":{kept} ")));
    assert!(!tx.contains(&format!("-A {kept} ")));
    // Without the record of what was written, every chain is written again.
    let tx = iptables_restore(&c1, &n, &existing, &Written::new(), false).tx;
    assert!(tx.contains(&format!(":{kept} - [0:0]")));
    assert!(tx.contains(&format!("-A {kept} ")));
}

#[test]
fn iptables_leaves_out_endpoint_comments_above_1000_endpoints() {
    let o = ServiceOptions::default();
    let eps: Vec<Endpoint> = (0..400u16)
        .map(|i| Endpoint {
            ip: Ipv4Addr::new(10, 244, (i / 200) as u8 + 1, (i % 200) as u8 + 2).into(),
            ep: Ep::ready(&format!("pod-{i}"), "node1"),
        })
        .collect();
    // 400 endpoints x 3 ports = 1200 > 1000: kube-proxy's large-cluster mode.
    let ipt = iptables_restore(
        &lab(&o, eps.clone()),
        &node(1, "zone-a"),
        &BTreeSet::new(),
        &Written::new(),
        false,
    )
    .tx;
    assert!(!ipt.contains(" -> 10.244."), "no per-endpoint comments");
    let small = iptables_restore(
        &lab(&o, eps[..300].to_vec()),
        &node(1, "zone-a"),
        &BTreeSet::new(),
        &Written::new(),
        false,
    )
    .tx;
    assert!(small.contains("\"default/tserver:tcp -> 10.244.1.2:5001\""));
}

#[test]
fn probability_format_is_kube_proxys() {
    assert_eq!(format!("{:.10}", 1.0 / 3.0_f64), "0.3333333333");
}

#[test]
fn ipv6_rules_use_kube_proxys_ip6_words_and_bracketed_endpoints() {
    use crate::lab::topology::v6;
    use crate::service::IpFamily;
    let o = ServiceOptions {
        affinity: SessionAffinity::ClientIp,
        ..ServiceOptions::default()
    };
    let mut c = lab(&o, vec![ep(1, 1, "zone-a", false), ep(2, 2, "zone-b", false)]);
    c.family = IpFamily::Ipv6;
    c.service_cidr = "fd00:5b1a::a60:0/112";
    c.cluster_cidr = "fd00:5b1a::af4:0/112";
    let svc = &mut c.services[0];
    let to_v6 = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V4(a) => std::net::IpAddr::V6(v6(a)),
        other => other,
    };
    svc.cluster_ip = to_v6(svc.cluster_ip);
    svc.lb_ips = svc.lb_ips.iter().map(|ip| to_v6(*ip)).collect();
    for e in &mut svc.endpoints {
        e.ip = to_v6(e.ip);
    }
    let n = node(1, "zone-a");
    let tx = nft_transaction(&c, &n, &NftExisting::default(), false).tx;
    assert!(tx.contains("add table ip6 kube-proxy"), "{tx}");
    assert!(!tx.contains(" ip kube-proxy") && !tx.contains("ip saddr") && !tx.contains("ipv4_addr"));
    assert!(tx.contains("add element ip6 kube-proxy nodeport-ips { fd00:5b1a::ac1f:b }"));
    assert!(
        tx.contains("type ipv6_addr ; flags dynamic,timeout"),
        "affinity sets: {tx}"
    );
    assert!(tx.contains("update @affinity-"));
    assert!(tx.contains("{ ip6 saddr }"));
    assert!(tx.contains("dnat to [fd00:5b1a::af4:102]:5001"), "{tx}");
    // The endpoint chain names the address with dots for colons (a chain name has none).
    assert!(tx.contains("__fd00.5b1a..af4.102/5001"), "{tx}");
    assert!(tx.contains("ip6 saddr != fd00:5b1a::af4:0/112 jump mark-for-masquerade"));
    // iptables: the same chains for ip6tables-restore, without the IPv4-only localnet rule.
    let ipt = iptables_restore(&c, &n, &BTreeSet::new(), &Written::new(), true).tx;
    assert!(ipt.contains("--to-destination [fd00:5b1a::af4:102]:5001"), "{ipt}");
    assert!(!ipt.contains("127.0.0.0/8"), "{ipt}");
    assert!(
        ipt.contains("-d fd00:5b1a::a60:a/128") || ipt.contains("-d fd00:5b1a::a60:a "),
        "{ipt}"
    );
}
