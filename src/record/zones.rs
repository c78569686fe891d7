//! The record of one `zones` run (`ZonesRun`): per source where its connections landed and what
//! kube-proxy was expected to do, the source-zone × serving-zone matrix, the cross-zone part and
//! its price, and one line per `--watch` cycle.

use serde::{Deserialize, Serialize};

use super::{Environment, Failed, Saved, TargetInfo};
use crate::service::{Topology, TrafficDistribution, TrafficPolicy};
use crate::stats::Verdict;
use crate::storm::{BackendCount, Stop};

pub const ZONES_KIND: &str = "ZonesRun";
pub const ZONES_VERSION: u32 = 1;

/// `zones`' parameters, as given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZonesParams {
    pub conns_per_source: u64,
    /// `per-zone` or `per-node`.
    pub sources: String,
    pub parallel: usize,
    pub timeout_s: f64,
    /// Bytes each connection fetched (`/bytes?n=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// The connection rate the cost is projected to a month at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_interval_s: Option<f64>,
    pub cycles: u32,
}

/// How local kube-proxy keeps a source's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Locality {
    /// Every endpoint may serve it.
    Any,
    /// Only endpoints hinted for the source's zone.
    Zone,
    /// Only endpoints hinted for (or, with internalTrafficPolicy Local, on) the source's node.
    Node,
}

/// One source: what its node's kube-proxy was expected to do, and where its connections went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZoneSource {
    pub name: String,
    pub node: String,
    pub zone: String,
    pub conns: u64,
    pub ok: u64,
    pub failed: Failed,
    /// The endpoints its node's kube-proxy picks (names), the hints it follows, and why.
    pub topology: Topology,
    pub locality: Locality,
    pub why: String,
    pub expected: Vec<String>,
    /// Where its connections landed: every endpoint, zero-count ones included.
    pub backends: Vec<BackendCount>,
    pub same_zone: u64,
    pub same_node: u64,
    /// Connections answered by an endpoint outside `expected` while kube-proxy keeps traffic
    /// local (`locality` zone or node): what fails the verdict.
    pub left: u64,
    /// Chi-square p-value of its connections over `expected` against a uniform spread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
}

/// One cell of the matrix: connections (and bytes) from clients in `from` served in `to`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZoneCell {
    pub from: String,
    pub to: String,
    pub conns: u64,
    #[serde(default)]
    pub bytes: u64,
}

/// Who pays for cross-zone bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Billed {
    /// Out of the sending zone and into the receiving one, each at the price.
    EachSide,
    /// Only the sender.
    Sender,
}

/// A price of cross-zone bytes and where it comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Price {
    /// `aws`, `gcp`, `azure`, or `custom`.
    pub name: String,
    pub usd_per_unit: f64,
    /// `GB` (10^9 bytes) or `GiB` (2^30 bytes).
    pub unit: String,
    pub unit_bytes: u64,
    pub billed: Billed,
    pub source: String,
    /// When the price was read at its source.
    pub as_of: String,
}

/// The cross-zone bytes of a run at one price, projected to a month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    pub price: Price,
    /// Response bytes served from another zone than the client's.
    pub cross_zone_bytes: u64,
    /// Charged on the serving side (the sender of the responses), and on the client side.
    pub server_side_usd: f64,
    pub client_side_usd: f64,
    pub total_usd: f64,
    /// At `params.rate` connections per second for a month of 730 hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_usd: Option<f64>,
}

/// One `--watch` cycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZonesCycle {
    pub cycle: u32,
    /// Since the run started.
    pub at_s: f64,
    pub conns: u64,
    pub ok: u64,
    /// Per source zone, the share of its answered connections served in it.
    pub local_share: Vec<(String, f64)>,
    pub cross_zone_conns: u64,
    pub cross_zone_bytes: u64,
    /// Connections that left where kube-proxy keeps them local.
    pub left: u64,
}

/// The record of one `zones` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZonesRun {
    pub kind: String,
    pub version: u32,
    pub tag: String,
    pub started_at: jiff::Timestamp,
    pub duration_s: f64,
    pub target: TargetInfo,
    pub params: ZonesParams,
    pub traffic_distribution: Option<TrafficDistribution>,
    pub internal_traffic_policy: TrafficPolicy,
    pub conns: u64,
    pub ok: u64,
    pub failed: Failed,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<Stop>,
    pub sources: Vec<ZoneSource>,
    /// Every (source zone, serving zone) pair, zeros included.
    pub matrix: Vec<ZoneCell>,
    pub cross_zone_conns: u64,
    pub cross_zone_share: f64,
    pub bytes: u64,
    pub cross_zone_bytes: u64,
    /// One row per price (all clouds, or the one asked for); empty without `--bytes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cost: Vec<Cost>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cycles: Vec<ZonesCycle>,
    pub verdict: Verdict,
    pub reasons: Vec<String>,
    pub environment: Environment,
}

impl Saved for ZonesRun {
    fn tag(&self) -> &str {
        &self.tag
    }
    fn set_tag(&mut self, tag: String) {
        self.tag = tag;
    }
}
