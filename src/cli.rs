//! Command-line definitions (clap derive). Usage reads as a kubectl plugin: `kubectl svclb ...`.

use clap::{Parser, Subcommand};

use crate::commands;

#[derive(Debug, Parser)]
#[command(
    name = "kubectl-svclb",
    bin_name = "kubectl svclb",
    version,
    about = "How do your Services really balance load? Connection storms, spread verdicts, affinity checks.",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the test server (what runs in tserver pods and in lab pods).
    Serve(commands::serve::ServeArgs),
    /// Storm a Service with connections and judge how they spread over backends.
    Spread {
        #[command(flatten)]
        args: commands::spread::SpreadArgs,
        #[command(flatten)]
        kube: commands::KubeFlags,
    },
    /// Many long-lived client sessions: log every change of serving pod or reflective address, judge
    /// session affinity.
    Affinity {
        #[command(flatten)]
        args: commands::affinity::AffinityArgs,
        #[command(flatten)]
        kube: commands::KubeFlags,
    },
    /// What a rollout, scale, pod deletion or node drain does to traffic, second by second:
    /// failures by kind, pods answering, long-lived connections and UDP flows, endpoint events.
    Disruption {
        #[command(flatten)]
        args: commands::disruption::DisruptionArgs,
        #[command(flatten)]
        kube: commands::KubeFlags,
    },
    /// Does traffic stay in its zone (or node)? A storm from every zone (or node), the
    /// source-zone × serving-zone matrix, kube-proxy's reasons, and the cross-zone cost.
    Zones {
        #[command(flatten)]
        args: commands::zones::ZonesArgs,
        #[command(flatten)]
        kube: commands::KubeFlags,
    },
    /// Reachability truth tables: every source (pods, nodes, an external client) × every Service
    /// address, per Service variant and protocol, against kube-proxy's rules.
    Matrix {
        #[command(flatten)]
        args: commands::matrix::MatrixArgs,
        #[command(flatten)]
        kube: commands::KubeFlags,
    },
    /// Compare saved runs (svclb run records and mconnect `-output json` files) side by side.
    Compare(commands::compare::CompareArgs),
    /// One self-contained HTML page with charts for saved runs (any kind, one or many; no network
    /// needed to view it).
    Report(commands::report::ReportArgs),
    /// Deploy the test servers (tserver Deployment and Service) and wait until they are ready.
    Deploy {
        #[command(flatten)]
        args: commands::cluster::DeployArgs,
        #[command(flatten)]
        kube: commands::KubeFlags,
    },
    /// Show the test servers: pods per node and zone, readiness, Service addresses, zone hints.
    Status {
        #[command(flatten)]
        args: commands::cluster::StatusArgs,
        #[command(flatten)]
        kube: commands::KubeFlags,
    },
    /// Delete everything the plugin made in the namespace (by its managed-by label).
    Cleanup {
        #[command(flatten)]
        args: commands::cluster::CleanupArgs,
        #[command(flatten)]
        kube: commands::KubeFlags,
    },
    /// Print the rendered manifests (for review or GitOps); `--rbac` for the user's Role.
    Manifests {
        #[command(flatten)]
        args: commands::cluster::ManifestsArgs,
        #[command(flatten)]
        kube: commands::KubeFlags,
    },
    /// Print a shell completion script (or the `kubectl_complete-svclb` shim kubectl uses).
    Completion(commands::completion::CompletionArgs),
    /// The agent a run starts at each source (JSON request in, JSON lines out).
    #[command(hide = true)]
    Agent(commands::agent::AgentArgs),
    /// Completion candidates for kubectl's plugin completion (run by `kubectl_complete-svclb`).
    #[command(name = "__complete", hide = true)]
    Complete(commands::completion::CompleteArgs),
    /// An emulated cluster in network namespaces with kube-proxy's own rules (needs root).
    Lab {
        #[command(subcommand)]
        cmd: commands::lab::LabCommand,
    },
}
