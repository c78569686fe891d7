//! The record of one `matrix` run (`MatrixRun`): per scenario (a Service variant and a
//! protocol) the sources, the targets and one cell per source × target with what kube-proxy's
//! rules lead to expect, what was observed, and the comparison.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::{Environment, TargetInfo};
use crate::service::ServiceOptions;
use crate::storm::{Failures, Proto, Stop};

pub const MATRIX_KIND: &str = "MatrixRun";
pub const MATRIX_VERSION: u32 = 1;

/// What a cell shows: `.` connected, `R` refused, `T` timed out, `?` inconclusive (mixed), `-`
/// not a path of this source (not measured).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mark {
    #[serde(rename = ".")]
    Connected,
    #[serde(rename = "R")]
    Refused,
    #[serde(rename = "T")]
    Timeout,
    #[serde(rename = "?")]
    Inconclusive,
    #[serde(rename = "-")]
    NotApplicable,
}

impl Mark {
    pub fn symbol(self) -> &'static str {
        match self {
            Mark::Connected => ".",
            Mark::Refused => "R",
            Mark::Timeout => "T",
            Mark::Inconclusive => "?",
            Mark::NotApplicable => "-",
        }
    }
}

/// The comparison of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CellVerdict {
    Correct,
    Incorrect,
    Inconclusive,
    /// Not a path of this source: not measured.
    Skipped,
}

impl CellVerdict {
    pub fn describe(self) -> &'static str {
        match self {
            CellVerdict::Correct => "correct",
            CellVerdict::Incorrect => "wrong",
            CellVerdict::Inconclusive => "inconclusive",
            CellVerdict::Skipped => "not measured",
        }
    }
}

/// Where a source runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A probe pod on the pod network of its node.
    Pod,
    /// The node itself (host network).
    Node,
    /// Outside the cluster.
    Client,
}

/// One source (a row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatrixSource {
    pub name: String,
    pub kind: SourceKind,
    /// Empty for the client.
    pub node: String,
    pub zone: String,
}

/// What a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    PodIp,
    /// The ClusterIP from a pod that is itself an endpoint: it must be able to reach itself.
    Hairpin,
    /// A headless Service's DNS name (cluster): resolved at the source, it must give the pod IPs
    /// of the ready endpoints, each reached directly (no kube-proxy).
    Headless,
    /// An ExternalName Service's DNS name (cluster), a CNAME of the scenario Service's name: it
    /// must resolve at the source to the scenario's clusterIP and then behave as the clusterIP.
    ExternalName,
}

/// One target (a column).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatrixTarget {
    /// Column label: `cip`, `np:node1`, `lb`, `pod:pod-001`, `hairpin`.
    pub name: String,
    pub kind: TargetKind,
    pub address: SocketAddr,
    /// The node of a NodePort, the node of a pod.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// The pod of a pod IP.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod: String,
    /// A DNS name the source resolves (headless, ExternalName); `address` then gives the port
    /// (and for ExternalName the address the name must resolve to).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
}

/// The state every endpoint's EndpointSlice conditions are put in for a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointState {
    /// As they were (ready).
    Ready,
    /// Not ready, not serving: the Service has no endpoints.
    None,
    /// Terminating and still serving: kube-proxy's fallback.
    Terminating,
}

/// One source × target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatrixCell {
    pub source: String,
    pub target: String,
    pub expected: Mark,
    pub observed: Mark,
    pub verdict: CellVerdict,
    /// Of the last round.
    pub attempts: u64,
    pub ok: u64,
    pub failures: Failures,
    /// Rounds measured (inconclusive cells are measured again, up to `--attempts`).
    pub rounds: u32,
    /// Nodes whose endpoints may answer (empty when none may).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_nodes: Vec<String>,
    /// Endpoints that answered, and their nodes and zones.
    pub answered: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answered_nodes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answered_zones: Vec<String>,
    /// Connections answered by an endpoint kube-proxy would not pick.
    #[serde(default)]
    pub strays: u64,
    /// Hairpin: connections the source pod itself answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_answered: Option<u64>,
    /// A DNS target: the addresses the name resolved to at the source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolved: Vec<IpAddr>,
    /// The rule behind the expectation; for a wrong cell, what was wrong.
    pub why: String,
}

/// One scenario: a Service variant, one protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatrixScenario {
    /// `<variant>/<protocol>`, what `--test` matches.
    pub name: String,
    pub description: String,
    pub proto: Proto,
    pub options: ServiceOptions,
    pub endpoints: EndpointState,
    pub targets: Vec<MatrixTarget>,
    pub cells: Vec<MatrixCell>,
    pub correct: u64,
    pub incorrect: u64,
    pub inconclusive: u64,
    pub duration_s: f64,
    /// Not run, and why (e.g. `terminating` on a cluster: endpoints terminate only while their
    /// pods shut down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// `matrix`'s parameters, as given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatrixParams {
    pub protocols: Vec<Proto>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<String>,
    /// Connections per cell and round.
    pub conns: u64,
    /// Rounds at most for an inconclusive cell.
    pub attempts: u32,
    pub timeout_s: f64,
    /// Cells in flight at most per source.
    pub parallel: usize,
}

/// The record of one `matrix` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatrixRun {
    pub kind: String,
    pub version: u32,
    pub tag: String,
    pub started_at: jiff::Timestamp,
    pub duration_s: f64,
    pub target: TargetInfo,
    pub params: MatrixParams,
    pub sources: Vec<MatrixSource>,
    pub scenarios: Vec<MatrixScenario>,
    pub correct: u64,
    pub incorrect: u64,
    pub inconclusive: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<Stop>,
    /// What the run left out and why (a source row, a target column), one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub environment: Environment,
}

impl super::Saved for MatrixRun {
    fn tag(&self) -> &str {
        &self.tag
    }
    fn set_tag(&mut self, tag: String) {
        self.tag = tag;
    }
}
