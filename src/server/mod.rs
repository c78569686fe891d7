//! The test server (`kubectl svclb serve`): what runs in tserver pods and in lab pods.
//!
//! TCP and UDP on one port, HTTP on another, all replying per the wire protocol (see [`crate::wire`]).

mod conns;
mod drain;
mod http;
mod tcp;
mod udp;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

pub use conns::Limits;
pub use drain::{Stop, signals, terminate};

use crate::wire::Identity;

/// Most sessions a server counts; requests of further new sessions are answered but not counted
/// (`stats` then says `received=0`).
/// The log line a server writes once its listeners listen: `svclb serve: NAME on tcp+udp ADDR`.
/// The lab's readiness probe waits for it (reading a log costs nothing; the kernel's own view,
/// /proc/PID/net/tcp, walks every bucket of the global TCP hash table on each read).
pub const LOG_LISTENING: &str = " on tcp+udp ";

/// The log line a draining server writes once its listeners are closed.
pub const LOG_DRAINING: &str = "svclb serve: draining: listeners closed";

pub const MAX_SESSIONS: usize = 1_000_000;
/// Most bytes of session names a server keeps, the other bound on new sessions: with
/// [`MAX_SESSIONS`] and names capped by [`crate::wire::MAX_REQUEST`] it bounds the counters'
/// memory (measured in the README's numbers).
pub const MAX_SESSION_BYTES: usize = 32 << 20;

/// Shards of the counters: a request locks one, `/stats` reads one at a time.
const SHARDS: usize = 256;

type Shard = Mutex<HashMap<Box<str>, u64>>;

/// Per-session received counters: how many `svclb <session> <seq>` requests arrived (TCP and UDP),
/// reported by `stats <session>` and HTTP `/stats`.
pub struct SessionCounts {
    shards: Box<[Shard]>,
    hasher: RandomState,
    /// Sessions counted (high 32 bits) and the bytes of their names (low 32 bits).
    kept: AtomicU64,
}

impl Default for SessionCounts {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            kept: AtomicU64::new(0),
        }
    }
}

impl SessionCounts {
    fn shard(&self, i: usize) -> std::sync::MutexGuard<'_, HashMap<Box<str>, u64>> {
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn shard_of(&self, session: &str) -> usize {
        (self.hasher.hash_one(session) % SHARDS as u64) as usize
    }

    /// Makes room for one more session of `len` bytes, if the bounds allow it.
    fn admit(&self, len: usize) -> bool {
        self.kept
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |kept| {
                let (sessions, bytes) = (kept >> 32, kept & u64::from(u32::MAX));
                (sessions < MAX_SESSIONS as u64 && bytes + len as u64 <= MAX_SESSION_BYTES as u64)
                    .then_some(kept + (1 << 32) + len as u64)
            })
            .is_ok()
    }

    pub fn record(&self, session: &str) {
        let mut map = self.shard(self.shard_of(session));
        if let Some(n) = map.get_mut(session) {
            *n += 1;
        } else if self.admit(session.len()) {
            map.insert(session.into(), 1);
        }
    }

    pub fn get(&self, session: &str) -> u64 {
        self.shard(self.shard_of(session)).get(session).copied().unwrap_or(0)
    }

    /// The counted sessions of shard `i` as `<session> <received>` lines, in no particular order;
    /// `None` past the last shard. Read shard by shard, `/stats` holds each lock only briefly.
    pub fn shard_lines(&self, i: usize) -> Option<String> {
        let map = self.shards.get(i)?.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::with_capacity(map.keys().map(|s| s.len() + 8).sum());
        for (session, n) in map.iter() {
            let _ = writeln!(out, "{session} {n}");
        }
        Some(out)
    }
}

/// What to serve, where.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// TCP and UDP address.
    pub address: SocketAddr,
    /// HTTP address; `None` disables HTTP.
    pub http: Option<SocketAddr>,
    pub identity: Identity,
}

/// Listening sockets, bound and ready: binding is separate from serving so a caller (or a test)
/// knows the ports are open before the first client connects.
pub struct Listeners {
    tcp: tokio::net::TcpListener,
    udp: tokio::net::UdpSocket,
    http: Option<tokio::net::TcpListener>,
    identity: Arc<Identity>,
    counts: Arc<SessionCounts>,
    limits: Limits,
}

/// Binds `[::]:port` dual-stack, falling back to `0.0.0.0:port` where IPv6 is unavailable
/// (e.g. a network namespace with IPv6 disabled).
fn bind_socket(addr: SocketAddr, ty: Type) -> std::io::Result<Socket> {
    let proto = if ty == Type::STREAM {
        Protocol::TCP
    } else {
        Protocol::UDP
    };
    let try_bind = |addr: SocketAddr| -> std::io::Result<Socket> {
        let socket = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            socket.set_only_v6(false)?;
        }
        if ty == Type::STREAM {
            socket.set_reuse_address(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        Ok(socket)
    };
    match try_bind(addr) {
        Err(e) if addr.is_ipv6() && addr.ip().is_unspecified() => {
            try_bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port())).map_err(|_| e)
        }
        other => other,
    }
}

fn tcp_listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    listen(bind_socket(addr, Type::STREAM)?)
}

fn listen(socket: Socket) -> std::io::Result<tokio::net::TcpListener> {
    // A deep backlog: storms open thousands of connections at once.
    socket.listen(8192)?;
    tokio::net::TcpListener::from_std(socket.into())
}

impl Listeners {
    /// Binds every socket of `cfg`. Must be called inside a tokio runtime. The TCP socket
    /// listens last: whoever sees it listening (the lab's readiness probe) finds UDP and HTTP
    /// open too.
    pub fn bind(cfg: &ServeConfig) -> Result<Self> {
        let cannot = || format!("cannot listen on TCP {}", cfg.address);
        let tcp = bind_socket(cfg.address, Type::STREAM).with_context(cannot)?;
        // The UDP socket binds the port TCP got, so `--address 127.0.0.1:0` works for both.
        let udp_addr = tcp
            .local_addr()?
            .as_socket()
            .context("the TCP socket has no IP address")?;
        let udp = bind_socket(udp_addr, Type::DGRAM).with_context(|| format!("cannot listen on UDP {udp_addr}"))?;
        let udp = tokio::net::UdpSocket::from_std(udp.into())?;
        let http = cfg
            .http
            .map(|addr| {
                tcp_listener(addr).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot listen on HTTP {addr}: {e}; pick another address with --http ADDR, or serve no HTTP with --no-http"
                    )
                })
            })
            .transpose()?;
        let tcp = listen(tcp).with_context(cannot)?;
        Ok(Self {
            tcp,
            udp,
            http,
            identity: Arc::new(cfg.identity.clone()),
            counts: Arc::default(),
            limits: Limits::default(),
        })
    }

    /// Serves with `limits` instead of [`Limits::default`].
    pub fn with_limits(self, limits: Limits) -> Self {
        Self { limits, ..self }
    }

    /// The TCP (and UDP) address actually bound.
    pub fn address(&self) -> SocketAddr {
        self.tcp.local_addr().expect("bound listener has an address")
    }

    /// The HTTP address actually bound, if HTTP is served.
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let (_keep, stops) = tokio::sync::mpsc::unbounded_channel();
        tokio::select! {
            res = self.serve_until(stops) => res,
            () = shutdown => Ok(()),
        }
    }

    /// Serves until `stops` says: at once ([`Stop::Now`]), or after a drain ([`Stop::Drain`]):
    /// everything is served for the delay, then the listeners close (TCP, UDP and HTTP) and the
    /// open TCP and HTTP connections are finished (HTTP after the current request); it returns
    /// when none is left. Any further stop ends it at once.
    pub async fn serve_until(self, mut stops: tokio::sync::mpsc::UnboundedReceiver<Stop>) -> Result<()> {
        let udp = udp::UdpServer::new(self.udp, self.identity.clone(), self.counts.clone())?;
        // TCP and HTTP share one cap: both spend the process's descriptors.
        let conns = conns::Conns::new(self.limits);
        // The listening sockets: closed (dropped with their tasks) when a drain ends.
        let mut listening = tokio::task::JoinSet::new();
        listening.spawn(tcp::serve(
            self.tcp,
            self.identity.clone(),
            self.counts.clone(),
            conns.clone(),
        ));
        listening.spawn(udp.serve());
        if let Some(http) = self.http {
            listening.spawn(http::serve(
                http,
                self.identity.clone(),
                self.counts.clone(),
                conns.clone(),
            ));
        }
        let mut sweeper = tokio::task::JoinSet::new();
        if let Some(idle) = self.limits.idle_timeout {
            sweeper.spawn(conns.clone().close_idle(idle));
        }
        // A closed channel sends no more stops: wait forever rather than stop.
        let mut next_stop = async move || match stops.recv().await {
            Some(stop) => stop,
            None => std::future::pending().await,
        };
        let ended = |res: Result<Result<()>, tokio::task::JoinError>| match res {
            Ok(res) => res,
            Err(e) => Err(anyhow::anyhow!("server task failed: {e}")),
        };
        let delay = tokio::select! {
            stop = next_stop() => match stop {
                Stop::Now => return Ok(()),
                Stop::Drain(delay) => delay,
            },
            Some(res) = listening.join_next() => return ended(res),
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = next_stop() => return Ok(()),
            Some(res) = listening.join_next() => return ended(res),
        }
        listening.shutdown().await;
        let open = conns.open();
        eprintln!("{LOG_DRAINING}, finishing {open} open connections");
        conns.drain();
        tokio::select! {
            () = conns.closed() => Ok(()),
            _ = next_stop() => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_lines(counts: &SessionCounts) -> Vec<String> {
        let mut lines: Vec<String> = (0..)
            .map_while(|i| counts.shard_lines(i))
            .flat_map(|s| s.lines().map(str::to_string).collect::<Vec<_>>())
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn counts_sessions_and_lists_them_shard_by_shard() {
        let counts = SessionCounts::default();
        for s in ["a", "b", "a", "c", "a"] {
            counts.record(s);
        }
        assert_eq!((counts.get("a"), counts.get("b"), counts.get("z")), (3, 1, 0));
        assert_eq!(all_lines(&counts), ["a 3", "b 1", "c 1"]);
    }

    #[test]
    fn session_name_bytes_are_bounded() {
        let counts = SessionCounts::default();
        // The longest names a request can carry: `svclb <name> 0` of MAX_REQUEST bytes.
        let name = |i: usize| format!("{i:08}{}", "n".repeat(crate::wire::MAX_REQUEST - 8 - 8));
        let fit = MAX_SESSION_BYTES / name(0).len();
        for i in 0..fit + 10 {
            counts.record(&name(i));
        }
        assert_eq!(counts.get(&name(fit - 1)), 1);
        assert_eq!(
            counts.get(&name(fit)),
            0,
            "past the byte bound a new session is not counted"
        );
        let left = MAX_SESSION_BYTES - fit * name(0).len();
        let (fits, too_long) = ("f".repeat(left), "t".repeat(left + 1));
        for s in [&too_long, &fits, &name(0)] {
            counts.record(s);
        }
        assert_eq!(counts.get(&too_long), 0);
        assert_eq!(counts.get(&fits), 1, "the last bytes are used");
        assert_eq!(counts.get(&name(0)), 2, "known sessions still count");
        assert_eq!(all_lines(&counts).len(), fit + 1);
    }
}
