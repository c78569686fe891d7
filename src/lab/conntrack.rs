//! Stale UDP conntrack entries, cleared after each sync the way kube-proxy's
//! `pkg/proxy/conntrack/cleanup.go` (`CleanStaleEntries`) clears them, spoken directly over
//! ctnetlink so the lab needs no `conntrack` binary. Run it on a thread inside the node's
//! namespace (netlink sockets belong to the namespace they are created in).
//!
//! An entry is stale when it is UDP, its original destination is a Service IP:port (ClusterIP,
//! LoadBalancer IP) or any address at a UDP nodePort, and its reply comes from an IP:port that
//! is not a *serving* endpoint of that Service (traffic policies, topology and terminating do
//! not matter: a terminating endpoint that still serves keeps its flows). Unlike v1.34, whose
//! loop skips a Service without serving endpoints, a Service whose endpoints all went away has
//! its entries deleted too (kubernetes PR #139629), so its clients get the Service's reject at
//! once instead of a black hole until the entry times out.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Result, bail};

use crate::service::IpFamily;

use super::nfnetlink::{
    NFNL_SUBSYS_CTNETLINK, NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, NLMSG_HDRLEN, Socket, attrs, dump, find, message,
};

const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// One direction of a conntrack entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tuple {
    src: SocketAddr,
    dst: SocketAddr,
    proto: u8,
}

/// The CTA_TUPLE_* payload (addresses, protocol, ports; ports 0 for protocols without them).
fn tuple(data: &[u8]) -> Option<Tuple> {
    let ip = find(data, CTA_TUPLE_IP)?;
    // An IPv4 entry has the V4 attributes, an IPv6 one the V6 ones.
    let addr = |k4, k6| -> Option<IpAddr> {
        if let Some(b) = find(ip, k4) {
            let b: [u8; 4] = b.get(..4)?.try_into().ok()?;
            return Some(Ipv4Addr::from(b).into());
        }
        let b: [u8; 16] = find(ip, k6)?.get(..16)?.try_into().ok()?;
        Some(Ipv6Addr::from(b).into())
    };
    let proto = find(data, CTA_TUPLE_PROTO)?;
    let port = |k| find(proto, k).and_then(|b| Some(u16::from_be_bytes([*b.first()?, *b.get(1)?])));
    Some(Tuple {
        src: SocketAddr::new(
            addr(CTA_IP_V4_SRC, CTA_IP_V6_SRC)?,
            port(CTA_PROTO_SRC_PORT).unwrap_or(0),
        ),
        dst: SocketAddr::new(
            addr(CTA_IP_V4_DST, CTA_IP_V6_DST)?,
            port(CTA_PROTO_DST_PORT).unwrap_or(0),
        ),
        proto: *find(proto, CTA_PROTO_NUM)?.first()?,
    })
}

/// The UDP Services of a node's kube-proxy as `CleanStaleEntries` indexes them: per Service
/// IP:port and per nodePort of each family (one proxier per family), the IP:ports of the serving
/// endpoints.
#[derive(Clone, Debug, Default)]
pub struct UdpServices {
    by_address: HashMap<SocketAddr, HashSet<SocketAddr>>,
    by_node_port: HashMap<(IpFamily, u16), HashSet<SocketAddr>>,
}

impl UdpServices {
    /// A UDP service port of `family` reached at `addresses` (ClusterIP:port, LoadBalancer
    /// IP:port) and at `node_port` (0: none), whose serving endpoints are `serving`.
    pub fn add(&mut self, addresses: &[SocketAddr], node_port: u16, family: IpFamily, serving: &HashSet<SocketAddr>) {
        for a in addresses {
            self.by_address.insert(*a, serving.clone());
        }
        if node_port != 0 {
            self.by_node_port.insert((family, node_port), serving.clone());
        }
    }

    /// The families with an entry (each is dumped on its own).
    fn families(&self) -> Vec<IpFamily> {
        let mut f: Vec<IpFamily> = self.by_address.keys().map(|a| IpFamily::of(&a.ip())).collect();
        f.sort();
        f.dedup();
        f
    }

    /// An entry (original direction, reply direction) that no serving endpoint answers any more.
    fn is_stale(&self, orig: &Tuple, reply: &Tuple) -> bool {
        if orig.proto != libc::IPPROTO_UDP as u8 {
            return false;
        }
        let gone = |serving: &HashSet<SocketAddr>| !serving.contains(&reply.src);
        let node_port = (IpFamily::of(&orig.dst.ip()), orig.dst.port());
        self.by_address.get(&orig.dst).is_some_and(gone) || self.by_node_port.get(&node_port).is_some_and(gone)
    }
}

/// How many connections this namespace tracks (`nf_conntrack_count`, which is per namespace),
/// or None when the kernel does not say.
pub fn tracked() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count").ok()?;
    text.trim().parse().ok()
}

/// Deletes the stale UDP conntrack entries of this namespace (see the module's comment).
/// Returns how many were deleted.
pub fn delete_stale_udp(services: &UdpServices) -> Result<usize> {
    let mut deleted = 0;
    for f in services.families() {
        let family = match f {
            IpFamily::Ipv4 => libc::AF_INET as u8,
            IpFamily::Ipv6 => libc::AF_INET6 as u8,
        };
        deleted += delete_stale_udp_of(services, family)?;
    }
    Ok(deleted)
}

/// [`delete_stale_udp`] for the entries of one address family (`AF_INET`, `AF_INET6`).
fn delete_stale_udp_of(services: &UdpServices, family: u8) -> Result<usize> {
    let sock = Socket::open()?;
    let mut stale: Vec<Vec<u8>> = Vec::new();
    dump(&sock, NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_GET, family, &[], |body| {
        let all = attrs(body);
        let orig = all.iter().find(|(k, _, _)| *k == CTA_TUPLE_ORIG);
        let reply = all.iter().find(|(k, _, _)| *k == CTA_TUPLE_REPLY);
        if let (Some((_, o, whole)), Some((_, r, _))) = (orig, reply)
            && let (Some(o), Some(r)) = (tuple(o), tuple(r))
            && services.is_stale(&o, &r)
        {
            stale.push(whole.to_vec());
        }
    })?;
    let mut buf = vec![0u8; 1 << 16];
    let mut deleted = 0;
    for (i, orig) in stale.iter().enumerate() {
        let flags = NLM_F_REQUEST | NLM_F_ACK;
        sock.send(&message(
            NFNL_SUBSYS_CTNETLINK,
            IPCTNL_MSG_CT_DELETE,
            flags,
            2 + i as u32,
            family,
            orig,
        ))?;
        let n = sock.recv(&mut buf)?;
        if n >= NLMSG_HDRLEN + 4 && u16::from_ne_bytes([buf[4], buf[5]]) == NLMSG_ERROR {
            let code = i32::from_ne_bytes(buf[16..20].try_into().expect("4 bytes"));
            // ENOENT: the entry expired meanwhile.
            if code == 0 {
                deleted += 1;
            } else if -code != libc::ENOENT {
                bail!("ctnetlink delete: {}", std::io::Error::from_raw_os_error(-code));
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::super::nfnetlink::attr;
    use super::*;

    #[test]
    fn parses_nested_tuples_with_ports() {
        // CTA_TUPLE_ORIG { CTA_TUPLE_IP { SRC 10.244.1.2, DST 10.96.0.10 },
        //                  CTA_TUPLE_PROTO { NUM 17, SRC_PORT 40000, DST_PORT 5001 } }
        let ip = [
            attr(CTA_IP_V4_SRC, &[10, 244, 1, 2]),
            attr(CTA_IP_V4_DST, &[10, 96, 0, 10]),
        ]
        .concat();
        let proto = [
            attr(CTA_PROTO_NUM, &[17]),
            attr(CTA_PROTO_SRC_PORT, &40000u16.to_be_bytes()),
            attr(CTA_PROTO_DST_PORT, &5001u16.to_be_bytes()),
        ]
        .concat();
        let t = [attr(CTA_TUPLE_IP | 0x8000, &ip), attr(CTA_TUPLE_PROTO | 0x8000, &proto)].concat();
        assert_eq!(
            tuple(&t),
            Some(Tuple {
                src: "10.244.1.2:40000".parse().unwrap(),
                dst: "10.96.0.10:5001".parse().unwrap(),
                proto: 17,
            })
        );
        // The same in IPv6.
        let (a, b): (Ipv6Addr, Ipv6Addr) = ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        let ip6 = [attr(CTA_IP_V6_SRC, &a.octets()), attr(CTA_IP_V6_DST, &b.octets())].concat();
        let t6 = [
            attr(CTA_TUPLE_IP | 0x8000, &ip6),
            attr(CTA_TUPLE_PROTO | 0x8000, &proto),
        ]
        .concat();
        assert_eq!(tuple(&t6).unwrap().dst, "[fd00::2]:5001".parse().unwrap());
    }

    fn entry(proto: u8, client: &str, to: &str, from: &str) -> (Tuple, Tuple) {
        let (client, to, from) = (client.parse().unwrap(), to.parse().unwrap(), from.parse().unwrap());
        (
            Tuple {
                src: client,
                dst: to,
                proto,
            },
            Tuple {
                src: from,
                dst: client,
                proto,
            },
        )
    }

    #[test]
    fn stale_means_udp_to_the_service_answered_by_no_serving_endpoint() {
        let serving: HashSet<SocketAddr> = ["10.244.1.2:5001".parse().unwrap()].into();
        let mut svc = UdpServices::default();
        let addresses = ["10.96.0.10:5001".parse().unwrap(), "172.30.0.10:5001".parse().unwrap()];
        svc.add(&addresses, 30001, IpFamily::Ipv4, &serving);
        // The IPv6 proxier's, as a dual-stack lab has them.
        let serving6: HashSet<SocketAddr> = ["[fd00:5b1a::af4:102]:5001".parse().unwrap()].into();
        let addresses6 = ["[fd00:5b1a::a60:a]:5001".parse().unwrap()];
        svc.add(&addresses6, 30001, IpFamily::Ipv6, &serving6);
        assert_eq!(svc.families(), [IpFamily::Ipv4, IpFamily::Ipv6]);
        let udp = libc::IPPROTO_UDP as u8;
        let stale = |(o, r): (Tuple, Tuple)| svc.is_stale(&o, &r);
        // To the ClusterIP or the LB IP, answered by the serving endpoint: kept.
        assert!(!stale(entry(
            udp,
            "10.244.2.2:40000",
            "10.96.0.10:5001",
            "10.244.1.2:5001"
        )));
        assert!(!stale(entry(
            udp,
            "172.31.0.2:40000",
            "172.30.0.10:5001",
            "10.244.1.2:5001"
        )));
        // Answered by an endpoint that is gone, or by a port it does not serve: stale.
        assert!(stale(entry(
            udp,
            "10.244.2.2:40000",
            "10.96.0.10:5001",
            "10.244.3.2:5001"
        )));
        assert!(stale(entry(
            udp,
            "10.244.2.2:40000",
            "10.96.0.10:5001",
            "10.244.1.2:6000"
        )));
        // Any address at the nodePort.
        assert!(stale(entry(
            udp,
            "172.31.0.2:40000",
            "172.31.0.13:30001",
            "10.244.3.2:5001"
        )));
        assert!(!stale(entry(
            udp,
            "172.31.0.2:40000",
            "172.31.0.13:30001",
            "10.244.1.2:5001"
        )));
        // Made before any endpoint existed: the reply was the Service address itself.
        assert!(stale(entry(
            udp,
            "10.244.2.2:40000",
            "10.96.0.10:5001",
            "10.96.0.10:5001"
        )));
        // TCP, or another destination: never.
        let tcp = libc::IPPROTO_TCP as u8;
        assert!(!stale(entry(
            tcp,
            "10.244.2.2:40000",
            "10.96.0.10:5001",
            "10.244.3.2:5001"
        )));
        assert!(!stale(entry(udp, "10.244.2.2:40000", "10.96.0.10:53", "10.244.3.2:53")));
        // IPv6: kept when its IPv6 endpoint answers, stale otherwise, at the nodePort too.
        let c6 = "[fd00:5b1a::af4:202]:40000";
        assert!(!stale(entry(
            udp,
            c6,
            "[fd00:5b1a::a60:a]:5001",
            "[fd00:5b1a::af4:102]:5001"
        )));
        assert!(stale(entry(
            udp,
            c6,
            "[fd00:5b1a::a60:a]:5001",
            "[fd00:5b1a::af4:302]:5001"
        )));
        assert!(stale(entry(
            udp,
            c6,
            "[fd00:5b1a::ac1f:d]:30001",
            "[fd00:5b1a::af4:302]:5001"
        )));
        assert!(!stale(entry(
            udp,
            c6,
            "[fd00:5b1a::ac1f:d]:30001",
            "[fd00:5b1a::af4:102]:5001"
        )));
        assert!(!stale(entry(
            udp,
            "10.244.2.2:40000",
            "10.244.3.2:5001",
            "10.244.3.2:5001"
        )));
        // No serving endpoint left: everything to the Service is stale (not skipped as in v1.34).
        let mut none = UdpServices::default();
        none.add(&addresses, 30001, IpFamily::Ipv4, &HashSet::new());
        let (o, r) = entry(udp, "10.244.2.2:40000", "10.96.0.10:5001", "10.244.1.2:5001");
        assert!(none.is_stale(&o, &r));
    }
}
