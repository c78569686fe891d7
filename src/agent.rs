//! The agent: the program a run starts at each source (a lab namespace, a pod through exec, a
//! child process of this machine, or a task of this process for `--address`). One typed
//! [`Request`] in, JSON lines of [`Output`] out, stopped by a line `stop` on stdin (an exec
//! session into a pod can carry no signal; a pipe can). The request travels as one JSON argument,
//! `kubectl-svclb agent --request JSON`, built by [`argv`] and read back by serde: nothing builds
//! an agent's command line by hand.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::affinity::{self, Event};
use crate::record::{add_buckets, histogram_buckets};
use crate::storm::{self, BackendCount, Control, Failures, Outcome, Stop, StormConfig, new_histogram};

/// What an agent does.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "job", rename_all = "snake_case")]
pub enum Request {
    /// A connection storm; ends with one [`Output::Storm`].
    Storm(StormConfig),
    /// Long-lived client sessions; streams their events, ending with [`Output::Done`].
    Sessions(SessionsRequest),
    /// A disruption run's traffic (new connections, long-lived connections, UDP sessions),
    /// streamed as one [`Output::Disruption`] a second, the last one `done`.
    Disruption(crate::disruption::TrafficConfig),
    /// Nothing until stopped (SIGTERM when its pod is deleted): the main process of a client
    /// pod, which the run's storm agents exec into. Prints nothing.
    Hold,
    /// Small storms to many targets at once (the cells of a matrix row); ends with one
    /// [`Output::Probes`], the results in the order of the storms.
    Probes(ProbesRequest),
}

/// `storms`, at most `parallel` of them at a time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbesRequest {
    pub storms: Vec<Probe>,
    pub parallel: usize,
}

/// One probe: a storm, or with `resolve` a storm to a DNS name resolved here, at the source
/// (a pod's resolver is its cluster DNS): the storm's port is kept, its address replaced by
/// each address of its family (IPv4 when the storm's address is) the name gives, the
/// connections spread evenly over them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    #[serde(flatten)]
    pub storm: StormConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve: Option<String>,
}

/// How long a probe waits for its name to resolve (musl's resolver: 5 s per attempt).
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Sessions for `duration`, a stats event every `stats_interval`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionsRequest {
    pub config: affinity::Config,
    pub duration: Duration,
    pub stats_interval: Duration,
}

/// One line of an agent's stdout. Session events are the engine's [`Event`]s as they are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Output {
    /// Connections finished so far in a storm (every [`PROGRESS_EVERY`]).
    Progress {
        done: u64,
    },
    /// The storm's result.
    Storm(StormResult),
    /// What a disruption agent measured since its last line.
    Disruption(crate::disruption::Tick),
    Change(affinity::Change),
    Stats {
        at_ms: u64,
        totals: affinity::Totals,
    },
    Done(affinity::Done),
    /// The results of a [`Request::Probes`], in its order.
    Probes {
        results: Vec<StormResult>,
    },
}

impl From<Event> for Output {
    fn from(e: Event) -> Self {
        match e {
            Event::Change(c) => Output::Change(c),
            Event::Done(d) => Output::Done(d),
        }
    }
}

/// How often a storm agent reports its progress.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// A storm's [`Outcome`] as it travels: the latency histogram as `[µs, count]` buckets, so
/// results of many agents merge exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StormResult {
    pub attempted: u64,
    pub ok: u64,
    pub failures: Failures,
    pub backends: Vec<BackendCount>,
    pub latency_us: Vec<[u64; 2]>,
    pub elapsed_s: f64,
    pub stopped: Option<Stop>,
    /// A probe to a name: the addresses it resolved to, in the resolver's order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<Vec<std::net::IpAddr>>,
    /// A probe to a name that did not resolve: why (no connection was made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve_error: Option<String>,
}

impl From<&Outcome> for StormResult {
    fn from(o: &Outcome) -> Self {
        StormResult {
            attempted: o.attempted,
            ok: o.ok,
            failures: o.failures,
            backends: o.backends.clone(),
            latency_us: histogram_buckets(&o.latency),
            elapsed_s: o.elapsed.as_secs_f64(),
            stopped: o.stopped,
            resolved: None,
            resolve_error: None,
        }
    }
}

/// The distinct addresses of `name` (port `port`), in the resolver's order.
async fn resolve(name: &str, port: u16) -> Result<Vec<std::net::IpAddr>, String> {
    let looked = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port))).await;
    let addrs = match looked {
        Err(_) => return Err(format!("{name}: no answer within {}s", RESOLVE_TIMEOUT.as_secs())),
        Ok(Err(e)) => return Err(format!("{name}: {e}")),
        Ok(Ok(a)) => a,
    };
    let mut out: Vec<std::net::IpAddr> = Vec::new();
    for a in addrs {
        if !out.contains(&a.ip()) {
            out.push(a.ip());
        }
    }
    if out.is_empty() {
        return Err(format!("{name}: no address"));
    }
    Ok(out)
}

/// Connections `0..conns` spread over `n` addresses: how many each gets (the first ones one
/// more when it does not divide).
fn spread_over(conns: u64, n: usize) -> Vec<u64> {
    let n = n.max(1) as u64;
    (0..n).map(|i| conns / n + u64::from(i < conns % n)).collect()
}

/// One probe: a storm, or a storm to every address of a name (the results merged exactly).
async fn probe(p: Probe, control: std::sync::Arc<Control>) -> Result<StormResult> {
    let Some(name) = p.resolve else {
        return Ok(StormResult::from(&storm::run(&p.storm, control).await?));
    };
    // The storm's family only (its address says which): a dual-stack name answers both.
    let v4 = p.storm.target.is_ipv4();
    let addrs = match resolve(&name, p.storm.target.port()).await.and_then(|a| {
        let all = a.len();
        let same: Vec<std::net::IpAddr> = a.into_iter().filter(|ip| ip.is_ipv4() == v4).collect();
        if same.is_empty() {
            return Err(format!("{name}: {all} address(es), none IPv{}", if v4 { 4 } else { 6 }));
        }
        Ok(same)
    }) {
        Ok(a) => a,
        Err(e) => {
            return Ok(StormResult {
                resolve_error: Some(e),
                ..StormResult::from(&Outcome {
                    attempted: 0,
                    ok: 0,
                    failures: Failures::default(),
                    backends: Vec::new(),
                    latency: new_histogram(),
                    elapsed: Duration::ZERO,
                    stopped: None,
                })
            });
        }
    };
    let mut set = tokio::task::JoinSet::new();
    for (ip, conns) in addrs.iter().zip(spread_over(p.storm.conns, addrs.len())) {
        if conns == 0 {
            continue;
        }
        let cfg = StormConfig {
            target: std::net::SocketAddr::new(*ip, p.storm.target.port()),
            conns,
            parallel: p.storm.parallel.min(conns as usize).max(1),
            ..p.storm.clone()
        };
        let control = control.clone();
        set.spawn(async move { storm::run(&cfg, control).await.map(|o| StormResult::from(&o)) });
    }
    let mut parts = Vec::new();
    while let Some(r) = set.join_next().await {
        parts.push(r.context("a probe failed")??);
    }
    Ok(StormResult {
        resolved: Some(addrs),
        ..StormResult::from(&merge(&parts))
    })
}

/// Merges storm results exactly: counts and failures add up, histograms merge bucket by bucket,
/// the elapsed time is the longest, a stop of any part stops the whole (interrupted wins).
pub fn merge<'a>(results: impl IntoIterator<Item = &'a StormResult>) -> Outcome {
    let mut latency = new_histogram();
    let mut failures = Failures::default();
    let mut backends: std::collections::BTreeMap<String, BackendCount> = Default::default();
    let (mut attempted, mut ok, mut elapsed, mut stopped) = (0, 0, Duration::ZERO, None);
    for r in results {
        add_buckets(&mut latency, &r.latency_us);
        failures.merge(&r.failures);
        attempted += r.attempted;
        ok += r.ok;
        elapsed = elapsed.max(Duration::from_secs_f64(r.elapsed_s));
        stopped = match (stopped, r.stopped) {
            (Some(Stop::Interrupted), _) | (_, Some(Stop::Interrupted)) => Some(Stop::Interrupted),
            (s, t) => s.or(t),
        };
        for b in &r.backends {
            backends
                .entry(b.name.clone())
                .and_modify(|x| {
                    x.count += b.count;
                    x.bytes += b.bytes;
                })
                .or_insert_with(|| b.clone());
        }
    }
    Outcome {
        attempted,
        ok,
        failures,
        backends: backends.into_values().collect(),
        latency,
        elapsed,
        stopped,
    }
}

/// The command line after the program: `agent --request JSON`.
pub fn argv(request: &Request) -> Vec<String> {
    vec![
        "agent".into(),
        "--request".into(),
        serde_json::to_string(request).expect("requests serialize"),
    ]
}

/// Reads a request given as `--request JSON`.
pub fn parse(json: &str) -> Result<Request> {
    serde_json::from_str(json).context("bad agent request (an agent runs the same version as the run that starts it)")
}

async fn emit<W: AsyncWrite + Unpin>(out: &mut W, line: &Output) -> Result<()> {
    let mut buf = serde_json::to_vec(line)?;
    buf.push(b'\n');
    out.write_all(&buf).await?;
    out.flush().await?;
    Ok(())
}

/// Runs `request`, writing its output lines to `out`; `stop` ends it early (the storm finishes
/// the connections in flight, the sessions wait out their messages' timeouts), and what was
/// measured is still reported.
pub async fn run<W: AsyncWrite + Unpin>(request: Request, stop: impl Future<Output = ()>, out: &mut W) -> Result<()> {
    tokio::pin!(stop);
    match request {
        Request::Storm(cfg) => {
            let control = Control::new();
            let storm = storm::run(&cfg, control.clone());
            tokio::pin!(storm);
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            let mut stopped = false;
            let outcome = loop {
                tokio::select! {
                    o = &mut storm => break o?,
                    _ = tick.tick() => emit(out, &Output::Progress { done: control.done() }).await?,
                    () = &mut stop, if !stopped => {
                        stopped = true;
                        control.interrupt();
                    }
                }
            };
            emit(out, &Output::Storm(StormResult::from(&outcome))).await
        }
        Request::Probes(req) => {
            let control = Control::new();
            let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(req.parallel.max(1)));
            let mut set = tokio::task::JoinSet::new();
            for (i, p) in req.storms.into_iter().enumerate() {
                let (control, gate) = (control.clone(), gate.clone());
                set.spawn(async move {
                    let _permit = gate.acquire_owned().await?;
                    probe(p, control).await.map(|r| (i, r))
                });
            }
            let mut results: Vec<Option<StormResult>> = vec![None; set.len()];
            let mut stopped = false;
            loop {
                tokio::select! {
                    done = set.join_next() => match done {
                        Some(r) => {
                            let (i, r) = r.context("a probe failed")??;
                            results[i] = Some(r);
                        }
                        None => break,
                    },
                    () = &mut stop, if !stopped => {
                        stopped = true;
                        control.interrupt();
                    }
                }
            }
            let results = results.into_iter().flatten().collect();
            emit(out, &Output::Probes { results }).await
        }
        Request::Sessions(req) => {
            let mut engine = affinity::Engine::start(req.config)?;
            let mut stats =
                tokio::time::interval_at(tokio::time::Instant::now() + req.stats_interval, req.stats_interval);
            let end = tokio::time::sleep(req.duration);
            tokio::pin!(end);
            let mut stopping = false;
            loop {
                tokio::select! {
                    ev = engine.next() => match ev {
                        Some(Event::Done(d)) => return emit(out, &Output::Done(d)).await,
                        Some(ev) => emit(out, &Output::from(ev)).await?,
                        None => anyhow::bail!("the session engine stopped without a summary"),
                    },
                    _ = stats.tick() => {
                        let totals = engine.totals();
                        emit(out, &Output::Stats { at_ms: affinity::now_ms(), totals }).await?;
                    }
                    () = &mut end, if !stopping => {
                        stopping = true;
                        engine.stop();
                    }
                    () = &mut stop, if !stopping => {
                        stopping = true;
                        engine.stop();
                    }
                }
            }
        }
        Request::Hold => {
            stop.await;
            Ok(())
        }
        Request::Disruption(cfg) => disruption(cfg, stop, out).await,
    }
}

/// Runs a disruption agent's traffic, one line per tick; the last line comes after `stop`, once
/// everything in flight has ended.
async fn disruption<W: AsyncWrite + Unpin>(
    cfg: crate::disruption::TrafficConfig,
    stop: impl Future<Output = ()>,
    out: &mut W,
) -> Result<()> {
    let (tx, mut ticks) = tokio::sync::mpsc::unbounded_channel();
    let traffic = crate::disruption::run(cfg, stop, move |t| {
        let _ = tx.send(t);
        Ok(())
    });
    tokio::pin!(traffic);
    let mut ended = None;
    loop {
        tokio::select! {
            r = &mut traffic, if ended.is_none() => ended = Some(r),
            t = ticks.recv() => match t {
                Some(t) => emit(out, &Output::Disruption(t)).await?,
                None => break,
            },
        }
    }
    ended.unwrap_or(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storm::Proto;

    fn result(name: &str, count: u64, stopped: Option<Stop>) -> StormResult {
        let mut h = new_histogram();
        h.record(1000).unwrap();
        StormResult {
            attempted: count + 1,
            ok: count,
            failures: Failures {
                timeout: 1,
                ..Failures::default()
            },
            backends: vec![BackendCount {
                name: name.into(),
                node: "n1".into(),
                zone: "z".into(),
                count,
                bytes: count * 10,
            }],
            latency_us: histogram_buckets(&h),
            elapsed_s: count as f64,
            stopped,
            resolved: None,
            resolve_error: None,
        }
    }

    #[test]
    fn results_merge_exactly_and_an_interrupt_anywhere_stops_the_whole() {
        let parts = [
            result("a", 3, None),
            result("b", 5, Some(Stop::Deadline)),
            result("a", 2, Some(Stop::Interrupted)),
        ];
        let o = merge(&parts);
        assert_eq!((o.attempted, o.ok, o.failures.timeout), (13, 10, 3));
        let counts: Vec<(&str, u64)> = o.backends.iter().map(|b| (b.name.as_str(), b.count)).collect();
        assert_eq!(counts, [("a", 5), ("b", 5)]);
        let bytes: Vec<u64> = o.backends.iter().map(|b| b.bytes).collect();
        assert_eq!(bytes, [50, 50]);
        assert_eq!(o.latency.len(), 3);
        assert_eq!(o.elapsed, Duration::from_secs(5));
        assert_eq!(o.stopped, Some(Stop::Interrupted));
        assert_eq!(merge(&parts[..2]).stopped, Some(Stop::Deadline));
    }

    #[test]
    fn a_request_survives_its_command_line() {
        let req = Request::Storm(StormConfig {
            target: "127.0.0.1:5001".parse().unwrap(),
            proto: Proto::Udp,
            conns: 7,
            parallel: 3,
            rate: Some(2.5),
            timeout: Duration::from_micros(1500),
            deadline: None,
            srccidr: Some("127.1.0.0/16".parse().unwrap()),
            graceful_close: true,
            session: "s1".into(),
            fetch_bytes: None,
            src_ports: None,
        });
        let argv = argv(&req);
        assert_eq!(argv[..2], ["agent", "--request"]);
        let Request::Storm(back) = parse(&argv[2]).unwrap() else {
            panic!("not a storm")
        };
        let Request::Storm(want) = req else { unreachable!() };
        assert_eq!(format!("{back:?}"), format!("{want:?}"));
    }

    #[test]
    fn connections_spread_evenly_over_the_addresses() {
        assert_eq!(spread_over(7, 3), [3, 2, 2]);
        assert_eq!(spread_over(2, 3), [1, 1, 0]);
        assert_eq!(spread_over(5, 0), [5]);
    }

    /// A probe to a name: resolved here (`localhost`, from /etc/hosts: no DNS traffic), every
    /// address it gives probed, the answers merged, the addresses reported.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_probe_resolves_its_name_at_the_source() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let v4 = crate::testing::serve(&format!("127.0.0.1:{port}"), None, "pod-a");
        // Where localhost also names ::1, a server there too (when this host has IPv6).
        let v6 = std::net::TcpListener::bind(("::1", port))
            .map(drop)
            .ok()
            .map(|()| crate::testing::serve(&format!("[::1]:{port}"), None, "pod-a"));
        let storm = StormConfig {
            target: std::net::SocketAddr::from(([0, 0, 0, 0], port)),
            proto: crate::storm::Proto::Tcp,
            conns: 4,
            parallel: 4,
            rate: None,
            timeout: Duration::from_secs(2),
            deadline: None,
            srccidr: None,
            graceful_close: false,
            session: "s".into(),
            fetch_bytes: None,
            src_ports: None,
        };
        let r = probe(
            Probe {
                storm: storm.clone(),
                resolve: Some("localhost".into()),
            },
            Control::new(),
        )
        .await
        .unwrap();
        let resolved = r.resolved.clone().unwrap();
        assert!(resolved.contains(&"127.0.0.1".parse().unwrap()), "{resolved:?}");
        assert_eq!(
            (r.attempted, r.ok, r.resolve_error.as_deref()),
            (4, 4, None),
            "{:?}",
            r.failures
        );
        assert_eq!(r.backends.iter().map(|b| b.count).sum::<u64>(), 4);
        // Without a name: the storm as it is, nothing resolved.
        let plain = probe(
            Probe {
                storm: StormConfig {
                    target: format!("127.0.0.1:{port}").parse().unwrap(),
                    ..storm
                },
                resolve: None,
            },
            Control::new(),
        )
        .await
        .unwrap();
        assert_eq!((plain.ok, plain.resolved), (4, None));
        v4.abort();
        if let Some(v6) = v6 {
            v6.abort();
        }
        // The request travels with its name and comes back the same.
        let req = Request::Probes(ProbesRequest {
            storms: vec![Probe {
                storm: StormConfig {
                    target: "10.96.0.1:5001".parse().unwrap(),
                    src_ports: Some(crate::storm::PortRange { first: 40000, count: 3 }),
                    ..plain_config()
                },
                resolve: Some("svclb-mx-headless.ns.svc".into()),
            }],
            parallel: 1,
        });
        let Request::Probes(back) = parse(&argv(&req)[2]).unwrap() else {
            panic!("not probes")
        };
        assert_eq!(back.storms[0].resolve.as_deref(), Some("svclb-mx-headless.ns.svc"));
        assert_eq!(back.storms[0].storm.target, "10.96.0.1:5001".parse().unwrap());
        // Flattened, the storm keeps its optional fields (UDP source ports: docs/matrix.md).
        assert_eq!(
            back.storms[0].storm.src_ports,
            Some(crate::storm::PortRange { first: 40000, count: 3 })
        );
        assert_eq!(back.storms[0].storm.timeout, Duration::from_secs(1));
    }

    fn plain_config() -> StormConfig {
        StormConfig {
            target: "127.0.0.1:1".parse().unwrap(),
            proto: crate::storm::Proto::Udp,
            conns: 1,
            parallel: 1,
            rate: None,
            timeout: Duration::from_secs(1),
            deadline: None,
            srccidr: None,
            graceful_close: false,
            session: "s".into(),
            fetch_bytes: None,
            src_ports: None,
        }
    }

    #[tokio::test]
    async fn hold_prints_nothing_and_ends_only_when_stopped() {
        let mut out = Vec::new();
        let held = run(Request::Hold, std::future::pending(), &mut out);
        assert!(tokio::time::timeout(Duration::from_millis(100), held).await.is_err());
        run(Request::Hold, async {}, &mut out).await.unwrap();
        assert!(out.is_empty());
    }

    /// As a client pod's main process: stdin is /dev/null (no stop line ever comes), SIGTERM
    /// (the pod being deleted) ends it at once, cleanly.
    #[test]
    fn a_client_pod_holds_until_sigterm() {
        let mut child = std::process::Command::new(crate::testing::binary())
            .args(argv(&Request::Hold))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        assert!(child.try_wait().unwrap().is_none(), "it holds");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let t0 = std::time::Instant::now();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
}
