//! The lab: an emulated Kubernetes cluster in Linux network namespaces.
//!
//! A lab named `x` is made of namespaces that all start with `svclb-x.` (the dot cannot
//! appear in a lab name, so one lab's prefix never matches another's):
//!
//! * `svclb-x.net`: the node network, a bridge `br0` joining nodes and the client;
//! * `svclb-x.nodeN`: one router per node, with its zone, pod CIDR and kube-proxy rules;
//! * `svclb-x.pod-NNN`: one per pod, running the project's own server;
//! * `svclb-x.client`: an external client on the node network.
//!
//! Nothing is ever added to the root namespace. See docs/lab.md.
//!
//! Where things are:
//!
//! * `config`: what `lab up` and `lab set` take, and the Service options;
//! * `topology`: nodes, pods, addresses, limits, lab names;
//! * `state`: the saved state, its lock, loading and listing labs;
//! * `lifecycle`: up, set, down;
//! * `pods`: pods added (ready after their server answers) and deleted (terminating, not
//!   serving, removed), as Kubernetes times them;
//! * `deployment`: pods as a Deployment's controllers drive them (a deleted pod replaced, a
//!   rolling restart, a drained node), for `disruption`;
//! * `kube_proxy`: each node's kube-proxy applying each change after its own delay (its rules,
//!   its conntrack cleanup, the generation it applied), and showing its work;
//! * `timeline`: what happened to endpoints and nodes during a change, on one time axis;
//! * `rules`: the rules themselves, as kube-proxy writes them;
//! * `health`: kube-proxy's health servers per node and the health-checked ECMP load balancer;
//! * `status`: `lab status`;
//! * `ipv6`: the IPv6 addresses, neighbours and routes of `lab up --ip-family ipv6|dual`;
//! * `netns`, `conntrack`: namespaces, processes and conntrack entries.

mod config;
mod conntrack;
mod deployment;
pub mod health;
mod ipv6;
mod kube_proxy;
mod lifecycle;
mod netns;
mod nfnetlink;
mod pods;
mod rtnetlink;
pub mod rules;
mod state;
mod status;
mod timeline;
mod topology;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

pub use config::{LabChanges, LabConfig, LabFamilies, LabTiming, MAX_SYNC_DELAY, ProxyMode, SyncDelay};
pub use deployment::{Rollout, RolloutStep};
pub use kube_proxy::Reach;
pub use lifecycle::{down_by_name, require_host};
pub use status::{ClientStatus, LabStatus, NodeStatus, PodStatus, ServiceStatus};
pub use timeline::{EndpointEvent, Event, NodeSync, Timeline};
pub use topology::{Conditions, Node, Pod, in_family, labs_dir, netns_prefix, validate_name};

use state::State;

/// Set by SIGINT or SIGTERM once [`cancel_on_signals`] was called.
static CANCELLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on SIGINT and SIGTERM cancel a `lab up` or `lab scale` of this process at its next
/// step (instead of killing it halfway): `lab up` then removes what it built.
pub fn cancel_on_signals() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the action only stores to an atomic, which is async-signal-safe.
        unsafe { signal_hook_registry::register(sig, || CANCELLED.store(true, std::sync::atomic::Ordering::SeqCst)) }
            .map_err(|e| anyhow::anyhow!("cannot watch signal {sig}: {e}"))?;
    }
    Ok(())
}

/// True once a signal cancelled this process's lab build.
pub fn cancelled() -> bool {
    CANCELLED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Fails when a signal cancelled the build: called between its steps.
fn check_cancelled() -> Result<()> {
    if cancelled() {
        bail!("interrupted");
    }
    Ok(())
}

/// Threads for per-namespace setup (mostly waiting on `ip` / `nft` processes).
const THREADS: usize = 8;

/// A running lab, as loaded from its state.
pub struct Lab {
    dir: PathBuf,
    state: State,
}

impl Lab {
    pub fn name(&self) -> &str {
        &self.state.name
    }

    pub fn proxy_mode(&self) -> ProxyMode {
        self.state.proxy_mode
    }

    /// The Service's IP families (`lab up --ip-family`).
    pub fn families(&self) -> LabFamilies {
        self.state.families
    }

    pub fn nodes(&self) -> &[Node] {
        &self.state.nodes
    }

    pub fn pods(&self) -> &[Pod] {
        &self.state.pods
    }

    pub fn options(&self) -> &crate::service::ServiceOptions {
        &self.state.options
    }

    /// How long each node's kube-proxy takes to apply a change.
    pub fn sync_delay(&self) -> SyncDelay {
        self.state.sync_delay
    }

    fn node(&self, name: &str) -> Option<&Node> {
        self.state.nodes.iter().find(|n| n.name == name)
    }

    fn netns_of(&self, suffix: &str) -> String {
        format!("{}{suffix}", netns_prefix(&self.state.name))
    }

    fn unknown(&self, who: &str) -> String {
        let n = &self.state.name;
        format!("no node or pod named {who} in lab {n}; see `kubectl svclb lab status --name {n}`")
    }

    /// The namespace of `who`: "client", "net", a node name or a pod name.
    pub fn netns(&self, who: &str) -> Result<String> {
        if who == "client" || who == "net" {
            return Ok(self.netns_of(who));
        }
        if let Some(n) = self.node(who) {
            return Ok(n.netns.clone());
        }
        if let Some(p) = self.state.pods.iter().find(|p| p.name == who) {
            return Ok(p.netns.clone());
        }
        bail!("{}", self.unknown(who))
    }

    /// `ip netns exec <ns> program`: add arguments and run it.
    pub fn command(&self, who: &str, program: &Path) -> Result<Command> {
        let ns = self.netns(who)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns]).arg(program);
        Ok(cmd)
    }
}
