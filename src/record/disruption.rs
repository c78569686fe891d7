//! The record of one `disruption` run (`DisruptionRun`): the action and when it happened, the
//! endpoint events on the same time axis, one row per second of traffic (new connections,
//! long-lived connections, UDP sessions), the breaks of long-lived connections, and the verdict.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Environment, Failed, Saved, TargetInfo};
use crate::disruption::BreakKind;
use crate::stats::Verdict;
use crate::storm::Stop;

pub const DISRUPTION_KIND: &str = "DisruptionRun";
pub const DISRUPTION_VERSION: u32 = 1;
/// Breaks a record lists one by one (the first ones); all of them are counted.
pub const MAX_BREAKS: usize = 1000;

/// `disruption`'s parameters, as given (durations in seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DisruptionParams {
    /// `none`, `delete-pod[=POD]`, `scale=N`, `rollout-restart`, `drain-node=NODE`.
    pub action: String,
    /// New connections per second, all sources together.
    pub rate: f64,
    pub long_lived: u32,
    pub udp_sessions: u32,
    /// `per-node` or `one`.
    pub sources: String,
    pub interval_s: f64,
    pub timeout_s: f64,
    pub warmup_s: f64,
    pub settle_s: f64,
    /// The run's length (`none`) or the most it may last (an action).
    pub duration_s: f64,
    /// The lab's pod lifecycle (or, on a cluster, the deleted pod's grace period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_delay_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_delay_s: Option<f64>,
    /// The lab's per-node sync delay (`MIN..MAX`), as it was during the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_delay: Option<String>,
}

/// What the action did and when (seconds on the run's axis).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActionInfo {
    /// In words: `deleted pod-003 (replaced)`, `scaled 6 → 9`, ...
    pub what: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_s: Option<f64>,
    /// Endpoints stable again: every node applied the last change (lab), or the Deployment is
    /// complete and its EndpointSlices have no terminating endpoint (cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_s: Option<f64>,
    /// Why it did not complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Endpoints (pods) ready before the action and after it.
    pub endpoints_before: Vec<String>,
    pub endpoints_after: Vec<String>,
}

/// A step of an endpoint, as the EndpointSlice shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Ready,
    Terminating,
    NotServing,
    Removed,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Ready => "ready",
            Step::Terminating => "terminating",
            Step::NotServing => "not-serving",
            Step::Removed => "removed",
        })
    }
}

/// An endpoint event on the run's axis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointChange {
    pub at_s: f64,
    pub pod: String,
    pub step: Step,
}

/// A node's kube-proxy applied a rules generation (the lab's own events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSyncAt {
    pub at_s: f64,
    pub node: String,
    pub generation: u64,
}

/// Long-lived connections in one second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LongLivedSecond {
    /// Messages sent, and answered in time.
    pub sent: u64,
    pub answered: u64,
    /// Broken in this second, of them counted apart (their pod was removed after it stopped
    /// serving).
    pub broken: u64,
    pub broken_expected: u64,
    /// Reconnects that failed.
    pub connect_failed: u64,
}

/// UDP sessions in one second (datagrams sent in it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpSecond {
    pub sent: u64,
    pub answered: u64,
    pub lost: u64,
    /// Lost on a session whose pod was removed after it stopped serving.
    pub lost_expected: u64,
}

/// One second of the run: `[second, second + 1)` since it started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecondRow {
    pub second: u32,
    /// New connections started in this second and how they ended.
    pub attempts: u64,
    pub ok: u64,
    pub failed: Failed,
    /// p99 connect latency of the ok ones (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Which pods answered, how often (adds up to `ok`).
    pub pods: BTreeMap<String, u64>,
    pub long_lived: LongLivedSecond,
    pub udp: UdpSecond,
}

/// A long-lived connection that broke.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokenConn {
    pub at_s: f64,
    /// Where it ran from.
    pub source: String,
    pub conn: u32,
    pub pod: String,
    pub kind: BreakKind,
    /// Its pod was removed after it stopped serving, and it broke once that pod was
    /// terminating: counted apart, not a failure.
    pub expected: bool,
}

/// The whole run's counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DisruptionTotals {
    pub attempts: u64,
    pub ok: u64,
    pub failed: Failed,
    pub long_lived: LongLivedSecond,
    pub udp: UdpSecond,
}

/// The record of one `disruption` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DisruptionRun {
    pub kind: String,
    pub version: u32,
    pub tag: String,
    pub started_at: jiff::Timestamp,
    pub duration_s: f64,
    pub target: TargetInfo,
    pub params: DisruptionParams,
    pub action: ActionInfo,
    /// Endpoint events and (lab) node syncs, in time order.
    pub events: Vec<EndpointChange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub syncs: Vec<NodeSyncAt>,
    pub seconds: Vec<SecondRow>,
    pub totals: DisruptionTotals,
    /// The first [`MAX_BREAKS`] breaks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub breaks: Vec<BrokenConn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<Stop>,
    pub verdict: Verdict,
    pub reasons: Vec<String>,
    /// What was counted apart, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub environment: Environment,
}

impl Saved for DisruptionRun {
    fn tag(&self) -> &str {
        &self.tag
    }
    fn set_tag(&mut self, tag: String) {
        self.tag = tag;
    }
}
