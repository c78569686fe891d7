//! Which endpoints a node's kube-proxy uses for the Service: kube-proxy's
//! `CategorizeEndpoints` (pkg/proxy/topology.go) for one node, and the policy chains
//! ClusterIP and external traffic jump to, as both proxy modes use them.

use super::Cluster;
use crate::lab::{Node, Pod};
use crate::service::{self, ServiceOptions, ServiceShape, Topology, TrafficPolicy};

/// The endpoints one node's kube-proxy uses for one Service.
pub struct NodeEndpoints<'a> {
    /// Endpoints for "Cluster" policies, after topology filtering.
    pub cluster: Vec<&'a Pod>,
    /// Endpoints on this node.
    pub local: Vec<&'a Pod>,
    /// Which hints filtered `cluster`, and why (or why not).
    pub topology: Topology,
    pub reason: String,
}

impl<'a> NodeEndpoints<'a> {
    /// kube-proxy's `CategorizeEndpoints` for one node ([`service::select`]); the lab's Service
    /// is a LoadBalancer, so it is reachable from outside.
    pub fn categorize(c: &Cluster<'a>, node: &Node) -> Self {
        let eps: Vec<service::Ep> = c.pods.iter().map(Pod::ep).collect();
        let shape = ServiceShape {
            options: c.options,
            externally_accessible: true,
        };
        let s = service::select(shape, &eps, &node.name, &node.zone);
        let pods = |idx: &[usize]| idx.iter().map(|&i| &c.pods[i]).collect();
        NodeEndpoints {
            cluster: pods(&s.cluster),
            local: pods(&s.local),
            topology: s.topology,
            reason: s.reason,
        }
    }

    /// Endpoints for traffic to the ClusterIP from this node and its pods.
    pub fn internal(&self, o: &ServiceOptions) -> &[&'a Pod] {
        match o.internal_traffic_policy {
            TrafficPolicy::Cluster => &self.cluster,
            TrafficPolicy::Local => &self.local,
        }
    }

    /// Endpoints for traffic to the NodePort / LoadBalancer IP arriving at this node.
    pub fn external(&self, o: &ServiceOptions) -> &[&'a Pod] {
        match o.external_traffic_policy {
            TrafficPolicy::Cluster => &self.cluster,
            TrafficPolicy::Local => &self.local,
        }
    }
}

/// The two policy chains of a service port, as both proxy modes use them: where ClusterIP traffic
/// and external traffic jump (by internal/externalTrafficPolicy), and which of the Cluster and Local
/// chains exist (a policy uses them and they have endpoints).
pub(super) struct PolicyChains<'c> {
    pub(super) internal: &'c str,
    pub(super) external: &'c str,
    pub(super) uses_cluster: bool,
    pub(super) uses_local: bool,
}

impl<'c> PolicyChains<'c> {
    pub(super) fn new(o: &ServiceOptions, eps: &NodeEndpoints, cluster: &'c str, local: &'c str) -> Self {
        let chain = |p: TrafficPolicy| match p {
            TrafficPolicy::Cluster => cluster,
            TrafficPolicy::Local => local,
        };
        let uses = |p: TrafficPolicy| o.internal_traffic_policy == p || o.external_traffic_policy == p;
        PolicyChains {
            internal: chain(o.internal_traffic_policy),
            external: chain(o.external_traffic_policy),
            uses_cluster: uses(TrafficPolicy::Cluster) && !eps.cluster.is_empty(),
            uses_local: uses(TrafficPolicy::Local) && !eps.local.is_empty(),
        }
    }
}
