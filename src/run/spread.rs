//! The spread run over any backend: plan, one storm agent per source, progress, merge (exactly:
//! counts add up, histograms merge), judge, record. An interrupt stops every agent; what they
//! measured is kept.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Result;

use super::agents::{AgentSet, check, no_result};
use super::{Interrupt, SaveTo, environment, target_info};
use crate::agent::{self, Output, Request, StormResult};
use crate::backend::{Backend, From, Path};
use crate::record::{SourceRun, SpreadRun};
use crate::spread::{KnownBackend, build_record};
use crate::stats::Criteria;
use crate::storm::{Proto, StormConfig};

/// What a spread run does.
#[derive(Debug, Clone)]
pub struct SpreadJob {
    pub from: From,
    pub path: Path,
    /// The storm of each source (`target` and `session` are set per source).
    pub storm: StormConfig,
    pub criteria: Criteria,
    pub save: SaveTo,
    /// Say on stderr what is about to be stormed (the table output).
    pub announce: bool,
}

impl SpreadJob {
    fn params(&self) -> crate::record::Params {
        let s = &self.storm;
        crate::record::Params {
            conns: s.conns,
            parallel: s.parallel,
            rate: s.rate,
            timeout_s: s.timeout.as_secs_f64(),
            deadline_s: s.deadline.map(|d| d.as_secs_f64()),
            srccidr: s.srccidr.map(|c| c.to_string()),
            expect_backends: self.criteria.expect_backends,
            margin_pct: self.criteria.margin_pct,
            alpha: self.criteria.alpha,
            graceful_close: s.graceful_close,
        }
    }
}

/// A progress bar over all agents, on a terminal only.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    done: Vec<u64>,
}

impl Progress {
    fn new(total: u64, agents: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(crate::report::progress_style("conns"));
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Progress {
            bar,
            done: vec![0; agents],
        }
    }

    fn set(&mut self, agent: usize, done: u64) {
        self.done[agent] = done;
        if let Some(bar) = &self.bar {
            bar.set_position(self.done.iter().sum());
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A source as the storm line names it: `pod-001 (node1)`, or its name alone.
fn described(s: &crate::backend::Source) -> String {
    if s.node.is_empty() || s.node == s.name {
        s.name.clone()
    } else {
        format!("{} ({})", s.name, s.node)
    }
}

/// Runs `job` on `backend` until every agent reported or `interrupt` fired (then the agents stop
/// and report what they measured).
pub async fn run<B: Backend>(backend: &B, job: &SpreadJob, interrupt: &Interrupt) -> Result<SpreadRun> {
    let plan = backend.plan(&job.from, &job.path, job.storm.proto)?;
    backend.preflight(&job.from, &job.path).await?;
    let meta = backend.meta();
    let requests = plan
        .sources
        .iter()
        .map(|s| {
            let storm = StormConfig {
                target: plan.address,
                session: format!("{:08x}", rand::random::<u32>()),
                ..job.storm.clone()
            };
            (s.clone(), Request::Storm(storm))
        })
        .collect();
    if job.announce {
        let what = match job.storm.proto {
            Proto::Tcp => "TCP connections",
            Proto::Udp => "UDP datagrams (a socket each)",
        };
        let to = match meta.mode.as_str() {
            "address" => plan.address.to_string(),
            _ => format!("{} ({})", plan.address, job.path.describe()),
        };
        let sources: Vec<String> = if meta.mode == "address" {
            Vec::new()
        } else {
            plan.sources.iter().map(described).collect()
        };
        let how = matches!(job.from, From::Pods { per_node: true, .. }).then_some("a pod on every node");
        eprintln!(
            "svclb: {}",
            crate::report::storm_line(job.storm.conns, what, &sources, how, &to)
        );
    }
    let started_at = jiff::Timestamp::now();
    let mut agents = AgentSet::start(backend, requests)?;
    let mut progress = Progress::new(job.storm.conns * plan.sources.len() as u64, plan.sources.len());
    let mut results: Vec<Option<StormResult>> = vec![None; plan.sources.len()];
    let mut stopping = false;
    loop {
        tokio::select! {
            line = agents.next() => match line {
                Some((i, line)) => match check(&agents.sources[i], line)? {
                    Output::Progress { done } => progress.set(i, done),
                    Output::Storm(r) => results[i] = Some(r),
                    other => anyhow::bail!("the storm agent in {} sent {other:?}", agents.sources[i].name),
                },
                None => break,
            },
            () = interrupt.wait(), if !stopping => {
                stopping = true;
                eprintln!("svclb: interrupted: finishing connections in flight, then saving what was measured");
                agents.interrupt();
            }
        }
    }
    drop(progress);
    let sources = agents.sources.clone();
    let last = agents.finish().await;
    let mut parts = Vec::new();
    for ((source, result), last) in sources.iter().zip(results).zip(&last) {
        parts.push((source, result.ok_or_else(|| no_result(source, last))?));
    }
    let outcome = agent::merge(parts.iter().map(|(_, r)| r));
    let known: Vec<KnownBackend> = plan
        .expected
        .iter()
        .map(|e| KnownBackend {
            name: e.name.clone(),
            node: e.node.clone(),
            zone: e.zone.clone(),
        })
        .collect();
    let info = target_info(&meta, plan.address, &job.from, &job.path, job.storm.proto, &sources);
    let mut params = job.params();
    params.conns *= sources.len() as u64;
    let mut record = build_record(
        job.save.tag("spread", started_at),
        started_at,
        info,
        params,
        &outcome,
        &known,
        &job.criteria,
    );
    if parts.len() > 1 {
        record.sources = parts
            .iter()
            .map(|(s, r)| SourceRun {
                name: s.name.clone(),
                node: s.node.clone(),
                zone: s.zone.clone(),
                conns: r.attempted,
                ok: r.ok,
                failed: r.failures.into(),
                backends: r.backends.clone(),
            })
            .collect();
    }
    environment(&mut record.environment, meta);
    Ok(record)
}

#[cfg(test)]
mod tests {
    //! The cluster flow end to end against the in-memory API, with storm agents run locally
    //! (the real binary, stopped through stdin) against loopback test servers.
    use serde_json::json;

    use super::*;
    use crate::backend::kube::{KubeBackend, LocalRun, PodExec, probe};
    use crate::cluster::fake::{self, FakeApi, Pods};
    use crate::cluster::manifests::TSERVER;
    use crate::storm::{Proto, Stop};
    use crate::testing::{binary, local_target, serve};

    /// A storm of `conns` from one pod to the clusterIP (or as `from`/`path` say).
    fn job(conns: u64, proto: Proto) -> SpreadJob {
        SpreadJob {
            from: From::Pods {
                pod: None,
                per_node: false,
            },
            path: Path::ClusterIp,
            storm: StormConfig {
                target: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                proto,
                conns,
                parallel: 100,
                rate: None,
                timeout: Duration::from_secs(2),
                deadline: None,
                srccidr: None,
                graceful_close: false,
                session: String::new(),
                fetch_bytes: None,
                src_ports: None,
            },
            criteria: Criteria {
                expect_backends: None,
                margin_pct: 50.0,
                alpha: None,
            },
            save: SaveTo {
                tag: None,
                dir: "saves".into(),
                no_save: true,
            },
            announce: false,
        }
    }

    /// One node, one ready pod; the Service's clusterIP and the node's IP are loopback. Every
    /// API call is authorized against the Role of `manifests --rbac`.
    async fn target(cluster_ip: &str, node_ip: &str) -> KubeBackend<LocalRun, LocalRun> {
        let api = FakeApi::new(Pods::Ready);
        api.enforce_rbac(crate::cluster::manifests::render_rbac(fake::NS).unwrap());
        api.put(fake::node("node-1", "zone-a", node_ip));
        api.put(fake::pod("svclb-tserver-1", TSERVER, "node-1", "10.244.1.10", true));
        api.put(fake::service("NodePort", cluster_ip, json!({}), None));
        api.put(fake::kube_proxy_configmap("iptables"));
        local_target(&api, TSERVER).await
    }

    fn never() -> Interrupt {
        Interrupt::default()
    }

    #[tokio::test]
    async fn from_pod_runs_the_agent_and_fills_zone_and_environment() {
        let server = serve("127.77.1.10:5001", None, "svclb-tserver-1");
        let t = target("127.77.1.10", "127.77.1.20").await;
        let run = run(&t, &job(300, Proto::Tcp), &never()).await.unwrap();
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
            cluster: t.cluster,
            pods: PodExec {
                cluster: fake::exec_server(binary()).await,
                container: "tserver".into(),
            },
            host: t.host,
            family: t.family,
        };
        let run = run(&t, &job(300, Proto::Udp), &never()).await.unwrap();
        server.abort();
        assert_eq!((run.conns, run.ok), (300, 300));
        assert_eq!(run.target.source.as_deref(), Some("svclb-tserver-1"));
    }

    #[tokio::test]
    async fn ctrl_c_stops_the_agents_through_stdin_and_keeps_what_they_measured() {
        let server = serve("127.77.2.10:5001", None, "svclb-tserver-1");
        let t = target("127.77.2.10", "127.77.2.20").await;
        let mut j = job(1_000_000, Proto::Tcp);
        j.storm.rate = Some(200.0);
        let run: SpreadRun = run(&t, &j, &Interrupt::after(Duration::from_millis(800)))
            .await
            .unwrap();
        server.abort();
        assert_eq!(run.stopped, Some(Stop::Interrupted));
        assert!(run.ok > 0 && run.conns < 1_000_000, "{} conns", run.conns);
    }

    #[tokio::test]
    async fn from_host_probes_http_then_storms_the_node_port() {
        let server = serve("127.77.3.20:30501", Some("127.77.3.20:30880"), "svclb-tserver-1");
        let t = target("127.77.3.10", "127.77.3.20").await;
        let mut j = job(200, Proto::Udp);
        j.from = From::Host;
        j.path = Path::NodePort(None);
        assert_eq!(
            probe(&t.http_address(&j.path).unwrap()).await.unwrap(),
            "svclb-tserver-1"
        );
        let run = run(&t, &j, &never()).await.unwrap();
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
