//! The zones run over any backend: a client on every node (or in every zone) storms the
//! Service's clusterIP, once or every `--watch` interval; each cycle reads the Service and its
//! EndpointSlices again for kube-proxy's expectation, and the engine ([`crate::zones`]) judges
//! and builds the record. An interrupt stops the agents; what was measured is kept.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::agents::{AgentSet, check, no_result};
use super::open::Opened;
use super::{Interrupt, SaveTo, environment, target_info};
use crate::agent::{Output, Request, StormResult};
use crate::backend::kube::{AgentRunner, KubeBackend};
use crate::backend::{Backend, From, Path};
use crate::cluster::clients::{self, ClientPods};
use crate::record::{Environment, Price, ZonesCycle, ZonesParams, ZonesRun};
use crate::storm::{Proto, Stop, StormConfig};
use crate::zones::{Measured, Part, Placed, build, cycle, expect};

/// What a zones run does.
#[derive(Debug, Clone)]
pub struct ZonesJob {
    /// One client per zone (else one per node).
    pub per_zone: bool,
    /// Each source's storm (`target` and `session` are set per source); `fetch_bytes` for
    /// `--bytes`.
    pub storm: StormConfig,
    pub prices: Vec<Price>,
    /// Connections per second the cost is projected to a month at.
    pub rate: Option<f64>,
    /// With `cycles` > 1: a cycle starts every `interval`.
    pub interval: Option<Duration>,
    pub cycles: u32,
    pub save: SaveTo,
    /// Say on stderr what is about to be stormed.
    pub announce: bool,
}

impl ZonesJob {
    fn params(&self) -> ZonesParams {
        ZonesParams {
            conns_per_source: self.storm.conns,
            sources: if self.per_zone { "per-zone" } else { "per-node" }.into(),
            parallel: self.storm.parallel,
            timeout_s: self.storm.timeout.as_secs_f64(),
            bytes: self.storm.fetch_bytes,
            rate: self.rate,
            watch_interval_s: self.interval.map(|d| d.as_secs_f64()),
            cycles: self.cycles,
        }
    }
}

/// One cycle's storms: every source at once. `None` for a source the interrupt left without a
/// result.
async fn storms<B: Backend>(
    backend: &B,
    jobs: Vec<(crate::backend::Source, Request)>,
    interrupt: &Interrupt,
) -> Result<Vec<Option<StormResult>>> {
    let mut agents = AgentSet::start(backend, jobs)?;
    let mut results: Vec<Option<StormResult>> = vec![None; agents.sources.len()];
    let mut stopping = interrupt.is_set();
    if stopping {
        agents.interrupt();
    }
    loop {
        tokio::select! {
            line = agents.next() => match line {
                Some((i, line)) => match check(&agents.sources[i], line)? {
                    Output::Progress { .. } => {}
                    Output::Storm(r) => results[i] = Some(r),
                    other => bail!("the storm agent in {} sent {other:?}", agents.sources[i].name),
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
    let sources = agents.sources.clone();
    let last = agents.finish().await;
    for ((s, r), last) in sources.iter().zip(&results).zip(&last) {
        if r.is_none() && !stopping {
            return Err(no_result(s, last));
        }
    }
    Ok(results)
}

/// The run on what was opened: on a cluster from client pods of its own
/// ([`from_client_pods`]; agents exec into their `client` container), elsewhere from the lab's
/// nodes and pods.
pub async fn run_opened(
    opened: &mut Opened,
    job: &ZonesJob,
    interrupt: &Interrupt,
    on_cycle: &mut dyn FnMut(&ZonesCycle),
) -> Result<ZonesRun> {
    match opened {
        Opened::Cluster { backend, .. } => {
            clients::CONTAINER.clone_into(&mut backend.pods.container);
            from_client_pods(backend, job, interrupt, on_cycle).await
        }
        other => run(&*other, job, interrupt, on_cycle).await,
    }
}

/// A zones run on a cluster from its own client pods ([`crate::cluster::clients`]): one on a
/// ready node of every zone (or on every ready node), running the tserver's image, waited for;
/// the run from them; and the pods deleted afterwards whatever happened (an error, an
/// interrupt while they start or during the run).
pub async fn from_client_pods<P: AgentRunner, H: AgentRunner>(
    backend: &mut KubeBackend<P, H>,
    job: &ZonesJob,
    interrupt: &Interrupt,
    on_cycle: &mut dyn FnMut(&ZonesCycle),
) -> Result<ZonesRun> {
    let mut pods = ClientPods::new(&backend.cluster, crate::agent::argv(&crate::agent::Request::Hold));
    let result = async {
        let nodes = clients::pick_nodes(&backend.view.nodes, job.per_zone);
        if nodes.is_empty() {
            bail!("no ready node to put a client pod on: see `kubectl get nodes`");
        }
        let image = clients::server_image(&backend.cluster).await?;
        let started = tokio::select! {
            r = pods.start(&nodes, &image, clients::START_TIMEOUT, clients::START_POLL) => r?,
            () = interrupt.wait() => bail!("interrupted while the client pods were starting"),
        };
        backend.use_clients(clients::CLIENT, started);
        run(&*backend, job, interrupt, on_cycle).await
    }
    .await;
    pods.delete().await;
    result
}

/// Runs `job` on `backend`; `on_cycle` gets each cycle's line as it ends (the watch output).
pub async fn run<B: Backend>(
    backend: &B,
    job: &ZonesJob,
    interrupt: &Interrupt,
    on_cycle: &mut dyn FnMut(&ZonesCycle),
) -> Result<ZonesRun> {
    let from = From::Nodes { per_zone: job.per_zone };
    let plan = backend.plan(&from, &Path::ClusterIp, Proto::Tcp)?;
    if plan.sources.is_empty() {
        bail!("no node has a client pod to storm from: `kubectl svclb deploy` (its pods are the clients)");
    }
    let address = match job.storm.fetch_bytes {
        Some(_) => plan
            .http
            .ok_or_else(|| anyhow::anyhow!("the Service has no HTTP port for --bytes (/bytes?n=): drop --bytes"))?,
        None => plan.address,
    };
    let meta = backend.meta();
    let placed: Vec<Placed> = plan
        .sources
        .iter()
        .map(|s| Placed {
            name: s.name.clone(),
            node: s.node.clone(),
            zone: s.zone.clone(),
        })
        .collect();
    if job.announce {
        let sources: Vec<String> = placed.iter().map(|p| p.name.clone()).collect();
        let how = if job.per_zone { "one per zone" } else { "one per node" };
        eprintln!(
            "svclb: {}{}",
            crate::report::storm_line(
                job.storm.conns,
                "connections",
                &sources,
                Some(how),
                &address.to_string()
            ),
            if job.cycles > 1 {
                format!(", {} cycles", job.cycles)
            } else {
                String::new()
            }
        );
    }
    let started_at = jiff::Timestamp::now();
    let t0 = Instant::now();
    let mut parts: Vec<Vec<Part>> = vec![Vec::new(); placed.len()];
    let mut lines = Vec::new();
    let mut stopped = None;
    let mut view = backend.service_view().await?;
    for n in 1..=job.cycles {
        let expectations: Vec<_> = placed.iter().map(|s| expect(&view, &s.node, &s.zone)).collect();
        let requests = plan
            .sources
            .iter()
            .map(|s| {
                let storm = StormConfig {
                    target: address,
                    session: format!("{:08x}", rand::random::<u32>()),
                    ..job.storm.clone()
                };
                (s.clone(), Request::Storm(storm))
            })
            .collect();
        let results = storms(backend, requests, interrupt).await?;
        let mut this = Vec::new();
        let mut this_sources = Vec::new();
        for ((i, r), e) in results.into_iter().enumerate().zip(expectations) {
            let Some(r) = r else { continue };
            stopped = match (stopped, r.stopped) {
                (Some(Stop::Interrupted), _) | (_, Some(Stop::Interrupted)) => Some(Stop::Interrupted),
                (s, t) => s.or(t),
            };
            let part = Part {
                expectation: e,
                attempted: r.attempted,
                ok: r.ok,
                failures: r.failures,
                backends: r.backends,
            };
            this.push(part.clone());
            this_sources.push(placed[i].clone());
            parts[i].push(part);
        }
        let line = cycle(&view, n, t0.elapsed().as_secs_f64(), &this_sources, &this);
        if job.cycles > 1 {
            on_cycle(&line);
            lines.push(line);
        }
        if interrupt.is_set() {
            stopped = Some(Stop::Interrupted);
            break;
        }
        if n < job.cycles {
            let next = t0 + job.interval.unwrap_or_default() * n;
            tokio::select! {
                () = tokio::time::sleep_until(next.into()) => {}
                () = interrupt.wait() => {
                    stopped = Some(Stop::Interrupted);
                    break;
                }
            }
            view = backend.service_view().await?;
        }
    }
    let info = target_info(&meta, address, &from, &Path::ClusterIp, Proto::Tcp, &plan.sources);
    let mut env = Environment::local();
    environment(&mut env, meta);
    Ok(build(Measured {
        tag: job.save.tag("zones", started_at),
        started_at,
        duration_s: t0.elapsed().as_secs_f64(),
        target: info,
        params: job.params(),
        view: &view,
        sources: placed.into_iter().zip(parts).collect(),
        cycles: lines,
        prices: job.prices.clone(),
        stopped,
        environment: env,
    }))
}

#[cfg(test)]
mod tests {
    //! The cluster flow against the in-memory API: sources per zone from the pods' nodes,
    //! kube-proxy's reasons from the EndpointSlices, storm agents run locally (the real binary)
    //! against one loopback server standing in for the clusterIP.
    use serde_json::json;

    use super::*;
    use crate::backend::kube::{KubeBackend, LocalRun};
    use crate::cluster::fake::{self, FakeApi, Pods, START_READS};
    use crate::cluster::manifests::TSERVER;
    use crate::record::Locality;
    use crate::stats::Verdict;
    use crate::testing::{local_target, serve};

    /// Two nodes in two zones, a tserver pod on each, the clusterIP on loopback; the
    /// EndpointSlice's zone hints as given.
    async fn target(cluster_ip: &str, hint_b: &[&str]) -> KubeBackend<LocalRun, LocalRun> {
        let api = FakeApi::new(Pods::Ready);
        // Every API call as the Role of `manifests --rbac` allows it.
        api.enforce_rbac(crate::cluster::manifests::render_rbac(fake::NS).unwrap());
        api.put(fake::node("node-1", "zone-a", "127.78.0.1"));
        api.put(fake::node("node-2", "zone-b", "127.78.0.2"));
        api.put(fake::pod("svclb-tserver-a1", TSERVER, "node-1", "10.244.1.10", true));
        api.put(fake::pod("svclb-tserver-b1", TSERVER, "node-2", "10.244.2.10", true));
        api.put(fake::service(
            "ClusterIP",
            cluster_ip,
            json!({"trafficDistribution": "PreferSameZone"}),
            None,
        ));
        api.put(fake::slice(&[
            ("svclb-tserver-a1", "10.244.1.10", "zone-a", &["zone-a"]),
            ("svclb-tserver-b1", "10.244.2.10", "zone-b", hint_b),
        ]));
        local_target(&api, TSERVER).await
    }

    fn job() -> ZonesJob {
        ZonesJob {
            per_zone: true,
            storm: StormConfig {
                target: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                proto: Proto::Tcp,
                conns: 200,
                parallel: 20,
                rate: None,
                timeout: Duration::from_secs(2),
                deadline: None,
                srccidr: None,
                graceful_close: false,
                session: String::new(),
                fetch_bytes: None,
                src_ports: None,
            },
            prices: Vec::new(),
            rate: None,
            interval: None,
            cycles: 1,
            save: SaveTo {
                tag: None,
                dir: "saves".into(),
                no_save: true,
            },
            announce: false,
        }
    }

    #[tokio::test]
    async fn reasons_come_from_the_endpoint_slices() {
        // Only a1 answers (it is the clusterIP here), so zone-b's client is served in zone-a.
        let server = serve("127.78.1.10:5001", None, "svclb-tserver-a1");
        let t = target("127.78.1.10", &[]).await;
        let r = run(&t, &job(), &Interrupt::default(), &mut |_| {}).await.unwrap();
        let sources: Vec<(&str, &str, Locality, &str)> = r
            .sources
            .iter()
            .map(|s| (s.name.as_str(), s.zone.as_str(), s.locality, s.why.as_str()))
            .collect();
        let why = "using all endpoints: endpoint svclb-tserver-b1 has no zone hint";
        assert_eq!(
            sources,
            [
                ("svclb-tserver-a1", "zone-a", Locality::Any, why),
                ("svclb-tserver-b1", "zone-b", Locality::Any, why)
            ]
        );
        assert_eq!((r.ok, r.cross_zone_conns), (400, 200));
        assert_eq!(r.target.mode, "pod");
        assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.reasons);

        // Every endpoint hinted: zone-b's client must stay in zone-b, and it did not.
        let t = target("127.78.1.10", &["zone-b"]).await;
        let r = run(&t, &job(), &Interrupt::default(), &mut |_| {}).await.unwrap();
        server.abort();
        assert_eq!(r.sources[1].why, "endpoints hinted for zone zone-b");
        assert_eq!(r.sources[1].expected, ["svclb-tserver-b1"]);
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(
            r.reasons,
            [
                "svclb-tserver-b1 on node-2 (zone-b): 200 of 200 connections left, though kube-proxy keeps them in zone-b (endpoints hinted for zone zone-b)"
            ]
        );
    }

    /// Three zones, tserver pods in zone-a and zone-b only (zone-c has no endpoint, and so no
    /// tserver pod to storm from): the tserver Deployment's image, a1 hinted for zone-a and
    /// zone-b, b1 for zone-b. a1 answers on the loopback clusterIP.
    async fn three_zones(cluster_ip: &str, pods_ready: bool) -> (FakeApi, KubeBackend<LocalRun, LocalRun>) {
        let api = FakeApi::new(Pods::Ready);
        // Every API call as the Role of `manifests --rbac` allows it.
        api.enforce_rbac(crate::cluster::manifests::render_rbac(fake::NS).unwrap());
        api.put(fake::node("node-1", "zone-a", "127.78.0.1"));
        api.put(fake::node("node-2", "zone-b", "127.78.0.2"));
        api.put(fake::node("node-3", "zone-c", "127.78.0.3"));
        api.put(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": TSERVER, "namespace": fake::NS},
            "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": TSERVER}},
                "template": {"spec": {"containers": [{"name": "tserver", "image": "registry.example/svclb:dev"}]}}},
            "status": {"replicas": 2}
        }));
        api.put(fake::pod(
            "svclb-tserver-a1",
            TSERVER,
            "node-1",
            "10.244.1.10",
            pods_ready,
        ));
        api.put(fake::pod(
            "svclb-tserver-b1",
            TSERVER,
            "node-2",
            "10.244.2.10",
            pods_ready,
        ));
        api.put(fake::service(
            "ClusterIP",
            cluster_ip,
            json!({"trafficDistribution": "PreferSameZone"}),
            None,
        ));
        api.put(fake::slice(&[
            ("svclb-tserver-a1", "10.244.1.10", "zone-a", &["zone-a", "zone-b"]),
            ("svclb-tserver-b1", "10.244.2.10", "zone-b", &["zone-b"]),
        ]));
        let backend = local_target(&api, TSERVER).await;
        (api, backend)
    }

    /// The created client pods still in the API.
    fn client_pods_left(api: &FakeApi) -> Vec<String> {
        api.created()
            .iter()
            .filter_map(|o| o["metadata"]["name"].as_str())
            .filter(|n| api.get(&format!("/api/v1/namespaces/{}/pods/{n}", fake::NS)).is_some())
            .map(str::to_string)
            .collect()
    }

    #[tokio::test]
    async fn client_pods_give_every_zone_a_source_and_go_after_the_run() {
        let server = serve("127.78.2.10:5001", None, "svclb-tserver-a1");
        let (api, mut t) = three_zones("127.78.2.10", true).await;
        let r = from_client_pods(&mut t, &job(), &Interrupt::default(), &mut |_| {})
            .await
            .unwrap();
        server.abort();
        // One pod per zone, pinned to the first node of each, the tserver's image, labelled.
        let created = api.created();
        let pinned: Vec<(&str, &str, &str, &str)> = created
            .iter()
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().unwrap(),
                    p["spec"]["nodeName"].as_str().unwrap(),
                    p["spec"]["containers"][0]["image"].as_str().unwrap(),
                    p["metadata"]["labels"]["app.kubernetes.io/managed-by"]
                        .as_str()
                        .unwrap(),
                )
            })
            .collect();
        let names: Vec<&str> = pinned.iter().map(|p| p.0).collect();
        assert_eq!(pinned.len(), 3, "{pinned:?}");
        for (p, node) in pinned.iter().zip(["node-1", "node-2", "node-3"]) {
            assert!(p.0.starts_with("svclb-client-"), "{p:?}");
            assert_eq!((p.1, p.2, p.3), (node, "registry.example/svclb:dev", "kubectl-svclb"));
        }
        // The storms came from them, zone-c's too, and kube-proxy's reason for it.
        let sources: Vec<(&str, &str, Locality, &str)> = r
            .sources
            .iter()
            .map(|s| (s.name.as_str(), s.zone.as_str(), s.locality, s.why.as_str()))
            .collect();
        assert_eq!(
            sources,
            [
                (names[0], "zone-a", Locality::Zone, "endpoints hinted for zone zone-a"),
                (names[1], "zone-b", Locality::Zone, "endpoints hinted for zone zone-b"),
                (
                    names[2],
                    "zone-c",
                    Locality::Any,
                    "using all endpoints: no endpoint hinted for zone zone-c"
                ),
            ]
        );
        assert_eq!((r.ok, r.verdict), (600, Verdict::Pass), "{:?}", r.reasons);
        assert_eq!(r.target.source.as_deref(), Some("per-zone (3 sources)"));
        // Created, waited for (listed until Running), deleted after the storms.
        let log = api.log();
        let first_delete = log.iter().position(|l| l.starts_with("DELETE")).unwrap();
        let last_wait = log.iter().rposition(|l| l.contains("instance%3D")).unwrap();
        assert!(log.iter().filter(|l| l.contains("instance%3D")).count() >= START_READS as usize);
        assert!(last_wait < first_delete, "{log:?}");
        assert_eq!(log.iter().filter(|l| l.starts_with("DELETE")).count(), 3, "{log:?}");
        assert!(client_pods_left(&api).is_empty());

        // Per node: a pod on every node.
        let server = serve("127.78.2.12:5001", None, "svclb-tserver-a1");
        let (api, mut t) = three_zones("127.78.2.12", true).await;
        let per_node = ZonesJob {
            per_zone: false,
            ..job()
        };
        let r = from_client_pods(&mut t, &per_node, &Interrupt::default(), &mut |_| {})
            .await
            .unwrap();
        server.abort();
        let nodes: Vec<&str> = r.sources.iter().map(|s| s.node.as_str()).collect();
        assert_eq!(nodes, ["node-1", "node-2", "node-3"]);
        assert!(client_pods_left(&api).is_empty());
    }

    #[tokio::test]
    async fn client_pods_go_when_the_run_fails_or_is_interrupted() {
        // The tserver pods are not ready: the run fails once the clients run; they still go.
        let (api, mut t) = three_zones("127.78.2.11", false).await;
        let e = from_client_pods(&mut t, &job(), &Interrupt::default(), &mut |_| {})
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no ready svclb-tserver pod"), "{e}");
        assert_eq!(api.created().len(), 3);
        assert!(client_pods_left(&api).is_empty());

        // Ctrl-C while the clients start (the kubelet never starts them): they go too.
        let (api, mut t) = three_zones("127.78.2.11", true).await;
        api.created_pods(Pods::Pending);
        let e = from_client_pods(
            &mut t,
            &job(),
            &Interrupt::after(Duration::from_millis(300)),
            &mut |_| {},
        )
        .await
        .unwrap_err();
        assert_eq!(e.to_string(), "interrupted while the client pods were starting");
        assert_eq!(api.created().len(), 3);
        assert!(client_pods_left(&api).is_empty());
    }
}
