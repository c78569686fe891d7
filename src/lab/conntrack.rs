//! Stale UDP conntrack entries, cleared the way kube-proxy clears them after an endpoint
//! goes away (`conntrack -D -p udp --dst-nat <endpoint>`), spoken directly over ctnetlink
//! so the lab needs no `conntrack` binary. Run it on a thread inside the node's namespace
//! (netlink sockets belong to the namespace they are created in).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use anyhow::{Result, bail};

// Netlink's ABI numbers (linux/netlink.h), written here so the parser builds on every platform.
const NETLINK_NETFILTER: libc::c_int = 12;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

struct Socket(libc::c_int);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: closing the fd this struct owns.
        unsafe {
            libc::close(self.0);
        }
    }
}

#[cfg(target_os = "linux")]
impl Socket {
    fn open() -> Result<Socket> {
        // SAFETY: plain socket(2); the fd is owned by the returned Socket.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_NETFILTER) };
        if fd < 0 {
            bail!("ctnetlink socket: {}", std::io::Error::last_os_error());
        }
        Ok(Socket(fd))
    }

    fn send(&self, msg: &[u8]) -> Result<()> {
        // SAFETY: msg is a valid buffer; the kernel is the default destination (pid 0).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let n = unsafe {
            libc::sendto(
                self.0,
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            bail!("ctnetlink send: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> Result<usize> {
        // SAFETY: buf is a valid writable buffer of buf.len() bytes.
        let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            bail!("ctnetlink recv: {}", std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// Netlink is Linux's; `require_host` refuses the lab before anything gets here.
#[cfg(not(target_os = "linux"))]
impl Socket {
    fn open() -> Result<Socket> {
        bail!("ctnetlink needs Linux")
    }

    fn send(&self, _msg: &[u8]) -> Result<()> {
        bail!("ctnetlink needs Linux")
    }

    fn recv(&self, _buf: &mut [u8]) -> Result<usize> {
        bail!("ctnetlink needs Linux")
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + payload.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | kind).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version, res_id (big endian).
    m.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
    m.extend_from_slice(payload);
    m
}

/// Netlink attributes of `data`: (type without flags, payload, whole attribute).
fn attrs(data: &[u8]) -> Vec<(u16, &[u8], &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 4 <= data.len() {
        let len = u16::from_ne_bytes([data[off], data[off + 1]]) as usize;
        let kind = u16::from_ne_bytes([data[off + 2], data[off + 3]]) & NLA_TYPE_MASK;
        if len < 4 || off + len > data.len() {
            break;
        }
        out.push((kind, &data[off + 4..off + len], &data[off..off + len]));
        off += align4(len);
    }
    out
}

fn find(data: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(data).into_iter().find(|(k, _, _)| *k == kind).map(|(_, p, _)| p)
}

/// (source, destination, L4 protocol) of a CTA_TUPLE_* payload.
fn tuple(data: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u8)> {
    let ip = find(data, CTA_TUPLE_IP)?;
    let v4 = |k| -> Option<Ipv4Addr> {
        let b = find(ip, k)?;
        Some(Ipv4Addr::new(*b.first()?, *b.get(1)?, *b.get(2)?, *b.get(3)?))
    };
    let proto = *find(find(data, CTA_TUPLE_PROTO)?, CTA_PROTO_NUM)?.first()?;
    Some((v4(CTA_IP_V4_SRC)?, v4(CTA_IP_V4_DST)?, proto))
}

/// Deletes the UDP conntrack entries of this namespace that were DNATed to one of
/// `endpoints` (their reply comes from the endpoint, their original destination was a
/// Service address). Returns how many were deleted.
pub fn delete_udp_to(endpoints: &HashSet<Ipv4Addr>) -> Result<usize> {
    if endpoints.is_empty() {
        return Ok(0);
    }
    let sock = Socket::open()?;
    let flags = NLM_F_REQUEST | NLM_F_DUMP;
    sock.send(&message(IPCTNL_MSG_CT_GET, flags, 1, &[]))?;
    let mut stale: Vec<Vec<u8>> = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    'dump: loop {
        let n = sock.recv(&mut buf)?;
        let mut off = 0;
        while off + NLMSG_HDRLEN <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
            if len < NLMSG_HDRLEN || off + len > n {
                bail!("ctnetlink: malformed message");
            }
            match kind {
                NLMSG_DONE => break 'dump,
                NLMSG_ERROR => {
                    let code = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().expect("4 bytes"));
                    if code != 0 {
                        bail!("ctnetlink dump: {}", std::io::Error::from_raw_os_error(-code));
                    }
                }
                _ => {
                    let body = &buf[off + NLMSG_HDRLEN + NFGENMSG_LEN..off + len];
                    let all = attrs(body);
                    let orig = all.iter().find(|(k, _, _)| *k == CTA_TUPLE_ORIG);
                    let reply = all.iter().find(|(k, _, _)| *k == CTA_TUPLE_REPLY);
                    if let (Some((_, o, whole)), Some((_, r, _))) = (orig, reply)
                        && let (Some((_, odst, proto)), Some((rsrc, _, _))) = (tuple(o), tuple(r))
                        && proto == libc::IPPROTO_UDP as u8
                        && endpoints.contains(&rsrc)
                        && odst != rsrc
                    {
                        stale.push(whole.to_vec());
                    }
                }
            }
            off += align4(len);
        }
    }
    let mut deleted = 0;
    for (i, orig) in stale.iter().enumerate() {
        let flags = NLM_F_REQUEST | NLM_F_ACK;
        sock.send(&message(IPCTNL_MSG_CT_DELETE, flags, 2 + i as u32, orig))?;
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
    use super::*;

    #[test]
    fn parses_nested_tuples() {
        // CTA_TUPLE_ORIG { CTA_TUPLE_IP { SRC 10.244.1.2, DST 10.96.0.10 }, CTA_TUPLE_PROTO { NUM 17 } }
        let mut ip = Vec::new();
        for (k, a) in [(CTA_IP_V4_SRC, [10, 244, 1, 2]), (CTA_IP_V4_DST, [10, 96, 0, 10])] {
            ip.extend_from_slice(&8u16.to_ne_bytes());
            ip.extend_from_slice(&k.to_ne_bytes());
            ip.extend_from_slice(&a);
        }
        let mut proto = Vec::new();
        proto.extend_from_slice(&5u16.to_ne_bytes());
        proto.extend_from_slice(&CTA_PROTO_NUM.to_ne_bytes());
        proto.extend_from_slice(&[17, 0, 0, 0]);
        let mut t = Vec::new();
        t.extend_from_slice(&((4 + ip.len()) as u16).to_ne_bytes());
        t.extend_from_slice(&(CTA_TUPLE_IP | 0x8000).to_ne_bytes());
        t.extend_from_slice(&ip);
        t.extend_from_slice(&(4 + 5u16).to_ne_bytes());
        t.extend_from_slice(&(CTA_TUPLE_PROTO | 0x8000).to_ne_bytes());
        t.extend_from_slice(&proto);
        assert_eq!(
            tuple(&t),
            Some((Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 96, 0, 10), 17))
        );
    }
}
