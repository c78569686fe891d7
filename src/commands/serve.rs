//! `kubectl svclb serve`: the test server.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::server::{Listeners, ServeConfig};
use crate::wire::Identity;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TCP and UDP address (wire protocol).
    #[arg(long, default_value = "[::]:5001", value_name = "ADDR")]
    pub address: SocketAddr,
    /// HTTP address (`/`, `/hostname`, `/clientip`, `/stats`, `/bytes?n=N`) [default: the host of
    /// --address, port 8080].
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Do not serve HTTP (whatever --http says).
    #[arg(long)]
    pub no_http: bool,
    /// Backend identity (default: env POD_NAME, else the hostname).
    #[arg(long, env = "POD_NAME")]
    pub name: Option<String>,
    /// Node reported in replies (default: env NODE_NAME, else the hostname).
    #[arg(long, env = "NODE_NAME")]
    pub node: Option<String>,
    /// Zone reported in replies (default: env ZONE, else the hostname).
    #[arg(long, env = "ZONE")]
    pub zone: Option<String>,
    /// Runtime worker threads; 0 = one per CPU, 1 = single-threaded (lab pods).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
}

fn hostname() -> String {
    Some(crate::host::uname().0)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

pub fn run(args: ServeArgs) -> Result<ExitCode> {
    super::raise_nofile();
    let host = hostname();
    let pick = |v: Option<String>| v.filter(|s| !s.trim().is_empty()).unwrap_or_else(|| host.clone());
    let cfg = ServeConfig {
        address: args.address,
        http: (!args.no_http).then(|| args.http.unwrap_or(SocketAddr::new(args.address.ip(), 8080))),
        identity: Identity {
            name: pick(args.name),
            node: pick(args.node),
            zone: pick(args.zone),
        },
    };
    for (what, v) in [
        ("name", &cfg.identity.name),
        ("node", &cfg.identity.node),
        ("zone", &cfg.identity.zone),
    ] {
        if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
            anyhow::bail!(
                "--{what} {v:?} contains whitespace: replies are whitespace-separated, pick a name without it"
            );
        }
    }
    super::runtime(args.workers)?.block_on(async {
        let listeners = Listeners::bind(&cfg)?;
        match listeners.http_address() {
            Some(h) => eprintln!(
                "svclb serve: {} on tcp+udp {}, http {h}",
                cfg.identity.name,
                listeners.address()
            ),
            None => eprintln!("svclb serve: {} on tcp+udp {}", cfg.identity.name, listeners.address()),
        }
        listeners.serve(super::shutdown_signal()).await
    })?;
    Ok(ExitCode::SUCCESS)
}
