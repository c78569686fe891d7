//! One Service model for the lab, the cluster and the records: the spec fields that change how
//! kube-proxy balances (session affinity, traffic policies, trafficDistribution), and kube-proxy's
//! choice of endpoints on one node, written once.
//!
//! [`select`] follows `CategorizeEndpoints` and `topologyModeFromHints` of kube-proxy's
//! `pkg/proxy/topology.go` (v1.34), and `UsesClusterEndpoints`/`UsesLocalEndpoints` of
//! `pkg/proxy/serviceport.go`: ready endpoints, falling back to serving-terminating ones
//! (separately for the Cluster and the Local set); node hints first (PreferSameNode, when every
//! ready endpoint has one and one names this node), then zone hints (when every ready endpoint has
//! one and one names this node's zone); kube-proxy reads the hints, not `trafficDistribution`.
//! The lab's rule writer, the cluster backend's expectations and the explanations of `zones` all
//! use it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IP family: a Service's `spec.ipFamilies` entry, the family of a run's target address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    #[default]
    Ipv4,
    Ipv6,
}

impl IpFamily {
    pub fn of(ip: &std::net::IpAddr) -> IpFamily {
        if ip.is_ipv4() { IpFamily::Ipv4 } else { IpFamily::Ipv6 }
    }

    /// As `spec.ipFamilies` writes it.
    pub fn kube(self) -> &'static str {
        match self {
            IpFamily::Ipv4 => "IPv4",
            IpFamily::Ipv6 => "IPv6",
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::Ipv4 => "ipv4",
            IpFamily::Ipv6 => "ipv6",
        })
    }
}

/// `spec.ipFamilyPolicy`: how many families a Service gets (the cluster's default when unset).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpFamilyPolicy {
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

/// `spec.sessionAffinity`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionAffinity {
    #[default]
    None,
    #[serde(rename = "ClientIP")]
    ClientIp,
}

/// `spec.externalTrafficPolicy` / `spec.internalTrafficPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// `spec.trafficDistribution`. `PreferClose` is the older name of `PreferSameZone`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrafficDistribution {
    PreferClose,
    PreferSameZone,
    PreferSameNode,
}

/// The hints the EndpointSlice controller gives an endpoint for a `trafficDistribution`: its zone,
/// and for PreferSameNode also its node (`hints.forZones`, `hints.forNodes`).
impl TrafficDistribution {
    pub fn hints_nodes(self) -> bool {
        self == TrafficDistribution::PreferSameNode
    }
}

/// `spec.type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceType {
    ClusterIP,
    #[default]
    NodePort,
    LoadBalancer,
}

/// The Service's spec fields that change how kube-proxy writes its rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceOptions {
    pub affinity: SessionAffinity,
    /// `sessionAffinityConfig.clientIP.timeoutSeconds`.
    pub affinity_timeout: u32,
    pub external_traffic_policy: TrafficPolicy,
    pub internal_traffic_policy: TrafficPolicy,
    pub traffic_distribution: Option<TrafficDistribution>,
    /// `spec.loadBalancerSourceRanges`: client CIDRs allowed to reach the LoadBalancer IP (all
    /// when empty). kube-proxy filters only the LoadBalancer IPs by it, never NodePorts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ranges: Vec<ipnet::IpNet>,
}

/// Kubernetes' default `timeoutSeconds` for ClientIP affinity (3 hours), and its maximum (1 day).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            affinity: SessionAffinity::None,
            affinity_timeout: DEFAULT_AFFINITY_TIMEOUT,
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            traffic_distribution: None,
            source_ranges: Vec::new(),
        }
    }
}

/// An enum of the Kubernetes API: its values as the API spells them; parsed in any case.
pub trait KubeEnum: FromStr<Err = String> + fmt::Display {
    const NAMES: &'static [&'static str];
}

macro_rules! kube_enum {
    ($t:ty { $($v:ident => $s:literal),+ $(,)? }) => {
        impl KubeEnum for $t {
            const NAMES: &'static [&'static str] = &[$($s),+];
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $(<$t>::$v => $s),+ })
            }
        }
        /// As the API spells it, in any case.
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $(if s.eq_ignore_ascii_case($s) { return Ok(<$t>::$v); })+
                Err(format!("{s:?}: use one of {}", Self::NAMES.join(", ")))
            }
        }
    };
}

kube_enum!(SessionAffinity { None => "None", ClientIp => "ClientIP" });
kube_enum!(TrafficPolicy { Cluster => "Cluster", Local => "Local" });
kube_enum!(TrafficDistribution {
    PreferClose => "PreferClose",
    PreferSameZone => "PreferSameZone",
    PreferSameNode => "PreferSameNode",
});
kube_enum!(IpFamilyPolicy {
    SingleStack => "SingleStack",
    PreferDualStack => "PreferDualStack",
    RequireDualStack => "RequireDualStack",
});
kube_enum!(ServiceType { ClusterIP => "ClusterIP", NodePort => "NodePort", LoadBalancer => "LoadBalancer" });

/// One endpoint as kube-proxy sees it in an EndpointSlice.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ep {
    pub name: String,
    /// `nodeName`: local to the node being programmed when equal to it.
    pub node: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub zone_hints: Vec<String>,
    pub node_hints: Vec<String>,
}

impl Ep {
    /// A ready endpoint without hints.
    pub fn ready(name: &str, node: &str) -> Ep {
        Ep {
            name: name.into(),
            node: node.into(),
            ready: true,
            serving: true,
            ..Ep::default()
        }
    }

    fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
}

/// Which hints a node's kube-proxy follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Topology {
    /// Every ready endpoint is used.
    None,
    PreferSameZone,
    PreferSameNode,
}

/// A node's choice of endpoints for one Service (indices into the endpoints given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// For Cluster traffic policies, after topology; empty when no policy is Cluster and the
    /// Service is not reachable from outside.
    pub cluster: Vec<usize>,
    /// For Local traffic policies: this node's endpoints; empty when no policy is Local.
    pub local: Vec<usize>,
    pub topology: Topology,
    /// Why topology was or was not used, in kube-proxy's words.
    pub reason: String,
    /// Some endpoint is usable somewhere in the cluster (traffic with none is rejected).
    pub has_any: bool,
}

/// What the Service is, as far as the choice of endpoints goes.
#[derive(Clone, Copy, Debug)]
pub struct ServiceShape<'a> {
    pub options: &'a ServiceOptions,
    /// A NodePort, LoadBalancer IP or external IP makes the Service reachable from outside.
    pub externally_accessible: bool,
}

impl ServiceShape<'_> {
    /// `UsesClusterEndpoints`: internal policy Cluster, or reachable from outside (even with
    /// externalTrafficPolicy Local, cluster endpoints serve the pod and host short-circuit).
    pub fn uses_cluster(&self) -> bool {
        self.options.internal_traffic_policy == TrafficPolicy::Cluster || self.externally_accessible
    }

    /// `UsesLocalEndpoints`.
    pub fn uses_local(&self) -> bool {
        self.options.internal_traffic_policy == TrafficPolicy::Local
            || (self.options.external_traffic_policy == TrafficPolicy::Local && self.externally_accessible)
    }
}

/// `topologyModeFromHints` for `node` in `zone` (empty: the node has no zone label).
fn topology(eps: &[Ep], node: &str, zone: &str) -> (Topology, String) {
    let ready: Vec<&Ep> = eps.iter().filter(|e| e.ready).collect();
    if ready.is_empty() {
        return (Topology::None, "no ready endpoint: no hints to consider".into());
    }
    let all_node_hints = ready.iter().all(|e| !e.node_hints.is_empty());
    let all_zone_hints = ready.iter().all(|e| !e.zone_hints.is_empty());
    let mut why = Vec::new();
    if all_node_hints {
        if ready.iter().any(|e| e.node_hints.iter().any(|h| h == node)) {
            return (Topology::PreferSameNode, format!("endpoints hinted for node {node}"));
        }
        why.push(format!("no endpoint hinted for node {node}"));
    }
    if all_zone_hints {
        if ready.iter().any(|e| e.zone_hints.iter().any(|h| h == zone)) {
            return (Topology::PreferSameZone, format!("endpoints hinted for zone {zone}"));
        }
        why.push(if zone.is_empty() {
            format!("node {node} has no topology.kubernetes.io/zone label")
        } else {
            format!("no endpoint hinted for zone {zone}")
        });
    } else if let Some(e) = ready.iter().find(|e| e.zone_hints.is_empty()) {
        why.push(format!("endpoint {} has no zone hint", e.name));
    }
    (Topology::None, format!("using all endpoints: {}", why.join("; ")))
}

fn available(e: &Ep, t: Topology, node: &str, zone: &str) -> bool {
    match t {
        Topology::None => true,
        Topology::PreferSameNode => e.node_hints.iter().any(|h| h == node),
        Topology::PreferSameZone => e.zone_hints.iter().any(|h| h == zone),
    }
}

/// `CategorizeEndpoints` for the kube-proxy of `node` in `zone`.
pub fn select(svc: ServiceShape<'_>, eps: &[Ep], node: &str, zone: &str) -> Selection {
    let idx = |f: &dyn Fn(&Ep) -> bool| -> Vec<usize> { (0..eps.len()).filter(|&i| f(&eps[i])).collect() };
    let mut s = Selection {
        cluster: Vec::new(),
        local: Vec::new(),
        topology: Topology::None,
        reason: String::new(),
        has_any: false,
    };
    if eps.is_empty() {
        s.reason = "no endpoints".into();
        return s;
    }
    if svc.uses_cluster() {
        let (t, reason) = topology(eps, node, zone);
        s.topology = t;
        s.reason = reason;
        s.cluster = idx(&|e| e.ready && available(e, t, node, zone));
        if s.cluster.is_empty() {
            // No ready endpoint anywhere (topology was already dropped if none was ready for it).
            s.cluster = idx(&|e| e.serving_terminating());
        }
        s.has_any = !s.cluster.is_empty();
    }
    if svc.uses_local() {
        s.has_any |= eps.iter().any(|e| e.ready || e.serving_terminating());
        let local_ready = idx(&|e| e.node == node && e.ready);
        s.local = if local_ready.is_empty() {
            idx(&|e| e.node == node && e.serving_terminating())
        } else {
            local_ready
        };
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(itp: TrafficPolicy, etp: TrafficPolicy) -> ServiceOptions {
        ServiceOptions {
            internal_traffic_policy: itp,
            external_traffic_policy: etp,
            ..ServiceOptions::default()
        }
    }

    fn hinted(name: &str, node: &str, zone: &str, with_node: bool) -> Ep {
        Ep {
            zone_hints: vec![zone.into()],
            node_hints: if with_node { vec![node.into()] } else { vec![] },
            ..Ep::ready(name, node)
        }
    }

    fn names(eps: &[Ep], i: &[usize]) -> Vec<String> {
        i.iter().map(|&i| eps[i].name.clone()).collect()
    }

    #[test]
    fn zone_hints_narrow_only_when_every_ready_endpoint_has_one() {
        let o = ServiceOptions::default();
        let svc = ServiceShape {
            options: &o,
            externally_accessible: false,
        };
        let mut eps = vec![
            hinted("a1", "n1", "a", false),
            hinted("b1", "n2", "b", false),
            hinted("a2", "n3", "a", false),
        ];
        let s = select(svc, &eps, "n1", "a");
        assert_eq!(
            (s.topology, names(&eps, &s.cluster)),
            (Topology::PreferSameZone, names(&eps, &[0, 2]))
        );
        // A zone nobody is hinted for: all endpoints.
        let s = select(svc, &eps, "n9", "c");
        assert_eq!(s.cluster, [0, 1, 2]);
        assert_eq!(s.reason, "using all endpoints: no endpoint hinted for zone c");
        assert_eq!(
            select(svc, &eps, "n9", "").reason,
            "using all endpoints: node n9 has no topology.kubernetes.io/zone label"
        );
        // One endpoint without a hint: all endpoints, and which one says why.
        eps[1].zone_hints.clear();
        let s = select(svc, &eps, "n1", "a");
        assert_eq!((s.topology, s.cluster.len()), (Topology::None, 3));
        assert_eq!(s.reason, "using all endpoints: endpoint b1 has no zone hint");
        // A not-ready endpoint without hints does not count.
        eps[1].ready = false;
        assert_eq!(select(svc, &eps, "n1", "a").cluster, [0, 2]);
    }

    #[test]
    fn node_hints_come_before_zone_hints() {
        let o = ServiceOptions::default();
        let svc = ServiceShape {
            options: &o,
            externally_accessible: true,
        };
        let eps = vec![
            hinted("a1", "n1", "a", true),
            hinted("a2", "n2", "a", true),
            hinted("b1", "n3", "b", true),
        ];
        let s = select(svc, &eps, "n2", "a");
        assert_eq!((s.topology, s.cluster.clone()), (Topology::PreferSameNode, vec![1]));
        // A node without an endpoint of its own: its zone's.
        let s = select(svc, &eps, "n4", "a");
        assert_eq!((s.topology, s.cluster.clone()), (Topology::PreferSameZone, vec![0, 1]));
        assert_eq!(s.reason, "endpoints hinted for zone a");
    }

    #[test]
    fn terminating_endpoints_serve_only_when_nothing_is_ready() {
        let o = opts(TrafficPolicy::Cluster, TrafficPolicy::Local);
        let svc = ServiceShape {
            options: &o,
            externally_accessible: true,
        };
        let term = |name: &str, node: &str| Ep {
            ready: false,
            terminating: true,
            ..Ep::ready(name, node)
        };
        let eps = vec![term("t1", "n1"), Ep::ready("r2", "n2")];
        let s = select(svc, &eps, "n1", "");
        // Cluster: the ready one; Local on n1: its terminating one (no local ready endpoint).
        assert_eq!(
            (s.cluster.clone(), s.local.clone(), s.has_any),
            (vec![1], vec![0], true)
        );
        let s = select(svc, &eps[..1], "n2", "");
        assert_eq!((s.cluster.clone(), s.local.len(), s.has_any), (vec![0], 0, true));
        // Not serving any more: nothing.
        let gone = Ep {
            serving: false,
            ..term("t1", "n1")
        };
        let s = select(svc, &[gone], "n1", "");
        assert!(s.cluster.is_empty() && s.local.is_empty() && !s.has_any);
    }

    #[test]
    fn which_sets_a_service_uses() {
        let local_both = opts(TrafficPolicy::Local, TrafficPolicy::Local);
        let eps = vec![Ep::ready("p1", "n1"), Ep::ready("p2", "n2")];
        // Reachable from outside: the cluster set is kept for the pod/host short-circuit.
        let s = select(
            ServiceShape {
                options: &local_both,
                externally_accessible: true,
            },
            &eps,
            "n1",
            "",
        );
        assert_eq!((s.cluster.clone(), s.local.clone()), (vec![0, 1], vec![0]));
        // ClusterIP only, iTP Local: no cluster set at all.
        let s = select(
            ServiceShape {
                options: &local_both,
                externally_accessible: false,
            },
            &eps,
            "n1",
            "",
        );
        assert_eq!((s.cluster.len(), s.local.clone()), (0, vec![0]));
        let plain = ServiceOptions::default();
        let s = select(
            ServiceShape {
                options: &plain,
                externally_accessible: true,
            },
            &eps,
            "n1",
            "",
        );
        assert_eq!((s.cluster.len(), s.local.len()), (2, 0));
    }

    #[test]
    fn names_parse_in_any_case_and_print_as_the_api_does() {
        assert_eq!("clientip".parse::<SessionAffinity>(), Ok(SessionAffinity::ClientIp));
        assert_eq!(SessionAffinity::ClientIp.to_string(), "ClientIP");
        assert_eq!(
            "preferSameNode".parse::<TrafficDistribution>(),
            Ok(TrafficDistribution::PreferSameNode)
        );
        assert!(
            "Sideways"
                .parse::<TrafficPolicy>()
                .unwrap_err()
                .contains("Cluster, Local")
        );
        assert_eq!(
            serde_json::to_string(&SessionAffinity::ClientIp).unwrap(),
            "\"ClientIP\""
        );
    }
}
