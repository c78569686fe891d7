//! Where servers run and storms come from. Runs never talk to namespaces or to a cluster
//! directly: they ask a [`Backend`] for endpoints, a service address, the backend pool, and to
//! start an agent ([`crate::agent`]) at a source. The same run code then works against an address
//! (agents are tasks of this process), a lab (agents in its namespaces) or a cluster (agents in
//! pods through exec, or on this machine).
//!
//! Every agent is stopped the same way, wherever it runs: a line `stop` on its stdin. An exec
//! session into a pod can carry no signal; a pipe can.

pub mod address;
pub mod kube;
pub mod lab;

use std::collections::BTreeSet;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::agent::Request;
use crate::storm::Proto;
use crate::zones::ServiceView;

/// A backend of the Service: a pod, where it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub name: String,
    pub ip: std::net::IpAddr,
    pub node: String,
    pub zone: String,
}

/// Adds to `into` the endpoints of `more` it does not have yet (by name).
pub fn union(into: &mut Vec<Endpoint>, more: Vec<Endpoint>) {
    for e in more {
        if !into.iter().any(|x| x.name == e.name) {
            into.push(e);
        }
    }
}

/// Where a storm agent runs: a pod (name, node, zone) or an external host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    pub node: String,
    pub zone: String,
}

/// Where the storm comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum From {
    /// From inside the cluster: one pod (a named one or the first), or one pod on every node.
    Pods { pod: Option<String>, per_node: bool },
    /// From outside the cluster (the lab's external client, or this machine for a cluster).
    Host,
    /// A client on every node, or on one node of every zone: a pod on it, or in a lab the node
    /// itself (a host-network client) where no pod runs.
    Nodes { per_zone: bool },
}

/// Which Service address the storm goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Path {
    ClusterIp,
    /// A nodePort on a node (the first one when `None`).
    NodePort(Option<String>),
    LoadBalancer,
}

impl Path {
    pub fn describe(&self) -> &'static str {
        match self {
            Path::ClusterIp => "clusterIP",
            Path::NodePort(_) => "nodePort",
            Path::LoadBalancer => "loadBalancer",
        }
    }
}

/// What a storm will do: the address, who storms it, and which backends are expected to answer
/// (for each source, as the proxy's rules select them).
#[derive(Debug, Clone)]
pub struct Plan {
    pub address: SocketAddr,
    /// The same path's HTTP port (`/bytes`), when the Service has one.
    pub http: Option<SocketAddr>,
    pub sources: Vec<Source>,
    pub expected: Vec<Endpoint>,
}

/// Facts about a target that go into the run record.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// `lab` or `cluster`.
    pub mode: String,
    pub name: Option<String>,
    /// `namespace/name` of the Service (none for a bare address).
    pub service: Option<String>,
    pub proxy_mode: Option<String>,
    pub context: Option<String>,
    pub server_version: Option<String>,
    /// The family of the addresses runs go to.
    pub ip_family: Option<crate::service::IpFamily>,
}

/// An agent that was started: its stdout as it prints, its end, and a way to interrupt it (it
/// then reports what it measured so far).
pub struct Stream {
    pub stdout: Pin<Box<dyn AsyncRead + Send>>,
    /// Resolves when the agent has exited: the last line of its stderr (why it failed, if it did).
    pub ended: Pin<Box<dyn Future<Output = String> + Send>>,
    pub interrupt: Box<dyn Fn() + Send + Sync>,
}

impl Stream {
    /// `session` ends with the agent, resolving to the last line of its stderr; the interrupt
    /// notifies `stop` (see [`stop_writer`]).
    pub fn new(stdout: impl AsyncRead + Send + 'static, session: JoinHandle<String>, stop: Arc<Notify>) -> Stream {
        Stream {
            stdout: Box::pin(stdout),
            ended: Box::pin(async move { session.await.unwrap_or_else(|e| format!("agent task failed: {e}")) }),
            interrupt: Box::new(move || stop.notify_one()),
        }
    }
}

/// Writes a line `stop` to an agent's stdin once `stop` is notified, then keeps stdin open: the
/// agent reads EOF as "no more stop lines", and closing an exec session's stdin could end the
/// session before the agent's summary. Abort the task once the agent has ended.
pub fn stop_writer(stop: Arc<Notify>, mut stdin: impl AsyncWrite + Unpin + Send + 'static) -> JoinHandle<()> {
    tokio::spawn(async move {
        stop.notified().await;
        let _ = stdin.write_all(b"stop\n").await;
        let _ = stdin.flush().await;
        std::future::pending::<()>().await;
    })
}

/// The last non-empty line of an agent's stderr.
pub fn last_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .to_string()
}

/// Starts an agent as a child process of this machine (`ip netns exec` into a lab namespace, or
/// plainly from the host); `interrupt` writes `stop` to its stdin.
pub fn local_stream(mut cmd: tokio::process::Command, what: &str) -> Result<Stream> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("cannot start {what}"))?;
    let (Some(stdin), Some(stdout), Some(mut stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        bail!("{what}: no pipes to the agent");
    };
    let stop = Arc::new(Notify::new());
    let stopper = stop_writer(stop.clone(), stdin);
    let session = tokio::spawn(async move {
        let mut err = Vec::new();
        let _ = stderr.read_to_end(&mut err).await;
        let _ = child.wait().await;
        stopper.abort();
        last_line(&err)
    });
    Ok(Stream::new(stdout, session, stop))
}

/// A place where the Service and its backends run.
pub trait Backend {
    fn meta(&self) -> Meta;
    /// Every backend of the Service.
    fn endpoints(&self) -> Result<Vec<Endpoint>>;
    /// Resolves sources, the address and the expected backends.
    fn plan(&self, from: &From, path: &Path, proto: Proto) -> Result<Plan>;
    /// Starts the agent for `request` at `source`. Must be called inside a tokio runtime.
    fn start_agent(&self, source: &Source, request: &Request) -> Result<Stream>;
    /// The names of the backends the proxies balance over now (`None`: unknown here, or the
    /// read failed).
    fn pool(&self) -> impl Future<Output = Option<BTreeSet<String>>> + Send;
    /// How long after a pool change the proxies may still be switching, when the pool is polled
    /// every `poll`.
    fn pool_slack(&self, poll: Duration) -> Duration;
    /// The Service and its endpoints as kube-proxy sees them now (read again at every call: a
    /// watch follows changes), for the expectations of `zones`.
    fn service_view(&self) -> impl Future<Output = Result<ServiceView>> + Send;
    /// A check before agents start on `path` from `from` (e.g. one HTTP request from this
    /// machine to a nodePort), so an unreachable path is one clear error.
    fn preflight(&self, _from: &From, _path: &Path) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }
}

/// What applying a matrix scenario's Service variant gave.
#[derive(Debug, Clone)]
pub enum Applied {
    /// Measure it: what kube-proxy works from now.
    Measure(crate::matrix::Cluster),
    /// It cannot be made here: why.
    Skip(String),
}

/// A backend whose Service `matrix` can change: it lays out the matrix (sources, targets,
/// kube-proxy's view) and applies each scenario's Service variant: the lab changes its one
/// Service and restores it afterwards; a cluster creates one Service per scenario and deletes
/// it after the scenario.
pub trait MatrixPlace: Backend {
    /// The rows: a probe pod and the host network of every node, and the external client.
    fn matrix_sources(&self) -> Result<Vec<crate::record::MatrixSource>>;
    /// The columns of the scenario applied last, for `proto`: ClusterIP, a NodePort on every
    /// node IP, the LoadBalancer IP, the probe pods' IPs, hairpin (and on a cluster the
    /// headless and ExternalName names).
    fn matrix_targets(&self, proto: Proto) -> Result<Vec<crate::record::MatrixTarget>>;
    /// Applies `variant` and returns what kube-proxy works from now, once every node applied
    /// it (or why it cannot be made here). Dropped half-way (an interrupt), whatever it made is
    /// still undone by [`Self::restore`].
    fn apply(&self, variant: &crate::matrix::Variant) -> impl Future<Output = Result<Applied>> + Send;
    /// The scenario applied last is measured: undo what it needs undone now (a cluster deletes
    /// its Services).
    fn release(&self) -> impl Future<Output = Result<()>> + Send;
    /// Puts the Service (and its endpoints' conditions) back as they were before the first
    /// `apply`; deletes whatever the scenarios made. Errors say how to finish it by hand.
    fn restore(&self) -> impl Future<Output = Result<()>> + Send;
    /// What the run leaves out here and why (rows, columns), one line each.
    fn matrix_notes(&self) -> Vec<String> {
        Vec::new()
    }
}
