//! `kubectl svclb affinity`: long-lived client sessions; every change of serving pod or reflective
//! address is logged as it happens; a summary, a verdict and a saved `AffinityRun` at the end.
//!
//! With `--address` the sessions run here. With `--lab` they run in a lab namespace as an agent
//! (`kubectl-svclb affinity --agent --address ...`) that streams its events as JSON lines; this
//! process prints them, watches the lab's backend pool, and judges changes against pool changes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Args};
use tokio::io::AsyncBufReadExt;

use super::spread::FromKind;
use crate::affinity::{Change, ChangeKind, Config, Done, Engine, Event, PoolChange, Totals, Verdict, now_ms};
use crate::backend::kube::{ClusterView, KubeBackend, LocalRun, PodExec};
use crate::backend::lab::LabBackend;
use crate::backend::{Backend, From, Meta, Path};
use super::KubeFlags;
use crate::cluster::manifests::{AFFINITY, Options, TSERVER};
use crate::cluster::{self, Cluster, ops};
use crate::lab::Lab;
use crate::record::{
    AFFINITY_KIND, AFFINITY_VERSION, AffinityParams, AffinityRun, Environment, MAX_CHANGES, MAX_SESSION_ROWS,
    PodSessions, TargetInfo,
};
use crate::report::{self, RunFormat};
use crate::storm::{Proto, Stop};

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("protocol").required(true).args(["udp", "tcp"])))]
pub struct AffinityArgs {
    /// UDP sessions: one socket (one source port) per session.
    #[arg(long)]
    pub udp: bool,
    /// TCP sessions: one connection per session.
    #[arg(long)]
    pub tcp: bool,
    /// Client sessions.
    #[arg(long, default_value_t = 1000)]
    pub sessions: u32,
    /// Each session sends one message per interval.
    #[arg(long, default_value = "1s", value_parser = super::parse_duration)]
    pub interval: Duration,
    /// A message not answered within this is lost (a later reply counts as late).
    #[arg(long, default_value = "1s", value_parser = super::parse_duration)]
    pub timeout: Duration,
    /// Length of the run (Ctrl-C ends it earlier, with the same summary).
    #[arg(long, default_value = "10m", value_parser = super::parse_duration)]
    pub duration: Duration,
    /// A new socket (UDP: new source port) or connection (TCP) for every message: ClientIP affinity
    /// over new connections, judged by the upstream e2e rule (the last 15 replies identical).
    #[arg(long)]
    pub new_connection_per_message: bool,
    /// UDP without quinn-udp: plain send_to/recv_from, no batched receive, no GRO.
    #[arg(long)]
    pub plain_udp: bool,
    /// Run the sessions against this address (HOST:PORT) from here; the backend pool is unknown,
    /// so any change violates. Without --address or --lab: the affinity server of the cluster.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "lab")]
    pub address: Option<String>,
    /// Run the sessions in a lab (needs root): the one named or the only one running.
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "NAME")]
    pub lab: Option<String>,
    /// Where the sessions run: outside (the lab's external client, or this machine for a
    /// cluster; to the LoadBalancer IP or a nodePort) or in a pod (to the clusterIP; on a
    /// cluster a tserver pod, through exec).
    #[arg(long, value_enum, default_value_t = FromKind::Host)]
    pub from: FromKind,
    /// With --from pod: run in this pod (default: the first pod).
    #[arg(long, value_name = "POD")]
    pub pod: Option<String>,
    /// With --from host: to the nodePort of NODE (default: the first node) instead of the LB IP.
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "NODE", conflicts_with = "lb")]
    pub node_port: Option<String>,
    /// With --from host: to the LoadBalancer IP (the default path from the host).
    #[arg(long)]
    pub lb: bool,
    /// Print a stats line this often.
    #[arg(long, default_value = "10s", value_parser = super::parse_duration)]
    pub stats_interval: Duration,
    #[command(flatten)]
    pub record: super::SaveArgs,
    /// Output format of the summary; json prints exactly the run record (live lines go to stderr).
    #[arg(short = 'o', long, value_enum, default_value_t = RunFormat::Table)]
    pub output: RunFormat,
    #[command(flatten)]
    pub cluster: super::ClusterRunArgs,
    /// Run as the agent of a lab or cluster run: events as JSON lines on stdout, save nothing.
    #[arg(long, hide = true)]
    pub agent: bool,
    /// Agent only: a line `stop` on stdin ends the run like Ctrl-C.
    #[arg(long, hide = true, requires = "agent")]
    pub stdin_stop: bool,
}

const MAX_SESSIONS: u32 = 100_000;

impl AffinityArgs {
    fn validate(&self) -> Result<()> {
        if self.sessions == 0 || self.sessions > MAX_SESSIONS {
            bail!("--sessions {}: give 1..={MAX_SESSIONS} sessions", self.sessions);
        }
        for (flag, d) in [
            ("--interval", self.interval),
            ("--timeout", self.timeout),
            ("--duration", self.duration),
            ("--stats-interval", self.stats_interval),
        ] {
            if d.is_zero() {
                bail!("{flag} 0s: give a positive duration, e.g. 1s");
            }
        }
        self.record.validate()?;
        if self.plain_udp && !self.udp {
            bail!("--plain-udp chooses the UDP socket path: use it with --udp");
        }
        if self.agent && self.address.is_none() {
            bail!("--agent runs the sessions against --address HOST:PORT");
        }
        let path_given = self.from != FromKind::Host || self.pod.is_some() || self.node_port.is_some() || self.lb;
        if self.address.is_some() && path_given {
            bail!(
                "--from, --pod, --node-port and --lb choose a path to a lab's or a cluster's Service: not with --address"
            );
        }
        if self.from == FromKind::Pod && (self.node_port.is_some() || self.lb) {
            bail!(
                "--node-port and --lb are paths from outside: use them with --from host (from a pod the sessions go to the clusterIP)"
            );
        }
        if self.from == FromKind::Host && self.pod.is_some() {
            bail!("--pod picks the pod the sessions run in: use it with --from pod");
        }
        Ok(())
    }

    fn proto(&self) -> Proto {
        if self.udp { Proto::Udp } else { Proto::Tcp }
    }

    fn path(&self) -> Path {
        match (&self.node_port, self.from) {
            (_, FromKind::Pod) => Path::ClusterIp,
            (Some(n), _) => Path::NodePort((!n.is_empty()).then(|| n.clone())),
            (None, _) => Path::LoadBalancer,
        }
    }

    fn from_(&self) -> From {
        match self.from {
            FromKind::Host => From::Host,
            FromKind::Pod => From::Pods {
                pod: self.pod.clone(),
                per_node: false,
            },
        }
    }

    fn params(&self) -> AffinityParams {
        AffinityParams {
            sessions: self.sessions,
            interval_s: self.interval.as_secs_f64(),
            timeout_s: self.timeout.as_secs_f64(),
            duration_s: Some(self.duration.as_secs_f64()),
            new_connection_per_message: self.new_connection_per_message,
            plain_udp: self.plain_udp,
        }
    }

    fn agent_args(&self, address: SocketAddr) -> Vec<String> {
        let d = |d: Duration| format!("{}us", d.as_micros());
        let mut a: Vec<String> = vec![
            "--agent".into(),
            "--address".into(),
            address.to_string(),
            if self.udp { "--udp" } else { "--tcp" }.into(),
            "--sessions".into(),
            self.sessions.to_string(),
            "--interval".into(),
            d(self.interval),
            "--timeout".into(),
            d(self.timeout),
            "--duration".into(),
            d(self.duration),
            "--stats-interval".into(),
            d(self.stats_interval),
        ];
        if self.new_connection_per_message {
            a.push("--new-connection-per-message".into());
        }
        if self.plain_udp {
            a.push("--plain-udp".into());
        }
        a
    }

    fn tag(&self, started: jiff::Timestamp) -> String {
        self.record.tag("affinity", started)
    }
}

/// Live lines: changes as they happen and the periodic stats line. On stdout with the table
/// output, on stderr otherwise (stdout then holds exactly the record); coloured on a terminal.
struct Live {
    to_stdout: bool,
    color: bool,
    started_ms: u64,
}

impl Live {
    fn new(output: RunFormat) -> Self {
        let to_stdout = output == RunFormat::Table;
        let color = if to_stdout {
            std::io::stdout().is_terminal()
        } else {
            std::io::stderr().is_terminal()
        };
        Self {
            to_stdout,
            color,
            started_ms: now_ms(),
        }
    }

    fn print(&self, line: &str) {
        if self.to_stdout {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        } else {
            eprintln!("{line}");
        }
    }

    fn change(&self, c: &Change) {
        let (what, color) = match c.kind {
            ChangeKind::Pod => ("pod", "\x1b[33m"),
            ChangeKind::Address => ("address", "\x1b[36m"),
        };
        let text = format!("session {} {what} {} → {}", c.session, c.old, c.new);
        let text = if self.color {
            format!("{color}{text}\x1b[0m")
        } else {
            text
        };
        self.print(&format!("{} {text}", report::clock(c.at_ms)));
    }

    fn stats(&self, sessions: u32, t: &Totals) {
        let secs = now_ms().saturating_sub(self.started_ms) / 1000;
        self.print(&format!(
            "[{secs:>5}s] sessions {sessions} sent {} answered {} lost {} late {} pod changes {} address changes {}",
            t.sent, t.answered, t.lost, t.late, t.pod_changes, t.address_changes
        ));
    }

    fn pool(&self, p: &PoolChange) {
        let mut parts: Vec<String> = p.removed.iter().map(|n| format!("-{n}")).collect();
        parts.extend(p.added.iter().map(|n| format!("+{n}")));
        self.print(&format!(
            "{} backend pool changed: {}",
            report::clock(p.at_ms),
            parts.join(" ")
        ));
    }
}

/// Classifies changes against pool changes: a change can be judged once no pool change that
/// excuses it can still be detected (it is older than twice the polling period).
struct Judge {
    pool_known: bool,
    slack_ms: u64,
    pool: Vec<PoolChange>,
    queue: VecDeque<Change>,
    kept: Vec<Change>,
    dropped: u64,
    during_pool_change: u64,
    violating: (u64, u64),
}

impl Judge {
    fn new(pool_known: bool, slack: Duration) -> Self {
        Self {
            pool_known,
            slack_ms: slack.as_millis() as u64,
            pool: Vec::new(),
            queue: VecDeque::new(),
            kept: Vec::new(),
            dropped: 0,
            during_pool_change: 0,
            violating: (0, 0),
        }
    }

    fn push(&mut self, c: Change) {
        self.queue.push_back(c);
        if !self.pool_known {
            self.settle(true);
        }
    }

    /// Judges the changes old enough (all of them when `all`).
    fn settle(&mut self, all: bool) {
        let horizon = now_ms().saturating_sub(2 * self.slack_ms);
        while let Some(c) = self.queue.front() {
            if !all && c.at_ms > horizon {
                break;
            }
            let mut c = self.queue.pop_front().expect("front exists");
            c.during_pool_change =
                self.pool_known && crate::affinity::during_pool_change(&c, &self.pool, self.slack_ms);
            if c.during_pool_change {
                self.during_pool_change += 1;
            } else {
                match c.kind {
                    ChangeKind::Pod => self.violating.0 += 1,
                    ChangeKind::Address => self.violating.1 += 1,
                }
            }
            if self.kept.len() < MAX_CHANGES {
                self.kept.push(c);
            } else {
                self.dropped += 1;
            }
        }
    }
}

/// How a run ended, and what it saw.
struct Finished {
    done: Done,
    judge: Judge,
    interrupted: bool,
}

/// The sessions of this run, here: `--address`, or the agent in a lab namespace.
async fn run_here(args: &AffinityArgs, address: SocketAddr, live: &Live) -> Result<Finished> {
    let cfg = Config {
        address,
        proto: args.proto(),
        sessions: args.sessions,
        interval: args.interval,
        timeout: args.timeout,
        new_connection_per_message: args.new_connection_per_message,
        plain_udp: args.plain_udp,
        prefix: format!("{:08x}", rand::random::<u32>()),
    };
    let mut engine = Engine::start(cfg)?;
    let emit = |e: &Event| {
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut out, e);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    };
    let mut judge = Judge::new(false, Duration::ZERO);
    let mut stats = tokio::time::interval_at(tokio::time::Instant::now() + args.stats_interval, args.stats_interval);
    let end = tokio::time::sleep(args.duration);
    tokio::pin!(end);
    let signal = async {
        tokio::select! {
            () = super::shutdown_signal() => {}
            () = super::stop_line(args.stdin_stop) => {}
        }
    };
    tokio::pin!(signal);
    let (mut stopping, mut interrupted) = (false, false);
    let done = loop {
        tokio::select! {
            ev = engine.next() => match ev {
                Some(Event::Change(c)) => {
                    if args.agent {
                        emit(&Event::Change(c));
                    } else {
                        live.change(&c);
                        judge.push(c);
                    }
                }
                Some(Event::Done(d)) => break d,
                Some(Event::Stats { .. }) | None => bail!("the session engine stopped without a summary"),
            },
            _ = stats.tick() => {
                let totals = engine.totals();
                if args.agent {
                    emit(&Event::Stats { at_ms: now_ms(), totals });
                } else {
                    live.stats(args.sessions, &totals);
                }
            }
            () = &mut end, if !stopping => {
                stopping = true;
                engine.stop();
            }
            () = &mut signal, if !stopping => {
                stopping = true;
                interrupted = true;
                engine.stop();
            }
        }
    };
    if args.agent {
        emit(&Event::Done(done.clone()));
    }
    Ok(Finished {
        done,
        judge,
        interrupted,
    })
}

/// Opens the named lab or the only running one.
fn open_lab(name: &str) -> Result<Lab> {
    if !name.is_empty() {
        return Lab::open(name);
    }
    let running: Vec<String> = Lab::list()?
        .into_iter()
        .filter(|n| crate::lab::labs_dir().join(n).join("state.json").exists())
        .collect();
    match running.as_slice() {
        [one] => Lab::open(one),
        [] => bail!(
            "no lab running: start one, e.g. `kubectl svclb lab up --name demo --affinity clientip`, then --lab demo"
        ),
        many => bail!(
            "several labs are running ({}): pick one with --lab NAME",
            many.join(", ")
        ),
    }
}

/// Where the backend pool is read while the sessions run.
enum Pool<'a> {
    /// The lab's pods.
    Lab(&'a str),
    /// The ready endpoints in the affinity Service's EndpointSlices: what kube-proxy programs.
    Cluster(&'a Cluster),
}

impl Pool<'_> {
    async fn read(&self) -> Option<BTreeSet<String>> {
        match self {
            Pool::Lab(name) => Lab::open(name)
                .ok()
                .map(|lab| lab.pods().iter().map(|p| p.name.clone()).collect()),
            Pool::Cluster(c) => ops::endpoint_slices(c, AFFINITY)
                .await
                .ok()
                .map(|eps| eps.into_iter().filter(|e| e.ready).map(|e| e.pod).collect()),
        }
    }

    /// How long after a pool change the proxy may still be switching: the polling period, plus
    /// on a cluster kube-proxy's minimum sync period (1 s by default) between an EndpointSlice
    /// update and its rules.
    fn slack(&self, poll: Duration) -> Duration {
        match self {
            Pool::Lab(_) => poll,
            Pool::Cluster(_) => poll + Duration::from_secs(1),
        }
    }
}

/// What an agent run saw, and where it ran.
struct AgentRun {
    finished: Finished,
    info: TargetInfo,
    /// The backends at the start (they get rows even when they served nothing).
    known_pods: Vec<String>,
    meta: Meta,
}

/// The sessions run as an agent at the target's source (a lab namespace, a pod through exec, or
/// a child process of this machine); this process prints its events and watches the pool.
/// `signal` (Ctrl-C) stops the agent, which then reports what it measured.
async fn run_agent<T: Backend>(
    args: &AffinityArgs,
    target: &T,
    pool: Pool<'_>,
    live: &Live,
    signal: impl std::future::Future<Output = ()>,
) -> Result<AgentRun> {
    let plan = target.plan(&args.from_(), &args.path(), args.proto())?;
    let source = plan.sources.first().context("the plan has no source")?.clone();
    let meta = target.meta();
    let stream = target.start_stream(&source, "affinity", &args.agent_args(plan.address))?;
    let mut lines = tokio::io::BufReader::new(stream.stdout).lines();
    if args.output == RunFormat::Table {
        eprintln!(
            "svclb: {} {} session(s) from {} to {} ({})",
            args.sessions,
            args.proto(),
            source.name,
            plan.address,
            args.path().describe()
        );
    }

    let poll_every = args.interval.clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut judge = Judge::new(true, pool.slack(poll_every));
    let mut current = pool.read().await.context("cannot read the backend pool")?;
    let known_pods: Vec<String> = current.iter().cloned().collect();
    let mut poll = tokio::time::interval(poll_every);
    tokio::pin!(signal);
    let mut interrupted = false;
    let mut done = None;
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(l)) => match serde_json::from_str::<Event>(&l) {
                    Ok(Event::Change(c)) => {
                        live.change(&c);
                        judge.push(c);
                    }
                    Ok(Event::Stats { totals, .. }) => live.stats(args.sessions, &totals),
                    Ok(Event::Done(d)) => done = Some(d),
                    Err(e) => bail!("the affinity agent printed something unexpected ({e}): {l}"),
                },
                _ => break,
            },
            _ = poll.tick() => {
                if let Some(now) = pool.read().await && now != current {
                    let change = PoolChange {
                        at_ms: now_ms(),
                        added: now.difference(&current).cloned().collect(),
                        removed: current.difference(&now).cloned().collect(),
                    };
                    live.pool(&change);
                    judge.pool.push(change);
                    current = now;
                }
                judge.settle(false);
            }
            () = &mut signal, if !interrupted => {
                interrupted = true;
                eprintln!("svclb: interrupted: stopping the sessions (in-flight messages get their timeout)");
                (stream.interrupt)();
            }
        }
    }
    let last = stream.ended.await;
    let Some(done) = done else {
        bail!(
            "the affinity agent in {} ended without a summary: {}",
            source.name,
            if last.is_empty() { "no output" } else { &last }
        );
    };
    let info = TargetInfo {
        address: format!("{} ({})", plan.address, args.path().describe()),
        mode: meta.mode.clone(),
        protocol: args.proto(),
        service: Some(meta.service.clone()),
        source: Some(source.name),
        lab: meta.name.clone(),
    };
    Ok(AgentRun {
        finished: Finished {
            done,
            judge,
            interrupted,
        },
        info,
        known_pods,
        meta,
    })
}

/// Makes sure the affinity server runs (and the tserver, whose pods run the agent, with `--from
/// pod`): deploys what is missing, leaves what exists as it is, waits until ready.
async fn prepare_cluster(args: &AffinityArgs, c: &Cluster) -> Result<()> {
    let apps: &[&str] = if args.from == FromKind::Pod {
        &[AFFINITY, TSERVER]
    } else {
        &[AFFINITY]
    };
    let o = Options {
        namespace: c.namespace.clone(),
        image: args.cluster.image(),
        affinity_server: true,
        ..Options::default()
    };
    super::cluster::ensure_servers(c, apps, &o, args.cluster.no_deploy).await
}

/// The sessions against the affinity server of a cluster (the default target).
async fn run_cluster(args: &AffinityArgs, kube: &KubeFlags, live: &Live) -> Result<AgentRun> {
    let (c, version) = cluster::connect(&kube.connection()).await?;
    let result = async {
        let signal = super::shutdown_signal();
        tokio::pin!(signal);
        tokio::select! {
            r = prepare_cluster(args, &c) => r?,
            () = &mut signal => bail!("interrupted while the servers were being deployed"),
        }
        let view = ClusterView::load(&c, version, AFFINITY, TSERVER).await?;
        let target = KubeBackend {
            view,
            pods: PodExec {
                cluster: c.clone(),
                container: "tserver".into(),
            },
            host: LocalRun {
                program: std::env::current_exe()?,
            },
        };
        run_agent(args, &target, Pool::Cluster(&c), live, super::shutdown_signal()).await
    }
    .await;
    if args.cluster.cleanup {
        super::cluster::cleanup_after_run(&c).await;
    }
    result
}

fn build_record(
    args: &AffinityArgs,
    started_at: jiff::Timestamp,
    target: TargetInfo,
    mut f: Finished,
    known_pods: &[String],
) -> AffinityRun {
    f.judge.settle(true);
    let rows = f.done.sessions;
    let mut pods: BTreeMap<String, PodSessions> = known_pods
        .iter()
        .map(|n| {
            (
                n.clone(),
                PodSessions {
                    name: n.clone(),
                    sessions: 0,
                    answered: 0,
                },
            )
        })
        .collect();
    fn entry<'a>(pods: &'a mut BTreeMap<String, PodSessions>, name: &str) -> &'a mut PodSessions {
        pods.entry(name.to_string()).or_insert_with(|| PodSessions {
            name: name.to_string(),
            sessions: 0,
            answered: 0,
        })
    }
    for r in &rows {
        for (pod, n) in &r.pods {
            entry(&mut pods, pod).answered += n;
        }
        if let Some(last) = &r.last_pod {
            entry(&mut pods, last).sessions += 1;
        }
    }
    let (verdict, reasons) = crate::affinity::judge(
        args.new_connection_per_message,
        &f.done.totals,
        &rows,
        f.judge.violating,
    );
    AffinityRun {
        kind: AFFINITY_KIND.into(),
        version: AFFINITY_VERSION,
        tag: args.tag(started_at),
        started_at,
        duration_s: f.done.elapsed_s,
        target,
        params: args.params(),
        session_prefix: f.done.prefix,
        stopped: f.interrupted.then_some(Stop::Interrupted),
        sessions: args.sessions,
        totals: f.done.totals,
        changes_during_pool_change: f.judge.during_pool_change,
        pool_known: f.judge.pool_known,
        pool_changes: f.judge.pool,
        pods: pods.into_values().collect(),
        changes: f.judge.kept,
        changes_dropped: f.judge.dropped,
        session_detail: if rows.len() <= MAX_SESSION_ROWS {
            rows
        } else {
            Vec::new()
        },
        verdict,
        reasons,
        environment: Environment::local(),
    }
}

pub fn run(args: AffinityArgs, kube: &KubeFlags) -> Result<ExitCode> {
    args.validate()?;
    if let Some(name) = &args.lab {
        crate::lab::require_host()?;
        if !name.is_empty() {
            crate::lab::validate_name(name)?;
        }
    }
    super::raise_nofile();
    let live = Live::new(args.output);
    let started_at = jiff::Timestamp::now();
    let rt = super::runtime(0)?;
    let run = rt.block_on(async {
        if let Some(name) = &args.lab {
            let lab = open_lab(name)?;
            let target = LabBackend::new(&lab)?;
            return run_agent(&args, &target, Pool::Lab(lab.name()), &live, super::shutdown_signal()).await;
        }
        let Some(text) = args.address.as_deref() else {
            return run_cluster(&args, kube, &live).await;
        };
        let address = super::spread::resolve(text, None).await?;
        let finished = run_here(&args, address, &live).await?;
        let info = TargetInfo {
            address: address.to_string(),
            mode: "address".into(),
            protocol: args.proto(),
            service: None,
            source: None,
            lab: None,
        };
        Ok(AgentRun {
            finished,
            info,
            known_pods: Vec::new(),
            meta: Meta::default(),
        })
    })?;
    // The runtime goes first: UDP session threads end with the run, nothing else may linger.
    drop(rt);
    if args.agent {
        return Ok(ExitCode::SUCCESS);
    }
    let mut record = build_record(&args, started_at, run.info, run.finished, &run.known_pods);
    record.environment.proxy_mode = run.meta.proxy_mode;
    record.environment.context = run.meta.context;
    record.environment.server_version = run.meta.server_version;
    args.record.save(&mut record)?;
    if args.output == RunFormat::Table {
        println!();
    }
    print!("{}", report::affinity(&record, args.output)?);
    Ok(match record.verdict {
        Verdict::Holds => ExitCode::SUCCESS,
        Verdict::Violated => ExitCode::from(1),
    })
}

#[cfg(test)]
mod tests {
    //! The cluster flow against the in-memory API, with the affinity agent run locally (the real
    //! binary, stopped through stdin) against loopback servers named like the pods.
    use clap::Parser;
    use serde_json::json;

    use super::*;
    use crate::cli::{Cli, Command};
    use crate::cluster::fake::{self, FakeApi, NS, Pods};
    use crate::cluster::manifests;
    use crate::commands::test_support::{local_target, serve};

    fn affinity_args(args: &[&str]) -> AffinityArgs {
        let mut argv = vec!["kubectl-svclb", "affinity", "--no-save", "-o", "json"];
        argv.extend(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Affinity(a) => a,
            _ => unreachable!(),
        }
    }

    type Endpoints<'a> = &'a [(&'a str, &'a str, &'a str, &'a [&'a str])];

    const TWO: Endpoints = &[
        ("svclb-affinity-1", "10.244.1.20", "zone-a", &[]),
        ("svclb-affinity-2", "10.244.2.20", "zone-b", &[]),
    ];

    /// Two nodes; a tserver pod (agents run there) and two affinity pods; the affinity Service's
    /// clusterIP and node-1's address are loopback.
    fn api(cluster_ip: &str, node_ip: &str) -> FakeApi {
        let api = FakeApi::new(Pods::Ready);
        api.put(fake::node("node-1", "zone-a", node_ip));
        api.put(fake::node("node-2", "zone-b", "127.78.0.2"));
        api.put(fake::pod("svclb-tserver-1", TSERVER, "node-1", "10.244.1.10", true));
        api.put(fake::pod("svclb-affinity-1", AFFINITY, "node-1", "10.244.1.20", true));
        api.put(fake::pod("svclb-affinity-2", AFFINITY, "node-2", "10.244.2.20", true));
        let spec = json!({"sessionAffinity": "ClientIP", "externalTrafficPolicy": "Local"});
        api.put(fake::for_app(
            fake::service("LoadBalancer", cluster_ip, spec, None),
            AFFINITY,
        ));
        api.put(fake::for_app(fake::slice(TWO), AFFINITY));
        api
    }

    #[tokio::test]
    async fn from_pod_runs_in_a_tserver_pod_and_judges_against_endpoint_slices() {
        let server = serve("127.78.1.10:5001", None, "svclb-affinity-1");
        let api = api("127.78.1.10", "127.78.1.20");
        let t = local_target(&api, AFFINITY).await;
        let args = affinity_args(&[
            "--udp",
            "--from",
            "pod",
            "--sessions",
            "20",
            "--interval",
            "100ms",
            "--timeout",
            "500ms",
            "--duration",
            "1500ms",
        ]);
        // svclb-affinity-2 leaves the Service's endpoints mid-run.
        let scaler = {
            let api = api.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                api.put(fake::for_app(fake::slice(&TWO[..1]), AFFINITY));
            })
        };
        let c = api.cluster();
        let live = Live::new(RunFormat::Json);
        let run = run_agent(&args, &t, Pool::Cluster(&c), &live, std::future::pending())
            .await
            .unwrap();
        scaler.await.unwrap();
        server.abort();
        let totals = &run.finished.done.totals;
        assert!(totals.sent >= 200, "{totals:?}");
        assert_eq!((totals.answered, totals.lost), (totals.sent, 0), "{totals:?}");
        assert_eq!(run.info.mode, "cluster");
        assert_eq!(run.info.source.as_deref(), Some("svclb-tserver-1"));
        assert_eq!(run.info.address, "127.78.1.10:5001 (clusterIP)");
        assert_eq!(run.info.service.as_deref(), Some(&*format!("{NS}/{AFFINITY}")));
        assert_eq!(run.known_pods, ["svclb-affinity-1", "svclb-affinity-2"]);
        let pool = &run.finished.judge.pool;
        assert_eq!(pool.len(), 1, "{pool:?}");
        assert_eq!(pool[0].removed, ["svclb-affinity-2"]);
        assert_eq!(run.meta.context.as_deref(), Some("kind-test"));

        let record = build_record(&args, jiff::Timestamp::now(), run.info, run.finished, &run.known_pods);
        assert_eq!(record.verdict, Verdict::Holds, "{:?}", record.reasons);
        assert!(record.pool_known);
        assert!(record.changes.is_empty());
        let served: Vec<(&str, u64)> = record.pods.iter().map(|p| (p.name.as_str(), p.sessions)).collect();
        assert_eq!(served, [("svclb-affinity-1", 20), ("svclb-affinity-2", 0)]);
    }

    #[tokio::test]
    async fn from_host_to_a_node_port_and_ctrl_c_stops_the_agent_through_stdin() {
        let server = serve("127.78.2.20:30501", None, "svclb-affinity-1");
        let api = api("127.78.2.10", "127.78.2.20");
        let t = local_target(&api, AFFINITY).await;
        let args = affinity_args(&[
            "--tcp",
            "--node-port",
            "node-1",
            "--sessions",
            "10",
            "--interval",
            "100ms",
            "--duration",
            "1m",
        ]);
        let c = api.cluster();
        let live = Live::new(RunFormat::Json);
        let started = std::time::Instant::now();
        let signal = tokio::time::sleep(Duration::from_millis(800));
        let run = run_agent(&args, &t, Pool::Cluster(&c), &live, signal).await.unwrap();
        server.abort();
        assert!(run.finished.interrupted);
        assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
        let totals = &run.finished.done.totals;
        assert!(totals.sent >= 10, "{totals:?}");
        assert_eq!(totals.sent, totals.answered + totals.lost, "{totals:?}");
        assert_eq!(run.info.source.as_deref(), Some("this-host"));
        assert_eq!(run.info.address, "127.78.2.20:30501 (nodePort)");
        assert!(run.finished.judge.pool.is_empty());
    }

    #[tokio::test]
    async fn deploys_only_what_is_missing_and_no_deploy_refuses() {
        let api = FakeApi::new(Pods::Ready);
        api.put(fake::node("node-1", "zone-a", "172.18.0.2"));
        let c = api.cluster();
        // A tserver deployed earlier with its own options: left as it is.
        let o = Options {
            namespace: NS.into(),
            replicas: 7,
            ..Options::default()
        };
        for obj in manifests::render(&o).unwrap() {
            api.put(obj);
        }
        let e = prepare_cluster(&affinity_args(&["--udp", "--no-deploy"]), &c)
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("no svclb-affinity deployment in namespace svclb-test"),
            "{e}"
        );
        prepare_cluster(&affinity_args(&["--udp", "--from", "pod"]), &c)
            .await
            .unwrap();
        let patched: Vec<String> = api.log().into_iter().filter(|l| l.starts_with("PATCH")).collect();
        assert_eq!(patched.len(), 2, "{patched:?}");
        assert!(patched.iter().all(|l| l.contains("/svclb-affinity?")), "{patched:?}");
        let tserver = api
            .get(&format!("/apis/apps/v1/namespaces/{NS}/deployments/{TSERVER}"))
            .unwrap();
        assert_eq!(tserver["spec"]["replicas"], 7);
    }
}
