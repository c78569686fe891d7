//! The one wire protocol (README.md, "Wire protocol"): what servers reply and how clients read it.
//!
//! A reply line is `<pod-name> node=<node> zone=<zone> client=<ip:port>`, optionally followed by
//! ` seq=<seq>` when the request was `svclb <session> <seq>`. Peers that only send a bare
//! hostname (mconnect's server, agnhost serve-hostname) are accepted: identity = first token.
//! `stats <session>` asks a server how many requests of a session it received (affinity loss checks).

use std::net::SocketAddr;

/// Longest request a server reads as one: a TCP line without its newline, or a UDP datagram
/// without trailing whitespace. A longer one is not a request (not counted, not a `stats` query):
/// this caps a session name below 256 bytes and so bounds what a server keeps per session.
pub const MAX_REQUEST: usize = 256;

/// The HTTP header in which a server names itself on `/bytes`: its reply line.
pub const BACKEND_HEADER: &str = "x-svclb-backend";

/// Who a server says it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    pub name: String,
    pub node: String,
    pub zone: String,
}

/// A client address as a server reports it: IPv4-mapped IPv6 addresses are shown as IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl Identity {
    /// The reply line for a peer at `client`, without the trailing newline.
    pub fn line(&self, client: SocketAddr) -> String {
        format!(
            "{} node={} zone={} client={}",
            self.name,
            self.node,
            self.zone,
            canonical(client)
        )
    }
}

/// The request's text without trailing whitespace, if it is text of at most [`MAX_REQUEST`] bytes.
fn request_text(request: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(request).ok()?.trim_end();
    (text.len() <= MAX_REQUEST).then_some(text)
}

/// A request `svclb <session> <seq>`: returns the session and the sequence token to echo.
pub fn request(request: &[u8]) -> Option<(&str, &str)> {
    let text = request_text(request)?;
    let mut parts = text.split_ascii_whitespace();
    if parts.next()? != "svclb" {
        return None;
    }
    let session = parts.next()?;
    let seq = parts.next()?;
    (parts.next().is_none() && seq.bytes().all(|b| b.is_ascii_digit())).then_some((session, seq))
}

/// A request `stats <session>`: how many `svclb <session> <seq>` requests this server received.
/// The reply is `<pod-name> session=<session> received=<n>`.
pub fn stats_request(request: &[u8]) -> Option<&str> {
    let text = request_text(request)?;
    let mut parts = text.split_ascii_whitespace();
    if parts.next()? != "stats" {
        return None;
    }
    let session = parts.next()?;
    parts.next().is_none().then_some(session)
}

/// The reply to `stats <session>`, without the trailing newline.
pub fn stats_line(pod: &str, session: &str, received: u64) -> String {
    format!("{pod} session={session} received={received}")
}

/// A parsed reply. Fields other than `name` are empty/None when the peer did not send them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reply<'a> {
    pub name: &'a str,
    pub node: Option<&'a str>,
    pub zone: Option<&'a str>,
    pub client: Option<&'a str>,
    pub seq: Option<u64>,
}

/// Parses the first line of a reply (or a bare hostname without newline).
/// Returns `None` when there is no printable identity token.
pub fn parse_reply(data: &[u8]) -> Option<Reply<'_>> {
    let end = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let line = std::str::from_utf8(&data[..end]).ok()?.trim();
    let mut tokens = line.split_ascii_whitespace();
    let name = tokens.next()?;
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let mut reply = Reply {
        name,
        ..Reply::default()
    };
    for token in tokens {
        match token.split_once('=') {
            Some(("node", v)) => reply.node = Some(v),
            Some(("zone", v)) => reply.zone = Some(v),
            Some(("client", v)) => reply.client = Some(v),
            Some(("seq", v)) => reply.seq = v.parse().ok(),
            _ => {}
        }
    }
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_line_round_trips() {
        let id = Identity {
            name: "tserver-abc".into(),
            node: "node1".into(),
            zone: "zone-a".into(),
        };
        let line = id.line("[::ffff:10.0.0.7]:40000".parse().unwrap());
        assert_eq!(line, "tserver-abc node=node1 zone=zone-a client=10.0.0.7:40000");
        let with_seq = format!("{line} seq=42\n");
        let r = parse_reply(with_seq.as_bytes()).unwrap();
        assert_eq!(r.name, "tserver-abc");
        assert_eq!(r.node, Some("node1"));
        assert_eq!(r.zone, Some("zone-a"));
        assert_eq!(r.client, Some("10.0.0.7:40000"));
        assert_eq!(r.seq, Some(42));
        // An IPv6 client is `[addr]:port`, and parses back as a socket address.
        let line6 = id.line("[fd00:5b1a::ac1f:2]:40000".parse().unwrap());
        assert!(line6.ends_with(" client=[fd00:5b1a::ac1f:2]:40000"), "{line6}");
        let r6 = parse_reply(line6.as_bytes()).unwrap();
        let back: std::net::SocketAddr = r6.client.unwrap().parse().unwrap();
        assert_eq!(back.to_string(), "[fd00:5b1a::ac1f:2]:40000");
    }

    #[test]
    fn bare_hostname_without_newline() {
        let r = parse_reply(b"mconnect-deployment-5897ffb75c-dbgt5").unwrap();
        assert_eq!(r.name, "mconnect-deployment-5897ffb75c-dbgt5");
        assert_eq!(r.node, None);
        assert_eq!(parse_reply(b"  \n"), None);
        assert_eq!(parse_reply(b"\xff\xfe"), None);
    }

    #[test]
    fn requests_only_for_svclb_requests() {
        assert_eq!(request(b"svclb s1 17\n"), Some(("s1", "17")));
        assert_eq!(request(b"svclb s1 x"), None);
        assert_eq!(request(b"hostname"), None);
        assert_eq!(request(b"svclb s1 1 2"), None);
        assert_eq!(stats_request(b"stats s1\n"), Some("s1"));
        assert_eq!(stats_request(b"stats"), None);
        assert_eq!(stats_request(b"stats s1 2"), None);
    }

    #[test]
    fn requests_longer_than_the_cap_are_not_requests() {
        let longest = format!("svclb {} 7", "n".repeat(MAX_REQUEST - 8));
        assert_eq!(longest.len(), MAX_REQUEST);
        assert!(request(format!("{longest}\r\n").as_bytes()).is_some());
        let over = format!("svclb {} 7", "n".repeat(MAX_REQUEST - 7));
        assert_eq!(request(over.as_bytes()), None);
        let stats = format!("stats {}", "n".repeat(MAX_REQUEST - 5));
        assert_eq!(stats_request(stats.as_bytes()), None);
        assert!(stats_request(&stats.as_bytes()[..MAX_REQUEST]).is_some());
    }
}
