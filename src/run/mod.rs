//! The run pipeline every measuring command uses:
//!
//! ```text
//!  Place ──open──▶ Backend ──plan──▶ sources + address + expected backends
//!                     │
//!                     └─start_agent(source, Request)──▶ agents ──JSON lines──▶ AgentSet
//!                                                                               │
//!   Interrupt (Ctrl-C, SIGTERM) ──▶ stop every agent; they report what they measured
//!                                                                               ▼
//!                                              merge ──▶ judge (engine) ──▶ record ──▶ save, report
//! ```
//!
//! [`open`] resolves where a run goes (an address, a lab, a cluster) and cleans up after it;
//! [`agents`] starts and streams the agents; [`spread`], [`sessions`] and [`zones`] are the runs
//! built on them; their decisions (verdicts, record building) live in the engines
//! ([`crate::spread`], [`crate::stats`], [`crate::affinity::judge`]).

pub mod agents;
pub mod disruption;
pub mod families;
pub mod interrupt;
pub mod matrix;
pub mod open;
pub mod save;
pub mod sessions;
pub mod spread;
pub mod zones;

pub use interrupt::Interrupt;
pub use save::SaveTo;

use std::net::SocketAddr;

use crate::backend::{From, Meta, Path, Source};
use crate::record::{Environment, TargetInfo};
use crate::storm::Proto;

/// A record's `target.mode`, the same for every run: `address`, `lab`, or on a cluster where the
/// agents ran, `pod` or `host`.
pub fn mode(meta: &Meta, from: &From) -> String {
    match (meta.mode.as_str(), from) {
        ("cluster", From::Host) => "host".into(),
        ("cluster", From::Pods { .. } | From::Nodes { .. }) => "pod".into(),
        (m, _) => m.into(),
    }
}

/// Where a run went, as its record says: the address (with the path, for a Service), the mode,
/// the Service, where the agents ran (none for a bare address), the lab.
pub fn target_info(
    meta: &Meta,
    address: SocketAddr,
    from: &From,
    path: &Path,
    protocol: Proto,
    sources: &[Source],
) -> TargetInfo {
    let address_only = meta.mode == "address";
    TargetInfo {
        address: if address_only {
            address.to_string()
        } else {
            format!("{address} ({})", path.describe())
        },
        mode: mode(meta, from),
        protocol,
        service: meta.service.clone(),
        source: match sources {
            _ if address_only => None,
            [one] => Some(one.name.clone()),
            many => Some(match from {
                From::Nodes { per_zone: true } => format!("per-zone ({} sources)", many.len()),
                From::Nodes { per_zone: false } => format!("per-node ({} sources)", many.len()),
                _ => format!("per-node ({} pods)", many.len()),
            }),
        },
        lab: meta.name.clone(),
        ip_family: Some(crate::service::IpFamily::of(&address.ip())),
    }
}

/// What the backend knows of its environment (proxy mode, context, server version), into a record's.
pub fn environment(env: &mut Environment, meta: Meta) {
    env.proxy_mode = meta.proxy_mode;
    env.context = meta.context;
    env.server_version = meta.server_version;
}

/// A multi-threaded tokio runtime with `workers` threads (0 = one per CPU; 1 = current thread).
pub fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if workers > 1 {
        b.worker_threads(workers);
    }
    Ok(b.enable_all().build()?)
}

/// Raises the open-file limit to its hard maximum: storms and servers hold thousands of sockets.
pub fn raise_nofile() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_run_says_its_mode_the_same_way() {
        let meta = |m: &str| Meta {
            mode: m.into(),
            ..Meta::default()
        };
        let pods = From::Pods {
            pod: None,
            per_node: false,
        };
        assert_eq!(mode(&meta("cluster"), &From::Host), "host");
        assert_eq!(mode(&meta("cluster"), &pods), "pod");
        assert_eq!(mode(&meta("lab"), &From::Host), "lab");
        assert_eq!(mode(&meta("address"), &pods), "address");
    }
}
