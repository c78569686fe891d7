//! The load generator: mconnect-style connection storms over TCP or UDP.
//!
//! Memory does not grow with the number of connections: every connection is folded into a few
//! sharded tallies (per-backend counters, failure counters, one latency histogram per shard).

mod connect;
mod srcaddr;

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, UdpSocket};
use tokio::time::{Instant, timeout_at};

pub use connect::{connect as connect_tcp, connect_to as connect_tcp_to};
pub use srcaddr::SourcePicker;

use crate::wire::{BACKEND_HEADER, parse_reply};

/// Transport of a storm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One storm: `conns` connections to `target`, at most `parallel` in flight.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StormConfig {
    pub target: SocketAddr,
    pub proto: Proto,
    pub conns: u64,
    pub parallel: usize,
    /// Connections per second; `None` is as fast as possible.
    pub rate: Option<f64>,
    /// Per connection: connect + first reply.
    pub timeout: Duration,
    /// Whole run; no new connection starts after it.
    pub deadline: Option<Duration>,
    pub srccidr: Option<IpNet>,
    /// Close with FIN instead of RST (SO_LINGER 0 is the default; see docs/spread.md).
    pub graceful_close: bool,
    /// Session token in UDP requests `svclb <session> <seq>`.
    pub session: String,
    /// TCP to the HTTP port: each connection fetches this many bytes (`GET /bytes?n=N`), and
    /// the bytes received are counted per backend (the server names itself in a header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_bytes: Option<u64>,
    /// UDP: datagram session `i` binds source port `first + i % count` instead of one the
    /// kernel picks, so a caller can keep a run from reusing a 5-tuple whose conntrack entry an
    /// earlier storm left (docs/matrix.md). A port already taken falls back to the kernel's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_ports: Option<PortRange>,
}

/// Source ports `first .. first + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    pub first: u16,
    pub count: u16,
}

impl PortRange {
    /// The port of session `i`.
    pub fn nth(self, i: u64) -> u16 {
        let offset = i % u64::from(self.count.max(1));
        self.first.saturating_add(u16::try_from(offset).unwrap_or(0))
    }
}

/// Why a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    Refused,
    Timeout,
    Reset,
    Unreachable,
    Read,
    Unparsable,
    Other,
}

/// Failed connections by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failures {
    pub refused: u64,
    pub timeout: u64,
    pub reset: u64,
    pub unreachable: u64,
    /// Closed or errored before a reply arrived.
    pub read: u64,
    pub unparsable: u64,
    pub other: u64,
}

impl Failures {
    pub fn total(&self) -> u64 {
        self.refused + self.timeout + self.reset + self.unreachable + self.read + self.unparsable + self.other
    }

    /// Counts one failure of `kind`.
    pub fn add(&mut self, kind: FailKind) {
        *match kind {
            FailKind::Refused => &mut self.refused,
            FailKind::Timeout => &mut self.timeout,
            FailKind::Reset => &mut self.reset,
            FailKind::Unreachable => &mut self.unreachable,
            FailKind::Read => &mut self.read,
            FailKind::Unparsable => &mut self.unparsable,
            FailKind::Other => &mut self.other,
        } += 1;
    }

    pub fn merge(&mut self, o: &Failures) {
        self.refused += o.refused;
        self.timeout += o.timeout;
        self.reset += o.reset;
        self.unreachable += o.unreachable;
        self.read += o.read;
        self.unparsable += o.unparsable;
        self.other += o.other;
    }

    /// `(kind, count)` for every kind, in a fixed order.
    pub fn kinds(&self) -> [(&'static str, u64); 7] {
        [
            ("refused", self.refused),
            ("timeout", self.timeout),
            ("reset", self.reset),
            ("unreachable", self.unreachable),
            ("read", self.read),
            ("unparsable", self.unparsable),
            ("other", self.other),
        ]
    }
}

/// What answered, how often.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendCount {
    pub name: String,
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub zone: String,
    pub count: u64,
    /// Response bytes received from it (storms that fetch bytes).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Why a storm ended before all connections were made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stop {
    Interrupted,
    Deadline,
}

/// The aggregate result of a storm.
#[derive(Debug)]
pub struct Outcome {
    /// Connections started.
    pub attempted: u64,
    pub ok: u64,
    pub failures: Failures,
    /// Sorted by name.
    pub backends: Vec<BackendCount>,
    /// Connect latency (UDP: round-trip time) in microseconds.
    pub latency: Histogram<u64>,
    pub elapsed: Duration,
    pub stopped: Option<Stop>,
}

/// Shared between a running storm and whoever watches or stops it.
#[derive(Debug, Default)]
pub struct Control {
    done: AtomicU64,
    stop: AtomicBool,
    interrupted: AtomicBool,
}

impl Control {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }
    /// Connections finished so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }
    /// Stops starting new connections (Ctrl-C); in-flight ones finish within their timeout.
    pub fn interrupt(&self) {
        self.interrupted.store(true, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
    }
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Latency histogram bounds: 1 µs .. 1 h, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

#[derive(Default)]
struct BackendTally {
    node: Box<str>,
    zone: Box<str>,
    count: u64,
    bytes: u64,
}

struct Tally {
    backends: HashMap<Box<str>, BackendTally>,
    failures: Failures,
    latency: Histogram<u64>,
    ok: u64,
}

impl Tally {
    fn new() -> Self {
        Self {
            backends: HashMap::new(),
            failures: Failures::default(),
            latency: new_histogram(),
            ok: 0,
        }
    }

    /// A connection's result: its latency, the reply naming the backend, the bytes received.
    fn record(&mut self, result: Result<(Duration, &[u8], u64), FailKind>) {
        let (latency, reply, bytes) = match result {
            Ok(r) => r,
            Err(kind) => return self.failures.add(kind),
        };
        let Some(reply) = parse_reply(reply) else {
            return self.failures.add(FailKind::Unparsable);
        };
        self.ok += 1;
        self.latency.saturating_record(latency.as_micros().max(1) as u64);
        match self.backends.get_mut(reply.name) {
            Some(b) => {
                b.count += 1;
                b.bytes += bytes;
            }
            None => {
                self.backends.insert(
                    reply.name.into(),
                    BackendTally {
                        node: reply.node.unwrap_or_default().into(),
                        zone: reply.zone.unwrap_or_default().into(),
                        count: 1,
                        bytes,
                    },
                );
            }
        }
    }
}

/// A connection attempt that cannot go on: the run stops with this error.
struct Fatal(anyhow::Error);

/// Runs one storm to completion (or until stopped) and returns its aggregate.
pub async fn run(cfg: &StormConfig, control: Arc<Control>) -> Result<Outcome> {
    if cfg.conns == 0 {
        bail!("--conns must be at least 1");
    }
    if cfg.fetch_bytes.is_some() && cfg.proto != Proto::Tcp {
        bail!("fetching bytes is HTTP over TCP: not with UDP");
    }
    let picker = cfg
        .srccidr
        .map(|net| SourcePicker::new(net, cfg.target.ip()))
        .transpose()?;
    let parallel = cfg.parallel.clamp(1, usize::try_from(cfg.conns).unwrap_or(usize::MAX));
    let shards: Arc<Vec<Mutex<Tally>>> = Arc::new((0..parallel.min(16)).map(|_| Mutex::new(Tally::new())).collect());
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = cfg.deadline.map(|d| start + d);
    let cfg = Arc::new(cfg.clone());

    let mut workers = tokio::task::JoinSet::new();
    for w in 0..parallel {
        let (cfg, control, next, shards, picker) = (
            cfg.clone(),
            control.clone(),
            next.clone(),
            shards.clone(),
            picker.clone(),
        );
        workers.spawn(async move {
            let shard = &shards[w % shards.len()];
            let mut buf = vec![0u8; if cfg.fetch_bytes.is_some() { HTTP_BUFFER } else { 1024 }];
            loop {
                if control.stopping() {
                    return Ok(());
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= cfg.conns {
                    return Ok(());
                }
                if let Some(rate) = cfg.rate {
                    let at = start + Duration::from_secs_f64(i as f64 / rate);
                    if deadline.is_some_and(|d| at >= d) {
                        control.stop.store(true, Ordering::Relaxed);
                        return Ok(());
                    }
                    tokio::time::sleep_until(at).await;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    control.stop.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                let src = picker.as_ref().map(SourcePicker::pick);
                let result = match (cfg.proto, cfg.fetch_bytes) {
                    (Proto::Tcp, Some(n)) => http_once(&cfg, src, n, &mut buf).await,
                    (Proto::Tcp, None) => tcp_once(&cfg, src, &mut buf).await.map(|(l, n)| (l, n, 0)),
                    (Proto::Udp, _) => udp_once(&cfg, src, i, &mut buf).await.map(|(l, n)| (l, n, 0)),
                };
                let result = match result {
                    Ok(r) => Ok(r),
                    Err(Attempt::Failed(kind)) => Err(kind),
                    Err(Attempt::Fatal(Fatal(e))) => {
                        control.stop.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                };
                shard
                    .lock()
                    .expect("tally lock")
                    .record(result.map(|(lat, n, bytes)| (lat, &buf[..n], bytes)));
                control.done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let mut fatal = None;
    while let Some(res) = workers.join_next().await {
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => fatal = fatal.or(Some(e)),
            Err(e) => fatal = fatal.or(Some(anyhow::anyhow!("storm worker failed: {e}"))),
        }
    }
    if let Some(e) = fatal {
        return Err(e);
    }
    let elapsed = start.elapsed();

    let mut total = Tally::new();
    let mut backends: HashMap<Box<str>, BackendTally> = HashMap::new();
    for shard in shards.iter() {
        let mut shard = shard.lock().expect("tally lock");
        total.ok += shard.ok;
        total.failures.merge(&shard.failures);
        total.latency.add(&shard.latency).expect("histograms share bounds");
        for (name, b) in shard.backends.drain() {
            let entry = backends.entry(name).or_default();
            entry.count += b.count;
            entry.bytes += b.bytes;
            if entry.node.is_empty() {
                entry.node = b.node;
            }
            if entry.zone.is_empty() {
                entry.zone = b.zone;
            }
        }
    }
    let mut backends: Vec<BackendCount> = backends
        .into_iter()
        .map(|(name, b)| BackendCount {
            name: name.into(),
            node: b.node.into(),
            zone: b.zone.into(),
            count: b.count,
            bytes: b.bytes,
        })
        .collect();
    backends.sort_by(|a, b| alphanumeric_sort::compare_str(&a.name, &b.name));
    let attempted = total.ok + total.failures.total();
    let stopped = if control.interrupted.load(Ordering::Relaxed) {
        Some(Stop::Interrupted)
    } else if attempted < cfg.conns {
        Some(Stop::Deadline)
    } else {
        None
    };
    Ok(Outcome {
        attempted,
        ok: total.ok,
        failures: total.failures,
        backends,
        latency: total.latency,
        elapsed,
        stopped,
    })
}

enum Attempt {
    Failed(FailKind),
    Fatal(Fatal),
}

impl From<FailKind> for Attempt {
    fn from(k: FailKind) -> Self {
        Attempt::Failed(k)
    }
}

fn classify(e: &std::io::Error) -> FailKind {
    match e.kind() {
        ErrorKind::ConnectionRefused => FailKind::Refused,
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => FailKind::Reset,
        ErrorKind::TimedOut => FailKind::Timeout,
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => FailKind::Unreachable,
        _ => FailKind::Other,
    }
}

fn bind_error(src: IpAddr, e: std::io::Error, cidr: Option<IpNet>) -> Attempt {
    Attempt::Fatal(Fatal(srcaddr::bind_hint(src, &e, cidr)))
}

/// A TCP socket of the target's family, bound to `src` when given.
fn tcp_socket(cfg: &StormConfig, src: Option<IpAddr>) -> Result<TcpSocket, Attempt> {
    let socket = connect::tcp_socket_for(cfg.target)
        .map_err(|e| Attempt::Fatal(Fatal(anyhow::anyhow!("cannot create a TCP socket: {e}"))))?;
    if let Some(src) = src {
        socket
            .bind(SocketAddr::new(src, 0))
            .map_err(|e| bind_error(src, e, cfg.srccidr))?;
    }
    Ok(socket)
}

async fn tcp_once(cfg: &StormConfig, src: Option<IpAddr>, buf: &mut [u8]) -> Result<(Duration, usize), Attempt> {
    let socket = tcp_socket(cfg, src)?;
    // One timer per connection covers connect and first reply.
    let t0 = Instant::now();
    let attempt = timeout_at(t0 + cfg.timeout, async {
        let mut stream = connect::connect(socket, cfg.target).await.map_err(|e| classify(&e))?;
        let latency = t0.elapsed();
        let n = stream.read(buf).await;
        if !cfg.graceful_close {
            // RST instead of FIN: no TIME_WAIT on the client (docs/spread.md).
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        }
        match n {
            Ok(0) => Err(FailKind::Read),
            Ok(n) => Ok((latency, n)),
            Err(e) => Err(match classify(&e) {
                FailKind::Other => FailKind::Read,
                k => k,
            }),
        }
    })
    .await;
    match attempt {
        Err(_) => Err(FailKind::Timeout.into()),
        Ok(r) => r.map_err(Attempt::from),
    }
}

/// One TCP connection as a storm makes it, for engines that schedule their own connections
/// (`disruption`): connect to `cfg.target`, read the reply into `buf`, close (RST unless
/// `cfg.graceful_close`), all within `cfg.timeout`. The connect latency and the reply's length,
/// or why it failed; `Err` only when no socket can be made at all.
pub async fn tcp_connection(cfg: &StormConfig, buf: &mut [u8]) -> Result<Result<(Duration, usize), FailKind>> {
    match tcp_once(cfg, None, buf).await {
        Ok(r) => Ok(Ok(r)),
        Err(Attempt::Failed(kind)) => Ok(Err(kind)),
        Err(Attempt::Fatal(Fatal(e))) => Err(e),
    }
}

/// Read buffer of a connection that fetches bytes: the response headers must fit in it.
const HTTP_BUFFER: usize = 64 * 1024;

/// A connection that fetches `n` bytes over HTTP/1.1: returns the connect latency, the length of
/// the backend's reply line (copied to the start of `buf`) and the response bytes received
/// (headers and body). The timeout covers the whole exchange.
async fn http_once(
    cfg: &StormConfig,
    src: Option<IpAddr>,
    n: u64,
    buf: &mut [u8],
) -> Result<(Duration, usize, u64), Attempt> {
    use tokio::io::AsyncWriteExt;
    let socket = tcp_socket(cfg, src)?;
    let t0 = Instant::now();
    let attempt = timeout_at(t0 + cfg.timeout, async {
        let mut stream = connect::connect(socket, cfg.target).await.map_err(|e| classify(&e))?;
        let latency = t0.elapsed();
        let request = format!(
            "GET /bytes?n={n} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            cfg.target
        );
        let io = |e: std::io::Error| match classify(&e) {
            FailKind::Other => FailKind::Read,
            k => k,
        };
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        // The headers, within the buffer.
        let mut got = 0;
        let head = loop {
            if got == buf.len() {
                return Err(FailKind::Unparsable);
            }
            let k = stream.read(&mut buf[got..]).await.map_err(io)?;
            if k == 0 {
                return Err(FailKind::Read);
            }
            got += k;
            if let Some(end) = buf[..got].windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
        };
        let (id, length) = http_head(&buf[..head]).ok_or(FailKind::Unparsable)?;
        let mut received = got as u64;
        let mut body = (got - head) as u64;
        // The reply line goes to the front; the rest of the buffer takes the body.
        buf.copy_within(id.clone(), 0);
        let id_len = id.len();
        while length.is_none_or(|l| body < l) {
            let k = stream.read(&mut buf[id_len..]).await.map_err(io)?;
            if k == 0 {
                break;
            }
            received += k as u64;
            body += k as u64;
        }
        if length.is_some_and(|l| body < l) {
            return Err(FailKind::Read);
        }
        if !cfg.graceful_close {
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        }
        Ok((latency, id_len, received))
    })
    .await;
    match attempt {
        Err(_) => Err(FailKind::Timeout.into()),
        Ok(r) => r.map_err(Attempt::from),
    }
}

/// A `200` response head: where the backend header's value is in it, and the content length.
fn http_head(head: &[u8]) -> Option<(std::ops::Range<usize>, Option<u64>)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status = lines.next()?;
    if status.split_ascii_whitespace().nth(1) != Some("200") {
        return None;
    }
    let (mut id, mut length) = (None, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case(BACKEND_HEADER) {
            let start = value.as_ptr() as usize - text.as_ptr() as usize;
            id = Some(start..start + value.len());
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse().ok()?);
        }
    }
    Some((id?, length))
}

async fn udp_once(
    cfg: &StormConfig,
    src: Option<IpAddr>,
    seq: u64,
    buf: &mut [u8],
) -> Result<(Duration, usize), Attempt> {
    let local = src.unwrap_or(if cfg.target.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    });
    let chosen = match cfg.src_ports {
        Some(range) => UdpSocket::bind(SocketAddr::new(local, range.nth(seq))).await.ok(),
        None => None,
    };
    let bound = match chosen {
        Some(s) => Ok(s),
        None => UdpSocket::bind(SocketAddr::new(local, 0)).await,
    };
    let socket = match bound {
        Ok(s) => s,
        Err(e) if src.is_some() => return Err(bind_error(local, e, cfg.srccidr)),
        Err(e) => {
            return Err(Attempt::Fatal(Fatal(anyhow::anyhow!(
                "cannot create a UDP socket: {e}"
            ))));
        }
    };
    socket
        .connect(cfg.target)
        .await
        .map_err(|e| Attempt::Failed(classify(&e)))?;
    let request = format!("svclb {} {seq}\n", cfg.session);
    let t0 = Instant::now();
    let until = t0 + cfg.timeout;
    match socket.send(request.as_bytes()).await {
        // A rule of this host's own output path dropped or rejected the datagram (EPERM):
        // a reject also queues its ICMP error on the socket, which the read below returns as
        // refused; a drop leaves nothing, and the read times out.
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {}
        Err(e) => return Err(Attempt::Failed(classify(&e))),
        Ok(_) => {}
    }
    loop {
        match timeout_at(until, socket.recv(buf)).await {
            Err(_) => return Err(FailKind::Timeout.into()),
            Ok(Err(e)) => return Err(classify(&e).into()),
            Ok(Ok(n)) => {
                // A reply that carries another sequence number is a stray; keep waiting.
                match parse_reply(&buf[..n]).and_then(|r| r.seq) {
                    Some(s) if s != seq => continue,
                    _ => return Ok((t0.elapsed(), n)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(target: &str, fetch_bytes: Option<u64>) -> StormConfig {
        StormConfig {
            target: target.parse().unwrap(),
            proto: Proto::Tcp,
            conns: 200,
            parallel: 20,
            rate: None,
            timeout: Duration::from_secs(5),
            deadline: None,
            srccidr: None,
            graceful_close: false,
            session: String::new(),
            fetch_bytes,
            src_ports: None,
        }
    }

    #[tokio::test]
    async fn fetching_bytes_counts_them_per_backend() {
        let server = crate::testing::serve("127.77.9.10:5001", Some("127.77.9.10:8080"), "pod-x");
        let o = run(&config("127.77.9.10:8080", Some(65_536)), Control::new())
            .await
            .unwrap();
        server.abort();
        assert_eq!((o.attempted, o.ok), (200, 200), "{:?}", o.failures);
        assert_eq!(o.backends.len(), 1);
        let b = &o.backends[0];
        assert_eq!((b.name.as_str(), b.count), ("pod-x", 200));
        // Every response: 64 KiB of body and the same headers.
        assert_eq!(b.bytes % 200, 0);
        let head = b.bytes / 200 - 65_536;
        assert!((100..1024).contains(&head), "{head} bytes of headers");
    }

    #[tokio::test]
    async fn udp_sessions_take_their_source_ports_in_order() {
        // A bare echo server that remembers each datagram's source port.
        let server = std::net::UdpSocket::bind("127.77.9.11:0").unwrap();
        let target = server.local_addr().unwrap();
        server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let seen = std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            (0..6)
                .map(|_| {
                    let (n, from) = server.recv_from(&mut buf).unwrap();
                    server.send_to(&buf[..n], from).unwrap();
                    from.port()
                })
                .collect::<std::collections::BTreeSet<u16>>()
        });
        // A free block of ports: the kernel's pick, and the next ones (taken ones fall back).
        let first = std::net::UdpSocket::bind("127.77.9.12:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let range = PortRange {
            first: first.min(u16::MAX - 8),
            count: 3,
        };
        let mut cfg = config(&target.to_string(), None);
        (cfg.proto, cfg.conns, cfg.parallel, cfg.src_ports) = (Proto::Udp, 6, 1, Some(range));
        let o = run(&cfg, Control::new()).await.unwrap();
        assert_eq!(o.ok, 6, "{:?}", o.failures);
        // Six sessions through a range of three: each port twice, no other port.
        let ports = seen.join().unwrap();
        assert_eq!(ports, (range.first..range.first + 3).collect());
        assert_eq!((range.nth(0), range.nth(4)), (range.first, range.first + 1));
    }

    #[test]
    fn a_response_head_names_the_backend_and_its_length() {
        let head =
            b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nX-Svclb-Backend: p1 node=n1 zone=z client=1.2.3.4:5\r\n\r\n";
        let (id, len) = http_head(head).unwrap();
        assert_eq!(&head[id], b"p1 node=n1 zone=z client=1.2.3.4:5");
        assert_eq!(len, Some(7));
        assert_eq!(http_head(b"HTTP/1.1 404 Not Found\r\n\r\n"), None);
        assert_eq!(http_head(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n"), None);
    }
}
