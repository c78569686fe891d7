//! `kubectl svclb affinity`: long-lived client sessions; every change of serving pod or reflective
//! address is logged as it happens; a summary, a verdict and a saved `AffinityRun` at the end.
//!
//! The sessions run as an agent at the source (a task here with `--address`, a lab namespace, a
//! tserver pod through exec, or this machine for a cluster's nodePort or LB) that streams its
//! events; the run prints them, watches the backend pool, and judges changes against pool changes
//! (see `run::sessions`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{ArgGroup, Args};

use super::spread::FromKind;
use crate::affinity::{Config, Verdict};
use crate::backend::{From, Path};
use crate::cluster::manifests::{AFFINITY, Options, TSERVER};
use crate::record::AnyRun;
use crate::report::live::Live;
use crate::report::{self, RunFormat};
use crate::run;
use crate::run::open::{ClusterPlace, Place};
use crate::run::sessions::SessionsJob;
use crate::storm::Proto;

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
    #[command(flatten)]
    pub family: super::FamilyArgs,
    /// Output format of the summary; json prints exactly the run record (live lines go to stderr).
    #[arg(short = 'o', long, value_enum, default_value_t = RunFormat::Table)]
    pub output: RunFormat,
    #[command(flatten)]
    pub cluster: super::ClusterRunArgs,
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
        self.family.validate(self.output)?;
        if self.plain_udp && !self.udp {
            bail!("--plain-udp chooses the UDP socket path: use it with --udp");
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

    /// Where the run goes: an address, a running lab, or the cluster's affinity server (and, with
    /// `--from pod`, the tserver whose pods run the agent), deployed when missing.
    fn place(&self, kube: &super::KubeFlags) -> Place {
        if let Some(address) = &self.address {
            return Place::Address {
                address: address.clone(),
                family_of: None,
            };
        }
        if let Some(name) = &self.lab {
            return Place::Lab {
                name: name.clone(),
                build_if_none: false,
            };
        }
        Place::Cluster(Box::new(ClusterPlace {
            connection: kube.connection(),
            service: AFFINITY,
            clients: TSERVER,
            apps: if self.from == FromKind::Pod {
                vec![AFFINITY, TSERVER]
            } else {
                vec![AFFINITY]
            },
            options: Options {
                image: self.cluster.image(),
                affinity_server: true,
                ..Options::default()
            },
            no_deploy: self.cluster.no_deploy,
            cleanup: self.cluster.cleanup,
        }))
    }

    fn job(&self) -> SessionsJob {
        SessionsJob {
            from: self.from_(),
            path: self.path(),
            config: Config {
                // Set from the plan.
                address: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                proto: self.proto(),
                sessions: self.sessions,
                interval: self.interval,
                timeout: self.timeout,
                new_connection_per_message: self.new_connection_per_message,
                plain_udp: self.plain_udp,
                prefix: String::new(),
            },
            duration: self.duration,
            stats_interval: self.stats_interval,
            save: self.record.to(),
            announce: self.output == RunFormat::Table,
        }
    }
}

pub fn run(args: AffinityArgs, kube: &super::KubeFlags) -> Result<ExitCode> {
    args.validate()?;
    match (&args.address, &args.lab) {
        (Some(_), _) => kube.refuse_off_cluster("--address")?,
        (None, Some(_)) => kube.refuse_off_cluster("--lab")?,
        (None, None) => {}
    }
    let place = args.place(kube);
    let live = Live::new(args.output);
    args.family.measure(
        place,
        args.record.html.as_deref(),
        async |opened, interrupt, family, each| {
            let mut job = args.job();
            job.save = args.family.save_to(&job.save, "affinity", family);
            let mut record = run::sessions::run(opened, &job, &live, interrupt).await?;
            let saved = job.save.save(&mut record);
            if args.output == RunFormat::Table {
                println!();
            }
            print!("{}", report::affinity(&record, args.output)?);
            let code = super::verdict_code(record.stopped, record.verdict == Verdict::Holds);
            let code = super::save_code(&saved, &record, args.output, code);
            let code = super::html_code(each, || AnyRun::Affinity(Box::new(record.clone())), code);
            Ok((code, AnyRun::Affinity(Box::new(record))))
        },
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cluster::deploy::ensure_servers;
    use crate::cluster::fake::{self, FakeApi, NS, Pods};
    use crate::cluster::manifests;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: AffinityArgs,
    }

    fn affinity_args(args: &[&str]) -> AffinityArgs {
        let mut argv = vec!["affinity", "--no-save", "-o", "json"];
        argv.extend(args);
        Cmd::try_parse_from(argv).unwrap().args
    }

    /// What a cluster run of `args` deploys before it starts.
    async fn prepare_cluster(args: &AffinityArgs, c: &crate::cluster::Cluster) -> Result<()> {
        let Place::Cluster(p) = args.place(&super::super::KubeFlags::default()) else {
            panic!("not a cluster run")
        };
        let o = Options {
            namespace: c.namespace.clone(),
            ..p.options
        };
        ensure_servers(c, &p.apps, &o, p.no_deploy).await
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
