//! `kubectl svclb zones`: does traffic stay in its zone (or node), why not, and what the
//! cross-zone part costs (docs/zones.md).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;

use crate::record::{Price, ZonesRun};
use crate::report::{self, RunFormat};
use crate::run;
use crate::run::open::Place;
use crate::run::zones::ZonesJob;
use crate::stats::Verdict;
use crate::storm::{Proto, StormConfig};
use crate::zones::{CLOUDS, cloud_price, custom_price};

#[derive(Debug, Args)]
pub struct ZonesArgs {
    /// Run on a lab (needs root): the one named, or the only one running; with none or several
    /// running (and with `--lab new`), a default lab made for this run and removed after it.
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "NAME")]
    pub lab: Option<String>,
    /// Connections from each source.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub conns_per_source: u64,
    /// A client in every zone (one node of each), or on every node (adds the same-node share).
    #[arg(long, value_enum, default_value_t = SourcesKind::PerZone)]
    pub sources: SourcesKind,
    /// Each connection fetches SIZE bytes over HTTP (`/bytes?n=`): the matrix in bytes and the
    /// cross-zone cost. `65536`, `64KiB`, `1MB`, `1MiB`.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub bytes: Option<u64>,
    /// Price of cross-zone bytes: a cloud's (aws, gcp, azure) or USD per GB (10^9 bytes),
    /// charged to the sender [default: all three clouds].
    #[arg(long, value_name = "aws|gcp|azure|USD", value_parser = parse_price, requires = "bytes")]
    pub price: Option<Price>,
    /// Connections per second to project the cross-zone cost to a month (730 hours) at.
    #[arg(long, value_name = "CONNS/S", requires = "bytes", allow_negative_numbers = true)]
    pub rate: Option<f64>,
    /// Repeat every INTERVAL and print one line per cycle (local share per zone, cross-zone
    /// bytes), e.g. while a rollout or a hint change goes on.
    #[arg(long, value_name = "INTERVAL", value_parser = super::parse_duration)]
    pub watch: Option<Duration>,
    /// With --watch: how many cycles [default: 20].
    #[arg(long, value_name = "N", requires = "watch")]
    pub cycles: Option<u32>,
    /// Connections in flight at most, per source.
    #[arg(long, default_value_t = 100)]
    pub parallel: usize,
    /// Per connection: connect and reply (with --bytes: the whole transfer).
    #[arg(long, default_value = "2s", value_parser = super::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub record: super::SaveArgs,
    #[command(flatten)]
    pub family: super::FamilyArgs,
    /// Output format; json prints exactly the run record.
    #[arg(short = 'o', long, value_enum, default_value_t = RunFormat::Table)]
    pub output: RunFormat,
    /// Fail when the test servers are not deployed instead of deploying them.
    #[arg(long, conflicts_with = "lab", help_heading = "Cluster options")]
    pub no_deploy: bool,
    /// Image of the test servers when this run deploys them (the run's client pods run the deployed tserver's image) [default: ghcr.io/kubectl-svclb/kubectl-svclb:v<version>].
    #[arg(long, value_name = "IMAGE", conflicts_with_all = ["lab", "no_deploy"], help_heading = "Cluster options")]
    pub image: Option<String>,
    /// Delete what the plugin made in the namespace after the run (also when interrupted).
    #[arg(long, conflicts_with = "lab", help_heading = "Cluster options")]
    pub cleanup: bool,
}

/// `--sources`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourcesKind {
    PerZone,
    PerNode,
}

/// Largest `--bytes`: what the server sends at most.
const MAX_BYTES: u64 = 16 << 30;

/// `65536`, `64KiB`, `64kB`, `1MiB`, `1MB`, `1GiB`, `1GB`.
fn parse_size(s: &str) -> Result<u64, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?}: use e.g. 65536, 64KiB, 1MB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "kB" | "KB" => 1_000,
        "Ki" | "KiB" => 1 << 10,
        "M" | "MB" => 1_000_000,
        "Mi" | "MiB" => 1 << 20,
        "G" | "GB" => 1_000_000_000,
        "Gi" | "GiB" => 1 << 30,
        u => {
            return Err(format!(
                "bad size unit {u:?} in {s:?}: use B, kB, KiB, MB, MiB, GB or GiB"
            ));
        }
    };
    let v = n
        .checked_mul(mult)
        .filter(|v| (1..=MAX_BYTES).contains(v))
        .ok_or_else(|| format!("size {s:?}: give 1 byte to 16GiB"))?;
    Ok(v)
}

/// `aws`, `gcp`, `azure` or a number of USD per GB.
fn parse_price(s: &str) -> Result<Price, String> {
    if let Some(p) = cloud_price(&s.to_ascii_lowercase()) {
        return Ok(p);
    }
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(custom_price(v)),
        _ => Err(format!("{s:?}: give aws, gcp, azure or USD per GB (e.g. 0.02)")),
    }
}

impl ZonesArgs {
    fn validate(&self) -> Result<()> {
        if self.conns_per_source == 0 {
            bail!("--conns-per-source 0: give at least 1 connection");
        }
        if self.parallel == 0 {
            bail!("--parallel 0: give at least 1 connection in flight");
        }
        if self.timeout.is_zero() {
            bail!("--timeout 0s: give a positive per-connection timeout, e.g. 2s");
        }
        if let Some(r) = self.rate
            && !(r > 0.0 && r.is_finite())
        {
            bail!("--rate {r}: give a positive number of connections per second");
        }
        if self.watch.is_some_and(|w| w.is_zero()) {
            bail!("--watch 0s: give a positive interval, e.g. 2s");
        }
        if self.cycles == Some(0) {
            bail!("--cycles 0: give at least 1 cycle");
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

    fn job(&self) -> ZonesJob {
        ZonesJob {
            per_zone: self.sources == SourcesKind::PerZone,
            storm: StormConfig {
                // Set per source from the plan.
                target: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                proto: Proto::Tcp,
                conns: self.conns_per_source,
                parallel: self.parallel,
                rate: None,
                timeout: self.timeout,
                deadline: None,
                srccidr: None,
                graceful_close: false,
                session: String::new(),
                fetch_bytes: self.bytes,
                src_ports: None,
            },
            prices: match &self.price {
                Some(p) => vec![p.clone()],
                None => CLOUDS.iter().filter_map(|c| cloud_price(c)).collect(),
            },
            rate: self.rate,
            interval: self.watch,
            cycles: if self.watch.is_some() {
                self.cycles.unwrap_or(20)
            } else {
                1
            },
            save: self.record.to(),
            announce: self.output == RunFormat::Table,
        }
    }
}

/// Saves the run (before anything else can fail), prints it, and maps the verdict to the exit
/// code (2 when the save failed, after the report).
fn finish(
    mut run: ZonesRun,
    save: &run::SaveTo,
    output: RunFormat,
    html: Option<&std::path::Path>,
) -> Result<(ExitCode, crate::record::AnyRun)> {
    let saved = save.save(&mut run);
    print!("{}", report::zones(&run, output)?);
    let code = super::verdict_code(run.stopped, run.verdict == Verdict::Pass);
    let code = super::save_code(&saved, &run, output, code);
    let code = super::html_code(html, || crate::record::AnyRun::Zones(Box::new(run.clone())), code);
    Ok((code, crate::record::AnyRun::Zones(Box::new(run))))
}

pub fn run(args: ZonesArgs, kube: &super::KubeFlags) -> Result<ExitCode> {
    args.validate()?;
    if args.lab.is_some() {
        kube.refuse_off_cluster("--lab")?;
    }
    let place = args.place(kube);
    let live = args.output == RunFormat::Table;
    args.family.measure(
        place,
        args.record.html.as_deref(),
        async |opened, interrupt, family, each| {
            let mut job = args.job();
            job.save = args.family.save_to(&job.save, "zones", family);
            let mut print = |c: &crate::record::ZonesCycle| {
                if live {
                    print!("{}", report::zones_cycle_line(c, job.cycles));
                } else {
                    eprint!("{}", report::zones_cycle_line(c, job.cycles));
                }
            };
            let record = run::zones::run_opened(opened, &job, interrupt, &mut print).await?;
            finish(record, &job.save, args.output, each)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_prices_parse_or_say_what_to_give() {
        assert_eq!(parse_size("65536"), Ok(65_536));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("64kB"), Ok(64_000));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("17GiB").unwrap_err().contains("16GiB"));
        assert!(parse_size("5 parsecs").unwrap_err().contains("unit"));
        assert_eq!(parse_price("GCP").unwrap().unit, "GiB");
        assert_eq!(parse_price("0.02").unwrap().usd_per_unit, 0.02);
        assert!(parse_price("-1").unwrap_err().contains("aws, gcp, azure"));
    }
}
