use std::net::SocketAddr;

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
    let c = cluster(ServiceOptions::default(), vec![]);
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
        Vec::new(), // no endpoints: everything to the Service is refused
    );
    let t = |name: &str, kind, node: &str| MatrixTarget {
        name: name.into(),
        kind,
        address: "10.0.0.1:1".parse::<SocketAddr>().unwrap(),
        node: node.into(),
        pod: String::new(),
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
