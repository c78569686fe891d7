//! One file per subcommand, each thin: parse → engine → report.

pub mod affinity;
pub mod cluster;
pub mod compare;
pub mod completion;
pub mod lab;
pub mod serve;
pub mod spread;
mod spread_cluster;
mod spread_lab;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;

use crate::record::Saved;

/// kubectl's global flags, accepted before or after the verb.
#[derive(Debug, Clone, Default, Args)]
pub struct KubeFlags {
    /// Path to the kubeconfig file to use.
    #[arg(long, global = true, env = "KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The name of the kubeconfig context to use.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace scope for this request.
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Username to impersonate for the operation.
    #[arg(long = "as", global = true, value_name = "USER")]
    pub as_user: Option<String>,
    /// Group to impersonate for the operation; repeat for several groups (needs --as).
    #[arg(long = "as-group", global = true, value_name = "GROUP")]
    pub as_group: Vec<String>,
}

impl KubeFlags {
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
}

impl SaveArgs {
    pub fn validate(&self) -> Result<()> {
        if let Some(tag) = &self.tag
            && (tag.is_empty() || tag.contains('/'))
        {
            bail!("--tag {tag:?}: give a non-empty name without '/'");
        }
        Ok(())
    }

    /// The run's tag: `--tag`, else `<command>-<local date>-<time>` of its start.
    pub fn tag(&self, command: &str, started: jiff::Timestamp) -> String {
        self.tag.clone().unwrap_or_else(|| {
            let local = started.to_zoned(jiff::tz::TimeZone::system());
            format!("{command}-{}", local.strftime("%Y%m%d-%H%M%S"))
        })
    }

    /// Saves `run` unless `--no-save`, telling the user where (and about a renamed tag).
    pub fn save<R: Saved>(&self, run: &mut R) -> Result<()> {
        if self.no_save {
            return Ok(());
        }
        let wanted = run.tag().to_string();
        let path = crate::record::save(&self.save, run)?;
        if run.tag() != wanted {
            eprintln!(
                "svclb: a run tagged {wanted:?} exists; saved this one as {:?}",
                run.tag()
            );
        }
        eprintln!("svclb: saved {}", path.display());
        Ok(())
    }
}

/// Parses durations as `2s`, `500ms`, `1m30s`, `1.5s`, `10m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|_| format!("bad duration {s:?}: use e.g. 2s, 500ms, 1m30s"))?;
    Duration::try_from(d).map_err(|_| format!("bad duration {s:?}: must not be negative"))
}

/// A multi-threaded tokio runtime with `workers` threads (0 = one per CPU).
pub fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if workers > 1 {
        b.worker_threads(workers);
    }
    Ok(b.enable_all().build()?)
}

/// Raises the open-file limit to its hard maximum: storms and servers hold thousands of sockets.
pub fn raise_nofile() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}

/// How a measuring command treats a cluster, its default target (`--no-deploy`, `--image`,
/// `--cleanup`); meaningless with `--address` or `--lab`.
#[derive(Debug, Args)]
pub struct ClusterRunArgs {
    /// Cluster: fail when the test servers are not deployed instead of deploying them.
    #[arg(long, conflicts_with_all = ["address", "lab"])]
    pub no_deploy: bool,
    /// Cluster: image of the test servers when this run deploys them [default: ghcr.io/kubectl-svclb/kubectl-svclb:v<version>].
    #[arg(long, value_name = "IMAGE", conflicts_with_all = ["address", "lab", "no_deploy"])]
    pub image: Option<String>,
    /// Cluster: delete what the plugin made in the namespace after the run (also when interrupted).
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

/// Completes when a line `stop` arrives on stdin (`enabled`; never otherwise, nor at EOF): how a
/// run stops an agent it runs through exec, where no signal can be sent.
pub async fn stop_line(enabled: bool) {
    if enabled {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                match line {
                    Ok(l) if l.trim() == "stop" => {
                        let _ = tx.send(());
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        if rx.await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

/// Watches for Ctrl-C/SIGTERM from the start of a run: the flag tells a setup phase (building a
/// lab, deploying) that it was interrupted; the task completes on the signal, for the storm phase
/// to await. Must be called inside a tokio runtime.
pub fn watch_interrupt() -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<()>,
) {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let signal = tokio::spawn({
        let flag = flag.clone();
        async move {
            shutdown_signal().await;
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    (flag, signal)
}

/// Completes on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => std::future::pending().await,
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

/// What the cluster-flow tests share: the real binary as the agent, loopback test servers.
#[cfg(test)]
pub(crate) mod test_support {
    use std::net::SocketAddr;

    use crate::backend::kube::{ClusterView, KubeBackend, LocalRun};
    use crate::cluster::fake::FakeApi;
    use crate::cluster::manifests::TSERVER;
    use crate::server::{Listeners, ServeConfig};
    use crate::wire::Identity;

    /// A cluster target over the in-memory API whose agents (in pods and on the host) are the real
    /// binary run here; backends are the pods of `service`, agents run in tserver pods.
    pub async fn local_target(api: &FakeApi, service: &str) -> KubeBackend<LocalRun, LocalRun> {
        let view = ClusterView::load(&api.cluster(), "v1.33.1".into(), service, TSERVER)
            .await
            .unwrap();
        KubeBackend {
            view,
            pods: LocalRun { program: binary() },
            host: LocalRun { program: binary() },
        }
    }

    /// target/debug/deps/<this test> → target/debug/kubectl-svclb (built by `cargo test`).
    pub fn binary() -> std::path::PathBuf {
        let exe = std::env::current_exe().unwrap();
        let bin = exe.parent().unwrap().parent().unwrap().join("kubectl-svclb");
        assert!(bin.exists(), "{} missing: run the whole `cargo test`", bin.display());
        bin
    }

    /// A test server on a loopback address, named like the pod.
    pub fn serve(address: &str, http: Option<&str>, pod: &str) -> tokio::task::JoinHandle<()> {
        let l = Listeners::bind(&ServeConfig {
            address: address.parse().unwrap(),
            http: http.map(|h| h.parse::<SocketAddr>().unwrap()),
            identity: Identity {
                name: pod.into(),
                node: "node-1".into(),
                // What a server in a pod reports: its hostname, not the zone.
                zone: pod.into(),
            },
        })
        .unwrap();
        tokio::spawn(async move {
            let _ = l.serve(std::future::pending()).await;
        })
    }
}
