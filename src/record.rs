//! The run record: the one saved format (docs/architecture.md), its version, saving, and mconnect import.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

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
    pub conns: u64,
    pub ok: u64,
    pub failed: u64,
    /// Names and counts; zero-count backends included where the source knew them.
    pub backends: Vec<BackendCount>,
    pub stats: Stats,
    pub source: Source,
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

/// Any saved run `compare` reads.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyRun {
    Spread(Box<Loaded>),
    Affinity(Box<AffinityRun>),
}

fn check_version(path: &Path, value: &serde_json::Value, kind: &str, want: u32) -> Result<()> {
    let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
    if version != u64::from(want) {
        bail!(
            "{}: {kind} version {version} is not supported (this kubectl-svclb reads version {want}); upgrade kubectl-svclb",
            path.display()
        );
    }
    Ok(())
}

/// Reads a run record (spread or affinity) or an mconnect JSON file. Errors name the file and
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
        Some(AFFINITY_KIND) => {
            check_version(path, &value, AFFINITY_KIND, AFFINITY_VERSION)?;
            let run: AffinityRun = serde_json::from_value(value)
                .map_err(|e| anyhow::anyhow!("{}: corrupt AffinityRun record: {e}", path.display()))?;
            Ok(AnyRun::Affinity(Box::new(run)))
        }
        Some(SPREAD_KIND) => {
            check_version(path, &value, SPREAD_KIND, SPREAD_VERSION)?;
            let run: SpreadRun = serde_json::from_value(value)
                .map_err(|e| anyhow::anyhow!("{}: corrupt SpreadRun record: {e}", path.display()))?;
            Ok(AnyRun::Spread(Box::new(Loaded {
                tag: run.tag,
                conns: run.conns,
                ok: run.ok,
                failed: run.failed.total,
                backends: run.backends,
                stats: run.stats,
                source: Source::Record,
            })))
        }
        Some(other) => bail!(
            "{}: record kind {other:?} is not one compare knows (SpreadRun, AffinityRun)",
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
                })
                .collect();
            let counts: Vec<(&str, u64)> = backends.iter().map(|b| (b.name.as_str(), b.count)).collect();
            let stats = crate::stats::evaluate(&counts, failed, criteria);
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(AnyRun::Spread(Box::new(Loaded {
                tag: stem.strip_prefix("mconnect-").unwrap_or(&stem).to_string(),
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

/// A file-name-safe form of a tag.
fn file_stem(tag: &str) -> String {
    tag.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Saves `run` as `DIR/<tag>.json`. An existing file is never overwritten: the run is saved as
/// `<tag>-2.json` (then -3, ...) with its tag changed to match, and the caller is told.
///
/// The record is written through a buffer to a temporary file in `DIR` (`.svclb-save-<pid>-<n>.tmp`,
/// left behind only by a save killed before its rename), synced,
/// and then moved to its name without replacing anything there: a reader never sees a partial
/// record under that name, even when the process is killed mid-save. On error the run keeps its tag.
pub fn save<R: Saved>(dir: &Path, run: &mut R) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create save directory {}", dir.display()))?;
    let temp = Temp::create(dir)?;
    let wanted = run.tag().to_string();
    let base = file_stem(&wanted);
    let mut written: Option<String> = None;
    for n in 1u32.. {
        let stem = if n == 1 { base.clone() } else { format!("{base}-{n}") };
        let path = dir.join(format!("{stem}.json"));
        if path.symlink_metadata().is_ok() {
            continue;
        }
        let tag = if n == 1 { wanted.clone() } else { stem };
        if written.as_ref() != Some(&tag) {
            run.set_tag(tag.clone());
            if let Err(e) = temp.write(run) {
                run.set_tag(wanted);
                return Err(e).with_context(|| format!("cannot write {}", temp.path.display()));
            }
            written = Some(tag);
        }
        match publish(&temp.path, &path) {
            Ok(()) => {
                // The new name's directory entry: best effort, the record is in place either way.
                let _ = File::open(dir).and_then(|d| d.sync_all());
                return Ok(path);
            }
            // Taken since the check above, by another save.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                run.set_tag(wanted);
                return Err(e).with_context(|| format!("cannot save {}", path.display()));
            }
        }
    }
    unreachable!("u32 suffixes exhausted")
}

const TEMP_PREFIX: &str = ".svclb-save-";

/// Bytes buffered per `write` of a save (a 2 MB record is about 30 writes).
const SAVE_BUFFER: usize = 64 * 1024;

/// A temporary save file: its name is removed on drop (after a hard link; a rename already did).
struct Temp {
    path: PathBuf,
    file: File,
}

impl Temp {
    fn create(dir: &Path) -> Result<Self> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        loop {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = dir.join(format!("{TEMP_PREFIX}{}-{n}.tmp", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(Self { path, file });
                }
                // A leftover of a killed process that had this pid.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
            }
        }
    }

    /// Replaces the file's content with `run`, and syncs it.
    fn write<R: Serialize>(&self, run: &R) -> std::io::Result<()> {
        self.file.set_len(0)?;
        let mut file = &self.file;
        std::io::Seek::rewind(&mut file)?;
        write_record(file, run)?;
        self.file.sync_all()
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        // The name is this process's (its pid): nobody else made it since a rename freed it.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `run` as pretty JSON and a newline, through a [`SAVE_BUFFER`] buffer: a few large writes.
fn write_record<R: Serialize, W: Write>(out: W, run: &R) -> std::io::Result<W> {
    let mut w = std::io::BufWriter::with_capacity(SAVE_BUFFER, out);
    serde_json::to_writer_pretty(&mut w, run)?;
    w.write_all(b"\n")?;
    w.into_inner().map_err(|e| e.into_error())
}

/// Moves `from` to `to` unless `to` exists (then `AlreadyExists`, and nothing changes): one
/// `renameat2(RENAME_NOREPLACE)`, or where the kernel or filesystem lacks it a hard link.
#[cfg(target_os = "linux")]
fn publish(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: two NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => publish_by_link(from, to),
        _ => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
fn publish(from: &Path, to: &Path) -> std::io::Result<()> {
    publish_by_link(from, to)
}

/// `link(2)` refuses an existing name ([`Temp`] removes the temporary one).
fn publish_by_link(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::hard_link(from, to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Check, Criteria, LOOSE, evaluate};

    fn sample() -> SpreadRun {
        let backends = vec![
            BackendCount {
                name: "a".into(),
                node: "n1".into(),
                zone: "z1".into(),
                count: 60,
            },
            BackendCount {
                name: "b".into(),
                node: "n2".into(),
                zone: "z2".into(),
                count: 40,
            },
        ];
        let criteria = Criteria {
            expect_backends: Some(2),
            margin_pct: 50.0,
            alpha: None,
        };
        SpreadRun {
            kind: SPREAD_KIND.into(),
            version: SPREAD_VERSION,
            tag: "t".into(),
            started_at: "2026-11-21T10:00:00Z".parse().unwrap(),
            duration_s: 1.5,
            target: TargetInfo {
                address: "10.96.0.10:5001".into(),
                mode: "lab".into(),
                protocol: Proto::Tcp,
                service: Some("tserver".into()),
                source: Some("pod-x".into()),
                lab: Some("lab1".into()),
            },
            params: Params {
                conns: 101,
                parallel: 10,
                rate: Some(50.0),
                timeout_s: 2.0,
                deadline_s: None,
                srccidr: Some("127.1.0.0/16".into()),
                expect_backends: Some(2),
                margin_pct: 50.0,
                alpha: Some(0.001),
                graceful_close: false,
            },
            conns: 101,
            ok: 100,
            failed: Failures {
                timeout: 1,
                ..Failures::default()
            }
            .into(),
            stopped: None,
            stats: evaluate(&[("a", 60), ("b", 40)], 1, &criteria),
            backends,
            sources: vec![],
            latency_ms: Latency {
                p50: 0.1,
                p90: 0.2,
                p99: 0.5,
                max: 1.0,
                mean: 0.12,
            },
            latency_histogram_us: None,
            environment: Environment::local(),
        }
    }

    #[test]
    fn record_round_trips_through_a_save() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = sample();
        let path = save(dir.path(), &mut run).unwrap();
        let back: SpreadRun = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back, run);
        assert_eq!(back.failed.total, 1);
        let AnyRun::Spread(loaded) = load(&path, &LOOSE).unwrap() else {
            panic!("a spread run")
        };
        assert_eq!((loaded.tag.as_str(), loaded.ok, loaded.failed), ("t", 100, 1));
        // A second save of the same tag never overwrites.
        let mut again = sample();
        let p2 = save(dir.path(), &mut again).unwrap();
        assert_eq!(p2.file_name().unwrap(), "t-2.json");
        assert_eq!(again.tag, "t-2");
    }

    #[test]
    fn histogram_buckets_merge_exactly() {
        let (mut a, mut b) = (crate::storm::new_histogram(), crate::storm::new_histogram());
        for v in [100u64, 250, 250, 900, 12_000] {
            a.record(v).unwrap();
        }
        for v in [80u64, 250, 70_000] {
            b.record(v).unwrap();
        }
        let mut merged = crate::storm::new_histogram();
        add_buckets(&mut merged, &histogram_buckets(&a));
        add_buckets(&mut merged, &histogram_buckets(&b));
        let mut direct = a.clone();
        direct.add(&b).unwrap();
        assert_eq!(merged.len(), 8);
        for q in [0.0, 0.25, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(merged.value_at_quantile(q), direct.value_at_quantile(q), "q={q}");
        }
    }

    #[test]
    fn mconnect_import() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mconnect-iptables.json");
        std::fs::write(
            &path,
            r#"{"hosts":{"p1":9,"p2":31},"failed_connects":2,"failed_reads":1,"time":"0.1s"}"#,
        )
        .unwrap();
        let AnyRun::Spread(l) = load(&path, &LOOSE).unwrap() else {
            panic!("a spread run")
        };
        assert_eq!(l.tag, "iptables");
        assert_eq!((l.conns, l.ok, l.failed), (43, 40, 3));
        assert_eq!(l.source, Source::Mconnect);
        assert_eq!(l.backends.len(), 2);
        // 9 and 31 of 40 over 2 backends: chi-square p ~ 5e-4, and 3 connections failed.
        assert_eq!(l.stats.verdict, crate::stats::Verdict::Fail);
        assert_eq!(l.stats.decided_by, [Check::ChiSquare, Check::Failures]);
        assert_eq!(l.stats.reasons.len(), 2);
    }

    #[test]
    fn unsupported_version_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("future.json");
        let mut v = serde_json::to_value(sample()).unwrap();
        v["version"] = 99.into();
        std::fs::write(&path, v.to_string()).unwrap();
        let err = load(&path, &LOOSE).unwrap_err();
        assert!(err.to_string().contains("version 99"), "{err}");
    }

    #[test]
    fn records_from_before_the_verdict_fields_still_load() {
        // Version 1 records made before alpha, band and decided_by: their verdict stands as saved.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.json");
        let mut v = serde_json::to_value(sample()).unwrap();
        let stats = v["stats"].as_object_mut().unwrap();
        for new in ["alpha", "band", "decided_by"] {
            assert!(stats.remove(new).is_some(), "{new}");
        }
        std::fs::write(&path, v.to_string()).unwrap();
        let AnyRun::Spread(loaded) = load(&path, &LOOSE).unwrap() else {
            panic!("a spread run")
        };
        assert_eq!(loaded.stats.verdict, crate::stats::Verdict::Fail);
        assert_eq!((loaded.stats.alpha, loaded.stats.band), (None, None));
        assert!(loaded.stats.decided_by.is_empty());
    }

    /// Counts the writes that reach it.
    #[derive(Default)]
    struct Counting {
        writes: usize,
        bytes: usize,
    }

    impl Write for Counting {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.writes += 1;
            self.bytes += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The sample run with `n` backends.
    fn with_backends(n: u64) -> SpreadRun {
        let mut run = sample();
        run.backends = (0..n)
            .map(|i| BackendCount {
                name: format!("pod-{i:05}"),
                node: format!("node-{}", i % 50),
                zone: "zone-a".into(),
                count: i,
            })
            .collect();
        run
    }

    #[test]
    fn a_big_record_is_written_in_few_large_writes() {
        let run = with_backends(20_000);
        let saved = write_record(Counting::default(), &run).unwrap();
        assert!(saved.bytes > 1_900_000, "{}", saved.bytes);
        assert!(
            saved.writes <= saved.bytes / SAVE_BUFFER + 1,
            "{} writes for {} bytes",
            saved.writes,
            saved.bytes
        );
        // What an unbuffered file gets: a write per token.
        let mut raw = Counting::default();
        serde_json::to_writer_pretty(&mut raw, &run).unwrap();
        assert!(raw.writes > 500_000, "{}", raw.writes);
    }

    /// A record whose serialization breaks after a megabyte, like a save killed midway.
    struct Breaks {
        tag: String,
    }

    impl Serialize for Breaks {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::{Error, SerializeSeq};
            let mut seq = s.serialize_seq(None)?;
            for i in 0..200_000u32 {
                seq.serialize_element(&i)?;
            }
            Err(S::Error::custom("broken midway"))
        }
    }

    impl Saved for Breaks {
        fn tag(&self) -> &str {
            &self.tag
        }
        fn set_tag(&mut self, tag: String) {
            self.tag = tag;
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_save_that_breaks_midway_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = Breaks { tag: "t".into() };
        let err = save(dir.path(), &mut run).unwrap_err();
        assert!(format!("{err:#}").contains("broken midway"), "{err:#}");
        assert_eq!(names(dir.path()), Vec::<String>::new());
        // Over an existing record: it stays as it was, and the run keeps its tag.
        std::fs::write(dir.path().join("t.json"), "keep").unwrap();
        save(dir.path(), &mut run).unwrap_err();
        assert_eq!(run.tag, "t");
        assert_eq!(names(dir.path()), ["t.json"]);
        assert_eq!(std::fs::read_to_string(dir.path().join("t.json")).unwrap(), "keep");
    }

    #[test]
    fn concurrent_saves_never_overwrite_and_readers_never_see_a_partial_record() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        std::fs::write(dir.join("t.json"), "{\"existing\": true}").unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let mut tags: Vec<String> = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut read = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for name in names(dir).iter().filter(|n| n.ends_with(".json")) {
                        let text = std::fs::read_to_string(dir.join(name)).unwrap();
                        serde_json::from_str::<serde_json::Value>(&text)
                            .unwrap_or_else(|e| panic!("{name} is partial: {e}"));
                        read += 1;
                    }
                }
                read
            });
            let savers: Vec<_> = (0..3)
                .map(|_| {
                    s.spawn(|| {
                        (0..4)
                            .map(|_| {
                                let mut run = with_backends(2_000);
                                run.tag = "t".into();
                                save(dir, &mut run).unwrap();
                                run.tag
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let tags = savers.into_iter().flat_map(|h| h.join().unwrap()).collect();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            assert!(reader.join().unwrap() > 0);
            tags
        });
        tags.sort_by_key(|t| t[2..].parse::<u32>().unwrap());
        let want: Vec<String> = (2..=13).map(|n| format!("t-{n}")).collect();
        assert_eq!(tags, want);
        assert_eq!(
            std::fs::read_to_string(dir.join("t.json")).unwrap(),
            "{\"existing\": true}"
        );
        for tag in &tags {
            let back: SpreadRun =
                serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{tag}.json"))).unwrap()).unwrap();
            assert_eq!(&back.tag, tag);
        }
        // Nothing but the records: no temporary file is left.
        assert_eq!(names(dir).len(), 13, "{:?}", names(dir));
    }

    #[test]
    fn the_hard_link_fallback_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let (from, taken, free) = (
            dir.path().join("from"),
            dir.path().join("taken"),
            dir.path().join("free"),
        );
        std::fs::write(&from, "new").unwrap();
        std::fs::write(&taken, "old").unwrap();
        let err = publish_by_link(&from, &taken).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&taken).unwrap(), "old");
        publish_by_link(&from, &free).unwrap();
        assert_eq!(std::fs::read_to_string(&free).unwrap(), "new");
    }
}
