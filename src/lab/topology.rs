//! The lab's topology and addressing: the emulated nodes and pods, the fixed addresses
//! (ClusterIP, LoadBalancer IP, node network, client), size limits, lab names and the
//! namespace prefix they give, and where lab state lives.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Result, bail};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

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

impl Pod {
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
