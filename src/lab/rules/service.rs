//! The emulated Service as kube-proxy sees it: its name and ports, the cluster-wide facts
//! every node's rules depend on ([`Cluster`]), and the names kube-proxy derives from them
//! (service port names, hashed chain names of both proxiers).

use std::net::{IpAddr, SocketAddr};

use sha2::{Digest, Sha256};

use ipnet::IpNet;

use crate::service::{Ep, IpFamily, ServiceOptions, ServiceType, TrafficPolicy};

/// Namespace and name of the lab's Service.
pub const SERVICE_NAMESPACE: &str = "default";
pub const SERVICE_NAME: &str = "tserver";

/// Transport protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One port of the Service.
#[derive(Clone, Copy, Debug)]
pub struct ServicePort {
    pub name: &'static str,
    pub proto: Proto,
    pub port: u16,
    pub target_port: u16,
    pub node_port: u16,
}

/// The Service's ports: the storm port over TCP and UDP, and HTTP.
pub const PORTS: [ServicePort; 3] = [
    ServicePort {
        name: "tcp",
        proto: Proto::Tcp,
        port: 5001,
        target_port: 5001,
        node_port: 30001,
    },
    ServicePort {
        name: "udp",
        proto: Proto::Udp,
        port: 5001,
        target_port: 5001,
        node_port: 30001,
    },
    ServicePort {
        name: "http",
        proto: Proto::Tcp,
        port: 8080,
        target_port: 8080,
        node_port: 30080,
    },
];

/// What a node's kube-proxy programs: the cluster-wide settings and every Service it sees.
pub struct Cluster<'a> {
    /// The family of this kube-proxy's proxier (kube-proxy runs one per family on a dual-stack
    /// node): every address below is of it.
    pub family: IpFamily,
    /// The Service CIDR (`cluster-ips-check` drops traffic to unallocated ClusterIPs in it).
    pub service_cidr: &'a str,
    /// The cluster CIDR: kube-proxy's local-traffic detector (pod traffic is from inside it).
    pub cluster_cidr: &'a str,
    pub services: Vec<Service<'a>>,
}

/// One Service as kube-proxy's service and endpoint caches hold it.
pub struct Service<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub kind: ServiceType,
    pub cluster_ip: IpAddr,
    pub ports: &'a [ServicePort],
    /// `status.loadBalancer.ingress[].ip`.
    pub lb_ips: Vec<IpAddr>,
    pub external_ips: Vec<IpAddr>,
    /// `spec.healthCheckNodePort` (0: none); used only by LoadBalancers with eTP Local.
    pub health_check_node_port: u16,
    pub options: &'a ServiceOptions,
    /// The EndpointSlices' endpoints, in any order (kube-proxy sorts them as `IP:port`).
    pub endpoints: Vec<Endpoint>,
}

/// One endpoint of an EndpointSlice: its address and conditions, hints and node.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub ep: Ep,
}

impl Service<'_> {
    /// kube-proxy's `NeedsHealthCheck`: a LoadBalancer with externalTrafficPolicy Local.
    pub fn health_check_port(&self) -> Option<u16> {
        (self.kind == ServiceType::LoadBalancer
            && self.options.external_traffic_policy == TrafficPolicy::Local
            && self.health_check_node_port != 0)
            .then_some(self.health_check_node_port)
    }

    /// `ExternallyAccessible` for one port: a NodePort, a LoadBalancer IP or an external IP.
    pub fn externally_accessible(&self, sp: &ServicePort) -> bool {
        sp.node_port != 0 || !self.lb_ips.is_empty() || !self.external_ips.is_empty()
    }

    /// The loadBalancerSourceRanges of this proxier's family (the ClusterIP's).
    pub fn source_ranges(&self) -> Vec<IpNet> {
        let family = IpFamily::of(&self.cluster_ip);
        self.options
            .source_ranges
            .iter()
            .filter(|r| IpFamily::of(&r.addr()) == family)
            .copied()
            .collect()
    }

    /// `ns/svc:port` as kube-proxy prints a ServicePortName.
    pub(super) fn port_name(&self, sp: &ServicePort) -> String {
        format!("{}/{}:{}", self.namespace, self.name, sp.name)
    }

    /// nftables proxier: `hashAndTruncate(ns/svc/proto/port)`.
    pub(super) fn nft_base(&self, sp: &ServicePort) -> String {
        hash_and_truncate(&format!(
            "{}/{}/{}/{}",
            self.namespace,
            self.name,
            sp.proto.as_str(),
            sp.name
        ))
    }

    /// nftables proxier: `hashAndTruncate(ns/svc/proto/port__ip/port)`.
    /// An IPv6 address's colons become dots (a chain name cannot hold a colon).
    pub(super) fn nft_ep_base(&self, sp: &ServicePort, ip: IpAddr) -> String {
        let ip = ip.to_string().replace(':', ".");
        hash_and_truncate(&format!(
            "{}/{}/{}/{}__{ip}/{}",
            self.namespace,
            self.name,
            sp.proto.as_str(),
            sp.name,
            sp.target_port
        ))
    }

    /// iptables proxier: `portProtoHash(servicePortName, protocol)`.
    pub(super) fn ipt_hash(&self, sp: &ServicePort) -> String {
        port_proto_hash(&self.port_name(sp), sp.proto.as_str())
    }

    /// iptables proxier: the KUBE-SEP chain of an endpoint.
    pub(super) fn ipt_sep(&self, sp: &ServicePort, ip: IpAddr) -> String {
        sep_chain(&self.port_name(sp), sp.proto.as_str(), &endpoint_str(ip, sp))
    }
}

/// `ip:port` of an endpoint for a service port (kube-proxy's `Endpoint.String()`,
/// `net.JoinHostPort`: `[ip]:port` in IPv6).
pub(super) fn endpoint_str(ip: IpAddr, sp: &ServicePort) -> String {
    SocketAddr::new(ip, sp.target_port).to_string()
}

/// RFC 4648 base32 (standard alphabet), as Go's `base32.StdEncoding`, without padding
/// (callers keep a prefix).
pub(super) fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in data {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn sha_b32(s: &str) -> String {
    base32(&Sha256::digest(s.as_bytes()))
}

// The nftables proxier's names (pkg/proxy/nftables/proxier.go).

/// nftables proxier's `hashAndTruncate`: 8 base32 characters of SHA-256, `-`, the name
/// (our names stay far below its 256-character limit).
pub(super) fn hash_and_truncate(name: &str) -> String {
    format!("{}-{name}", &sha_b32(name)[..8])
}

// The iptables proxier's names (pkg/proxy/iptables/proxier.go).

/// iptables proxier's `portProtoHash`: 16 base32 characters of SHA-256(name + protocol).
pub(super) fn port_proto_hash(service_port_name: &str, proto: &str) -> String {
    sha_b32(&format!("{service_port_name}{proto}"))[..16].to_string()
}

/// iptables proxier's `servicePortEndpointChainName`.
pub(super) fn sep_chain(service_port_name: &str, proto: &str, endpoint: &str) -> String {
    format!(
        "KUBE-SEP-{}",
        &sha_b32(&format!("{service_port_name}{proto}{endpoint}"))[..16]
    )
}
