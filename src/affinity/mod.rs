//! Session affinity: many long-lived client sessions, each with its own socket and source port
//! (UDP) or connection (TCP), each sending `svclb <session> <seq>` every interval and reading which
//! pod answered and what source address it saw (`client=`, the reflective address).
//!
//! Accounting is exact: every message sent is answered within the timeout, or lost; a reply that
//! arrives after its timeout counts as late (not answered, and the message stays lost). When the
//! run stops, no new message is sent and the engine waits out the timeout of every message in
//! flight, so `sent == answered + lost` always holds.
//!
//! UDP runs in a few threads (`udp`), each driving its share of the sessions with one mio poll set and
//! one schedule (no per-session timers); TCP runs one tokio task per session (`tcp`).

pub mod judge;
mod tcp;
mod udp;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::storm::Proto;
use crate::wire::parse_reply;

/// The upstream e2e rule (test/e2e/network/service.go, `AffinityConfirmCount`): affinity over new
/// connections holds when the last 15 replies of a source are identical.
pub const E2E_CONFIRM: u64 = 15;
/// Lost sequence numbers a session remembers, to tell a late reply from a stray one.
const RECENT_LOST: usize = 64;

/// What an affinity run does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub address: SocketAddr,
    pub proto: Proto,
    pub sessions: u32,
    pub interval: Duration,
    pub timeout: Duration,
    /// A new socket (UDP: new source port) or connection (TCP) for every message.
    pub new_connection_per_message: bool,
    /// UDP: plain `send_to`/`recv_from` instead of quinn-udp (no GRO, no batched receive).
    pub plain_udp: bool,
    /// Session names are `<prefix>-<n>`: unique per run, so server counters never mix runs.
    pub prefix: String,
}

impl Config {
    /// When session `i` sends its first message, relative to the start: sessions are spread
    /// evenly over one interval.
    fn offset(&self, i: u32) -> Duration {
        let nanos = self.interval.as_nanos() * u128::from(i) / u128::from(self.sessions.max(1));
        Duration::from_nanos(nanos as u64)
    }
}

/// Wall-clock milliseconds since the epoch: change times are compared across processes (an agent
/// in a lab namespace and the parent that watches the backend pool).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Pod,
    Address,
}

/// A session's serving pod or reflective address changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// When the reply with the new value arrived (ms since the epoch).
    pub at_ms: u64,
    /// When the last reply with the old value arrived.
    pub since_ms: u64,
    pub session: u32,
    pub kind: ChangeKind,
    pub old: String,
    pub new: String,
    /// The backend pool changed between `since_ms` and `at_ms` (set by the judge, not the engine).
    #[serde(default)]
    pub during_pool_change: bool,
}

/// Counters of a run (or of the run so far).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub sent: u64,
    pub answered: u64,
    pub lost: u64,
    pub late: u64,
    /// Replies that match no message of the session (duplicates, foreign senders, unparsable).
    pub stray: u64,
    /// TCP connects (UDP: socket opens) that failed; their messages count as sent and lost.
    pub connect_failures: u64,
    pub pod_changes: u64,
    pub address_changes: u64,
}

/// Live counters shared by the engine's threads and tasks.
#[derive(Debug, Default)]
pub struct Counters {
    sent: AtomicU64,
    answered: AtomicU64,
    lost: AtomicU64,
    late: AtomicU64,
    stray: AtomicU64,
    connect_failures: AtomicU64,
    pod_changes: AtomicU64,
    address_changes: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> Totals {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Totals {
            sent: get(&self.sent),
            answered: get(&self.answered),
            lost: get(&self.lost),
            late: get(&self.late),
            stray: get(&self.stray),
            connect_failures: get(&self.connect_failures),
            pod_changes: get(&self.pod_changes),
            address_changes: get(&self.address_changes),
        }
    }

    fn add(a: &AtomicU64) {
        a.fetch_add(1, Ordering::Relaxed);
    }
}

/// One session at the end of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRow {
    pub session: u32,
    pub sent: u64,
    pub answered: u64,
    pub lost: u64,
    pub late: u64,
    /// Answered messages per pod.
    pub pods: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_address: Option<String>,
    /// How many of the last replies came from `last_pod` in a row.
    pub streak: u64,
}

/// The end of a run: exact totals and every session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Done {
    pub prefix: String,
    pub elapsed_s: f64,
    pub totals: Totals,
    pub sessions: Vec<SessionRow>,
}

/// What an engine reports (an agent forwards them as [`crate::agent::Output`] lines).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Change(Change),
    Done(Done),
}

enum Msg {
    Change(Change),
    Rows(Vec<SessionRow>),
}

/// Where a session's changes and counts go.
#[derive(Clone)]
struct Sink {
    counters: Arc<Counters>,
    tx: UnboundedSender<Msg>,
    /// Compare only the IP of the reflective address (new source port per message).
    ip_only: bool,
}

/// One client session's state: what is in flight, what it saw.
struct Session {
    id: u32,
    next_seq: u64,
    /// Messages in flight: (seq, sent at).
    pending: Vec<(u64, Instant)>,
    recent_lost: VecDeque<u64>,
    sent: u64,
    answered: u64,
    lost: u64,
    late: u64,
    pods: Vec<(Box<str>, u64)>,
    last_pod: Option<Box<str>>,
    last_address: Option<Box<str>>,
    last_at_ms: u64,
    streak: u64,
}

/// What a reply was.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Answered,
    Late,
    /// No sequence number: a TCP greeting line, or not our protocol.
    Unsequenced,
    Stray,
}

impl Session {
    fn new(id: u32) -> Self {
        Self {
            id,
            next_seq: 0,
            pending: Vec::new(),
            recent_lost: VecDeque::new(),
            sent: 0,
            answered: 0,
            lost: 0,
            late: 0,
            pods: Vec::new(),
            last_pod: None,
            last_address: None,
            last_at_ms: 0,
            streak: 0,
        }
    }

    /// Writes the next message into `buf` and marks it in flight; returns its sequence number.
    fn message(&mut self, prefix: &str, buf: &mut Vec<u8>, now: Instant, sink: &Sink) -> u64 {
        use std::io::Write;
        let seq = self.next_seq;
        self.next_seq += 1;
        buf.clear();
        let _ = writeln!(buf, "svclb {prefix}-{} {seq}", self.id);
        self.pending.push((seq, now));
        self.sent += 1;
        Counters::add(&sink.counters.sent);
        seq
    }

    /// The message `seq` got no reply in time: lost (no-op when it was answered).
    fn expire(&mut self, seq: u64, sink: &Sink) {
        if let Some(i) = self.pending.iter().position(|(s, _)| *s == seq) {
            self.pending.swap_remove(i);
            self.lost += 1;
            Counters::add(&sink.counters.lost);
            if self.recent_lost.len() == RECENT_LOST {
                self.recent_lost.pop_front();
            }
            self.recent_lost.push_back(seq);
        }
    }

    /// Every message in flight is lost (TCP: the connection broke).
    fn expire_all(&mut self, sink: &Sink) {
        let seqs: Vec<u64> = self.pending.iter().map(|(s, _)| *s).collect();
        for s in seqs {
            self.expire(s, sink);
        }
    }

    fn on_reply(&mut self, data: &[u8], sink: &Sink) -> Reply {
        let Some(r) = parse_reply(data) else {
            Counters::add(&sink.counters.stray);
            return Reply::Stray;
        };
        let Some(seq) = r.seq else {
            return Reply::Unsequenced;
        };
        if let Some(i) = self.pending.iter().position(|(s, _)| *s == seq) {
            self.pending.swap_remove(i);
            self.answered += 1;
            Counters::add(&sink.counters.answered);
            self.observe(r.name, r.client.unwrap_or(""), sink);
            Reply::Answered
        } else if let Some(i) = self.recent_lost.iter().position(|s| *s == seq) {
            self.recent_lost.remove(i);
            self.late += 1;
            Counters::add(&sink.counters.late);
            Reply::Late
        } else {
            Counters::add(&sink.counters.stray);
            Reply::Stray
        }
    }

    /// An answered reply from `pod` that saw the client as `client`: log changes.
    fn observe(&mut self, pod: &str, client: &str, sink: &Sink) {
        let at_ms = now_ms();
        let address = if sink.ip_only {
            client
                .parse::<SocketAddr>()
                .map(|a| a.ip().to_string())
                .unwrap_or_else(|_| client.to_string())
        } else {
            client.to_string()
        };
        let (session, since_ms) = (self.id, self.last_at_ms);
        let change = |kind, old: &str, new: &str| {
            let _ = sink.tx.send(Msg::Change(Change {
                at_ms,
                since_ms,
                session,
                kind,
                old: old.to_string(),
                new: new.to_string(),
                during_pool_change: false,
            }));
        };
        match &self.last_pod {
            Some(old) if &**old == pod => self.streak += 1,
            Some(old) => {
                change(ChangeKind::Pod, old, pod);
                Counters::add(&sink.counters.pod_changes);
                self.streak = 1;
            }
            None => self.streak = 1,
        }
        if let Some(old) = &self.last_address
            && **old != *address
        {
            change(ChangeKind::Address, old, &address);
            Counters::add(&sink.counters.address_changes);
        }
        if self.last_pod.as_deref() != Some(pod) {
            self.last_pod = Some(pod.into());
        }
        if self.last_address.as_deref() != Some(address.as_str()) {
            self.last_address = Some(address.into());
        }
        self.last_at_ms = at_ms;
        match self.pods.iter_mut().find(|(p, _)| &**p == pod) {
            Some((_, n)) => *n += 1,
            None => self.pods.push((pod.into(), 1)),
        }
    }

    fn row(&self) -> SessionRow {
        SessionRow {
            session: self.id,
            sent: self.sent,
            answered: self.answered,
            lost: self.lost,
            late: self.late,
            pods: self.pods.iter().map(|(p, n)| (p.to_string(), *n)).collect(),
            last_pod: self.last_pod.as_deref().map(str::to_string),
            last_address: self.last_address.as_deref().map(str::to_string),
            streak: self.streak,
        }
    }
}

/// A running affinity engine.
pub struct Engine {
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    stop_tx: tokio::sync::watch::Sender<bool>,
    rx: UnboundedReceiver<Msg>,
    parts: usize,
    rows: Vec<SessionRow>,
    prefix: String,
    started: Instant,
    finished: bool,
}

impl Engine {
    /// Opens the sessions and starts sending. Must be called inside a tokio runtime.
    pub fn start(cfg: Config) -> Result<Engine> {
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (tx, rx) = unbounded_channel();
        let sink = Sink {
            counters: counters.clone(),
            tx,
            ip_only: cfg.new_connection_per_message,
        };
        let prefix = cfg.prefix.clone();
        let started = Instant::now();
        let parts = match cfg.proto {
            Proto::Udp => udp::start(Arc::new(cfg), sink, stop.clone())?,
            Proto::Tcp => tcp::start(Arc::new(cfg), sink, stop_rx, started),
        };
        Ok(Engine {
            counters,
            stop,
            stop_tx,
            rx,
            parts,
            rows: Vec::new(),
            prefix,
            started,
            finished: false,
        })
    }

    /// The counters so far.
    pub fn totals(&self) -> Totals {
        self.counters.snapshot()
    }

    /// Stops sending; messages in flight still get their timeout, then `next` returns `Done`.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.stop_tx.send(true);
    }

    /// The next change as it happens, then one `Done`, then `None`.
    pub async fn next(&mut self) -> Option<Event> {
        if self.finished {
            return None;
        }
        loop {
            match self.rx.recv().await {
                Some(Msg::Change(c)) => return Some(Event::Change(c)),
                Some(Msg::Rows(rows)) => {
                    self.rows.extend(rows);
                    self.parts -= 1;
                    if self.parts == 0 {
                        break;
                    }
                }
                // A part panicked: report what the others measured.
                None => break,
            }
        }
        // Changes sent before the last part finished are already in the channel: drain them first.
        if let Ok(Msg::Change(c)) = self.rx.try_recv() {
            return Some(Event::Change(c));
        }
        self.finished = true;
        let mut sessions = std::mem::take(&mut self.rows);
        sessions.sort_by_key(|r| r.session);
        Some(Event::Done(Done {
            prefix: self.prefix.clone(),
            elapsed_s: self.started.elapsed().as_secs_f64(),
            totals: self.counters.snapshot(),
            sessions,
        }))
    }
}

/// A change of the backend pool, as seen by polling the target's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolChange {
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

/// The change happened while the pool changed: a pool change lies between the last reply with
/// the old value and the first with the new one (± `slack_ms`, the polling period).
pub fn during_pool_change(c: &Change, pool: &[PoolChange], slack_ms: u64) -> bool {
    pool.iter()
        .any(|p| p.at_ms + slack_ms >= c.since_ms && p.at_ms <= c.at_ms + slack_ms)
}

/// Holds or violated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Holds,
    Violated,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Holds => "HOLDS",
            Verdict::Violated => "VIOLATED",
        })
    }
}

/// The verdict. Persistent sessions: holds when no session changed pod or reflective address while
/// the backend pool was unchanged (`violating` counts those changes). New connection per message:
/// the upstream e2e rule, the last 15 replies of every session from one pod.
pub fn judge(
    new_connection_per_message: bool,
    totals: &Totals,
    rows: &[SessionRow],
    violating: (u64, u64),
) -> (Verdict, Vec<String>) {
    let mut reasons = Vec::new();
    if totals.answered == 0 {
        reasons.push("no message was answered".to_string());
    } else if new_connection_per_message {
        let short = rows.iter().filter(|r| r.answered < E2E_CONFIRM).count();
        let split = rows
            .iter()
            .filter(|r| r.answered >= E2E_CONFIRM && r.streak < E2E_CONFIRM)
            .count();
        if split > 0 {
            reasons.push(format!(
                "{split} session(s) whose last {E2E_CONFIRM} replies did not all come from one pod (upstream e2e rule)"
            ));
        }
        if short > 0 {
            reasons.push(format!(
                "{short} session(s) with fewer than {E2E_CONFIRM} answered messages: affinity not confirmed (run longer)"
            ));
        }
    } else {
        let (pods, addresses) = violating;
        if pods + addresses > 0 {
            reasons.push(format!(
                "{pods} pod change(s) and {addresses} reflective address change(s) while the backend pool was unchanged"
            ));
        }
    }
    let verdict = if reasons.is_empty() {
        Verdict::Holds
    } else {
        Verdict::Violated
    };
    (verdict, reasons)
}

#[cfg(test)]
mod tests;
