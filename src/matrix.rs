//! The matrix engine: reachability truth tables. For every scenario (a Service variant and a
//! protocol) and every source × target it decides what kube-proxy's rules lead to expect (by
//! [`crate::service::select`], the one endpoint choice of the crate, and the policy rules of
//! kube-proxy's `syncProxyRules`, docs/matrix.md), classifies what a cell observed (`.` `R`
//! `T` `?`), compares, counts, and builds the `MatrixRun`; and it lists the cells that changed
//! between two runs. It knows no CLI and no backend.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use regex::Regex;

use crate::record::{
    CellVerdict, EndpointState, Environment, MATRIX_KIND, MATRIX_VERSION, Mark, MatrixCell, MatrixParams, MatrixRun,
    MatrixScenario, MatrixSource, MatrixTarget, SourceKind, TargetInfo, TargetKind,
};
use crate::service::{Ep, ServiceOptions, ServiceShape, SessionAffinity, TrafficDistribution, TrafficPolicy, select};
use crate::storm::{BackendCount, Failures, PortRange, Proto, Stop};

/// A Service variant the matrix runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub name: &'static str,
    pub description: &'static str,
    pub options: ServiceOptions,
    pub endpoints: EndpointState,
}

/// Every variant, in the order they run.
pub fn variants() -> Vec<Variant> {
    let o = |etp, itp, affinity, td| ServiceOptions {
        external_traffic_policy: etp,
        internal_traffic_policy: itp,
        affinity,
        traffic_distribution: td,
        ..ServiceOptions::default()
    };
    use SessionAffinity::{ClientIp, None as NoAff};
    use TrafficPolicy::{Cluster, Local};
    let v = |name, description, options, endpoints| Variant {
        name,
        description,
        options,
        endpoints,
    };
    vec![
        v(
            "default",
            "every policy Cluster",
            o(Cluster, Cluster, NoAff, None),
            EndpointState::Ready,
        ),
        v(
            "etp-local",
            "externalTrafficPolicy Local",
            o(Local, Cluster, NoAff, None),
            EndpointState::Ready,
        ),
        v(
            "itp-local",
            "internalTrafficPolicy Local",
            o(Cluster, Local, NoAff, None),
            EndpointState::Ready,
        ),
        v(
            "both-local",
            "both traffic policies Local",
            o(Local, Local, NoAff, None),
            EndpointState::Ready,
        ),
        v(
            "affinity",
            "sessionAffinity ClientIP",
            o(Cluster, Cluster, ClientIp, None),
            EndpointState::Ready,
        ),
        v(
            "no-endpoints",
            "no endpoint ready or serving",
            o(Cluster, Cluster, NoAff, None),
            EndpointState::None,
        ),
        v(
            "terminating",
            "every endpoint terminating, still serving",
            o(Cluster, Cluster, NoAff, None),
            EndpointState::Terminating,
        ),
        v(
            "prefer-same-zone",
            "trafficDistribution PreferSameZone",
            o(Cluster, Cluster, NoAff, Some(TrafficDistribution::PreferSameZone)),
            EndpointState::Ready,
        ),
        v(
            "prefer-same-node",
            "trafficDistribution PreferSameNode",
            o(Cluster, Cluster, NoAff, Some(TrafficDistribution::PreferSameNode)),
            EndpointState::Ready,
        ),
    ]
}

/// The scenarios to run: every variant × protocol whose name `<variant>/<protocol>` matches
/// `test` (all without one).
pub fn scenarios(test: Option<&Regex>, protos: &[Proto]) -> Vec<(Variant, Proto)> {
    let mut out = Vec::new();
    for v in variants() {
        for &p in protos {
            if test.is_none_or(|r| r.is_match(&scenario_name(&v, p))) {
                out.push((v.clone(), p));
            }
        }
    }
    out
}

pub fn scenario_name(v: &Variant, proto: Proto) -> String {
    format!("{}/{proto}", v.name)
}

/// What kube-proxy works from once a scenario is applied: the Service, its endpoints (the
/// EndpointSlice's usable ones), every endpoint's node and zone, and the nodes the
/// LoadBalancer sends to.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub options: ServiceOptions,
    /// A NodePort or LoadBalancer Service (the cluster endpoints are kept for the short-circuit).
    pub externally_accessible: bool,
    pub eps: Vec<Ep>,
    /// Endpoint name → (node, zone).
    pub placement: BTreeMap<String, (String, String)>,
    pub zones: BTreeMap<String, String>,
    pub lb_hops: Vec<String>,
    /// A node's own connection to a LoadBalancer IP without endpoints is rejected: nftables
    /// mode rejects in `filter-output`; iptables mode's `KUBE-EXTERNAL-SERVICES` is jumped to
    /// from INPUT and FORWARD only (`iptablesJumpChains`), so it leaves the node undNATed.
    pub host_lb_rejected: bool,
    /// Whether a pod's packet to another node's IP arrives there from the pod CIDR (`false`:
    /// the lab, no masquerade) or from its node's IP (`true`: a CNI that masquerades it);
    /// `None`: not known (a cluster: it depends on the CNI).
    pub pod_to_node_masquerade: Option<bool>,
    /// The scenario Service's clusterIP (what its ExternalName alias must resolve to).
    pub cluster_ip: Option<IpAddr>,
    /// The ready endpoints of the run's headless Service (its DNS answer): pod → IP.
    pub headless: BTreeMap<String, IpAddr>,
}

/// A cell's expectation.
#[derive(Debug, Clone, PartialEq)]
pub struct Expect {
    pub mark: Mark,
    /// Endpoints that may answer (when `mark` is connected).
    pub allowed: BTreeSet<String>,
    /// Every connection of the source goes to one endpoint (ClientIP affinity).
    pub sticky: bool,
    /// The source itself must answer some connections (hairpin).
    pub hairpin: bool,
    /// Some connections may time out: a pod's connection short-circuited on another node is
    /// not masqueraded, so only replies of endpoints on that node come back through it.
    pub partial: bool,
    /// A DNS target: the addresses the name must resolve to at the source.
    pub resolves: Option<BTreeSet<IpAddr>>,
    pub why: String,
}

/// Which traffic reaches a node's rules: to the ClusterIP, or to a NodePort / LoadBalancer IP
/// from outside the cluster, or from the node itself or a pod (short-circuited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    ClusterIp,
    FromOutside,
    FromInside,
}

impl Cluster {
    fn zone(&self, node: &str) -> &str {
        self.zones.get(node).map_or("", String::as_str)
    }

    /// What the kube-proxy of `node` does with `reach` traffic: the endpoints, or `R` (no
    /// endpoint anywhere: rejected) / `T` (a Local policy and none on this node: dropped).
    fn on(&self, node: &str, reach: Reach) -> (Mark, BTreeSet<String>, String) {
        let shape = ServiceShape {
            options: &self.options,
            externally_accessible: self.externally_accessible,
        };
        let s = select(shape, &self.eps, node, self.zone(node));
        if !s.has_any {
            return (
                Mark::Refused,
                BTreeSet::new(),
                "no usable endpoint anywhere: kube-proxy rejects (ICMP port unreachable)".into(),
            );
        }
        let o = &self.options;
        let (local, why) = match reach {
            Reach::ClusterIp => (
                o.internal_traffic_policy == TrafficPolicy::Local,
                "internalTrafficPolicy Local",
            ),
            Reach::FromOutside => (
                o.external_traffic_policy == TrafficPolicy::Local,
                "externalTrafficPolicy Local from outside",
            ),
            Reach::FromInside => (false, ""),
        };
        let names = |idx: &[usize]| idx.iter().map(|&i| self.eps[i].name.clone()).collect::<BTreeSet<_>>();
        if local {
            return if s.local.is_empty() {
                (
                    Mark::Timeout,
                    BTreeSet::new(),
                    format!("{why}: no endpoint on {node}, dropped"),
                )
            } else {
                (
                    Mark::Connected,
                    names(&s.local),
                    format!("{why}: endpoints on {node} only"),
                )
            };
        }
        let mut why = s.reason;
        if reach == Reach::FromInside && o.external_traffic_policy == TrafficPolicy::Local {
            why = format!("from a pod or the node: short-circuited to the cluster endpoints; {why}");
        }
        (Mark::Connected, names(&s.cluster), why)
    }

    /// The expectation of `target` from `source` (kube-proxy's rules, docs/matrix.md).
    pub fn expect(&self, source: &MatrixSource, target: &MatrixTarget) -> Expect {
        let sticky = self.options.affinity == SessionAffinity::ClientIp;
        let na = |why: &str| Expect {
            mark: Mark::NotApplicable,
            allowed: BTreeSet::new(),
            sticky: false,
            hairpin: false,
            partial: false,
            resolves: None,
            why: why.into(),
        };
        let from_client = source.kind == SourceKind::Client;
        let mut resolves = None;
        let (mark, allowed, why) = match target.kind {
            TargetKind::Headless | TargetKind::ExternalName if from_client => {
                return na("cluster DNS names do not resolve outside the cluster");
            }
            // No kube-proxy on this path: cluster DNS answers with the ready endpoints' pod IPs
            // and every connection goes straight to one of them.
            TargetKind::Headless if self.headless.is_empty() => {
                return na("the headless Service has no ready endpoint: its name has no address");
            }
            TargetKind::Headless => {
                resolves = Some(self.headless.values().copied().collect());
                (
                    Mark::Connected,
                    self.headless.keys().cloned().collect(),
                    "headless: cluster DNS answers with the ready endpoints' pod IPs, reached directly".into(),
                )
            }
            TargetKind::ExternalName => {
                resolves = Some(self.cluster_ip.into_iter().collect());
                let (m, a, w) = self.on(&source.node, Reach::ClusterIp);
                (
                    m,
                    a,
                    format!("ExternalName: a CNAME of the Service's name, so its clusterIP; {w}"),
                )
            }
            TargetKind::PodIp if from_client => return na("pod IPs are not reachable from outside"),
            TargetKind::PodIp => (
                Mark::Connected,
                BTreeSet::from([target.pod.clone()]),
                "pod network: every node and pod reaches every pod".into(),
            ),
            TargetKind::ClusterIp if from_client => return na("the clusterIP is not reachable from outside"),
            TargetKind::ClusterIp => self.on(&source.node, Reach::ClusterIp),
            TargetKind::Hairpin if source.kind != SourceKind::Pod => return na("hairpin is from a pod"),
            TargetKind::Hairpin if !self.eps.iter().any(|e| e.name == source.name) => {
                return na("hairpin is from an endpoint of the Service, and this pod is not one");
            }
            TargetKind::Hairpin if sticky => {
                return na("with ClientIP affinity a pod sticks to one endpoint: hairpin is not provable");
            }
            TargetKind::Hairpin => self.on(&source.node, Reach::ClusterIp),
            // A pod's packet to a node IP is not intercepted by its own node unless it is that
            // node's: it arrives at the target node from the cluster CIDR (short-circuited); a
            // node's own NodePort is short-circuited too (source address local); another node's
            // packet comes from a node IP, outside the cluster CIDR: external.
            TargetKind::NodePort => {
                let reach = match source.kind {
                    SourceKind::Client => Reach::FromOutside,
                    SourceKind::Pod => Reach::FromInside,
                    SourceKind::Node if source.node == target.node => Reach::FromInside,
                    SourceKind::Node => Reach::FromOutside,
                };
                self.on(&target.node, reach)
            }
            TargetKind::LoadBalancer if from_client => {
                let mut out = (Mark::Timeout, BTreeSet::new(), String::new());
                for hop in &self.lb_hops {
                    let (m, a, w) = self.on(hop, Reach::FromOutside);
                    if m == Mark::Connected || out.0 == Mark::Timeout {
                        out.0 = m;
                        out.2 = format!("via {hop}: {w}");
                    }
                    out.1.extend(a);
                }
                out
            }
            // Every node has the LB IP in its rules: the source's own node short-circuits it.
            TargetKind::LoadBalancer => match self.on(&source.node, Reach::FromInside) {
                (Mark::Refused, a, _) if source.kind == SourceKind::Node && !self.host_lb_rejected => (
                    Mark::Timeout,
                    a,
                    "no endpoint, and iptables mode rejects LoadBalancer IPs only in INPUT and FORWARD \
                     (KUBE-EXTERNAL-SERVICES): the node's own connection leaves undNATed"
                        .into(),
                ),
                other => other,
            },
        };
        let hairpin = target.kind == TargetKind::Hairpin && mark == Mark::Connected;
        // kube-proxy's external chain sends pod traffic to the cluster chain without marking it
        // for masquerade (`pod traffic for ... external destinations`); a pod on another node
        // then gets replies straight from endpoints that are not on the target node.
        let partial = mark == Mark::Connected
            && target.kind == TargetKind::NodePort
            && source.kind == SourceKind::Pod
            && source.node != target.node
            && self.options.external_traffic_policy == TrafficPolicy::Local;
        let why = match (partial, self.pod_to_node_masquerade) {
            (false, _) => why,
            (true, Some(false)) => format!(
                "a pod's traffic to another node's NodePort is short-circuited there without masquerade: \
                 replies of endpoints not on {} bypass its conntrack and time out; {why}",
                target.node
            ),
            (true, _) => format!(
                "a pod's traffic to another node's NodePort: short-circuited there when it arrives from \
                 the pod CIDR (replies of endpoints not on {0} bypass its conntrack and time out), or \
                 external when the CNI masquerades it (only {0}'s endpoints, none: dropped); \
                 only a refusal is wrong; {why}",
                target.node
            ),
        };
        let direct = matches!(target.kind, TargetKind::PodIp | TargetKind::Headless);
        Expect {
            partial,
            resolves,
            mark,
            sticky: sticky && mark == Mark::Connected && !direct,
            hairpin,
            why: if hairpin {
                format!("the pod must reach itself through the Service; {why}")
            } else {
                why
            },
            allowed,
        }
    }
}

/// A node's ICMP budget towards one peer, in messages: `net.ipv4.icmp_ratelimit` (1 s per
/// error) times the kernel's burst factor (`XRLIM_BURST_FACTOR`, 6), refilled one per second.
pub const ICMP_BURST: f64 = 6.0;

impl Cluster {
    /// The node whose rules reject `source`'s connection to `target` when the Service has no
    /// endpoint, and so send the ICMP error; None when the error goes to the node itself
    /// (loopback: no rate limit) or the target is never rejected.
    fn rejecting_nodes(&self, source: &MatrixSource, target: &MatrixTarget) -> Vec<String> {
        use TargetKind::{ClusterIp, ExternalName, Hairpin, LoadBalancer};
        match (target.kind, source.kind) {
            (TargetKind::PodIp | TargetKind::Headless, _) => Vec::new(),
            (ClusterIp | ExternalName | Hairpin | LoadBalancer, SourceKind::Pod) => vec![source.node.clone()],
            (ClusterIp | ExternalName | Hairpin | LoadBalancer, SourceKind::Node) => Vec::new(),
            (ClusterIp | ExternalName | Hairpin | LoadBalancer, SourceKind::Client) => self.lb_hops.clone(),
            (TargetKind::NodePort, SourceKind::Node) if source.node == target.node => Vec::new(),
            (TargetKind::NodePort, _) => vec![target.node.clone()],
        }
    }

    /// The most ICMP errors one node owes one source in a round that probes `cells` (each
    /// expected refusal is one connection): what the round needs of a node's per-peer budget.
    pub fn icmp_need<'a>(
        &self,
        cells: impl IntoIterator<Item = (&'a MatrixSource, &'a MatrixTarget, &'a Expect)>,
    ) -> u32 {
        let mut per: BTreeMap<(String, String), u32> = BTreeMap::new();
        for (s, t, e) in cells {
            if e.mark != Mark::Refused {
                continue;
            }
            for node in self.rejecting_nodes(s, t) {
                *per.entry((node, s.name.clone())).or_default() += 1;
            }
        }
        per.into_values().max().unwrap_or(0)
    }
}

/// What is left of the nodes' per-peer ICMP budget, as far as this run spent it: a round of
/// expected refusals first waits until the budget covers it, else the errors that do not fit
/// arrive as timeouts. Assumes a full budget at the start (no refusals in the 6 s before).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IcmpBudget {
    /// Messages left right after the last spending, and when that was.
    left: f64,
    at: Option<std::time::Instant>,
}

impl Default for IcmpBudget {
    fn default() -> Self {
        IcmpBudget {
            left: ICMP_BURST,
            at: None,
        }
    }
}

impl IcmpBudget {
    fn now_left(&self, now: std::time::Instant) -> f64 {
        match self.at {
            None => self.left,
            Some(at) => (self.left + now.saturating_duration_since(at).as_secs_f64()).min(ICMP_BURST),
        }
    }

    /// How long to wait at `now` before a round that needs `need` messages (half a second
    /// spare); a need above the burst waits for a full one.
    pub fn wait(&self, now: std::time::Instant, need: u32) -> std::time::Duration {
        let need = f64::from(need).min(ICMP_BURST);
        let short = need - self.now_left(now);
        if need == 0.0 || short <= 0.0 {
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_secs_f64(short + 0.5)
    }

    /// A round that needed `need` messages ended at `now`. Its errors went out at some point
    /// while it ran (its agents may take a while to start on a loaded machine); counting them
    /// at the end never overstates what is left.
    pub fn spend(&mut self, now: std::time::Instant, need: u32) {
        if need == 0 {
            return;
        }
        self.left = (self.now_left(now) - f64::from(need)).max(0.0);
        self.at = Some(now);
    }
}

/// Where a source's next UDP probes take their source ports: in order through Linux's default
/// ephemeral range from a random start, so no probe of a run reuses the 5-tuple of an earlier
/// one. kube-proxy clears UDP conntrack entries only when endpoints go away, not when a policy
/// changes; a reused tuple would follow the previous scenario's DNAT for the entry's 30 s
/// (`nf_conntrack_udp_timeout`) and answer from an endpoint this scenario does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortCursor {
    next: u16,
}

impl PortCursor {
    pub const FIRST: u16 = 32768;
    /// One past the last port (`net.ipv4.ip_local_port_range` = 32768 60999).
    pub const END: u16 = 61000;

    /// Starts at `seed`'s place in the range.
    pub fn new(seed: u32) -> Self {
        let span = u32::from(Self::END - Self::FIRST);
        PortCursor {
            next: Self::FIRST + u16::try_from(seed % span).unwrap_or(0),
        }
    }

    /// `n` consecutive ports for one storm (fewer when `n` exceeds the range: the storm then
    /// reuses its own ports in order).
    pub fn take(&mut self, n: u64) -> PortRange {
        let span = u64::from(Self::END - Self::FIRST);
        let count = n.clamp(1, span);
        if u64::from(self.next) + count > u64::from(Self::END) {
            self.next = Self::FIRST;
        }
        let range = PortRange {
            first: self.next,
            count: u16::try_from(count).unwrap_or(u16::MAX),
        };
        let after = u64::from(self.next) + count;
        self.next = if after >= u64::from(Self::END) {
            Self::FIRST
        } else {
            u16::try_from(after).unwrap_or(Self::FIRST)
        };
        range
    }
}

/// What one round of a cell measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub attempted: u64,
    pub ok: u64,
    pub failures: Failures,
    pub backends: Vec<BackendCount>,
    /// A DNS target: what the name resolved to at the source, or why it did not.
    pub resolved: Option<Vec<IpAddr>>,
    pub resolve_error: Option<String>,
}

/// `.` every connection answered, `R` every one refused, `T` every one timed out, else `?`.
pub fn classify(o: &Observed) -> Mark {
    match o {
        o if o.attempted == 0 => Mark::Inconclusive,
        o if o.ok == o.attempted => Mark::Connected,
        o if o.failures.refused == o.attempted => Mark::Refused,
        o if o.failures.timeout == o.attempted => Mark::Timeout,
        _ => Mark::Inconclusive,
    }
}

/// The cell of `source` × `target` after `rounds` rounds, the last of which observed `o`.
pub fn judge(
    c: &Cluster,
    source: &MatrixSource,
    target: &MatrixTarget,
    e: &Expect,
    o: &Observed,
    rounds: u32,
) -> MatrixCell {
    let observed = if e.mark == Mark::NotApplicable {
        Mark::NotApplicable
    } else {
        classify(o)
    };
    let placed = |b: &BackendCount| -> (String, String) {
        c.placement
            .get(&b.name)
            .cloned()
            .unwrap_or_else(|| (b.node.clone(), b.zone.clone()))
    };
    let answered: Vec<&BackendCount> = o.backends.iter().filter(|b| b.count > 0).collect();
    let strays: u64 = if e.mark == Mark::Connected {
        answered
            .iter()
            .filter(|b| !e.allowed.contains(&b.name))
            .map(|b| b.count)
            .sum()
    } else {
        0
    };
    let self_answered = e
        .hairpin
        .then(|| answered.iter().filter(|b| b.name == source.name).map(|b| b.count).sum());
    let list = |s: &mut dyn Iterator<Item = &IpAddr>| s.map(ToString::to_string).collect::<Vec<_>>().join(", ");
    // A DNS target must first resolve to what the cluster's DNS publishes.
    let dns_wrong = match (&e.resolves, &o.resolve_error, &o.resolved) {
        (Some(_), Some(err), _) if e.mark != Mark::NotApplicable => Some(format!(
            "the name did not resolve at the source ({err}); expected: {}",
            e.why
        )),
        (Some(want), None, Some(got)) if got.iter().copied().collect::<BTreeSet<_>>() != *want => Some(format!(
            "resolved to [{}], expected [{}]{}; {}",
            list(&mut got.iter()),
            list(&mut want.iter()),
            if target.kind == TargetKind::ExternalName {
                " (a DNS cache may hold the answer of an earlier run's Service: CoreDNS keeps them for \
                 their TTL, 30 s with kubeadm's Corefile)"
            } else {
                ""
            },
            e.why
        )),
        _ => None,
    };
    let (verdict, why) = match (e.mark, observed) {
        (Mark::NotApplicable, _) => (CellVerdict::Skipped, e.why.clone()),
        _ if dns_wrong.is_some() => (CellVerdict::Incorrect, dns_wrong.unwrap_or_default()),
        (_, Mark::Refused) if e.partial => (CellVerdict::Incorrect, format!("refused; expected: {}", e.why)),
        _ if e.partial => (CellVerdict::Correct, e.why.clone()),
        (Mark::Connected, Mark::Connected) if strays > 0 => {
            let who: Vec<&str> = answered
                .iter()
                .filter(|b| !e.allowed.contains(&b.name))
                .map(|b| b.name.as_str())
                .collect();
            (
                CellVerdict::Incorrect,
                format!(
                    "{strays} answered by endpoints kube-proxy would not pick ({}); {}",
                    who.join(", "),
                    e.why
                ),
            )
        }
        (Mark::Connected, Mark::Connected) if e.sticky && answered.len() > 1 => (
            CellVerdict::Incorrect,
            format!("ClientIP affinity, yet {} endpoints answered", answered.len()),
        ),
        (Mark::Connected, Mark::Connected) if self_answered == Some(0) => (
            CellVerdict::Inconclusive,
            format!("connected, but the pod never drew itself; {}", e.why),
        ),
        (exp, obs) if exp == obs => (CellVerdict::Correct, e.why.clone()),
        (_, Mark::Inconclusive) => (CellVerdict::Inconclusive, format!("mixed results; expected: {}", e.why)),
        (exp, obs) => (
            CellVerdict::Incorrect,
            format!("expected {} ({}), observed {}", exp.symbol(), e.why, obs.symbol()),
        ),
    };
    let set = |f: &dyn Fn(&(String, String)) -> String| -> Vec<String> {
        let s: BTreeSet<String> = answered
            .iter()
            .map(|b| f(&placed(b)))
            .filter(|s| !s.is_empty())
            .collect();
        s.into_iter().collect()
    };
    let allowed_nodes: BTreeSet<String> = e
        .allowed
        .iter()
        .filter_map(|n| {
            c.placement
                .get(n)
                .map(|p| p.0.clone())
                .or_else(|| Some(target.node.clone()))
        })
        .filter(|n| !n.is_empty())
        .collect();
    MatrixCell {
        source: source.name.clone(),
        target: target.name.clone(),
        expected: e.mark,
        observed,
        verdict,
        attempts: o.attempted,
        ok: o.ok,
        failures: o.failures,
        rounds,
        allowed_nodes: allowed_nodes.into_iter().collect(),
        answered: answered.len(),
        answered_nodes: set(&|p| p.0.clone()),
        answered_zones: set(&|p| p.1.clone()),
        strays,
        self_answered,
        resolved: o.resolved.clone().unwrap_or_default(),
        why,
    }
}

/// Measure the cell (again): not measured yet, or inconclusive where a connection was
/// expected (expected failures are never retried).
pub fn needs_round(e: &Expect, cell: Option<&MatrixCell>, rounds: u32, attempts: u32) -> bool {
    if e.mark == Mark::NotApplicable || rounds >= attempts {
        return false;
    }
    match cell {
        None => true,
        Some(c) => c.verdict == CellVerdict::Inconclusive && e.mark == Mark::Connected && !e.partial,
    }
}

/// A scenario's record: its cells counted.
pub fn scenario(
    v: &Variant,
    proto: Proto,
    targets: Vec<MatrixTarget>,
    cells: Vec<MatrixCell>,
    duration_s: f64,
) -> MatrixScenario {
    let count = |want: CellVerdict| cells.iter().filter(|c| c.verdict == want).count() as u64;
    MatrixScenario {
        name: scenario_name(v, proto),
        description: v.description.into(),
        proto,
        options: v.options.clone(),
        endpoints: v.endpoints,
        correct: count(CellVerdict::Correct),
        incorrect: count(CellVerdict::Incorrect),
        inconclusive: count(CellVerdict::Inconclusive),
        targets,
        cells,
        duration_s,
        skipped: None,
    }
}

/// A scenario that was not run, and why.
pub fn skipped(v: &Variant, proto: Proto, why: String) -> MatrixScenario {
    MatrixScenario {
        skipped: Some(why),
        ..scenario(v, proto, Vec::new(), Vec::new(), 0.0)
    }
}

/// Why a variant cannot be made on a cluster as it is on the lab, if it cannot. Endpoints are
/// terminating only while their pods shut down: the run would have to delete the servers.
pub fn cluster_skip(v: &Variant) -> Option<String> {
    (v.endpoints == EndpointState::Terminating).then(|| {
        "not made on a cluster: endpoints are terminating only while their pods shut down, and the run \
         does not delete the test servers (the lab sets the condition; see docs/matrix.md)"
            .to_string()
    })
}

/// A node of the cluster and where its pod row comes from: a ready server pod on it (an endpoint,
/// so hairpin can be measured), else a client pod the run puts there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub node: String,
    pub zone: String,
    /// The ready server pod on the node (the first by name), if any.
    pub server: Option<String>,
}

/// The nodes that get rows: every Ready node, by name; with the first ready server pod on each
/// (`nodes`: name, zone, Ready; `servers`: pod, node, ready).
pub fn node_rows(nodes: &[(String, String, bool)], servers: &[(String, String, bool)]) -> Vec<NodeRow> {
    let mut rows: Vec<NodeRow> = nodes
        .iter()
        .filter(|n| n.2)
        .map(|(node, zone, _)| {
            let mut on: Vec<&String> = servers.iter().filter(|s| s.2 && s.1 == *node).map(|s| &s.0).collect();
            on.sort_by(|a, b| alphanumeric_sort::compare_str(a, b));
            NodeRow {
                node: node.clone(),
                zone: zone.clone(),
                server: on.first().map(|s| (*s).clone()),
            }
        })
        .collect();
    rows.sort_by(|a, b| alphanumeric_sort::compare_str(&a.node, &b.node));
    rows
}

/// What a scenario Service's EndpointSlices still lack before kube-proxy's view is the one the
/// run expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlicesLack {
    /// The ready endpoints are not the ready server pods (yet): which differ.
    Endpoints(String),
    /// The endpoints are right, the trafficDistribution hints not there (yet): on which.
    Hints(String),
}

impl std::fmt::Display for SlicesLack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlicesLack::Endpoints(s) | SlicesLack::Hints(s) => f.write_str(s),
        }
    }
}

/// What a scenario Service's EndpointSlices still lack (`None`: nothing): every ready server pod
/// (`want`) listed ready and nothing else ready; and with `trafficDistribution` the hints the
/// EndpointSlice controller adds (a zone hint on every ready endpoint whose node has a zone;
/// with PreferSameNode also a node hint). `zone_of` gives a node's zone.
pub fn slices_lack(
    want: &BTreeSet<String>,
    eps: &[Ep],
    td: Option<TrafficDistribution>,
    zone_of: &dyn Fn(&str) -> String,
) -> Option<SlicesLack> {
    let ready: BTreeSet<String> = eps.iter().filter(|e| e.ready).map(|e| e.name.clone()).collect();
    if ready != *want {
        let join = |s: std::collections::btree_set::Difference<'_, String>| {
            s.map(String::as_str).collect::<Vec<_>>().join(", ")
        };
        let mut parts = Vec::new();
        let missing = join(want.difference(&ready));
        if !missing.is_empty() {
            parts.push(format!("not listed ready: {missing}"));
        }
        let extra = join(ready.difference(want));
        if !extra.is_empty() {
            parts.push(format!("listed ready but not expected: {extra}"));
        }
        return Some(SlicesLack::Endpoints(parts.join("; ")));
    }
    let td = td?;
    let unhinted: Vec<&str> = eps
        .iter()
        .filter(|e| e.ready)
        .filter(|e| {
            (e.zone_hints.is_empty() && !zone_of(&e.node).is_empty()) || (td.hints_nodes() && e.node_hints.is_empty())
        })
        .map(|e| e.name.as_str())
        .collect();
    (!unhinted.is_empty()).then(|| SlicesLack::Hints(format!("no {td} hint yet on {}", unhinted.join(", "))))
}

/// What a run measured, for its record.
pub struct Measured {
    pub tag: String,
    pub started_at: jiff::Timestamp,
    pub duration_s: f64,
    pub target: TargetInfo,
    pub params: MatrixParams,
    pub sources: Vec<MatrixSource>,
    pub scenarios: Vec<MatrixScenario>,
    pub stopped: Option<Stop>,
    pub notes: Vec<String>,
    pub environment: Environment,
}

pub fn build(m: Measured) -> MatrixRun {
    let sum = |f: &dyn Fn(&MatrixScenario) -> u64| m.scenarios.iter().map(f).sum::<u64>();
    MatrixRun {
        kind: MATRIX_KIND.into(),
        version: MATRIX_VERSION,
        tag: m.tag,
        started_at: m.started_at,
        duration_s: m.duration_s,
        target: m.target,
        params: m.params,
        correct: sum(&|s| s.correct),
        incorrect: sum(&|s| s.incorrect),
        inconclusive: sum(&|s| s.inconclusive),
        sources: m.sources,
        scenarios: m.scenarios,
        stopped: m.stopped,
        notes: m.notes,
        environment: m.environment,
    }
}

/// A cell whose observation differs between two runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellChange {
    pub scenario: String,
    pub source: String,
    pub target: String,
    /// `None`: the cell is not in that run.
    pub before: Option<Mark>,
    pub after: Option<Mark>,
    pub verdict_before: Option<CellVerdict>,
    pub verdict_after: Option<CellVerdict>,
}

/// The cells of `a` and `b` (same scenario, source and target) whose observed mark or verdict
/// differs, and those only one of them has; in `a`'s order, then `b`'s new ones.
pub fn changes(a: &MatrixRun, b: &MatrixRun) -> Vec<CellChange> {
    let index = |r: &MatrixRun| -> BTreeMap<(String, String, String), (Mark, CellVerdict)> {
        r.scenarios
            .iter()
            .flat_map(|s| {
                s.cells.iter().filter(|c| c.verdict != CellVerdict::Skipped).map(|c| {
                    (
                        (s.name.clone(), c.source.clone(), c.target.clone()),
                        (c.observed, c.verdict),
                    )
                })
            })
            .collect()
    };
    let (ia, ib) = (index(a), index(b));
    let keys: Vec<&(String, String, String)> = a
        .scenarios
        .iter()
        .flat_map(|s| s.cells.iter().map(move |c| (s, c)))
        .filter_map(|(s, c)| {
            ia.get_key_value(&(s.name.clone(), c.source.clone(), c.target.clone()))
                .map(|(k, _)| k)
        })
        .chain(ib.keys().filter(|k| !ia.contains_key(*k)))
        .collect();
    keys.into_iter()
        .filter_map(|k| {
            let (x, y) = (ia.get(k), ib.get(k));
            (x != y).then(|| CellChange {
                scenario: k.0.clone(),
                source: k.1.clone(),
                target: k.2.clone(),
                before: x.map(|v| v.0),
                after: y.map(|v| v.0),
                verdict_before: x.map(|v| v.1),
                verdict_after: y.map(|v| v.1),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
