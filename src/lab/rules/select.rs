//! What one node's kube-proxy decides for one service port before it writes a rule, the same
//! for both proxy modes: the endpoints (kube-proxy's `CategorizeEndpoints`, pkg/proxy/topology.go,
//! over endpoints sorted as `IP:port`), which policy chains exist, and what traffic without
//! endpoints gets (`syncProxyRules` in pkg/proxy/{nftables,iptables}/proxier.go).

use super::service::{Endpoint, Service, ServicePort, endpoint_str};
use crate::lab::Node;
use crate::service::{self, ServiceShape, Topology, TrafficPolicy};

/// What traffic that has no endpoint to go to gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoEndpoint {
    /// The Service has no usable endpoint anywhere: ICMP port unreachable (REJECT).
    Reject,
    /// A Local policy and no endpoint on this node: silently dropped.
    Drop,
}

/// One node's kube-proxy's decisions for one service port.
pub struct PortPlan<'s> {
    /// Endpoints for the Cluster policy, after topology (sorted as `IP:port`).
    pub cluster: Vec<&'s Endpoint>,
    /// This node's endpoints, for the Local policies.
    pub local: Vec<&'s Endpoint>,
    /// Every endpoint some chain of this node reaches (their endpoint chains exist).
    pub reachable: Vec<&'s Endpoint>,
    pub topology: Topology,
    pub reason: String,
    /// Some endpoint is usable somewhere (else every address of the Service rejects).
    pub has_endpoints: bool,
    /// internalTrafficPolicy Local (`InternalPolicyLocal`).
    pub internal_local: bool,
    /// externalTrafficPolicy Local and reachable from outside (`ExternalPolicyLocal`).
    pub external_local: bool,
    /// ClusterIP traffic has endpoints (iTP Local needs local ones).
    pub has_internal: bool,
    /// External traffic from outside has endpoints (eTP Local needs local ones).
    pub has_external: bool,
    pub uses_cluster_chain: bool,
    pub uses_local_chain: bool,
    /// The external chain exists (with its pod and host short-circuits) whenever the Service has
    /// endpoints and is reachable from outside, even if this node has no local endpoint.
    pub uses_external_chain: bool,
}

impl<'s> PortPlan<'s> {
    /// `CategorizeEndpoints` for `node` and the chain choices of `syncProxyRules`.
    pub fn new(svc: &'s Service, sp: &ServicePort, node: &Node) -> Self {
        let mut sorted: Vec<&Endpoint> = svc.endpoints.iter().collect();
        sorted.sort_by_cached_key(|e| endpoint_str(e.ip, sp));
        let eps: Vec<service::Ep> = sorted.iter().map(|e| e.ep.clone()).collect();
        let externally_accessible = svc.externally_accessible(sp);
        let shape = ServiceShape {
            options: svc.options,
            externally_accessible,
        };
        let s = service::select(shape, &eps, &node.name, &node.zone);
        let pick = |idx: &[usize]| -> Vec<&'s Endpoint> { idx.iter().map(|&i| sorted[i]).collect() };
        let (cluster, local) = (pick(&s.cluster), pick(&s.local));
        let mut all: Vec<usize> = s.cluster.iter().chain(&s.local).copied().collect();
        all.sort_unstable();
        all.dedup();
        let o = svc.options;
        let internal_local = o.internal_traffic_policy == TrafficPolicy::Local;
        let external_local = externally_accessible && o.external_traffic_policy == TrafficPolicy::Local;
        let has_endpoints = s.has_any;
        PortPlan {
            reachable: pick(&all),
            topology: s.topology,
            reason: s.reason,
            has_endpoints,
            internal_local,
            external_local,
            has_internal: has_endpoints && !(internal_local && local.is_empty()),
            has_external: has_endpoints && !(external_local && local.is_empty()),
            uses_cluster_chain: !cluster.is_empty() && shape.uses_cluster(),
            uses_local_chain: !local.is_empty() && shape.uses_local(),
            uses_external_chain: has_endpoints && externally_accessible,
            cluster,
            local,
        }
    }

    /// Endpoints of ClusterIP traffic (internalTrafficPolicy).
    pub fn internal(&self) -> &[&'s Endpoint] {
        if self.internal_local {
            &self.local
        } else {
            &self.cluster
        }
    }

    /// The chains ClusterIP traffic and external traffic from outside go to (kube-proxy's
    /// `internalPolicyChain` and `externalPolicyChain`), given the port's cluster and local
    /// policy chain names.
    pub fn policy_chains<'c>(&self, cluster: &'c str, local: &'c str) -> (&'c str, &'c str) {
        let pick = |is_local: bool| if is_local { local } else { cluster };
        (pick(self.internal_local), pick(self.external_local))
    }

    /// Endpoints of traffic from outside the cluster to a NodePort, LoadBalancer or external IP.
    pub fn external(&self) -> &[&'s Endpoint] {
        if self.external_local {
            &self.local
        } else {
            &self.cluster
        }
    }

    /// Endpoints of traffic from the node itself or a pod to a NodePort or LoadBalancer IP this
    /// node intercepts: eTP Local short-circuits it to the cluster endpoints.
    pub fn external_from_inside(&self) -> &[&'s Endpoint] {
        &self.cluster
    }

    /// What ClusterIP traffic gets when it has no endpoint.
    pub fn internal_verdict(&self) -> Option<NoEndpoint> {
        self.no_endpoint(self.has_internal)
    }

    /// What external traffic from outside gets when it has no endpoint.
    pub fn external_verdict(&self) -> Option<NoEndpoint> {
        self.no_endpoint(self.has_external)
    }

    fn no_endpoint(&self, has: bool) -> Option<NoEndpoint> {
        match (self.has_endpoints, has) {
            (false, _) => Some(NoEndpoint::Reject),
            (true, false) => Some(NoEndpoint::Drop),
            (true, true) => None,
        }
    }
}
