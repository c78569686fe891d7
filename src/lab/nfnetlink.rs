//! nfnetlink, spoken directly: the message framing shared by the conntrack cleanup
//! ([`super::conntrack`], ctnetlink), the listing of a node's nftables objects (nf_tables) and
//! the pods' addresses and routes ([`super::rtnetlink`], which reuses the socket and attributes).
//! Sockets belong to the namespace of the thread that opens them: open them on a thread inside
//! the node's namespace ([`super::netns::in_netns`]).

use anyhow::{Result, bail};

// Netlink's ABI numbers (linux/netlink.h, linux/netfilter/nfnetlink.h), written here so the
// parsers build on every platform.
pub(super) const NETLINK_ROUTE: libc::c_int = 0;
const NETLINK_NETFILTER: libc::c_int = 12;
pub(super) const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
pub(super) const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_TYPE_MASK: u16 = 0x3fff;
pub(super) const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
pub(super) const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETSET: u16 = 10;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;

pub(super) struct Socket(libc::c_int);

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
    pub(super) fn open() -> Result<Socket> {
        Self::open_protocol(NETLINK_NETFILTER)
    }

    pub(super) fn open_protocol(protocol: libc::c_int) -> Result<Socket> {
        // SAFETY: plain socket(2); the fd is owned by the returned Socket.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
        if fd < 0 {
            bail!("netlink socket: {}", std::io::Error::last_os_error());
        }
        Ok(Socket(fd))
    }

    pub(super) fn send(&self, msg: &[u8]) -> Result<()> {
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
            bail!("nfnetlink send: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub(super) fn recv(&self, buf: &mut [u8]) -> Result<usize> {
        // SAFETY: buf is a valid writable buffer of buf.len() bytes.
        let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            bail!("nfnetlink recv: {}", std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// Netlink is Linux's; `require_host` refuses the lab before anything gets here.
#[cfg(not(target_os = "linux"))]
impl Socket {
    pub(super) fn open() -> Result<Socket> {
        bail!("nfnetlink needs Linux")
    }

    pub(super) fn open_protocol(_protocol: libc::c_int) -> Result<Socket> {
        bail!("netlink needs Linux")
    }

    pub(super) fn send(&self, _msg: &[u8]) -> Result<()> {
        bail!("nfnetlink needs Linux")
    }

    pub(super) fn recv(&self, _buf: &mut [u8]) -> Result<usize> {
        bail!("nfnetlink needs Linux")
    }
}

pub(super) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One request: the netlink header, the nfgenmsg (`family`, version 0) and `payload`.
pub(super) fn message(subsys: u16, kind: u16, flags: u16, seq: u32, family: u8, payload: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + payload.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((subsys << 8) | kind).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version, res_id (big endian).
    m.extend_from_slice(&[family, 0, 0, 0]);
    m.extend_from_slice(payload);
    m
}

/// A netlink attribute: length, type, payload, padded to 4 bytes.
pub(super) fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(align4(4 + payload.len()));
    a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(payload);
    a.resize(align4(a.len()), 0);
    a
}

/// Netlink attributes of `data`: (type without flags, payload, whole attribute).
pub(super) fn attrs(data: &[u8]) -> Vec<(u16, &[u8], &[u8])> {
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

pub(super) fn find(data: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(data).into_iter().find(|(k, _, _)| *k == kind).map(|(_, p, _)| p)
}

/// A string attribute (NUL-terminated on the wire).
fn string(data: &[u8], kind: u16) -> Option<&str> {
    let b = find(data, kind)?;
    std::str::from_utf8(b.split(|&c| c == 0).next()?).ok()
}

/// Sends a dump request and calls `each` with the attributes (after the nfgenmsg) of every
/// message of the answer.
pub(super) fn dump(
    sock: &Socket,
    subsys: u16,
    kind: u16,
    family: u8,
    payload: &[u8],
    mut each: impl FnMut(&[u8]),
) -> Result<()> {
    sock.send(&message(subsys, kind, NLM_F_REQUEST | NLM_F_DUMP, 1, family, payload))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = sock.recv(&mut buf)?;
        let mut off = 0;
        while off + NLMSG_HDRLEN <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
            let msg_kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
            if len < NLMSG_HDRLEN || off + len > n {
                bail!("nfnetlink: malformed message");
            }
            match msg_kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let code = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().expect("4 bytes"));
                    if code != 0 {
                        bail!("nfnetlink dump: {}", std::io::Error::from_raw_os_error(-code));
                    }
                }
                _ if len >= NLMSG_HDRLEN + NFGENMSG_LEN => each(&buf[off + NLMSG_HDRLEN + NFGENMSG_LEN..off + len]),
                _ => {}
            }
            off += align4(len);
        }
    }
}

/// The names of the chains and of the sets and maps of table `ip <table>` in this namespace
/// (nothing when the table does not exist). Names only: `nft list chains` would fetch every
/// rule and every set element first (nft 1.0 fills its whole cache), which costs a node's
/// sync as much as writing half its rules.
pub(super) fn nft_objects(table: &str, family: crate::service::IpFamily) -> Result<(Vec<String>, Vec<String>)> {
    let sock = Socket::open()?;
    // NFPROTO_IPV4 / NFPROTO_IPV6: the `ip` or `ip6` table of that name.
    let family = match family {
        crate::service::IpFamily::Ipv4 => libc::AF_INET as u8,
        crate::service::IpFamily::Ipv6 => libc::AF_INET6 as u8,
    };
    let mut chains = Vec::new();
    dump(&sock, NFNL_SUBSYS_NFTABLES, NFT_MSG_GETCHAIN, family, &[], |m| {
        if string(m, NFTA_CHAIN_TABLE) == Some(table)
            && let Some(name) = string(m, NFTA_CHAIN_NAME)
        {
            chains.push(name.to_string());
        }
    })?;
    let mut name = table.as_bytes().to_vec();
    name.push(0);
    let mut sets = Vec::new();
    let filter = attr(NFTA_SET_TABLE, &name);
    let found = dump(&sock, NFNL_SUBSYS_NFTABLES, NFT_MSG_GETSET, family, &filter, |m| {
        if string(m, NFTA_SET_TABLE) == Some(table)
            && let Some(name) = string(m, NFTA_SET_NAME)
        {
            sets.push(name.to_string());
        }
    });
    match found {
        Ok(()) => Ok((chains, sets)),
        // Sets of a table that does not exist.
        Err(_) if chains.is_empty() => Ok((chains, Vec::new())),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_with_padding_and_nul_terminated_strings() {
        let data = [
            attr(NFTA_CHAIN_TABLE, b"kube-proxy\0"),
            attr(NFTA_CHAIN_NAME | 0x8000, b"services\0"),
        ]
        .concat();
        assert_eq!(data.len() % 4, 0);
        assert_eq!(string(&data, NFTA_CHAIN_TABLE), Some("kube-proxy"));
        // The nested flag is masked off the type.
        assert_eq!(string(&data, NFTA_CHAIN_NAME), Some("services"));
        assert_eq!(string(&data, 7), None);
    }

    #[test]
    fn a_message_carries_its_length_subsystem_and_family() {
        let m = message(
            NFNL_SUBSYS_NFTABLES,
            NFT_MSG_GETSET,
            NLM_F_REQUEST | NLM_F_DUMP,
            9,
            2,
            &[1, 2, 3, 4],
        );
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize, m.len());
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), (10 << 8) | 10);
        assert_eq!(u16::from_ne_bytes([m[6], m[7]]), 0x301);
        assert_eq!(m[16], 2);
        assert_eq!(&m[20..], &[1, 2, 3, 4]);
    }
}
