//! The test server (`kubectl svclb serve`): what runs in tserver pods and in lab pods.
//!
//! TCP and UDP on one port, HTTP on another, all replying per the wire protocol (see [`crate::wire`]).

mod http;
mod tcp;
mod udp;

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

use crate::wire::Identity;

/// Most sessions a server counts; requests of further new sessions are answered but not counted
/// (`stats` then says `received=0`), which bounds the server's memory.
pub const MAX_SESSIONS: usize = 1_000_000;

/// Per-session received counters: how many `svclb <session> <seq>` requests arrived (TCP and UDP),
/// reported by `stats <session>` and HTTP `/stats`.
#[derive(Debug, Default)]
pub struct SessionCounts(Mutex<HashMap<Box<str>, u64>>);

impl SessionCounts {
    pub fn record(&self, session: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(session) {
            *n += 1;
        } else if map.len() < MAX_SESSIONS {
            map.insert(session.into(), 1);
        }
    }

    pub fn get(&self, session: &str) -> u64 {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(session).copied().unwrap_or(0)
    }

    /// Every counted session as `<session> <received>` lines, sorted.
    pub fn lines(&self) -> String {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<_> = map.iter().collect();
        rows.sort();
        rows.iter().map(|(s, n)| format!("{s} {n}\n")).collect()
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

fn tcp_listener(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    let socket = bind_socket(addr, Type::STREAM).with_context(|| format!("cannot listen on TCP {addr}"))?;
    // A deep backlog: storms open thousands of connections at once.
    socket.listen(8192)?;
    Ok(tokio::net::TcpListener::from_std(socket.into())?)
}

impl Listeners {
    /// Binds every socket of `cfg`. Must be called inside a tokio runtime.
    pub fn bind(cfg: &ServeConfig) -> Result<Self> {
        let tcp = tcp_listener(cfg.address)?;
        // The UDP socket binds the port TCP got, so `--address 127.0.0.1:0` works for both.
        let udp_addr = tcp.local_addr()?;
        let udp = bind_socket(udp_addr, Type::DGRAM).with_context(|| format!("cannot listen on UDP {udp_addr}"))?;
        let udp = tokio::net::UdpSocket::from_std(udp.into())?;
        let http = cfg.http.map(tcp_listener).transpose()?;
        Ok(Self {
            tcp,
            udp,
            http,
            identity: Arc::new(cfg.identity.clone()),
            counts: Arc::default(),
        })
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
        let udp = udp::UdpServer::new(self.udp, self.identity.clone(), self.counts.clone())?;
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(tcp::serve(self.tcp, self.identity.clone(), self.counts.clone()));
        tasks.spawn(udp.serve());
        if let Some(http) = self.http {
            tasks.spawn(http::serve(http, self.identity.clone(), self.counts.clone()));
        }
        tokio::select! {
            () = shutdown => Ok(()),
            Some(res) = tasks.join_next() => match res {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(anyhow::anyhow!("server task failed: {e}")),
            },
        }
    }
}
