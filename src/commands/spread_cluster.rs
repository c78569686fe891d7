//! `spread` on a cluster (the default target): deploy the test servers if needed, run the storm
//! agents in tserver pods through exec (or on this host), merge, save, optionally clean up.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Result, bail};

use super::spread::{SpreadArgs, finish};
use crate::backend::kube::{ClusterView, KubeBackend, LocalRun, PodExec};
use crate::backend::{From, Path};
use super::KubeFlags;
use crate::cluster::manifests::{Options, ServiceType, TSERVER};
use crate::cluster::{self, Cluster};

pub(super) fn run(args: &SpreadArgs, kube: &KubeFlags) -> Result<ExitCode> {
    super::raise_nofile();
    let rt = super::runtime(0)?;
    let (result, cluster) = rt.block_on(async {
        let (cluster, version) = cluster::connect(&kube.connection()).await?;
        let (interrupted, signal) = super::watch_interrupt();
        let result = async {
            prepare(args, &cluster).await?;
            if interrupted.load(Ordering::Relaxed) {
                bail!("interrupted while the test servers were being deployed");
            }
            let view = ClusterView::load(&cluster, version, TSERVER, TSERVER).await?;
            let target = KubeBackend {
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
    if args.cluster.cleanup {
        rt.block_on(super::cluster::cleanup_after_run(&cluster));
    }
    finish(result?, &args.record, args.output)
}

/// Makes sure the tserver runs: deploys it when missing (default options, the Service type the
/// path needs), waits until ready.
async fn prepare(args: &SpreadArgs, c: &Cluster) -> Result<()> {
    let o = Options {
        namespace: c.namespace.clone(),
        image: args.cluster.image(),
        service_type: if args.path() == Path::LoadBalancer {
            ServiceType::LoadBalancer
        } else {
            ServiceType::NodePort
        },
        ..Options::default()
    };
    super::cluster::ensure_servers(c, &[TSERVER], &o, args.cluster.no_deploy).await
}

/// One HTTP request through the same path before a host storm: an unreachable nodePort or LB
/// is one clear error instead of thousands of timeouts.
pub async fn probe(address: &std::net::SocketAddr) -> Result<String> {
    // reqwest has no provider of its own (one provider for kube and reqwest).
    cluster::install_crypto_provider();
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

#[cfg(test)]
mod tests {
    //! The cluster flow end to end against the in-memory API, with storm agents run locally
    //! (the real binary, stopped through stdin) against loopback test servers.
    use clap::Parser;
    use serde_json::json;

    use super::*;
    use crate::cli::{Cli, Command};
    use crate::cluster::fake::{self, FakeApi, Pods};
    use crate::commands::test_support::{binary, local_target, serve};
    use crate::record::SpreadRun;
    use crate::storm::Stop;

    fn spread_args(args: &[&str]) -> SpreadArgs {
        let mut argv = vec!["kubectl-svclb", "spread", "--no-save"];
        argv.extend(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Spread(a) => a,
            _ => unreachable!(),
        }
    }

    /// One node, one ready pod; the Service's clusterIP and the node's IP are loopback.
    async fn target(cluster_ip: &str, node_ip: &str) -> KubeBackend<LocalRun, LocalRun> {
        let api = FakeApi::new(Pods::Ready);
        api.put(fake::node("node-1", "zone-a", node_ip));
        api.put(fake::pod("svclb-tserver-1", TSERVER, "node-1", "10.244.1.10", true));
        api.put(fake::service("NodePort", cluster_ip, json!({}), None));
        api.put(fake::kube_proxy_configmap("iptables"));
        local_target(&api, TSERVER).await
    }

    fn never() -> tokio::task::JoinHandle<()> {
        tokio::spawn(std::future::pending())
    }

    #[tokio::test]
    async fn from_pod_runs_the_agent_and_fills_zone_and_environment() {
        let server = serve("127.77.1.10:5001", None, "svclb-tserver-1");
        let t = target("127.77.1.10", "127.77.1.20").await;
        let args = spread_args(&["--conns", "300"]);
        let run = crate::commands::spread_lab::storm(&args, &t, never()).await.unwrap();
        server.abort();
        assert_eq!((run.conns, run.ok), (300, 300));
        assert_eq!(run.target.mode, "pod");
        assert_eq!(run.target.source.as_deref(), Some("svclb-tserver-1"));
        assert_eq!(run.backends.len(), 1);
        // The zone comes from the node's label through the API, not from the server.
        assert_eq!(
            (run.backends[0].node.as_str(), run.backends[0].zone.as_str()),
            ("node-1", "zone-a")
        );
        assert_eq!(run.environment.context.as_deref(), Some("kind-test"));
        assert_eq!(run.environment.server_version.as_deref(), Some("v1.33.1"));
        assert_eq!(run.environment.proxy_mode.as_deref(), Some("iptables"));
    }

    #[tokio::test]
    async fn from_pod_through_a_websocket_exec_session() {
        let server = serve("127.77.4.10:5001", None, "svclb-tserver-1");
        let t = target("127.77.4.10", "127.77.4.20").await;
        let t = KubeBackend {
            view: t.view,
            pods: PodExec {
                cluster: fake::exec_server(binary()).await,
                container: "tserver".into(),
            },
            host: t.host,
        };
        let args = spread_args(&["--conns", "300", "--udp"]);
        let run = crate::commands::spread_lab::storm(&args, &t, never()).await.unwrap();
        server.abort();
        assert_eq!((run.conns, run.ok), (300, 300));
        assert_eq!(run.target.source.as_deref(), Some("svclb-tserver-1"));
    }

    #[tokio::test]
    async fn ctrl_c_stops_the_agents_through_stdin_and_keeps_what_they_measured() {
        let server = serve("127.77.2.10:5001", None, "svclb-tserver-1");
        let t = target("127.77.2.10", "127.77.2.20").await;
        let args = spread_args(&["--conns", "1000000", "--rate", "200"]);
        let signal = tokio::spawn(tokio::time::sleep(Duration::from_millis(800)));
        let run: SpreadRun = crate::commands::spread_lab::storm(&args, &t, signal).await.unwrap();
        server.abort();
        assert_eq!(run.stopped, Some(Stop::Interrupted));
        assert!(run.ok > 0 && run.conns < 1_000_000, "{} conns", run.conns);
    }

    #[tokio::test]
    async fn from_host_probes_http_then_storms_the_node_port() {
        let server = serve("127.77.3.20:30501", Some("127.77.3.20:30880"), "svclb-tserver-1");
        let t = target("127.77.3.10", "127.77.3.20").await;
        let args = spread_args(&["--from", "host", "--node-port", "--udp", "--conns", "200"]);
        assert_eq!(
            probe(&t.http_address(&args.path()).unwrap()).await.unwrap(),
            "svclb-tserver-1"
        );
        let run = crate::commands::spread_lab::storm(&args, &t, never()).await.unwrap();
        server.abort();
        assert_eq!(run.target.mode, "host");
        assert_eq!(run.ok, 200);
        assert_eq!(run.target.address, "127.77.3.20:30501 (nodePort)");
        let e = probe(&"127.77.3.21:30880".parse().unwrap()).await.unwrap_err();
        assert!(
            e.to_string().contains("cannot reach http://127.77.3.21:30880/hostname"),
            "{e}"
        );
    }
}
