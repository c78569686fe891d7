//! The emulated Service as kube-proxy sees it: its name and ports, the cluster-wide facts
//! every node's rules depend on ([`Cluster`]), and the names kube-proxy derives from them
//! (service port names, hashed chain names of both proxiers).

use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

use crate::lab::Pod;
use crate::service::ServiceOptions;

/// Namespace and name of the emulated Service.
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

/// The cluster-wide facts every node's rules depend on.
pub struct Cluster<'a> {
    pub cluster_ip: Ipv4Addr,
    pub service_cidr: &'a str,
    pub cluster_cidr: &'a str,
    pub lb_ip: Ipv4Addr,
    pub options: &'a ServiceOptions,
    pub pods: &'a [Pod],
}

/// `ns/svc:port` as kube-proxy prints a ServicePortName.
pub(super) fn service_port_name(sp: &ServicePort) -> String {
    format!("{SERVICE_NAMESPACE}/{SERVICE_NAME}:{}", sp.name)
}

pub(super) fn endpoint_str(p: &Pod, sp: &ServicePort) -> String {
    format!("{}:{}", p.ip, sp.target_port)
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

/// nftables proxier: `hashAndTruncate(ns/svc/proto/port)`.
pub(super) fn nft_base(sp: &ServicePort) -> String {
    hash_and_truncate(&format!(
        "{SERVICE_NAMESPACE}/{SERVICE_NAME}/{}/{}",
        sp.proto.as_str(),
        sp.name
    ))
}

/// nftables proxier's `hashAndTruncate`: 8 base32 characters of SHA-256, `-`, the name
/// (our names stay far below its 256-character limit).
pub(super) fn hash_and_truncate(name: &str) -> String {
    format!("{}-{name}", &sha_b32(name)[..8])
}

/// nftables proxier: `hashAndTruncate(ns/svc/proto/port__ip/port)`.
pub(super) fn nft_ep_base(sp: &ServicePort, p: &Pod) -> String {
    hash_and_truncate(&format!(
        "{SERVICE_NAMESPACE}/{SERVICE_NAME}/{}/{}__{}/{}",
        sp.proto.as_str(),
        sp.name,
        p.ip,
        sp.target_port
    ))
}

// The iptables proxier's names (pkg/proxy/iptables/proxier.go).

/// iptables proxier: `portProtoHash(servicePortName, protocol)`.
pub(super) fn ipt_hash(sp: &ServicePort) -> String {
    port_proto_hash(&service_port_name(sp), sp.proto.as_str())
}

/// iptables proxier's `portProtoHash`: 16 base32 characters of SHA-256(name + protocol).
pub(super) fn port_proto_hash(service_port_name: &str, proto: &str) -> String {
    sha_b32(&format!("{service_port_name}{proto}"))[..16].to_string()
}

pub(super) fn ipt_sep(sp: &ServicePort, p: &Pod) -> String {
    sep_chain(&service_port_name(sp), sp.proto.as_str(), &endpoint_str(p, sp))
}

/// iptables proxier's `servicePortEndpointChainName`.
pub(super) fn sep_chain(service_port_name: &str, proto: &str, endpoint: &str) -> String {
    format!(
        "KUBE-SEP-{}",
        &sha_b32(&format!("{service_port_name}{proto}{endpoint}"))[..16]
    )
}
