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
use crate::lab::Lab;
use crate::record::{
    AFFINITY_KIND, AFFINITY_VERSION, AffinityParams, AffinityRun, Environment, MAX_CHANGES, MAX_SESSION_ROWS,
    PodSessions, TargetInfo,
};
use crate::report::{self, RunFormat};
use crate::storm::{Proto, Stop};
use crate::target::lab::LabTarget;
use crate::target::{From, Path, Target};

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
    /// so any change violates.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "lab")]
    pub address: Option<String>,
    /// Run the sessions in a lab (needs root): the one named or the only one running.
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "NAME")]
    pub lab: Option<String>,
    /// Where the sessions run: the lab's external client (to the LoadBalancer IP or a nodePort)
    /// or a pod (to the clusterIP).
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
    /// Run as the agent of a lab or cluster run: events as JSON lines on stdout, save nothing.
    #[arg(long, hide = true)]
    pub agent: bool,
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
        let lab_path = self.from != FromKind::Host || self.pod.is_some() || self.node_port.is_some() || self.lb;
        if self.lab.is_none() && lab_path {
            bail!("--from, --pod, --node-port and --lb choose a path in a lab: use them with --lab");
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
    let signal = super::shutdown_signal();
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

fn pool_of(name: &str) -> Option<BTreeSet<String>> {
    Lab::open(name)
        .ok()
        .map(|lab| lab.pods().iter().map(|p| p.name.clone()).collect())
}

/// The sessions run as an agent in a lab namespace; this process watches the pool.
async fn run_lab(
    args: &AffinityArgs,
    lab: &Lab,
    live: &Live,
) -> Result<(Finished, TargetInfo, Vec<String>, Option<String>)> {
    let target = LabTarget::new(lab)?;
    let plan = target.plan(&args.from_(), &args.path(), args.proto())?;
    let source = plan.sources.first().context("the lab plan has no source")?.clone();
    let meta = target.meta();
    let mut cmd = target.agent_command(&source, "affinity", &args.agent_args(plan.address))?;
    let mut child = cmd.spawn().with_context(|| {
        format!(
            "cannot start the affinity agent in {} (is iproute2 installed?)",
            source.name
        )
    })?;
    let pid = child.id().map(|p| p as i32);
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("agent stdout")?).lines();
    let stderr = child.stderr.take().context("agent stderr")?;
    let errors = tokio::spawn(async move {
        let mut last = String::new();
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if !l.trim().is_empty() {
                last = l;
            }
        }
        last
    });
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
    let mut judge = Judge::new(true, poll_every);
    let mut pool = pool_of(lab.name()).context("cannot read the lab's pods")?;
    let all_pods: Vec<String> = pool.iter().cloned().collect();
    let mut poll = tokio::time::interval(poll_every);
    let signal = super::shutdown_signal();
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
                if let Some(now) = pool_of(lab.name()) && now != pool {
                    let change = PoolChange {
                        at_ms: now_ms(),
                        added: now.difference(&pool).cloned().collect(),
                        removed: pool.difference(&now).cloned().collect(),
                    };
                    live.pool(&change);
                    judge.pool.push(change);
                    pool = now;
                }
                judge.settle(false);
            }
            () = &mut signal, if !interrupted => {
                interrupted = true;
                eprintln!("svclb: interrupted: stopping the sessions (in-flight messages get their timeout)");
                if let Some(pid) = pid {
                    // SAFETY: signalling the agent we spawned (`ip netns exec` execs it).
                    unsafe { libc::kill(pid, libc::SIGINT) };
                }
            }
        }
    }
    let _ = child.wait().await;
    let Some(done) = done else {
        let last = errors.await.unwrap_or_default();
        bail!(
            "the affinity agent in {} ended without a summary: {}",
            source.name,
            if last.is_empty() { "no output" } else { &last }
        );
    };
    let info = TargetInfo {
        address: format!("{} ({})", plan.address, args.path().describe()),
        mode: meta.mode,
        protocol: args.proto(),
        service: Some(meta.service),
        source: Some(source.name),
        lab: meta.name,
    };
    Ok((
        Finished {
            done,
            judge,
            interrupted,
        },
        info,
        all_pods,
        meta.proxy_mode,
    ))
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

pub fn run(args: AffinityArgs) -> Result<ExitCode> {
    args.validate()?;
    if args.lab.is_none() && args.address.is_none() {
        bail!(
            "no target: give --address HOST:PORT to run sessions against any address, or --lab [NAME] for an \
             emulated cluster (the cluster target comes with the kube target)"
        );
    }
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
    let (finished, info, known, proxy_mode) = rt.block_on(async {
        if let Some(name) = &args.lab {
            let lab = open_lab(name)?;
            let (f, info, known, proxy) = run_lab(&args, &lab, &live).await?;
            return anyhow::Ok((f, info, known, proxy));
        }
        let text = args.address.as_deref().expect("checked above");
        let address = super::spread::resolve(text, None).await?;
        let f = run_here(&args, address, &live).await?;
        let info = TargetInfo {
            address: address.to_string(),
            mode: "address".into(),
            protocol: args.proto(),
            service: None,
            source: None,
            lab: None,
        };
        Ok((f, info, Vec::new(), None))
    })?;
    // The runtime goes first: UDP session threads end with the run, nothing else may linger.
    drop(rt);
    if args.agent {
        return Ok(ExitCode::SUCCESS);
    }
    let mut record = build_record(&args, started_at, info, finished, &known);
    record.environment.proxy_mode = proxy_mode;
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
