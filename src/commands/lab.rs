//! `kubectl svclb lab ...`: an emulated cluster in network namespaces (see docs/lab.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};

use super::service_args::{ServiceArgs, ServiceChanges};
use crate::lab::{self, Lab, LabChanges, LabConfig, LabFamilies, LabStatus, LabTiming, ProxyMode, SyncDelay};
use crate::report;

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build a lab: node network, nodes with zones, pods running `serve`, an external client,
    /// and per node the Service rules kube-proxy would write.
    Up(UpArgs),
    /// Show nodes, pods (and whether their servers live), and the Service addresses.
    Status(StatusArgs),
    /// Print a node's Service rules as the kernel has them (nft / iptables-save).
    Rules(RulesArgs),
    /// Run a command inside a lab namespace: `client`, a node or a pod. Its exit code is passed through.
    Exec(ExecArgs),
    /// Delete a pod as Kubernetes does: terminating while its server drains, then not serving,
    /// then removed; prints when each step happened and when every node applied it.
    DeletePod(DeletePodArgs),
    /// Add pods (in the rules once ready) or delete the newest ones (as delete-pod).
    Scale(ScaleArgs),
    /// Change Service options, endpoint hints or the nodes' sync delay on a running lab.
    Set(SetArgs),
    /// Remove a lab (works from the namespace prefix even if its state is lost).
    Down(DownArgs),
    /// List the labs on this machine.
    List,
    /// A lab's own processes (started by `lab up`): kube-proxy's health servers of a node, or the
    /// health-checked ECMP load balancer.
    #[command(hide = true, subcommand)]
    Agent(AgentCommand),
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// kube-proxy's health servers of one node (`:10256/healthz`, the healthCheckNodePort).
    Node {
        #[arg(long)]
        name: String,
        #[arg(long)]
        node: String,
    },
    /// The ECMP load balancer's health checks, routing the LoadBalancer IP over healthy nodes.
    Lb {
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// Lab name (1-16 of [a-z0-9-]) [default: the only lab running, else `lab`].
    #[arg(long, env = "SVCLB_LAB")]
    pub name: Option<String>,
}

impl NameArg {
    /// The lab meant: the one named, else the only one running, else `lab`.
    fn get(&self) -> String {
        self.name.clone().unwrap_or_else(|| match Lab::saved().as_slice() {
            [one] => one.clone(),
            _ => DEFAULT_NAME.to_string(),
        })
    }

    /// Opens the lab meant.
    fn open(&self) -> Result<Lab> {
        Lab::open(&self.get())
    }
}

/// The name of a lab when none is given and none (or several) run.
const DEFAULT_NAME: &str = "lab";

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatusFormat {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub name: NameArg,
    #[arg(long, default_value_t = 10)]
    pub nodes: usize,
    #[arg(long, default_value_t = 100)]
    pub pods: usize,
    #[arg(long, default_value_t = 3)]
    pub zones: usize,
    #[arg(long, value_enum, default_value_t = ProxyMode::Nftables)]
    pub proxy_mode: ProxyMode,
    /// The Service's IP families: IPv4, IPv6 (ULA addresses), or both.
    #[arg(long, value_enum, default_value_t = LabFamilies::Ipv4)]
    pub ip_family: LabFamilies,
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Route the LoadBalancer IP from the client over all nodes (ECMP, L4 hash).
    #[arg(long)]
    pub ecmp: bool,
    /// Program the pods run as `PROGRAM serve ...` (default: this executable).
    #[arg(long, value_name = "PROGRAM")]
    pub server: Option<PathBuf>,
    /// Each node's kube-proxy applies every change after its own delay, picked in MIN..MAX
    /// (e.g. `0..2s`, `500ms`): nodes disagree for a moment, as on a real cluster.
    #[arg(long, default_value = "0", value_name = "MIN..MAX", value_parser = sync_delay)]
    pub sync_delay: SyncDelay,
    /// A pod enters the rules this long after its server answers (a slow readiness probe).
    #[arg(long, default_value = "0", value_name = "DURATION", value_parser = duration)]
    pub ready_delay: Duration,
    /// Print the built lab's status in this format instead of the topology summary.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<StatusFormat>,
}

/// How a deleted pod ends.
#[derive(Debug, Args)]
pub struct EndArgs {
    /// From the deletion until the server is killed if it has not exited (seconds, or a
    /// duration); 0 kills it at once.
    #[arg(long, default_value = "5", value_name = "SECONDS", value_parser = duration)]
    pub grace_period: Duration,
    /// The preStop sleep: how long the terminating server keeps accepting new connections
    /// before it closes its listeners and finishes the open ones.
    #[arg(long, default_value = "0", value_name = "DURATION", value_parser = duration)]
    pub drain_delay: Duration,
}

/// `5` (seconds, as kubectl's --grace-period) or a duration (`500ms`, `2s`).
fn duration(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => super::parse_duration(s),
    }
}

/// `MIN..MAX` or one delay for every node; a bare number takes the other side's unit
/// (`0..2s`), or is seconds.
fn sync_delay(s: &str) -> Result<SyncDelay, String> {
    let (min, max) = s.split_once("..").unwrap_or((s, s));
    let unit = |n: &str, other: &str| {
        let suffix = other.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !suffix.is_empty() {
            format!("{n}{suffix}")
        } else {
            n.to_string()
        }
    };
    let (min, max) = (duration(&unit(min, max))?, duration(&unit(max, min))?);
    SyncDelay::new(min, max).map_err(|e| e.to_string())
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub name: NameArg,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = StatusFormat::Table)]
    pub output: StatusFormat,
}

#[derive(Debug, Args)]
pub struct RulesArgs {
    /// Node (default: the first node).
    pub node: Option<String>,
    #[command(flatten)]
    pub name: NameArg,
    /// Print what the lab generates for the node (the `nft -f` / `iptables-restore` input)
    /// instead of the kernel's listing.
    #[arg(long)]
    pub generated: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// `client`, `net`, a node name or a pod name.
    pub who: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, num_args = 1..)]
    pub cmd: Vec<String>,
    #[command(flatten)]
    pub name: NameArg,
}

#[derive(Debug, Args)]
pub struct DeletePodArgs {
    pub pod: String,
    #[command(flatten)]
    pub name: NameArg,
    #[command(flatten)]
    pub end: EndArgs,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub name: NameArg,
    /// Number of pods wanted.
    #[arg(long, required_unless_present = "count")]
    pub pods: Option<usize>,
    /// Number of pods wanted (`lab scale 50` as `lab scale --pods 50`).
    #[arg(conflicts_with = "pods", value_name = "PODS")]
    pub count: Option<usize>,
    /// New pods enter the rules this long after their server answers.
    #[arg(long, default_value = "0", value_name = "DURATION", value_parser = duration)]
    pub ready_delay: Duration,
    #[command(flatten)]
    pub end: EndArgs,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    #[command(flatten)]
    pub name: NameArg,
    #[command(flatten)]
    pub service: ServiceChanges,
    /// Remove this pod's endpoint hints (repeatable); kube-proxy then stops filtering by them.
    #[arg(long, value_name = "POD")]
    pub drop_hint: Vec<String>,
    /// Give every endpoint its hints back.
    #[arg(long)]
    pub restore_hints: bool,
    /// Each node's kube-proxy applies later changes after its own delay in MIN..MAX.
    #[arg(long, value_name = "MIN..MAX", value_parser = sync_delay)]
    pub sync_delay: Option<SyncDelay>,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Lab name (1-16 of [a-z0-9-]).
    #[arg(long, env = "SVCLB_LAB", conflicts_with = "all")]
    pub name: Option<String>,
    /// Remove every lab.
    #[arg(long)]
    pub all: bool,
}

pub fn run(cmd: LabCommand) -> Result<ExitCode> {
    match cmd {
        LabCommand::Up(a) => up(a),
        LabCommand::Status(a) => {
            let lab = a.name.open()?;
            print_status(&lab.status(), a.output)?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Rules(a) => {
            let lab = a.name.open()?;
            let node = a.node.unwrap_or_else(|| lab.nodes()[0].name.clone());
            if !a.generated {
                lab::require_host()?;
            }
            let text = if a.generated {
                lab.generated_rules(&node)?
            } else {
                lab.rules(&node)?
            };
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Exec(a) => {
            lab::require_host()?;
            let lab = a.name.open()?;
            let status = lab
                .command(&a.who, a.cmd[0].as_ref())?
                .args(&a.cmd[1..])
                .status()
                .with_context(|| format!("cannot run {}", a.cmd[0]))?;
            Ok(exit_code(status))
        }
        LabCommand::DeletePod(a) => {
            let mut lab = a.name.open()?;
            let timing = LabTiming {
                grace_period: a.end.grace_period,
                drain_delay: a.end.drain_delay,
                ..LabTiming::default()
            };
            let tl = lab.delete_pod_with(&a.pod, &timing)?;
            print!("{}", report::lab::timeline(&tl));
            println!("pod {} deleted; {} pods left", a.pod, lab.pods().len());
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Scale(a) => {
            let mut lab = a.name.open()?;
            let pods = a.pods.or(a.count).expect("clap requires --pods or a count");
            let timing = LabTiming {
                grace_period: a.end.grace_period,
                drain_delay: a.end.drain_delay,
                ready_delay: a.ready_delay,
            };
            lab::cancel_on_signals()?;
            let tl = match lab.scale_with(pods, &timing) {
                Err(_) if lab::cancelled() => {
                    eprintln!(
                        "svclb: interrupted: lab {name} is incomplete (`kubectl svclb lab down --name {name}`)",
                        name = lab.name()
                    );
                    return Ok(ExitCode::from(130));
                }
                other => other?,
            };
            print!("{}", report::lab::timeline(&tl));
            println!("lab {} scaled to {} pods", lab.name(), lab.pods().len());
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Set(a) => set(a),
        LabCommand::Down(a) => {
            let names = match (a.name, a.all) {
                (_, true) => Lab::list()?,
                (Some(n), false) => vec![n],
                (None, false) => bail!("give --name NAME or --all"),
            };
            for n in &names {
                let t = Instant::now();
                lab::down_by_name(n)?;
                println!("lab {n} removed in {:.2}s", t.elapsed().as_secs_f64());
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Agent(a) => {
            let rt = crate::run::runtime(1)?;
            match a {
                AgentCommand::Node { name, node } => rt.block_on(lab::health::node_agent(name, node))?,
                AgentCommand::Lb { name } => rt.block_on(lab::health::lb_agent(name))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::List => {
            for n in Lab::list()? {
                match Lab::open(&n) {
                    Ok(lab) => match (lab.orphaned_by(), lab.incomplete()) {
                        (Some(pid), _) => println!(
                            "{n}  (built for a run that is gone, pid {pid}: the next run or `lab down` removes it)"
                        ),
                        (None, Some(what)) => println!("{n}  (incomplete: `{what}` did not finish)"),
                        (None, None) => println!("{n}"),
                    },
                    Err(_) => {
                        println!("{n}  (no readable state, namespaces left: `kubectl svclb lab down --name {n}`)")
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(c.clamp(0, 255) as u8),
        (None, Some(sig)) => ExitCode::from((128 + sig).clamp(0, 255) as u8),
        (None, None) => ExitCode::FAILURE,
    }
}

fn up(a: UpArgs) -> Result<ExitCode> {
    let cfg = LabConfig {
        name: a.name.name.unwrap_or_else(|| DEFAULT_NAME.to_string()),
        nodes: a.nodes,
        pods: a.pods,
        zones: a.zones,
        proxy_mode: a.proxy_mode,
        families: a.ip_family,
        ecmp: a.ecmp,
        options: a.service.options()?,
        server: a.server,
        sync_delay: a.sync_delay,
        ready_delay: a.ready_delay,
        ephemeral: false,
    };
    let t = Instant::now();
    lab::cancel_on_signals()?;
    let lab = match Lab::up(&cfg) {
        // `Lab::up` removed what it had built.
        Err(_) if lab::cancelled() => {
            eprintln!("svclb: interrupted: lab {} was removed", cfg.name);
            return Ok(ExitCode::from(130));
        }
        other => other?,
    };
    let took = t.elapsed().as_secs_f64();
    let st = lab.status();
    match a.output {
        Some(f) => print_status(&st, f)?,
        None => {
            println!(
                "lab {}: {} nodes, {} pods, {} zones, proxy mode {} (up in {took:.2}s)",
                st.name,
                st.nodes.len(),
                st.pods.len(),
                cfg.zones,
                report::lab::proxy_mode(st.proxy_mode)
            );
            println!("rules as kube-proxy {}", st.kube_proxy);
            println!("{}", report::lab::nodes(&st));
            print!("{}", report::lab::service(&st));
            let lb = std::net::SocketAddr::new(st.service.lb_ip_of(st.service.ip_families[0]), st.service.port);
            println!(
                "try: kubectl svclb lab exec --name {} client -- kubectl-svclb spread --address {lb} --no-save",
                st.name
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn set(a: SetArgs) -> Result<ExitCode> {
    let ch = LabChanges {
        affinity: a.service.session_affinity,
        affinity_timeout: a.service.affinity_timeout,
        external_traffic_policy: a.service.external_traffic_policy,
        internal_traffic_policy: a.service.internal_traffic_policy,
        traffic_distribution: a.service.traffic_distribution.map(|t| t.0),
        source_ranges: a.service.lb_source_ranges.map(|r| r.0),
        drop_hints: a.drop_hint,
        restore_hints: a.restore_hints,
        sync_delay: a.sync_delay,
        conditions: Vec::new(),
    };
    let mut lab = a.name.open()?;
    let tl = lab.set(&ch)?;
    print!("{}", report::lab::service(&lab.status()));
    print!("{}", report::lab::timeline(&tl));
    Ok(ExitCode::SUCCESS)
}

fn print_status(st: &LabStatus, f: StatusFormat) -> Result<()> {
    match f {
        StatusFormat::Json => println!("{}", serde_json::to_string_pretty(st)?),
        StatusFormat::Yaml => print!("{}", serde_saphyr::to_string(st)?),
        StatusFormat::Table => print!("{}", report::lab::status(st)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_delays_parse_as_a_range_or_one_delay() {
        let ms = |a: u64, b: u64| SyncDelay::new(Duration::from_millis(a), Duration::from_millis(b)).unwrap();
        assert_eq!(sync_delay("0"), Ok(ms(0, 0)));
        assert_eq!(sync_delay("0..2s"), Ok(ms(0, 2000)));
        assert_eq!(sync_delay("1..2s"), Ok(ms(1000, 2000)));
        assert_eq!(sync_delay("100..500ms"), Ok(ms(100, 500)));
        assert_eq!(sync_delay("500ms..1s"), Ok(ms(500, 1000)));
        assert_eq!(sync_delay("750ms"), Ok(ms(750, 750)));
        assert!(sync_delay("2s..1s").unwrap_err().contains("MIN must not be above MAX"));
        assert!(sync_delay("0..2m").unwrap_err().contains("at most 60s"));
        assert!(sync_delay("soon").is_err());
    }

    #[test]
    fn grace_periods_are_seconds_or_durations() {
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        assert_eq!(duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert!(duration("-1").is_err());
    }
}
