//! The test server (`kubectl svclb serve`): what runs in tserver pods and in lab pods.
//!
//! TCP and UDP on one port, HTTP on another, all replying per the wire protocol (see [`crate::wire`]).

mod http;
mod tcp;
mod udp;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

use crate::wire::Identity;

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
        let udp = udp::UdpServer::new(self.udp, self.identity.clone())?;
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(tcp::serve(self.tcp, self.identity.clone()));
        tasks.spawn(udp.serve());
        if let Some(http) = self.http {
            tasks.spawn(http::serve(http, self.identity.clone()));
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
