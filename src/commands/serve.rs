//! `kubectl svclb serve`: the test server.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use crate::server::{LOG_LISTENING, Limits, Listeners, ServeConfig, signals};
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
    /// Close a TCP or HTTP connection that moved no byte either way for this long; 0 = never.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = timeout)]
    pub idle_timeout: Duration,
    /// Close an HTTP connection whose request headers took longer than this; 0 = never.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = timeout)]
    pub header_timeout: Duration,
    /// Most open TCP and HTTP connections; at the cap the least recently active one is closed for
    /// each new one [default: the open-file limit less 256, at least half of it].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_conns: Option<u64>,
    /// Backend identity (default: env POD_NAME, else the hostname).
    #[arg(long, env = "POD_NAME")]
    pub name: Option<String>,
    /// Node reported in replies (default: env NODE_NAME, else the hostname).
    #[arg(long, env = "NODE_NAME")]
    pub node: Option<String>,
    /// Zone reported in replies (default: env ZONE, else the hostname).
    #[arg(long, env = "ZONE")]
    pub zone: Option<String>,
    /// On SIGTERM keep serving this long, then close the listeners (TCP, UDP, HTTP) and finish
    /// the open connections; exit when none is left. A SIGTERM sent with sigqueue(3) carrying a
    /// value uses that many milliseconds instead (the lab's `delete-pod --drain-delay`). A second
    /// SIGTERM, or SIGINT, exits at once.
    #[arg(long, default_value = "0s", value_name = "DURATION", value_parser = super::parse_duration)]
    pub drain_delay: Duration,
    /// Runtime worker threads; 0 = one per CPU, 1 = single-threaded (lab pods).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
}

/// A duration flag where `0` (without a unit) means never.
fn timeout(s: &str) -> Result<Duration, String> {
    if s == "0" {
        Ok(Duration::ZERO)
    } else {
        super::parse_duration(s)
    }
}

fn hostname() -> String {
    Some(crate::host::uname().0)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

pub fn run(args: ServeArgs) -> Result<ExitCode> {
    crate::run::raise_nofile();
    let host = hostname();
    let pick = |v: Option<String>| v.filter(|s| !s.trim().is_empty()).unwrap_or_else(|| host.clone());
    let most = Limits::default_max_conns();
    let max_conns = match args.max_conns {
        None => most,
        Some(n) if n <= most as u64 => n as usize,
        Some(n) => anyhow::bail!(
            "--max-conns {n}: the open-file limit allows at most {most}; raise it (ulimit -n) or ask for fewer"
        ),
    };
    let limits = Limits {
        idle_timeout: Some(args.idle_timeout).filter(|d| !d.is_zero()),
        header_timeout: Some(args.header_timeout).filter(|d| !d.is_zero()),
        max_conns,
    };
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
    crate::run::runtime(args.workers)?.block_on(async {
        // Watched before anything listens: whoever sees the sockets may already send SIGTERM.
        let stops = signals(args.drain_delay).context("cannot watch SIGTERM and SIGINT")?;
        let listeners = Listeners::bind(&cfg)?.with_limits(limits);
        let http = listeners
            .http_address()
            .map(|h| format!(", http {h}"))
            .unwrap_or_default();
        eprintln!(
            "svclb serve: {}{LOG_LISTENING}{}{http}",
            cfg.identity.name,
            listeners.address()
        );
        listeners.serve_until(stops).await
    })?;
    Ok(ExitCode::SUCCESS)
}
