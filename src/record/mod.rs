//! The run record: the one saved format (docs/architecture.md), its version, and mconnect import;
//! saving is [`save`].

mod disruption;
mod matrix;
mod save;
mod zones;

pub use disruption::{
    ActionInfo, BrokenConn, DISRUPTION_KIND, DISRUPTION_VERSION, DisruptionParams, DisruptionRun, DisruptionTotals,
    EndpointChange, LongLivedSecond, MAX_BREAKS, NodeSyncAt, SecondRow, Step, UdpSecond,
};
pub use matrix::{
    CellVerdict, EndpointState, MATRIX_KIND, MATRIX_VERSION, Mark, MatrixCell, MatrixParams, MatrixRun, MatrixScenario,
    MatrixSource, MatrixTarget, SourceKind, TargetKind,
};
pub use save::save;
pub use zones::{
    Billed, Cost, Locality, Price, ZONES_KIND, ZONES_VERSION, ZoneCell, ZoneSource, ZonesCycle, ZonesParams, ZonesRun,
};

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::stats::Stats;
use crate::storm::{BackendCount, Failures, Proto, Stop};

pub const SPREAD_KIND: &str = "SpreadRun";
pub const SPREAD_VERSION: u32 = 1;
pub const AFFINITY_KIND: &str = "AffinityRun";
pub const AFFINITY_VERSION: u32 = 1;
/// Changes an `AffinityRun` keeps in its change log (the first ones); the rest are counted.
pub const MAX_CHANGES: usize = 1000;
/// Runs with at most this many sessions keep every session's row.
pub const MAX_SESSION_ROWS: usize = 1000;

/// Where the storm went and from where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetInfo {
    /// The address the storm connected to.
    pub address: String,
    /// `address` (any address), `pod`, `host` (cluster), or `lab`.
    pub mode: String,
    pub protocol: Proto,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Where the storm ran from (pod, node, namespace), when not this process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lab: Option<String>,
    /// The family of the addresses the run went to (records from before it: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_family: Option<crate::service::IpFamily>,
}

/// The run's parameters, as given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Params {
    pub conns: u64,
    pub parallel: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    pub timeout_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srccidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_backends: Option<usize>,
    pub margin_pct: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    #[serde(default)]
    pub graceful_close: bool,
}

/// Failures by kind plus their total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Failed {
    pub total: u64,
    #[serde(flatten)]
    pub kinds: Failures,
}

impl From<Failures> for Failed {
    fn from(kinds: Failures) -> Self {
        Self {
            total: kinds.total(),
            kinds,
        }
    }
}

/// Connect latency percentiles (UDP: round-trip time), milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    pub fn from_histogram(h: &hdrhistogram::Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// One source's share of a multi-source run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRun {
    pub name: String,
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub zone: String,
    pub conns: u64,
    pub ok: u64,
    pub failed: Failed,
    pub backends: Vec<BackendCount>,
}

/// What the run ran in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub tool_version: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub kernel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_mode: Option<String>,
}

impl Environment {
    /// This machine: tool version, hostname, kernel release.
    pub fn local() -> Self {
        let (hostname, kernel) = crate::host::uname();
        Self {
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            hostname,
            kernel,
            ..Self::default()
        }
    }
}

/// The record of one `spread` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpreadRun {
    pub kind: String,
    pub version: u32,
    pub tag: String,
    pub started_at: jiff::Timestamp,
    pub duration_s: f64,
    pub target: TargetInfo,
    pub params: Params,
    /// Connections attempted.
    pub conns: u64,
    pub ok: u64,
    pub failed: Failed,
    /// Set when the run ended early (Ctrl-C, deadline): the record holds what was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<Stop>,
    /// Every backend, zero-count ones included when they are known to exist.
    pub backends: Vec<BackendCount>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceRun>,
    pub latency_ms: Latency,
    /// Storm agents only: the latency histogram as `[microseconds, count]` pairs, so that runs from
    /// several sources merge into exact percentiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_histogram_us: Option<Vec<[u64; 2]>>,
    pub stats: Stats,
    pub environment: Environment,
}

/// `affinity`'s parameters, as given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AffinityParams {
    pub sessions: u32,
    pub interval_s: f64,
    pub timeout_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    pub new_connection_per_message: bool,
    #[serde(default)]
    pub plain_udp: bool,
}

/// How many sessions a pod served at the end of the run, and how many messages it answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSessions {
    pub name: String,
    pub sessions: u64,
    pub answered: u64,
}

/// The counters of an affinity run at one moment (cumulative since its start): consecutive
/// samples give what was sent, answered and lost in each interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AffinitySample {
    /// Milliseconds since the epoch.
    pub at_ms: u64,
    #[serde(flatten)]
    pub totals: crate::affinity::Totals,
}

/// Samples an `AffinityRun` takes at most: the interval grows with the run's duration.
pub const MAX_SAMPLES: u64 = 1000;

/// The record of one `affinity` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AffinityRun {
    pub kind: String,
    pub version: u32,
    pub tag: String,
    pub started_at: jiff::Timestamp,
    pub duration_s: f64,
    pub target: TargetInfo,
    pub params: AffinityParams,
    /// Session names on the wire are `<session_prefix>-<n>` (what `stats <session>` takes).
    pub session_prefix: String,
    /// `interrupted` when Ctrl-C ended the run; absent when `--duration` did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<Stop>,
    pub sessions: u32,
    #[serde(flatten)]
    pub totals: crate::affinity::Totals,
    /// Changes while the backend pool changed (listed, not violations).
    pub changes_during_pool_change: u64,
    /// Whether the backend pool was watched (lab, cluster); when not, every change counts.
    pub pool_known: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pool_changes: Vec<crate::affinity::PoolChange>,
    /// Per pod, sessions by the pod that served them last; zero-session pods of a known pool included.
    pub pods: Vec<PodSessions>,
    /// The first [`MAX_CHANGES`] changes.
    pub changes: Vec<crate::affinity::Change>,
    pub changes_dropped: u64,
    /// Every session (runs of at most [`MAX_SESSION_ROWS`] sessions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub session_detail: Vec<crate::affinity::SessionRow>,
    /// The counters every second or so (at most [`MAX_SAMPLES`]), the last at the end of the
    /// run; empty in records made before it was kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<AffinitySample>,
    pub verdict: crate::affinity::Verdict,
    #[serde(default)]
    pub reasons: Vec<String>,
    pub environment: Environment,
}

/// A record `save` can write: it has a tag that names its file.
pub trait Saved: Serialize {
    fn tag(&self) -> &str;
    fn set_tag(&mut self, tag: String);
}

impl Saved for SpreadRun {
    fn tag(&self) -> &str {
        &self.tag
    }
    fn set_tag(&mut self, tag: String) {
        self.tag = tag;
    }
}

impl Saved for AffinityRun {
    fn tag(&self) -> &str {
        &self.tag
    }
    fn set_tag(&mut self, tag: String) {
        self.tag = tag;
    }
}

/// A histogram as `[value, count]` pairs of its recorded buckets.
pub fn histogram_buckets(h: &hdrhistogram::Histogram<u64>) -> Vec<[u64; 2]> {
    h.iter_recorded()
        .map(|v| [h.highest_equivalent(v.value_iterated_to()), v.count_at_value()])
        .collect()
}

/// Adds `[value, count]` pairs to a histogram.
pub fn add_buckets(h: &mut hdrhistogram::Histogram<u64>, buckets: &[[u64; 2]]) {
    for [value, count] in buckets {
        h.saturating_record_n(*value, *count);
    }
}

/// A run as `compare` sees it, whatever file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub tag: String,
    /// Where the run went (address, mode, protocol); `None` for mconnect files, which do not say.
    pub target: Option<TargetInfo>,
    /// The proxy mode of the lab or cluster, when the record knows it.
    pub proxy_mode: Option<String>,
    pub conns: u64,
    pub ok: u64,
    pub failed: u64,
    /// Names and counts; zero-count backends included where the source knew them.
    pub backends: Vec<BackendCount>,
    pub stats: Stats,
    pub source: Source,
}

impl From<SpreadRun> for Loaded {
    fn from(run: SpreadRun) -> Self {
        Self {
            tag: run.tag,
            target: Some(run.target),
            proxy_mode: run.environment.proxy_mode,
            conns: run.conns,
            ok: run.ok,
            failed: run.failed.total,
            backends: run.backends,
            stats: run.stats,
            source: Source::Record,
        }
    }
}

/// Which format a loaded run came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Record,
    Mconnect,
}

/// mconnect's `-output json`.
#[derive(Debug, Deserialize)]
struct Mconnect {
    hosts: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    connects: Option<u64>,
    #[serde(default)]
    failed_connects: u64,
    #[serde(default)]
    failed_reads: u64,
}

/// Any saved run `compare` and `report` read.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyRun {
    /// The whole record (`compare` takes what it needs: [`Loaded::from`]).
    Spread(Box<SpreadRun>),
    /// An mconnect file: counts only, judged on load.
    Mconnect(Box<Loaded>),
    Affinity(Box<AffinityRun>),
    Disruption(Box<DisruptionRun>),
    Zones(Box<ZonesRun>),
    Matrix(Box<MatrixRun>),
}

/// A record of `kind` read from `value`, after checking it is the version this build reads.
fn parse<T: serde::de::DeserializeOwned>(
    path: &Path,
    value: serde_json::Value,
    kind: &str,
    want: u32,
) -> Result<Box<T>> {
    let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
    if version != u64::from(want) {
        bail!(
            "{}: {kind} version {version} is not supported (this kubectl-svclb reads version {want}); upgrade kubectl-svclb",
            path.display()
        );
    }
    serde_json::from_value(value)
        .map(Box::new)
        .map_err(|e| anyhow::anyhow!("{}: corrupt {kind} record: {e}", path.display()))
}

/// Reads a run record (any kind above) or an mconnect JSON file. Errors name the file and
/// what is wrong.
pub fn load(path: &Path, criteria: &crate::stats::Criteria) -> Result<AnyRun> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} is not JSON ({e}): want a svclb run record or an mconnect -output json file",
            path.display()
        )
    })?;
    match value.get("kind").and_then(|k| k.as_str()) {
        Some(AFFINITY_KIND) => Ok(AnyRun::Affinity(parse(path, value, AFFINITY_KIND, AFFINITY_VERSION)?)),
        Some(DISRUPTION_KIND) => Ok(AnyRun::Disruption(parse(
            path,
            value,
            DISRUPTION_KIND,
            DISRUPTION_VERSION,
        )?)),
        Some(ZONES_KIND) => Ok(AnyRun::Zones(parse(path, value, ZONES_KIND, ZONES_VERSION)?)),
        Some(MATRIX_KIND) => Ok(AnyRun::Matrix(parse(path, value, MATRIX_KIND, MATRIX_VERSION)?)),
        Some(SPREAD_KIND) => Ok(AnyRun::Spread(parse(path, value, SPREAD_KIND, SPREAD_VERSION)?)),
        Some(other) => bail!(
            "{}: record kind {other:?} is not one compare knows (SpreadRun, AffinityRun, ZonesRun, MatrixRun, DisruptionRun)",
            path.display()
        ),
        None if value.get("hosts").is_some() => {
            let m: Mconnect = serde_json::from_value(value)
                .map_err(|e| anyhow::anyhow!("{}: not an mconnect -output json file: {e}", path.display()))?;
            let ok: u64 = m.hosts.values().sum();
            let failed = m.failed_connects + m.failed_reads;
            let backends: Vec<BackendCount> = m
                .hosts
                .into_iter()
                .map(|(name, count)| BackendCount {
                    name,
                    node: String::new(),
                    zone: String::new(),
                    count,
                    bytes: 0,
                })
                .collect();
            let counts: Vec<(&str, u64)> = backends.iter().map(|b| (b.name.as_str(), b.count)).collect();
            let stats = crate::stats::evaluate(&counts, failed, criteria);
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(AnyRun::Mconnect(Box::new(Loaded {
                tag: stem.strip_prefix("mconnect-").unwrap_or(&stem).to_string(),
                target: None,
                proxy_mode: None,
                conns: m.connects.unwrap_or(ok + failed),
                ok,
                failed,
                backends,
                stats,
                source: Source::Mconnect,
            })))
        }
        None => bail!(
            "{}: neither a svclb run record (no \"kind\") nor an mconnect -output json file (no \"hosts\")",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests;
