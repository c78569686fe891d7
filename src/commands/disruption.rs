//! `kubectl svclb disruption`: what a rollout, scale, pod deletion or node drain does to traffic,
//! second by second (docs/disruption.md).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;

use crate::disruption::Action;
use crate::report::{self, RunFormat};
use crate::run;
use crate::run::disruption::DisruptionJob;
use crate::run::open::Place;
use crate::stats::Verdict;

#[derive(Debug, Args)]
pub struct DisruptionArgs {
    /// Run on a lab (needs root): the one named, or the only one running; with none or several
    /// running (and with `--lab new`), a default lab made for this run and removed after it.
    /// Without --lab: the cluster of the current context.
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "NAME")]
    pub lab: Option<String>,
    /// What happens after the warm-up: delete-pod[=POD] (replaced, as by its ReplicaSet),
    /// scale=N (scaled back afterwards), rollout-restart, drain-node=NODE (cordon and evict;
    /// uncordoned afterwards), or none (a baseline).
    #[arg(long, default_value = "none", value_name = "ACTION")]
    pub action: Action,
    /// New connections per second, all sources together (each reads the reply and closes).
    #[arg(long, default_value_t = 200.0, value_name = "CONNS/S", allow_negative_numbers = true)]
    pub rate: f64,
    /// TCP connections kept for the whole run, each sending a line every 100 ms.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub long_lived: u32,
    /// UDP sessions (one flow each) sending a datagram every 100 ms.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub udp_sessions: u32,
    /// With `--action none`, how long the run lasts [default: 10s]; with an action, the most
    /// it may last (it ends --settle after the endpoints are stable again) [default: 120s].
    #[arg(long, value_name = "DURATION", value_parser = super::parse_duration)]
    pub duration: Option<Duration>,
    /// Clients on every node, or on one.
    #[arg(long, value_enum, default_value_t = Sources::PerNode)]
    pub sources: Sources,
    /// Traffic before the action starts.
    #[arg(long, default_value = "3s", value_name = "DURATION", value_parser = super::parse_duration)]
    pub warmup: Duration,
    /// Traffic after the endpoints are stable again.
    #[arg(long, default_value = "3s", value_name = "DURATION", value_parser = super::parse_duration)]
    pub settle: Duration,
    /// Per new connection (connect and reply), per message of a long-lived connection or UDP
    /// session: later is a timeout (2s: a SYN dropped once is retransmitted after 1 s, and a
    /// dead endpoint keeps dropping the retransmission).
    #[arg(long, default_value = "2s", value_name = "DURATION", value_parser = super::parse_duration)]
    pub timeout: Duration,
    /// A deleted (or evicted) pod's grace period (seconds, or a duration); on a lab the default
    /// is 5s, on a cluster the pod's own terminationGracePeriodSeconds.
    #[arg(long, value_name = "SECONDS", value_parser = seconds_or_duration)]
    pub grace_period: Option<Duration>,
    /// Lab: how long a terminating server keeps accepting before it closes its listeners
    /// (a preStop sleep) [default: 0].
    #[arg(long, value_name = "DURATION", value_parser = seconds_or_duration, requires = "lab")]
    pub drain_delay: Option<Duration>,
    /// Lab: a new pod becomes ready this long after its server answers (a slow readiness
    /// probe) [default: 0].
    #[arg(long, value_name = "DURATION", value_parser = seconds_or_duration, requires = "lab")]
    pub ready_delay: Option<Duration>,
    #[command(flatten)]
    pub record: super::SaveArgs,
    #[command(flatten)]
    pub family: super::FamilyArgs,
    /// Output format; json prints exactly the run record.
    #[arg(short = 'o', long, value_enum, default_value_t = RunFormat::Table)]
    pub output: RunFormat,
    /// Cluster: fail when the test servers are not deployed instead of deploying them.
    #[arg(long, conflicts_with = "lab")]
    pub no_deploy: bool,
    /// Cluster: image of the test servers when this run deploys them (the run's client pods run
    /// the deployed tserver's image) [default: ghcr.io/kubectl-svclb/kubectl-svclb:v<version>].
    #[arg(long, value_name = "IMAGE", conflicts_with_all = ["lab", "no_deploy"])]
    pub image: Option<String>,
    /// Cluster: delete what the plugin made in the namespace after the run (also when interrupted).
    #[arg(long, conflicts_with = "lab")]
    pub cleanup: bool,
}

/// `--sources`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sources {
    PerNode,
    One,
}

/// `5` (seconds, as kubectl's --grace-period) or a duration (`500ms`, `2s`).
fn seconds_or_duration(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => super::parse_duration(s),
    }
}

/// Most long-lived connections or UDP sessions (each holds a socket in its agent).
const MAX_FLOWS: u32 = 20_000;
/// Most new connections per second (open loop: each in flight holds a socket until its timeout).
const MAX_RATE: f64 = 100_000.0;

impl DisruptionArgs {
    fn duration(&self) -> Duration {
        self.duration.unwrap_or(if self.action == Action::None {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(120)
        })
    }

    fn validate(&self) -> Result<()> {
        if !(self.rate >= 0.0 && self.rate.is_finite()) {
            bail!(
                "--rate {}: give a number of new connections per second (0 for none)",
                self.rate
            );
        }
        if self.rate > MAX_RATE {
            bail!("--rate {}: at most {MAX_RATE} new connections per second", self.rate);
        }
        if self.rate == 0.0 && self.long_lived == 0 && self.udp_sessions == 0 {
            bail!("no traffic: give --rate, --long-lived or --udp-sessions");
        }
        if self.long_lived > MAX_FLOWS || self.udp_sessions > MAX_FLOWS {
            bail!("--long-lived and --udp-sessions take at most {MAX_FLOWS} each");
        }
        if self.timeout.is_zero() {
            bail!("--timeout 0s: give a positive timeout, e.g. 1s");
        }
        let d = self.duration();
        if d.is_zero() {
            bail!("--duration 0s: give a positive duration, e.g. 30s");
        }
        if self.action != Action::None && d <= self.warmup {
            bail!(
                "--duration {}s ends before the action starts (--warmup {}s): give a longer --duration",
                d.as_secs_f64(),
                self.warmup.as_secs_f64()
            );
        }
        if self.lab.is_none()
            && let Some(g) = self.grace_period
            && !matches!(self.action, Action::DeletePod(_) | Action::DrainNode(_))
        {
            bail!(
                "--grace-period {}s: on a cluster it is the deleted or evicted pod's (delete-pod, drain-node); a rollout or scale uses the pods' own",
                g.as_secs_f64()
            );
        }
        self.record.validate()?;
        self.family.validate(self.output)
    }

    fn place(&self, kube: &super::KubeFlags) -> Place {
        Place::tserver(
            self.lab.as_deref(),
            kube.connection(),
            self.image.as_deref(),
            self.no_deploy,
            self.cleanup,
        )
    }

    fn job(&self) -> DisruptionJob {
        DisruptionJob {
            action: self.action.clone(),
            rate: self.rate,
            long_lived: self.long_lived,
            udp_sessions: self.udp_sessions,
            per_node: self.sources == Sources::PerNode,
            timeout: self.timeout,
            warmup: self.warmup,
            settle: self.settle,
            duration: self.duration(),
            grace_period: self.grace_period,
            drain_delay: self.drain_delay,
            ready_delay: self.ready_delay,
            poll: Duration::from_millis(500),
            save: self.record.to(),
            live: self.output == RunFormat::Table && std::io::stderr().is_terminal(),
        }
    }
}

pub fn run(args: DisruptionArgs, kube: &super::KubeFlags) -> Result<ExitCode> {
    args.validate()?;
    if args.lab.is_some() {
        kube.refuse_off_cluster("--lab")?;
    }
    let place = args.place(kube);
    args.family.measure(
        place,
        args.record.html.as_deref(),
        async |opened, interrupt, family, each| {
            let mut job = args.job();
            job.save = args.family.save_to(&job.save, "disruption", family);
            let finished = run::disruption::run_opened(opened, &job, interrupt).await?;
            let mut record = finished.record;
            // Saved before anything else can fail; then what the run changed is put back.
            let saved = job.save.save(&mut record);
            let restored = finished.restore.run().await;
            report_run(record, &saved, restored, &args, each)
        },
    )
}

/// Prints a saved run and what its restore did, and maps it to the exit code: interrupted 130;
/// could not run as asked (the action failed, or what it changed could not be put back) 2;
/// else the verdict.
fn report_run(
    record: crate::record::DisruptionRun,
    saved: &run::save::Outcome,
    restored: Result<Option<String>>,
    args: &DisruptionArgs,
    html: Option<&std::path::Path>,
) -> Result<(ExitCode, crate::record::AnyRun)> {
    let restore_failed = match &restored {
        Ok(Some(did)) => {
            eprintln!("svclb: restored: {did}");
            false
        }
        Ok(None) => false,
        Err(e) => {
            eprintln!("svclb: restoring what the run changed failed: {e:#}");
            true
        }
    };
    print!("{}", report::disruption(&record, args.output)?);
    let interrupted = record.stopped == Some(crate::storm::Stop::Interrupted);
    let code = if !interrupted && (record.action.error.is_some() || restore_failed) {
        ExitCode::from(2)
    } else {
        super::verdict_code(record.stopped, record.verdict == Verdict::Pass)
    };
    let code = super::save_code(saved, &record, args.output, code);
    let code = super::html_code(
        html,
        || crate::record::AnyRun::Disruption(Box::new(record.clone())),
        code,
    );
    Ok((code, crate::record::AnyRun::Disruption(Box::new(record))))
}
