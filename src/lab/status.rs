//! `lab status`: what a caller needs to drive a running lab (nodes and the rules generation
//! each applied, pods with their conditions and whether their servers live, the client, the
//! Service's addresses).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::rules::{self, PORTS};
use super::topology::{CLIENT_IP, CLUSTER_IP, LB_IP};
use super::{Conditions, Lab, ProxyMode, SyncDelay, netns};
use crate::service::ServiceOptions;

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
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    /// TCP and UDP.
    pub port: u16,
    pub http_port: u16,
    /// TCP and UDP, on every node IP.
    pub node_port: u16,
    pub http_node_port: u16,
    pub node_ips: Vec<Ipv4Addr>,
    pub lb_ip: Ipv4Addr,
    /// Nodes the client routes the LoadBalancer IP to (all of them with ECMP).
    pub lb_next_hops: Vec<String>,
    pub ecmp: bool,
    pub options: ServiceOptions,
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
            },
            service: ServiceStatus {
                namespace: rules::SERVICE_NAMESPACE.to_string(),
                name: rules::SERVICE_NAME.to_string(),
                cluster_ip: CLUSTER_IP,
                port: PORTS[0].port,
                http_port: PORTS[2].port,
                node_port: PORTS[0].node_port,
                http_node_port: PORTS[2].node_port,
                node_ips: s.nodes.iter().map(|n| n.ip).collect(),
                lb_ip: LB_IP,
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
