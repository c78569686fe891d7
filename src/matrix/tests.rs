use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::service::Ep;

fn cluster(options: ServiceOptions, eps: Vec<Ep>) -> Cluster {
    Cluster {
        options,
        externally_accessible: true,
        placement: eps
            .iter()
            .map(|e| (e.name.clone(), (e.node.clone(), format!("zone-{}", e.node))))
            .collect(),
        eps,
        zones: [("n1", "zone-n1"), ("n2", "zone-n2")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .into(),
        lb_hops: vec!["n1".into()],
        host_lb_rejected: true,
        pod_to_node_masquerade: Some(false),
        cluster_ip: None,
        headless: BTreeMap::new(),
    }
}

/// An endpoint listed in the EndpointSlice, not ready and not serving.
fn starting(name: &str, node: &str) -> Ep {
    Ep {
        ready: false,
        serving: false,
        ..Ep::ready(name, node)
    }
}

fn src(name: &str, kind: SourceKind, node: &str) -> MatrixSource {
    MatrixSource {
        name: name.into(),
        kind,
        node: node.into(),
        zone: String::new(),
    }
}

fn tgt(kind: TargetKind, node: &str) -> MatrixTarget {
    MatrixTarget {
        name: format!("{kind:?}:{node}"),
        kind,
        address: SocketAddr::from(([127, 0, 0, 1], 5001)),
        node: node.into(),
        pod: String::new(),
        host: String::new(),
    }
}

fn etp_local() -> ServiceOptions {
    ServiceOptions {
        external_traffic_policy: TrafficPolicy::Local,
        ..ServiceOptions::default()
    }
}

#[test]
fn etp_local_drops_outside_traffic_on_nodes_without_endpoints_and_short_circuits_the_rest() {
    // One endpoint, on n1.
    let c = cluster(etp_local(), vec![Ep::ready("p1", "n1")]);
    let client = src("client", SourceKind::Client, "");
    assert_eq!(
        c.expect(&client, &tgt(TargetKind::NodePort, "n1")).mark,
        Mark::Connected
    );
    let e = c.expect(&client, &tgt(TargetKind::NodePort, "n2"));
    assert_eq!(
        (e.mark, e.why.as_str()),
        (
            Mark::Timeout,
            "externalTrafficPolicy Local from outside: no endpoint on n2, dropped"
        )
    );
    // n2 reaching its own NodePort is short-circuited to every endpoint; n1's packet to n2 is
    // external there.
    let n2 = src("n2", SourceKind::Node, "n2");
    assert_eq!(c.expect(&n2, &tgt(TargetKind::NodePort, "n2")).mark, Mark::Connected);
    let n1 = src("n1", SourceKind::Node, "n1");
    assert_eq!(c.expect(&n1, &tgt(TargetKind::NodePort, "n2")).mark, Mark::Timeout);
    // A pod to another node's NodePort: short-circuited there without masquerade.
    let pod = src("p9", SourceKind::Pod, "n1");
    let e = c.expect(&pod, &tgt(TargetKind::NodePort, "n2"));
    assert!(e.partial && e.mark == Mark::Connected);
    // The clusterIP is not reachable from outside: not a path.
    assert_eq!(
        c.expect(&client, &tgt(TargetKind::ClusterIp, "")).mark,
        Mark::NotApplicable
    );
}

#[test]
fn no_endpoint_rejects_and_itp_local_drops() {
    let c = cluster(ServiceOptions::default(), vec![starting("p1", "n1")]);
    let pod = src("p1", SourceKind::Pod, "n1");
    for t in [
        TargetKind::ClusterIp,
        TargetKind::NodePort,
        TargetKind::LoadBalancer,
        TargetKind::Hairpin,
    ] {
        assert_eq!(c.expect(&pod, &tgt(t, "n2")).mark, Mark::Refused, "{t:?}");
    }
    let n1 = src("n1", SourceKind::Node, "n1");
    assert_eq!(c.expect(&n1, &tgt(TargetKind::LoadBalancer, "")).mark, Mark::Refused);
    let iptables = Cluster {
        host_lb_rejected: false,
        ..c.clone()
    };
    assert_eq!(
        iptables.expect(&n1, &tgt(TargetKind::LoadBalancer, "")).mark,
        Mark::Timeout
    );
    assert_eq!(
        iptables.expect(&n1, &tgt(TargetKind::NodePort, "n1")).mark,
        Mark::Refused
    );
    let itp = ServiceOptions {
        internal_traffic_policy: TrafficPolicy::Local,
        ..ServiceOptions::default()
    };
    let c = cluster(itp, vec![Ep::ready("p1", "n1")]);
    assert_eq!(
        c.expect(&src("n2", SourceKind::Node, "n2"), &tgt(TargetKind::ClusterIp, ""))
            .mark,
        Mark::Timeout
    );
    let e = c.expect(&pod, &tgt(TargetKind::ClusterIp, ""));
    assert_eq!(
        (e.mark, e.allowed.iter().map(String::as_str).collect::<Vec<_>>()),
        (Mark::Connected, vec!["p1"])
    );
}

fn seen(attempted: u64, ok: u64, refused: u64, timeout: u64, answers: &[(&str, u64)]) -> Observed {
    Observed {
        attempted,
        ok,
        failures: Failures {
            refused,
            timeout,
            ..Failures::default()
        },
        backends: answers
            .iter()
            .map(|(n, c)| BackendCount {
                name: n.to_string(),
                node: String::new(),
                zone: String::new(),
                count: *c,
                bytes: 0,
            })
            .collect(),
        resolved: None,
        resolve_error: None,
    }
}

#[test]
fn cells_are_classified_and_compared() {
    assert_eq!(classify(&seen(3, 3, 0, 0, &[])), Mark::Connected);
    assert_eq!(classify(&seen(3, 0, 3, 0, &[])), Mark::Refused);
    assert_eq!(classify(&seen(3, 0, 0, 3, &[])), Mark::Timeout);
    assert_eq!(classify(&seen(3, 1, 0, 2, &[])), Mark::Inconclusive);
    assert_eq!(classify(&seen(3, 0, 1, 2, &[])), Mark::Inconclusive);

    let c = cluster(etp_local(), vec![Ep::ready("p1", "n1"), Ep::ready("p2", "n2")]);
    let client = src("client", SourceKind::Client, "");
    let np1 = tgt(TargetKind::NodePort, "n1");
    let e = c.expect(&client, &np1);
    // Only n1's endpoint may answer from outside.
    let ok = judge(&c, &client, &np1, &e, &seen(3, 3, 0, 0, &[("p1", 3)]), 1);
    assert_eq!(
        (ok.verdict, ok.allowed_nodes.clone()),
        (CellVerdict::Correct, vec!["n1".to_string()])
    );
    let stray = judge(&c, &client, &np1, &e, &seen(3, 3, 0, 0, &[("p1", 2), ("p2", 1)]), 1);
    assert_eq!((stray.verdict, stray.strays), (CellVerdict::Incorrect, 1));
    let wrong = judge(&c, &client, &np1, &e, &seen(3, 0, 0, 3, &[]), 1);
    assert_eq!((wrong.observed, wrong.verdict), (Mark::Timeout, CellVerdict::Incorrect));
    let mixed = judge(&c, &client, &np1, &e, &seen(3, 1, 0, 2, &[("p1", 1)]), 1);
    assert_eq!(mixed.verdict, CellVerdict::Inconclusive);
    // Mixed where a connection is expected: measured again, up to the attempts; an expected
    // failure never.
    assert!(needs_round(&e, Some(&mixed), 1, 3));
    assert!(!needs_round(&e, Some(&mixed), 3, 3));
    let drop = c.expect(&client, &tgt(TargetKind::NodePort, "n3"));
    let m = judge(&c, &client, &np1, &drop, &seen(3, 1, 0, 2, &[]), 1);
    assert!(!needs_round(&drop, Some(&m), 1, 3));
}

#[test]
fn hairpin_needs_the_pod_itself_and_affinity_one_endpoint() {
    let c = cluster(
        ServiceOptions::default(),
        vec![Ep::ready("p1", "n1"), Ep::ready("p2", "n2")],
    );
    let pod = src("p1", SourceKind::Pod, "n1");
    let hp = tgt(TargetKind::Hairpin, "");
    let e = c.expect(&pod, &hp);
    assert!(e.hairpin);
    let none = judge(&c, &pod, &hp, &e, &seen(6, 6, 0, 0, &[("p2", 6)]), 1);
    assert_eq!((none.verdict, none.self_answered), (CellVerdict::Inconclusive, Some(0)));
    let got = judge(&c, &pod, &hp, &e, &seen(6, 6, 0, 0, &[("p1", 2), ("p2", 4)]), 2);
    assert_eq!((got.verdict, got.self_answered), (CellVerdict::Correct, Some(2)));

    let aff = ServiceOptions {
        affinity: SessionAffinity::ClientIp,
        ..ServiceOptions::default()
    };
    let c = cluster(aff, vec![Ep::ready("p1", "n1"), Ep::ready("p2", "n2")]);
    let cip = tgt(TargetKind::ClusterIp, "");
    let e = c.expect(&pod, &cip);
    let two = judge(&c, &pod, &cip, &e, &seen(3, 3, 0, 0, &[("p1", 2), ("p2", 1)]), 1);
    assert_eq!(two.verdict, CellVerdict::Incorrect);
    assert_eq!(c.expect(&pod, &hp).mark, Mark::NotApplicable);
}

#[test]
fn test_selects_scenarios_by_name_and_changes_list_cells_that_differ() {
    let r = Regex::new("^etp-local/").unwrap();
    let names: Vec<String> = scenarios(Some(&r), &[Proto::Tcp, Proto::Udp])
        .iter()
        .map(|(v, p)| scenario_name(v, *p))
        .collect();
    assert_eq!(names, ["etp-local/tcp", "etp-local/udp"]);
    assert_eq!(scenarios(None, &[Proto::Udp]).len(), variants().len());

    let c = cluster(ServiceOptions::default(), vec![Ep::ready("p1", "n1")]);
    let client = src("client", SourceKind::Client, "");
    let lb = tgt(TargetKind::LoadBalancer, "");
    let e = c.expect(&client, &lb);
    let run = |o: Observed| {
        let v = &variants()[0];
        build(Measured {
            tag: "t".into(),
            started_at: jiff::Timestamp::UNIX_EPOCH,
            duration_s: 1.0,
            target: TargetInfo {
                address: String::new(),
                mode: "lab".into(),
                protocol: Proto::Tcp,
                service: None,
                source: None,
                lab: None,
                ip_family: None,
            },
            params: MatrixParams {
                protocols: vec![Proto::Tcp],
                test: None,
                conns: 3,
                attempts: 3,
                timeout_s: 1.0,
                parallel: 8,
            },
            sources: vec![client.clone()],
            scenarios: vec![scenario(
                v,
                Proto::Tcp,
                vec![lb.clone()],
                vec![judge(&c, &client, &lb, &e, &o, 1)],
                1.0,
            )],
            notes: Vec::new(),
            stopped: None,
            environment: Environment::local(),
        })
    };
    let a = run(seen(3, 3, 0, 0, &[("p1", 3)]));
    let b = run(seen(3, 0, 0, 3, &[]));
    assert_eq!((a.correct, b.incorrect), (1, 1));
    let d = changes(&a, &b);
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].before, d[0].after), (Some(Mark::Connected), Some(Mark::Timeout)));
    assert!(changes(&a, &a).is_empty());
}

#[test]
fn probe_ports_never_repeat_within_the_range_and_wrap_whole() {
    let mut c = PortCursor::new(0);
    let a = c.take(3);
    let b = c.take(300);
    assert_eq!((a.first, a.count), (PortCursor::FIRST, 3));
    assert_eq!((b.first, b.count), (PortCursor::FIRST + 3, 300));
    // A storm that would run past the end starts over at the beginning, never straddles it.
    let mut c = PortCursor::new(u32::from(PortCursor::END - PortCursor::FIRST) - 2);
    assert_eq!(c.take(5).first, PortCursor::FIRST);
    // The seed places the start anywhere in the range.
    let c = PortCursor::new(1000).take(1);
    assert_eq!(c.first, PortCursor::FIRST + 1000);
    // Every port of a whole range's worth of probes is distinct.
    let mut c = PortCursor::new(12345);
    let mut seen = std::collections::BTreeSet::new();
    let mut total = 0u64;
    while total < u64::from(PortCursor::END - PortCursor::FIRST) - 64 {
        let r = c.take(7);
        if r.first == PortCursor::FIRST && total > 0 {
            break;
        }
        for i in 0..u64::from(r.count) {
            assert!(seen.insert(r.nth(i)), "port {} repeated", r.nth(i));
            assert!(r.nth(i) >= PortCursor::FIRST && r.nth(i) < PortCursor::END);
        }
        total += 7;
    }
    // An oversized request is capped at the range.
    assert_eq!(
        PortCursor::new(5).take(1_000_000).count,
        PortCursor::END - PortCursor::FIRST
    );
}

#[test]
fn icmp_need_counts_errors_per_rejecting_node_and_peer() {
    let c = cluster(
        ServiceOptions::default(),
        // p1 not ready: everything to the Service is refused.
        vec![starting("p1", "n1")],
    );
    let t = |name: &str, kind, node: &str| MatrixTarget {
        name: name.into(),
        kind,
        address: "10.0.0.1:1".parse::<SocketAddr>().unwrap(),
        node: node.into(),
        pod: String::new(),
        host: String::new(),
    };
    let targets = [
        t("cip", TargetKind::ClusterIp, ""),
        t("np:n1", TargetKind::NodePort, "n1"),
        t("np:n2", TargetKind::NodePort, "n2"),
        t("lb", TargetKind::LoadBalancer, ""),
        t("hairpin", TargetKind::Hairpin, ""),
        t("pod:p1", TargetKind::PodIp, "n1"),
    ];
    let pod = src("p1", SourceKind::Pod, "n1");
    let node = src("n1", SourceKind::Node, "n1");
    let client = src("client", SourceKind::Client, "");
    let expects: Vec<(MatrixSource, MatrixTarget, Expect)> = [pod.clone(), node.clone(), client.clone()]
        .iter()
        .flat_map(|s| targets.iter().map(|t| (s.clone(), t.clone(), c.expect(s, t))))
        .collect();
    let need = |who: &MatrixSource| c.icmp_need(expects.iter().filter(|(s, _, _)| s == who).map(|(s, t, e)| (s, t, e)));
    // The pod's own node rejects its clusterIP, hairpin, LB and own NodePort: 4 errors to it.
    assert_eq!(need(&pod), 4);
    // A node's own rejections go to itself (no limit); n2 rejects its NodePort: 1.
    assert_eq!(need(&node), 1);
    // The client: n1 rejects its NodePort and the LB IP (the LB's hop).
    assert_eq!(need(&client), 2);
    assert_eq!(c.icmp_need(expects.iter().map(|(s, t, e)| (s, t, e))), 4);
}

#[test]
fn icmp_budget_waits_only_for_what_is_missing() {
    use std::time::{Duration, Instant};
    let t0 = Instant::now();
    let mut b = IcmpBudget::default();
    // A full budget covers a first round of 4.
    assert_eq!(b.wait(t0, 4), Duration::ZERO);
    b.spend(t0, 4);
    // Right after, 2 are left: a second round of 4 waits 2 s (and half a second spare).
    assert_eq!(b.wait(t0, 4), Duration::from_secs_f64(2.5));
    // One second later only 1 s more is missing.
    assert_eq!(b.wait(t0 + Duration::from_secs(1), 4), Duration::from_secs_f64(1.5));
    // The budget never grows past the burst: a need above it waits for a full one.
    assert_eq!(b.wait(t0 + Duration::from_secs(60), 10), Duration::ZERO);
    b.spend(t0 + Duration::from_secs(60), 6);
    assert_eq!(b.wait(t0 + Duration::from_secs(60), 10), Duration::from_secs_f64(6.5));
    // Rounds without refusals neither wait nor spend.
    let before = b;
    assert_eq!(b.wait(t0, 0), Duration::ZERO);
    b.spend(t0 + Duration::from_secs(61), 0);
    assert_eq!(b, before);
}

fn dns(kind: TargetKind, host: &str, address: &str) -> MatrixTarget {
    MatrixTarget {
        name: format!("{kind:?}"),
        kind,
        address: address.parse().unwrap(),
        node: String::new(),
        pod: String::new(),
        host: host.into(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn dns_targets_must_resolve_to_what_cluster_dns_publishes() {
    let mut c = cluster(
        ServiceOptions {
            internal_traffic_policy: TrafficPolicy::Local,
            ..ServiceOptions::default()
        },
        vec![Ep::ready("p1", "n1"), Ep::ready("p2", "n2")],
    );
    c.cluster_ip = Some(ip("10.96.0.20"));
    c.headless = [("p1", "10.244.1.5"), ("p2", "10.244.2.5")]
        .map(|(p, a)| (p.to_string(), ip(a)))
        .into();
    let headless = dns(TargetKind::Headless, "svclb-mx-headless.ns.svc", "0.0.0.0:5001");
    let alias = dns(
        TargetKind::ExternalName,
        "svclb-mx-itp-local-alias.ns.svc",
        "10.96.0.20:5001",
    );
    let client = src("client", SourceKind::Client, "");
    for t in [&headless, &alias] {
        assert_eq!(c.expect(&client, t).mark, Mark::NotApplicable, "{t:?}");
    }
    // Headless: no kube-proxy, so no traffic policy: every ready endpoint's pod IP, each
    // answering, from any node.
    let n3 = src("n3", SourceKind::Node, "n3");
    let e = c.expect(&n3, &headless);
    assert_eq!((e.mark, e.sticky), (Mark::Connected, false));
    assert_eq!(e.resolves, Some([ip("10.244.1.5"), ip("10.244.2.5")].into()));
    assert_eq!(e.allowed, ["p1".to_string(), "p2".to_string()].into());
    let o = Observed {
        resolved: Some(vec![ip("10.244.2.5"), ip("10.244.1.5")]),
        ..seen(4, 4, 0, 0, &[("p1", 2), ("p2", 2)])
    };
    let cell = judge(&c, &n3, &headless, &e, &o, 1);
    assert_eq!(cell.verdict, CellVerdict::Correct, "{}", cell.why);
    assert_eq!(cell.resolved.len(), 2);
    // A stale or partial answer is wrong, whatever connected.
    let o = Observed {
        resolved: Some(vec![ip("10.244.1.5")]),
        ..seen(4, 4, 0, 0, &[("p1", 4)])
    };
    let cell = judge(&c, &n3, &headless, &e, &o, 1);
    assert_eq!(cell.verdict, CellVerdict::Incorrect);
    assert!(
        cell.why
            .starts_with("resolved to [10.244.1.5], expected [10.244.1.5, 10.244.2.5]"),
        "{}",
        cell.why
    );
    // ExternalName: the clusterIP, then the clusterIP's rules (iTP Local: n3 has no endpoint).
    let e = c.expect(&n3, &alias);
    assert_eq!(
        (e.mark, e.resolves.clone()),
        (Mark::Timeout, Some([ip("10.96.0.20")].into()))
    );
    assert!(
        e.why.starts_with("ExternalName: a CNAME of the Service's name"),
        "{}",
        e.why
    );
    let o = Observed {
        resolve_error: Some("svclb-mx-itp-local-alias.ns.svc: NXDOMAIN".into()),
        ..Observed::default()
    };
    let cell = judge(&c, &n3, &alias, &e, &o, 1);
    assert_eq!(cell.verdict, CellVerdict::Incorrect);
    assert!(
        cell.why
            .starts_with("the name did not resolve at the source (svclb-mx-itp-local-alias.ns.svc: NXDOMAIN)")
    );
    let o = Observed {
        resolved: Some(vec![ip("10.96.0.20")]),
        ..seen(1, 0, 0, 1, &[])
    };
    assert_eq!(judge(&c, &n3, &alias, &e, &o, 1).verdict, CellVerdict::Correct);
    // Without ready endpoints the headless name has no address: not a path.
    c.headless.clear();
    assert_eq!(c.expect(&n3, &headless).mark, Mark::NotApplicable);
    // A refused alias costs an ICMP error of the source's node, as the clusterIP does.
    let none = cluster(ServiceOptions::default(), vec![starting("p1", "n1")]);
    let pod = src("p1", SourceKind::Pod, "n1");
    let cells = [(&pod, &alias, none.expect(&pod, &alias))];
    assert_eq!(cells[0].2.mark, Mark::Refused);
    assert_eq!(none.icmp_need(cells.iter().map(|(s, t, e)| (*s, *t, e))), 1);
}

#[test]
fn hairpin_is_from_an_endpoint_and_the_masquerade_of_a_cluster_is_not_known() {
    let mut c = cluster(etp_local(), vec![Ep::ready("p1", "n1")]);
    // A client pod of the run is no endpoint: no hairpin to measure.
    let client_pod = src("svclb-client-x-0", SourceKind::Pod, "n2");
    let e = c.expect(&client_pod, &tgt(TargetKind::Hairpin, ""));
    assert_eq!(e.mark, Mark::NotApplicable);
    assert!(e.why.contains("this pod is not one"), "{}", e.why);
    // A pod to another node's NodePort under eTP Local: partial either way; the why says what
    // the lab knows (no masquerade), or both ways on a cluster.
    let p1 = src("p1", SourceKind::Pod, "n1");
    let np2 = tgt(TargetKind::NodePort, "n2");
    assert!(c.expect(&p1, &np2).why.contains("without masquerade"));
    c.pod_to_node_masquerade = None;
    let e = c.expect(&p1, &np2);
    assert!(
        e.partial && e.why.contains("or external when the CNI masquerades it"),
        "{}",
        e.why
    );
    // Then a time-out (masqueraded, no endpoint on n2) is right, a refusal wrong.
    assert_eq!(
        judge(&c, &p1, &np2, &e, &seen(3, 0, 0, 3, &[]), 1).verdict,
        CellVerdict::Correct
    );
    assert_eq!(
        judge(&c, &p1, &np2, &e, &seen(3, 0, 3, 0, &[]), 1).verdict,
        CellVerdict::Incorrect
    );
}

#[test]
fn cluster_rows_and_what_a_cluster_cannot_make() {
    let n = |name: &str, zone: &str, ready| (name.to_string(), zone.to_string(), ready);
    let p = |name: &str, node: &str, ready| (name.to_string(), node.to_string(), ready);
    let rows = node_rows(
        &[
            n("node-10", "b", true),
            n("node-2", "a", true),
            n("node-3", "a", false),
            n("node-1", "", true),
        ],
        &[
            p("tserver-z", "node-2", true),
            p("tserver-b", "node-2", true),
            p("tserver-a", "node-2", false),
            p("tserver-c", "node-3", true),
            p("tserver-d", "node-10", false),
        ],
    );
    let got: Vec<(&str, &str, Option<&str>)> = rows
        .iter()
        .map(|r| (r.node.as_str(), r.zone.as_str(), r.server.as_deref()))
        .collect();
    // Ready nodes in natural order; the first ready server pod by name, else none (a client
    // pod goes there); node-3 is not Ready: no row, whatever runs on it.
    assert_eq!(
        got,
        [
            ("node-1", "", None),
            ("node-2", "a", Some("tserver-b")),
            ("node-10", "b", None)
        ]
    );
    let skipped: Vec<&str> = variants()
        .iter()
        .filter(|v| cluster_skip(v).is_some())
        .map(|v| v.name)
        .collect();
    assert_eq!(skipped, ["terminating"]);
    let s = skipped_scenario();
    assert_eq!((s.skipped.as_deref(), s.cells.len(), s.correct), (Some("why"), 0, 0));
}

fn skipped_scenario() -> MatrixScenario {
    skipped(&variants()[6], Proto::Udp, "why".into())
}

#[test]
fn slices_are_ready_when_they_list_the_servers_and_carry_the_hints() {
    let want: BTreeSet<String> = ["a1".to_string(), "b1".to_string()].into();
    let zone = |node: &str| {
        if node == "n9" {
            String::new()
        } else {
            format!("zone-{node}")
        }
    };
    let plain = vec![Ep::ready("a1", "n1"), Ep::ready("b1", "n2")];
    assert_eq!(slices_lack(&want, &plain, None, &zone), None);
    // A server not (yet) listed ready, or a pod that should not be there.
    let mut eps = vec![starting("a1", "n1"), Ep::ready("c1", "n3")];
    assert_eq!(
        slices_lack(&want, &eps, None, &zone),
        Some(SlicesLack::Endpoints(
            "not listed ready: a1, b1; listed ready but not expected: c1".into()
        ))
    );
    // No endpoints wanted (the no-endpoints Service): none listed ready is right.
    eps.pop();
    assert_eq!(slices_lack(&BTreeSet::new(), &eps, None, &zone), None);
    // trafficDistribution: zone hints (a node without a zone gets none), node hints for
    // PreferSameNode.
    let td = Some(TrafficDistribution::PreferSameZone);
    assert_eq!(
        slices_lack(&want, &plain, td, &zone),
        Some(SlicesLack::Hints("no PreferSameZone hint yet on a1, b1".into()))
    );
    let hinted = |name: &str, node: &str, nodes: bool| Ep {
        zone_hints: if zone(node).is_empty() {
            vec![]
        } else {
            vec![zone(node)]
        },
        node_hints: if nodes { vec![node.into()] } else { vec![] },
        ..Ep::ready(name, node)
    };
    let zoned = vec![hinted("a1", "n1", false), hinted("b1", "n9", false)];
    assert_eq!(slices_lack(&want, &zoned, td, &zone), None);
    let same_node = Some(TrafficDistribution::PreferSameNode);
    assert_eq!(
        slices_lack(&want, &zoned, same_node, &zone),
        Some(SlicesLack::Hints("no PreferSameNode hint yet on a1, b1".into()))
    );
    let both = vec![hinted("a1", "n1", true), hinted("b1", "n9", true)];
    assert_eq!(slices_lack(&want, &both, same_node, &zone), None);
}
