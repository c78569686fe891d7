//! kube-proxy's own golden tests, rebuilt: TestOverallNFTablesRules and TestOverallIPTablesRules
//! (pkg/proxy/{nftables,iptables}/proxier_test.go), the same six Services and endpoints, compared
//! with kube-proxy's expected output, kept verbatim in testdata/: the same objects and map
//! elements, and per chain the same rules in the same order.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::{Cluster, Endpoint, NftExisting, Proto, Service, ServicePort, Written, iptables_restore, nft_transaction};
use crate::lab::Node;
use crate::service::{Ep, ServiceOptions, ServiceType, SessionAffinity, TrafficPolicy};

const fn p80(node_port: u16) -> [ServicePort; 1] {
    [ServicePort {
        name: "p80",
        proto: Proto::Tcp,
        port: 80,
        target_port: 80,
        node_port,
    }]
}
const NO_NODEPORT: [ServicePort; 1] = p80(0);
const NODEPORT_3001: [ServicePort; 1] = p80(3001);
const NODEPORT_3002: [ServicePort; 1] = p80(3002);
const NODEPORT_3003: [ServicePort; 1] = p80(3003);

fn upstream_ep(ip: [u8; 4], node: &str) -> Endpoint {
    Endpoint {
        ip: Ipv4Addr::from(ip).into(),
        ep: Ep::ready(&Ipv4Addr::from(ip).to_string(), node),
    }
}

/// The test's fake proxier: node `test-node` at 192.168.0.2, local detector 10.0.0.0/8,
/// Service CIDR 172.30.0.0/16.
fn upstream_overall<'a>(
    cluster_opts: &'a ServiceOptions,
    local: &'a ServiceOptions,
    svc5: &'a ServiceOptions,
) -> (Cluster<'a>, Node) {
    let svc = |ns: &'a str, name: &'a str, kind, last: u8, ports: &'a [ServicePort], options, endpoints| Service {
        namespace: ns,
        name,
        kind,
        cluster_ip: Ipv4Addr::new(172, 30, 0, last).into(),
        ports,
        lb_ips: Vec::new(),
        external_ips: Vec::new(),
        health_check_node_port: 0,
        options,
        endpoints,
    };
    let services = vec![
        svc(
            "ns1",
            "svc1",
            ServiceType::ClusterIP,
            41,
            &NO_NODEPORT,
            cluster_opts,
            vec![upstream_ep([10, 180, 0, 1], "")],
        ),
        Service {
            // No nodeName on its endpoint: not local, so eTP Local has no local endpoint.
            lb_ips: vec![Ipv4Addr::new(1, 2, 3, 4).into()],
            external_ips: vec![Ipv4Addr::new(192, 168, 99, 22).into()],
            health_check_node_port: 30000,
            ..svc(
                "ns2",
                "svc2",
                ServiceType::LoadBalancer,
                42,
                &NODEPORT_3001,
                local,
                vec![upstream_ep([10, 180, 0, 2], "")],
            )
        },
        svc(
            "ns3",
            "svc3",
            ServiceType::NodePort,
            43,
            &NODEPORT_3003,
            cluster_opts,
            vec![upstream_ep([10, 180, 0, 3], "")],
        ),
        Service {
            external_ips: vec![Ipv4Addr::new(192, 168, 99, 33).into()],
            ..svc(
                "ns4",
                "svc4",
                ServiceType::NodePort,
                44,
                &NO_NODEPORT,
                cluster_opts,
                vec![
                    upstream_ep([10, 180, 0, 5], "test-node"),
                    upstream_ep([10, 180, 0, 4], "test-node"),
                ],
            )
        },
        Service {
            lb_ips: vec![Ipv4Addr::new(5, 6, 7, 8).into()],
            health_check_node_port: 30000,
            ..svc(
                "ns5",
                "svc5",
                ServiceType::LoadBalancer,
                45,
                &NODEPORT_3002,
                svc5,
                vec![upstream_ep([10, 180, 0, 3], "")],
            )
        },
        svc(
            "ns6",
            "svc6",
            ServiceType::ClusterIP,
            46,
            &NO_NODEPORT,
            cluster_opts,
            Vec::new(),
        ),
    ];
    let node = Node {
        name: "test-node".into(),
        zone: String::new(),
        ip: Ipv4Addr::new(192, 168, 0, 2),
        pod_cidr: "10.0.1.0/24".parse().unwrap(),
        netns: String::new(),
    };
    (
        Cluster {
            family: crate::service::IpFamily::Ipv4,
            service_cidr: "172.30.0.0/16",
            cluster_cidr: "10.0.0.0/8",
            services,
        },
        node,
    )
}

fn upstream_options() -> [ServiceOptions; 3] {
    [
        ServiceOptions::default(),
        ServiceOptions {
            external_traffic_policy: TrafficPolicy::Local,
            ..ServiceOptions::default()
        },
        ServiceOptions {
            affinity: SessionAffinity::ClientIp,
            source_ranges: vec!["203.0.113.0/25".parse().unwrap()],
            ..ServiceOptions::default()
        },
    ]
}

/// A ruleset as structure: the objects declared, the elements, and each chain's rules in order.
#[derive(Debug, PartialEq, Eq)]
struct NftShape {
    objects: BTreeSet<String>,
    elements: BTreeSet<String>,
    rules: BTreeMap<String, Vec<String>>,
}

fn nft_shape(text: &str) -> NftShape {
    let mut s = NftShape {
        objects: BTreeSet::new(),
        elements: BTreeSet::new(),
        rules: BTreeMap::new(),
    };
    for l in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if let Some(r) = l.strip_prefix("add rule ip kube-proxy ") {
            let (chain, rule) = r.split_once(' ').unwrap();
            s.rules.entry(chain.to_string()).or_default().push(rule.to_string());
        } else if l.starts_with("add element ") {
            s.elements.insert(l.to_string());
        } else if l.starts_with("add ") {
            s.objects.insert(l.to_string());
        } else {
            assert!(
                l.starts_with("flush ") || l.starts_with("delete "),
                "unexpected line {l}"
            );
        }
    }
    s
}

#[test]
fn nftables_rules_match_kube_proxys_overall_test() {
    let [c, l, s5] = upstream_options();
    let (cluster, node) = upstream_overall(&c, &l, &s5);
    let ours = nft_shape(&nft_transaction(&cluster, &node, &NftExisting::default(), false).tx);
    let want = nft_shape(include_str!("testdata/overall_nftables.txt"));
    assert_eq!(ours.objects, want.objects);
    assert_eq!(ours.elements, want.elements);
    for (chain, rules) in &want.rules {
        assert_eq!(ours.rules.get(chain), Some(rules), "chain {chain}");
    }
    assert_eq!(
        ours.rules.keys().collect::<Vec<_>>(),
        want.rules.keys().collect::<Vec<_>>()
    );
}

/// One iptables table as structure: the chains declared, and each chain's rules in order.
type IptTable = (BTreeSet<String>, BTreeMap<String, Vec<String>>);

/// iptables-restore input as structure, per table.
fn ipt_shape(text: &str) -> BTreeMap<String, IptTable> {
    let mut tables = BTreeMap::new();
    let mut table = String::new();
    for l in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && *l != "COMMIT")
    {
        if let Some(t) = l.strip_prefix('*') {
            table = t.to_string();
        } else if let Some(ch) = l.strip_prefix(':') {
            let (decl, _): &mut (BTreeSet<String>, BTreeMap<String, Vec<String>>) =
                tables.entry(table.clone()).or_default();
            decl.insert(ch.split_whitespace().next().unwrap().to_string());
        } else if let Some(r) = l.strip_prefix("-A ") {
            let (chain, rule) = r.split_once(' ').unwrap_or((r, ""));
            let (_, rules) = tables.entry(table.clone()).or_default();
            rules.entry(chain.to_string()).or_default().push(rule.to_string());
        } else {
            panic!("unexpected line {l}");
        }
    }
    tables
}

#[test]
fn iptables_rules_match_kube_proxys_overall_test() {
    let [c, l, s5] = upstream_options();
    let (cluster, node) = upstream_overall(&c, &l, &s5);
    // The test's fake has the nfacct counters and no --random-fully; a lab node has no nfacct
    // counters (kube-proxy then writes neither) and has --random-fully.
    let ours = iptables_restore(&cluster, &node, &BTreeSet::new(), &Written::new(), false)
        .tx
        .replace(" --random-fully", "");
    let want: String = include_str!("testdata/overall_iptables.txt")
        .lines()
        .filter(|l| !l.contains("localhost_nps_accepted_pkts"))
        .map(|l| l.replace(" -m nfacct --nfacct-name ct_state_invalid_dropped_pkts", "") + "\n")
        .collect();
    let (ours, want) = (ipt_shape(&ours), ipt_shape(&want));
    assert_eq!(ours.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (table, (decl, rules)) in &want {
        let (od, or) = &ours[table];
        assert_eq!(od, decl, "{table}: chains declared");
        for (chain, want_rules) in rules {
            assert_eq!(or.get(chain), Some(want_rules), "{table} {chain}");
        }
        assert_eq!(
            or.keys().collect::<Vec<_>>(),
            rules.keys().collect::<Vec<_>>(),
            "{table}"
        );
    }
}
