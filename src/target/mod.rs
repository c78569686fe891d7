//! Where servers run and storms come from. Commands never talk to namespaces or to a cluster
//! directly: they ask a [`Target`] for endpoints, a service address, and to run the storm agent
//! (`kubectl-svclb spread --agent`) at a source, which returns its run record as JSON.
//! The same `spread` code then runs against a lab or a cluster.

pub mod kube;
pub mod lab;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use anyhow::Result;

use crate::storm::Proto;

/// A backend of the Service: a pod, where it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub name: String,
    pub ip: std::net::IpAddr,
    pub node: String,
    pub zone: String,
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
    pub sources: Vec<Source>,
    pub expected: Vec<Endpoint>,
}

/// Facts about a target that go into the run record.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// `lab` or `cluster`.
    pub mode: String,
    pub name: Option<String>,
    /// `namespace/name` of the Service.
    pub service: String,
    pub proxy_mode: Option<String>,
    pub context: Option<String>,
    pub server_version: Option<String>,
}

/// A storm agent that was started: its output (the agent's stdout, a run record as JSON) and a
/// way to interrupt it (it then reports what it measured so far).
pub struct Agent {
    pub source: Source,
    pub output: Pin<Box<dyn Future<Output = Result<Vec<u8>>> + Send>>,
    pub interrupt: Box<dyn Fn() + Send + Sync>,
}

/// A place where the Service and its backends run.
pub trait Target {
    fn meta(&self) -> Meta;
    /// Every backend of the Service.
    fn endpoints(&self) -> Result<Vec<Endpoint>>;
    /// Resolves sources, the address and the expected backends.
    fn plan(&self, from: &From, path: &Path, proto: Proto) -> Result<Plan>;
    /// Starts `kubectl-svclb spread <args>` at `source`. Must be called inside a tokio runtime.
    fn start_agent(&self, source: &Source, args: &[String]) -> Result<Agent>;
    /// The command that runs `kubectl-svclb <subcommand> <args>` at `source`, for agents that
    /// stream their output (`affinity --agent` prints JSON lines as things happen).
    fn agent_command(&self, source: &Source, subcommand: &str, args: &[String]) -> Result<tokio::process::Command>;
}
