//! `kubectl svclb matrix`: reachability truth tables of a Service across variants, protocols
//! and sources, against kube-proxy's rules (docs/matrix.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use regex::Regex;

use crate::backend::kube::matrix::MatrixOptions;
use crate::record::MatrixRun;
use crate::report::{self, RunFormat};
use crate::run;
use crate::run::matrix::MatrixJob;
use crate::run::open::Place;
use crate::storm::Proto;

#[derive(Debug, Args)]
pub struct MatrixArgs {
    /// Run on a lab (needs root): the one named, or the only one running; with none or several
    /// running (and with `--lab new`), a default lab made for this run and removed after it.
    /// Its Service is changed for each scenario and restored afterwards. Without it: the
    /// cluster, one Service per scenario, probe pods pinned to every node.
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "NAME")]
    pub lab: Option<String>,
    /// Only the scenarios whose name (`<variant>/<protocol>`, e.g. `etp-local/udp`) matches.
    #[arg(long, value_name = "REGEX")]
    pub test: Option<String>,
    /// Protocols, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "tcp,udp", value_parser = parse_proto)]
    pub protocol: Vec<Proto>,
    /// Rounds at most for a cell with mixed results (cells expected to fail are never retried).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub attempts: u32,
    /// Connections per cell and round.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub conns: u64,
    /// Per connection: connect and first reply; no reply in time is `T`.
    #[arg(long, default_value = "1s", value_parser = super::parse_duration)]
    pub timeout: Duration,
    /// Cells in flight at most, per source.
    #[arg(long, default_value_t = 64)]
    pub parallel: usize,
    /// Also write a JUnit XML file: one test case per scenario × source × target.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    #[command(flatten)]
    pub record: super::SaveArgs,
    #[command(flatten)]
    pub family: super::FamilyArgs,
    /// Output format; json prints exactly the run record.
    #[arg(short = 'o', long, value_enum, default_value_t = RunFormat::Table)]
    pub output: RunFormat,
    /// How long the first scenario's LoadBalancer Service may wait for an IP; none by then: the
    /// Services are NodePort and the LB column is left out (0s: NodePort from the start).
    #[arg(long, default_value = "60s", value_parser = super::parse_duration, conflicts_with = "lab",
          help_heading = "Cluster options")]
    pub lb_wait: Duration,
    /// The cluster's DNS domain (kubelet's clusterDomain): the ExternalName target is the scenario
    /// Service's full name, `<name>.<namespace>.svc.<domain>`.
    #[arg(
        long,
        default_value = "cluster.local",
        value_name = "DOMAIN",
        conflicts_with = "lab",
        help_heading = "Cluster options"
    )]
    pub cluster_domain: String,
    /// Fail when the test servers are not deployed instead of deploying them.
    #[arg(long, conflicts_with = "lab", help_heading = "Cluster options")]
    pub no_deploy: bool,
    /// Image of the test servers when this run deploys them (the probe pods run the deployed tserver's image) [default: ghcr.io/kubectl-svclb/kubectl-svclb:v<version>].
    #[arg(long, value_name = "IMAGE", conflicts_with_all = ["lab", "no_deploy"], help_heading = "Cluster options")]
    pub image: Option<String>,
    /// Delete what the plugin made in the namespace after the run (also when interrupted).
    #[arg(long, conflicts_with = "lab", help_heading = "Cluster options")]
    pub cleanup: bool,
}

fn parse_proto(s: &str) -> Result<Proto, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        _ => Err(format!("{s:?}: give tcp, udp or tcp,udp")),
    }
}

impl MatrixArgs {
    fn job(&self) -> Result<MatrixJob> {
        if self.attempts == 0 || self.conns == 0 || self.parallel == 0 {
            bail!("--attempts, --conns and --parallel must be at least 1");
        }
        if self.timeout.is_zero() {
            bail!("--timeout 0s: give a positive per-connection timeout, e.g. 1s");
        }
        let test =
            self.test.as_deref().map(Regex::new).transpose().map_err(|e| {
                anyhow::anyhow!("--test: not a regular expression: {}", e.to_string().replace('\n', " "))
            })?;
        let mut protos = self.protocol.clone();
        protos.dedup();
        self.record.validate()?;
        self.family.validate(self.output)?;
        let save = self.record.to();
        Ok(MatrixJob {
            test,
            protos,
            conns: self.conns,
            attempts: self.attempts,
            timeout: self.timeout,
            parallel: self.parallel,
            save,
            announce: self.output == RunFormat::Table,
        })
    }

    fn cluster_options(&self) -> Result<MatrixOptions> {
        let d = self.cluster_domain.trim_matches('.');
        if d.is_empty() || !d.split('.').all(crate::cluster::manifests::is_dns_label) {
            bail!(
                "--cluster-domain {:?}: give a DNS domain, e.g. cluster.local",
                self.cluster_domain
            );
        }
        Ok(MatrixOptions {
            lb_wait: self.lb_wait,
            cluster_domain: d.to_string(),
            ..MatrixOptions::default()
        })
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
}

/// Saves the run (before anything else can fail), writes the JUnit file, prints, and maps the
/// comparison to the exit code: 1 on any wrong cell, 2 when the save, the JUnit file or the
/// restore of the Service failed (after the report).
fn finish(
    mut run: MatrixRun,
    restore_error: Option<String>,
    args: &MatrixArgs,
    job: &MatrixJob,
    html: Option<&std::path::Path>,
) -> Result<(ExitCode, crate::record::AnyRun)> {
    let saved = job.save.save(&mut run);
    let mut failed = false;
    if let Some(path) = junit_path(args, run.target.ip_family) {
        let written = report::junit(&run).and_then(|x| Ok(std::fs::write(&path, x)?));
        if let Err(e) = written {
            eprintln!("svclb: cannot write the JUnit file {}: {e:#}", path.display());
            failed = true;
        }
    }
    print!("{}", report::matrix(&run, args.output)?);
    if let Some(e) = restore_error {
        eprintln!("svclb: {e}");
        failed = true;
    }
    let code = super::verdict_code(run.stopped, run.incorrect == 0);
    let code = super::save_code(&saved, &run, args.output, code);
    let code = super::html_code(html, || crate::record::AnyRun::Matrix(Box::new(run.clone())), code);
    let code = if failed { ExitCode::from(2) } else { code };
    Ok((code, crate::record::AnyRun::Matrix(Box::new(run))))
}

/// `--junit FILE`; with both families, one file per family: FILE's name with `-ipv4` or `-ipv6`
/// before its extension.
fn junit_path(args: &MatrixArgs, family: Option<crate::service::IpFamily>) -> Option<std::path::PathBuf> {
    let path = args.junit.as_ref()?;
    let Some(family) = family.filter(|_| args.family.both()) else {
        return Some(path.clone());
    };
    let stem = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{family}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{family}"),
    };
    Some(path.with_file_name(name))
}

pub fn run(args: MatrixArgs, kube: &super::KubeFlags) -> Result<ExitCode> {
    // Bad arguments are refused before anything runs.
    args.job()?;
    let cluster = args.cluster_options()?;
    if args.lab.is_some() {
        kube.refuse_off_cluster("--lab")?;
    }
    let place = args.place(kube);
    args.family.measure(
        place,
        args.record.html.as_deref(),
        async |opened, interrupt, family, each| {
            let mut job = args.job()?;
            job.save = args.family.save_to(&job.save, "matrix", family);
            let (record, restore_error) = run::matrix::run_opened(opened, &job, cluster.clone(), interrupt).await?;
            finish(record, restore_error, &args, &job, each)
        },
    )
}
