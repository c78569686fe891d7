//! `kubectl svclb spread`: storm a Service, print the spread and a verdict, save the run.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use ipnet::IpNet;

use crate::backend::{From, Path};
use crate::cluster::manifests::{Options, TSERVER};
use crate::record::{AnyRun, SpreadRun};
use crate::report::{self, RunFormat};
use crate::run;
use crate::run::open::{ClusterPlace, Place};
use crate::run::spread::SpreadJob;
use crate::service::ServiceType;
use crate::stats::{Criteria, Verdict};
use crate::storm::{Proto, StormConfig};

#[derive(Debug, Args)]
pub struct SpreadArgs {
    /// Storm this address (HOST:PORT) directly: any server speaking the wire protocol or
    /// replying with its hostname (mconnect, agnhost serve-hostname).
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "lab")]
    pub address: Option<String>,
    /// Storm a lab (needs root): the one named, or the only one running; with none or several
    /// running (and with `--lab new`), a default lab (10 nodes, 100 pods) made for this run and
    /// removed after it.
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "NAME")]
    pub lab: Option<String>,
    /// Where the storm comes from: a pod (to the clusterIP by default) or the host, outside the
    /// cluster (to a nodePort or the LoadBalancer IP).
    #[arg(long, value_enum, default_value_t = FromKind::Pod)]
    pub from: FromKind,
    /// With --from pod: storm from this pod (default: the first pod).
    #[arg(long, value_name = "POD", conflicts_with = "sources")]
    pub pod: Option<String>,
    /// With --from pod: one storm, or one from a pod on every node at once (per-source breakdown;
    /// each makes --conns connections).
    #[arg(long, value_enum, default_value_t = SourcesKind::One)]
    pub sources: SourcesKind,
    /// Storm the nodePort of NODE (default: the first node).
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "NODE")]
    pub node_port: Option<String>,
    /// Storm the LoadBalancer IP.
    #[arg(long, conflicts_with = "node_port")]
    pub lb: bool,
    /// Connections to make, from each source: with `--sources per-node` every source makes this
    /// many (10 nodes × 10,000 = 100,000 in all), as `--parallel` and `--rate` are per source too.
    #[arg(long, default_value_t = 10_000)]
    pub conns: u64,
    /// Connections in flight at most (per source).
    #[arg(long, default_value_t = 100)]
    pub parallel: usize,
    /// Connections per second, per source (default: as fast as possible).
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
    /// Each backend must get within ±PCT % of the fair share, where the sample makes that
    /// meaningful; on smaller samples the band widens to what a fair random balancer reaches by
    /// chance (the report says which).
    #[arg(long, default_value_t = 50.0, value_name = "PCT", allow_negative_numbers = true)]
    pub margin: f64,
    /// Significance of the spread tests: fail when the chi-square p-value against a uniform
    /// spread is below ALPHA, and widen the per-backend band to ALPHA's bound [default: 0.001].
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
    /// Table and markdown: a row for every backend and every connection count (by default, beyond
    /// 12 backends, the 5 with the most and the 5 with the fewest connections, and the counts in
    /// at most 12 ranges).
    #[arg(long)]
    pub all_backends: bool,
    #[command(flatten)]
    pub family: super::FamilyArgs,
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
        if self.deadline.is_some_and(|d| d.is_zero()) {
            bail!("--deadline 0s: give a positive time for the whole run, e.g. 30s");
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
        self.family.validate(self.output)?;
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

    fn path(&self) -> Path {
        match (&self.node_port, self.lb) {
            (Some(n), _) => Path::NodePort((!n.is_empty()).then(|| n.clone())),
            (None, true) => Path::LoadBalancer,
            (None, false) => Path::ClusterIp,
        }
    }

    fn from(&self) -> From {
        match self.from {
            FromKind::Host => From::Host,
            FromKind::Pod => From::Pods {
                pod: self.pod.clone(),
                per_node: self.sources == SourcesKind::PerNode,
            },
        }
    }

    fn criteria(&self) -> Criteria {
        Criteria {
            expect_backends: self.expect_backends,
            margin_pct: self.margin,
            alpha: self.alpha,
        }
    }

    /// Where the run goes.
    fn place(&self, kube: &super::KubeFlags) -> Place {
        if let Some(address) = &self.address {
            return Place::Address {
                address: address.clone(),
                family_of: self.srccidr,
            };
        }
        if let Some(name) = &self.lab {
            return Place::Lab {
                name: name.clone(),
                build_if_none: true,
            };
        }
        Place::Cluster(Box::new(ClusterPlace {
            connection: kube.connection(),
            service: TSERVER,
            clients: TSERVER,
            apps: vec![TSERVER],
            // When the tserver is missing: default options, the Service type the path needs.
            options: Options {
                image: self.cluster.image(),
                service_type: if self.path() == Path::LoadBalancer {
                    ServiceType::LoadBalancer
                } else {
                    ServiceType::NodePort
                },
                ..Options::default()
            },
            no_deploy: self.cluster.no_deploy,
            cleanup: self.cluster.cleanup,
        }))
    }

    pub(crate) fn job(&self) -> SpreadJob {
        SpreadJob {
            from: self.from(),
            path: self.path(),
            storm: StormConfig {
                // Set per source from the plan.
                target: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                proto: if self.udp { Proto::Udp } else { Proto::Tcp },
                conns: self.conns,
                parallel: self.parallel,
                rate: self.rate,
                timeout: self.timeout,
                deadline: self.deadline,
                srccidr: self.srccidr,
                graceful_close: self.graceful_close,
                session: String::new(),
                fetch_bytes: None,
                src_ports: None,
            },
            criteria: self.criteria(),
            save: self.record.to(),
            announce: self.output == RunFormat::Table,
        }
    }
}

/// Saves the run (before anything else can fail), prints it, writes its page to `html`, and maps
/// the verdict to the exit code: 2 when nothing answered (one line) or the save failed (after the
/// report).
fn finish(
    mut run: SpreadRun,
    save: &run::SaveTo,
    args: &SpreadArgs,
    html: Option<&std::path::Path>,
) -> Result<(ExitCode, AnyRun)> {
    let saved = save.save(&mut run);
    if let Some(line) = crate::spread::nothing_answered(&run) {
        // The page shows the failures by kind all the same.
        let _ = super::html_code(html, || AnyRun::Spread(Box::new(run.clone())), ExitCode::SUCCESS);
        bail!("{line}");
    }
    print!("{}", report::spread(&run, args.output, args.all_backends)?);
    let code = super::verdict_code(run.stopped, run.stats.verdict == Verdict::Pass);
    let code = super::save_code(&saved, &run, args.output, code);
    let code = super::html_code(html, || AnyRun::Spread(Box::new(run.clone())), code);
    Ok((code, AnyRun::Spread(Box::new(run))))
}

pub fn run(args: SpreadArgs, kube: &super::KubeFlags) -> Result<ExitCode> {
    args.validate()?;
    match (&args.address, &args.lab) {
        (Some(_), _) => kube.refuse_off_cluster("--address")?,
        (None, Some(_)) => kube.refuse_off_cluster("--lab")?,
        (None, None) => {}
    }
    let place = args.place(kube);
    args.family.measure(
        place,
        args.record.html.as_deref(),
        async |opened, interrupt, family, each| {
            let mut job = args.job();
            job.save = args.family.save_to(&job.save, "spread", family);
            let record = run::spread::run(opened, &job, interrupt).await?;
            finish(record, &job.save, &args, each)
        },
    )
}
