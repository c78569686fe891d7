//! rtnetlink, spoken directly: a new pod's loopback, address and default route, set from a
//! thread inside the pod's namespace. `ip -n POD` would cost a process and a copy of the
//! whole mount namespace per pod (it unshares one to remount /sys), which grows with every
//! namespace mounted under /run/netns: with 2,000 pods that was 19 s of a `lab up`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result, bail};

use super::nfnetlink::{NETLINK_ROUTE, NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, NLMSG_HDRLEN, Socket, attr};

// rtnetlink's ABI numbers (linux/rtnetlink.h, linux/if_addr.h, linux/if.h).
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const RTM_NEWNEIGH: u16 = 28;
const NUD_PERMANENT: u16 = 0x80;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFF_UP: u32 = 0x1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
const RTNH_F_ONLINK: u32 = 0x4;
const LOOPBACK_INDEX: u32 = 1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// ifaddrmsg flag: no duplicate address detection (`ip addr add ... nodad`).
const IFA_F_NODAD: u8 = 0x02;

/// What `ip link set lo up; ip addr add IP/32 dev eth0; ip link set eth0 up; ip neigh add
/// GATEWAY lladdr MAC dev eth0 nud permanent; ip route add default via GATEWAY dev eth0 onlink`
/// does, in the calling thread's namespace; with `v6` (address, link-local gateway) the same in
/// IPv6 (`ip addr add IP6/128 dev eth0 nodad`, the gateway's neighbour entry with the same MAC,
/// `ip -6 route add default via GATEWAY6 dev eth0`).
pub(super) fn configure_pod(
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    gateway_mac: [u8; 6],
    v6: Option<(Ipv6Addr, Ipv6Addr)>,
) -> Result<()> {
    let sock = Socket::open_protocol(NETLINK_ROUTE)?;
    let eth0 = index_of(c"eth0")?;
    request(&sock, 1, RTM_NEWLINK, 0, &link_up(LOOPBACK_INDEX)).context("link set lo up")?;
    request(
        &sock,
        2,
        RTM_NEWADDR,
        NLM_F_CREATE | NLM_F_EXCL,
        &address(eth0, ip.into()),
    )
    .with_context(|| format!("addr add {ip}/32 dev eth0"))?;
    if let Some((ip6, _)) = v6 {
        request(
            &sock,
            6,
            RTM_NEWADDR,
            NLM_F_CREATE | NLM_F_EXCL,
            &address(eth0, ip6.into()),
        )
        .with_context(|| format!("addr add {ip6}/128 dev eth0 nodad"))?;
    }
    request(&sock, 3, RTM_NEWLINK, 0, &link_up(eth0)).context("link set eth0 up")?;
    request(
        &sock,
        4,
        RTM_NEWNEIGH,
        NLM_F_CREATE | NLM_F_EXCL,
        &neighbour(eth0, gateway.into(), gateway_mac),
    )
    .with_context(|| format!("neigh add {gateway} dev eth0"))?;
    request(
        &sock,
        5,
        RTM_NEWROUTE,
        NLM_F_CREATE | NLM_F_EXCL,
        &default_route(gateway.into(), eth0),
    )
    .with_context(|| format!("route add default via {gateway} dev eth0 onlink"))?;
    if let Some((_, gw6)) = v6 {
        request(
            &sock,
            7,
            RTM_NEWNEIGH,
            NLM_F_CREATE | NLM_F_EXCL,
            &neighbour(eth0, gw6.into(), gateway_mac),
        )
        .with_context(|| format!("neigh add {gw6} dev eth0"))?;
        request(
            &sock,
            8,
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_EXCL,
            &default_route(gw6.into(), eth0),
        )
        .with_context(|| format!("route add default via {gw6} dev eth0"))?;
    }
    Ok(())
}

/// The address family and the bytes of `ip`.
fn family_and_bytes(ip: IpAddr) -> (u8, Vec<u8>) {
    match ip {
        IpAddr::V4(a) => (AF_INET, a.octets().to_vec()),
        IpAddr::V6(a) => (AF_INET6, a.octets().to_vec()),
    }
}

fn index_of(name: &std::ffi::CStr) -> Result<u32> {
    // SAFETY: a NUL-terminated name; the lookup is an ioctl in the thread's namespace.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => bail!("no interface {name:?}: {}", std::io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// ifinfomsg: family, pad, type, index, flags, change.
fn link_up(index: u32) -> Vec<u8> {
    let mut m = vec![0u8, 0, 0, 0];
    m.extend_from_slice(&index.to_ne_bytes());
    m.extend_from_slice(&IFF_UP.to_ne_bytes());
    m.extend_from_slice(&IFF_UP.to_ne_bytes());
    m
}

/// ifaddrmsg (family, prefix length, flags, scope, index) for `ip/32` (IPv6: `/128 nodad`),
/// then its attributes.
fn address(index: u32, ip: IpAddr) -> Vec<u8> {
    let (family, bytes) = family_and_bytes(ip);
    let (len, flags) = if ip.is_ipv4() { (32, 0) } else { (128, IFA_F_NODAD) };
    let mut m = vec![family, len, flags, RT_SCOPE_UNIVERSE];
    m.extend_from_slice(&index.to_ne_bytes());
    m.extend(attr(IFA_LOCAL, &bytes));
    m.extend(attr(IFA_ADDRESS, &bytes));
    m
}

/// ndmsg (family, padding, index, state, flags, type) for a permanent entry, then its attributes.
fn neighbour(index: u32, ip: IpAddr, mac: [u8; 6]) -> Vec<u8> {
    let (family, bytes) = family_and_bytes(ip);
    let mut m = vec![family, 0, 0, 0];
    m.extend_from_slice(&index.to_ne_bytes());
    m.extend_from_slice(&NUD_PERMANENT.to_ne_bytes());
    m.extend_from_slice(&[0, 0]);
    m.extend(attr(NDA_DST, &bytes));
    m.extend(attr(NDA_LLADDR, &mac));
    m
}

/// rtmsg (family, dst/src length, tos, table, protocol, scope, type, flags) for the default
/// route through `gateway`, on-link on interface `index`.
fn default_route(gateway: IpAddr, index: u32) -> Vec<u8> {
    let (family, bytes) = family_and_bytes(gateway);
    let mut m = vec![
        family,
        0,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
    ];
    m.extend_from_slice(&RTNH_F_ONLINK.to_ne_bytes());
    m.extend(attr(RTA_GATEWAY, &bytes));
    m.extend(attr(RTA_OIF, &index.to_ne_bytes()));
    m
}

fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + payload.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(payload);
    m
}

/// Sends one request and waits for its acknowledgement.
fn request(sock: &Socket, seq: u32, kind: u16, flags: u16, payload: &[u8]) -> Result<()> {
    sock.send(&message(kind, flags, seq, payload))?;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = sock.recv(&mut buf)?;
        if n < NLMSG_HDRLEN + 4 {
            bail!("rtnetlink: short answer");
        }
        let answer_seq = u32::from_ne_bytes(buf[8..12].try_into().expect("4 bytes"));
        if u16::from_ne_bytes([buf[4], buf[5]]) != NLMSG_ERROR || answer_seq != seq {
            continue;
        }
        return match i32::from_ne_bytes(buf[16..20].try_into().expect("4 bytes")) {
            0 => Ok(()),
            code => Err(std::io::Error::from_raw_os_error(-code).into()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::nfnetlink::attrs;

    #[test]
    fn an_address_request_is_ifaddrmsg_then_local_and_address() {
        let m = message(
            RTM_NEWADDR,
            NLM_F_CREATE | NLM_F_EXCL,
            7,
            &address(3, Ipv4Addr::new(10, 244, 1, 2).into()),
        );
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize, m.len());
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), RTM_NEWADDR);
        assert_eq!(u16::from_ne_bytes([m[6], m[7]]), 0x605);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(&m[16..20], &[AF_INET, 32, 0, 0]);
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 3);
        let a = attrs(&m[24..]);
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].0, a[0].1), (IFA_LOCAL, &[10u8, 244, 1, 2][..]));
        assert_eq!((a[1].0, a[1].1), (IFA_ADDRESS, &[10u8, 244, 1, 2][..]));
    }

    #[test]
    fn the_default_route_is_on_link_through_the_gateway() {
        let r = default_route(Ipv4Addr::new(169, 254, 1, 1).into(), 3);
        assert_eq!(&r[..8], &[AF_INET, 0, 0, 0, 254, 3, 0, 1]);
        assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()), RTNH_F_ONLINK);
        let a = attrs(&r[12..]);
        assert_eq!((a[0].0, a[0].1), (RTA_GATEWAY, &[169u8, 254, 1, 1][..]));
        assert_eq!((a[1].0, a[1].1), (RTA_OIF, &3u32.to_ne_bytes()[..]));
    }

    #[test]
    fn a_neighbour_is_permanent_with_its_address_and_mac() {
        let n = neighbour(3, Ipv4Addr::new(169, 254, 1, 1).into(), [0x0e, 0x5c, 10, 244, 1, 2]);
        assert_eq!(&n[..4], &[AF_INET, 0, 0, 0]);
        assert_eq!(u32::from_ne_bytes(n[4..8].try_into().unwrap()), 3);
        assert_eq!(u16::from_ne_bytes([n[8], n[9]]), NUD_PERMANENT);
        let a = attrs(&n[12..]);
        assert_eq!((a[0].0, a[0].1), (NDA_DST, &[169u8, 254, 1, 1][..]));
        assert_eq!((a[1].0, a[1].1), (NDA_LLADDR, &[0x0eu8, 0x5c, 10, 244, 1, 2][..]));
    }

    #[test]
    fn an_ipv6_address_is_a_nodad_128_and_its_gateway_link_local() {
        let ip: Ipv6Addr = "fd00:5b1a::af4:102".parse().unwrap();
        let m = address(3, ip.into());
        assert_eq!(&m[..4], &[AF_INET6, 128, IFA_F_NODAD, 0]);
        let a = attrs(&m[8..]);
        assert_eq!((a[0].0, a[0].1), (IFA_LOCAL, &ip.octets()[..]));
        let gw: Ipv6Addr = "fe80::1".parse().unwrap();
        let r = default_route(gw.into(), 3);
        assert_eq!(r[0], AF_INET6);
        assert_eq!(attrs(&r[12..])[0].1, &gw.octets()[..]);
        assert_eq!(neighbour(3, gw.into(), [0; 6])[0], AF_INET6);
    }

    #[test]
    fn link_up_sets_and_changes_only_the_up_flag() {
        let l = link_up(1);
        assert_eq!(l.len(), 16);
        assert_eq!(u32::from_ne_bytes(l[4..8].try_into().unwrap()), 1);
        assert_eq!(u32::from_ne_bytes(l[8..12].try_into().unwrap()), IFF_UP);
        assert_eq!(u32::from_ne_bytes(l[12..16].try_into().unwrap()), IFF_UP);
    }
}
