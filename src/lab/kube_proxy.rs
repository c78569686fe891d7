//! Each node's kube-proxy: writing its rules after a change (one atomic transaction per
//! node, from [`super::rules`]), clearing UDP conntrack entries of endpoints that left, and
//! the views of its work (the endpoints it chose, the rules it generated, the rules the
//! kernel has).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use anyhow::{Context, Result};

use super::rules::{self, Cluster, Endpoint, NftExisting, PORTS, PortPlan, Service};
use super::topology::{CLUSTER_CIDR, CLUSTER_IP, HEALTH_CHECK_NODE_PORT, LB_IP, SERVICE_CIDR};
use crate::service::ServiceType;

/// Which traffic to a Service: to its ClusterIP, or to a NodePort / the LoadBalancer IP from
/// outside the cluster, or from a node or pod (eTP Local short-circuits that to all endpoints).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    ClusterIp,
    FromOutside,
    FromInside,
}
use super::health::{self, node_sync};
use super::{Lab, Node, Pod, ProxyMode, THREADS, conntrack, netns};

impl Lab {
    /// Writes every node's rules (in parallel), as each node's kube-proxy would after an
    /// EndpointSlice or Service change: one atomic transaction per node.
    pub(super) fn write_rules(&self, initial: bool, reset_affinity: bool) -> Result<()> {
        let cluster = self.cluster();
        netns::par_each(&self.state.nodes, THREADS, |n| {
            self.sync_node(&cluster, n, initial, reset_affinity)?;
            health::record_sync(&self.dir, &n.name, &node_sync(&cluster, n))
        })
    }

    /// One node's kube-proxy sync: its rules in one transaction.
    fn sync_node(&self, cluster: &Cluster, n: &Node, initial: bool, reset_affinity: bool) -> Result<()> {
        match self.state.proxy_mode {
            ProxyMode::Nftables => {
                let existing = if initial {
                    NftExisting::default()
                } else {
                    NftExisting::parse(
                        &netns::exec_output(&n.netns, "nft", &["list", "chains", "ip"])?,
                        &netns::exec_output(&n.netns, "nft", &["list", "sets", "ip"])?,
                    )
                };
                let tx = rules::nft_transaction(cluster, n, &existing, reset_affinity);
                netns::exec_with_stdin(&n.netns, "nft", &["-f", "-"], &tx)
            }
            ProxyMode::Iptables => {
                let existing = if initial {
                    // kube-proxy's iptables mode serves NodePorts on 127.0.0.1 (localhostNodePorts)
                    // and sets this so the kernel routes the DNATed packets.
                    netns::sysctls(&n.netns, &[("net/ipv4/conf/all/route_localnet", "1")])?;
                    Default::default()
                } else {
                    rules::ipt_existing(&netns::exec_output(&n.netns, "iptables-save", &["-t", "nat"])?)
                };
                let input = rules::iptables_restore(cluster, n, &existing, initial);
                netns::exec_with_stdin(&n.netns, "iptables-restore", &["--noflush"], &input)
            }
        }
    }

    /// What every node's kube-proxy is given: the lab's one Service (a LoadBalancer with a
    /// NodePort per port) and its pods as endpoints.
    pub(super) fn cluster(&self) -> Cluster<'_> {
        Cluster {
            service_cidr: SERVICE_CIDR,
            cluster_cidr: CLUSTER_CIDR,
            services: vec![Service {
                namespace: rules::SERVICE_NAMESPACE,
                name: rules::SERVICE_NAME,
                kind: ServiceType::LoadBalancer,
                cluster_ip: CLUSTER_IP,
                ports: &PORTS,
                lb_ips: vec![LB_IP],
                external_ips: Vec::new(),
                health_check_node_port: HEALTH_CHECK_NODE_PORT,
                options: &self.state.options,
                endpoints: self
                    .state
                    .pods
                    .iter()
                    .map(|p| Endpoint { ip: p.ip, ep: p.ep() })
                    .collect(),
            }],
        }
    }

    /// The endpoints `node`'s kube-proxy balances `reach` over (the Service's first port; all
    /// ports have the same endpoints), after traffic policies and topology hints.
    pub fn endpoints(&self, node: &str, reach: Reach) -> Result<Vec<&Pod>> {
        let n = self.node(node).with_context(|| self.unknown(node))?;
        let c = self.cluster();
        let svc = &c.services[0];
        let plan = PortPlan::new(svc, &PORTS[0], n);
        let chosen = match reach {
            Reach::ClusterIp => plan.internal(svc),
            Reach::FromOutside => plan.external(),
            Reach::FromInside => plan.external_from_inside(),
        };
        Ok(chosen
            .iter()
            .filter_map(|e| self.state.pods.iter().find(|p| p.name == e.ep.name))
            .collect())
    }

    /// The generated rules for `node` (what the lab feeds to `nft -f` / `iptables-restore`).
    pub fn generated_rules(&self, node: &str) -> Result<String> {
        let n = self.node(node).with_context(|| self.unknown(node))?;
        let c = self.cluster();
        Ok(match self.state.proxy_mode {
            ProxyMode::Nftables => rules::nft_transaction(&c, n, &NftExisting::default(), false),
            ProxyMode::Iptables => rules::iptables_restore(&c, n, &Default::default(), true),
        })
    }

    /// The rules as the kernel has them on `node` (`nft list table ip kube-proxy` or
    /// `iptables-save`).
    pub fn rules(&self, node: &str) -> Result<String> {
        let n = self.node(node).with_context(|| self.unknown(node))?;
        match self.state.proxy_mode {
            ProxyMode::Nftables => netns::exec_output(&n.netns, "nft", &["list", "table", "ip", "kube-proxy"]),
            ProxyMode::Iptables => netns::exec_output(&n.netns, "iptables-save", &[]),
        }
    }

    /// After endpoints left the rules, kube-proxy deletes the UDP conntrack entries that
    /// still point at them (UDP has no close to end them; they would blackhole the flow until
    /// they time out). TCP entries are left alone, as kube-proxy does.
    pub(super) fn clear_udp_conntrack(&self, gone: &[Pod]) -> Result<()> {
        let ips: HashSet<Ipv4Addr> = gone.iter().map(|p| p.ip).collect();
        netns::par_each(&self.state.nodes, THREADS, |n| {
            netns::in_netns(&n.netns, || conntrack::delete_udp_to(&ips)).map(|_| ())
        })
    }
}
