//! The zones engine: what each source node's kube-proxy is expected to do with ClusterIP traffic
//! (the endpoints it picks and why, by [`crate::service::select`], kube-proxy's
//! `pkg/proxy/topology.go`), where the connections really landed (the source-zone × serving-zone
//! matrix, same-zone and same-node shares), the verdict (traffic that kube-proxy keeps local must
//! not leave), and what the cross-zone bytes cost at each cloud's price. It knows no CLI and no
//! backend: runs give it endpoints, sources and storm results.

use std::collections::{BTreeMap, BTreeSet};

use crate::record::{
    Environment, Locality, Price, TargetInfo, ZONES_KIND, ZONES_VERSION, ZoneCell, ZoneSource, ZonesCycle, ZonesParams,
    ZonesRun,
};
use crate::service::{Ep, ServiceOptions, ServiceShape, Topology, TrafficPolicy, select};
use crate::stats::{Criteria, Verdict, evaluate};
use crate::storm::{BackendCount, Failures, Stop};

mod cost;
pub use cost::{CLOUDS, MONTH_S, cloud_price, cost, custom_price};

/// The Service and its endpoints as kube-proxy sees them (from a lab's state or from the API's
/// Service, EndpointSlices and nodes).
#[derive(Debug, Clone)]
pub struct ServiceView {
    pub options: ServiceOptions,
    /// A NodePort, LoadBalancer IP or external IP (kube-proxy then keeps the cluster endpoints).
    pub externally_accessible: bool,
    /// The EndpointSlices' endpoints.
    pub eps: Vec<Ep>,
    /// Every endpoint's pod → node → zone.
    pub endpoints: Vec<Placed>,
}

/// A pod (endpoint or client) and where it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub name: String,
    pub node: String,
    /// Empty: the node has no `topology.kubernetes.io/zone` label.
    pub zone: String,
}

/// What the kube-proxy of a source's node does with its ClusterIP traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    pub topology: Topology,
    pub locality: Locality,
    /// In kube-proxy's words (`topology.go`), or the traffic policy's.
    pub why: String,
    /// The endpoints it balances over.
    pub expected: Vec<String>,
}

/// kube-proxy's choice on `node` in `zone` for ClusterIP traffic: the internal traffic policy
/// (Local: this node's endpoints only), else the cluster endpoints after topology hints.
pub fn expect(view: &ServiceView, node: &str, zone: &str) -> Expectation {
    let shape = ServiceShape {
        options: &view.options,
        externally_accessible: view.externally_accessible,
    };
    let s = select(shape, &view.eps, node, zone);
    let names = |idx: &[usize]| idx.iter().map(|&i| view.eps[i].name.clone()).collect::<Vec<_>>();
    if view.options.internal_traffic_policy == TrafficPolicy::Local {
        let why = if s.local.is_empty() {
            format!("internalTrafficPolicy Local and no endpoint on node {node}: connections are dropped")
        } else {
            format!("internalTrafficPolicy Local: only the endpoints on node {node}")
        };
        return Expectation {
            topology: Topology::None,
            locality: Locality::Node,
            why,
            expected: names(&s.local),
        };
    }
    let locality = match s.topology {
        Topology::None => Locality::Any,
        Topology::PreferSameZone => Locality::Zone,
        Topology::PreferSameNode => Locality::Node,
    };
    let why = if s.has_any {
        s.reason
    } else {
        "no usable endpoint anywhere: connections are rejected".into()
    };
    Expectation {
        topology: s.topology,
        locality,
        why,
        expected: names(&s.cluster),
    }
}

/// One storm of one source: the source, what was expected then, and what it measured.
#[derive(Debug, Clone)]
pub struct Part {
    pub expectation: Expectation,
    pub attempted: u64,
    pub ok: u64,
    pub failures: Failures,
    pub backends: Vec<BackendCount>,
}

/// Where a backend runs: the view's placement wins over what the server said (a tserver cannot
/// read its node's zone label).
fn place<'a>(view: &'a ServiceView, b: &'a BackendCount) -> (&'a str, &'a str) {
    match view.endpoints.iter().find(|e| e.name == b.name) {
        Some(e) => (&e.node, &e.zone),
        None => (&b.node, &b.zone),
    }
}

/// Connections of `part` answered outside its expected endpoints while kube-proxy keeps them local.
fn left(part: &Part) -> u64 {
    if part.expectation.locality == Locality::Any {
        return 0;
    }
    part.backends
        .iter()
        .filter(|b| !part.expectation.expected.contains(&b.name))
        .map(|b| b.count)
        .sum()
}

/// Per source zone, the local share of a set of (source, parts); cross-zone connections and
/// bytes; connections that left.
fn tally<'a>(view: &ServiceView, parts: impl Iterator<Item = (&'a Placed, &'a Part)>) -> Tally {
    let mut t = Tally::default();
    for (src, p) in parts {
        t.conns += p.attempted;
        t.ok += p.ok;
        t.left += left(p);
        for b in &p.backends {
            let (_, zone) = place(view, b);
            let row = t.local.entry(src.zone.clone()).or_default();
            row.1 += b.count;
            if zone == src.zone {
                row.0 += b.count;
            } else {
                t.cross_conns += b.count;
                t.cross_bytes += b.bytes;
            }
        }
    }
    t
}

#[derive(Default)]
struct Tally {
    conns: u64,
    ok: u64,
    left: u64,
    /// Source zone → (same-zone answers, all answers).
    local: BTreeMap<String, (u64, u64)>,
    cross_conns: u64,
    cross_bytes: u64,
}

fn share(part: u64, of: u64) -> f64 {
    if of == 0 { 0.0 } else { part as f64 / of as f64 }
}

/// The line of one `--watch` cycle: `parts[i]` is what `sources[i]` measured in it.
pub fn cycle(view: &ServiceView, n: u32, at_s: f64, sources: &[Placed], parts: &[Part]) -> ZonesCycle {
    let t = tally(view, sources.iter().zip(parts));
    ZonesCycle {
        cycle: n,
        at_s,
        conns: t.conns,
        ok: t.ok,
        local_share: t.local.into_iter().map(|(z, (l, all))| (z, share(l, all))).collect(),
        cross_zone_conns: t.cross_conns,
        cross_zone_bytes: t.cross_bytes,
        left: t.left,
    }
}

/// Everything a run measured, for [`build`].
pub struct Measured<'a> {
    pub tag: String,
    pub started_at: jiff::Timestamp,
    pub duration_s: f64,
    pub target: TargetInfo,
    pub params: ZonesParams,
    pub view: &'a ServiceView,
    /// Each source with its storms, one per cycle (the last one's expectation is reported).
    pub sources: Vec<(Placed, Vec<Part>)>,
    pub cycles: Vec<ZonesCycle>,
    pub prices: Vec<Price>,
    pub stopped: Option<Stop>,
    pub environment: Environment,
}

/// The zone a report shows for a node without a zone label.
pub const NO_ZONE: &str = "(no zone)";

fn zone_name(z: &str) -> String {
    if z.is_empty() { NO_ZONE.into() } else { z.into() }
}

/// Judges and builds the `ZonesRun`.
pub fn build(m: Measured<'_>) -> ZonesRun {
    let view = m.view;
    let mut sources = Vec::new();
    let mut reasons = Vec::new();
    let mut cells: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    let zones: BTreeSet<String> = view
        .endpoints
        .iter()
        .map(|e| zone_name(&e.zone))
        .chain(m.sources.iter().map(|(s, _)| zone_name(&s.zone)))
        .collect();
    let (mut failures, mut conns, mut ok, mut bytes) = (Failures::default(), 0, 0, 0);
    for (src, parts) in &m.sources {
        let Some(last) = parts.last() else { continue };
        let e = &last.expectation;
        // Counts over all cycles, every endpoint listed (zeros included), placed by the view.
        let mut counts: BTreeMap<String, BackendCount> = view
            .endpoints
            .iter()
            .map(|p| {
                let b = BackendCount {
                    name: p.name.clone(),
                    node: p.node.clone(),
                    zone: p.zone.clone(),
                    count: 0,
                    bytes: 0,
                };
                (p.name.clone(), b)
            })
            .collect();
        let mut f = Failures::default();
        let (mut attempted, mut answered, mut left_here) = (0, 0, 0);
        for p in parts {
            attempted += p.attempted;
            answered += p.ok;
            f.merge(&p.failures);
            left_here += left(p);
            for b in &p.backends {
                let (node, zone) = place(view, b);
                let c = counts.entry(b.name.clone()).or_insert_with(|| BackendCount {
                    name: b.name.clone(),
                    node: node.into(),
                    zone: zone.into(),
                    count: 0,
                    bytes: 0,
                });
                c.count += b.count;
                c.bytes += b.bytes;
            }
        }
        let mut backends: Vec<BackendCount> = counts.into_values().collect();
        backends.sort_by(|a, b| alphanumeric_sort::compare_str(&a.name, &b.name));
        let same_zone = backends.iter().filter(|b| b.zone == src.zone).map(|b| b.count).sum();
        let same_node = backends.iter().filter(|b| b.node == src.node).map(|b| b.count).sum();
        for b in &backends {
            let cell = cells.entry((zone_name(&src.zone), zone_name(&b.zone))).or_default();
            cell.0 += b.count;
            cell.1 += b.bytes;
            bytes += b.bytes;
        }
        let p_value = (e.expected.len() > 1)
            .then(|| {
                let over: Vec<(&str, u64)> = backends
                    .iter()
                    .filter(|b| e.expected.contains(&b.name))
                    .map(|b| (b.name.as_str(), b.count))
                    .collect();
                let criteria = Criteria {
                    expect_backends: Some(e.expected.len()),
                    margin_pct: 50.0,
                    alpha: None,
                };
                evaluate(&over, 0, &criteria).p_value
            })
            .flatten();
        let where_ = format!("{} on {} ({})", src.name, src.node, zone_name(&src.zone));
        if left_here > 0 {
            let kept = match e.locality {
                Locality::Zone => format!("in {}", zone_name(&src.zone)),
                _ => format!("on {}", src.node),
            };
            reasons.push(format!(
                "{where_}: {left_here} of {answered} connections left, though kube-proxy keeps them {kept} ({})",
                e.why
            ));
        }
        if answered == 0 && attempted > 0 {
            reasons.push(format!(
                "{where_}: none of {attempted} connections was answered ({})",
                e.why
            ));
        }
        failures.merge(&f);
        conns += attempted;
        ok += answered;
        sources.push(ZoneSource {
            name: src.name.clone(),
            node: src.node.clone(),
            zone: src.zone.clone(),
            conns: attempted,
            ok: answered,
            failed: f.into(),
            topology: e.topology,
            locality: e.locality,
            why: e.why.clone(),
            expected: e.expected.clone(),
            backends,
            same_zone,
            same_node,
            left: left_here,
            p_value,
        });
    }
    // The matrix: every source zone against every zone, zeros included.
    let from: BTreeSet<String> = m.sources.iter().map(|(s, _)| zone_name(&s.zone)).collect();
    let matrix: Vec<ZoneCell> = from
        .iter()
        .flat_map(|f| zones.iter().map(move |t| (f.clone(), t.clone())))
        .map(|(f, t)| {
            let (c, b) = cells.get(&(f.clone(), t.clone())).copied().unwrap_or_default();
            ZoneCell {
                from: f,
                to: t,
                conns: c,
                bytes: b,
            }
        })
        .collect();
    let cross: Vec<&ZoneCell> = matrix.iter().filter(|c| c.from != c.to).collect();
    let cross_zone_conns = cross.iter().map(|c| c.conns).sum();
    let cross_zone_bytes = cross.iter().map(|c| c.bytes).sum();
    let cost = if m.params.bytes.is_some() {
        m.prices
            .iter()
            .map(|p| cost(p, cross_zone_bytes, ok, m.params.rate))
            .collect()
    } else {
        Vec::new()
    };
    if ok == 0 && conns > 0 {
        reasons.push(format!("none of {conns} connections was answered"));
    }
    // An interrupted run is judged on what it measured; `stopped` says it is partial.
    let verdict = if reasons.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    ZonesRun {
        kind: ZONES_KIND.into(),
        version: ZONES_VERSION,
        tag: m.tag,
        started_at: m.started_at,
        duration_s: m.duration_s,
        target: m.target,
        traffic_distribution: view.options.traffic_distribution,
        internal_traffic_policy: view.options.internal_traffic_policy,
        params: m.params,
        conns,
        ok,
        failed: failures.into(),
        stopped: m.stopped,
        sources,
        matrix,
        cross_zone_conns,
        cross_zone_share: share(cross_zone_conns, ok),
        bytes,
        cross_zone_bytes,
        cost,
        cycles: m.cycles,
        verdict,
        reasons,
        environment: m.environment,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::TrafficDistribution;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    fn ep(name: &str, node: &str, zone: &str, td: bool) -> (Ep, Placed) {
        let e = Ep {
            zone_hints: if td { vec![zone.into()] } else { vec![] },
            ..Ep::ready(name, node)
        };
        let p = Placed {
            name: name.into(),
            node: node.into(),
            zone: zone.into(),
        };
        (e, p)
    }

    /// Two endpoints in zone-a (n1, n2), one in zone-b (n3); zone-c has none.
    fn view(td: Option<TrafficDistribution>) -> ServiceView {
        let (eps, endpoints) = [
            ep("a1", "n1", "zone-a", td.is_some()),
            ep("a2", "n2", "zone-a", td.is_some()),
            ep("b1", "n3", "zone-b", td.is_some()),
        ]
        .into_iter()
        .unzip();
        ServiceView {
            options: ServiceOptions {
                traffic_distribution: td,
                ..ServiceOptions::default()
            },
            externally_accessible: true,
            eps,
            endpoints,
        }
    }

    #[test]
    fn expectations_say_what_kube_proxy_does_and_why() {
        let v = view(Some(TrafficDistribution::PreferSameZone));
        let e = expect(&v, "n1", "zone-a");
        assert_eq!(
            (e.locality, e.expected.clone()),
            (Locality::Zone, vec!["a1".into(), "a2".into()])
        );
        assert_eq!(e.why, "endpoints hinted for zone zone-a");
        let e = expect(&v, "n9", "zone-c");
        assert_eq!((e.locality, e.expected.len()), (Locality::Any, 3));
        assert_eq!(e.why, "using all endpoints: no endpoint hinted for zone zone-c");
        assert_eq!(
            expect(&v, "n9", "").why,
            "using all endpoints: node n9 has no topology.kubernetes.io/zone label"
        );
        let mut v = v;
        v.eps[2].zone_hints.clear();
        let e = expect(&v, "n1", "zone-a");
        assert_eq!(
            (e.locality, e.why.as_str()),
            (Locality::Any, "using all endpoints: endpoint b1 has no zone hint")
        );
        v.options.internal_traffic_policy = TrafficPolicy::Local;
        let e = expect(&v, "n3", "zone-b");
        assert_eq!(
            (e.locality, e.expected.clone()),
            (Locality::Node, vec!["b1".to_string()])
        );
        assert!(expect(&v, "n9", "zone-c").why.contains("dropped"));
    }

    fn part(e: Expectation, counts: &[(&str, u64)], bytes_each: u64) -> Part {
        let ok = counts.iter().map(|c| c.1).sum();
        Part {
            expectation: e,
            attempted: ok,
            ok,
            failures: Failures::default(),
            // What a server reports: its hostname as zone; the view's placement must win.
            backends: counts
                .iter()
                .map(|(n, c)| BackendCount {
                    name: (*n).into(),
                    node: "reported".into(),
                    zone: (*n).into(),
                    count: *c,
                    bytes: c * bytes_each,
                })
                .collect(),
        }
    }

    fn placed(name: &str, node: &str, zone: &str) -> Placed {
        Placed {
            name: name.into(),
            node: node.into(),
            zone: zone.into(),
        }
    }

    fn measured<'a>(v: &'a ServiceView, sources: Vec<(Placed, Vec<Part>)>, bytes: Option<u64>) -> Measured<'a> {
        Measured {
            tag: "t".into(),
            started_at: jiff::Timestamp::UNIX_EPOCH,
            duration_s: 1.0,
            target: TargetInfo {
                address: "10.96.0.10:5001 (clusterIP)".into(),
                mode: "lab".into(),
                protocol: crate::storm::Proto::Tcp,
                service: None,
                source: None,
                lab: None,
                ip_family: None,
            },
            params: ZonesParams {
                conns_per_source: 100,
                sources: "per-zone".into(),
                parallel: 10,
                timeout_s: 2.0,
                bytes,
                rate: Some(10.0),
                watch_interval_s: None,
                cycles: 1,
            },
            view: v,
            sources,
            cycles: Vec::new(),
            prices: CLOUDS.iter().filter_map(|c| cloud_price(c)).collect(),
            stopped: None,
            environment: Environment::default(),
        }
    }

    #[test]
    fn traffic_that_should_stay_in_its_zone_and_leaves_fails_with_the_reason() {
        let v = view(Some(TrafficDistribution::PreferSameZone));
        let a = placed("c-a", "n1", "zone-a");
        let c = placed("c-c", "n9", "zone-c");
        let ea = expect(&v, "n1", "zone-a");
        let ec = expect(&v, "n9", "zone-c");
        let good = vec![
            (a.clone(), vec![part(ea.clone(), &[("a1", 50), ("a2", 50)], 1000)]),
            (
                c.clone(),
                vec![part(ec.clone(), &[("a1", 30), ("a2", 30), ("b1", 40)], 1000)],
            ),
        ];
        let r = build(measured(&v, good, Some(1000)));
        assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.reasons);
        assert_eq!((r.sources[0].same_zone, r.sources[0].left), (100, 0));
        // zone-c reaches all: 100 connections across zones, 100,000 bytes.
        assert_eq!((r.cross_zone_conns, r.cross_zone_bytes), (100, 100_000));
        assert!(close(r.cross_zone_share, 0.5));
        let cell = |f: &str, t: &str| r.matrix.iter().find(|c| c.from == f && c.to == t).unwrap().conns;
        assert_eq!(
            (
                cell("zone-a", "zone-a"),
                cell("zone-a", "zone-b"),
                cell("zone-c", "zone-b")
            ),
            (100, 0, 40)
        );
        // zone-c is a column too (no endpoints), with zeros.
        assert_eq!(cell("zone-c", "zone-c"), 0);
        // AWS: 100,000 bytes each side at 0.01/GB = 2e-6 USD; 200 conns; a month at 10 conn/s.
        let aws = &r.cost[0];
        assert!(close(aws.total_usd, 2e-6), "{aws:?}");
        assert!(close(aws.monthly_usd.unwrap(), 2e-6 / 200.0 * 10.0 * MONTH_S));
        // Placement from the view: zone-a, not the server's word.
        assert_eq!(r.sources[0].backends[0].zone, "zone-a");

        let bad = vec![(a, vec![part(ea, &[("a1", 45), ("a2", 45), ("b1", 10)], 0)])];
        let r = build(measured(&v, bad, None));
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(
            r.reasons,
            [
                "c-a on n1 (zone-a): 10 of 100 connections left, though kube-proxy keeps them in zone-a (endpoints hinted for zone zone-a)"
            ]
        );
        assert!(r.cost.is_empty(), "no cost without --bytes");
    }

    #[test]
    fn without_hints_a_spread_passes_and_cycles_report_local_shares() {
        let v = view(None);
        let a = placed("c-a", "n1", "zone-a");
        let ea = expect(&v, "n1", "zone-a");
        assert_eq!(ea.locality, Locality::Any);
        let p = part(ea, &[("a1", 340), ("a2", 330), ("b1", 330)], 10);
        let line = cycle(&v, 1, 0.5, std::slice::from_ref(&a), std::slice::from_ref(&p));
        assert_eq!(line.local_share, [("zone-a".to_string(), 0.67)]);
        assert_eq!(
            (line.cross_zone_conns, line.cross_zone_bytes, line.left),
            (330, 3300, 0)
        );
        let r = build(measured(&v, vec![(a, vec![p.clone(), p])], Some(10)));
        assert_eq!(r.verdict, Verdict::Pass);
        let s = &r.sources[0];
        assert_eq!((s.conns, s.same_zone, s.same_node), (2000, 1340, 680));
        assert!(s.p_value.unwrap() > 0.5, "{:?}", s.p_value);
    }
}
