//! The disruption run: traffic agents at every node (or one), a warm-up, the action (on a lab
//! through its own lifecycle, on a cluster through the API), the endpoints followed on the same
//! time axis (the lab's timeline, the EndpointSlice watch), until the endpoints are stable again
//! plus a settle time, bounded by the run's duration. What was measured is always judged and
//! returned (an action that failed, an agent that died, an interrupt: all go into the record);
//! what the run changed comes back as a [`Restore`] for the caller to run once the record is saved.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::agents::AgentSet;
use super::open::Opened;
use super::{Interrupt, SaveTo, environment, target_info};
use crate::agent::{Output, Request};
use crate::backend::kube::{AgentRunner, KubeBackend};
use crate::backend::lab::LabBackend;
use crate::backend::{Backend, From, Path, Source};
use crate::cluster::Cluster;
use crate::cluster::clients::{self, ClientPods};
use crate::cluster::disrupt::{self, Seen, SliceWatch};
use crate::cluster::manifests::TSERVER;
use crate::disruption::judge::{Measured, build};
use crate::disruption::{Action, Collected, INTERVAL, TrafficConfig};
use crate::lab::{EndpointEvent, Lab, LabTiming, Timeline};
use crate::record::{ActionInfo, DisruptionParams, DisruptionRun, EndpointChange, Environment, NodeSyncAt, Step};
use crate::storm::{Proto, Stop};

/// An agent stops by itself this long after the run's duration (a run that vanished).
const AGENT_SLACK: Duration = Duration::from_secs(30);

/// What a disruption run does.
#[derive(Debug, Clone)]
pub struct DisruptionJob {
    pub action: Action,
    /// New connections per second, all sources together.
    pub rate: f64,
    pub long_lived: u32,
    pub udp_sessions: u32,
    /// A client on every node, else on one.
    pub per_node: bool,
    pub timeout: Duration,
    pub warmup: Duration,
    pub settle: Duration,
    /// `none`: the run's length; an action: the most the run may last.
    pub duration: Duration,
    /// The pods' lifecycle for the action (lab: all three; cluster: the grace period of a
    /// deleted or evicted pod). `None`: the lab's defaults, the pod's own on a cluster.
    pub grace_period: Option<Duration>,
    pub drain_delay: Option<Duration>,
    pub ready_delay: Option<Duration>,
    /// How often a cluster's Deployment and EndpointSlices are read while waiting.
    pub poll: Duration,
    pub save: SaveTo,
    /// Print a line per second on stderr.
    pub live: bool,
}

impl DisruptionJob {
    fn params(&self, sync_delay: Option<String>) -> DisruptionParams {
        let s = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        DisruptionParams {
            action: self.action.to_string(),
            rate: self.rate,
            long_lived: self.long_lived,
            udp_sessions: self.udp_sessions,
            sources: if self.per_node { "per-node" } else { "one" }.into(),
            interval_s: INTERVAL.as_secs_f64(),
            timeout_s: self.timeout.as_secs_f64(),
            warmup_s: self.warmup.as_secs_f64(),
            settle_s: self.settle.as_secs_f64(),
            duration_s: self.duration.as_secs_f64(),
            grace_period_s: s(self.grace_period),
            drain_delay_s: s(self.drain_delay),
            ready_delay_s: s(self.ready_delay),
            sync_delay,
        }
    }

    /// The lab's timing for this run's action: the lab's defaults where none was given.
    fn lab_timing(&self) -> LabTiming {
        let d = LabTiming::default();
        LabTiming {
            grace_period: self.grace_period.unwrap_or(d.grace_period),
            drain_delay: self.drain_delay.unwrap_or(d.drain_delay),
            ready_delay: self.ready_delay.unwrap_or(d.ready_delay),
        }
    }
}

/// What the run changed, to put back once its record is saved.
pub enum Restore {
    Nothing,
    /// Scale the lab back to this many pods (not terminating).
    Lab {
        name: String,
        pods: usize,
        timing: LabTiming,
    },
    Cluster {
        cluster: Cluster,
        deployment: String,
        service: String,
        /// Replicas to scale back to.
        replicas: Option<i32>,
        /// A node the run cordoned.
        uncordon: Option<String>,
        poll: Duration,
    },
}

/// How long a restore may wait for the Deployment to be stable again.
pub const RESTORE_TIMEOUT: Duration = Duration::from_secs(300);

impl Restore {
    /// Puts back what the run changed; what it did, in words (none when nothing was needed).
    pub async fn run(self) -> Result<Option<String>> {
        match self {
            Restore::Nothing => Ok(None),
            Restore::Lab { name, pods, timing } => {
                tokio::task::spawn_blocking(move || -> Result<Option<String>> {
                    let mut lab = Lab::open(&name)?;
                    let live = lab.pods().iter().filter(|p| !p.conditions.terminating).count();
                    if live == pods {
                        return Ok(None);
                    }
                    lab.scale_with(pods, &timing)?;
                    Ok(Some(format!("lab {name} scaled back from {live} to {pods} pods")))
                })
                .await?
            }
            Restore::Cluster {
                cluster,
                deployment,
                service,
                replicas,
                uncordon,
                poll,
            } => {
                let mut did = Vec::new();
                let mut failed = Vec::new();
                if let Some(node) = uncordon {
                    match disrupt::set_unschedulable(&cluster, &node, false).await {
                        Ok(true) => did.push(format!("uncordoned node {node}")),
                        Ok(false) => {}
                        Err(e) => failed.push(format!("uncordoning {node}: {e:#}")),
                    }
                }
                if let Some(want) = replicas {
                    let now = disrupt::rollout(&cluster, &deployment).await;
                    match now {
                        Ok(r) if r.replicas == want => {}
                        Ok(r) => {
                            let scaled = async {
                                disrupt::scale(&cluster, &deployment, want).await?;
                                disrupt::wait_stable(&cluster, &deployment, &service, &[], RESTORE_TIMEOUT, poll).await
                            };
                            match scaled.await {
                                Ok(()) => did.push(format!(
                                    "deployment {deployment} scaled back from {} to {want} replicas",
                                    r.replicas
                                )),
                                Err(e) => failed.push(format!("scaling {deployment} back to {want}: {e:#}")),
                            }
                        }
                        Err(e) => failed.push(format!("reading {deployment}: {e:#}")),
                    }
                }
                if !failed.is_empty() {
                    bail!(
                        "{} (run `kubectl scale deployment/{deployment} --replicas N` / `kubectl uncordon NODE` by hand)",
                        failed.join("; ")
                    );
                }
                Ok((!did.is_empty()).then(|| did.join(", ")))
            }
        }
    }
}

/// A run's record, and what to put back after saving it.
pub struct Finished {
    pub record: DisruptionRun,
    pub restore: Restore,
}

/// What an action did: its timeline (lab) and whether it completed.
#[derive(Default)]
struct Acted {
    what: String,
    events: Vec<Seen>,
    syncs: Vec<(Instant, String, u64)>,
    error: Option<String>,
}

/// What the traffic measured around the action.
struct Measurement {
    origin: Instant,
    started_at: jiff::Timestamp,
    collected: Collected,
    sources: Vec<Source>,
    action_started: Option<Instant>,
    stable: Option<Instant>,
    acted: Option<Acted>,
    watched: Vec<Seen>,
    stopped: Option<Stop>,
    ended: Instant,
    problems: Vec<String>,
}

/// The share of `total` of source `i` of `n`.
fn share(total: u32, i: usize, n: usize) -> u32 {
    let n = n.max(1) as u32;
    total / n + u32::from((i as u32) < total % n)
}

/// Runs the traffic at `sources` against `address`; `action` starts after the warm-up; the
/// run ends `settle` after it completed, at `duration`, or on an interrupt (which also sets
/// `stop_action`). An action still running when the traffic ended is awaited when
/// `finish_action` (the lab must not be left halfway), else dropped (a cluster's restore puts
/// things back).
#[allow(clippy::too_many_arguments)]
async fn measure<B: Backend>(
    backend: &B,
    sources: Vec<Source>,
    address: SocketAddr,
    job: &DisruptionJob,
    interrupt: &Interrupt,
    mut action: Option<BoxFuture<'static, Acted>>,
    stop_action: &AtomicBool,
    finish_action: bool,
    mut watch: Option<&mut mpsc::UnboundedReceiver<Seen>>,
) -> Result<Measurement> {
    let origin = Instant::now();
    let origin_ms = crate::disruption::now_ms();
    let started_at = jiff::Timestamp::now();
    let n = sources.len();
    let run_id = format!("{:08x}", rand::random::<u32>());
    let jobs: Vec<(Source, Request)> = sources
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let cfg = TrafficConfig {
                target: address,
                rate: job.rate / n.max(1) as f64,
                long_lived: share(job.long_lived, i, n),
                udp_sessions: share(job.udp_sessions, i, n),
                interval: INTERVAL,
                timeout: job.timeout,
                origin_ms,
                max: job.duration + AGENT_SLACK,
                prefix: format!("{run_id}-{i}"),
            };
            (s.clone(), Request::Disruption(cfg))
        })
        .collect();
    if job.live {
        eprintln!(
            "svclb: {} new conn/s, {} long-lived, {} UDP sessions from {} to {address}; {}",
            job.rate,
            job.long_lived,
            job.udp_sessions,
            if job.per_node {
                format!("every node ({})", sources.len())
            } else {
                sources[0].name.clone()
            },
            match &job.action {
                Action::None => format!("no action, {:.0}s", job.duration.as_secs_f64()),
                a => format!("{a} after {:.0}s", job.warmup.as_secs_f64()),
            }
        );
    }
    let mut agents = AgentSet::start(backend, jobs)?;
    let mut collected = Collected::default();
    let mut problems = Vec::new();
    let mut watched = Vec::new();
    let action_at = tokio::time::Instant::from_std(origin + job.warmup);
    let deadline = tokio::time::Instant::from_std(origin + job.duration);
    let mut end_at = deadline;
    let mut task: Option<tokio::task::JoinHandle<Acted>> = None;
    let (mut action_started, mut stable, mut acted) = (None, None, None);
    let (mut stopping, mut stopped) = (false, None);
    let mut live = tokio::time::interval(Duration::from_secs(1));
    let live_lag = job.timeout.as_secs_f64() + 1.5;
    let mut shown: Option<u32> = None;
    loop {
        tokio::select! {
            line = agents.next() => match line {
                Some((i, Ok(Output::Disruption(t)))) => collected.add(i, t),
                Some((_, Ok(Output::Progress { .. }))) => {}
                Some((i, Ok(other))) => problems.push(format!("the agent in {} sent {other:?}", agents.sources[i].name)),
                Some((i, Err(e))) => problems.push(format!("the agent in {}: {e}", agents.sources[i].name)),
                None => break,
            },
            () = tokio::time::sleep_until(action_at), if action.is_some() && task.is_none() && !stopping => {
                action_started = Some(Instant::now());
                task = action.take().map(tokio::spawn);
            }
            done = async {
                match task.as_mut() {
                    Some(t) => t.await,
                    None => std::future::pending().await,
                }
            }, if task.is_some() && acted.is_none() => {
                let a = done.unwrap_or_else(|e| Acted { error: Some(format!("the action failed: {e}")), ..Acted::default() });
                if a.error.is_none() && !stopping {
                    stable = Some(Instant::now());
                    end_at = deadline.min(tokio::time::Instant::now() + job.settle);
                } else if !stopping {
                    // Nothing more to wait for: a little more traffic, then the end.
                    end_at = deadline.min(tokio::time::Instant::now() + job.settle);
                }
                acted = Some(a);
            }
            () = tokio::time::sleep_until(end_at), if !stopping => {
                stopping = true;
                stop_action.store(true, Ordering::SeqCst);
                agents.interrupt();
            }
            () = interrupt.wait(), if stopped.is_none() => {
                stopped = Some(Stop::Interrupted);
                if !stopping {
                    eprintln!("svclb: interrupted: finishing what is in flight, then saving what was measured");
                }
                stopping = true;
                stop_action.store(true, Ordering::SeqCst);
                agents.interrupt();
            }
            Some(seen) = async {
                match watch.as_mut() {
                    Some(w) => w.recv().await,
                    None => std::future::pending().await,
                }
            } => watched.push(seen),
            _ = live.tick(), if job.live => {
                let due = (origin.elapsed().as_secs_f64() - live_lag).floor();
                if due >= 0.0 {
                    let s = due as u32;
                    for second in shown.map_or(0, |x| x + 1)..=s {
                        if let Some(c) = collected.seconds.get(&second) {
                            let row = crate::disruption::judge::row(second, c);
                            eprintln!("{}", crate::report::disruption_second_line(&row, collected.open()));
                        }
                        shown = Some(second);
                    }
                }
            }
        }
    }
    let ended = Instant::now();
    if let Some(t) = task.take().filter(|_| acted.is_none()) {
        if finish_action {
            let a = t.await.unwrap_or_else(|e| Acted {
                error: Some(format!("the action failed: {e}")),
                ..Acted::default()
            });
            acted = Some(a);
        } else {
            t.abort();
            acted = Some(Acted {
                error: (stopped.is_none()).then(|| "still in progress when the run ended".to_string()),
                ..Acted::default()
            });
        }
    }
    if let Some(w) = watch.as_mut() {
        while let Ok(seen) = w.try_recv() {
            watched.push(seen);
        }
    }
    let sources = agents.sources.clone();
    let last = agents.finish().await;
    for (i, (s, last)) in sources.iter().zip(&last).enumerate() {
        if !collected.done.contains(&i) {
            problems.push(format!(
                "the agent in {} ended without its last report: {}",
                s.name,
                if last.is_empty() { "no output" } else { last }
            ));
        }
    }
    Ok(Measurement {
        origin,
        started_at,
        collected,
        sources,
        action_started,
        stable,
        acted,
        watched,
        stopped,
        ended,
        problems,
    })
}

fn since(origin: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(origin).as_secs_f64()
}

/// Everything but the target-specific parts, for the judge.
struct Context<'a> {
    job: &'a DisruptionJob,
    meta: crate::backend::Meta,
    address: SocketAddr,
    sync_delay: Option<String>,
    endpoints_before: Vec<String>,
    endpoints_after: Vec<String>,
    /// The lab's pod lifecycle as the action used it (defaults filled in).
    timing: Option<LabTiming>,
}

fn judge(m: Measurement, cx: Context<'_>) -> DisruptionRun {
    let origin = m.origin;
    let acted = m.acted.unwrap_or_default();
    let mut events: Vec<EndpointChange> = acted
        .events
        .iter()
        .chain(&m.watched)
        .map(|(at, pod, step)| EndpointChange {
            at_s: since(origin, *at),
            pod: pod.clone(),
            step: *step,
        })
        .collect();
    events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    let syncs: Vec<NodeSyncAt> = acted
        .syncs
        .iter()
        .map(|(at, node, generation)| NodeSyncAt {
            at_s: since(origin, *at),
            node: node.clone(),
            generation: *generation,
        })
        .collect();
    let from = From::Nodes { per_zone: false };
    let target = target_info(&cx.meta, cx.address, &from, &Path::ClusterIp, Proto::Tcp, &m.sources);
    let mut env = Environment::local();
    environment(&mut env, cx.meta);
    let mut action = ActionInfo {
        what: if acted.what.is_empty() && cx.job.action != Action::None {
            cx.job.action.to_string()
        } else {
            acted.what
        },
        started_s: m.action_started.map(|t| since(origin, t)),
        stable_s: m.stable.map(|t| since(origin, t)),
        error: acted.error,
        endpoints_before: cx.endpoints_before,
        endpoints_after: cx.endpoints_after,
    };
    if cx.job.action == Action::None {
        action.what = "none".into();
    }
    let mut params = cx.job.params(cx.sync_delay);
    if let Some(t) = cx.timing {
        params.grace_period_s = Some(t.grace_period.as_secs_f64());
        params.drain_delay_s = Some(t.drain_delay.as_secs_f64());
        params.ready_delay_s = Some(t.ready_delay.as_secs_f64());
    }
    let mut run = build(Measured {
        tag: cx.job.save.tag("disruption", m.started_at),
        started_at: m.started_at,
        duration_s: since(origin, m.ended),
        target,
        params,
        action,
        events,
        syncs,
        collected: m.collected,
        sources: m.sources.iter().map(|s| s.name.clone()).collect(),
        stopped: m.stopped,
        environment: env,
    });
    if !m.problems.is_empty() {
        run.reasons.extend(m.problems);
        run.verdict = crate::stats::Verdict::Fail;
    }
    run
}

/// The run on what was opened: a lab, or a cluster from client pods of its own.
pub async fn run_opened(opened: &mut Opened, job: &DisruptionJob, interrupt: &Interrupt) -> Result<Finished> {
    match opened {
        Opened::Lab { backend, .. } => run_lab(backend, job, interrupt).await,
        Opened::Cluster { backend, .. } => {
            clients::CONTAINER.clone_into(&mut backend.pods.container);
            run_cluster(backend, job, interrupt).await
        }
        Opened::Address(_) => bail!("disruption needs a lab or a cluster, whose endpoints it can change"),
    }
}

fn lab_step(e: EndpointEvent) -> Step {
    match e {
        EndpointEvent::Ready => Step::Ready,
        EndpointEvent::Terminating => Step::Terminating,
        EndpointEvent::NotServing => Step::NotServing,
        EndpointEvent::Removed => Step::Removed,
    }
}

/// A lab timeline on the monotonic clock.
fn acted_from(what: String, tl: Result<Timeline>) -> Acted {
    match tl {
        Ok(tl) => Acted {
            what,
            events: tl
                .events
                .iter()
                .map(|e| (tl.start + e.at, e.pod.clone(), lab_step(e.event)))
                .collect(),
            syncs: tl
                .syncs
                .iter()
                .map(|s| (tl.start + s.at, s.node.clone(), s.generation))
                .collect(),
            error: None,
        },
        Err(e) => Acted {
            what,
            error: Some(format!("{e:#}")),
            ..Acted::default()
        },
    }
}

fn live_pods(lab: &Lab) -> usize {
    lab.pods().iter().filter(|p| !p.conditions.terminating).count()
}

fn ready_pods(lab: &Lab) -> Vec<String> {
    lab.pods()
        .iter()
        .filter(|p| p.conditions.ready)
        .map(|p| p.name.clone())
        .collect()
}

/// On a lab: clients in the nodes' own namespaces (never in a pod the action may delete), the
/// action through the lab's lifecycle, its timeline as the endpoint events.
pub async fn run_lab(backend: &LabBackend, job: &DisruptionJob, interrupt: &Interrupt) -> Result<Finished> {
    let name = backend.lab().name().to_string();
    let lab = Lab::open(&name)?;
    lab.check_complete()?;
    let status = lab.status();
    let address = SocketAddr::new(status.service.cluster_ip_of(backend.family()), status.service.port);
    let mut sources: Vec<Source> = lab
        .nodes()
        .iter()
        .map(|n| Source {
            name: n.name.clone(),
            node: n.name.clone(),
            zone: n.zone.clone(),
        })
        .collect();
    if !job.per_node {
        sources.truncate(1);
    }
    let before = live_pods(&lab);
    let endpoints_before = ready_pods(&lab);
    // The action, checked now (a bad pod or node name is an error before any traffic).
    let timing = job.lab_timing();
    let action = match &job.action {
        Action::DeletePod(Some(p)) if !lab.pods().iter().any(|x| &x.name == p && !x.conditions.terminating) => {
            bail!("no running pod named {p} in lab {name}; see `kubectl svclb lab status --name {name}`")
        }
        Action::DeletePod(None) => {
            let mut ready = endpoints_before.clone();
            ready.sort_by(|a, b| alphanumeric_sort::compare_str(a, b));
            match ready.first() {
                Some(p) => Action::DeletePod(Some(p.clone())),
                None => bail!("lab {name} has no ready pod to delete"),
            }
        }
        Action::DrainNode(n) if !lab.nodes().iter().any(|x| &x.name == n) => {
            bail!("no node named {n} in lab {name}; see `kubectl svclb lab status --name {name}`")
        }
        Action::Scale(0) => bail!("--action scale=0 would leave the Service without endpoints: give at least 1"),
        a => a.clone(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let fut: Option<BoxFuture<'static, Acted>> = match action.clone() {
        Action::None => None,
        action => {
            let (name, stop) = (name.clone(), stop.clone());
            Some(Box::pin(async move {
                let blocking = tokio::task::spawn_blocking(move || {
                    let mut lab = match Lab::open(&name) {
                        Ok(l) => l,
                        Err(e) => return acted_from(action.to_string(), Err(e)),
                    };
                    match action {
                        Action::DeletePod(Some(p)) => acted_from(
                            format!("deleted {p}, replaced as its ReplicaSet would"),
                            lab.replace_pod(&p, &timing),
                        ),
                        Action::Scale(n) => acted_from(
                            format!("scaled from {before} to {n} pods"),
                            lab.scale_with(n as usize, &timing),
                        ),
                        Action::RolloutRestart => {
                            let plan = crate::lab::Rollout::for_replicas(before);
                            acted_from(
                                format!(
                                    "rolling restart of {before} pods (maxSurge {}, maxUnavailable {})",
                                    plan.max_surge, plan.max_unavailable
                                ),
                                lab.rollout_restart(&timing, &stop),
                            )
                        }
                        Action::DrainNode(n) => {
                            let pods = lab
                                .pods()
                                .iter()
                                .filter(|p| p.node == n && !p.conditions.terminating)
                                .count();
                            acted_from(
                                format!("drained {n}: {pods} pod(s) evicted, replaced on other nodes"),
                                lab.drain_node(&n, &timing),
                            )
                        }
                        Action::None | Action::DeletePod(None) => Acted::default(),
                    }
                });
                blocking.await.unwrap_or_else(|e| Acted {
                    error: Some(format!("the action failed: {e}")),
                    ..Acted::default()
                })
            }))
        }
    };
    let m = measure(backend, sources, address, job, interrupt, fut, &stop, true, None).await?;
    let after = Lab::open(&name)?;
    let record = judge(
        m,
        Context {
            job,
            meta: backend.meta(),
            address,
            sync_delay: Some(lab.sync_delay().to_string()),
            endpoints_before,
            endpoints_after: ready_pods(&after),
            timing: (job.action != Action::None).then_some(timing),
        },
    );
    Ok(Finished {
        record,
        restore: Restore::Lab {
            name,
            pods: before,
            timing,
        },
    })
}

/// On a cluster: client pods of its own on every ready node (or one), the tserver Deployment
/// changed through the API, the EndpointSlices watched; the client pods go afterwards whatever
/// happened.
pub async fn run_cluster<P: AgentRunner, H: AgentRunner>(
    backend: &mut KubeBackend<P, H>,
    job: &DisruptionJob,
    interrupt: &Interrupt,
) -> Result<Finished> {
    let mut pods = ClientPods::new(&backend.cluster, crate::agent::argv(&Request::Hold));
    let result = async {
        let mut nodes = clients::pick_nodes(&backend.view.nodes, false);
        if !job.per_node {
            nodes.truncate(1);
        }
        if nodes.is_empty() {
            bail!("no ready node to run a client pod on");
        }
        let image = clients::server_image(&backend.cluster).await?;
        let started = tokio::select! {
            r = pods.start(&nodes, &image, clients::START_TIMEOUT, clients::START_POLL) => r?,
            () = interrupt.wait() => bail!("interrupted while the client pods were starting"),
        };
        backend.use_clients(clients::CLIENT, started);
        on_cluster(backend, job, interrupt).await
    }
    .await;
    pods.delete().await;
    result
}

/// The cluster run once the client pods run.
pub async fn on_cluster<P: AgentRunner, H: AgentRunner>(
    backend: &KubeBackend<P, H>,
    job: &DisruptionJob,
    interrupt: &Interrupt,
) -> Result<Finished> {
    let c = backend.cluster.clone();
    let service = backend.view.service.name.clone();
    let plan = backend.plan(&From::Nodes { per_zone: false }, &Path::ClusterIp, Proto::Tcp)?;
    let mut sources = plan.sources.clone();
    if !job.per_node {
        sources.truncate(1);
    }
    if sources.is_empty() {
        bail!("no client pod runs to send the traffic from");
    }
    let before = disrupt::rollout(&c, TSERVER).await?;
    let mut watch = SliceWatch::start(&c, &service).await?;
    let endpoints_before = watch.ready();
    let grace = job.grace_period.map(|g| g.as_secs() as u32);
    let mut restore = Restore::Nothing;
    let action = match &job.action {
        Action::DeletePod(Some(p)) => {
            if !backend.view.pods.iter().any(|x| &x.name == p) {
                bail!(
                    "no {TSERVER} pod named {p} in namespace {}: see `kubectl svclb status`",
                    c.namespace
                );
            }
            Action::DeletePod(Some(p.clone()))
        }
        Action::DeletePod(None) => {
            let mut ready = endpoints_before.clone();
            ready.sort();
            match ready.first() {
                Some(p) => Action::DeletePod(Some(p.clone())),
                None => bail!("no ready {TSERVER} endpoint to delete: see `kubectl svclb status`"),
            }
        }
        Action::Scale(0) => bail!("--action scale=0 would leave the Service without endpoints: give at least 1"),
        Action::Scale(n) => {
            restore = Restore::Cluster {
                cluster: c.clone(),
                deployment: TSERVER.into(),
                service: service.clone(),
                replicas: Some(before.replicas),
                uncordon: None,
                poll: job.poll,
            };
            Action::Scale(*n)
        }
        Action::DrainNode(n) => {
            if !backend.view.nodes.iter().any(|x| &x.name == n) {
                let names: Vec<&str> = backend.view.nodes.iter().map(|n| n.name.as_str()).collect();
                bail!("no node named {n}; nodes: {}", names.join(", "));
            }
            // Uncordoned afterwards, unless it was cordoned before the run.
            let was = disrupt::unschedulable(&c, n).await?;
            restore = Restore::Cluster {
                cluster: c.clone(),
                deployment: TSERVER.into(),
                service: service.clone(),
                replicas: None,
                uncordon: (!was).then(|| n.clone()),
                poll: job.poll,
            };
            Action::DrainNode(n.clone())
        }
        a => a.clone(),
    };
    let timeout = job.duration;
    let poll = job.poll;
    let fut: Option<BoxFuture<'static, Acted>> = match action.clone() {
        Action::None | Action::DeletePod(None) => None,
        action => {
            let (c, service) = (c.clone(), service.clone());
            let replicas_before = before.replicas;
            Some(Box::pin(async move {
                let what;
                let done: Result<()> = match action {
                    Action::DeletePod(Some(p)) => {
                        what = format!("deleted pod {p}");
                        async {
                            disrupt::delete_pod(&c, &p, grace).await?;
                            disrupt::wait_stable(&c, TSERVER, &service, &[p], timeout, poll).await
                        }
                        .await
                    }
                    Action::Scale(n) => {
                        what = format!("scaled deployment {TSERVER} from {replicas_before} to {n}");
                        async {
                            disrupt::scale(&c, TSERVER, n as i32).await?;
                            disrupt::wait_stable(&c, TSERVER, &service, &[], timeout, poll).await
                        }
                        .await
                    }
                    Action::RolloutRestart => {
                        what = format!("rollout restart of deployment {TSERVER} ({replicas_before} replicas)");
                        async {
                            disrupt::restart(&c, TSERVER, jiff::Timestamp::now()).await?;
                            // The controller must see the new generation before "complete" means it.
                            disrupt::wait_stable(&c, TSERVER, &service, &[], timeout, poll).await
                        }
                        .await
                    }
                    Action::DrainNode(node) => {
                        let evicted = disrupt::pods_on(&c, TSERVER, &node).await;
                        what = format!(
                            "cordoned {node}, evicted {} {TSERVER} pod(s)",
                            evicted.as_ref().map_or(0, Vec::len)
                        );
                        async {
                            let evicted = evicted?;
                            disrupt::set_unschedulable(&c, &node, true).await?;
                            for p in &evicted {
                                disrupt::evict(&c, p, grace, disrupt::EVICT_TIMEOUT, disrupt::EVICT_RETRY).await?;
                            }
                            disrupt::wait_stable(&c, TSERVER, &service, &evicted, timeout, poll).await
                        }
                        .await
                    }
                    Action::None | Action::DeletePod(None) => unreachable!("no action future for these"),
                };
                Acted {
                    what,
                    error: done.err().map(|e| format!("{e:#}")),
                    ..Acted::default()
                }
            }))
        }
    };
    let stop = AtomicBool::new(false);
    let m = measure(
        backend,
        sources,
        plan.address,
        job,
        interrupt,
        fut,
        &stop,
        false,
        Some(&mut watch.events),
    )
    .await?;
    let record = judge(
        m,
        Context {
            job,
            meta: backend.meta(),
            address: plan.address,
            sync_delay: None,
            endpoints_before,
            endpoints_after: watch.ready(),
            timing: None,
        },
    );
    Ok(Finished { record, restore })
}

#[cfg(test)]
mod tests;
