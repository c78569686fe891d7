//! `lab status`: what a caller needs to drive a running lab (nodes and the rules generation
//! each applied, pods with their conditions and whether their servers live, the client, the
//! Service's addresses).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::rules::{self, PORTS};
use super::topology::{CLIENT_IP, CLUSTER_IP, LB_IP, in_family, v6, v6_net};
use super::{Conditions, Lab, ProxyMode, SyncDelay, netns};
use crate::service::{IpFamily, ServiceOptions};

/// `lab status`: what a caller needs to drive the lab.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabStatus {
    pub name: String,
    pub proxy_mode: ProxyMode,
    /// Which kube-proxy's behaviour the rules emulate, and the upstream files they follow.
    pub kube_proxy: String,
    pub created: jiff::Timestamp,
    pub state_dir: PathBuf,
    /// The rules generation: one more at every change of the Service or its endpoints.
    pub generation: u64,
    pub sync_delay: SyncDelay,
    /// The command that has not finished building the lab (`lab up`, `lab scale`): being built,
    /// or interrupted. Runs refuse an incomplete lab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<String>,
    pub nodes: Vec<NodeStatus>,
    pub pods: Vec<PodStatus>,
    pub client: ClientStatus,
    pub service: ServiceStatus,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub zone: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    /// The node's IPv6 address and pod CIDR (IPv6 and dual-stack labs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr_v6: Option<Ipv6Net>,
    pub netns: String,
    pub pods: usize,
    /// The rules generation this node's kube-proxy has applied (behind the lab's while it syncs).
    pub generation: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodStatus {
    pub name: String,
    pub node: String,
    pub zone: String,
    pub ip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    pub netns: String,
    pub pid: u32,
    pub alive: bool,
    pub hint: Option<String>,
    /// EndpointSlice conditions.
    pub conditions: Conditions,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientStatus {
    pub netns: String,
    pub ip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub namespace: String,
    pub name: String,
    /// The Service's `spec.ipFamilies` (`lab up --ip-family`; IPv4 in a lab from before it).
    /// The IPv4 addresses below exist in every lab (its plumbing), but only the families
    /// listed here have rules: an IPv6-only lab's Service answers on its IPv6 addresses only.
    #[serde(default = "ipv4_only")]
    pub ip_families: Vec<IpFamily>,
    pub cluster_ip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ip_v6: Option<Ipv6Addr>,
    /// TCP and UDP.
    pub port: u16,
    pub http_port: u16,
    /// TCP and UDP, on every node IP.
    pub node_port: u16,
    pub http_node_port: u16,
    pub node_ips: Vec<Ipv4Addr>,
    pub lb_ip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb_ip_v6: Option<Ipv6Addr>,
    /// Nodes the client routes the LoadBalancer IP to (all of them with ECMP).
    pub lb_next_hops: Vec<String>,
    pub ecmp: bool,
    pub options: ServiceOptions,
}

fn ipv4_only() -> Vec<IpFamily> {
    vec![IpFamily::Ipv4]
}

impl ServiceStatus {
    /// The ClusterIP of `family`.
    pub fn cluster_ip_of(&self, family: IpFamily) -> IpAddr {
        in_family(self.cluster_ip, family)
    }

    /// The LoadBalancer IP of `family`.
    pub fn lb_ip_of(&self, family: IpFamily) -> IpAddr {
        in_family(self.lb_ip, family)
    }

    /// The node IPs of `family`, in the order of `node_ips`.
    pub fn node_ips_of(&self, family: IpFamily) -> Vec<IpAddr> {
        self.node_ips.iter().map(|ip| in_family(*ip, family)).collect()
    }
}

impl NodeStatus {
    pub fn ip_of(&self, family: IpFamily) -> IpAddr {
        in_family(self.ip, family)
    }
}

impl PodStatus {
    pub fn ip_of(&self, family: IpFamily) -> IpAddr {
        in_family(self.ip, family)
    }
}

impl ClientStatus {
    pub fn ip_of(&self, family: IpFamily) -> IpAddr {
        in_family(self.ip, family)
    }
}

/// The kube-proxy version whose behaviour the lab's rules follow.
pub const KUBE_PROXY_VERSION: &str = "v1.34";

/// "v1.34 or later, after <the upstream files>" for a proxy mode.
fn kube_proxy_emulated(mode: ProxyMode) -> String {
    let proxier = match mode {
        ProxyMode::Nftables => "nftables/proxier.go",
        ProxyMode::Iptables => "iptables/proxier.go",
    };
    format!(
        "{KUBE_PROXY_VERSION} or later, after kubernetes/kubernetes pkg/proxy/{{{proxier}, topology.go, serviceport.go, conntrack/cleanup.go, healthcheck/service_health.go}}"
    )
}

impl Lab {
    pub fn status(&self) -> LabStatus {
        let s = &self.state;
        let with_v6 = |ip: Ipv4Addr| s.families.ipv6().then(|| v6(ip));
        LabStatus {
            name: s.name.clone(),
            proxy_mode: s.proxy_mode,
            kube_proxy: kube_proxy_emulated(s.proxy_mode),
            created: s.created,
            state_dir: self.dir.clone(),
            generation: s.generation,
            sync_delay: s.sync_delay,
            incomplete: s.building.clone(),
            nodes: s
                .nodes
                .iter()
                .map(|n| NodeStatus {
                    name: n.name.clone(),
                    zone: n.zone.clone(),
                    ip: n.ip,
                    pod_cidr: n.pod_cidr,
                    ipv6: with_v6(n.ip),
                    pod_cidr_v6: s.families.ipv6().then(|| v6_net(n.pod_cidr)),
                    netns: n.netns.clone(),
                    pods: s.pods.iter().filter(|p| p.node == n.name).count(),
                    generation: s.applied_generation(&n.name),
                })
                .collect(),
            pods: s
                .pods
                .iter()
                .map(|p| PodStatus {
                    name: p.name.clone(),
                    node: p.node.clone(),
                    zone: p.zone.clone(),
                    ip: p.ip,
                    ipv6: with_v6(p.ip),
                    netns: p.netns.clone(),
                    pid: p.pid,
                    alive: p.pid != 0
                        && netns::alive(p.pid)
                        && netns::pid_netns_inode(p.pid).is_some()
                        && netns::pid_netns_inode(p.pid) == netns::netns_inode(&p.netns),
                    hint: p.hint.clone(),
                    conditions: p.conditions,
                })
                .collect(),
            client: ClientStatus {
                netns: self.netns_of("client"),
                ip: CLIENT_IP,
                ipv6: with_v6(CLIENT_IP),
            },
            service: ServiceStatus {
                namespace: rules::SERVICE_NAMESPACE.to_string(),
                name: rules::SERVICE_NAME.to_string(),
                ip_families: s.families.families().to_vec(),
                cluster_ip: CLUSTER_IP,
                cluster_ip_v6: with_v6(CLUSTER_IP),
                port: PORTS[0].port,
                http_port: PORTS[2].port,
                node_port: PORTS[0].node_port,
                http_node_port: PORTS[2].node_port,
                node_ips: s.nodes.iter().map(|n| n.ip).collect(),
                lb_ip: LB_IP,
                lb_ip_v6: with_v6(LB_IP),
                lb_next_hops: if s.ecmp {
                    // What the health-checked load balancer routes over now.
                    self.lb_state()
                        .map(|l| l.next_hops)
                        .unwrap_or_else(|| s.nodes.iter().map(|n| n.name.clone()).collect())
                } else {
                    vec![s.nodes[0].name.clone()]
                },
                ecmp: s.ecmp,
                options: s.options.clone(),
            },
        }
    }
}
