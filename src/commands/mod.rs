//! One file per subcommand, each thin: parse → engine → report.

pub mod affinity;
pub mod agent;
pub mod cluster;
pub mod compare;
pub mod completion;
pub mod disruption;
pub mod lab;
pub mod matrix;
pub mod report;
pub mod serve;
pub mod service_args;
pub mod spread;
pub mod zones;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::record::AnyRun;
use crate::service::IpFamily;

/// kubectl's flags, on the commands that talk to a cluster (after the verb, as kubectl passes
/// them: it refuses flags before a plugin's name). Commands that never contact a cluster (`lab`,
/// `serve`, `compare`, `completion`) do not take them.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Cluster options")]
pub struct KubeFlags {
    /// Path to the kubeconfig file to use.
    #[arg(long, env = "KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The name of the kubeconfig context to use.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace scope for this request.
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Username to impersonate for the operation.
    #[arg(long = "as", value_name = "USER")]
    pub as_user: Option<String>,
    /// Group to impersonate for the operation; repeat for several groups (needs --as).
    #[arg(long = "as-group", value_name = "GROUP")]
    pub as_group: Vec<String>,
}

impl KubeFlags {
    /// A run on `--address` or `--lab` contacts no cluster: a kubectl flag given with it would do
    /// nothing, so it is refused in one line (`KUBECONFIG` from the environment is no flag given).
    pub fn refuse_off_cluster(&self, place: &str) -> anyhow::Result<()> {
        let mut given = Vec::new();
        if self
            .kubeconfig
            .as_ref()
            .is_some_and(|k| std::env::var_os("KUBECONFIG").as_deref() != Some(k.as_os_str()))
        {
            given.push("--kubeconfig");
        }
        if self.context.is_some() {
            given.push("--context");
        }
        if self.namespace.is_some() {
            given.push("--namespace");
        }
        if self.as_user.is_some() {
            given.push("--as");
        }
        if !self.as_group.is_empty() {
            given.push("--as-group");
        }
        if !given.is_empty() {
            anyhow::bail!(
                "{} pick(s) a cluster, and {place} contacts none: drop {}",
                given.join(", "),
                if given.len() == 1 { "it" } else { "them" }
            );
        }
        Ok(())
    }

    /// The connection these flags describe.
    pub fn connection(&self) -> crate::cluster::Connection {
        crate::cluster::Connection {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            namespace: self.namespace.clone(),
            as_user: self.as_user.clone(),
            as_group: self.as_group.clone(),
        }
    }
}

/// How a measuring command names and saves its run record (`--tag`, `--save`, `--no-save`).
#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Name of the run (default: <command>-<date>-<time>).
    #[arg(long)]
    pub tag: Option<String>,
    /// Directory for the run record.
    #[arg(long, default_value = "saves", value_name = "DIR")]
    pub save: PathBuf,
    /// Do not save the run record.
    #[arg(long)]
    pub no_save: bool,
    /// Also write the run's HTML page (as `kubectl svclb report` makes it) to FILE, once the record
    /// is saved.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

impl SaveArgs {
    /// Checks before the run that the record can be saved and the page written where asked.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.to().validate()?;
        if let Some(path) = &self.html {
            if path.as_os_str() == "-" {
                anyhow::bail!("--html -: give a file (the run's report goes to stdout)");
            }
            crate::report::html::check_path(path, "--html")?;
        }
        Ok(())
    }

    /// Where the run's record goes.
    pub fn to(&self) -> crate::run::SaveTo {
        crate::run::SaveTo {
            tag: self.tag.clone(),
            dir: self.save.clone(),
            no_save: self.no_save,
        }
    }
}

/// `--ip-family`: which of the target's families the run goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FamilyChoice {
    Ipv4,
    Ipv6,
    /// The same run against each family, one after the other, with what differs flagged.
    Both,
}

#[derive(Debug, Args, Default)]
pub struct FamilyArgs {
    /// The IP family of the Service addresses the run goes to (its ClusterIP, LB IP and node
    /// addresses of that family); `both` makes the same run against each family, saves both
    /// (tagged TAG-ipv4, TAG-ipv6) and flags what differs [default: the target's primary family]
    #[arg(long, value_enum, value_name = "FAMILY")]
    pub ip_family: Option<FamilyChoice>,
}

impl FamilyArgs {
    /// `both` prints two runs and their differences: refused with a format that is one record.
    pub fn validate(&self, output: crate::report::RunFormat) -> anyhow::Result<()> {
        use crate::report::RunFormat;
        if self.both() && matches!(output, RunFormat::Json | RunFormat::Yaml) {
            anyhow::bail!(
                "--ip-family both prints two runs side by side: use -o table or markdown, or run each family with -o {}",
                if output == RunFormat::Json { "json" } else { "yaml" }
            );
        }
        Ok(())
    }

    pub fn both(&self) -> bool {
        self.ip_family == Some(FamilyChoice::Both)
    }

    /// The runs to make: one per family (`None`: the target's primary family, untouched).
    pub fn families(&self) -> Vec<Option<IpFamily>> {
        match self.ip_family {
            None => vec![None],
            Some(FamilyChoice::Ipv4) => vec![Some(IpFamily::Ipv4)],
            Some(FamilyChoice::Ipv6) => vec![Some(IpFamily::Ipv6)],
            Some(FamilyChoice::Both) => vec![Some(IpFamily::Ipv4), Some(IpFamily::Ipv6)],
        }
    }

    /// Where a family's run is saved: `save`, tagged `TAG-FAMILY` when both families run.
    pub fn save_to(&self, save: &crate::run::SaveTo, command: &str, family: Option<IpFamily>) -> crate::run::SaveTo {
        match family.filter(|_| self.both()) {
            Some(f) => crate::run::SaveTo {
                tag: Some(crate::families::tag(&save.tag(command, jiff::Timestamp::now()), f)),
                ..save.clone()
            },
            None => save.clone(),
        }
    }

    /// A measuring command's runs, one per family asked: [`crate::run::families::measure`].
    pub fn measure(
        &self,
        place: crate::run::open::Place,
        html: Option<&std::path::Path>,
        one: impl AsyncFnMut(
            &mut crate::run::open::Opened,
            &crate::run::Interrupt,
            Option<IpFamily>,
            Option<&std::path::Path>,
        ) -> anyhow::Result<(ExitCode, AnyRun)>,
    ) -> anyhow::Result<ExitCode> {
        crate::run::families::measure(&self.families(), place, html, one)
    }
}

/// The exit code of a run that was judged: 0 passed, 1 failed, 130 interrupted (whatever the
/// partial record's verdict), as for every measuring command.
pub fn verdict_code(stopped: Option<crate::storm::Stop>, passed: bool) -> std::process::ExitCode {
    match (stopped, passed) {
        (Some(crate::storm::Stop::Interrupted), _) => std::process::ExitCode::from(130),
        (_, true) => std::process::ExitCode::SUCCESS,
        (_, false) => std::process::ExitCode::from(1),
    }
}

/// The exit code after a run was reported: `code`, or 2 when its save failed; when even the
/// fallback failed and the report was not the record itself, the record goes to stdout too, so
/// the measurement is not lost.
pub fn save_code<R: serde::Serialize>(
    saved: &crate::run::save::Outcome,
    record: &R,
    output: crate::report::RunFormat,
    code: std::process::ExitCode,
) -> std::process::ExitCode {
    match saved {
        crate::run::save::Outcome::Failed { fallback: None, .. } => {
            if output != crate::report::RunFormat::Json
                && let Ok(json) = serde_json::to_string_pretty(record)
            {
                println!("{json}");
            }
            std::process::ExitCode::from(2)
        }
        crate::run::save::Outcome::Failed { .. } => std::process::ExitCode::from(2),
        _ => code,
    }
}

/// Writes the run's page for `--html` (after its record was saved); a page that cannot be
/// written is said on stderr and makes the exit code 2. The record is not affected either way.
pub fn html_code(
    path: Option<&std::path::Path>,
    run: impl FnOnce() -> crate::record::AnyRun,
    code: std::process::ExitCode,
) -> std::process::ExitCode {
    match path {
        Some(path) => crate::run::families::page_code(path, &[run()], code),
        None => code,
    }
}

/// Parses durations as `2s`, `500ms`, `1m30s`, `1.5s`, `10m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|_| format!("bad duration {s:?}: use e.g. 2s, 500ms, 1m30s"))?;
    Duration::try_from(d).map_err(|_| format!("bad duration {s:?}: must not be negative"))
}

/// How a measuring command treats a cluster, its default target (`--no-deploy`, `--image`,
/// `--cleanup`); meaningless with `--address` or `--lab`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Cluster options")]
pub struct ClusterRunArgs {
    /// Fail when the test servers are not deployed instead of deploying them.
    #[arg(long, conflicts_with_all = ["address", "lab"])]
    pub no_deploy: bool,
    /// Image of the test servers when this run deploys them [default: ghcr.io/kubectl-svclb/kubectl-svclb:v<version>].
    #[arg(long, value_name = "IMAGE", conflicts_with_all = ["address", "lab", "no_deploy"])]
    pub image: Option<String>,
    /// Delete what the plugin made in the namespace after the run (also when interrupted).
    #[arg(long, conflicts_with_all = ["address", "lab"])]
    pub cleanup: bool,
}

impl ClusterRunArgs {
    pub fn image(&self) -> String {
        self.image
            .clone()
            .unwrap_or_else(|| crate::cluster::manifests::DEFAULT_IMAGE.into())
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("soon").is_err());
    }
}
