//! The lab's topology and addressing: the emulated nodes and pods, the fixed addresses
//! (ClusterIP, LoadBalancer IP, node network, client), size limits, lab names and the
//! namespace prefix they give, and where lab state lives.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use anyhow::{Result, bail};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::service::IpFamily;

/// One emulated node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub zone: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub netns: String,
}

/// One emulated pod.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pod {
    pub name: String,
    pub node: String,
    pub zone: String,
    pub ip: Ipv4Addr,
    pub netns: String,
    /// Node-side end of the pod's veth.
    pub veth: String,
    pub pid: u32,
    /// The EndpointSlice zone hint (`hints.forZones`) kube-proxy sees for this endpoint.
    pub hint: Option<String>,
    /// The node hint (`hints.forNodes`, trafficDistribution PreferSameNode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_hint: Option<String>,
    /// The hint was removed with `lab set --drop-hint`.
    #[serde(default)]
    pub hint_dropped: bool,
    /// The endpoint's EndpointSlice conditions (ready in state files from before they existed).
    #[serde(default)]
    pub conditions: Conditions,
}

/// An endpoint's conditions in the EndpointSlice (`endpoints[].conditions`), as the lab plays
/// the EndpointSlice controller: a new pod is none of them until its server answers (plus the
/// ready delay); a deleted pod is terminating, serving while its server still listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conditions {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Default for Conditions {
    fn default() -> Self {
        Conditions::READY
    }
}

impl Conditions {
    pub const READY: Conditions = Conditions {
        ready: true,
        serving: true,
        terminating: false,
    };
    /// Started, not ready yet.
    pub const STARTING: Conditions = Conditions {
        ready: false,
        serving: false,
        terminating: false,
    };
    /// Deleted, its server draining.
    pub const TERMINATING: Conditions = Conditions {
        ready: false,
        serving: true,
        terminating: true,
    };
    /// Deleted, its server no longer listens.
    pub const NOT_SERVING: Conditions = Conditions {
        ready: false,
        serving: false,
        terminating: true,
    };

    /// kube-proxy may send traffic to it: ready, or serving while terminating (the fallback).
    pub fn usable(&self) -> bool {
        self.ready || (self.serving && self.terminating)
    }

    /// As `lab status` shows it.
    pub fn describe(&self) -> &'static str {
        match (self.ready, self.serving, self.terminating) {
            (true, _, _) => "ready",
            (false, true, true) => "terminating",
            (false, false, true) => "terminating, not serving",
            (false, _, false) => "not ready",
        }
    }
}

pub(super) const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub(super) const SERVICE_CIDR: &str = "10.96.0.0/16";
pub(super) const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// [`SERVICE_CIDR`] and [`CLUSTER_CIDR`] in IPv6 ([`v6_net`]).
pub(super) const SERVICE_CIDR_V6: &str = "fd00:5b1a::a60:0/112";
pub(super) const CLUSTER_CIDR_V6: &str = "fd00:5b1a::af4:0/112";
pub(super) const NODE_NET_PREFIX: u8 = 24;
/// The node network's router (on the bridge in the `net` namespace).
pub(super) const NODE_NET_ROUTER: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);
pub(super) const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 2);
pub(super) const LB_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 10);
/// The Service's `healthCheckNodePort` (answered by each node's kube-proxy with eTP Local).
pub(super) const HEALTH_CHECK_NODE_PORT: u16 = 32000;
/// kube-proxy's own health port (`--healthz-bind-address`: `/healthz` and `/livez`).
pub(super) const PROXY_HEALTHZ_PORT: u16 = 10256;
/// The pods' default gateway (Calico-style): answered by proxy ARP on the node's veth.
pub(super) const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub(super) const MAX_NODES: usize = 200;
pub(super) const MAX_PODS_PER_NODE: usize = 250;
const MAX_NAME_LEN: usize = 16;

/// The lab's IPv6 addresses: this ULA /96 followed by the 32 bits of the IPv4 address of the same
/// interface or role (`fd00:5b1a::ac1f:b` for node1's 172.31.0.11; an IPv4 /24 is an IPv6 /120),
/// so every IPv6 address is as unique as its IPv4 one and needs no allocation of its own.
pub(super) const V6_PREFIX: [u16; 6] = [0xfd00, 0x5b1a, 0, 0, 0, 0];
/// The pods' IPv6 default gateway: link-local, a permanent neighbour entry in each pod.
pub(super) const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The IPv6 address the lab gives the interface or role that has IPv4 address `ip`.
pub fn v6(ip: Ipv4Addr) -> Ipv6Addr {
    let [p0, p1, p2, p3, p4, p5] = V6_PREFIX;
    let b = u32::from(ip);
    Ipv6Addr::new(p0, p1, p2, p3, p4, p5, (b >> 16) as u16, b as u16)
}

/// The route to the LoadBalancer IP of `family` over the nodes `hops` (node-network IPv4
/// addresses; their IPv6 counterparts for `Ipv6`): an `ip route add|replace` argument.
pub(super) fn lb_route(family: IpFamily, hops: &[Ipv4Addr]) -> String {
    let dst = IpNet::from(in_family(LB_IP, family));
    match hops {
        [one] => format!("{dst} via {} dev eth0", in_family(*one, family)),
        _ => {
            let nexthops: Vec<String> = hops
                .iter()
                .map(|h| format!("nexthop via {} dev eth0", in_family(*h, family)))
                .collect();
            format!("{dst} {}", nexthops.join(" "))
        }
    }
}

/// The IPv6 network of IPv4 network `net` (the same hosts, 96 bits longer).
pub fn v6_net(net: Ipv4Net) -> Ipv6Net {
    Ipv6Net::new(v6(net.network()), net.prefix_len() + 96).expect("a prefix of at most 128")
}

/// `ip` in `family`: itself or its IPv6 counterpart ([`v6`]).
pub fn in_family(ip: Ipv4Addr, family: IpFamily) -> IpAddr {
    match family {
        IpFamily::Ipv4 => IpAddr::V4(ip),
        IpFamily::Ipv6 => IpAddr::V6(v6(ip)),
    }
}

/// Whose interface a lab MAC address names. Every lab interface gets a MAC made of its role and
/// its IPv4 address, so the lab writes every neighbour entry itself, permanent: the kernel's
/// neighbour table is shared by all namespaces and holds 1,024 learned entries by default
/// (`gc_thresh3`), which a lab of 2,000 pods would overflow. Permanent entries do not count.
#[derive(Clone, Copy)]
pub(super) enum MacOf {
    /// A node's, the client's or the router's interface on the node network.
    NodeNet = 0x5a,
    /// A pod's eth0.
    Pod = 0x5b,
    /// The node's end of a pod's veth: what the pod's gateway resolves to.
    PodGateway = 0x5c,
}

/// A locally administered unicast MAC: 0e:ROLE:IP.
pub(super) fn mac(of: MacOf, ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x0e, of as u8, a, b, c, d]
}

/// [`mac`] as `ip` writes it.
pub(super) fn mac_text(of: MacOf, ip: Ipv4Addr) -> String {
    mac(of, ip)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What a pod costs the machine, rounded up: its server (~1 MiB proportional set) and its
/// namespace, veth and neighbour entries. A 20 × 2,000 lab took 3.5 GiB of `MemAvailable`.
const MIB_PER_POD: u64 = 2;
/// A node's namespace, its agent and its kube-proxy rules.
const MIB_PER_NODE: u64 = 16;

/// Why this machine cannot serve `pods` more pods on `nodes` more nodes, if it cannot: given
/// the memory available (MiB) and how many more processes the kernel can start (pids). A lab
/// past either limit fails halfway (servers that do not start, or the OOM killer).
pub(super) fn capacity_problem(pods: usize, nodes: usize, available_mib: u64, free_pids: u64) -> Option<String> {
    let need_mib = pods as u64 * MIB_PER_POD + nodes as u64 * MIB_PER_NODE;
    // Room for everything else the machine runs: a fifth of what is available.
    if need_mib > available_mib / 5 * 4 {
        return Some(format!(
            "{pods} pods need about {need_mib} MiB of memory and this machine has {available_mib} MiB available: use fewer --pods"
        ));
    }
    let need_pids = (pods + nodes + 2) as u64;
    if need_pids > free_pids / 10 * 9 {
        return Some(format!(
            "{pods} pods need {need_pids} processes and the kernel has room for {free_pids} more (kernel.pid_max): use fewer --pods"
        ));
    }
    None
}

pub(super) fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 31, 0, 10 + i as u8)
}

/// Where lab state lives: `$SVCLB_LAB_DIR` or /run/svclb/labs.
pub fn labs_dir() -> PathBuf {
    std::env::var_os("SVCLB_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/svclb/labs"))
}

/// The namespace-name prefix of lab `name`.
pub fn netns_prefix(name: &str) -> String {
    format!("svclb-{name}.")
}

/// Checks a lab name: short, [a-z0-9-], no leading/trailing hyphen.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        bail!(
            "invalid lab name {name:?}: use 1-{MAX_NAME_LEN} characters of [a-z0-9-], not starting or ending with '-'"
        );
    }
    Ok(())
}

impl Node {
    /// The node's address in `family`.
    pub fn ip_of(&self, family: IpFamily) -> IpAddr {
        in_family(self.ip, family)
    }
}

impl Pod {
    /// The pod's address in `family`.
    pub fn ip_of(&self, family: IpFamily) -> IpAddr {
        in_family(self.ip, family)
    }

    /// The endpoint as kube-proxy sees it in the EndpointSlice.
    pub fn ep(&self) -> crate::service::Ep {
        crate::service::Ep {
            name: self.name.clone(),
            node: self.node.clone(),
            ready: self.conditions.ready,
            serving: self.conditions.serving,
            terminating: self.conditions.terminating,
            zone_hints: self.hint.iter().cloned().collect(),
            node_hints: self.node_hint.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_balancer_route_goes_over_one_node_or_all_in_each_family() {
        let a = Ipv4Addr::new(172, 31, 0, 11);
        let b = Ipv4Addr::new(172, 31, 0, 12);
        assert_eq!(
            lb_route(IpFamily::Ipv4, &[a]),
            "172.30.0.10/32 via 172.31.0.11 dev eth0"
        );
        assert_eq!(
            lb_route(IpFamily::Ipv6, &[a, b]),
            "fd00:5b1a::ac1e:a/128 nexthop via fd00:5b1a::ac1f:b dev eth0 nexthop via fd00:5b1a::ac1f:c dev eth0"
        );
    }

    #[test]
    fn a_size_past_the_memory_or_the_pids_is_refused_with_what_it_needs() {
        // 20 × 2,000 on this 24 GiB machine: served.
        assert_eq!(capacity_problem(2000, 20, 23_000, 30_000), None);
        // 200 × 250: 50,000 pods need ~100 GB.
        let why = capacity_problem(50_000, 200, 23_000, 4_000_000).unwrap();
        assert!(why.starts_with("50000 pods need about 103200 MiB of memory"), "{why}");
        assert!(why.ends_with("use fewer --pods"), "{why}");
        // Enough memory, but the default pid_max (32,768) with 2,000 tasks running.
        let why = capacity_problem(30_000, 100, 1_000_000, 30_768).unwrap();
        assert!(
            why.contains("30102 processes") && why.contains("kernel.pid_max"),
            "{why}"
        );
        // Adding pods to a running lab counts only the new ones.
        assert_eq!(capacity_problem(10, 0, 100, 1_000), None);
    }

    #[test]
    fn ipv6_addresses_embed_the_ipv4_ones_under_the_lab_prefix() {
        assert_eq!(v6(Ipv4Addr::new(172, 31, 0, 11)).to_string(), "fd00:5b1a::ac1f:b");
        let pods: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        assert_eq!(v6_net(pods).to_string(), "fd00:5b1a::af4:300/120");
        assert!(v6_net(pods).contains(&v6(Ipv4Addr::new(10, 244, 3, 7))));
        assert!(!v6_net(pods).contains(&v6(Ipv4Addr::new(10, 244, 4, 7))));
        assert_eq!(in_family(CLUSTER_IP, IpFamily::Ipv6).to_string(), "fd00:5b1a::a60:a");
        let net = |s: &str| v6_net(s.parse().unwrap()).to_string();
        assert_eq!(net(SERVICE_CIDR), SERVICE_CIDR_V6);
        assert_eq!(net(CLUSTER_CIDR), CLUSTER_CIDR_V6);
    }

    #[test]
    fn macs_are_locally_administered_unicast_and_name_their_role_and_address() {
        let ip = Ipv4Addr::new(10, 244, 3, 7);
        assert_eq!(mac_text(MacOf::Pod, ip), "0e:5b:0a:f4:03:07");
        assert_eq!(mac_text(MacOf::PodGateway, ip), "0e:5c:0a:f4:03:07");
        let m = mac(MacOf::NodeNet, ip);
        assert_eq!(m[0] & 0b11, 0b10, "locally administered, not multicast");
    }
}
