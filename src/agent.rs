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
    pub storms: Vec<StormConfig>,
    pub parallel: usize,
}

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
        }
    }
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
            for (i, cfg) in req.storms.into_iter().enumerate() {
                let (control, gate) = (control.clone(), gate.clone());
                set.spawn(async move {
                    let _permit = gate.acquire_owned().await?;
                    storm::run(&cfg, control).await.map(|o| (i, StormResult::from(&o)))
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
    }
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
