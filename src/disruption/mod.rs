//! Disruption traffic: what one `disruption` agent keeps up at its source while a Service's
//! endpoints change, tallied on the run's time axis, one second at a time.
//!
//! * **New connections** at a steady rate, open loop (attempt *i* starts at *i*/rate whatever
//!   the earlier ones do, so a hanging Service cannot slow the storm down and hide failures):
//!   each connects, reads the server's reply line and closes (RST). Each attempt counts in the
//!   second it started: ok (and which pod answered, and the connect latency) or failed by kind
//!   (refused, reset, timeout, a reply that is not the wire protocol's: wrong reply, ...).
//! * **Long-lived connections**: each sends `svclb <session> <seq>` every interval and waits for
//!   that line back (`seq=` echoed, from the pod that greeted it). No reply within the timeout,
//!   a reset, an EOF or a wrong reply breaks it ([`Break`]: when, which pod, how); it reconnects
//!   at its next interval, and a failed reconnect counts as a failed connection.
//! * **UDP sessions**: one socket (one conntrack flow) each, a datagram `svclb <session> <seq>`
//!   every interval; a datagram without its reply within the timeout is lost ([`Lost`]: when it
//!   was sent, and the pod the session was on), refused when an ICMP error came back for it.
//!
//! Times are the run's: the run gives its origin as wall-clock milliseconds (agents run in other
//! processes, namespaces and pods), each agent maps it to its own monotonic clock once. Second
//! tallies go out as deltas once the second is over (everything started in it has ended), so a
//! late result is one more delta and [`Collected::add`] sums them exactly. Judging (verdict,
//! timeline, record) is [`judge`]'s.

pub mod judge;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::storm::{FailKind, Failures, Proto, StormConfig};
use crate::wire::parse_reply;

/// How often long-lived connections and UDP sessions send (the 100 ms).
pub const INTERVAL: Duration = Duration::from_millis(100);
/// A second is sent once this long has passed after its end beyond the timeout: everything that
/// started in it has ended by then (a later result still arrives, as one more delta).
const SECOND_MARGIN: Duration = Duration::from_millis(300);
/// How often an agent sends what it has.
pub const TICK: Duration = Duration::from_secs(1);
/// Longest reply line a long-lived connection keeps.
const MAX_LINE: usize = 4096;

/// What one agent keeps up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficConfig {
    /// The Service address (TCP and UDP on the same port).
    pub target: SocketAddr,
    /// New connections per second (0: none).
    pub rate: f64,
    pub long_lived: u32,
    pub udp_sessions: u32,
    /// Between two messages of a long-lived connection or UDP session.
    pub interval: Duration,
    /// Per new connection (connect and reply), per message of a long-lived connection or session.
    pub timeout: Duration,
    /// The run's time axis starts at this wall-clock time (ms since the epoch).
    pub origin_ms: u64,
    /// The agent stops by itself this long after the origin (a run that vanished).
    pub max: Duration,
    /// Session names are `<prefix>-l<n>` (long-lived) and `<prefix>-u<n>` (UDP).
    pub prefix: String,
}

/// What a run does to the Service's endpoints after the warm-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing: a baseline.
    None,
    /// Delete one pod (the named one, else the first ready one by name); its ReplicaSet
    /// replaces it.
    DeletePod(Option<String>),
    /// Scale the Deployment to N replicas (restored afterwards).
    Scale(u32),
    /// `kubectl rollout restart`: every pod replaced by a rolling update.
    RolloutRestart,
    /// Cordon the node and evict the Service's pods on it (uncordoned afterwards).
    DrainNode(String),
}

impl std::str::FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (verb, arg) = match s.split_once('=') {
            Some((v, a)) => (v, Some(a)),
            None => (s, None),
        };
        let bad =
            || format!("--action {s:?}: give delete-pod[=POD], scale=N, rollout-restart, drain-node=NODE or none");
        match (verb, arg) {
            ("none", None) => Ok(Action::None),
            ("delete-pod", None) => Ok(Action::DeletePod(None)),
            ("delete-pod", Some(p)) if !p.is_empty() => Ok(Action::DeletePod(Some(p.to_string()))),
            ("scale", Some(n)) => n
                .parse()
                .map(Action::Scale)
                .map_err(|_| format!("--action {s:?}: scale=N takes a number of replicas, e.g. scale=3")),
            ("rollout-restart", None) => Ok(Action::RolloutRestart),
            ("drain-node", Some(n)) if !n.is_empty() => Ok(Action::DrainNode(n.to_string())),
            ("drain-node", _) => Err(format!("--action {s:?}: name the node, e.g. drain-node=node2")),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::None => f.write_str("none"),
            Action::DeletePod(None) => f.write_str("delete-pod"),
            Action::DeletePod(Some(p)) => write!(f, "delete-pod={p}"),
            Action::Scale(n) => write!(f, "scale={n}"),
            Action::RolloutRestart => f.write_str("rollout-restart"),
            Action::DrainNode(n) => write!(f, "drain-node={n}"),
        }
    }
}

/// How a long-lived connection broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakKind {
    /// The server closed it (EOF).
    Closed,
    Reset,
    /// No reply within the timeout.
    Timeout,
    /// A reply that was not the echo of the line sent, or came from another pod.
    WrongReply,
}

impl std::fmt::Display for BreakKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BreakKind::Closed => "closed",
            BreakKind::Reset => "reset",
            BreakKind::Timeout => "timeout",
            BreakKind::WrongReply => "wrong reply",
        })
    }
}

/// A long-lived connection broke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Break {
    /// When it was noticed (ms since the origin).
    pub at_ms: u64,
    /// When it was established.
    pub since_ms: u64,
    pub conn: u32,
    /// The pod that greeted it.
    pub pod: String,
    pub kind: BreakKind,
}

/// Why a UDP datagram is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LostKind {
    /// No reply within the timeout.
    Timeout,
    /// An ICMP error (port unreachable) came back.
    Refused,
}

/// A UDP datagram without its reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lost {
    /// When it was sent (ms since the origin).
    pub at_ms: u64,
    pub session: u32,
    /// The pod the session's last reply came from; none before its first reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub kind: LostKind,
}

/// One second of one agent (a delta: tallies of the same second add up).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SecondTally {
    /// Since the origin: `[second, second + 1)`.
    pub second: u32,
    /// New connections started in this second, and how they ended.
    pub attempts: u64,
    pub ok: u64,
    pub failures: Failures,
    /// Connect latency of the ok ones, `[µs, count]` buckets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_us: Vec<[u64; 2]>,
    /// Which pods answered the new connections.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pods: BTreeMap<String, u64>,
    /// Long-lived connections: messages sent and answered in time.
    #[serde(default)]
    pub ll_sent: u64,
    #[serde(default)]
    pub ll_answered: u64,
    /// Long-lived (re)connects that succeeded, and those that failed by kind.
    #[serde(default)]
    pub ll_connects: u64,
    #[serde(default)]
    pub ll_connect_failures: Failures,
    /// UDP datagrams sent in this second, answered, lost.
    #[serde(default)]
    pub udp_sent: u64,
    #[serde(default)]
    pub udp_answered: u64,
    #[serde(default)]
    pub udp_lost: u64,
}

/// What an agent sends every [`TICK`]: the seconds that ended, the breaks and losses seen
/// since the last tick. The last one is `done`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    pub seconds: Vec<SecondTally>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub breaks: Vec<Break>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<Lost>,
    /// Long-lived connections established now.
    pub open: u32,
    #[serde(default)]
    pub done: bool,
}

/// Per-second latency histogram: 1 µs to 1 min, 2 significant digits (1%: plenty for a p99).
pub fn second_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("static histogram bounds are valid")
}

/// One second while it fills.
#[derive(Debug)]
struct Filling {
    tally: SecondTally,
    latency: Histogram<u64>,
}

impl Filling {
    fn new(second: u32) -> Self {
        Filling {
            tally: SecondTally {
                second,
                ..SecondTally::default()
            },
            latency: second_histogram(),
        }
    }

    fn done(mut self) -> SecondTally {
        self.tally.latency_us = buckets(&self.latency);
        self.tally
    }
}

/// A histogram as `[value, count]` pairs of its recorded buckets.
pub fn buckets(h: &Histogram<u64>) -> Vec<[u64; 2]> {
    h.iter_recorded()
        .map(|v| [h.highest_equivalent(v.value_iterated_to()), v.count_at_value()])
        .collect()
}

/// Wall-clock milliseconds since the epoch: the run's origin travels to agents in other
/// processes (namespaces, pods) this way.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The run's clock in an agent: the origin on this process's monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    /// The origin `origin_ms` (wall clock), placed on the monotonic clock once.
    pub fn new(origin_ms: u64) -> Clock {
        let now = Instant::now();
        let now_ms = now_ms();
        let origin = if now_ms >= origin_ms {
            now.checked_sub(Duration::from_millis(now_ms - origin_ms))
                .unwrap_or(now)
        } else {
            now + Duration::from_millis(origin_ms - now_ms)
        };
        Clock { origin }
    }

    /// Milliseconds since the origin (0 before it).
    pub fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.origin).as_millis() as u64
    }

    pub fn second(&self, t: Instant) -> u32 {
        (self.ms(t) / 1000) as u32
    }

    pub fn at(&self, ms: u64) -> Instant {
        self.origin + Duration::from_millis(ms)
    }
}

/// What the agent's tasks tally, shared.
#[derive(Debug, Default)]
struct Tallies {
    seconds: BTreeMap<u32, Filling>,
    breaks: Vec<Break>,
    lost: Vec<Lost>,
    open: u32,
}

impl Tallies {
    fn second(&mut self, s: u32) -> &mut Filling {
        self.seconds.entry(s).or_insert_with(|| Filling::new(s))
    }

    /// What is ready to send: seconds that ended before `done_before` (all when `None`), every
    /// break and loss.
    fn take(&mut self, done_before: Option<u32>) -> Tick {
        let keep = match done_before {
            Some(s) => self.seconds.split_off(&s),
            None => BTreeMap::new(),
        };
        let ended = std::mem::replace(&mut self.seconds, keep);
        Tick {
            seconds: ended.into_values().map(Filling::done).collect(),
            breaks: std::mem::take(&mut self.breaks),
            lost: std::mem::take(&mut self.lost),
            open: self.open,
            done: false,
        }
    }
}

type Shared = Arc<Mutex<Tallies>>;

fn lock(t: &Shared) -> std::sync::MutexGuard<'_, Tallies> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the traffic until `stop` (or `cfg.max` after the origin), handing a [`Tick`] to `emit`
/// every [`TICK`] and a last one (`done`) once everything in flight has ended.
pub async fn run(
    cfg: TrafficConfig,
    stop: impl std::future::Future<Output = ()>,
    mut emit: impl FnMut(Tick) -> Result<()>,
) -> Result<()> {
    if !(cfg.rate >= 0.0 && cfg.rate.is_finite()) {
        anyhow::bail!("the rate must be a number of connections per second");
    }
    let clock = Clock::new(cfg.origin_ms);
    let cfg = Arc::new(cfg);
    let tallies: Shared = Arc::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(storm(cfg.clone(), clock, tallies.clone(), stop_rx.clone()));
    for i in 0..cfg.long_lived {
        tasks.spawn(long_lived(cfg.clone(), i, clock, tallies.clone(), stop_rx.clone()));
    }
    for i in 0..cfg.udp_sessions {
        tasks.spawn(udp_session(cfg.clone(), i, clock, tallies.clone(), stop_rx.clone()));
    }
    let end = tokio::time::sleep_until(clock.at(cfg.max.as_millis() as u64));
    tokio::pin!(end, stop);
    let mut tick = tokio::time::interval(TICK);
    tick.tick().await;
    let lag = cfg.timeout + SECOND_MARGIN;
    let mut stopping = false;
    let mut failed = None;
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => {
                    // A task that cannot go on (no socket at all): stop everything, report.
                    failed = failed.or(Some(e));
                    stopping = true;
                    let _ = stop_tx.send(true);
                }
                Some(Err(e)) => {
                    failed = failed.or(Some(anyhow::anyhow!("a traffic task failed: {e}")));
                    stopping = true;
                    let _ = stop_tx.send(true);
                }
                None => break,
            },
            _ = tick.tick() => {
                let now = Instant::now();
                let ended = now.checked_sub(lag).map(|t| clock.second(t));
                let t = lock(&tallies).take(ended);
                emit(t)?;
            }
            () = &mut stop, if !stopping => {
                stopping = true;
                let _ = stop_tx.send(true);
            }
            () = &mut end, if !stopping => {
                stopping = true;
                let _ = stop_tx.send(true);
            }
        }
    }
    let mut last = lock(&tallies).take(None);
    last.done = true;
    emit(last)?;
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Waits until `at` or until stopped; true when stopped.
async fn wait_until(at: Instant, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep_until(at) => {}
        () = stopped(stop) => return true,
    }
    *stop.borrow()
}

/// Completes once the run says stop (or the run is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// New connections at `cfg.rate`, open loop.
async fn storm(cfg: Arc<TrafficConfig>, clock: Clock, tallies: Shared, mut stop: watch::Receiver<bool>) -> Result<()> {
    if cfg.rate <= 0.0 {
        return Ok(());
    }
    let storm_cfg = Arc::new(StormConfig {
        target: cfg.target,
        proto: Proto::Tcp,
        conns: 1,
        parallel: 1,
        rate: None,
        timeout: cfg.timeout,
        deadline: None,
        srccidr: None,
        graceful_close: false,
        session: String::new(),
        fetch_bytes: None,
        src_ports: None,
    });
    let start = Instant::now();
    let mut inflight = tokio::task::JoinSet::new();
    let mut fatal = None;
    for i in 0u64.. {
        let at = start + Duration::from_secs_f64(i as f64 / cfg.rate);
        if wait_until(at, &mut stop).await {
            break;
        }
        let started = Instant::now();
        let second = clock.second(started);
        lock(&tallies).second(second).tally.attempts += 1;
        let (storm_cfg, tallies) = (storm_cfg.clone(), tallies.clone());
        inflight.spawn(async move {
            let mut buf = [0u8; 512];
            let result = crate::storm::tcp_connection(&storm_cfg, &mut buf).await;
            let mut t = lock(&tallies);
            let s = t.second(second);
            match result {
                Ok(Ok((latency, n))) => match parse_reply(&buf[..n]) {
                    Some(reply) => {
                        s.tally.ok += 1;
                        s.latency.saturating_record(latency.as_micros().max(1) as u64);
                        match s.tally.pods.get_mut(reply.name) {
                            Some(c) => *c += 1,
                            None => {
                                s.tally.pods.insert(reply.name.to_string(), 1);
                            }
                        }
                        Ok(())
                    }
                    None => {
                        s.tally.failures.add(FailKind::Unparsable);
                        Ok(())
                    }
                },
                Ok(Err(kind)) => {
                    s.tally.failures.add(kind);
                    Ok(())
                }
                Err(e) => {
                    s.tally.failures.add(FailKind::Other);
                    Err(e)
                }
            }
        });
        while let Some(done) = inflight.try_join_next() {
            if let Ok(Err(e)) = done {
                fatal = fatal.or(Some(e));
            }
        }
        if fatal.is_some() {
            break;
        }
    }
    while let Some(done) = inflight.join_next().await {
        if let Ok(Err(e)) = done {
            fatal = fatal.or(Some(e));
        }
    }
    match fatal {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Sessions start spread over one interval, so their messages do not go out in bursts.
fn offset(cfg: &TrafficConfig, i: u32, of: u32) -> Duration {
    let nanos = cfg.interval.as_nanos() * u128::from(i) / u128::from(of.max(1));
    Duration::from_nanos(nanos as u64)
}

/// The next slot of a periodic sender after `now`: missed slots are skipped, not caught up.
fn next_slot(start: Instant, interval: Duration, round: &mut u32, now: Instant) -> Instant {
    *round += 1;
    let mut due = start + interval * *round;
    if due < now {
        let behind = now.duration_since(start).as_nanos() / interval.as_nanos().max(1);
        *round = behind as u32 + 1;
        due = start + interval * *round;
    }
    due
}

fn io_kind(e: &std::io::Error) -> FailKind {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => FailKind::Refused,
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => FailKind::Reset,
        ErrorKind::TimedOut => FailKind::Timeout,
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => FailKind::Unreachable,
        _ => FailKind::Other,
    }
}

/// An established long-lived connection.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pod: String,
    since_ms: u64,
}

impl Conn {
    /// Connects and reads the greeting (the pod's line), within `timeout`.
    async fn open(cfg: &TrafficConfig, clock: &Clock) -> Result<Conn, FailKind> {
        let attempt = async {
            let stream = crate::storm::connect_tcp_to(cfg.target)
                .await
                .map_err(|e| io_kind(&e))?;
            let _ = stream.set_nodelay(true);
            let mut c = Conn {
                stream,
                buf: Vec::with_capacity(256),
                pod: String::new(),
                since_ms: clock.ms(Instant::now()),
            };
            let line = c.line().await.map_err(|k| match k {
                BreakKind::Closed => FailKind::Read,
                BreakKind::Reset => FailKind::Reset,
                _ => FailKind::Other,
            })?;
            let reply = parse_reply(&line).ok_or(FailKind::Unparsable)?;
            c.pod = reply.name.to_string();
            Ok(c)
        };
        tokio::time::timeout(cfg.timeout, attempt)
            .await
            .unwrap_or(Err(FailKind::Timeout))
    }

    /// The next line.
    async fn line(&mut self) -> Result<Vec<u8>, BreakKind> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                return Ok(self.buf.drain(..=pos).collect());
            }
            if self.buf.len() > MAX_LINE {
                return Err(BreakKind::WrongReply);
            }
            let mut chunk = [0u8; 512];
            match self.stream.read(&mut chunk).await {
                Ok(0) => return Err(BreakKind::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => {
                    return Err(match io_kind(&e) {
                        FailKind::Reset => BreakKind::Reset,
                        _ => BreakKind::Closed,
                    });
                }
            }
        }
    }

    /// Sends `svclb <session> <seq>` and waits for its echo from the same pod.
    async fn exchange(&mut self, session: &str, seq: u64, timeout: Duration) -> Result<(), BreakKind> {
        let attempt = async {
            let line = format!("svclb {session} {seq}\n");
            self.stream
                .write_all(line.as_bytes())
                .await
                .map_err(|e| match io_kind(&e) {
                    FailKind::Reset => BreakKind::Reset,
                    _ => BreakKind::Closed,
                })?;
            let reply = self.line().await?;
            match parse_reply(&reply) {
                Some(r) if r.name == self.pod && r.seq == Some(seq) => Ok(()),
                _ => Err(BreakKind::WrongReply),
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or(Err(BreakKind::Timeout))
    }
}

/// One long-lived connection, kept up (and re-made) for the whole run.
async fn long_lived(
    cfg: Arc<TrafficConfig>,
    id: u32,
    clock: Clock,
    tallies: Shared,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let session = format!("{}-l{id}", cfg.prefix);
    let start = Instant::now() + offset(&cfg, id, cfg.long_lived);
    let mut due = start;
    let mut round = 0;
    let mut conn: Option<Conn> = None;
    let mut seq = 0u64;
    loop {
        if wait_until(due, &mut stop).await {
            break;
        }
        if conn.is_none() {
            let t = Instant::now();
            let opened = Conn::open(&cfg, &clock).await;
            let mut tl = lock(&tallies);
            match opened {
                Ok(c) => {
                    tl.second(clock.second(t)).tally.ll_connects += 1;
                    tl.open += 1;
                    conn = Some(c);
                }
                Err(kind) => tl.second(clock.second(t)).tally.ll_connect_failures.add(kind),
            }
        }
        if let Some(c) = conn.as_mut() {
            let sent = Instant::now();
            let second = clock.second(sent);
            seq += 1;
            lock(&tallies).second(second).tally.ll_sent += 1;
            let result = c.exchange(&session, seq, cfg.timeout).await;
            let mut tl = lock(&tallies);
            match result {
                Ok(()) => tl.second(second).tally.ll_answered += 1,
                Err(kind) => {
                    let c = conn.take().expect("connected");
                    tl.open -= 1;
                    tl.breaks.push(Break {
                        at_ms: clock.ms(Instant::now()),
                        since_ms: c.since_ms,
                        conn: id,
                        pod: c.pod.clone(),
                        kind,
                    });
                    // RST: a broken connection is not finished politely.
                    let _ = socket2::SockRef::from(&c.stream).set_linger(Some(Duration::ZERO));
                }
            }
        }
        due = next_slot(start, cfg.interval, &mut round, Instant::now());
    }
    if conn.take().is_some() {
        lock(&tallies).open -= 1;
    }
    Ok(())
}

/// A datagram in flight.
struct Pending {
    seq: u64,
    sent: Instant,
    pod: Option<String>,
    refused: bool,
}

/// One UDP session: its own socket, a datagram every interval.
async fn udp_session(
    cfg: Arc<TrafficConfig>,
    id: u32,
    clock: Clock,
    tallies: Shared,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let bind: SocketAddr = if cfg.target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open a UDP socket: {e}"))?;
    socket
        .connect(cfg.target)
        .await
        .map_err(|e| anyhow::anyhow!("cannot address {} over UDP: {e}", cfg.target))?;
    let session = format!("{}-u{id}", cfg.prefix);
    let start = Instant::now() + offset(&cfg, id, cfg.udp_sessions);
    let mut due = start;
    let mut round = 0;
    let mut seq = 0u64;
    let mut pod: Option<String> = None;
    let mut pending: std::collections::VecDeque<Pending> = Default::default();
    let mut buf = [0u8; 1024];
    let mut stopping = *stop.borrow();
    loop {
        if stopping && pending.is_empty() {
            break;
        }
        let expires = pending.front().map(|p| p.sent + cfg.timeout);
        tokio::select! {
            () = tokio::time::sleep_until(due), if !stopping => {
                let now = Instant::now();
                seq += 1;
                let msg = format!("svclb {session} {seq}\n");
                lock(&tallies).second(clock.second(now)).tally.udp_sent += 1;
                // A failed send is a datagram never answered: it expires as lost.
                let refused = matches!(socket.send(msg.as_bytes()).await, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused);
                pending.push_back(Pending { seq, sent: now, pod: pod.clone(), refused });
                due = next_slot(start, cfg.interval, &mut round, Instant::now());
            }
            () = tokio::time::sleep_until(expires.unwrap_or(due)), if expires.is_some() => {
                let p = pending.pop_front().expect("a datagram in flight");
                let mut tl = lock(&tallies);
                tl.second(clock.second(p.sent)).tally.udp_lost += 1;
                tl.lost.push(Lost {
                    at_ms: clock.ms(p.sent),
                    session: id,
                    pod: p.pod,
                    kind: if p.refused { LostKind::Refused } else { LostKind::Timeout },
                });
            }
            r = socket.recv(&mut buf) => match r {
                Ok(n) => {
                    if let Some(reply) = parse_reply(&buf[..n])
                        && let Some(s) = reply.seq
                        && let Some(i) = pending.iter().position(|p| p.seq == s)
                    {
                        let p = pending.remove(i).expect("found");
                        pod = Some(reply.name.to_string());
                        lock(&tallies).second(clock.second(p.sent)).tally.udp_answered += 1;
                    }
                    // Late or stray replies: the datagram was already counted lost.
                }
                // An ICMP error (port unreachable) for a datagram in flight: the oldest one.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    if let Some(p) = pending.iter_mut().find(|p| !p.refused) {
                        p.refused = true;
                    }
                }
                Err(_) => {}
            },
            () = stopped(&mut stop), if !stopping => stopping = true,
        }
    }
    Ok(())
}

/// One second of the run, all agents together.
#[derive(Debug)]
pub struct CollectedSecond {
    pub tally: SecondTally,
    pub latency: Histogram<u64>,
}

impl CollectedSecond {
    /// A second nothing was measured in.
    pub fn empty(second: u32) -> Self {
        CollectedSecond {
            tally: SecondTally {
                second,
                ..SecondTally::default()
            },
            latency: second_histogram(),
        }
    }
}

/// What every agent of a run sent, merged.
#[derive(Debug, Default)]
pub struct Collected {
    pub seconds: BTreeMap<u32, CollectedSecond>,
    /// With the index of the agent that saw it.
    pub breaks: Vec<(usize, Break)>,
    pub lost: Vec<(usize, Lost)>,
    /// Long-lived connections established, per agent, as of its last tick.
    pub open: BTreeMap<usize, u32>,
    /// Agents that sent their last tick.
    pub done: std::collections::BTreeSet<usize>,
}

impl Collected {
    /// Adds a tick of agent `source`: seconds add up (counts, failures, pods, latency buckets).
    pub fn add(&mut self, source: usize, tick: Tick) {
        for t in tick.seconds {
            let s = self
                .seconds
                .entry(t.second)
                .or_insert_with(|| CollectedSecond::empty(t.second));
            for [us, n] in &t.latency_us {
                s.latency.saturating_record_n(*us, *n);
            }
            let a = &mut s.tally;
            a.attempts += t.attempts;
            a.ok += t.ok;
            a.failures.merge(&t.failures);
            for (pod, n) in t.pods {
                *a.pods.entry(pod).or_default() += n;
            }
            a.ll_sent += t.ll_sent;
            a.ll_answered += t.ll_answered;
            a.ll_connects += t.ll_connects;
            a.ll_connect_failures.merge(&t.ll_connect_failures);
            a.udp_sent += t.udp_sent;
            a.udp_answered += t.udp_answered;
            a.udp_lost += t.udp_lost;
        }
        self.breaks.extend(tick.breaks.into_iter().map(|b| (source, b)));
        self.lost.extend(tick.lost.into_iter().map(|l| (source, l)));
        self.open.insert(source, tick.open);
        if tick.done {
            self.done.insert(source);
        }
    }

    /// Long-lived connections established now, all agents.
    pub fn open(&self) -> u32 {
        self.open.values().sum()
    }

    /// The last second any agent reported.
    pub fn last_second(&self) -> Option<u32> {
        self.seconds.keys().next_back().copied()
    }
}

#[cfg(test)]
mod tests;
