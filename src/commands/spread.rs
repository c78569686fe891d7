//! `kubectl svclb spread`: storm a Service, print the spread and a verdict, save the run.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use ipnet::IpNet;

use crate::backend::{From, Path};
use crate::record::{Environment, Latency, Params, SPREAD_KIND, SPREAD_VERSION, SpreadRun, TargetInfo};
use crate::report::{self, RunFormat};
use crate::stats::{Criteria, Verdict, evaluate};
use crate::storm::{self, BackendCount, Control, Outcome, Proto, Stop, StormConfig};

#[derive(Debug, Args)]
pub struct SpreadArgs {
    /// Storm this address (HOST:PORT) directly: any server speaking the wire protocol or
    /// replying with its hostname (mconnect, agnhost serve-hostname).
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "lab")]
    pub address: Option<String>,
    /// Storm a lab (needs root): the one named, the one running, or, with none running, a
    /// default lab (10 nodes, 100 pods) made for this run and removed after it.
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "NAME")]
    pub lab: Option<String>,
    /// Where the storm comes from: a pod (to the clusterIP by default) or the host, outside the
    /// cluster (to a nodePort or the LoadBalancer IP).
    #[arg(long, value_enum, default_value_t = FromKind::Pod)]
    pub from: FromKind,
    /// With --from pod: storm from this pod (default: the first pod).
    #[arg(long, value_name = "POD", conflicts_with = "sources")]
    pub pod: Option<String>,
    /// With --from pod: one storm, or one from a pod on every node at once (per-source breakdown).
    #[arg(long, value_enum, default_value_t = SourcesKind::One)]
    pub sources: SourcesKind,
    /// Storm the nodePort of NODE (default: the first node).
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "NODE")]
    pub node_port: Option<String>,
    /// Storm the LoadBalancer IP.
    #[arg(long, conflicts_with = "node_port")]
    pub lb: bool,
    /// Connections to make.
    #[arg(long, default_value_t = 10_000)]
    pub conns: u64,
    /// Connections in flight at most.
    #[arg(long, default_value_t = 100)]
    pub parallel: usize,
    /// Connections per second (default: as fast as possible).
    #[arg(long, allow_negative_numbers = true)]
    pub rate: Option<f64>,
    /// Per connection: connect and first reply.
    #[arg(long, default_value = "2s", value_parser = super::parse_duration)]
    pub timeout: Duration,
    /// Whole run: no connection starts after it.
    #[arg(long, value_parser = super::parse_duration)]
    pub deadline: Option<Duration>,
    /// UDP: one datagram `svclb <session> <seq>` per new socket instead of a TCP connection.
    #[arg(long)]
    pub udp: bool,
    /// A random source address of this CIDR per connection (IPv4 or IPv6).
    #[arg(long, value_name = "CIDR")]
    pub srccidr: Option<IpNet>,
    /// Backends that must answer; missing ones fail the verdict and show with 0.
    #[arg(long, value_name = "N")]
    pub expect_backends: Option<usize>,
    /// Each backend must get within ±PCT % of the fair share.
    #[arg(long, default_value_t = 50.0, value_name = "PCT", allow_negative_numbers = true)]
    pub margin: f64,
    /// Also fail when the chi-square p-value against a uniform spread is below ALPHA.
    #[arg(long, value_name = "ALPHA")]
    pub alpha: Option<f64>,
    /// Close with FIN instead of RST (SO_LINGER 0); leaves TIME_WAIT on this side.
    #[arg(long)]
    pub graceful_close: bool,
    #[command(flatten)]
    pub record: super::SaveArgs,
    /// Output format; json prints exactly the run record.
    #[arg(short = 'o', long, value_enum, default_value_t = RunFormat::Table)]
    pub output: RunFormat,
    /// Run as a storm agent for a lab or cluster run: print the JSON record with its latency
    /// histogram, save nothing.
    #[arg(long, hide = true)]
    pub agent: bool,
    /// Agent only: a line `stop` on stdin interrupts the storm (how a cluster run stops an
    /// agent it runs through exec, where no signal can be sent).
    #[arg(long, hide = true, requires = "agent")]
    pub stdin_stop: bool,
    #[command(flatten)]
    pub cluster: super::ClusterRunArgs,
}

/// `--from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FromKind {
    Pod,
    Host,
}

/// `--sources`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourcesKind {
    One,
    PerNode,
}

impl SpreadArgs {
    fn validate(&self) -> Result<()> {
        if self.conns == 0 {
            bail!("--conns 0: give at least 1 connection");
        }
        if self.parallel == 0 {
            bail!("--parallel 0: give at least 1 connection in flight");
        }
        if let Some(r) = self.rate
            && !(r > 0.0 && r.is_finite())
        {
            bail!("--rate {r}: give a positive number of connections per second");
        }
        if self.timeout.is_zero() {
            bail!("--timeout 0s: give a positive per-connection timeout, e.g. 2s");
        }
        if !(0.0..=1000.0).contains(&self.margin) {
            bail!("--margin {}: give a percentage between 0 and 1000", self.margin);
        }
        if let Some(a) = self.alpha
            && !(0.0 < a && a < 1.0)
        {
            bail!("--alpha {a}: give a significance level between 0 and 1, e.g. 0.001");
        }
        if self.expect_backends == Some(0) {
            bail!("--expect-backends 0: give the number of backends that must answer");
        }
        self.record.validate()?;
        if self.address.is_some()
            && (self.from != FromKind::Pod
                || self.pod.is_some()
                || self.sources != SourcesKind::One
                || self.node_port.is_some()
                || self.lb)
        {
            bail!(
                "--from, --pod, --sources, --node-port and --lb choose a lab or cluster path: drop them with --address"
            );
        }
        if self.from == FromKind::Host && (self.pod.is_some() || self.sources != SourcesKind::One) {
            bail!("--pod and --sources pick pods to storm from: use them with --from pod");
        }
        if self.from == FromKind::Host && self.node_port.is_none() && !self.lb {
            bail!("--from host needs --node-port [NODE] or --lb: the clusterIP is not reachable from outside");
        }
        Ok(())
    }

    pub(crate) fn path(&self) -> Path {
        match (&self.node_port, self.lb) {
            (Some(n), _) => Path::NodePort((!n.is_empty()).then(|| n.clone())),
            (None, true) => Path::LoadBalancer,
            (None, false) => Path::ClusterIp,
        }
    }

    pub(crate) fn from(&self) -> From {
        match self.from {
            FromKind::Host => From::Host,
            FromKind::Pod => From::Pods {
                pod: self.pod.clone(),
                per_node: self.sources == SourcesKind::PerNode,
            },
        }
    }

    /// The arguments of the agent that storms `address` for this run.
    pub(crate) fn agent_args(&self, address: SocketAddr) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--agent".into(),
            "--address".into(),
            address.to_string(),
            "--conns".into(),
            self.conns.to_string(),
            "--parallel".into(),
            self.parallel.to_string(),
            "--timeout".into(),
            format!("{}ms", self.timeout.as_millis()),
        ];
        if let Some(r) = self.rate {
            a.extend(["--rate".into(), r.to_string()]);
        }
        if let Some(d) = self.deadline {
            a.extend(["--deadline".into(), format!("{}ms", d.as_millis())]);
        }
        if let Some(c) = self.srccidr {
            a.extend(["--srccidr".into(), c.to_string()]);
        }
        if self.udp {
            a.push("--udp".into());
        }
        if self.graceful_close {
            a.push("--graceful-close".into());
        }
        a
    }

    pub(crate) fn criteria(&self) -> Criteria {
        Criteria {
            expect_backends: self.expect_backends,
            margin_pct: self.margin,
            alpha: self.alpha,
        }
    }

    pub(crate) fn params(&self) -> Params {
        Params {
            conns: self.conns,
            parallel: self.parallel,
            rate: self.rate,
            timeout_s: self.timeout.as_secs_f64(),
            deadline_s: self.deadline.map(|d| d.as_secs_f64()),
            srccidr: self.srccidr.map(|c| c.to_string()),
            expect_backends: self.expect_backends,
            margin_pct: self.margin,
            alpha: self.alpha,
            graceful_close: self.graceful_close,
        }
    }

    pub(crate) fn tag(&self, started: jiff::Timestamp) -> String {
        self.record.tag("spread", started)
    }
}

/// Resolves HOST:PORT, preferring an address of `family_of` when given (e.g. the --srccidr family).
pub(crate) async fn resolve(address: &str, family_of: Option<IpNet>) -> Result<SocketAddr> {
    let bad = || anyhow::anyhow!("bad --address {address:?}: want HOST:PORT, e.g. 127.0.0.1:5001 or [::1]:5001");
    let (_, port) = address.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot resolve --address {address:?}: {e}"))?
        .collect();
    let preferred = family_of.and_then(|net| addrs.iter().find(|a| a.is_ipv4() == net.addr().is_ipv4()));
    preferred.or(addrs.first()).copied().ok_or_else(bad)
}

/// A backend known to exist (from a lab or a cluster), so zero-count backends can be listed.
#[derive(Debug, Clone)]
pub struct KnownBackend {
    pub name: String,
    pub node: String,
    pub zone: String,
}

/// Merges observed counts with the known backends (zero-filled) and judges them.
pub fn build_record(
    tag: String,
    started_at: jiff::Timestamp,
    target: TargetInfo,
    params: Params,
    outcome: &Outcome,
    known: &[KnownBackend],
    criteria: &Criteria,
) -> SpreadRun {
    let mut backends: Vec<BackendCount> = outcome.backends.clone();
    for k in known {
        match backends.iter_mut().find(|b| b.name == k.name) {
            // The target's view (a lab's state, the API's pod -> node -> zone) wins over what a
            // server reports: a tserver cannot read its node's zone label and reports its hostname.
            Some(b) => {
                if !k.node.is_empty() {
                    b.node.clone_from(&k.node);
                }
                if !k.zone.is_empty() {
                    b.zone.clone_from(&k.zone);
                }
            }
            None => backends.push(BackendCount {
                name: k.name.clone(),
                node: k.node.clone(),
                zone: k.zone.clone(),
                count: 0,
            }),
        }
    }
    backends.sort_by(|a, b| a.name.cmp(&b.name));
    let criteria = Criteria {
        expect_backends: criteria.expect_backends.or((!known.is_empty()).then_some(known.len())),
        ..*criteria
    };
    // Backends that must exist but never answered, when their names are unknown (--address runs):
    // listed with 0 so the tables and the frequency table show them.
    let missing = criteria.expect_backends.unwrap_or(0).saturating_sub(backends.len());
    backends.extend((1..=missing).map(|i| BackendCount {
        name: format!("<missing-{i}>"),
        node: String::new(),
        zone: String::new(),
        count: 0,
    }));
    let counts: Vec<(&str, u64)> = backends.iter().map(|b| (b.name.as_str(), b.count)).collect();
    let mut stats = evaluate(&counts, outcome.failures.total(), &criteria);
    if outcome.stopped == Some(Stop::Interrupted) {
        stats.verdict = Verdict::Fail;
        stats.reasons.push(format!(
            "interrupted after {} of {} connections",
            outcome.attempted, params.conns
        ));
    }
    SpreadRun {
        kind: SPREAD_KIND.into(),
        version: SPREAD_VERSION,
        tag,
        started_at,
        duration_s: outcome.elapsed.as_secs_f64(),
        target,
        params,
        conns: outcome.attempted,
        ok: outcome.ok,
        failed: outcome.failures.into(),
        stopped: outcome.stopped,
        backends,
        sources: Vec::new(),
        latency_ms: Latency::from_histogram(&outcome.latency),
        latency_histogram_us: None,
        stats,
        environment: Environment::local(),
    }
}

/// Runs a storm with a progress bar (on a terminal) and Ctrl-C/SIGTERM handling.
pub async fn storm_with_progress(cfg: &StormConfig, stdin_stop: bool) -> Result<Outcome> {
    let control = Control::new();
    let watcher = {
        let control = control.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = super::shutdown_signal() => {}
                _ = super::stop_line(stdin_stop) => {}
            }
            eprintln!("svclb: interrupted: finishing connections in flight, then saving what was measured");
            control.interrupt();
        })
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(cfg.conns);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} conns {per_sec} eta {eta}")
                .expect("static template"),
        );
        bar
    });
    let ticker = bar.clone().map(|bar| {
        let control = control.clone();
        tokio::spawn(async move {
            loop {
                bar.set_position(control.done());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    let outcome = storm::run(cfg, control.clone()).await;
    watcher.abort();
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    outcome
}

/// Completes when stdin carries a line `stop` (when `enabled`); never otherwise, nor at EOF.
/// stdin is read on a plain thread: a read pending in tokio's blocking pool would keep the
/// runtime, and so the agent, from exiting after it printed its record.
/// Prints the run, saves it unless told not to, and maps the verdict to the exit code.
pub fn finish(mut run: SpreadRun, save: &super::SaveArgs, output: RunFormat) -> Result<ExitCode> {
    save.save(&mut run)?;
    print!("{}", report::spread(&run, output)?);
    Ok(verdict_code(&run))
}

pub fn run(args: SpreadArgs, kube: &super::KubeFlags) -> Result<ExitCode> {
    args.validate()?;
    if let Some(lab) = &args.lab {
        return super::spread_lab::run(&args, lab);
    }
    let Some(address) = args.address.clone() else {
        return super::spread_cluster::run(&args, kube);
    };
    super::raise_nofile();
    let rt = super::runtime(0)?;
    let (started_at, target, outcome) = rt.block_on(async {
        let target = resolve(&address, args.srccidr).await?;
        let cfg = StormConfig {
            target,
            proto: if args.udp { Proto::Udp } else { Proto::Tcp },
            conns: args.conns,
            parallel: args.parallel,
            rate: args.rate,
            timeout: args.timeout,
            deadline: args.deadline,
            srccidr: args.srccidr,
            graceful_close: args.graceful_close,
            session: format!("{:08x}", rand::random::<u32>()),
        };
        let started_at = jiff::Timestamp::now();
        let outcome = storm_with_progress(&cfg, args.stdin_stop).await?;
        anyhow::Ok((started_at, cfg, outcome))
    })?;
    let info = TargetInfo {
        address: target.target.to_string(),
        mode: "address".into(),
        protocol: target.proto,
        service: None,
        source: None,
        lab: None,
    };
    let mut run = build_record(
        args.tag(started_at),
        started_at,
        info,
        args.params(),
        &outcome,
        &[],
        &args.criteria(),
    );
    if args.agent {
        run.latency_histogram_us = Some(crate::record::histogram_buckets(&outcome.latency));
        print!("{}", report::spread(&run, RunFormat::Json)?);
        return Ok(verdict_code(&run));
    }
    finish(run, &args.record, args.output)
}

fn verdict_code(run: &SpreadRun) -> ExitCode {
    match run.stats.verdict {
        Verdict::Pass => ExitCode::SUCCESS,
        Verdict::Fail => ExitCode::from(1),
    }
}
