//! `spread` on a cluster (the default target): deploy the test servers if needed, run the storm
//! agents in tserver pods through exec (or on this host), merge, save, optionally clean up.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};

use super::spread::{SpreadArgs, finish};
use crate::cli::KubeFlags;
use crate::cluster::manifests::{self, Options, ServiceType, TSERVER};
use crate::cluster::{self, Cluster, ops};
use crate::target::kube::{ClusterView, KubeTarget, LocalRun, PodExec};
use crate::target::{From, Path};

/// How long a run waits for the servers it deployed (or found not ready).
const READY_TIMEOUT: Duration = Duration::from_secs(180);

pub(super) fn run(args: &SpreadArgs, kube: &KubeFlags) -> Result<ExitCode> {
    super::raise_nofile();
    let rt = super::runtime(0)?;
    let (result, cluster) = rt.block_on(async {
        let (cluster, version) = cluster::connect(kube).await?;
        let interrupted = Arc::new(AtomicBool::new(false));
        let signal = tokio::spawn({
            let interrupted = interrupted.clone();
            async move {
                super::shutdown_signal().await;
                interrupted.store(true, Ordering::Relaxed);
            }
        });
        let result = async {
            prepare(args, &cluster).await?;
            if interrupted.load(Ordering::Relaxed) {
                bail!("interrupted while the test servers were being deployed");
            }
            let view = ClusterView::load(&cluster, version).await?;
            let target = KubeTarget {
                view,
                pods: PodExec {
                    cluster: cluster.clone(),
                    container: "tserver".into(),
                },
                host: LocalRun {
                    program: std::env::current_exe()?,
                },
            };
            if args.from() == From::Host {
                probe(&target.http_address(&args.path())?).await?;
            }
            super::spread_lab::storm(args, &target, signal).await
        }
        .await;
        anyhow::Ok((result, cluster))
    })?;
    if args.cleanup {
        let deleted = rt.block_on(ops::cleanup(&cluster))?;
        eprintln!("svclb: cleanup: deleted {}", deleted.join(", "));
    }
    finish(result?, (!args.no_save).then_some(args.save.as_path()), args.output)
}

/// Makes sure the tserver runs: deploys it (default options) when missing, waits until ready.
async fn prepare(args: &SpreadArgs, c: &Cluster) -> Result<()> {
    if !ops::deployment_exists(c, TSERVER).await? {
        if args.no_deploy {
            bail!(
                "no {TSERVER} deployment in namespace {} (context {}): run `kubectl svclb deploy` or drop --no-deploy",
                c.namespace,
                c.context
            );
        }
        let o = Options {
            namespace: c.namespace.clone(),
            image: args.image.clone().unwrap_or_else(|| manifests::DEFAULT_IMAGE.into()),
            service_type: if args.path() == Path::LoadBalancer {
                ServiceType::LoadBalancer
            } else {
                ServiceType::NodePort
            },
            ..Options::default()
        };
        eprintln!("svclb: no test servers in {}: deploying them", c.namespace);
        return super::cluster::deploy_servers(c, &o, Some(READY_TIMEOUT)).await;
    }
    ops::wait_ready(c, TSERVER, READY_TIMEOUT, Duration::from_secs(1)).await
}

/// One HTTP request through the same path before a host storm: an unreachable nodePort or LB
/// is one clear error instead of thousands of timeouts.
pub async fn probe(address: &std::net::SocketAddr) -> Result<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()?;
    let url = format!("http://{address}/hostname");
    let resp = client.get(&url).send().await.map_err(|e| {
        anyhow::anyhow!("cannot reach {url} from this machine ({e}): is there a route to the node or LB?")
    })?;
    if !resp.status().is_success() {
        bail!("{url} answered {}: is that the tserver?", resp.status());
    }
    Ok(resp.text().await?.trim().to_string())
}
